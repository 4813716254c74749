"""Invariant 8: verify names every hole and broken link in a token's path (inspect/paths.py).

One real run of the crash-fuzz pipeline (transform, fork gate, count aggregation, three sinks,
a few malformed rows); each test breaks a copy of its Landscape with plain SQL, the way a lost
commit or a tamperer would, and expects the record named by table, key and row index.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import crashfuzz
from elspeth_beam import testing
from elspeth_beam.inspect.paths import PathProblem, path_problems
from elspeth_beam.landscape.store import LandscapeStore
from elspeth_beam.inspect.verify import verify_run

ROWS = 300


@pytest.fixture(scope="module")
def landscape(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("paths")
    data = root / "input.csv"
    crashfuzz.write_input(data, ROWS, seed=3)
    raw = crashfuzz.settings(data, root / "out", testing.landscape_url(root))
    result = testing.run_for_test(raw, root, run_id=crashfuzz.RUN_ID)
    assert result.result.status.value == "completed"
    result.store.checkpoint()
    result.store.dispose()
    return root / "landscape.db"


class Broken:
    """A copy of the run's Landscape, to break with SQL and check."""

    def __init__(self, original: Path, tmp_path: Path) -> None:
        self.path = tmp_path / "broken.db"
        shutil.copy(original, self.path)
        self.db = sqlite3.connect(self.path)

    def one(self, sql: str, *args: object) -> tuple:
        row = self.db.execute(sql, args).fetchone()
        assert row is not None, sql
        return row

    def run(self, sql: str, *args: object) -> None:
        assert self.db.execute(sql, args).rowcount >= 1, sql
        self.db.commit()

    def problems(self) -> list[PathProblem]:
        store = LandscapeStore(f"sqlite:///{self.path}", create=False)
        try:
            with store.engine.connect() as conn:
                return path_problems(conn, crashfuzz.RUN_ID)
        finally:
            store.dispose()

    def verify_lines(self) -> list[str]:
        store = LandscapeStore(f"sqlite:///{self.path}", create=False)
        try:
            return verify_run(store, crashfuzz.RUN_ID).problems
        finally:
            store.dispose()


@pytest.fixture
def broken(landscape, tmp_path) -> Broken:
    return Broken(landscape, tmp_path)


def test_an_uninterrupted_run_has_complete_paths(broken):
    assert broken.problems() == []


def test_verify_names_a_missing_transform_state(broken):
    token, state = broken.one("SELECT token_id, state_id FROM node_states WHERE node_id = 'transform:fx' ORDER BY token_id LIMIT 1 OFFSET 5")
    broken.run("DELETE FROM node_states WHERE state_id = ?", state)
    (problem,) = broken.problems()
    assert (problem.table, problem.key, problem.node_id, problem.missing) == ("node_states", f"{token}@transform:fx", "transform:fx", True)
    assert problem.row_index == int(token[4:14], 16)
    lines = [line for line in broken.verify_lines() if "hole" in line]
    assert len(lines) == 1 and f"node_states {token}@transform:fx (row index {problem.row_index}" in lines[0]


def test_verify_names_a_missing_routing_event(broken):
    (state,) = broken.one("SELECT state_id FROM routing_events WHERE mode = 'move' LIMIT 1")
    broken.run("DELETE FROM routing_events WHERE state_id = ?", state)
    problems = broken.problems()
    assert [(p.table, p.key) for p in problems] == [("routing_events", state)]


def test_verify_names_a_changed_input_hash(broken):
    (state,) = broken.one("SELECT state_id FROM node_states WHERE node_id = 'gate:size' LIMIT 1 OFFSET 17")
    broken.run("UPDATE node_states SET input_hash = ? WHERE state_id = ?", "0" * 64, state)
    problems = broken.problems()  # a forked row's children continue the gate's input: named too
    problem = next(p for p in problems if p.key == state)
    assert (problem.table, problem.missing) == ("node_states", False)
    assert "does not continue the previous step's" in problem.detail
    assert {p.row_index for p in problems} == {problem.row_index}
    assert any("broken link" in line and state in line for line in broken.verify_lines())


def test_verify_names_a_flush_whose_input_is_not_its_members(broken):
    (state,) = broken.one("SELECT aggregation_state_id FROM batches LIMIT 1 OFFSET 3")
    broken.run("UPDATE node_states SET input_hash = ? WHERE state_id = ?", "f" * 64, state)
    (problem,) = broken.problems()
    assert (problem.table, problem.key) == ("node_states", state)
    assert "input hash" in problem.detail and "members" in problem.detail


def test_verify_names_a_member_whose_checkpoint_does_not_continue_its_path(broken):
    outcome, token_json = broken.one("SELECT outcome_id, token_json FROM token_outcomes WHERE outcome = 'buffered' LIMIT 1 OFFSET 9")
    token = json.loads(token_json)
    token["row"]["amount_eur"] = -1.0
    broken.run("UPDATE token_outcomes SET token_json = ? WHERE outcome_id = ?", json.dumps(token), outcome)
    problems = broken.problems()
    assert ("token_outcomes", outcome) in [(p.table, p.key) for p in problems]  # and its flush's input no longer derives
    assert any(p.table == "node_states" and "members" in p.detail for p in problems)


def test_a_state_off_the_recorded_path_is_named(broken):
    """A gate that moved a row to one place while a record shows it elsewhere."""
    state, destination = broken.one("SELECT state_id, destination FROM routing_events WHERE destination = 'large' LIMIT 1")
    broken.run("UPDATE routing_events SET destination = 'copy' WHERE state_id = ?", state)
    problems = broken.problems()
    assert any(p.table == "node_states" and p.node_id == "sink:copy" and "no node_state" in p.detail for p in problems)


@given(offset=st.integers(min_value=0, max_value=10_000))
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_deleted_token_state_is_named(landscape, tmp_path, offset):
    broken = Broken(landscape, tmp_path)
    (n,) = broken.one("SELECT count(*) FROM node_states WHERE token_id IS NOT NULL")
    token, node, state = broken.one("SELECT token_id, node_id, state_id FROM node_states WHERE token_id IS NOT NULL "
                                    "ORDER BY state_id LIMIT 1 OFFSET ?", offset % n)
    broken.run("DELETE FROM node_states WHERE state_id = ?", state)
    named = [(p.table, p.key) for p in broken.problems()]
    assert ("node_states", f"{token}@{node}") in named


@given(offset=st.integers(min_value=0, max_value=10_000))
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_changed_input_hash_is_named(landscape, tmp_path, offset):
    broken = Broken(landscape, tmp_path)
    (n,) = broken.one("SELECT count(*) FROM node_states")
    (state,) = broken.one("SELECT state_id FROM node_states ORDER BY state_id LIMIT 1 OFFSET ?", offset % n)
    broken.run("UPDATE node_states SET input_hash = ? WHERE state_id = ?", "e" * 64, state)
    assert state in [p.key for p in broken.problems()]
