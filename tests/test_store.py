"""LandscapeStore writes: idempotent, order-independent, statuses only move forward (DESIGN §4)."""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.exc import IntegrityError

from elspeth_beam.core import ids
from elspeth_beam.core.enums import BatchStatus, NodeStateStatus, Outcome, TriggerType
import records_for_tests as rec
from elspeth_beam.landscape import schema as s
from elspeth_beam.landscape.store import LandscapeStore

RUN = "run-test"
SRC = "source:source"
GATE = "gate:size"
AGG = "aggregation:rollup"
SINK_LARGE = "sink:large"
SINK_REVIEW = "sink:review"
SINK_SUM = "sink:summaries"
T0 = "2024-05-01T10:00:00.000000+00:00"


def ts(sec: int) -> str:
    return f"2024-05-01T10:00:{sec:02d}.000000+00:00"


def h(label: str) -> str:
    return (label.encode().hex() * 64)[:64]


# ---- a realistic, hand-built set of events ---------------------------------------------------

ROW0 = ids.row_id(RUN, SRC, 0)
ROW1 = ids.row_id(RUN, SRC, 1)
TOK0 = ids.token_id([ROW0], SRC, 0)
TOK1 = ids.token_id([ROW1], SRC, 0)
TOK0_LARGE = ids.token_id([TOK0], GATE, 0)
TOK0_REVIEW = ids.token_id([TOK0], GATE, 1)
BATCH = ids.batch_id(RUN, AGG, '["north"]', 0, 1)
TOK_OUT = ids.token_id([TOK1], AGG, 0)
ST_SRC0 = ids.state_id(TOK0, SRC, 1)
ST_SRC1 = ids.state_id(TOK1, SRC, 1)
ST_GATE0 = ids.state_id(TOK0, GATE, 1)
ST_GATE1 = ids.state_id(TOK1, GATE, 1)
ST_FLUSH = ids.state_id(BATCH, AGG, 1)
ART = ids.artifact_id(RUN, SINK_LARGE, "/out/large/part-1.jsonl", h("art"))

BATCH_COMMON = dict(
    run_id=RUN, batch_id=BATCH, node_id=AGG, key='["north"]', sequence=0, attempt=1, created_at=ts(5)
)
BATCH_DRAFT = rec.batch(status=BatchStatus.DRAFT, **BATCH_COMMON)
BATCH_EXECUTING = rec.batch(
    status=BatchStatus.EXECUTING, trigger_type=TriggerType.COUNT, trigger_reason="count reached 1", **BATCH_COMMON
)
BATCH_COMPLETED = rec.batch(
    status=BatchStatus.COMPLETED,
    trigger_type=TriggerType.COUNT,
    trigger_reason="count reached 1",
    aggregation_state_id=ST_FLUSH,
    completed_at=ts(7),
    **BATCH_COMMON,
)
ROW_EVENT_0 = rec.row(
    run_id=RUN, row_id=ROW0, source_node_id=SRC, row_index=0, source_data_hash=h("raw0"),
    payload_json='{"row":{"id":1,"total":1500.0}}',
)
GATE_OPEN = rec.node_state(
    run_id=RUN, state_id=ST_GATE0, node_id=GATE, token_id=TOK0, status=NodeStateStatus.OPEN,
    input_hash=h("in-g0"), started_at=ts(2),
)
GATE_DONE = rec.node_state(
    run_id=RUN, state_id=ST_GATE0, node_id=GATE, token_id=TOK0, status=NodeStateStatus.COMPLETED,
    input_hash=h("in-g0"), output_hash=h("out-g0"), duration_ms=0.25, started_at=ts(2), completed_at=ts(3),
)
FLUSH_DONE = rec.node_state(
    run_id=RUN, state_id=ST_FLUSH, node_id=AGG, batch_id=BATCH, status=NodeStateStatus.COMPLETED,
    input_hash=h("in-flush"), output_hash=h("out-flush"), duration_ms=3.5, started_at=ts(6), completed_at=ts(7),
)


