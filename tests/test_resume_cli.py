"""Crash and resume through the CLI, in real subprocesses killed with ``os._exit(137)``.

The checker is the one of Flink's exactly-once tests: a deterministic keyed input with a
per-key sequence number, and after crash + resume every ``(key, seq)`` appears exactly once
across the sinks — nothing missing, nothing doubled — and the sinks hold what an
uninterrupted run writes. The Landscape is checked with plain SQL as well as ``verify``.

Subprocesses get ``tests/`` on PYTHONPATH (for ``resume_helpers.Passthrough``); their
stdout/stderr are captured and shown when an assertion fails.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from resume_helpers import (
    Proc,
    canonical_records,
    cli,
    cli_small_buffers,
    copy_db,
    duplicates,
    durable_rows,
    gate_passthrough_settings,
    keyed_rows,
    read_jsonl,
    rows_without_exactly_one_terminal,
    sql,
    stats_settings,
    tokens_without_exactly_one_terminal,
    write_jsonl,
    write_yaml,
)

from elspeth_beam import testing
from elspeth_beam.core import ids
from elspeth_beam.inspect import explain
from elspeth_beam.landscape.store import LandscapeStore

AGG_PASS = "aggregation:pass"
AGG_STATS = "aggregation:stats"


# ---- helpers ------------------------------------------------------------------------------


def url(db: Path) -> str:
    return f"sqlite:///{db}"


def run_status(db: Path, run_id: str) -> str:
    return sql(db, "SELECT status FROM runs WHERE run_id = ?", run_id)[0][0]


def snapshot(db: Path) -> dict[str, list[str]]:
    """Every column of every table (timestamps included): a refusal must change nothing."""
    store = LandscapeStore(url(db), create=False)
    try:
        return testing.snapshot(store, ignore=frozenset())
    finally:
        store.dispose()


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def expected_gate_sinks(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """What the gate → passthrough pipeline must write, computed from the input alone."""
    return {
        "fifths": [r for r in rows if r["seq"] % 5 == 0],
        "main": [{**r, "seen": True} for r in rows if r["seq"] % 5 != 0],
    }


def assert_refused(proc: Proc, *needles: str) -> None:
    assert proc.code == 2, proc
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc
    for needle in needles:
        assert needle in proc.stderr, proc


def assert_exactly_once(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Every (key, seq) once across main ∪ fifths; each sink holds exactly its share."""
    main, fifths = read_jsonl(out_dir / "main.jsonl"), read_jsonl(out_dir / "fifths.jsonl")
    seen = [(r["key"], r["seq"]) for r in main + fifths]
    wanted = {(r["key"], r["seq"]) for r in rows}
    assert not duplicates(seen), f"doubled: {sorted(duplicates(seen))[:10]}"
    missing = wanted - set(seen)
    assert not missing, f"{len(missing)} (key, seq) missing, e.g. {sorted(missing)[:10]}"
    assert not set(seen) - wanted, "records that were never in the input"
    assert all(r["seq"] % 5 == 0 for r in fifths) and all(r["seq"] % 5 != 0 for r in main)
    expected = expected_gate_sinks(rows)
    assert canonical_records(main) == canonical_records(expected["main"])
    assert canonical_records(fifths) == canonical_records(expected["fifths"])


def assert_artifacts_match_files(db: Path, run_id: str, sinks: dict[str, Path]) -> None:
    """The merged artifact of each sink describes its file; its parts add up to it."""
    for name, path in sinks.items():
        merged = sql(db, """SELECT path, row_count, content_hash, size_bytes FROM artifacts
                            WHERE run_id = ? AND sink_node_id = ? AND artifact_kind = 'merged'""", run_id, f"sink:{name}")
        assert len(merged) == 1, f"sink {name}: merged artifacts {merged}"
        a_path, rows_, digest, size = merged[0]
        data = path.read_bytes()
        assert Path(a_path) == path
        assert rows_ == len([line for line in data.decode().splitlines() if line.strip()])
        assert digest == hashlib.sha256(data).hexdigest()
        assert size == len(data)
        parts = sql(db, """SELECT path, row_count, content_hash FROM artifacts
                           WHERE run_id = ? AND sink_node_id = ? AND artifact_kind = 'part'""", run_id, f"sink:{name}")
        assert sum(p[1] for p in parts) == rows_
        for p_path, _, p_digest in parts:
            assert hashlib.sha256(Path(p_path).read_bytes()).hexdigest() == p_digest
        # the merged file is exactly its recorded parts, joined
        joined = sorted(line for p in parts for line in Path(p[0]).read_text().splitlines())
        assert joined == sorted(data.decode().splitlines())


