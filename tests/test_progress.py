"""Progress display and end-of-run summary: the reporter (fake clock, fake stream), its
counts against the Landscape, and `run` with --json / --quiet / the default output."""

from __future__ import annotations

import io
import json
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
import yaml
from sqlalchemy.exc import DBAPIError, OperationalError

from elspeth_beam import testing
from elspeth_beam.core.reasons import without_values
from elspeth_beam.landscape import schema as s
from elspeth_beam.inspect.summary import display_url, render_text, summarize
from elspeth_beam.landscape.store import LandscapeStore
from elspeth_beam.progress import (
    Counts,
    LandscapeCounter,
    ProgressLine,
    ProgressReporter,
    count_progress,
    landscape_progress,
    read_only_engine,
)
from elspeth_beam.run import execute_run
from resume_helpers import cli

COUNTS = Counts(rows_read=120, per_sink={"good": 100, "rejects": 7}, quarantined=7, failed=2, batches_flushed=3)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeStream(io.StringIO):
    """Records each write separately, like a terminal would receive them."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def sql(db: Path, query: str, *params: object) -> list[tuple]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(query, params).fetchall()


# ---- the display: throttling and formatting ----------------------------------------------


@pytest.mark.parametrize("tty", [True, False])
def test_updates_are_throttled_to_one_per_interval(tty: bool) -> None:
    clock, stream = FakeClock(), FakeStream()
    line = ProgressLine(stream, tty=tty, every=0.5, clock=clock, width=200)
    shown = 0
    for _ in range(80):  # polled every 1/8 s for 10 s (binary fractions: exact arithmetic)
        clock.now += 0.125
        shown += line.update(COUNTS)
    assert len(stream.writes) == shown == 20  # 2 per second: none more, none lost while due
    times = []
    for text in stream.writes:
        times.append(float(text.split("progress")[1].split("s")[0]))
    assert all(b - a >= 0.5 - 1e-9 for a, b in zip(times, times[1:]))


def test_plain_default_interval_is_much_slower_than_tty() -> None:
    clock = FakeClock()
    tty, plain = FakeStream(), FakeStream()
    tty_line = ProgressLine(tty, tty=True, clock=clock, width=200)
    plain_line = ProgressLine(plain, tty=False, clock=clock)
    for _ in range(240):  # 30 s
        clock.now += 0.125
        tty_line.update(COUNTS)
        plain_line.update(COUNTS)
    assert len(tty.writes) == 60 and len(plain.writes) == 6


def test_a_run_shorter_than_one_interval_shows_only_the_final_line() -> None:
    clock, stream = FakeClock(), FakeStream()
    line = ProgressLine(stream, tty=False, every=5, clock=clock)
    clock.now += 1
    assert not line.update(COUNTS)
    clock.now += 0.5
    line.finish(COUNTS)
    assert stream.getvalue() == (
        "progress    1.5s  rows read 120 (80/s)  quarantined 7  failed 2  batches 3  sinks good=100 rejects=7\n"
    )


def test_non_tty_output_is_plain_lines_without_escape_codes() -> None:
    clock, stream = FakeClock(), FakeStream()
    line = ProgressLine(stream, tty=False, every=1, clock=clock)
    for i in range(5):
        clock.now += 1
        line.update(Counts(rows_read=i * 10))
    line.finish(COUNTS)
    text = stream.getvalue()
    assert "\x1b" not in text and "\r" not in text
    assert all(w.endswith("\n") and w.count("\n") == 1 for w in stream.writes)
    assert text.splitlines()[0].startswith("progress") and "rows read 10 " in text.splitlines()[1]
    assert text.splitlines()[-1].endswith("quarantined 7  failed 2  batches 3  sinks good=100 rejects=7")


def test_tty_output_rewrites_one_line_cut_to_the_terminal_width() -> None:
    clock, stream = FakeClock(), FakeStream()
    line = ProgressLine(stream, tty=True, every=0.5, clock=clock, width=40)
    for _ in range(3):
        clock.now += 0.5
        line.update(COUNTS)
    clock.now += 0.1  # the final line is written even though the last update is recent
    line.finish(COUNTS)
    assert len(stream.writes) == 4
    for text in stream.writes[:-1]:
        assert text.startswith("\r") and text.endswith("\x1b[K") and "\n" not in text
        assert len(text[1:-3]) == 39  # never wraps, so \r rewrites the whole line
    assert stream.writes[-1].startswith("\r") and stream.writes[-1].endswith("\x1b[K\n")


# ---- the reporter thread -----------------------------------------------------------------


def test_reporter_polls_in_the_background_and_ends_with_the_final_counts() -> None:
    calls = {"n": 0}

    def poll() -> Counts:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OperationalError("SELECT", {}, Exception("database is locked"))
        return Counts(rows_read=calls["n"])

    stream = FakeStream()
    with ProgressReporter(poll, ProgressLine(stream, tty=False, every=0.01)) as reporter:
        deadline = time.monotonic() + 5
        while calls["n"] < 4 and time.monotonic() < deadline:
            time.sleep(0.005)
    assert not reporter._thread.is_alive()
    assert reporter.errors == ["database is locked"]  # recorded, skipped, and polling went on
    assert f"rows read {calls['n']} " in stream.writes[-1]  # the final line: one last poll after the run


def test_a_closed_stream_or_a_broken_poll_never_breaks_the_run() -> None:
    class ClosedPipe(FakeStream):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    def broken_poll() -> Counts:
        raise RuntimeError()

    with ProgressReporter(lambda: COUNTS, ProgressLine(ClosedPipe(), tty=False, every=0.01)) as closed:
        time.sleep(0.1)
    assert closed.errors == ["progress display stopped: [Errno 32] Broken pipe"]  # once, then silent
    with ProgressReporter(broken_poll, ProgressLine(FakeStream(), tty=False, every=0.01)) as broken:
        time.sleep(0.05)
    assert broken.errors and set(broken.errors) == {"RuntimeError"} and broken.polls == 0


def test_reporter_backs_off_when_polls_are_slow() -> None:
    """A poll taking 30 ms with a 10 ms interval waits 10× its cost: ≤ 10 % of the time polling."""
    stamps: list[float] = []

    def slow_poll() -> Counts:
        stamps.append(time.monotonic())
        time.sleep(0.03)
        return Counts()

    with ProgressReporter(slow_poll, ProgressLine(FakeStream(), tty=False, every=0.01)):
        time.sleep(0.8)
    assert 1 <= len(stamps) - 1 <= 4  # the final poll plus at most ~0.8 / 0.31 background polls
    assert all(b - a >= 0.29 for a, b in zip(stamps, stamps[1:-1]))


# ---- the incremental counter ------------------------------------------------------------


def test_incremental_counts_equal_full_counts_poll_after_poll(tmp_path) -> None:
    """Two runs written interleaved, one poll between writes: counting only new rowids adds up
    to what a full COUNT says for the watched run, every time."""
    store = LandscapeStore(f"sqlite:///{tmp_path / 'l.db'}")
    counter = LandscapeCounter("a", incremental=True)
    now = "2026-01-01T00:00:00.000000+00:00"
    sinks = ["good", "good", "rejects", None]
    outcomes = ["completed", "routed", "quarantined", "failed"]
    for step in range(6):
        with store.engine.begin() as conn:
            for run in ("a", "b"):
                conn.execute(s.rows.insert(), [
                    {"row_id": f"{run}{step}-{i}", "run_id": run, "source_node_id": "source:s", "row_index": step * 10 + i,
                     "source_data_hash": "h"} for i in range(step + 1)
                ])
                conn.execute(s.token_outcomes.insert(), [
                    {"outcome_id": f"{run}{step}-{i}", "run_id": run, "token_id": f"{run}{step}-{i}", "node_id": "n",
                     "outcome": outcomes[(step + i) % 4], "sink_name": sinks[(step + i) % 4], "is_terminal": True,
                     "recorded_at": now} for i in range(step + 2)
                ])
        with store.engine.connect() as conn:
            assert counter(conn) == count_progress(conn, "a")
    with store.engine.connect() as conn:
        final = counter(conn)
    store.dispose()
    assert final.rows_read == sum(step + 1 for step in range(6)) == 21
    assert sum(final.per_sink.values()) + final.failed == sum(step + 2 for step in range(6))


# ---- counts and summary against a real run -------------------------------------------------


@pytest.fixture(scope="module")
def watched_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The quickstart on the FnApiRunner with the reporter polling the SQLite Landscape every
    20 ms through its own read-only connection, while the pipeline writes."""
    from conftest import QUICKSTART, retarget

    tmp = tmp_path_factory.mktemp("watched")
    settings = retarget(yaml.safe_load(QUICKSTART.read_text()), tmp / "out")
    db = tmp / "landscape.db"
    loaded = testing.load_for_test(settings, f"sqlite:///{db}")
    result, stream, reporter = _run_polled(loaded)
    return {"result": result, "db": db, "stream": stream, "reporter": reporter}


