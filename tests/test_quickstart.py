"""The quickstart pipeline end to end: counts, invariants, sink files match the audit."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import func, select

from elspeth_beam import testing
from elspeth_beam.landscape import schema as s


def test_quickstart_runs_and_verifies(quickstart_settings, tmp_path):
    run = testing.run_for_test(quickstart_settings, tmp_path)
    testing.assert_audit_complete(run)
    summary = run.result.summary
    assert summary["rows_read"] == 300
    per_sink = summary["rows_per_sink"]
    # 7 bad source records + 2 zero-quantity rows failing the pricing transform - see make_orders.py
    assert per_sink["rejects"] == 8
    assert per_sink["large"] == per_sink["review"]  # every large order is forked to both
    assert per_sink["large"] + per_sink["standard"] + per_sink["rejects"] == 300

    with run.store.engine.connect() as conn:
        open_states = conn.execute(select(func.count()).select_from(s.node_states).where(s.node_states.c.status == "open")).scalar_one()
        assert open_states == 0
        forked = conn.execute(
            select(func.count()).select_from(s.token_outcomes).where(s.token_outcomes.c.outcome == "forked")
        ).scalar_one()
        assert forked == per_sink["large"]

    # sink files hold exactly what the Landscape says was written, and their hashes match; the
    # parts they were merged from are recorded, and removed now that the run completed
    for art in run.store.table_rows(s.artifacts, run.run_id):
        path = Path(art["path"])
        if art["artifact_kind"] == "merged":
            assert hashlib.sha256(path.read_bytes()).hexdigest() == art["content_hash"]
        else:
            assert not path.exists()
    standard = Path(quickstart_settings["sinks"]["standard"]["options"]["path"])
    assert len(standard.read_text().splitlines()) == 1 + per_sink["standard"]


def test_a_run_collects_garbage_less_often_and_restores_the_thresholds(quickstart_settings, tmp_path):
    import contextlib
    import gc

    import pytest

    from elspeth_beam.config.loader import load_settings_dict
    from elspeth_beam.core.errors import PipelineFailedError
    from elspeth_beam.run import execute_run

    seen = []

    @contextlib.contextmanager
    def progress(url, run_id):  # entered while the pipeline runs
        seen.append(gc.get_threshold())
        yield

    before = gc.get_threshold()
    loaded = load_settings_dict(quickstart_settings, landscape_url=testing.landscape_url(tmp_path))
    execute_run(loaded, progress=progress)
    assert seen == [(50_000, 50, 100)] and gc.get_threshold() == before

    @contextlib.contextmanager
    def failing(url, run_id):
        raise RuntimeError("the pipeline died")
        yield

    with pytest.raises(PipelineFailedError):
        execute_run(loaded, progress=failing)
    assert gc.get_threshold() == before


def test_a_sink_writes_bounded_parts_that_merge_to_exactly_its_rows(quickstart_settings, tmp_path, monkeypatch):
    """The FnApiRunner gives a sink its whole input as one bundle: parts of at most PART_ROWS
    rows keep its memory flat, and each row is recorded in exactly one part, at its position."""
    import json

    import records_for_tests as rec

    from elspeth_beam.auditlog import buffer
    from elspeth_beam.auditlog.writer_process import AuditWriter
    from elspeth_beam.pipeline import sink

    monkeypatch.setattr(sink, "PART_ROWS", 40)
    monkeypatch.setattr(buffer, "SEGMENT_RECORDS", 50)  # smaller than a part's 81 records
    submitted: list[list] = []
    submit = AuditWriter.submit_segment

    def recording(self, url, audit_log, segment):
        submitted.append(rec.of_segment(segment))
        return submit(self, url, audit_log, segment)

    monkeypatch.setattr(AuditWriter, "submit_segment", recording)
    run = testing.run_for_test(quickstart_settings, tmp_path)
    testing.assert_audit_complete(run)
    standard_rows = run.result.summary["rows_per_sink"]["standard"]
    artifacts = run.store.table_rows(s.artifacts, run.run_id)
    node = next(a["sink_node_id"] for a in artifacts if a["artifact_kind"] == "merged" and a["path"].endswith("standard.csv"))
    parts = {a["artifact_id"]: a for a in artifacts if a["sink_node_id"] == node and a["artifact_kind"] == "part"}
    assert standard_rows > 3 * 40 and len(parts) >= standard_rows // 40
    assert all(p["row_count"] <= 40 for p in parts.values())
    assert sum(p["row_count"] for p in parts.values()) == standard_rows

    with run.store.engine.connect() as conn:
        placed = conn.execute(
            select(s.token_outcomes.c.token_id, s.token_outcomes.c.artifact_id, s.token_outcomes.c.artifact_row)
            .where(s.token_outcomes.c.run_id == run.run_id, s.token_outcomes.c.node_id == node)
        ).all()
    assert len(placed) == standard_rows and len({t for t, _, _ in placed}) == standard_rows
    assert len({(a, r) for _, a, r in placed}) == standard_rows  # one row per (part, position)
    assert all(a in parts and 0 <= r < parts[a]["row_count"] for _, a, r in placed)

    merged = Path(quickstart_settings["sinks"]["standard"]["options"]["path"]).read_text().splitlines()
    assert len(merged) == 1 + standard_rows

    # each part commits whole: its artifact and all of its rows' outcomes in one segment
    def artifacts_in(batch):
        return [e for e in batch if type(e).__name__ == "ArtifactRecord" and e.artifact_id in parts]

    for batch in submitted:
        for artifact in artifacts_in(batch):
            rows_here = sum(type(e).__name__ == "OutcomeRecord" and e.artifact_id == artifact.artifact_id for e in batch)
            assert rows_here == artifact.row_count
    assert sum(len(artifacts_in(b)) for b in submitted) == len(parts)