def assert_landscape_complete(db: Path, run_id: str, rows: int) -> None:
    assert run_status(db, run_id) == "completed"
    assert sql(db, "SELECT COUNT(*), MIN(row_index), MAX(row_index) FROM rows WHERE run_id = ?", run_id) == [(rows, 0, rows - 1)]
    assert tokens_without_exactly_one_terminal(db, run_id) == []
    assert rows_without_exactly_one_terminal(db, run_id) == []
    assert sql(db, "SELECT COUNT(*) FROM node_states WHERE run_id = ? AND status NOT IN ('completed','failed')", run_id) == [(0,)]
    assert sql(db, "SELECT COUNT(*) FROM batches WHERE run_id = ? AND status NOT IN ('completed','failed')", run_id) == [(0,)]
    verify = cli("verify", run_id, "--landscape-url", str(db))
    assert verify.code == 0 and f"run {run_id}: OK" in verify.stdout, verify


# ---- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gate_input(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    rows = keyed_rows()  # 6 keys × 40 rows, per-key seq
    return write_jsonl(tmp_path_factory.mktemp("input") / "keyed.jsonl", rows), rows


@pytest.fixture(scope="module")
def gate_reference(tmp_path_factory: pytest.TempPathFactory, gate_input) -> dict[str, list[str]]:
    """An uninterrupted run of the gate pipeline, in its own folder."""
    source, rows = gate_input
    work = tmp_path_factory.mktemp("reference")
    settings = write_yaml(work / "pipeline.yaml", gate_passthrough_settings(source, work / "out"))
    proc = cli("run", str(settings), "--landscape-url", url(work / "ref.db"), "--run-id", "reference")
    assert proc.code == 0, proc
    sinks = {n: canonical_records(read_jsonl(work / "out" / f"{n}.jsonl")) for n in ("main", "fifths")}
    expected = expected_gate_sinks(rows)
    assert sinks == {n: canonical_records(v) for n, v in expected.items()}  # the reference is right, too
    return sinks


@pytest.fixture(scope="module")
def killed_after_rows(tmp_path_factory: pytest.TempPathFactory, gate_input) -> dict[str, Any]:
    """ELSPETH_FAULT=after_rows:100 on the gate pipeline, then `resume`."""
    source, rows = gate_input
    work = tmp_path_factory.mktemp("killed")
    settings = write_yaml(work / "pipeline.yaml", gate_passthrough_settings(source, work / "out"))
    db = work / "landscape.db"
    crash = cli("run", str(settings), "--landscape-url", url(db), "--run-id", "rid-100", fault="after_rows:100")
    status_after_crash = run_status(db, "rid-100")
    resume = cli("resume", "rid-100", "--landscape-url", url(db), "--keep-parts")  # assert_artifacts_match_files reads the parts
    return {"work": work, "db": db, "out": work / "out", "crash": crash, "resume": resume,
            "status_after_crash": status_after_crash, "settings": settings, "rows": rows}


# ---- 2. kill after N rows, then resume --------------------------------------------------------