def test_polling_while_the_pipeline_writes_never_errors(watched_run) -> None:
    reporter = watched_run["reporter"]
    assert reporter.polls >= 2 and reporter.errors == []
    assert watched_run["result"].report.ok


def test_progress_counts_equal_the_landscape(watched_run) -> None:
    result, db = watched_run["result"], watched_run["db"]
    store = LandscapeStore(f"sqlite:///{db}")
    with store.engine.connect() as conn:
        counts = count_progress(conn, result.run_id)
    store.dispose()
    assert counts.rows_read == sql(db, "SELECT COUNT(*) FROM rows WHERE run_id = ?", result.run_id)[0][0] == 300
    assert counts.per_sink == dict(sql(db, "SELECT sink_name, COUNT(*) FROM token_outcomes WHERE run_id = ? "
                                           "AND sink_name IS NOT NULL GROUP BY sink_name", result.run_id))
    assert counts.quarantined == result.summary["quarantined"] == 8
    assert counts.per_sink == result.summary["rows_per_sink"]
    assert watched_run["reporter"].last == counts  # incremental polling added up to the full counts
    final = watched_run["stream"].writes[-1]  # the final line shows the finished counts
    assert "rows read 300" in final and "rejects=8" in final and "quarantined 8" in final


def test_the_reporter_connection_cannot_write(watched_run) -> None:
    engine = read_only_engine(f"sqlite:///{watched_run['db']}")
    with pytest.raises(OperationalError, match="readonly database"), engine.connect() as conn:
        conn.execute(s.runs.update().values(status="tampered"))
    engine.dispose()
    assert sql(watched_run["db"], "SELECT status FROM runs") == [("completed",)]


