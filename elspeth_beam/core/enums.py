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

    @property
    def label(self) -> str:
        """The status as the tools print it: a step that raised is ``errored``, never "failed",
        which they keep for the token outcome (an errored step's token ends quarantined, at
        an error sink or failed, as the node's on_error says)."""
        return ERRORED if self is NodeStateStatus.FAILED else self.value


ERRORED = "errored"


class BatchStatus(StrEnum):
    DRAFT = "draft"
    EXECUTING = "executing"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def label(self) -> str:
        """As the tools print it: a batch whose flush raised (or was interrupted) ``errored``."""
        return ERRORED if self is BatchStatus.FAILED else self.value


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

