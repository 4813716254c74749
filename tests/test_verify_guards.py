"""verify names the records that break invariants 1 and 2, on Landscapes broken for real.

The writer and the schema keep a healthy run from ever holding an open node_state or a token
with two terminal outcomes, so only a tampered database (or a copy without the partial unique
index ``uq_token_outcomes_terminal``) shows them — and then ``verify`` is the only thing that
can. Each test runs a small pipeline, breaks its Landscape with plain SQL and expects verify
to name the state or the token by id (a bare "not ok" would leave the auditor searching).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_digest import _settings as digest_pipeline
from sqlalchemy import text

from elspeth_beam import testing
from elspeth_beam.landscape.store import LandscapeStore
from elspeth_beam.inspect.verify import verify_run

REPO = Path(__file__).resolve().parent.parent
ROLLUP = "aggregation:rollup"


def _settings(tmp: Path) -> dict[str, Any]:
    """test_digest's pipeline (gate, count-3 aggregation, two sinks) on 12 rows: token states,
    flush states and terminal outcomes at sinks and at the aggregation."""
    return digest_pipeline(tmp, rows=12)


@pytest.fixture
def finished(tmp_path: Path, landscape_url: str) -> tuple[LandscapeStore, str]:
    """A completed, verified run (SQLite; PostgreSQL too in the ``postgres`` suite)."""
    run = testing.run_for_test(_settings(tmp_path), tmp_path, landscape=landscape_url)
    testing.assert_audit_complete(run)
    yield run.store, run.run_id
    run.store.dispose()


def _sql(store: LandscapeStore, statement: str, **params: Any) -> list[tuple]:
    with store.engine.begin() as conn:
        result = conn.execute(text(statement), params)
        return [tuple(r) for r in result] if result.returns_rows else []


def _problem(store: LandscapeStore, run_id: str, needle: str) -> str:
    report = verify_run(store, run_id)
    assert not report.ok
    matching = [p for p in report.problems if needle in p]
    assert len(matching) == 1, report.text()
    return matching[0]


@pytest.mark.parametrize("subject", ["token", "flush"])
def test_verify_names_a_node_state_left_open(finished, subject: str) -> None:
    store, run_id = finished
    column, node = ("token_id", "gate:split") if subject == "token" else ("batch_id", ROLLUP)
    candidates = _sql(store, f"SELECT state_id FROM node_states WHERE run_id = :run AND {column} IS NOT NULL "
                             "AND status = 'completed' AND node_id = :node ORDER BY state_id", run=run_id, node=node)
    assert candidates, f"the run must have completed {subject} states to break"
    (state_id,) = candidates[0]
    _sql(store, "UPDATE node_states SET status = 'open', output_hash = NULL, completed_at = NULL "
                "WHERE state_id = :state", state=state_id)

    problem = _problem(store, run_id, "still open")
    assert problem == f"1 node_state(s) are still open: {state_id}"


def test_verify_names_a_token_with_two_terminal_outcomes(finished) -> None:
    """As a tampered copy, or a database created without the partial unique index, can hold."""
    store, run_id = finished
    (outcome_id, token_id), *_ = _sql(
        store, "SELECT outcome_id, token_id FROM token_outcomes WHERE run_id = :run AND is_terminal "
               "AND sink_name = 'totals' ORDER BY outcome_id", run=run_id)
    _sql(store, "DROP INDEX uq_token_outcomes_terminal")
    _sql(store, """INSERT INTO token_outcomes (outcome_id, run_id, token_id, outcome, is_terminal, node_id, error_json,
                                               recorded_at)
                   SELECT 'out-tampered', run_id, token_id, 'failed', is_terminal, node_id, '{"message": "tampered"}',
                          recorded_at
                   FROM token_outcomes WHERE outcome_id = :outcome""", outcome=outcome_id)
    assert _sql(store, "SELECT COUNT(*) FROM token_outcomes WHERE token_id = :tok AND is_terminal", tok=token_id) == [(2,)]

    problem = _problem(store, run_id, "several terminal outcomes")
    assert problem == f"1 token(s) have several terminal outcomes: {token_id}"


def test_verify_names_a_row_without_tokens_and_an_outcome_of_no_token(finished) -> None:
    """Invariant 5's footing: every row has its token, every outcome names a token of the run."""
    store, run_id = finished
    (row_id,), *_ = _sql(store, "SELECT row_id FROM rows WHERE run_id = :run ORDER BY row_id DESC", run=run_id)
    (token_id,), *_ = _sql(store, "SELECT token_id FROM tokens WHERE row_id = :row", row=row_id)
    _sql(store, "DELETE FROM tokens WHERE row_id = :row", row=row_id)
    assert _problem(store, run_id, "have no token") == f"1 row(s) have no token: {row_id}"
    assert f"outcome(s) name unknown tokens: {token_id}" in _problem(store, run_id, "name unknown tokens")


def test_verify_cli_prints_the_open_state_and_exits_nonzero(tmp_path: Path) -> None:
    """What an auditor sees: the state's id on stdout and a failing exit code."""
    run = testing.run_for_test(_settings(tmp_path), tmp_path)
    store, run_id = run.store, run.run_id
    ((state_id,),) = _sql(store, "SELECT state_id FROM node_states WHERE run_id = :run AND node_id = 'sink:big' "
                                 "ORDER BY state_id LIMIT 1", run=run_id)
    _sql(store, "UPDATE node_states SET status = 'open', output_hash = NULL WHERE state_id = :state", state=state_id)
    store.dispose()
    done = subprocess.run([sys.executable, "-m", "elspeth_beam.cli", "verify", run_id, "-l", str(tmp_path / "landscape.db")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0, done.stdout
    assert f"  - 1 node_state(s) are still open: {state_id}" in done.stdout.splitlines(), done.stdout
    assert "Traceback" not in done.stderr