def test_kill_after_rows_then_resume_is_exactly_once(killed_after_rows, gate_reference) -> None:
    k = killed_after_rows
    assert k["crash"].code == 137, k["crash"]  # a real kill, not an exception
    assert "fault injected" in k["crash"].stderr
    assert k["status_after_crash"] != "completed"

    assert k["resume"].code == 0, k["resume"]
    assert "verify     OK" in k["resume"].stdout and "[completed]" in k["resume"].stdout

    db, out = k["db"], k["out"]
    assert_landscape_complete(db, "rid-100", rows=240)
    assert_exactly_once(out, k["rows"])
    assert {n: canonical_records(read_jsonl(out / f"{n}.jsonl")) for n in ("main", "fifths")} == gate_reference
    assert_artifacts_match_files(db, "rid-100", {"main": out / "main.jsonl", "fifths": out / "fifths.jsonl"})
    # lineage kept: count batches of 7 per key (32 non-fifth rows per key → 4 full + 1 of 4)
    per_key = sql(db, """SELECT key, COUNT(*), SUM(CASE WHEN trigger_type = 'count' THEN 1 ELSE 0 END)
                         FROM batches WHERE run_id = ? AND status = 'completed' GROUP BY key""", "rid-100")
    assert sorted(per_key) == sorted((json.dumps([k_]), 5, 4) for k_ in {r["key"] for r in k["rows"]})


def test_second_resume_is_refused_and_changes_nothing(killed_after_rows) -> None:
    k = killed_after_rows
    assert k["resume"].code == 0, k["resume"]
    before, files_before = snapshot(k["db"]), files_under(k["out"])
    again = cli("resume", "rid-100", "--landscape-url", url(k["db"]))
    assert_refused(again, "rid-100", "already completed")
    assert snapshot(k["db"]) == before
    assert files_under(k["out"]) == files_before


@pytest.mark.parametrize("after_rows", [200, 220])
def test_kill_with_partly_committed_bundle_then_resume(tmp_path: Path, gate_input, gate_reference, after_rows: int) -> None:
    """The audit sink commits a segment every ``SEGMENT_RECORDS`` records *inside* a bundle, so a kill
    leaves a Landscape holding part of the source's, the gate's and the aggregation's events
    — flushed batches whose outputs never reached a sink, draft batches, tokens the
    aggregation recorded before the source's own records of them. Resume must still finish
    with every (key, seq) exactly once. Limits are lowered so 240 rows are enough
    (``test_kill_at_default_buffer_sizes`` shows the same at the real limits)."""
    source, rows = gate_input
    settings = write_yaml(tmp_path / "pipeline.yaml", gate_passthrough_settings(source, tmp_path / "out"))
    db = tmp_path / "landscape.db"
    crash = cli_small_buffers("run", str(settings), "--landscape-url", url(db), "--run-id", "rid",
                              fault=f"after_rows:{after_rows}", segment_records=20)
    assert crash.code == 137, crash
    assert run_status(db, "rid") != "completed"
    # the crash left a partial Landscape (not the trivial all-or-nothing case)
    committed_rows = durable_rows(db, "rid")
    assert 0 < committed_rows < 240, f"scenario needs a partly committed Landscape; {committed_rows} rows committed"
    assert sql(db, "SELECT COUNT(*) FROM batches WHERE run_id = 'rid' AND status = 'completed'")[0][0] > 0

    resume = cli("resume", "rid", "--landscape-url", url(db), "--keep-parts")  # assert_artifacts_match_files reads the parts
    assert resume.code == 0, resume
    assert_landscape_complete(db, "rid", rows=240)
    assert_exactly_once(tmp_path / "out", rows)
    assert {n: canonical_records(read_jsonl(tmp_path / "out" / f"{n}.jsonl")) for n in ("main", "fifths")} == gate_reference
    assert_artifacts_match_files(db, "rid", {"main": tmp_path / "out" / "main.jsonl", "fifths": tmp_path / "out" / "fifths.jsonl"})


