"""Generated datasets and pipelines: the audit invariants of DESIGN §7 (1–3) hold, checked by SQL."""

from __future__ import annotations

import csv
import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import and_, func, select

from elspeth_beam import testing
from elspeth_beam.landscape import schema as s

CATEGORIES = ["red", "green", "blue"]
BAD_X = ["abc", "", "   ", "1,5", "nan", "inf", "12abc", "--1", None]  # cannot become a finite float
GOOD_X_STRINGS = ["2.5", " 3 ", "-0.5e1", "0"]  # strings coerce can turn into floats

rows_strategy = st.lists(
    st.fixed_dictionaries(
        {
            "n": st.integers(min_value=-5, max_value=30),
            "x": st.one_of(
                st.floats(allow_nan=False, allow_infinity=False),
                st.sampled_from(BAD_X),
                st.sampled_from(GOOD_X_STRINGS),
            ),
            "c": st.sampled_from(CATEGORIES),
        }
    ),
    min_size=5,
    max_size=40,
)


def coerces(x) -> bool:
    """Reference model of `coerce: {x: float}`: a finite float, or a string holding one."""
    if isinstance(x, float):
        return True
    if not isinstance(x, str) or not x.strip():
        return False
    try:
        return math.isfinite(float(x))
    except ValueError:
        return False


def pipeline(tmp: Path, on_error: str, fork: bool, threshold: int) -> dict:
    sinks = {
        "high": {"plugin": "jsonl", "options": {"path": str(tmp / "out" / "high.jsonl")}},
        "low": {"plugin": "csv", "options": {"path": str(tmp / "out" / "low.csv")}},
    }
    if fork:
        sinks["copy"] = {"plugin": "jsonl", "options": {"path": str(tmp / "out" / "copy.jsonl")}}
    if on_error == "rejects":
        sinks["rejects"] = {"plugin": "jsonl", "options": {"path": str(tmp / "out" / "rejects.jsonl")}}
    return {
        "source": {"plugin": "jsonl", "on_success": "raw", "options": {"path": str(tmp / "in.jsonl")}},
        "transforms": [
            {"name": "to_float", "plugin": "coerce", "input": "raw", "on_success": "typed", "on_error": on_error,
             "options": {"fields": {"x": "float"}}},
        ],
        "gates": [
            {"name": "split", "input": "typed", "condition": f"row['n'] > {threshold}", "on_error": "fail",
             "routes": {"true": ["high", "copy"] if fork else "high", "false": "low"}},
        ],
        "sinks": sinks,
    }


def sink_file_rows(path: Path) -> int:
    if path.suffix == ".csv":
        with path.open(newline="") as handle:
            return sum(1 for _ in csv.DictReader(handle))
    return sum(1 for line in path.read_text().splitlines() if line.strip())


# Beam's first run imports jedi, which raises the recursion limit; Hypothesis warns about it.
@pytest.mark.filterwarnings("ignore:The recursion limit will not be reset")
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(
    data=rows_strategy,
    on_error=st.sampled_from(["fail", "quarantine", "rejects"]),
    fork=st.booleans(),
    threshold=st.integers(min_value=-2, max_value=25),
)
def test_generated_pipeline_keeps_the_audit_invariants(data, on_error, fork, threshold):
    good = [r for r in data if coerces(r["x"])]
    passed = [r for r in good if r["n"] > threshold]
    bad = len(data) - len(good)

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
        run = testing.run_for_test(pipeline(tmp, on_error, fork, threshold), tmp)
        rid = run.run_id
        rows, tokens, outcomes, states = s.rows, s.tokens, s.token_outcomes, s.node_states
        terminal = and_(outcomes.c.token_id == tokens.c.token_id, outcomes.c.is_terminal.is_(True))

        with run.store.engine.connect() as conn:
            scalar = lambda stmt: conn.execute(stmt).scalar_one()  # noqa: E731
            count = lambda t, *w: scalar(select(func.count()).select_from(t).where(t.c.run_id == rid, *w))  # noqa: E731

            # every record is a row; every row has at least one token
            assert count(rows) == len(data)
            rows_without_token = conn.execute(
                select(rows.c.row_index).outerjoin(tokens, tokens.c.row_id == rows.c.row_id)
                .where(rows.c.run_id == rid, tokens.c.token_id.is_(None))
            ).all()
            assert rows_without_token == []
            assert count(tokens) == len(data) + (2 * len(passed) if fork else 0)

            # every token has exactly one terminal outcome
            per_token = conn.execute(
                select(tokens.c.token_id, func.count(outcomes.c.outcome_id).label("n"))
                .outerjoin(outcomes, terminal)
                .where(tokens.c.run_id == rid)
                .group_by(tokens.c.token_id)
            ).all()
            assert len(per_token) == count(tokens)
            assert [t for t in per_token if t.n != 1] == []

            # every row ends exactly once per path: one final (non-fork) outcome, two after a fork
            final_per_row = dict(
                conn.execute(
                    select(rows.c.row_index, func.count(outcomes.c.outcome_id))
                    .join(tokens, tokens.c.row_id == rows.c.row_id)
                    .outerjoin(outcomes, and_(terminal, outcomes.c.outcome != "forked"))
                    .where(rows.c.run_id == rid)
                    .group_by(rows.c.row_index)
                ).all()
            )
            expected_paths = {
                i: 2 if fork and coerces(r["x"]) and r["n"] > threshold else 1 for i, r in enumerate(data)
            }
            assert final_per_row == expected_paths

            # forks: one forked outcome per row that passed the gate, and two copy routings each
            assert count(outcomes, outcomes.c.outcome == "forked") == (len(passed) if fork else 0)
            true_routes = scalar(
                select(func.count()).select_from(s.routing_events)
                .where(s.routing_events.c.run_id == rid, s.routing_events.c.route_label == "true")
            )
            assert true_routes == len(passed) * (2 if fork else 1)

            # errors go where on_error says
            failed = count(outcomes, outcomes.c.outcome == "failed")
            quarantined = count(outcomes, outcomes.c.outcome == "quarantined")
            assert (failed, quarantined) == ((bad, 0) if on_error == "fail" else (0, bad))
            assert count(states, states.c.status == "failed", states.c.node_id == "transform:to_float") == bad

            # sinks hold exactly the rows the Landscape says arrived there
            expected_sink_rows = {"high": len(passed), "low": len(good) - len(passed)}
            if fork:
                expected_sink_rows["copy"] = len(passed)
            if on_error == "rejects":
                expected_sink_rows["rejects"] = bad
            for sink, expected in expected_sink_rows.items():
                recorded = count(
                    outcomes,
                    outcomes.c.sink_name == sink,
                    outcomes.c.outcome.in_(["completed", "routed", "quarantined"]),
                )
                path = Path(pipeline(tmp, on_error, fork, threshold)["sinks"][sink]["options"]["path"])
                assert sink_file_rows(path) == recorded == expected, sink
            assert count(outcomes, outcomes.c.sink_name.is_not(None)) == sum(expected_sink_rows.values())

            # no node_state is left open; completed ones have an output hash, failed ones an error
            assert count(states, states.c.status.not_in(["completed", "failed"])) == 0
            assert count(states, states.c.status == "completed", states.c.output_hash.is_(None)) == 0
            assert count(states, states.c.status == "failed", states.c.error_json.is_(None)) == 0

        assert testing.assert_audit_complete(run).ok
        assert run.result.status.value == "completed"
        run.store.dispose()
