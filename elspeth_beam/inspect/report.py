"""`elspeth-beam report`: one run's Landscape gathered into a `RunReport`, for people.

Every figure is aggregated by the database (a run can hold millions of node_states), so a
report costs a handful of grouped queries, never a scan into Python. The model is then drawn
by `report_html` as one static page; this module only decides *what* the figures are.

Tokens in/out per node mean "reached the node" / "passed on by it":

| node type   | in                                  | out                                      |
|-------------|-------------------------------------|------------------------------------------|
| source      | rows read                           | rows parsed (completed node_states)      |
| transform   | distinct tokens with a node_state   | completed node_states                    |
| gate        | distinct tokens with a node_state   | routing events (a fork counts each copy) |
| aggregation | distinct tokens accepted in batches | tokens the flushes emitted               |
| sink        | distinct tokens with a node_state   | rows written (outcomes at the sink)      |
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, select

from elspeth_beam.core.enums import BatchStatus, NodeStateStatus, NodeType
from elspeth_beam.core.errors import ElspethError
from elspeth_beam.core.timestamps import utc_now
from elspeth_beam.landscape import schema as s
from elspeth_beam.landscape.store import LandscapeStore
from elspeth_beam.inspect.reasons import error_reasons
from elspeth_beam.inspect.report_html import render_html
from elspeth_beam.inspect.report_model import (
    ArtifactReport, BatchReport, EdgeReport, NodeReport, RunReport, SinkReport,
)
from elspeth_beam.inspect.summary import run_header

class ReportError(ElspethError):
    """The report could not be written."""



def build_report(store: LandscapeStore, run_id: str, *, top_reasons: int = 20) -> RunReport:
    """Everything the report shows about one run (RunNotFoundError if it is not there)."""
    run = store.run(run_id)
    with store.engine.connect() as conn:
        node_rows = conn.execute(select(s.nodes).where(s.nodes.c.run_id == run_id).order_by(s.nodes.c.position)).mappings().all()
        rows_read = _grouped(conn, select(s.rows.c.source_node_id, func.count()).where(s.rows.c.run_id == run_id).group_by(s.rows.c.source_node_id))
        nodes = _nodes(conn, run_id, node_rows, rows_read)
        edges = [
            EdgeReport(**e)
            for e in conn.execute(select(s.edges).where(s.edges.c.run_id == run_id).order_by(*s.edges.primary_key.columns)).mappings()
        ]
        sinks = _sinks(conn, run_id, [n for n in node_rows if n["node_type"] == NodeType.SINK])
        reasons = error_reasons(conn, run_id)
        outcomes = _grouped(
            conn,
            select(s.token_outcomes.c.outcome, func.count())
            .where(s.token_outcomes.c.run_id == run_id, s.token_outcomes.c.is_terminal.is_(True))
            .group_by(s.token_outcomes.c.outcome),
        )
        batches = _batches(conn, run_id, [n for n in node_rows if n["node_type"] == NodeType.AGGREGATION])
    return RunReport(
        header=run_header(store, run, sum(rows_read.values())),
        nodes=nodes,
        edges=edges,
        batches=batches,
        sinks=sinks,
        outcomes=dict(sorted(outcomes.items())),
        reasons=reasons[: max(top_reasons, 0)],
        reasons_distinct=len(reasons),
        reasons_tokens=sum(r.count for r in reasons),
        generated_at=utc_now(),
    )


def write_report(report: RunReport, out: str | Path) -> Path:
    """Render the report into ``out`` (parent folders created); ReportError if that fails."""

    path = Path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_html(report), encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"cannot write the report to {str(path)!r} ({exc.strerror or exc}); pass --out FILE.html in a writable folder") from None
    return path


# ---- queries ------------------------------------------------------------------------------


def _grouped(conn: Connection, stmt: Any) -> dict[Any, int]:
    """A grouped count as a dict: the last column is the count, the others the key (a tuple
    when there are several)."""
    out: dict[Any, int] = {}
    for row in conn.execute(stmt).all():
        *key, count = row
        out[key[0] if len(key) == 1 else tuple(key)] = int(count)
    return out


def _nodes(conn: Connection, run_id: str, node_rows: list[Any], rows_read: dict[str, int]) -> list[NodeReport]:
    ns = s.node_states
    by_status: dict[tuple[str, str], int] = _grouped(
        conn, select(ns.c.node_id, ns.c.status, func.count()).where(ns.c.run_id == run_id).group_by(ns.c.node_id, ns.c.status)
    )
    per_node = {
        r.node_id: r
        for r in conn.execute(
            select(
                ns.c.node_id,
                func.count(ns.c.token_id.distinct()).label("tokens"),
                func.count(ns.c.duration_ms).label("timed"),
                func.coalesce(func.sum(ns.c.duration_ms), 0.0).label("total_ms"),
            )
            .where(ns.c.run_id == run_id)
            .group_by(ns.c.node_id)
        )
    }
    routed = _grouped(
        conn,
        select(ns.c.node_id, func.count())
        .select_from(s.routing_events.join(ns, ns.c.state_id == s.routing_events.c.state_id))
        .where(s.routing_events.c.run_id == run_id)
        .group_by(ns.c.node_id),
    )
    part_ms = _sink_write_ms(conn, run_id)
    accepted, emitted = _batch_tokens(conn, run_id)
    written = _grouped(
        conn,
        select(s.token_outcomes.c.node_id, func.count())
        .where(s.token_outcomes.c.run_id == run_id, s.token_outcomes.c.sink_name.is_not(None))
        .group_by(s.token_outcomes.c.node_id),
    )
    out = []
    for n in node_rows:
        nid, kind = n["node_id"], n["node_type"]
        stats = per_node.get(nid)
        completed = by_status.get((nid, "completed"), 0)
        timed = stats.timed if stats else 0
        tokens_in = {NodeType.SOURCE: rows_read.get(nid, 0), NodeType.AGGREGATION: accepted.get(nid, 0)}.get(
            kind, stats.tokens if stats else 0
        )
        tokens_out = {NodeType.GATE: routed.get(nid, 0), NodeType.AGGREGATION: emitted.get(nid, 0), NodeType.SINK: written.get(nid, 0)}.get(
            kind, completed
        )
        out.append(
            NodeReport(
                node_id=nid,
                name=n["name"],
                plugin=n["plugin_name"],
                node_type=kind,
                position=n["position"],
                tokens_in=tokens_in,
                tokens_out=tokens_out,
                completed=completed,
                errored=by_status.get((nid, NodeStateStatus.FAILED.value), 0),
                open=by_status.get((nid, "open"), 0),
                mean_ms=(stats.total_ms / timed) if timed else None,
                p95_ms=_p95(conn, run_id, nid, timed),
                total_ms=part_ms.get(nid, 0.0) if kind == NodeType.SINK else (float(stats.total_ms) if stats else 0.0),
            )
        )
    return out


def _sink_write_ms(conn: Connection, run_id: str) -> dict[str, float]:
    """Per sink, the sum of its parts' write times. A part's rows are written together, and
    each of their node_states holds the whole part's duration: summed over the states, a part
    would count once per row (6 s of writing inside a 2 s run)."""
    ns, o = s.node_states, s.token_outcomes
    per_part = (
        select(ns.c.node_id, o.c.artifact_id, func.max(ns.c.duration_ms).label("ms"))
        .select_from(o.join(ns, (ns.c.token_id == o.c.token_id) & (ns.c.node_id == o.c.node_id)))
        .where(o.c.run_id == run_id, o.c.artifact_id.is_not(None), ns.c.run_id == run_id)
        .group_by(ns.c.node_id, o.c.artifact_id)
        .subquery()
    )
    totals = conn.execute(select(per_part.c.node_id, func.sum(per_part.c.ms)).group_by(per_part.c.node_id)).all()
    return {node_id: float(ms or 0.0) for node_id, ms in totals}


def _p95(conn: Connection, run_id: str, node_id: str, timed: int) -> float | None:
    """Nearest-rank 95th percentile of the node's durations, picked by the database."""
    if not timed:
        return None
    ns = s.node_states
    stmt = (
        select(ns.c.duration_ms)
        .where(ns.c.run_id == run_id, ns.c.node_id == node_id, ns.c.duration_ms.is_not(None))
        .order_by(ns.c.duration_ms)
        .offset(math.ceil(0.95 * timed) - 1)
        .limit(1)
    )
    return float(conn.execute(stmt).scalar_one())


