"""The audit writer child: commits and loads before a bundle's wait returns, reports errors, dies with its parent."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from sqlalchemy import select

import records_for_tests as rec
from elspeth_beam.auditlog import segments
from elspeth_beam.auditlog.buffer import AuditSegment
from elspeth_beam.auditlog.loader import WRITE_STATS
from elspeth_beam.auditlog.records import tables_of
from elspeth_beam.auditlog.writer_process import AuditWriter, AuditWriterError
from elspeth_beam.core.enums import Outcome
from elspeth_beam.landscape import schema as s
from elspeth_beam.landscape.store import LandscapeStore


def _outcomes(n: int, start: int = 0, run_id: str = "run-w") -> AuditSegment:
    records = [rec.outcome(run_id=run_id, outcome_id=f"out_{i}", token_id=f"tok_{i}", outcome=Outcome.COMPLETED,
                           node_id="sink:out", sink_name="out") for i in range(start, n)]
    return AuditSegment(run_id, "sink:out", tables_of(records))


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if open(f"/proc/{pid}/stat").read().split()[2] == "Z":  # exited, not yet reaped
            return True
        time.sleep(0.05)
    return False


def test_wait_returns_after_every_segment_is_committed_and_drain_after_it_is_loaded(tmp_path):
    url = f"sqlite:///{tmp_path}/l.db"
    writer = AuditWriter()
    rows_before = WRITE_STATS.rows
    log = tmp_path / "audit"
    tickets = [writer.submit_segment(url, str(log), seg) for seg in (_outcomes(3000), _outcomes(7000, 3000), _outcomes(3000))]
    writer.wait(tickets)
    assert len(segments.committed(log / "run-w")) == 2  # committed when the wait returns
    writer.drain(url)
    store = LandscapeStore(url)
    with store.engine.connect() as conn:  # a fresh connection sees all of it: committed
        ids = conn.execute(select(s.token_outcomes.c.outcome_id)).scalars().all()
        loaded = conn.execute(select(s.audit_segments.c.segment_id)).scalars().all()
    assert sorted(ids) == sorted(f"out_{i}" for i in range(7000))
    assert WRITE_STATS.rows - rows_before == 3000 + 4000  # the child's counts reach this process; the third: loaded before
    assert len(loaded) == 2  # the third segment is the first one's work again: one name, one load
    assert len(segments.committed(log / "run-w")) == 2  # and one committed segment
    writer.drain(url)  # nothing left to load: returns at once
    writer.wait(tickets)  # waiting again is harmless
    store.dispose()


def test_a_failed_load_is_raised_by_the_next_drain_and_the_child_lives_on(tmp_path):
    db = tmp_path / "old.db"
    import sqlite3

    con = sqlite3.connect(db)
    con.execute("CREATE TABLE runs (run_id TEXT)")  # a Landscape of another schema version
    con.commit()
    con.close()
    writer = AuditWriter()
    log = str(tmp_path / "audit")
    good, old = f"sqlite:///{tmp_path}/new.db", f"sqlite:///{db}"
    writer.wait([writer.submit_segment(good, log, _outcomes(5))])
    writer.drain(good)
    writer.wait([writer.submit_segment(old, log, _outcomes(5, run_id="run-o"))])  # committed: the files are fine
    with pytest.raises(AuditWriterError, match="schema version 1"):
        writer.drain(old)  # the load failed: the next drain says why
    writer.wait([writer.submit_segment(good, log, _outcomes(6))])  # the child lives on
    writer.drain(good)


def test_the_child_exits_when_its_pipeline_process_dies(tmp_path):
    script = (
        "import os, sys\n"
        "from elspeth_beam.auditlog.writer_process import AuditWriter\n"
        "w = AuditWriter.shared()\n"
        "print(w._proc.pid, flush=True)\n"
        "os._exit(137)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 137
    assert _gone(int(proc.stdout.split()[0]))


def test_relative_sqlite_urls_mean_the_pipeline_process_directory(tmp_path, monkeypatch):
    from elspeth_beam.landscape.store import absolute_url

    monkeypatch.chdir(tmp_path)
    assert absolute_url("sqlite:///audit/l.db") == f"sqlite:///{tmp_path}/audit/l.db"
    assert absolute_url("runs/l.db") == f"sqlite:///{tmp_path}/runs/l.db"
    assert absolute_url("postgresql://u:secret@h/db") == "postgresql://u:secret@h/db"


def test_each_segment_goes_to_the_writer_whole_and_the_bundle_waits_for_all(tmp_path):
    """A segment is one transaction: a sink's part (its artifact and all of its rows' outcomes)
    commits whole or not at all; finish_bundle waits for every segment of the bundle."""
    from elspeth_beam.pipeline import audit_sink

    sizes: list[int] = []
    waited: list[list[int]] = []

    class Recording:
        def submit_segment(self, url, audit_log, segment):
            sizes.append(segment.records)
            return len(sizes)

        def wait(self, tickets):
            waited.append(list(tickets))

    fn = audit_sink.WriteAuditFn(f"sqlite:///{tmp_path}/l.db", str(tmp_path / "audit"))
    fn.writer = Recording()
    fn.start_bundle()
    for n in (2000, 10_001, 10):
        fn.process(_outcomes(n))
    fn.finish_bundle()
    assert sizes == [2000, 10_001, 10]
    assert waited == [[1, 2, 3]]