def outcome(token: str, kind: Outcome, node: str, **kw: Any) -> tuple:
    return rec.outcome(
        run_id=RUN, outcome_id=ids.outcome_id(token, kind.value, node), token_id=token, outcome=kind, node_id=node,
        recorded_at=kw.pop("recorded_at", ts(9)), **kw,
    )


EVENTS: list[Any] = [
    ROW_EVENT_0,
    rec.row(run_id=RUN, row_id=ROW1, source_node_id=SRC, row_index=1, source_data_hash=h("raw1"),
                payload_json='{"row":{"id":2,"total":20.0}}'),
    rec.token(run_id=RUN, token_id=TOK0, row_id=ROW0, created_at_node=SRC, created_at=ts(1)),
    rec.token(run_id=RUN, token_id=TOK1, row_id=ROW1, created_at_node=SRC, created_at=ts(1)),
    rec.token(run_id=RUN, token_id=TOK0_LARGE, row_id=ROW0, created_at_node=GATE, branch_name="large",
                 parent_ids=(TOK0,), created_at=ts(3)),
    rec.token(run_id=RUN, token_id=TOK0_REVIEW, row_id=ROW0, created_at_node=GATE, branch_name="review",
                 parent_ids=(TOK0,), created_at=ts(3)),
    rec.token(run_id=RUN, token_id=TOK_OUT, row_id=ROW1, created_at_node=AGG, parent_ids=(TOK1,), created_at=ts(7)),
    rec.node_state(run_id=RUN, state_id=ST_SRC0, node_id=SRC, token_id=TOK0, status=NodeStateStatus.COMPLETED,
                      input_hash=h("raw0"), output_hash=h("row0"), duration_ms=0.1, started_at=ts(1), completed_at=ts(1)),
    rec.node_state(run_id=RUN, state_id=ST_SRC1, node_id=SRC, token_id=TOK1, status=NodeStateStatus.COMPLETED,
                      input_hash=h("raw1"), output_hash=h("row1"), duration_ms=0.1, started_at=ts(1), completed_at=ts(1)),
    GATE_OPEN,
    GATE_DONE,
    rec.node_state(run_id=RUN, state_id=ST_GATE1, node_id=GATE, token_id=TOK1, status=NodeStateStatus.FAILED,
                      input_hash=h("in-g1"), duration_ms=0.2, error_json='{"type":"RowError","message":"boom"}',
                      started_at=ts(2), completed_at=ts(2)),
    rec.routing(run_id=RUN, routing_id=ids.routing_id(ST_GATE0, "large"), state_id=ST_GATE0, route_label="true",
                    destination="large", mode="copy", reason_hash=h("reason")),
    rec.routing(run_id=RUN, routing_id=ids.routing_id(ST_GATE0, "review"), state_id=ST_GATE0, route_label="true",
                    destination="review", mode="copy", reason_hash=h("reason")),
    outcome(TOK0, Outcome.FORKED, GATE),
    outcome(TOK1, Outcome.BUFFERED, AGG, token_json='{"token_id":"x"}', recorded_at=ts(4)),
    BATCH_DRAFT,
    BATCH_EXECUTING,
    FLUSH_DONE,
    BATCH_COMPLETED,
    rec.batch_member(run_id=RUN, batch_id=BATCH, token_id=TOK1, ordinal=0),
    rec.batch_output(run_id=RUN, batch_id=BATCH, token_id=TOK_OUT, ordinal=0),
    outcome(TOK1, Outcome.CONSUMED_IN_BATCH, AGG),
    rec.artifact(run_id=RUN, artifact_id=ART, sink_node_id=SINK_LARGE, path="/out/large/part-1.jsonl",
                     content_hash=h("art"), size_bytes=123, row_count=1, created_at=ts(8)),
    outcome(TOK0_LARGE, Outcome.COMPLETED, SINK_LARGE, sink_name="large", artifact_id=ART, artifact_row=0),
    outcome(TOK0_REVIEW, Outcome.COMPLETED, SINK_REVIEW, sink_name="review"),
    outcome(TOK_OUT, Outcome.COMPLETED, SINK_SUM, sink_name="summaries"),
]


