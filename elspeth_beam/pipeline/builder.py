"""Wire the settings graph into a Beam pipeline.

Every node is applied in topological order; its ``out:<destination>`` outputs feed the
connection or sink they name, its ``error`` output feeds its error sink, and its ``audit``
output (segments of audit records) goes to the audit sink. Node kinds differ only in the PTransform built by
``_node_transform`` — adding a kind touches nothing else here.

The audit sink is applied to each node's audit stream rather than to one Flatten of them
all: Beam fuses it into the node's own stage, so a stage's audit is committed when its bundle
commits. Behind a single Flatten the FnApiRunner ran the writer only after every stage had
finished (measured: an aggregation flush saw 0 rows in the Landscape), so a crash lost the
whole run's audit — and the Landscape is the checkpoint ``resume`` restarts from.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.pvalue import PCollection

from elspeth_beam.config.graph import NodeSpec, PipelineGraph
from elspeth_beam.config.loader import LoadedPipeline
from elspeth_beam.core import ids
from elspeth_beam.core.enums import NodeType, Outcome
from elspeth_beam.auditlog.buffer import AuditSegment
from elspeth_beam.auditlog.segments import audit_log_dir
from elspeth_beam.pipeline.audit import AUDIT_TAG, ERROR_TAG, NodeContext, out_tag
from elspeth_beam.pipeline.gate import GateDoFn
from elspeth_beam.core.tokens import TokenInfo
from elspeth_beam.pipeline.audit_sink import WriteAudit
from elspeth_beam.pipeline.restore import PipelineRestore
from elspeth_beam.pipeline.sink import SinkDoFn
from elspeth_beam.pipeline.source import ReadSource
from elspeth_beam.pipeline.transform import TransformDoFn


@dataclass
class BuiltPipeline:
    audit_streams: list[PCollection]  # each node's audit segments (already written)

    def audit(self) -> PCollection:
        """All audit streams flattened — a tap for tests; built only when asked for, since an
        extra consumer would keep the FnApiRunner from fusing each writer into its stage."""
        return self.audit_streams | "Audit streams" >> beam.Flatten()


def _node_transform(
    node: NodeSpec, ctx: NodeContext, tags: list[str], restore: PipelineRestore, graph: PipelineGraph, streaming: bool
) -> beam.PTransform:
    if node.node_type is NodeType.TRANSFORM:
        return beam.ParDo(TransformDoFn(ctx, node.settings)).with_outputs(*tags)  # type: ignore[arg-type]
    if node.node_type is NodeType.GATE:
        return beam.ParDo(GateDoFn(ctx, node.settings)).with_outputs(*tags)  # type: ignore[arg-type]
    if node.node_type is NodeType.AGGREGATION:
        from elspeth_beam.pipeline.aggregation import Aggregate

        fed_by_aggregation = any(down == node.name for _, down in graph.chained_aggregations())
        return Aggregate(ctx, node.settings, tags, restore=restore.aggregations.get(node.node_id),  # type: ignore[arg-type]
                         barrier=fed_by_aggregation and not streaming, streaming=streaming)
    raise ValueError(f"no Beam transform for node type {node.node_type}")


def _arrival(node: NodeSpec) -> Outcome:
    """The outcome a token earns when a node's success output lands in a sink."""
    return Outcome.ROUTED if node.node_type is NodeType.GATE else Outcome.COMPLETED


def _to_sink_item(outcome: Outcome) -> Callable:
    value = outcome.value
    return lambda token: (value, token, None)


def _error_to_sink_item(pair):
    token, error = pair
    return (Outcome.QUARANTINED.value, token, error)