def test_resume_keeps_the_runs_configured_audit_log(tmp_path: Path, gate_input, gate_reference) -> None:
    """A run whose settings name their own audit-log folder and segment size, killed with
    segments committed there: `resume` without --settings must read the run's landscape
    section as recorded (only the URL is the one given), catch up from that folder and
    write there — not in the default folder beside the Landscape."""
    source, rows = gate_input
    raw = gate_passthrough_settings(source, tmp_path / "out")
    audit_log = tmp_path / "my-audit"
    raw["landscape"] = {"audit_log": str(audit_log), "segment_records": 20}
    settings = write_yaml(tmp_path / "pipeline.yaml", raw)
    db = tmp_path / "landscape.db"
    crash = cli("run", str(settings), "--landscape-url", url(db), "--run-id", "rid", fault="after_rows:200")
    assert crash.code == 137, crash
    assert any((audit_log / "rid").iterdir()), "the crash should leave segments in the configured folder"

    resume = cli("resume", "rid", "--landscape-url", url(db))
    assert resume.code == 0, resume
    assert not db.with_suffix(".audit").exists(), "resume wrote to the default audit-log folder"
    assert_landscape_complete(db, "rid", rows=240)
    assert_exactly_once(tmp_path / "out", rows)
    assert {n: canonical_records(read_jsonl(tmp_path / "out" / f"{n}.jsonl")) for n in ("main", "fifths")} == gate_reference


def test_kill_at_default_buffer_sizes(tmp_path: Path) -> None:
    """Unpatched limits: 15 000 rows fill the audited DoFns' 20 000-record segments mid-bundle,
    so the kill at row 14 000 leaves a partly committed audit (as above, at real scale)."""
    rows = keyed_rows(per_key=2500)
    source = write_jsonl(tmp_path / "in" / "keyed.jsonl", rows)
    settings = write_yaml(tmp_path / "pipeline.yaml", gate_passthrough_settings(source, tmp_path / "out"))
    db = tmp_path / "landscape.db"
    crash = cli("run", str(settings), "--landscape-url", url(db), "--run-id", "big", fault="after_rows:14000")
    assert crash.code == 137, crash
    committed_rows = durable_rows(db, "big")
    assert 0 < committed_rows < 15000, f"scenario needs a partly committed audit; {committed_rows} rows committed"
    resume = cli("resume", "big", "--landscape-url", url(db), "--keep-parts")  # assert_artifacts_match_files reads the parts
    assert resume.code == 0, resume
    assert_landscape_complete(db, "big", rows=15000)
    assert_exactly_once(tmp_path / "out", rows)
    assert_artifacts_match_files(db, "big", {"main": tmp_path / "out" / "main.jsonl", "fifths": tmp_path / "out" / "fifths.jsonl"})


# ---- 2b. kill inside a flush, then resume ------------------------------------------------------


@pytest.fixture(scope="module")
def stats_reference(tmp_path_factory: pytest.TempPathFactory, gate_input) -> list[str]:
    source, _ = gate_input
    work = tmp_path_factory.mktemp("stats-reference")
    settings = write_yaml(work / "pipeline.yaml", stats_settings(source, work / "out"))
    proc = cli("run", str(settings), "--landscape-url", url(work / "ref.db"), "--run-id", "reference")
    assert proc.code == 0, proc
    return canonical_records(read_jsonl(work / "out" / "totals.jsonl"))


