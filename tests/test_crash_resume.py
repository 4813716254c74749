"""A crash and resume leave the audit an uninterrupted run leaves (DESIGN §6, invariant 8).

Each node's audit commits on its own, so a crash leaves rows whose aggregation checkpoint is
durable while an upstream step's node_state is not. Resume must redo every such row, not
only rows without an outcome. These tests crash the crash-fuzz pipeline (tests/crashfuzz.py:
transform, fork gate, count aggregation, three sinks) for real — ``ELSPETH_FAULT`` and
SIGKILL of the pipeline and of its Landscape writer — and compare with an uninterrupted run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import crashfuzz
from elspeth_beam.inspect.paths import path_problems
from elspeth_beam.landscape.store import LandscapeStore

ROWS = 7000  # enough that a sink writes a part (5000 rows) before the crash: rows with outcomes and holes


@pytest.fixture(scope="module")
def input_csv(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("crash-input") / "input.csv"
    crashfuzz.write_input(data, ROWS, seed=5)
    return data


@pytest.fixture(scope="module")
def reference(input_csv, tmp_path_factory) -> crashfuzz.Reference:
    return crashfuzz.Reference.of(crashfuzz.Workspace(tmp_path_factory.mktemp("reference"), input_csv).prepare())


def holes(ws: crashfuzz.Workspace) -> list:
    store = LandscapeStore(ws.url, create=False)
    try:
        with store.engine.connect() as conn:
            return [p for p in path_problems(conn, crashfuzz.RUN_ID) if p.missing]
    finally:
        store.dispose()


def test_resume_fills_every_hole_a_crash_leaves(input_csv, reference, tmp_path):
    """The issue's reproduction: killed part-way, later steps' records are durable for rows
    whose earlier records are not; resume redoes exactly those."""
    ws = crashfuzz.Workspace(tmp_path, input_csv).prepare()
    rc, _ = crashfuzz.finish(crashfuzz.start_run(ws, fault=f"after_rows:{ROWS - 500}"))
    assert rc == 137 and crashfuzz.run_status(ws) == "running"
    left = holes(ws)
    # records of later steps committed before earlier ones of the same rows (each node commits
    # its own segments): which step lags depends on the segment sizes, that some does not
    assert left, "the crash should leave holes"

    outcome = crashfuzz.resume_until_completed(ws)
    assert outcome.differences == []
    assert holes(ws) == []
    assert crashfuzz.differences(reference, ws) == []


@pytest.mark.parametrize("target", ["pipeline", "writer"])
def test_sigkill_then_a_killed_resume_still_ends_equal(input_csv, reference, tmp_path, target):
    """The fuzz harness's short run: SIGKILL mid-run (the pipeline, or its Landscape writer) at
    a count of committed segments, SIGKILL of the first resume too, resumes until completed.
    A kill that does not land mid-run is a difference (crash_and_resume says so)."""
    ws = crashfuzz.Workspace(tmp_path, input_csv).prepare()
    low, high = crashfuzz.kill_range(reference.segments)
    crash = crashfuzz.Crash(target, reference.segments, at_segment=(low + high) // 2, resume_share=0.5)
    outcome = crashfuzz.crash_and_resume(ws, crash)
    assert outcome.differences == []
    assert outcome.kills >= 1
    assert crashfuzz.differences(reference, ws) == []


crash_points = st.one_of(
    st.integers(min_value=1, max_value=ROWS - 1).map(lambda n: f"after_rows:{n}"),
    st.integers(min_value=1, max_value=50).map(lambda k: f"in_flush:{crashfuzz.AGGREGATION}:{k}"),
)


@given(fault=crash_points)
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_resume_from_any_crash_point_yields_the_uninterrupted_audit(input_csv, reference, tmp_path_factory, fault):
    ws = crashfuzz.Workspace(tmp_path_factory.mktemp("point"), input_csv).prepare()
    outcome = crashfuzz.crash_and_resume(ws, crashfuzz.Crash("fault", fault=fault))
    assert outcome.differences == []
    assert crashfuzz.differences(reference, ws) == []