@pytest.mark.postgres
def test_progress_on_postgres(postgres_url, quickstart_settings, tmp_path) -> None:
    """PostgreSQL: counted in full each poll (no rowids), through a read-only session."""
    loaded = testing.load_for_test(quickstart_settings, postgres_url, audit_log=tmp_path / "audit-log")
    result, stream, reporter = _run_polled(loaded)
    store = LandscapeStore(postgres_url)
    with store.engine.connect() as conn:
        full = count_progress(conn, result.run_id)
    store.dispose()
    assert reporter.errors == [] and reporter.polls >= 2
    assert reporter.last == full and full.rows_read == 300 and full.quarantined == 8
    engine = read_only_engine(postgres_url)
    with pytest.raises(DBAPIError, match="read-only transaction"), engine.connect() as conn:
        conn.execute(s.runs.update().values(status="tampered"))
    engine.dispose()


def test_summary_top_reasons_and_batches(watched_run) -> None:
    result, db = watched_run["result"], watched_run["db"]
    reasons = result.summary["quarantine_reasons"]
    causes = Counter()  # the reason as recorded, else the message without its values
    for (error_json,) in sql(db, "SELECT error_json FROM token_outcomes WHERE run_id = ? AND outcome = 'quarantined'",
                             result.run_id):
        e = json.loads(error_json)
        causes[(e["node_id"], e.get("reason") or without_values(e["message"])[0])] += 1
    expected = sorted(((node, reason, n) for (node, reason), n in causes.items()), key=lambda e: (-e[2], e[0], e[1]))
    assert [(r["node_id"], r["reason"], r["count"]) for r in reasons] == expected[:5]
    assert any(r["count"] == 2 and "ZeroDivisionError" in r["reason"] for r in reasons)
    assert result.summary["batches"] == 0 and result.summary["batches_by_trigger"] == {}
    text = result.text()
    assert "verify     OK" in text and "[completed]" in text
    assert "quarantined 8  top reasons:" in text
    others = sum(e[2] for e in expected[5:])
    assert others > 0 and f"{others}  (other reasons)" in text


