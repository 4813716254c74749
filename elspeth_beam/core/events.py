"""Audit events: what audited DoFns emit on the ``audit`` tag (a discriminated union).

Each event maps to one Landscape row keyed by a deterministic id, so the writer can apply
events in any order, any number of times, and reach the same database.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from collections.abc import Iterable
from typing import Annotated, Any, Literal, Self, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic_core import PydanticUndefined

from elspeth_beam.core.enums import BatchStatus, NodeStateStatus, Outcome, TriggerType


_second: tuple[int, str] = (-1, "")


def utc_now() -> str:
    """``datetime.now(utc).isoformat(timespec="microseconds")``, formatting the date and time
    once per second: several timestamps per token made it 1.7 µs → 0.5 µs a call."""
    global _second
    sec, micro = divmod(time.time_ns() // 1000, 1_000_000)
    cached_sec, text = _second  # one read: another thread may replace the pair meanwhile
    if sec != cached_sec:
        text = dt.datetime.fromtimestamp(sec, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        _second = (sec, text)
    return f"{text}.{micro:06d}+00:00"


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    run_id: str

    @classmethod
    def fast(cls, **fields: Any) -> Self:
        """Build without validation, for the per-token hot path: the fields come from
        validated tokens and our own code. (``model_construct`` resolves every default through
        pydantic's machinery and cost more than the rest of the audit put together.)"""
        values = dict(_static_defaults(cls))
        values.update(fields)
        for name in _timestamp_fields(cls):
            if name not in values:
                values[name] = utc_now()
        return _bare(cls, values, set(fields))


def _bare(cls: type[Any], values: dict[str, Any], fields_set: set[str]) -> Any:
    """An event instance over ``values``, without pydantic's validation or copying."""
    event = cls.__new__(cls)
    object.__setattr__(event, "__dict__", values)
    object.__setattr__(event, "__pydantic_fields_set__", fields_set)
    object.__setattr__(event, "__pydantic_extra__", None)
    object.__setattr__(event, "__pydantic_private__", None)
    return event


@functools.cache
def _static_defaults(cls: type[BaseModel]) -> dict[str, Any]:
    return {n: f.default for n, f in cls.model_fields.items() if f.default is not PydanticUndefined}


@functools.cache
def _timestamp_fields(cls: type[BaseModel]) -> tuple[str, ...]:
    return tuple(n for n, f in cls.model_fields.items() if f.default_factory is utc_now)


class RowRecorded(_Event):
    kind: Literal["row"] = "row"
    row_id: str
    source_node_id: str
    row_index: int
    source_data_hash: str
    payload_json: str | None = None  # the row as read (or the raw text if it did not parse)


class TokenCreated(_Event):
    kind: Literal["token"] = "token"
    token_id: str
    row_id: str
    created_at_node: str
    branch_name: str | None = None
    parent_ids: tuple[str, ...] = ()
    created_at: str = Field(default_factory=utc_now)


class NodeStateRecorded(_Event):
    kind: Literal["node_state"] = "node_state"
    state_id: str
    node_id: str
    token_id: str | None = None
    batch_id: str | None = None
    attempt: int = 1
    status: NodeStateStatus
    input_hash: str | None = None
    output_hash: str | None = None
    duration_ms: float | None = None
    error_json: str | None = None
    started_at: str
    completed_at: str | None = None


class RoutingRecorded(_Event):
    kind: Literal["routing"] = "routing"
    routing_id: str
    state_id: str
    route_label: str
    destination: str
    mode: Literal["move", "copy"]
    reason_hash: str


class OutcomeRecorded(_Event):
    kind: Literal["outcome"] = "outcome"
    outcome_id: str
    token_id: str
    outcome: Outcome
    node_id: str
    sink_name: str | None = None
    error_json: str | None = None
    artifact_id: str | None = None
    artifact_row: int | None = None
    token_json: str | None = None  # full TokenInfo for `buffered`: the resume checkpoint
    recorded_at: str = Field(default_factory=utc_now)


class BatchRecorded(_Event):
    kind: Literal["batch"] = "batch"
    batch_id: str
    node_id: str
    key: str
    sequence: int
    attempt: int = 1
    status: BatchStatus
    trigger_type: TriggerType | None = None
    trigger_reason: str | None = None
    aggregation_state_id: str | None = None
    retry_of_batch_id: str | None = None
    created_at: str = Field(default_factory=utc_now)
    completed_at: str | None = None


class BatchMemberRecorded(_Event):
    kind: Literal["batch_member"] = "batch_member"
    batch_id: str
    token_id: str
    ordinal: int


class BatchOutputRecorded(_Event):
    kind: Literal["batch_output"] = "batch_output"
    batch_id: str
    token_id: str
    ordinal: int
    token_json: str | None = None  # the full output token: resume re-emits it if it went no further


class ArtifactRecorded(_Event):
    kind: Literal["artifact"] = "artifact"
    artifact_id: str
    sink_node_id: str
    path: str
    content_hash: str
    size_bytes: int
    row_count: int
    artifact_kind: Literal["part", "merged"] = "part"
    created_at: str = Field(default_factory=utc_now)


AuditEvent = Annotated[
    Union[
        RowRecorded,
        TokenCreated,
        NodeStateRecorded,
        RoutingRecorded,
        OutcomeRecorded,
        BatchRecorded,
        BatchMemberRecorded,
        BatchOutputRecorded,
        ArtifactRecorded,
    ],
    Field(discriminator="kind"),
]

AUDIT_EVENTS_ADAPTER: TypeAdapter[list[AuditEvent]] = TypeAdapter(list[AuditEvent])


class AuditBatch(list):
    """One element of an ``audit`` output: a list of events (a bundle's, or part of one)."""


def pack_events(events: Iterable[_Event]) -> list[tuple[type[_Event], dict[str, Any]]]:
    """Events as (class, field dict) pairs: pickle handles these in C, where pydantic's
    per-object pickling (or a ``__reduce__`` of our own) cost 15 µs an event in Python."""
    return [(type(e), e.__dict__) for e in events]


def unpack_events(packed: Iterable[tuple[type[_Event], dict[str, Any]]]) -> list[Any]:
    """The events ``pack_events`` described (fields were validated when first made)."""
    return [_bare(cls, fields, set(fields)) for cls, fields in packed]
