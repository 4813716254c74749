"""The node graph of a pipeline: named connections resolved, checked, topologically ordered.

Nodes name their ``input`` connection and where their rows go (``on_success``, gate routes,
``on_error``). A destination is either a connection some node reads, or a sink.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from elspeth_beam.config.settings import PipelineSettings
from elspeth_beam.core.enums import NodeType

ERROR_MODES = ("fail", "quarantine")


@dataclass(frozen=True)
class NodeSpec:
    node_id: str
    name: str
    node_type: NodeType
    plugin_name: str
    yaml_path: str
    settings: BaseModel
    input: str | None = None
    routes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # label → destinations
    on_error: str = "fail"

    @property
    def destinations(self) -> list[str]:
        seen: dict[str, None] = {}
        for dests in self.routes.values():
            for d in dests:
                seen.setdefault(d, None)
        return list(seen)

    @property
    def error_sink(self) -> str | None:
        return None if self.on_error in ERROR_MODES else self.on_error


def node_id(node_type: NodeType, name: str) -> str:
    return f"{node_type.value}:{name}"


@dataclass
class PipelineGraph:
    nodes: list[NodeSpec]  # topological order: source first, sinks last
    problems: list[str]

    def by_id(self, nid: str) -> NodeSpec:
        return next(n for n in self.nodes if n.node_id == nid)

    @property
    def source(self) -> NodeSpec:
        return self.nodes[0]

    def sink(self, name: str) -> NodeSpec:
        return self.by_id(node_id(NodeType.SINK, name))

    def is_sink(self, destination: str) -> bool:
        return any(n.node_type is NodeType.SINK and n.name == destination for n in self.nodes)

    def consumer(self, connection: str) -> NodeSpec:
        return next(n for n in self.nodes if n.input == connection)

    def target_of(self, destination: str) -> NodeSpec:
        return self.sink(destination) if self.is_sink(destination) else self.consumer(destination)

    def downstream(self, node: NodeSpec) -> list[NodeSpec]:
        """Every node reachable from ``node`` (success, route and error paths)."""
        seen: dict[str, NodeSpec] = {}
        frontier = [node]
        while frontier:
            current = frontier.pop()
            nexts = [self.target_of(d) for d in current.destinations]
            if current.error_sink:
                nexts.append(self.sink(current.error_sink))
            for n in nexts:
                if n.node_id not in seen:
                    seen[n.node_id] = n
                    frontier.append(n)
        return list(seen.values())

    def chained_aggregations(self) -> list[tuple[str, str]]:
        """(upstream, downstream) aggregation pairs: an aggregation fed by another's flushes."""
        aggs = [n for n in self.nodes if n.node_type is NodeType.AGGREGATION]
        return [(a.name, d.name) for a in aggs for d in self.downstream(a) if d.node_type is NodeType.AGGREGATION]

    def edges(self) -> list[dict[str, Any]]:
        out = []
        for node in self.nodes:
            for label, dests in node.routes.items():
                for dest in dests:
                    out.append({"from_node": node.node_id, "to_node": self.target_of(dest).node_id, "label": label})
            if node.error_sink:
                out.append({"from_node": node.node_id, "to_node": self.sink(node.error_sink).node_id, "label": "on_error"})
        return out


def _specs(settings: PipelineSettings) -> list[NodeSpec]:
    src = settings.source
    specs = [
        NodeSpec(
            node_id(NodeType.SOURCE, src.name), src.name, NodeType.SOURCE, src.plugin, "source", src,
            routes={"on_success": (src.on_success,)}, on_error=src.on_validation_failure,
        )
    ]
    for i, t in enumerate(settings.transforms):
        specs.append(NodeSpec(
            node_id(NodeType.TRANSFORM, t.name), t.name, NodeType.TRANSFORM, t.plugin, f"transforms[{i}]", t,
            input=t.input, routes={"on_success": (t.on_success,)}, on_error=t.on_error,
        ))
    for i, g in enumerate(settings.gates):
        routes = {label: (d,) if isinstance(d, str) else tuple(d) for label, d in g.routes.items()}
        specs.append(NodeSpec(
            node_id(NodeType.GATE, g.name), g.name, NodeType.GATE, "gate", f"gates[{i}]", g,
            input=g.input, routes=routes, on_error=g.on_error,
        ))
    for i, a in enumerate(settings.aggregations):
        specs.append(NodeSpec(
            node_id(NodeType.AGGREGATION, a.name), a.name, NodeType.AGGREGATION, a.plugin, f"aggregations[{i}]", a,
            input=a.input, routes={"on_success": (a.on_success,)}, on_error=a.on_error,
        ))
    for name, s in settings.sinks.items():
        specs.append(NodeSpec(node_id(NodeType.SINK, name), name, NodeType.SINK, s.plugin, f"sinks.{name}", s))
    return specs


