"""The audit writer child: commits before a bundle's wait returns, reports errors, dies with its parent."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from sqlalchemy import select

from elspeth_beam.core.enums import Outcome
from elspeth_beam.core.events import OutcomeRecorded
from elspeth_beam.landscape import schema as s
from elspeth_beam.landscape.store import WRITE_STATS, LandscapeStore
from elspeth_beam.auditlog.writer_process import AuditWriter, AuditWriterError


def _outcomes(n: int, run_id: str = "run-w") -> list[OutcomeRecorded]:
    return [OutcomeRecorded.fast(run_id=run_id, outcome_id=f"out_{i}", token_id=f"tok_{i}", outcome=Outcome.COMPLETED,
                                 node_id="sink:out", sink_name="out") for i in range(n)]


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


def test_wait_returns_after_every_batch_is_committed(tmp_path):
    url = f"sqlite:///{tmp_path}/l.db"
    writer = AuditWriter()
    rows_before = WRITE_STATS.rows
    tickets = [writer.submit(url, batch) for batch in (_outcomes(3000), _outcomes(7000)[3000:], _outcomes(10))]
    writer.wait(tickets)
    store = LandscapeStore(url)
    with store.engine.connect() as conn:  # a fresh connection sees all of it: committed
        ids = conn.execute(select(s.token_outcomes.c.outcome_id)).scalars().all()
    assert sorted(ids) == sorted(f"out_{i}" for i in range(7000))
    assert WRITE_STATS.rows - rows_before == 3000 + 4000 + 10  # the child's counts reach this process
    writer.wait(tickets)  # waiting again is harmless
    store.dispose()


def test_a_failed_write_is_raised_to_the_bundle_that_sent_it(tmp_path):
    db = tmp_path / "old.db"
    import sqlite3

    con = sqlite3.connect(db)
    con.execute("CREATE TABLE runs (run_id TEXT)")  # a Landscape of another schema version
    con.commit()
    con.close()
    writer = AuditWriter()
    ok = writer.submit(f"sqlite:///{tmp_path}/new.db", _outcomes(5))
    bad = writer.submit(f"sqlite:///{db}", _outcomes(5))
    writer.wait([ok])
    with pytest.raises(AuditWriterError, match="schema version 1"):
        writer.wait([ok, bad])
    writer.wait([writer.submit(f"sqlite:///{tmp_path}/new.db", _outcomes(6))])  # the child lives on


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


def test_audit_elements_are_batched_into_transactions_but_never_split(tmp_path):
    """Small elements share a transaction of about 5 000 events; an element is never split, so
    a sink's part (its artifact and all of its rows' outcomes) commits whole or not at all."""
    from elspeth_beam.pipeline import landscape_sink

    sizes: list[int] = []

    class Recording:
        def submit(self, url, events):
            sizes.append(len(events))
            return len(sizes)

        def wait(self, tickets):
            assert tickets == list(range(1, len(sizes) + 1))

    fn = landscape_sink.WriteLandscapeFn(f"sqlite:///{tmp_path}/l.db")
    fn.writer = Recording()
    fn.start_bundle()
    for _ in range(3):
        fn.process(_outcomes(2000))
    assert sizes == [4000]  # the third would have made 6 000
    fn.process(_outcomes(10_001))  # a part of 5 000 rows: one element
    assert sizes == [4000, 2000, 10_001]
    fn.process(_outcomes(10))
    fn.finish_bundle()
    assert sizes == [4000, 2000, 10_001, 10]
