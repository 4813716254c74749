"""The figures of one run's report (`RunReport`): what `report` gathers and `report_html` draws."""

from __future__ import annotations

from pydantic import BaseModel

from elspeth_beam.inspect.reasons import ReasonGroup
from elspeth_beam.inspect.summary import RunHeader

ERROR_LABEL = "on_error"  # the edge label of a node's error route (config/graph.py)


class NodeReport(BaseModel):
    node_id: str
    name: str
    plugin: str
    node_type: str
    position: int
    tokens_in: int
    tokens_out: int
    completed: int
    errored: int  # node_states with status failed (NodeStateStatus.label): not the outcome FAILED
    open: int
    mean_ms: float | None
    p95_ms: float | None
    total_ms: float  # at a sink: its parts' write times, each part once


class EdgeReport(BaseModel):
    from_node: str
    to_node: str
    label: str

    @property
    def is_error(self) -> bool:
        return self.label == ERROR_LABEL


class BatchReport(BaseModel):
    node_id: str
    name: str
    batches: int
    by_status: dict[str, int]
    by_trigger: dict[str, int]
    retries: int  # batches with attempt > 1 (resume retried an interrupted flush)
    mean_size: float | None
    max_size: int | None
    outputs: int


class ArtifactReport(BaseModel):
    path: str
    kind: str
    rows: int
    size_bytes: int
    content_hash: str


class SinkReport(BaseModel):
    node_id: str
    name: str
    plugin: str
    by_outcome: dict[str, int]
    artifacts: list[ArtifactReport]

    @property
    def rows(self) -> int:
        return sum(self.by_outcome.values())


class RunReport(BaseModel):
    header: RunHeader
    nodes: list[NodeReport]
    edges: list[EdgeReport]
    batches: list[BatchReport]
    sinks: list[SinkReport]
    outcomes: dict[str, int]  # terminal outcomes of the run
    reasons: list[ReasonGroup]  # the most frequent first, at most `top_reasons`
    reasons_distinct: int  # causes in all
    reasons_tokens: int  # tokens quarantined or failed
    generated_at: str

    def node(self, node_id: str) -> NodeReport | None:
        return next((n for n in self.nodes if n.node_id == node_id), None)
