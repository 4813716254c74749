"""show: one run at a glance, read from its Landscape alone.

What an operator or auditor asks first about a run — did it finish, with which settings, what
did each node do, where did the rows end up, how did the aggregations flush, why were rows
rejected — answered by a handful of aggregate queries, as a model (``--json``) and as text.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from pydantic import BaseModel
from sqlalchemy import func, select

from elspeth_beam.core.enums import ERRORED, BatchStatus, NodeStateStatus
from elspeth_beam.landscape import schema as s
from elspeth_beam.landscape.store import LandscapeStore
from elspeth_beam.inspect.reasons import ReasonGroup, error_reasons
from elspeth_beam.inspect.summary import RunHeader, run_header, summarize

TOP_REASONS = 10


class NodeStats(BaseModel):
    """One node and the node_states recorded at it (per token, or per flush for aggregations)."""

    node_id: str
    name: str
    node_type: str
    plugin: str
    completed: int = 0
    errored: int = 0  # node_states with status failed: the step raised (NodeStateStatus.label)
    open: int = 0
    mean_ms: float | None = None


class AggregationBatches(BaseModel):
    node_id: str
    batches: int
    members: int
    by_trigger: dict[str, int]
    by_status: dict[str, int]


class RunDetails(BaseModel):
    header: RunHeader
    settings: dict[str, Any]
    rows_read: int
    outcomes: dict[str, int]
    rows_per_sink: dict[str, int]
    nodes: list[NodeStats]
    aggregations: list[AggregationBatches]
    error_reasons: list[ReasonGroup]
    errors_total: int


def show_run(store: LandscapeStore, run_id: str, *, top: int = TOP_REASONS) -> RunDetails:
    """Everything ``show`` prints about one run (raises RunNotFoundError for an unknown id)."""
    run = store.run(run_id)
    with store.engine.connect() as conn:
        reasons = error_reasons(conn, run_id)
    summary = summarize(store, run_id, reasons=reasons)
    header = run_header(store, run, summary["rows_read"])
    return RunDetails(
        header=header,
        settings=json.loads(run["settings_json"]),
        rows_read=summary["rows_read"],
        outcomes=summary["outcomes"],
        rows_per_sink=summary["rows_per_sink"],
        nodes=_node_stats(store, run_id),
        aggregations=_aggregation_batches(store, run_id),
        error_reasons=reasons[:top],
        errors_total=sum(r.count for r in reasons),
    )


def _node_stats(store: LandscapeStore, run_id: str) -> list[NodeStats]:
    n, ns = s.nodes, s.node_states
    per_status = (
        select(ns.c.node_id, ns.c.status, func.count(), func.avg(ns.c.duration_ms), func.count(ns.c.duration_ms))
        .where(ns.c.run_id == run_id)
        .group_by(ns.c.node_id, ns.c.status)
    )
    with store.engine.connect() as conn:
        nodes = conn.execute(select(n).where(n.c.run_id == run_id).order_by(n.c.position, n.c.node_id)).mappings().all()
        states = conn.execute(per_status).all()
    stats = {
        r["node_id"]: NodeStats(node_id=r["node_id"], name=r["name"], node_type=r["node_type"], plugin=r["plugin_name"])
        for r in nodes
    }
    totals: dict[str, tuple[float, int]] = {}
    for node_id, status, count, mean, timed in states:
        st = stats.setdefault(node_id, NodeStats(node_id=node_id, name=node_id, node_type="?", plugin="?"))
        if status in tuple(NodeStateStatus):
            setattr(st, NodeStateStatus(status).label, count)
        if timed:
            total_ms, n_timed = totals.get(node_id, (0.0, 0))
            totals[node_id] = (total_ms + mean * timed, n_timed + timed)
    for node_id, (total_ms, n_timed) in totals.items():
        stats[node_id].mean_ms = total_ms / n_timed
    return list(stats.values())


def _aggregation_batches(store: LandscapeStore, run_id: str) -> list[AggregationBatches]:
    b, m = s.batches, s.batch_members
    grouped = (
        select(b.c.aggregation_node_id, b.c.trigger_type, b.c.status, func.count())
        .where(b.c.run_id == run_id)
        .group_by(b.c.aggregation_node_id, b.c.trigger_type, b.c.status)
    )
    members = (
        select(b.c.aggregation_node_id, func.count())
        .select_from(m.join(b, b.c.batch_id == m.c.batch_id))
        .where(m.c.run_id == run_id)
        .group_by(b.c.aggregation_node_id)
    )
    with store.engine.connect() as conn:
        rows = conn.execute(grouped).all()
        member_counts = dict(conn.execute(members).all())
    by_node: dict[str, AggregationBatches] = {}
    for node_id, trigger, status, count in rows:
        agg = by_node.setdefault(
            node_id,
            AggregationBatches(node_id=node_id, batches=0, members=member_counts.get(node_id, 0), by_trigger={}, by_status={}),
        )
        agg.batches += count
        key = trigger or "pending"  # a batch gets its trigger when it flushes
        agg.by_trigger[key] = agg.by_trigger.get(key, 0) + count
        label = BatchStatus(status).label if status in tuple(BatchStatus) else status
        agg.by_status[label] = agg.by_status.get(label, 0) + count
    for agg in by_node.values():
        agg.by_trigger = dict(sorted(agg.by_trigger.items()))
        agg.by_status = dict(sorted(agg.by_status.items()))
    return [by_node[k] for k in sorted(by_node)]


# ---- text ------------------------------------------------------------------------------


def _counts(counts: dict[str, int], sep: str = "   ") -> str:
    return sep.join(f"{k} {v}" for k, v in counts.items()) or "none"


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    fmt = lambda cells: "  " + "  ".join(  # noqa: E731
        c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
    ).rstrip()
    return [fmt(headers), *(fmt(r) for r in rows)]


def render_text(d: RunDetails) -> str:
    h = d.header
    lines = [
        f"run        {h.run_id}  [{h.status}]",
        f"runner     {h.runner}",
        f"started    {h.started_at}",
        f"completed  {h.completed_at or '-'}",
        f"duration   {f'{h.duration_s:.2f}s' if h.duration_s is not None else '- (not finished)'}",
        f"settings   sha256 {h.settings_hash}",
        f"landscape  {h.landscape_url}",
        "",
        "settings (as recorded, secrets redacted)",
        *("  " + line for line in yaml.safe_dump(d.settings, sort_keys=False, default_flow_style=None, width=100).rstrip().splitlines()),
        "",
        f"nodes (node_states per node; {ERRORED}: the step raised, and the outcomes below say where its token went)",
        *_table(
            ["node", "type", "plugin", "completed", ERRORED, "open", "mean ms"],
            [
                [n.node_id, n.node_type, n.plugin, str(n.completed), str(n.errored), str(n.open),
                 f"{n.mean_ms:.3f}" if n.mean_ms is not None else "-"]
                for n in d.nodes
            ],
            right={3, 4, 5, 6},
        ),
        "",
        f"rows read  {d.rows_read}",
        f"outcomes   {_counts(d.outcomes)}",
        f"per sink   {_counts(d.rows_per_sink)}",
    ]
    if d.aggregations:
        lines += ["", "batches per aggregation"]
        lines += _table(
            ["aggregation", "batches", "members", "by trigger", "by status"],
            [[a.node_id, str(a.batches), str(a.members), _counts(a.by_trigger, ", "), _counts(a.by_status, ", ")] for a in d.aggregations],
            right={1, 2},
        )
    if d.errors_total:
        shown = sum(r.count for r in d.error_reasons)
        more = f"; {d.errors_total - shown} more token(s) for rarer reasons" if shown < d.errors_total else ""
        lines += ["", f"quarantined / failed: {d.errors_total} token(s), most frequent reasons first{more}"]
        lines += _table(
            ["count", "outcome", "node", "error", "values"],
            [[str(r.count), r.outcome, r.node_id, f"{r.error_type}: {r.reason}", r.examples_text()] for r in d.error_reasons],
            right={0},
        )
    return "\n".join(lines)