def test_kill_in_flush_then_resume_retries_interrupted_batches(tmp_path: Path, gate_input, stats_reference) -> None:
    source, rows = gate_input
    settings = write_yaml(tmp_path / "pipeline.yaml", stats_settings(source, tmp_path / "out"))
    db = tmp_path / "landscape.db"
    crash = cli("run", str(settings), "--landscape-url", url(db), "--run-id", "rid", fault="in_flush:stats:2")
    assert crash.code == 137, crash
    assert "inside flush 2 of aggregation 'stats'" in crash.stderr
    assert run_status(db, "rid") != "completed"

    open_batches = sql(db, """SELECT batch_id, key, sequence, attempt FROM batches
                              WHERE run_id = 'rid' AND status IN ('draft', 'executing')""")
    assert open_batches, "the interrupted batch must be visible in the Landscape before resume"
    members_before = {
        b[0]: sql(db, "SELECT ordinal, token_id FROM batch_members WHERE batch_id = ? ORDER BY ordinal", b[0])
        for b in open_batches
    }
    assert all(members_before.values())

    resume = cli("resume", "rid", "--landscape-url", url(db), "--keep-parts")  # assert_artifacts_match_files reads the parts
    assert resume.code == 0, resume
    assert_landscape_complete(db, "rid", rows=240)

    store = LandscapeStore(url(db), create=False)
    try:
        for old_id, key, seq, attempt in open_batches:
            status, trigger, reason, state_id = sql(
                db, "SELECT status, trigger_type, trigger_reason, aggregation_state_id FROM batches WHERE batch_id = ?", old_id)[0]
            assert (status, trigger, reason) == ("failed", "interrupted", "interrupted")
            st_status, st_batch, st_node, error = sql(
                db, "SELECT status, batch_id, node_id, error_json FROM node_states WHERE state_id = ?", state_id)[0]
            assert (st_status, st_batch, st_node) == ("failed", old_id, AGG_STATS)
            assert json.loads(error)["type"] == "Interrupted"

            retries = sql(db, """SELECT batch_id, key, sequence, attempt, status, trigger_type FROM batches
                                 WHERE retry_of_batch_id = ?""", old_id)
            assert len(retries) == 1, retries
            new_id, new_key, new_seq, new_attempt, new_status, new_trigger = retries[0]
            assert (new_key, new_seq, new_attempt, new_status) == (key, seq, attempt + 1, "completed")
            assert new_id == ids.batch_id("rid", AGG_STATS, key, seq, attempt + 1)
            assert new_trigger == "end_of_source"
            new_members = sql(db, "SELECT ordinal, token_id FROM batch_members WHERE batch_id = ? ORDER BY ordinal", new_id)
            assert new_members == members_before[old_id]  # same members, same ordinals

            (out_token,) = [r[0] for r in sql(db, "SELECT token_id FROM batch_outputs WHERE batch_id = ?", new_id)]
            story = explain.explain_token(store, "rid", out_token)
            member_rows = {r[0] for r in sql(db, """SELECT r.row_index FROM batch_members m
                                                   JOIN tokens t ON t.token_id = m.token_id
                                                   JOIN rows r ON r.row_id = t.row_id WHERE m.batch_id = ?""", new_id)}
            assert {r["row_index"] for r in story["source_rows"]} == member_rows
            assert len(member_rows) == len(new_members)
            explained = {b["batch_id"]: b for b in story["batches"]}
            assert explained[new_id]["flush_state"]["status"] == "completed"
            assert story["token"]["parent_ids"] == [m[1] for m in new_members]
    finally:
        store.dispose()

    assert canonical_records(read_jsonl(tmp_path / "out" / "totals.jsonl")) == stats_reference
    assert_artifacts_match_files(db, "rid", {"totals": tmp_path / "out" / "totals.jsonl"})
    # every key's totals are the whole key (40 rows), nothing flushed twice
    totals = read_jsonl(tmp_path / "out" / "totals.jsonl")
    assert sorted(t["key"] for t in totals) == sorted({r["key"] for r in rows})
    assert all(t["batch_size"] == 40 and t["seq_sum"] == sum(range(40)) for t in totals)


def test_kill_during_resume_then_resume_again(tmp_path: Path, gate_input, stats_reference) -> None:
    """A resume can die too: killed in a flush, then the resume killed after 100 rows (before
    its aggregation committed the retried batches), then resumed again — still complete."""
    source, _ = gate_input
    settings = write_yaml(tmp_path / "pipeline.yaml", stats_settings(source, tmp_path / "out"))
    db = tmp_path / "landscape.db"
    crash = cli("run", str(settings), "--landscape-url", url(db), "--run-id", "rid", fault="in_flush:stats:2")
    assert crash.code == 137, crash
    crash_again = cli("resume", "rid", "--landscape-url", url(db), fault="after_rows:100")
    assert crash_again.code == 137, crash_again
    assert run_status(db, "rid") != "completed"
    resume = cli("resume", "rid", "--landscape-url", url(db), "--keep-parts")  # assert_artifacts_match_files reads the parts
    assert resume.code == 0, resume
    assert_landscape_complete(db, "rid", rows=240)
    assert canonical_records(read_jsonl(tmp_path / "out" / "totals.jsonl")) == stats_reference
    assert_artifacts_match_files(db, "rid", {"totals": tmp_path / "out" / "totals.jsonl"})


# ---- 3 & 4. refusals and `runs` ----------------------------------------------------------------


