"""Invariant 8: verify names every hole and broken link in a token's path (inspect/paths.py).

One real run of the crash-fuzz pipeline (transform, fork gate, count aggregation, three sinks,
a few malformed rows); each test breaks a copy of its Landscape with plain SQL, the way a lost
commit or a tamperer would, and expects the record named by table, key and row index. The set
queries only name the tokens to walk, so a Hypothesis test holds them to walking every token.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import or_, select
from sqlalchemy.engine import Connection

import crashfuzz
import resume_helpers
import yaml
from conftest import REPO, retarget
from elspeth_beam import testing
from elspeth_beam.inspect import paths
from elspeth_beam.inspect.paths import PathProblem, path_problems
from elspeth_beam.landscape import schema as s
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

    def __init__(self, original: Path, tmp_path: Path, run_id: str = crashfuzz.RUN_ID) -> None:
        # a fresh name each time: Hypothesis reuses tmp_path across examples, and an earlier
        # copy's -wal file beside the same name would be replayed into this one
        self.path, self.run_id = Path(tempfile.mkdtemp(dir=tmp_path)) / "broken.db", run_id
        shutil.copy(original, self.path)
        self.db = sqlite3.connect(self.path)

    def one(self, sql: str, *args: object) -> tuple:
        row = self.db.execute(sql, args).fetchone()
        assert row is not None, sql
        return row

    def run(self, sql: str, *args: object) -> None:
        assert self.db.execute(sql, args).rowcount >= 1, sql
        self.db.commit()

    def problems(self, check: Callable[[Connection, str], list[PathProblem]] = path_problems) -> list[PathProblem]:
        store = LandscapeStore(f"sqlite:///{self.path}", create=False)
        try:
            with store.engine.connect() as conn:
                return check(conn, self.run_id)
        finally:
            store.dispose()

    def verify_lines(self) -> list[str]:
        store = LandscapeStore(f"sqlite:///{self.path}", create=False)
        try:
            return verify_run(store, self.run_id).problems
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


def test_a_record_off_the_path_of_a_whole_token_is_named(broken):
    """A membership for a token that went to the large sink: every arrival finds its record and
    no record's own check fails, so only the per-node census can tell that one is extra."""
    (token,) = broken.one("SELECT token_id FROM node_states WHERE node_id = 'sink:large' LIMIT 1 OFFSET 3")
    (batch,) = broken.one("SELECT batch_id FROM batches LIMIT 1 OFFSET 2")
    broken.run("INSERT INTO batch_members VALUES (?, ?, ?, 99)", batch, crashfuzz.RUN_ID, token)
    (problem,) = broken.problems()
    assert (problem.table, problem.key, problem.node_id, problem.missing) == ("batch_members", f"{batch}/{token}",
                                                                             "aggregation:totals", False)
    assert "off the token's recorded path" in problem.detail


def test_an_unfinished_token_is_no_hole(broken):
    """A sink's state and outcome lost together: the token just stops (a crash's frontier)."""
    (token,) = broken.one("SELECT token_id FROM node_states WHERE node_id = 'sink:large' LIMIT 1 OFFSET 2")
    broken.run("DELETE FROM node_states WHERE token_id = ? AND node_id = 'sink:large'", token)
    broken.run("DELETE FROM token_outcomes WHERE token_id = ? AND node_id = 'sink:large'", token)
    assert broken.problems() == []


# ---- the set queries name every token the walk would find a problem with --------------------


def walk_every_token(conn: Connection, run_id: str) -> list[PathProblem]:
    """The reference: the walk over every token any record names (what the check did before
    set queries named the tokens to walk)."""
    checker = paths.PathChecker(conn, run_id)
    named: set[str] = set()
    for table in (s.tokens, s.node_states, s.batch_members):
        named |= {tid for (tid,) in conn.execute(select(table.c.token_id).where(table.c.run_id == run_id)) if tid}
    o = s.token_outcomes
    named |= {tid for (tid,) in conn.execute(select(o.c.token_id).where(o.c.run_id == run_id,
                                                                        or_(o.c.is_terminal, o.c.outcome == "buffered")))}
    found: list[PathProblem] = []
    ordered = sorted(named)
    for i in range(0, len(ordered), 400):
        chunk = ordered[i:i + 400]
        window = paths._Window.read(conn, run_id, chunk, checker.hasher)
        for tid in chunk:
            found += checker._walk(window, tid)
    rows = paths._Rows(conn, run_id, checker.graph, checker.batches, checker.hasher)
    return found + list(checker._flush_links(rows))


