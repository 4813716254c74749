"""validate prints the graph as the graph it is: a tree from the source in which every edge of
the checked graph appears exactly once, labelled by its route, and nothing else."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from conftest import QUICKSTART, REPO
from hypothesis import given, settings
from hypothesis import strategies as st

from elspeth_beam.cli import main
from elspeth_beam.config.graph import PipelineGraph, build_graph, render_tree
from elspeth_beam.config.loader import load_settings
from elspeth_beam.config.settings import PipelineSettings

ACCOUNTS = REPO / "pipelines" / "accounts.yaml"
_LINE = re.compile(r"^(?P<indent>(?:│   |    )*)[├└]─(?:\[(?P<label>[^\]]+)\])?→ (?P<name>[A-Za-z0-9_\-]+)(?P<rest>.*)$")


def shown_edges(tree: str) -> tuple[Counter, Counter]:
    """(from name, label, to name) of every tree line, and how often each node is shown expanded
    (with its kind in parentheses); a line's parent is the nearest line above it one level up."""
    first, *lines = tree.splitlines()
    root = first.split(" (")[0]
    path = [root]  # the node at each depth along the current branch
    edges, expanded = Counter(), Counter({root: 1})
    for line in lines:
        m = _LINE.match(line)
        assert m, f"not a tree line: {line!r}"
        depth = len(m["indent"]) // 4
        path[depth + 1:] = [m["name"]]
        edges[(path[depth], m["label"] or "on_success", m["name"])] += 1
        expanded[m["name"]] += m["rest"].startswith(" (") and m["rest"] != " (shown above)"
    return edges, expanded


def graph_edges(graph: PipelineGraph) -> Counter:
    name = {n.node_id: n.name for n in graph.nodes}
    return Counter((name[e["from_node"]], e["label"], name[e["to_node"]]) for e in graph.edges())


@pytest.mark.parametrize("path", [QUICKSTART, ACCOUNTS], ids=["quickstart", "accounts"])
def test_validate_prints_exactly_the_graphs_edges(path, capsys):
    assert main(["validate", str(path)]) == 0
    head, tree = capsys.readouterr().out.split("\n", 1)
    graph = load_settings(path).graph
    assert head == f"{path}: OK ({len(graph.nodes)} nodes, {len(graph.edges())} edges)"
    edges, expanded = shown_edges(tree.rstrip("\n"))
    assert edges == graph_edges(graph)
    assert expanded == Counter({n.name: 1 for n in graph.nodes})


def test_quickstart_tree_reads_as_its_fork_and_routes(capsys):
    assert main(["validate", str(QUICKSTART)]) == 0
    assert "\n".join(capsys.readouterr().out.splitlines()[1:]) == """\
source (source csv)
├─[on_error]→ rejects (sink csv)
└─→ tidy (transform field_mapper)
    ├─[on_error]→ rejects
    └─→ pricing (transform computed)
        ├─[on_error]→ rejects
        └─→ size (gate)
            ├─[on_error]→ rejects
            ├─[true]→ large (sink jsonl)
            ├─[true]→ review (sink parquet)
            └─[false]→ label_region (transform computed)
                ├─[on_error]→ rejects
                └─→ standard (sink csv)"""


# ---- any graph: generated gates, forks, merges, error sinks ---------------------------------

@st.composite
def graphs(draw) -> PipelineGraph:
    """Nodes n0..nk in order, node i reading connection ci: its first destination is c(i+1) (so
    every connection is fed), the others later connections (merges) or sinks, as gate routes or
    forks; errors go to a sink or are quarantined. Forward-only, so never a cycle."""
    count, sinks = draw(st.integers(1, 6)), [f"s{j}" for j in range(draw(st.integers(1, 3)))]
    transforms, gates = [], []
    for i in range(count):
        later = [f"c{j}" for j in range(i + 2, count)] + sinks
        first = f"c{i + 1}" if i + 1 < count else sinks[0]
        on_error = draw(st.sampled_from(["quarantine", *sinks]))
        if i + 1 < count and draw(st.booleans()):
            transforms.append({"name": f"n{i}", "plugin": "p", "input": f"c{i}", "on_success": first, "on_error": on_error})
            continue
        extra = draw(st.lists(st.sampled_from(later), unique=True, max_size=3)) if later else []
        dests = [first] + [d for d in extra if d != first]
        if i == count - 1:
            dests += [s for s in sinks if s not in dests]  # every sink is fed
        split = draw(st.integers(1, len(dests)))
        routes = {"true": dests[:split] if split > 1 else dests[0], **({"false": dests[split:]} if dests[split:] else {})}
        gates.append({"name": f"n{i}", "input": f"c{i}", "condition": "True", "routes": routes, "on_error": on_error})
    raw = {
        "source": {"plugin": "csv", "on_success": "c0", "on_validation_failure": draw(st.sampled_from(["quarantine", *sinks]))},
        "transforms": transforms, "gates": gates, "sinks": {s: {"plugin": "csv"} for s in sinks},
    }
    graph = build_graph(PipelineSettings.model_validate(raw))
    assert graph.problems == []
    return graph


@settings(max_examples=200, deadline=None)
@given(graphs())
def test_the_tree_shows_every_edge_of_any_graph_once(graph):
    edges, expanded = shown_edges(render_tree(graph))
    assert edges == graph_edges(graph)
    assert expanded == Counter({n.name: 1 for n in graph.nodes})
