"""The pipeline graph of a report as inline SVG, laid out left → right by topological layer.

A small layered (Sugiyama-style) layout, because the graphs are small and a dependency is not
worth it: each node sits in the column of its longest path from the source, every sink in the
last column; an edge that spans several columns passes through a reserved slot in each column
it crosses, so it never runs through a box; a couple of barycenter sweeps order each column to
cut crossings. Error routes (`on_error`) would tangle the picture — nearly every node has one,
to the same sink — so they drop to a dashed bus under the graph that runs to their sink.

Every node is one ``<g class="node">`` and every edge one ``<g class="edge">``; all text is
escaped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

from elspeth_beam.core.enums import ERRORED
from elspeth_beam.inspect.report_model import EdgeReport, NodeReport

BOX_W, BOX_H, SLOT_H = 164, 74, 18  # node box; the slot a passing edge takes in a column
COL_GAP, ROW_GAP, PAD = 64, 22, 24
BUS_GAP = 16  # between the graph and the first error bus, and between buses
MAX_NAME = 18  # characters of a name shown in a box (the full name is in its tooltip)

TYPE_COLOURS = {
    "source": "#2e7d32",
    "transform": "#1565c0",
    "gate": "#ef6c00",
    "aggregation": "#6a1b9a",
    "sink": "#455a64",
}


@dataclass
class _Item:
    """A node, or a slot an edge passes through (``node`` None), in one column."""

    key: str
    layer: int
    node: NodeReport | None = None
    preds: list[str] = field(default_factory=list)
    order: float = 0.0
    y: float = 0.0

    @property
    def height(self) -> float:
        return BOX_H if self.node else SLOT_H

    @property
    def mid(self) -> float:
        return self.y + self.height / 2


def graph_svg(nodes: list[NodeReport], edges: list[EdgeReport]) -> str:
    """The graph as an ``<svg>`` element (sized in pixels; scales down to fit the page)."""
    layers = _layers(nodes, edges)
    items, chains = _items(nodes, edges, layers)
    columns = _order(items, max(layers.values(), default=0) + 1)
    height = _place(columns)
    x = lambda layer: PAD + layer * (BOX_W + COL_GAP)  # noqa: E731
    error_targets = sorted({e.to_node for e in edges if e.is_error}, key=lambda k: items[k].order)
    bus_y = {t: PAD + height + BUS_GAP * (i + 1) for i, t in enumerate(error_targets)}
    width = PAD * 2 + len(columns) * BOX_W + (len(columns) - 1) * COL_GAP
    total_h = PAD + height + BUS_GAP * (len(error_targets) + 1) + (PAD if not error_targets else 0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" width="{width}" height="{total_h:.0f}" '
        f'viewBox="0 0 {width} {total_h:.0f}" role="img" aria-label="pipeline graph">',
        _DEFS,
    ]
    lowest = {layer: max((i.y for i in col if i.node), default=0.0) for layer, col in enumerate(columns)}
    for i, e in enumerate(edges):
        if e.is_error:
            parts.append(_error_edge(e, items, x, bus_y[e.to_node], lowest))
        else:
            parts.append(_edge(e, items, chains[i], x))
    parts.extend(_node(i.node, x(i.layer), i.y) for col in columns for i in col if i.node)
    parts.append("</svg>")
    return "\n".join(parts)


# ---- layout -------------------------------------------------------------------------------


def _layers(nodes: list[NodeReport], edges: list[EdgeReport]) -> dict[str, int]:
    """Longest path from a source (Kahn's order); sinks all in the last column."""
    ids = [n.node_id for n in sorted(nodes, key=lambda n: n.position)]
    succ: dict[str, list[str]] = {k: [] for k in ids}
    indeg = dict.fromkeys(ids, 0)
    for e in edges:
        if e.from_node in succ and e.to_node in indeg:
            succ[e.from_node].append(e.to_node)
            indeg[e.to_node] += 1
    layer = dict.fromkeys(ids, 0)
    ready = [k for k in ids if indeg[k] == 0]
    while ready:
        k = ready.pop(0)
        for t in succ[k]:
            layer[t] = max(layer[t], layer[k] + 1)
            indeg[t] -= 1
            if indeg[t] == 0:
                ready.append(t)
    sinks = {n.node_id for n in nodes if n.node_type == "sink"}
    last = max((v for k, v in layer.items() if k not in sinks), default=-1) + 1
    return {k: (last if k in sinks else v) for k, v in layer.items()}


def _items(nodes: list[NodeReport], edges: list[EdgeReport], layers: dict[str, int]) -> tuple[dict[str, _Item], dict[int, list[str]]]:
    """Column items: the nodes, plus a slot per column crossed by each long non-error edge."""
    items = {n.node_id: _Item(n.node_id, layers[n.node_id], n, order=n.position) for n in nodes}
    chains: dict[int, list[str]] = {}
    for i, e in enumerate(edges):
        if e.is_error or e.from_node not in items or e.to_node not in items:
            continue
        prev = e.from_node
        chains[i] = []
        for layer in range(layers[e.from_node] + 1, layers[e.to_node]):
            key = f"{i}@{layer}"
            items[key] = _Item(key, layer, preds=[prev], order=items[e.to_node].order)
            chains[i].append(key)
            prev = key
        items[e.to_node].preds.append(prev)
    return items, chains


def _order(items: dict[str, _Item], n_layers: int) -> list[list[_Item]]:
    """Columns ordered top to bottom by two barycenter sweeps; error-only sinks go last."""
    columns: list[list[_Item]] = [[] for _ in range(n_layers)]
    for item in items.values():
        columns[item.layer].append(item)
    for col in columns:
        _renumber(col, key=lambda i: i.order)
    for _ in range(2):
        for col in columns[1:]:
            for item in col:
                if item.preds:
                    item.order = sum(items[p].order for p in item.preds) / len(item.preds)
            _renumber(col, key=lambda i: (bool(i.node) and not i.preds, i.order, i.node.position if i.node else 0))
    return columns


def _renumber(col: list[_Item], key) -> None:  # type: ignore[no-untyped-def]
    col.sort(key=key)
    for rank, item in enumerate(col):
        item.order = float(rank)


def _place(columns: list[list[_Item]]) -> float:
    """Give every item its y, each column centred on the tallest; return the tallest's height."""
    heights = [sum(i.height for i in col) + ROW_GAP * max(len(col) - 1, 0) for col in columns]
    tallest = max(heights, default=0.0)
    for col, h in zip(columns, heights):
        y = PAD + (tallest - h) / 2
        for item in col:
            item.y = y
            y += item.height + ROW_GAP
    return tallest


# ---- drawing ------------------------------------------------------------------------------

_DEFS = (
    "<defs>"
    '<marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
    '<path d="M0,0 L10,5 L0,10 z" fill="#78909c"/></marker>'
    '<marker id="arrow-error" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
    '<path d="M0,0 L10,5 L0,10 z" fill="#c62828"/></marker>'
    "</defs>"
)


def _edge_open(e: EdgeReport, items: dict[str, _Item], error: bool) -> str:
    def name(k: str) -> str:
        return items[k].node.name if items[k].node else k  # type: ignore[union-attr]

    title = f"{name(e.from_node)} → {name(e.to_node)} ({e.label})"
    return (
        f'<g class="edge{" error" if error else ""}" data-from="{escape(e.from_node)}" data-to="{escape(e.to_node)}" '
        f'data-label="{escape(e.label)}"><title>{escape(title)}</title>'
    )


def _edge(e: EdgeReport, items: dict[str, _Item], chain: list[str], x) -> str:  # type: ignore[no-untyped-def]
    src, dst = items[e.from_node], items[e.to_node]
    points = [(x(src.layer) + BOX_W, src.mid)]
    for k in chain:
        slot = items[k]
        points += [(x(slot.layer), slot.mid), (x(slot.layer) + BOX_W, slot.mid)]
    points.append((x(dst.layer), dst.mid))
    d = [f"M{points[0][0]:.1f},{points[0][1]:.1f}"]
    for i in range(1, len(points)):
        (ax, ay), (bx, by) = points[i - 1], points[i]
        if i % 2 == 0:  # through a slot: straight across the column
            d.append(f"L{bx:.1f},{by:.1f}")
        else:
            dx = (bx - ax) / 2
            d.append(f"C{ax + dx:.1f},{ay:.1f} {bx - dx:.1f},{by:.1f} {bx:.1f},{by:.1f}")
    out = [_edge_open(e, items, error=False), f'<path d="{" ".join(d)}" marker-end="url(#arrow)"/>']
    if e.label != "on_success":  # gate routes (and any other named route) are labelled
        (ax, ay), (bx, by) = points[0], points[1]
        out.append(f'<text class="route" x="{(ax + bx) / 2:.1f}" y="{(ay + by) / 2 - 4:.1f}">{escape(e.label)}</text>')
    out.append("</g>")
    return "".join(out)


def _error_edge(e: EdgeReport, items: dict[str, _Item], x, bus: float, lowest: dict[int, float]) -> str:  # type: ignore[no-untyped-def]
    """Down from the node (or out of its right side if another box is below it), along the
    bus under the graph, and up into the error sink from its left."""
    src, dst = items[e.from_node], items[e.to_node]
    sx, tx = x(src.layer), x(dst.layer)
    if src.y >= lowest[src.layer]:
        start = f"M{sx + BOX_W / 2:.1f},{src.y + BOX_H:.1f} V{bus:.1f}"
    else:
        gap_x = sx + BOX_W + COL_GAP / 4
        start = f"M{sx + BOX_W:.1f},{src.y + BOX_H - 12:.1f} H{gap_x:.1f} V{bus:.1f}"
    d = f"{start} H{tx - 18:.1f} V{dst.mid:.1f} H{tx:.1f}"
    return f'{_edge_open(e, items, error=True)}<path d="{d}" marker-end="url(#arrow-error)"/></g>'


def _node(n: NodeReport, x: float, y: float) -> str:
    colour = TYPE_COLOURS.get(n.node_type, "#607d8b")
    name = n.name if len(n.name) <= MAX_NAME else n.name[: MAX_NAME - 1] + "…"
    if n.node_type == "sink":
        counts = f"{n.tokens_out:,} rows written"
    elif n.node_type == "source":
        counts = f"{n.tokens_in:,} rows → {n.tokens_out:,}"
    else:
        counts = f"{n.tokens_in:,} in → {n.tokens_out:,} out"
    lines = [
        f'<text class="name" x="{x + 14:.1f}" y="{y + 20:.1f}">{escape(name)}</text>',
        f'<text class="kind" x="{x + 14:.1f}" y="{y + 36:.1f}">{escape(n.plugin)} · {escape(n.node_type)}</text>',
        f'<text class="counts" x="{x + 14:.1f}" y="{y + 53:.1f}">{counts}</text>',
    ]
    if n.errored:
        lines.append(f'<text class="errored" x="{x + 14:.1f}" y="{y + 67:.1f}">{n.errored:,} {ERRORED}</text>')
    title = f"{n.name} ({n.node_id}): {n.completed:,} completed, {n.errored:,} {ERRORED}"
    return (
        f'<g class="node {escape(n.node_type)}" data-node-id="{escape(n.node_id)}"><title>{escape(title)}</title>'
        f'<rect class="box" x="{x:.1f}" y="{y:.1f}" width="{BOX_W}" height="{BOX_H}" rx="7"/>'
        f'<rect x="{x:.1f}" y="{y:.1f}" width="6" height="{BOX_H}" rx="3" fill="{colour}"/>'
        + "".join(lines)
        + "</g>"
    )