def build_graph(settings: PipelineSettings) -> PipelineGraph:
    """Resolve and check the wiring; problems name the YAML path of the offending setting."""
    specs = _specs(settings)
    problems: list[str] = []
    sink_names = set(settings.sinks)
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.name in seen:
            problems.append(f"{spec.yaml_path}.name: {spec.name!r} is already used by {seen[spec.name]}")
        seen.setdefault(spec.name, spec.yaml_path)

    for name in sink_names & set(ERROR_MODES):
        problems.append(f"sinks.{name}: {name!r} is reserved for on_error; name the sink differently (e.g. rejects)")

    readers: dict[str, list[NodeSpec]] = defaultdict(list)
    for spec in specs:
        if spec.input is not None:
            readers[spec.input].append(spec)
    for conn, nodes in readers.items():
        if conn in sink_names:
            problems.append(f"{nodes[0].yaml_path}.input: {conn!r} is a sink; a node cannot read from a sink")
        if len(nodes) > 1:
            paths = ", ".join(n.yaml_path for n in nodes)
            problems.append(f"{nodes[1].yaml_path}.input: connection {conn!r} is read by several nodes ({paths}); use a gate to fork")

    produced: set[str] = set()
    referenced_sinks: set[str] = set()
    for spec in specs:
        for label, dests in spec.routes.items():
            where = f"{spec.yaml_path}.routes.{label}" if spec.node_type is NodeType.GATE else f"{spec.yaml_path}.{label}"
            if spec.node_type is NodeType.SOURCE and label == "on_success":
                where = "source.on_success"
            for dest in dests:
                produced.add(dest)
                if dest in sink_names:
                    referenced_sinks.add(dest)
                elif dest not in readers:
                    problems.append(
                        f"{where}: {dest!r} is neither a sink ({', '.join(sorted(sink_names)) or 'none'}) "
                        "nor a connection any node reads as its input"
                    )
        if spec.node_type is not NodeType.SINK:
            key = "on_validation_failure" if spec.node_type is NodeType.SOURCE else "on_error"
            if spec.on_error not in ERROR_MODES:
                if spec.on_error in sink_names:
                    referenced_sinks.add(spec.on_error)
                else:
                    problems.append(
                        f"{spec.yaml_path}.{key}: {spec.on_error!r} is not a sink; use a sink name, 'quarantine' or 'fail'"
                    )
    for conn, nodes in readers.items():
        if conn not in produced:
            problems.append(f"{nodes[0].yaml_path}.input: no node sends rows to {conn!r}")
    for name in sorted(sink_names - referenced_sinks):
        problems.append(f"sinks.{name}: no node sends rows to this sink")

    ordered = _topological(specs, readers, sink_names, problems)
    return PipelineGraph(ordered, problems)


def _topological(
    specs: list[NodeSpec], readers: dict[str, list[NodeSpec]], sink_names: set[str], problems: list[str]
) -> list[NodeSpec]:
    """Kahn's algorithm over node → destination nodes; leftovers are in a cycle."""
    targets: dict[str, list[str]] = {}
    by_name = {s.name: s for s in specs}
    for spec in specs:
        outs = []
        for dest in spec.destinations:
            if dest in sink_names:
                outs.append(dest)
            elif dest in readers:
                outs.extend(n.name for n in readers[dest])
        targets[spec.name] = outs
    indegree = {s.name: 0 for s in specs}
    for outs in targets.values():
        for t in outs:
            if t in indegree:
                indegree[t] += 1
    ready = [s.name for s in specs if indegree[s.name] == 0]
    order: list[str] = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for t in targets.get(name, []):
            if t in indegree:
                indegree[t] -= 1
                if indegree[t] == 0:
                    ready.append(t)
    cyclic = [s for s in specs if s.name not in order]
    if cyclic:
        problems.append(
            f"{cyclic[0].yaml_path}.input: the graph has a cycle through "
            + " → ".join(s.name for s in cyclic)
        )
    ordered = [by_name[n] for n in order] + cyclic
    # sinks last, in declaration order, so node positions read like the data path
    return [s for s in ordered if s.node_type is not NodeType.SINK] + [s for s in ordered if s.node_type is NodeType.SINK]


def render_tree(graph: PipelineGraph) -> str:
    """The graph as an indented tree from the source along ``edges()``, one line per edge,
    labelled by its route (gates' routes, ``on_error``; ``on_success`` unlabelled): a fork shows
    as siblings, so nothing reads as feeding what it does not. A node reached a second time is
    named, not expanded again, so every edge appears exactly once."""
    children: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for edge in sorted(graph.edges(), key=lambda e: e["label"] != "on_error"):  # errors first: the main path ends each level
        children[edge["from_node"]].append((edge["label"], edge["to_node"]))
    lines = [_tree_node(graph.source)]
    expanded = {graph.source.node_id}

    def walk(node_id: str, indent: str) -> None:
        kids = children.get(node_id, [])
        for i, (label, target) in enumerate(kids):
            last = i == len(kids) - 1
            arrow = "─→" if label == "on_success" else f"─[{label}]→"
            node = graph.by_id(target)
            seen = target in expanded
            lines.append(f"{indent}{'└' if last else '├'}{arrow} {node.name if seen else _tree_node(node)}"
                         + (" (shown above)" if seen and children.get(target) else ""))
            if not seen:
                expanded.add(target)
                walk(target, indent + ("    " if last else "│   "))

    walk(graph.source.node_id, "")
    return "\n".join(lines)


def _tree_node(node: NodeSpec) -> str:
    kind = node.node_type.value if node.node_type is NodeType.GATE else f"{node.node_type.value} {node.plugin_name}"
    return f"{node.name} ({kind})"