def _batch_tokens(conn: Connection, run_id: str) -> tuple[dict[str, int], dict[str, int]]:
    """Per aggregation: distinct tokens accepted into its batches, and tokens its flushes emitted."""
    b = s.batches
    accepted = _grouped(
        conn,
        select(b.c.aggregation_node_id, func.count(s.batch_members.c.token_id.distinct()))
        .select_from(s.batch_members.join(b, b.c.batch_id == s.batch_members.c.batch_id))
        .where(s.batch_members.c.run_id == run_id)
        .group_by(b.c.aggregation_node_id),
    )
    emitted = _grouped(
        conn,
        select(b.c.aggregation_node_id, func.count())
        .select_from(s.batch_outputs.join(b, b.c.batch_id == s.batch_outputs.c.batch_id))
        .where(s.batch_outputs.c.run_id == run_id)
        .group_by(b.c.aggregation_node_id),
    )
    return accepted, emitted


def _batches(conn: Connection, run_id: str, aggregations: list[Any]) -> list[BatchReport]:
    b = s.batches
    by_status = _grouped(conn, select(b.c.aggregation_node_id, b.c.status, func.count()).where(b.c.run_id == run_id).group_by(b.c.aggregation_node_id, b.c.status))
    by_trigger = _grouped(
        conn,
        select(b.c.aggregation_node_id, b.c.trigger_type, func.count()).where(b.c.run_id == run_id).group_by(b.c.aggregation_node_id, b.c.trigger_type),
    )
    retries = _grouped(conn, select(b.c.aggregation_node_id, func.count()).where(b.c.run_id == run_id, b.c.attempt > 1).group_by(b.c.aggregation_node_id))
    sizes = (
        select(s.batch_members.c.batch_id, func.count().label("size"))
        .where(s.batch_members.c.run_id == run_id)
        .group_by(s.batch_members.c.batch_id)
        .subquery()
    )
    size_stats = {
        r.node_id: r
        for r in conn.execute(
            select(b.c.aggregation_node_id.label("node_id"), func.avg(sizes.c.size).label("mean"), func.max(sizes.c.size).label("max"))
            .select_from(sizes.join(b, b.c.batch_id == sizes.c.batch_id))
            .group_by(b.c.aggregation_node_id)
        )
    }
    _, emitted = _batch_tokens(conn, run_id)
    out = []
    for agg in aggregations:
        nid = agg["node_id"]
        statuses = {BatchStatus(st).label: n for (node, st), n in by_status.items() if node == nid}
        size = size_stats.get(nid)
        out.append(
            BatchReport(
                node_id=nid,
                name=agg["name"],
                batches=sum(statuses.values()),
                by_status=dict(sorted(statuses.items())),
                by_trigger=dict(sorted((t or "none", n) for (node, t), n in by_trigger.items() if node == nid)),
                retries=retries.get(nid, 0),
                mean_size=float(size.mean) if size else None,
                max_size=int(size.max) if size else None,
                outputs=emitted.get(nid, 0),
            )
        )
    return out


def _sinks(conn: Connection, run_id: str, sink_rows: list[Any]) -> list[SinkReport]:
    o = s.token_outcomes
    by_outcome = _grouped(
        conn, select(o.c.node_id, o.c.outcome, func.count()).where(o.c.run_id == run_id, o.c.sink_name.is_not(None)).group_by(o.c.node_id, o.c.outcome)
    )
    artifacts: dict[str, list[ArtifactReport]] = {}
    for a in conn.execute(select(s.artifacts).where(s.artifacts.c.run_id == run_id).order_by(s.artifacts.c.path)).mappings():
        artifacts.setdefault(a["sink_node_id"], []).append(
            ArtifactReport(path=a["path"], kind=a["artifact_kind"], rows=a["row_count"], size_bytes=a["size_bytes"], content_hash=a["content_hash"])
        )
    return [
        SinkReport(
            node_id=n["node_id"],
            name=n["name"],
            plugin=n["plugin_name"],
            by_outcome=dict(sorted((oc, c) for (nid, oc), c in by_outcome.items() if nid == n["node_id"])),
            artifacts=artifacts.get(n["node_id"], []),
        )
        for n in sink_rows
    ]
