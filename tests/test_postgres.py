"""The Landscape on a real PostgreSQL server: pipelines, and concurrent idempotent writers.

Run by `.ci/run` (it starts a server); skipped without ELSPETH_TEST_POSTGRES_URL.
"""

from __future__ import annotations

import random
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import yaml

from elspeth_beam import testing
from elspeth_beam.landscape.store import LandscapeStore

from conftest import REPO, retarget

pytestmark = pytest.mark.postgres

EVENT_TABLES = ("rows", "tokens", "token_parents", "node_states", "routing_events", "batches",
                "batch_members", "batch_outputs", "token_outcomes", "artifacts")


def _accounts(tmp_path: Path) -> dict:
    return retarget(yaml.safe_load((REPO / "pipelines" / "accounts.yaml").read_text()), tmp_path / "out")


def test_aggregation_pipeline_on_postgres_equals_sqlite(tmp_path, postgres_url):
    settings = _accounts(tmp_path)
    on_pg = testing.run_for_test(settings, tmp_path, run_id="run-pg", landscape=postgres_url)
    testing.assert_audit_complete(on_pg)
    on_sqlite = testing.run_for_test(settings, tmp_path, run_id="run-pg", landscape=f"sqlite:///{tmp_path / 'l.db'}")
    assert on_pg.result.summary == on_sqlite.result.summary
    assert on_pg.result.summary["batches"] > 0
    pg, sqlite = testing.snapshot(on_pg.store), testing.snapshot(on_sqlite.store)
    for table in pg:
        if table != "runs":  # runs.settings_json records each run's own Landscape URL
            assert pg[table] == sqlite[table], table


def _write_chunks(url: str, chunks: list[list[tuple]]) -> int:
    store = LandscapeStore(url)
    for chunk in chunks:
        testing.write_records(store, chunk)
    store.dispose()
    return len(chunks)


def test_concurrent_writers_leave_the_same_database_as_one(tmp_path, postgres_url):
    """Four processes replay shuffled, duplicated audit records of one run at once."""
    settings = _accounts(tmp_path)
    run = testing.run_for_test(settings, tmp_path, run_id="run-conc", journal=True)
    events = run.records()
    LandscapeStore(postgres_url).dispose()  # create the schema once, before the race

    rng = random.Random(7)
    workers = []
    for w in range(4):
        mine = events + rng.sample(events, len(events) // 3)  # every worker: all events, some twice
        rng.shuffle(mine)
        chunks = [mine[i:i + 500] for i in range(0, len(mine), 500)]
        workers.append(chunks)
    with ProcessPoolExecutor(max_workers=4) as pool:
        assert sum(pool.map(_write_chunks, [postgres_url] * 4, workers)) > 4

    raced = testing.snapshot(LandscapeStore(postgres_url))
    alone = testing.snapshot(run.store)
    # the merged-file artifacts are written by the run lifecycle after the pipeline, not as audit segments
    alone["artifacts"] = [a for a in alone["artifacts"] if '"artifact_kind": "part"' in a]
    assert raced["batches"] and raced["token_outcomes"]
    for table in EVENT_TABLES:
        assert raced[table] == alone[table], table