# SQL that breaks one record, picked by ``?`` = an offset into its table
MUTATIONS = [
    "DELETE FROM {t} WHERE rowid = (SELECT rowid FROM {t} ORDER BY rowid LIMIT 1 OFFSET ?)".format(t=t)
    for t in ("node_states", "routing_events", "token_outcomes", "batch_members", "batch_outputs", "tokens",
              "token_parents", "rows", "batches")
] + [
    "UPDATE node_states SET {c} = 'e' WHERE rowid = (SELECT rowid FROM node_states ORDER BY rowid LIMIT 1 OFFSET ?)".format(c=c)
    for c in ("input_hash", "output_hash")
] + [
    "UPDATE routing_events SET destination = (SELECT {f}(destination) FROM routing_events) WHERE rowid = "
    "(SELECT rowid FROM routing_events ORDER BY rowid LIMIT 1 OFFSET ?)".format(f=f)
    for f in ("min", "max")
] + [
    "UPDATE node_states SET status = 'failed', error_json = '{}' WHERE rowid = "
    "(SELECT rowid FROM node_states ORDER BY rowid LIMIT 1 OFFSET ?)",
    "UPDATE rows SET source_data_hash = 'e' WHERE rowid = (SELECT rowid FROM rows ORDER BY rowid LIMIT 1 OFFSET ?)",
    "UPDATE token_outcomes SET node_id = (SELECT max(node_id) FROM nodes WHERE node_type = 'sink') WHERE rowid = "
    "(SELECT rowid FROM token_outcomes ORDER BY rowid LIMIT 1 OFFSET ?)",
    "UPDATE token_outcomes SET token_json = json_set(token_json, '$.row.x', -1) WHERE outcome = 'buffered' AND rowid = "
    "(SELECT rowid FROM token_outcomes WHERE outcome = 'buffered' ORDER BY rowid LIMIT 1 OFFSET ?)",
    "UPDATE batch_outputs SET token_json = json_set(token_json, '$.row.x', -1) WHERE rowid = "
    "(SELECT rowid FROM batch_outputs ORDER BY rowid LIMIT 1 OFFSET ?)",
    "UPDATE tokens SET branch_name = (SELECT max(name) FROM nodes WHERE node_type = 'sink') WHERE rowid = "
    "(SELECT rowid FROM tokens ORDER BY rowid LIMIT 1 OFFSET ?)",
    "UPDATE batches SET status = 'failed' WHERE rowid = (SELECT rowid FROM batches ORDER BY rowid LIMIT 1 OFFSET ?)",
    "INSERT INTO batch_members SELECT (SELECT min(batch_id) FROM batches), run_id, token_id, 99 "
    "FROM tokens WHERE rowid = (SELECT rowid FROM tokens ORDER BY rowid LIMIT 1 OFFSET ?) AND true ON CONFLICT DO NOTHING",
] + [
    "INSERT INTO node_states SELECT state_id || 'x', run_id, token_id, batch_id, "
    "(SELECT {f}(node_id) FROM nodes WHERE node_type = 'sink'), attempt, status, input_hash, output_hash, "
    "duration_ms, error_json, started_at, completed_at FROM node_states WHERE token_id IS NOT NULL AND rowid = "
    "(SELECT rowid FROM node_states WHERE token_id IS NOT NULL ORDER BY rowid LIMIT 1 OFFSET ?) "
    "AND true ON CONFLICT DO NOTHING".format(f=f)
    for f in ("min", "max")
]


@pytest.fixture(scope="module")
def passthrough_landscape(tmp_path_factory) -> Path:
    """A passthrough aggregation whose failed flushes go to a sink (members sent on by a batch)."""
    root = tmp_path_factory.mktemp("passthrough")
    raw = resume_helpers.gate_passthrough_settings(resume_helpers.write_jsonl(root / "in.jsonl", resume_helpers.keyed_rows()),
                                                   root / "out", count=4)
    raw["aggregations"][0]["on_error"] = "fifths"
    return _landscape(raw, root, "pass")


