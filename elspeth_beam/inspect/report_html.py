"""A `RunReport` as one self-contained HTML page: inline CSS and SVG, no scripts, no fonts or
anything else fetched, so it opens from a file on a machine without network and can be
mailed or archived next to the run.

Every string that reaches the page goes through `_e` (html.escape): node names, route labels,
paths and above all error messages are data from the Landscape, not markup.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape

from elspeth_beam.core.enums import ERRORED
from elspeth_beam.core.reasons import PLACEHOLDER
from elspeth_beam.inspect.report_model import BatchReport, NodeReport, RunReport, SinkReport
from elspeth_beam.inspect.report_graph import TYPE_COLOURS, graph_svg

CSS = """
:root { --ink:#1f2933; --muted:#607080; --line:#dde3ea; --soft:#f5f7fa; --accent:#1565c0; --bad:#c62828; --ok:#2e7d32; --warn:#ef6c00; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif; color:var(--ink); background:#fff; }
main { max-width:1360px; margin:0 auto; padding:24px 28px 40px; }
h1 { font-size:22px; margin:0 0 4px; font-weight:650; }
h2 { font-size:16px; margin:32px 0 10px; padding-bottom:6px; border-bottom:1px solid var(--line); font-weight:650; }
code, .mono { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace; font-size:12.5px; }
.muted { color:var(--muted); }
.badge { display:inline-block; padding:1px 9px; border-radius:10px; font-size:12px; font-weight:600; color:#fff; vertical-align:middle; background:var(--warn); }
.badge.completed { background:var(--ok); } .badge.failed { background:var(--bad); }
dl.meta { display:grid; grid-template-columns:max-content 1fr max-content 1fr; gap:3px 16px; margin:14px 0 0; }
dl.meta dt { color:var(--muted); } dl.meta dd { margin:0; overflow-wrap:anywhere; }
.cards { display:flex; flex-wrap:wrap; gap:12px; margin-top:18px; }
.card { flex:1 1 140px; border:1px solid var(--line); border-radius:8px; padding:10px 14px; background:var(--soft); }
.card .v { font-size:22px; font-weight:650; font-variant-numeric:tabular-nums; }
.card .k { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.card.bad .v { color:var(--bad); }
.graph-wrap { border:1px solid var(--line); border-radius:8px; padding:6px; overflow-x:auto; background:#fcfdfe; }
svg.graph { display:block; max-width:100%; height:auto; margin:0 auto; font-family:inherit; }
svg.graph .box { fill:#fff; stroke:#b8c4d0; }
svg.graph .node.sink .box { fill:#f3f6f8; }
svg.graph text { font-size:11px; fill:var(--muted); }
svg.graph text.name { font-size:13px; font-weight:650; fill:var(--ink); }
svg.graph text.errored { fill:var(--bad); font-weight:600; }
svg.graph text.route { font-size:11px; font-weight:600; fill:#b35400; text-anchor:middle; paint-order:stroke; stroke:#fff; stroke-width:4px; }
svg.graph .edge path { fill:none; stroke:#90a4ae; stroke-width:1.6; }
svg.graph .edge.error path { stroke:var(--bad); stroke-width:1.2; stroke-dasharray:5 4; opacity:.75; }
.legend { display:flex; flex-wrap:wrap; gap:16px; margin:8px 2px 0; font-size:12px; color:var(--muted); }
.legend i { display:inline-block; width:11px; height:11px; border-radius:3px; margin-right:5px; vertical-align:-1px; }
.legend .dash { width:22px; height:0; border-top:2px dashed var(--bad); border-radius:0; vertical-align:3px; }
table { border-collapse:collapse; width:100%; font-variant-numeric:tabular-nums; }
th, td { text-align:left; padding:6px 10px; border-bottom:1px solid var(--line); vertical-align:top; }
th { font-size:12px; color:var(--muted); font-weight:600; text-transform:uppercase; letter-spacing:.03em; background:var(--soft); }
td.n, th.n, td.nowrap { text-align:right; white-space:nowrap; }
td.nowrap { text-align:left; }
tbody tr:hover { background:#fafbfd; }
.type { display:inline-block; width:8px; height:8px; border-radius:2px; margin-right:7px; }
.bar { position:relative; min-width:110px; }
.bar span { position:absolute; left:0; top:6px; height:18px; background:#e3ecf7; border-radius:3px; }
.bar b { position:relative; font-weight:normal; }
.bad { color:var(--bad); }
.chip { display:inline-block; padding:0 8px; margin:0 4px 3px 0; border-radius:9px; background:var(--soft); border:1px solid var(--line); font-size:12px; white-space:nowrap; }
.msg { overflow-wrap:anywhere; }
footer { margin-top:36px; color:var(--muted); font-size:12px; }
"""


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _n(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 1000:
        return f"{value / 1000:,.2f} s"
    return f"{value:.3f} ms" if value < 1 else f"{value:,.1f} ms"


def _bar(value: float, most: float, text: str) -> str:
    share = 0 if most <= 0 else max(2.0, 100 * value / most) if value else 0
    return f'<td class="n bar"><span style="width:{share:.1f}%"></span><b>{text}</b></td>'


def _chips(counts: dict[str, int]) -> str:
    return " ".join(f'<span class="chip">{_e(k)} <b>{v:,}</b></span>' for k, v in counts.items()) or '<span class="muted">–</span>'


def _table(head: Sequence[str], rows: Iterable[str], numeric: set[int] = frozenset()) -> str:  # type: ignore[assignment]
    ths = "".join(f'<th class="n">{h}</th>' if i in numeric else f"<th>{h}</th>" for i, h in enumerate(head))
    body = "".join(rows)
    return f"<table><thead><tr>{ths}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: RunReport) -> str:
    h = report.header
    sections = [
        _header(report),
        _section("Pipeline", _graph(report)),
        _section("Nodes", _nodes(report.nodes)),
    ]
    if report.batches:
        sections.append(_section("Aggregation batches", _batches(report.batches)))
    sections.append(_section("Sinks", _sinks(report.sinks, h.rows_read)))
    sections.append(_section("Quarantine and failure reasons", _reasons(report)))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>elspeth-beam report · {_e(h.run_id)}</title><style>{CSS}</style></head>\n"
        f"<body><main>\n{''.join(sections)}\n"
        f"<footer>Generated by <code>elspeth-beam report</code> at {_e(report.generated_at)} from "
        f"<code>{_e(h.landscape_url)}</code>. Everything on this page comes from the run's Landscape.</footer>"
        "</main></body></html>\n"
    )


def _section(title: str, body: str) -> str:
    return f'<section><h2>{_e(title)}</h2>{body}</section>\n'


def _header(report: RunReport) -> str:
    h = report.header
    duration = "–" if h.duration_s is None else f"{h.duration_s:,.2f} s"
    options = ", ".join(f"{k}={v}" for k, v in sorted(h.beam_options.items())) or "–"
    meta = [
        ("status", f'<span class="badge {_e(h.status)}">{_e(h.status)}</span>'),
        ("runner", _e(h.runner)),
        ("beam options", f"<code>{_e(options)}</code>"),
        ("started", _e(h.started_at)),
        ("completed", _e(h.completed_at or "–")),
        ("duration", duration),
        ("settings hash", f'<code>{_e(h.settings_hash)}</code>'),
        ("Landscape", f"<code>{_e(h.landscape_url)}</code>"),
    ]
    written = sum(sink.rows for sink in report.sinks)
    cards = [
        ("rows read", _n(h.rows_read), False),
        ("rows written", _n(written), False),
        ("quarantined", _n(report.outcomes.get("quarantined", 0)), False),
        ("failed", _n(report.outcomes.get("failed", 0)), bool(report.outcomes.get("failed"))),
        ("batches", _n(sum(b.batches for b in report.batches)), False),
        ("duration", duration, False),
    ]
    return (
        f'<header><h1>Run <span class="mono" style="font-size:19px">{_e(h.run_id)}</span></h1>'
        '<div class="muted">an elspeth_beam audit report</div>'
        f'<dl class="meta">{"".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in meta)}</dl>'
        '<div class="cards">'
        + "".join(f'<div class="card{" bad" if bad else ""}"><div class="v">{v}</div><div class="k">{k}</div></div>' for k, v, bad in cards)
        + "</div></header>\n"
    )


def _graph(report: RunReport) -> str:
    legend = "".join(f'<span><i style="background:{c}"></i>{t}</span>' for t, c in TYPE_COLOURS.items())
    legend += '<span><i class="dash"></i>error route (on_error)</span><span>orange labels: gate routes</span>'
    return f'<div class="graph-wrap">{graph_svg(report.nodes, report.edges)}</div><div class="legend">{legend}</div>'


def _type_dot(node_type: str) -> str:
    return f'<i class="type" style="background:{TYPE_COLOURS.get(node_type, "#607d8b")}"></i>'


def _nodes(nodes: list[NodeReport]) -> str:
    most = max((n.total_ms for n in nodes), default=0.0)
    rows = []
    for n in nodes:
        errored = f'<td class="n bad">{n.errored:,}</td>' if n.errored else '<td class="n">0</td>'
        rows.append(
            f"<tr><td>{_type_dot(n.node_type)}<b>{_e(n.name)}</b> <span class=\"muted mono\">{_e(n.node_id)}</span></td>"
            f"<td>{_e(n.plugin)}</td><td class=\"n\">{_n(n.tokens_in)}</td><td class=\"n\">{_n(n.tokens_out)}</td>"
            f"<td class=\"n\">{_n(n.completed)}</td>{errored}"
            f"<td class=\"n\">{_ms(n.mean_ms)}</td><td class=\"n\">{_ms(n.p95_ms)}</td>{_bar(n.total_ms, most, _ms(n.total_ms))}</tr>"
        )
    head = ["node", "plugin", "tokens in", "tokens out", "completed", ERRORED, "mean", "p95", "total time"]
    note = (
        '<p class="muted">Counts and durations are of node_states (one per token, or per batch flush at an aggregation). '
        f"{ERRORED.capitalize()}: the step raised; where its token went (quarantined, an error sink, or the outcome "
        "failed) is in the headline and under Sinks. "
        "Tokens in/out: a source reads rows and passes on those it parsed; a gate's out counts each route taken (a fork "
        "counts every copy); an aggregation takes tokens into batches and passes on what its flushes emit; a sink's out "
        "is the rows it wrote. A sink writes its rows in parts: its total time counts each part's write once.</p>"
    )
    return _table(head, rows, numeric=set(range(2, 9))) + note


def _batches(batches: list[BatchReport]) -> str:
    rows = [
        f"<tr><td>{_type_dot('aggregation')}<b>{_e(b.name)}</b></td><td class=\"n\">{_n(b.batches)}</td>"
        f"<td>{_chips(b.by_trigger)}</td><td>{_chips(b.by_status)}</td>"
        f"<td class=\"n\">{'–' if b.mean_size is None else f'{b.mean_size:,.1f}'}</td><td class=\"n\">{_n(b.max_size)}</td>"
        f"<td class=\"n\">{_n(b.outputs)}</td><td class=\"n\">{_n(b.retries)}</td></tr>"
        for b in batches
    ]
    head = ["aggregation", "batches", "triggers", "statuses", "mean size", "max size", "outputs", "retried"]
    return _table(head, rows, numeric={1, 4, 5, 6, 7})


def _sinks(sinks: list[SinkReport], rows_read: int) -> str:
    most = max([rows_read, *(s.rows for s in sinks)])
    rows = []
    for s in sinks:
        files = _files(s) or '<span class="muted">no file recorded</span>'
        rows.append(
            f"<tr><td class=\"nowrap\">{_type_dot('sink')}<b>{_e(s.name)}</b></td><td>{_e(s.plugin)}</td>{_bar(s.rows, most, _n(s.rows))}"
            f"<td>{_chips(s.by_outcome)}</td><td>{files}</td></tr>"
        )
    return _table(["sink", "plugin", "rows", "outcomes", "file"], rows, numeric={2})


def _files(sink: SinkReport) -> str:
    """The sink's files; the part files a merged file was made of only as a count."""
    merged = [a for a in sink.artifacts if a.kind != "part"]
    parts = len(sink.artifacts) - len(merged)
    shown = merged or sink.artifacts
    lines = [
        f'<code>{_e(a.path)}</code> <span class="muted">{_e(a.kind)} · {a.rows:,} rows · {a.size_bytes:,} bytes · '
        f'sha256 <span class="mono">{_e(a.content_hash[:12])}…</span></span>'
        for a in shown
    ]
    if merged and parts:
        lines.append(f'<span class="muted">merged from {parts:,} part file{"s" if parts != 1 else ""}</span>')
    return "<br>".join(lines)


def _reasons(report: RunReport) -> str:
    if not report.reasons:
        return '<p class="muted">No token was quarantined or failed in this run.</p>'
    most = report.reasons[0].count
    rows = [
        f"<tr>{_bar(r.count, most, _n(r.count))}<td>{_e(r.outcome)}</td><td><b>{_e(_name(report, r.node_id))}</b></td>"
        f"<td>{_e(r.sink or '–')}</td><td><code>{_e(r.error_type)}</code></td><td class=\"msg\">{_e(r.reason)}</td>"
        f"<td class=\"msg\">{_e(r.examples_text() or '–')}</td></tr>"
        for r in report.reasons
    ]
    shown = sum(r.count for r in report.reasons)
    summary = (
        f'<p class="muted">{report.reasons_tokens:,} tokens were set aside with an error, for {report.reasons_distinct:,} '
        f"distinct reasons (a reason is the message with the offending values taken out, as {_e(PLACEHOLDER)})"
    )
    if report.reasons_distinct > len(report.reasons):
        summary += f"; the {len(report.reasons)} most frequent are shown ({shown:,} tokens)"
    summary += ". Explain one with <code>elspeth-beam explain</code>.</p>"
    return summary + _table(["tokens", "outcome", "raised at", "sent to", "error", "reason", "values"], rows, numeric={0})


def _name(report: RunReport, node_id: str) -> str:
    node = report.node(node_id)
    return node.name if node is not None else node_id