def test_batches_by_trigger_and_failure_reasons_from_the_landscape(tmp_path) -> None:
    """summarize reads batches per trigger type (an unflushed batch is `open`) and failure reasons."""
    store = LandscapeStore(f"sqlite:///{tmp_path / 'l.db'}")
    now = "2026-01-01T00:00:00.000000+00:00"
    with store.engine.begin() as conn:
        conn.execute(s.batches.insert(), [
            {"batch_id": f"b{i}", "run_id": "r", "aggregation_node_id": "aggregation:a", "key": "[]", "sequence": i,
             "attempt": 1, "status": status, "trigger_type": trigger, "created_at": now}
            for i, (status, trigger) in enumerate([("completed", "count"), ("completed", "count"),
                                                   ("completed", "end_of_source"), ("draft", None)])
        ])
        error = json.dumps({"node_id": "transform:t", "type": "ValueError", "message": "bad value", "traceback": ["x"]})
        conn.execute(s.token_outcomes.insert(), [
            {"outcome_id": f"o{i}", "run_id": "r", "token_id": f"t{i}", "outcome": "failed", "is_terminal": True,
             "node_id": "transform:t", "error_json": error if i < 3 else None, "recorded_at": now}
            for i in range(4)
        ])
    summary = summarize(store, "r")
    store.dispose()
    assert summary["batches"] == 4
    assert summary["batches_by_trigger"] == {"count": 2, "end_of_source": 1, "open": 1}
    assert summary["failed"] == 4
    assert summary["failure_reasons"] == [
        {"count": 3, "node_id": "transform:t", "error_type": "ValueError", "reason": "bad value", "examples": [], "distinct": 0},
        {"count": 1, "node_id": "transform:t", "error_type": "", "reason": "(no error recorded)", "examples": [],
         "distinct": 0},
    ]
    text = render_text(run_id="r", status="failed", runner="X", duration_s=1, landscape_url="sqlite:///x.db",
                       summary=summary, problems=["1 batch open"])
    assert "batches    4  (count 2, end_of_source 1, open 1)" in text
    assert "failed     4  top reasons:" in text and "3  transform:t  bad value" in text
    assert "verify     1 batch open" in text


def test_landscape_url_password_is_hidden() -> None:
    shown = display_url("postgresql+psycopg://audit:s3cret@db.internal/elspeth")
    assert "s3cret" not in shown and shown == "postgresql+psycopg://audit:***@db.internal/elspeth"
    assert display_url("sqlite:///runs/landscape.db") == "sqlite:///runs/landscape.db"