def apply_graph(
    pipeline: beam.Pipeline,
    loaded: LoadedPipeline,
    run_id: str,
    restore: PipelineRestore | None = None,
    streaming: bool = False,
    stable_input: bool = False,
) -> BuiltPipeline:
    """Apply every node; ``restore`` (from ``resume``) skips finished work and refills buffers.

    ``stable_input``: a reshuffle before every audit write and sink write, for runners that
    may re-run a failed task with its input in another order or other bundles (Flink,
    Dataflow). Its records could then differ from the first try's — an aggregation's flush
    ordered otherwise, a sink's part cut elsewhere — and both would reach the audit log. Behind
    the reshuffle, the writes see only what a finished task produced, and a retried write
    sees the same elements again, which the audit absorbs."""
    graph: PipelineGraph = loaded.graph
    ids.check_node_codes(n.node_id for n in graph.nodes)
    restore = restore or PipelineRestore()
    connections: dict[str, list[PCollection]] = defaultdict(list)
    sink_inputs: dict[str, list[PCollection]] = defaultdict(list)
    audits: list[PCollection] = []
    url = loaded.settings.landscape.url
    audit_log = str(audit_log_dir(url, loaded.settings.landscape.audit_log))

    for node in graph.nodes:
        ctx = NodeContext(run_id=run_id, node_id=node.node_id, on_error=node.on_error,
                          segment_records=loaded.settings.landscape.segment_records)
        label = node.node_id.replace(":", " ")
        if node.node_type is NodeType.SINK:
            inputs = sink_inputs[node.name]
            merged = inputs[0] if len(inputs) == 1 else inputs | f"{label} inputs" >> beam.Flatten()
            if stable_input:
                merged = merged | f"{label} stable input" >> beam.Reshuffle()
            written = merged | label >> beam.ParDo(SinkDoFn(ctx, node.name, node.settings, restore.done_tokens)).with_outputs(AUDIT_TAG)
            audits.append(_written(written[AUDIT_TAG], label, url, audit_log, stable_input))
            continue

        tags = [AUDIT_TAG, ERROR_TAG, *(out_tag(d) for d in node.destinations)]
        if node.node_type is NodeType.SOURCE:
            outputs = pipeline | label >> ReadSource(ctx, node.settings, tags, restore.settled_rows)  # type: ignore[arg-type]
        else:
            upstream = connections[node.input]  # type: ignore[index]
            agg_restore = restore.aggregations.get(node.node_id)
            if agg_restore and agg_restore.retries:  # interrupted batches' members re-enter here
                members = [m for r in agg_restore.retries.values() for m in r.members]
                upstream = [*upstream, pipeline | f"{label} restored" >> beam.Create(members).with_output_types(TokenInfo)]
            pcoll = upstream[0] if len(upstream) == 1 else upstream | f"{label} inputs" >> beam.Flatten()
            outputs = pcoll | label >> _node_transform(node, ctx, tags, restore, graph, streaming)

        audits.append(_written(outputs[AUDIT_TAG], label, url, audit_log, stable_input))
        reemitted = restore.reemit.get(node.node_id)
        for dest in node.destinations:
            stream = outputs[out_tag(dest)]
            stream.element_type = TokenInfo  # its deterministic coder, not a pickle, between stages
            if reemitted:  # resume: outputs of finished flushes whose next step never committed
                again = pipeline | f"{label} re-emitted" >> beam.Create(list(reemitted)).with_output_types(TokenInfo)
                stream = (stream, again) | f"{label} to {dest} with re-emitted" >> beam.Flatten()
            if graph.is_sink(dest):
                sink_inputs[dest].append(stream | f"{label} to {dest}" >> beam.Map(_to_sink_item(_arrival(node))))
            else:
                connections[dest].append(stream)
        if node.error_sink:
            errors = outputs[ERROR_TAG] | f"{label} errors to {node.error_sink}" >> beam.Map(_error_to_sink_item)
            sink_inputs[node.error_sink].append(errors)
            stranded = restore.rediverted.get(node.node_id)
            if stranded:  # resume: members of failed flushes that died on their way to the error sink
                again = pipeline | f"{label} re-diverted" >> beam.Create(list(stranded))
                sink_inputs[node.error_sink].append(again | f"{label} re-diverted to {node.error_sink}" >> beam.Map(_error_to_sink_item))

    return BuiltPipeline(audit_streams=audits)


def _written(audit: PCollection, label: str, url: str, audit_log: str, stable_input: bool) -> PCollection:
    audit.element_type = AuditSegment  # AuditSegmentCoder: Beam's size sampling need not encode it
    segments = audit
    if stable_input:
        segments = audit | f"{label} audit stable input" >> beam.Reshuffle()
        segments.element_type = AuditSegment
    segments | f"{label} audit" >> WriteAudit(url, audit_log)
    return audit