@pytest.fixture(scope="module")
def accounts_landscape(tmp_path_factory) -> Path:
    """Transform- and single-mode aggregations in a row, error sinks, records that do not parse."""
    root = tmp_path_factory.mktemp("accounts")
    return _landscape(retarget(yaml.safe_load((REPO / "pipelines" / "accounts.yaml").read_text()), root / "out"), root, "accounts")


def _landscape(raw: dict, root: Path, run_id: str) -> Path:
    result = testing.run_for_test(raw, root, run_id=run_id)
    assert result.result.status.value == "completed"
    result.store.checkpoint()
    result.store.dispose()
    return root / "landscape.db"


@pytest.fixture(params=["fuzz", "pass", "accounts"])
def run_landscape(request) -> tuple[Path, str]:
    fixture = {"fuzz": "landscape", "pass": "passthrough_landscape", "accounts": "accounts_landscape"}[request.param]
    return request.getfixturevalue(fixture), request.param


def test_complete_runs_have_complete_paths_and_a_balanced_census(run_landscape, tmp_path):
    """Balanced: each node holds as many records as arrivals lead to it, so a complete run's
    records are never searched one by one for one off the path."""
    original, run_id = run_landscape
    broken = Broken(original, tmp_path, run_id)
    assert broken.problems() == []
    assert broken.problems(census) == []


def census(conn: Connection, run_id: str) -> list[PathProblem]:
    checker = paths.PathChecker(conn, run_id)
    checks = paths._SetChecks(checker, paths._Rows(conn, run_id, checker.graph, checker.batches, checker.hasher))
    return [] if checks._balanced() else [PathProblem("nodes", "census", "", -1, "", "unbalanced")]


def test_a_record_that_did_not_parse_goes_on_as_its_raw_text(accounts_landscape, tmp_path):
    broken = Broken(accounts_landscape, tmp_path, "accounts")
    (state,) = broken.one("SELECT x.state_id FROM node_states x JOIN node_states p ON p.token_id = x.token_id "
                          "WHERE x.node_id = 'sink:rejects' AND p.node_id = 'source:source' AND p.status = 'failed' LIMIT 1")
    broken.run("UPDATE node_states SET input_hash = ? WHERE state_id = ?", "d" * 64, state)
    (problem,) = broken.problems()
    assert (problem.table, problem.key, problem.missing) == ("node_states", state, False)


@given(breaks=st.lists(st.tuples(st.sampled_from(MUTATIONS), st.integers(min_value=0, max_value=600)), min_size=1, max_size=3))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_set_queries_name_every_token_the_walk_finds_wrong(run_landscape, tmp_path, breaks):
    original, run_id = run_landscape
    broken = Broken(original, tmp_path, run_id)
    for sql, offset in breaks:
        broken.db.execute(sql, (offset,))
    broken.db.commit()
    assert sorted(broken.problems(), key=repr) == sorted(broken.problems(walk_every_token), key=repr)


@pytest.mark.postgres
@pytest.mark.parametrize("seed", range(4))
def test_the_set_queries_find_the_same_on_postgres(run_landscape, tmp_path, postgres_url, seed):
    """The queries are portable SQL: a broken Landscape copied to PostgreSQL shows the same problems."""
    original, run_id = run_landscape
    broken = Broken(original, tmp_path, run_id)
    rng = random.Random(seed)
    for sql in rng.sample(MUTATIONS, 3):
        broken.db.execute(sql, (rng.randrange(600),))
    broken.db.commit()
    source, target = LandscapeStore(f"sqlite:///{broken.path}", create=False), LandscapeStore(postgres_url)
    try:
        with source.engine.connect() as read, target.engine.begin() as write:
            for table in s.metadata.sorted_tables:
                if table.name != "landscape_schema" and (records := [r._asdict() for r in read.execute(select(table))]):
                    write.execute(table.insert(), records)
        with target.engine.connect() as conn:
            on_postgres = path_problems(conn, run_id)
    finally:
        source.dispose()
        target.dispose()
    assert sorted(on_postgres, key=repr) == sorted(broken.problems(), key=repr)