# ---- helpers ----------------------------------------------------------------------------------


def _key(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, default=str)


def snapshot(store: LandscapeStore) -> dict[str, list[dict[str, Any]]]:
    return {t.name: sorted(store.table_rows(t), key=_key) for t in s.metadata.sorted_tables}


def fresh_store(tmp: Path, name: str = "l.db") -> LandscapeStore:
    return LandscapeStore(f"sqlite:///{tmp}/{name}")


def one(store: LandscapeStore, table, **where: Any) -> dict[str, Any]:
    rows = [r for r in store.table_rows(table) if all(r[k] == v for k, v in where.items())]
    assert len(rows) == 1, rows
    return rows[0]


@pytest.fixture
def store(tmp_path):
    st_ = fresh_store(tmp_path)
    yield st_
    st_.dispose()


@pytest.fixture(scope="module")
def canonical_snapshot(tmp_path_factory):
    st_ = fresh_store(tmp_path_factory.mktemp("canonical"))
    rec.write(st_, EVENTS)
    snap = snapshot(st_)
    st_.dispose()
    return snap


# ---- the canonical database holds what the events say -------------------------------------------


def test_canonical_database_contents(canonical_snapshot):
    snap = canonical_snapshot
    assert len(snap["rows"]) == 2
    assert len(snap["tokens"]) == 5
    assert sorted((r["token_id"], r["parent_token_id"], r["ordinal"]) for r in snap["token_parents"]) == sorted(
        [(TOK0_LARGE, TOK0, 0), (TOK0_REVIEW, TOK0, 0), (TOK_OUT, TOK1, 0)]
    )
    states = {r["state_id"]: r for r in snap["node_states"]}
    assert len(states) == 5
    assert states[ST_GATE0]["status"] == "completed"
    assert states[ST_GATE0]["output_hash"] == h("out-g0") and states[ST_GATE0]["duration_ms"] == 0.25
    assert states[ST_GATE0]["completed_at"] == ts(3)
    assert states[ST_GATE1]["status"] == "failed" and "boom" in states[ST_GATE1]["error_json"]
    assert states[ST_FLUSH]["batch_id"] == BATCH and states[ST_FLUSH]["token_id"] is None
    (batch,) = snap["batches"]
    assert batch["status"] == "completed"
    assert batch["trigger_type"] == "count" and batch["trigger_reason"] == "count reached 1"
    assert batch["aggregation_state_id"] == ST_FLUSH
    assert batch["aggregation_node_id"] == AGG
    assert batch["completed_at"] == ts(7) and batch["created_at"] == ts(5)
    assert [(m["token_id"], m["ordinal"]) for m in snap["batch_members"]] == [(TOK1, 0)]
    assert [(m["token_id"], m["run_id"]) for m in snap["batch_outputs"]] == [(TOK_OUT, RUN)]
    outcomes = {(r["token_id"], r["outcome"]): r for r in snap["token_outcomes"]}
    assert len(outcomes) == 6
    assert outcomes[(TOK1, "buffered")]["is_terminal"] is False
    assert outcomes[(TOK1, "buffered")]["token_json"] == '{"token_id":"x"}'
    assert outcomes[(TOK1, "consumed_in_batch")]["is_terminal"] is True
    assert outcomes[(TOK0_LARGE, "completed")]["artifact_id"] == ART
    assert {r["destination"] for r in snap["routing_events"]} == {"large", "review"}
    assert snap["artifacts"][0]["row_count"] == 1
    assert snap["runs"] == [] and snap["nodes"] == [] and snap["edges"] == []


def test_replay_into_same_database_changes_nothing(store, canonical_snapshot):
    rec.write(store, EVENTS)
    rec.write(store, EVENTS)
    rec.write(store, list(reversed(EVENTS)))
    for ev in EVENTS:
        rec.write(store, [ev])
    assert snapshot(store) == canonical_snapshot