@pytest.fixture(scope="module")
def several_runs(tmp_path_factory: pytest.TempPathFactory, gate_input) -> dict[str, Any]:
    """One Landscape: a completed run, a run killed in a flush, a run killed after 100 rows."""
    source, _ = gate_input
    work = tmp_path_factory.mktemp("several")
    db = work / "landscape.db"
    done = write_yaml(work / "done.yaml", stats_settings(source, work / "out-done"))
    flushed = write_yaml(work / "flush.yaml", stats_settings(source, work / "out-flush"))
    early = write_yaml(work / "early.yaml", gate_passthrough_settings(source, work / "out-early"))
    procs = [
        cli("run", str(done), "--landscape-url", url(db), "--run-id", "run-done"),
        cli("run", str(flushed), "--landscape-url", url(db), "--run-id", "run-flush", fault="in_flush:stats:2"),
        cli("run", str(early), "--landscape-url", url(db), "--run-id", "run-early", fault="after_rows:100"),
    ]
    assert [p.code for p in procs] == [0, 137, 137], "\n".join(map(str, procs))
    return {"work": work, "db": db, "early_settings": early, "source": source}


def test_runs_lists_run_ids_with_status_and_rows(several_runs) -> None:
    db = several_runs["db"]
    proc = cli("runs", str(db))
    assert proc.code == 0, proc
    listed = {}
    lines = proc.stdout.splitlines()
    assert lines[-1] == f"landscape: sqlite:///{db}"
    for line in lines[1:-1]:  # run id, pipeline, status, started, duration, rows, outcomes
        m = re.match(r"^(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\d+)\s+(\S.*)$", line)
        assert m, f"unparseable line {line!r} in\n{proc.stdout}"
        listed[m.group(1)] = (m.group(3), int(m.group(6)))
    truth = {
        rid: (status, sql(db, "SELECT COUNT(*) FROM rows WHERE run_id = ?", rid)[0][0])
        for rid, status in sql(db, "SELECT run_id, status FROM runs")
    }
    assert listed == truth
    assert listed["run-done"] == ("completed", 240)
    assert listed["run-flush"][0] != "completed" and listed["run-flush"][1] == 240
    assert listed["run-early"][0] != "completed"
    assert list(listed) == ["run-early", "run-flush", "run-done"]  # newest first


def test_resume_of_completed_run_is_refused(several_runs) -> None:
    db = several_runs["db"]
    before, files = snapshot(db), files_under(several_runs["work"] / "out-done")
    proc = cli("resume", "run-done", "--landscape-url", url(db))
    assert_refused(proc, "run-done", "already completed")
    assert snapshot(db) == before and files_under(several_runs["work"] / "out-done") == files


def test_resume_of_missing_run_is_refused(several_runs) -> None:
    db = several_runs["db"]
    before = snapshot(db)
    proc = cli("resume", "run-nope", "--landscape-url", url(db))
    assert_refused(proc, "run-nope", "not in the Landscape")
    assert snapshot(db) == before


def test_resume_with_missing_landscape_is_refused(tmp_path: Path) -> None:
    proc = cli("resume", "rid", "--landscape-url", url(tmp_path / "absent.db"))
    assert_refused(proc, "no Landscape database")
    assert not (tmp_path / "absent.db").exists()


def test_resume_with_changed_settings_is_refused(several_runs, tmp_path: Path) -> None:
    db = copy_db(several_runs["db"], tmp_path / "landscape.db")  # the positive control below writes
    original = several_runs["early_settings"]
    changed = yaml.safe_load(original.read_text())
    changed["aggregations"][0]["trigger"]["count"] = 8
    changed_path = write_yaml(tmp_path / "changed.yaml", changed)
    before = snapshot(db)
    proc = cli("resume", "run-early", "--landscape-url", url(db), "--settings", str(changed_path))
    assert_refused(proc, "settings differ", "run-early")
    assert snapshot(db) == before
    # positive control: the original file is accepted, so the refusal was about the change
    ok = cli("resume", "run-early", "--landscape-url", url(db), "--settings", str(original))
    assert ok.code == 0, ok
    assert run_status(db, "run-early") == "completed"
