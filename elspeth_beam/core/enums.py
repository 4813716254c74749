"""Status vocabularies of the audit model (DESIGN §4)."""

from __future__ import annotations

from enum import StrEnum


class NodeType(StrEnum):
    SOURCE = "source"
    TRANSFORM = "transform"
    GATE = "gate"
    AGGREGATION = "aggregation"
    SINK = "sink"


class NodeStateStatus(StrEnum):
    OPEN = "open"
    COMPLETED = "completed"
    FAILED = "failed"


class BatchStatus(StrEnum):
    DRAFT = "draft"
    EXECUTING = "executing"
    COMPLETED = "completed"
    FAILED = "failed"


class TriggerType(StrEnum):
    COUNT = "count"
    END_OF_SOURCE = "end_of_source"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"  # recorded by resume: the process died before this batch flushed


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


class Outcome(StrEnum):
    COMPLETED = "completed"
    ROUTED = "routed"
    FORKED = "forked"
    CONSUMED_IN_BATCH = "consumed_in_batch"
    QUARANTINED = "quarantined"
    FAILED = "failed"
    BUFFERED = "buffered"

    @property
    def is_terminal(self) -> bool:
        return self is not Outcome.BUFFERED