def test_shuffled_duplicated_split_writes_give_identical_database(tmp_path, canonical_snapshot):
    rng = random.Random(1234)
    late = {id(BATCH_DRAFT), id(BATCH_EXECUTING), id(ROW_EVENT_0), id(GATE_OPEN)}
    first = [BATCH_COMPLETED, GATE_DONE, FLUSH_DONE]  # 'completed' batch before its draft; states before their row
    rest = [e for e in EVENTS if id(e) not in late and e not in first]
    mixed = rest + rng.sample(rest, len(rest) // 2)
    rng.shuffle(mixed)
    b = fresh_store(tmp_path, "b.db")
    try:
        rec.write(b, first)
        rec.write(b, mixed[: len(mixed) // 2])
        rec.write(b, [GATE_OPEN, BATCH_EXECUTING])
        rec.write(b, mixed[len(mixed) // 2:] + [BATCH_DRAFT])
        rec.write(b, [ROW_EVENT_0, BATCH_DRAFT, GATE_OPEN])
        rec.write(b, rng.sample(EVENTS, len(EVENTS)))
        snap_b = snapshot(b)
    finally:
        b.dispose()
    assert snap_b == canonical_snapshot
    # and the comparison is not vacuous
    assert sum(len(v) for v in snap_b.values()) > 25


def test_every_table_is_compared(canonical_snapshot):
    expected = {
        "runs", "nodes", "edges", "rows", "tokens", "token_parents", "node_states", "routing_events",
        "batches", "batch_members", "batch_outputs", "token_outcomes", "artifacts", "landscape_schema",
        "record_digests", "audit_segments",
    }
    assert set(canonical_snapshot) == expected


@given(st.data())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_permutation_and_duplication_gives_same_database(canonical_snapshot, data):
    order = data.draw(st.permutations(range(len(EVENTS))), label="order")
    dups = data.draw(st.lists(st.integers(0, len(EVENTS) - 1), max_size=15), label="duplicates")
    stream = [EVENTS[i] for i in order]
    for i in dups:
        pos = data.draw(st.integers(0, len(stream)), label="dup position")
        stream.insert(pos, EVENTS[i])
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6), label="transaction cuts"))
    chunks, start = [], 0
    for c in cuts + [len(stream)]:
        chunks.append(stream[start:c])
        start = c
    with tempfile.TemporaryDirectory() as tmp:
        b = fresh_store(Path(tmp))
        try:
            for chunk in chunks:
                rec.write(b, chunk)
            snap_b = snapshot(b)
        finally:
            b.dispose()
    assert snap_b == canonical_snapshot


def test_batch_lifecycle_events_stamped_at_different_times_are_order_independent(tmp_path):
    """As AggregationDoFn emits them: draft on the first accept, executing and completed at the
    flush, each BatchRecorded stamped with its own created_at (default utc_now()). Invariant 4
    (any order → same database) must hold for the batches table too."""
    common = {k: v for k, v in BATCH_COMMON.items() if k != "created_at"}
    draft = rec.batch(status=BatchStatus.DRAFT, created_at=ts(5), **common)
    executing = rec.batch(status=BatchStatus.EXECUTING, trigger_type=TriggerType.COUNT,
                              trigger_reason="count reached 1", created_at=ts(6), **common)
    completed = rec.batch(status=BatchStatus.COMPLETED, trigger_type=TriggerType.COUNT,
                              trigger_reason="count reached 1", aggregation_state_id=ST_FLUSH,
                              completed_at=ts(7), created_at=ts(7), **common)
    a, b = fresh_store(tmp_path, "a.db"), fresh_store(tmp_path, "b.db")
    try:
        for ev in (draft, executing, completed):
            rec.write(a, [ev])
        for ev in (completed, executing, draft):
            rec.write(b, [ev])
        # the batch was created when its draft was recorded, whichever event arrived first
        assert [r["created_at"] for r in a.table_rows(s.batches)] == [ts(5)]
        assert [r["created_at"] for r in b.table_rows(s.batches)] == [ts(5)]
        assert b.table_rows(s.batches) == a.table_rows(s.batches)
    finally:
        a.dispose()
        b.dispose()


# ---- statuses only move forward -----------------------------------------------------------------


def test_batch_completed_then_executing_stays_completed(store):
    rec.write(store, [BATCH_COMPLETED])
    rec.write(store, [BATCH_EXECUTING])
    rec.write(store, [BATCH_DRAFT])
    row = one(store, s.batches, batch_id=BATCH)
    assert row["status"] == "completed"
    assert row["aggregation_state_id"] == ST_FLUSH
    assert row["completed_at"] == ts(7)
    assert row["trigger_type"] == "count"


def test_batch_moves_forward_step_by_step(store):
    rec.write(store, [BATCH_DRAFT])
    assert one(store, s.batches, batch_id=BATCH)["status"] == "draft"
    assert one(store, s.batches, batch_id=BATCH)["trigger_type"] is None
    rec.write(store, [BATCH_EXECUTING])
    row = one(store, s.batches, batch_id=BATCH)
    assert (row["status"], row["trigger_type"], row["trigger_reason"]) == ("executing", "count", "count reached 1")
    rec.write(store, [BATCH_DRAFT])
    assert one(store, s.batches, batch_id=BATCH)["status"] == "executing"
    rec.write(store, [BATCH_COMPLETED])
    row = one(store, s.batches, batch_id=BATCH)
    assert (row["status"], row["aggregation_state_id"]) == ("completed", ST_FLUSH)


def test_terminal_batch_never_changes(store):
    failed = rec.batch(status=BatchStatus.FAILED, trigger_type=TriggerType.END_OF_SOURCE,
                           trigger_reason="end of source", aggregation_state_id=ST_FLUSH, completed_at=ts(8),
                           **BATCH_COMMON)
    rec.write(store, [BATCH_DRAFT, failed])
    rec.write(store, [BATCH_COMPLETED])
    row = one(store, s.batches, batch_id=BATCH)
    assert (row["status"], row["trigger_type"], row["completed_at"]) == ("failed", "end_of_source", ts(8))


def test_node_state_failed_then_open_stays_failed(store):
    failed = rec.node_state(run_id=RUN, state_id=ST_GATE0, node_id=GATE, token_id=TOK0,
                               status=NodeStateStatus.FAILED, input_hash=h("in-g0"), duration_ms=1.0,
                               error_json='{"type":"X"}', started_at=ts(2), completed_at=ts(3))
    rec.write(store, [failed])
    rec.write(store, [GATE_OPEN])
    row = one(store, s.node_states, state_id=ST_GATE0)
    assert row["status"] == "failed" and row["error_json"] == '{"type":"X"}' and row["completed_at"] == ts(3)
    # a later, different terminal event does not overwrite the first either
    rec.write(store, [GATE_DONE])
    row = one(store, s.node_states, state_id=ST_GATE0)
    assert row["status"] == "failed" and row["output_hash"] is None


def test_node_state_open_then_completed_in_later_transaction(store):
    rec.write(store, [GATE_OPEN])
    row = one(store, s.node_states, state_id=ST_GATE0)
    assert row["status"] == "open" and row["output_hash"] is None
    rec.write(store, [GATE_DONE])
    row = one(store, s.node_states, state_id=ST_GATE0)
    assert (row["status"], row["output_hash"], row["duration_ms"], row["completed_at"]) == (
        "completed", h("out-g0"), 0.25, ts(3),
    )


# ---- integrity the database enforces ------------------------------------------------------------


def test_second_different_terminal_outcome_raises(store):
    rec.write(store, [outcome(TOK0_LARGE, Outcome.COMPLETED, SINK_LARGE, sink_name="large")])
    with pytest.raises(IntegrityError):
        rec.write(store, [outcome(TOK0_LARGE, Outcome.FAILED, SINK_LARGE, error_json="{}")])
    rows = store.table_rows(s.token_outcomes)
    assert [(r["outcome"], r["is_terminal"]) for r in rows] == [("completed", True)]


def test_same_terminal_outcome_replayed_is_ignored(store):
    ev = outcome(TOK0_LARGE, Outcome.COMPLETED, SINK_LARGE, sink_name="large")
    rec.write(store, [ev, ev])
    rec.write(store, [ev])
    assert len(store.table_rows(s.token_outcomes)) == 1


def test_buffered_then_terminal_is_allowed(store):
    rec.write(store, [outcome(TOK1, Outcome.BUFFERED, AGG)])
    rec.write(store, [outcome(TOK1, Outcome.CONSUMED_IN_BATCH, AGG)])
    kinds = sorted((r["outcome"], r["is_terminal"]) for r in store.table_rows(s.token_outcomes))
    assert kinds == [("buffered", False), ("consumed_in_batch", True)]


def test_conflict_rolls_back_the_whole_transaction(store):
    rec.write(store, [outcome(TOK0, Outcome.FORKED, GATE)])
    with pytest.raises(IntegrityError):
        rec.write(store, [ROW_EVENT_0, outcome(TOK0, Outcome.QUARANTINED, GATE, error_json="{}")])
    assert store.table_rows(s.rows) == []


def _state(**kw: Any) -> tuple:
    fields = dict(run_id=RUN, state_id="st_x", node_id=GATE, token_id=TOK0, started_at=ts(1), attempt=1)
    fields.update(kw)
    return rec.node_state(**fields)


@pytest.mark.parametrize(
    "bad",
    [
        dict(status=NodeStateStatus.COMPLETED, duration_ms=1.0),  # completed without output_hash
        dict(status=NodeStateStatus.COMPLETED, output_hash=h("o")),  # completed without duration
        dict(status=NodeStateStatus.FAILED, duration_ms=1.0),  # failed without error_json
        dict(status=NodeStateStatus.FAILED, error_json="{}"),  # failed without duration
        dict(status=NodeStateStatus.OPEN, token_id=None),  # neither token nor batch
        dict(status=NodeStateStatus.OPEN, batch_id=BATCH),  # both token and batch
    ],
)
def test_schema_rejects_undisciplined_node_states(store, bad):
    with pytest.raises(IntegrityError):
        rec.write(store, [_state(**bad)])
    assert store.table_rows(s.node_states) == []


def test_closing_an_open_state_without_output_hash_is_rejected(store):
    rec.write(store, [_state(status=NodeStateStatus.OPEN)])
    with pytest.raises(IntegrityError):
        rec.write(store, [_state(status=NodeStateStatus.COMPLETED, duration_ms=1.0)])
    assert one(store, s.node_states, state_id="st_x")["status"] == "open"


def test_token_node_attempt_is_unique(store):
    rec.write(store, [_state(status=NodeStateStatus.OPEN)])
    with pytest.raises(IntegrityError):
        rec.write(store, [_state(state_id="st_other", status=NodeStateStatus.OPEN)])
    rec.write(store, [_state(state_id="st_attempt2", status=NodeStateStatus.OPEN, attempt=2)])
    assert len(store.table_rows(s.node_states)) == 2


def test_empty_write_is_a_no_op(store):
    rec.write(store, [])
    rec.write(store, iter(()))
    assert all(store.table_rows(t) == [] for t in s.metadata.sorted_tables if t is not s.landscape_schema)


def test_events_stored_in_two_databases_are_independent(tmp_path):
    a, b = fresh_store(tmp_path, "a.db"), fresh_store(tmp_path, "b.db")
    try:
        rec.write(a, EVENTS[:2])
        assert len(a.table_rows(s.rows)) == 2
        assert b.table_rows(s.rows) == []
    finally:
        a.dispose()
        b.dispose()