# ---- the CLI -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The quickstart run three ways by the CLI, at once (three processes, to keep this fast)."""
    from concurrent.futures import ThreadPoolExecutor

    from conftest import QUICKSTART, retarget

    modes = {"json": ["--json"], "quiet": ["--quiet"], "default": []}
    work = {m: tmp_path_factory.mktemp(m) for m in modes}
    for mode, tmp in work.items():
        (tmp / "quickstart.yaml").write_text(yaml.safe_dump(retarget(yaml.safe_load(QUICKSTART.read_text()), tmp / "out")))

    def run(mode: str):
        tmp = work[mode]
        return cli("run", str(tmp / "quickstart.yaml"), "--landscape-url", str(tmp / "l.db"), *modes[mode], cwd=tmp)

    with ThreadPoolExecutor(len(modes)) as pool:
        procs = dict(zip(modes, pool.map(run, modes)))
    return {m: (procs[m], work[m] / "l.db") for m in modes}


def test_cli_json_prints_one_object_whose_counts_match_the_database(cli_runs) -> None:
    proc, db = cli_runs["json"]
    assert proc.code == 0, proc
    data = json.loads(proc.stdout)  # the whole of stdout is one JSON object
    assert proc.stderr == ""  # stderr is not a terminal: no progress with --json
    run_id = data["run_id"]
    for key in ("status", "runner", "landscape", "duration_s", "rows_read", "rows_per_sink", "quarantined", "failed",
                "batches", "batches_by_trigger", "quarantine_reasons", "failure_reasons", "warnings", "verify"):
        assert key in data, key
    assert data["status"] == "completed" and data["verify"] == [] and data["warnings"] == []
    assert data["rows_read"] == sql(db, "SELECT COUNT(*) FROM rows WHERE run_id = ?", run_id)[0][0] == 300
    assert data["rows_per_sink"] == dict(sql(db, "SELECT sink_name, COUNT(*) FROM token_outcomes WHERE run_id = ? "
                                                 "AND sink_name IS NOT NULL GROUP BY 1", run_id))
    assert data["quarantined"] == sql(db, "SELECT COUNT(*) FROM token_outcomes WHERE run_id = ? "
                                          "AND outcome = 'quarantined'", run_id)[0][0]
    assert sum(r["count"] for r in data["quarantine_reasons"]) <= data["quarantined"]
    assert data["batches"] == sql(db, "SELECT COUNT(*) FROM batches WHERE run_id = ?", run_id)[0][0]


def test_cli_quiet_prints_nothing_and_exits_0(cli_runs) -> None:
    proc, db = cli_runs["quiet"]
    assert (proc.code, proc.stdout, proc.stderr) == (0, "", ""), proc
    assert sql(db, "SELECT status FROM runs") == [("completed",)]


def test_cli_default_output_has_progress_lines_and_the_summary_table(cli_runs) -> None:
    proc, _ = cli_runs["default"]
    assert proc.code == 0, proc
    progress = [line for line in proc.stderr.splitlines() if line.startswith("progress")]
    assert progress and "rows read 300" in progress[-1] and "quarantined 8" in progress[-1], proc
    assert "\x1b" not in proc.stderr + proc.stdout and "\r" not in proc.stderr + proc.stdout
    out = proc.stdout
    assert "rows read  300" in out and "verify     OK" in out
    assert "quarantined 8  top reasons:" in out
    assert "transform:pricing  \"round(row['discount'] / row['quantity'], 2)\": ZeroDivisionError: float division by zero" in out
    assert "per sink   large      62" in out and "           rejects     8" in out


def test_cli_rejects_a_bad_progress_interval(tmp_path) -> None:
    proc = cli("run", "pipeline.yaml", "--progress-every", "0", cwd=tmp_path)
    assert proc.code == 2 and "expected a positive number of seconds" in proc.stderr and "Traceback" not in proc.stderr


def _run_polled(loaded):
    """Run with the Landscape polled every 20 ms into a fake non-TTY stream."""
    stream, reporters = FakeStream(), []

    @contextmanager
    def progress(url: str, run_id: str) -> Iterator[ProgressReporter]:
        with landscape_progress(url, run_id, stream=stream, every=0.02, tty=False) as reporter:
            reporters.append(reporter)
            yield reporter

    return execute_run(loaded, progress=progress), stream, reporters[0]
