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

    # sink files hold exactly what the Landscape says was written, and their hashes match
    for art in run.store.table_rows(s.artifacts, run.run_id):
        path = Path(art["path"])
        assert hashlib.sha256(path.read_bytes()).hexdigest() == art["content_hash"]
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
