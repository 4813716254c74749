"""Checks of a loaded pipeline against the files around it, before anything runs.

The settings can be valid and the run still doomed: the source file is missing, a sink's
folder is a file, or a gate names a field no row will have (so every row is quarantined).
Each check returns ``yaml.path: message`` problems, so ``validate`` reports them all at once
and ``run`` can refuse in one line before Beam starts.
"""

from __future__ import annotations

import ast
import csv
import json
import os
from pathlib import Path

from elspeth_beam.config.graph import NodeSpec, PipelineGraph
from elspeth_beam.config.loader import LoadedPipeline
from elspeth_beam.config.settings import GateSettings, SourceSettings, TransformSettings
from elspeth_beam.core.enums import NodeType
from elspeth_beam.core.errors import ElspethError
from elspeth_beam.plugins import registry
from elspeth_beam.plugins.base import SinkPlugin, SourcePlugin
from elspeth_beam.plugins.limits import lift_csv_field_limit

Fields = frozenset[str] | None  # the fields every row at a point has; None: not known here
_PLACEHOLDER_RUN = "run-id"  # validate has no run id; the parts folder's shape is what matters


def all_problems(loaded: LoadedPipeline) -> list[str]:
    """Everything ``validate`` checks beyond the settings themselves."""
    return source_problems(loaded) + sink_problems(loaded) + field_problems(loaded)


def source_problems(loaded: LoadedPipeline) -> list[str]:
    """The source's own preflight (its input file exists)."""
    source = loaded.settings.source
    try:
        plugin = registry.build(SourcePlugin, source.plugin, source.options)
        getattr(plugin, "preflight", lambda: None)()
    except ElspethError as exc:
        return [f"source.options.path: {exc}"]
    return []


def sink_problems(loaded: LoadedPipeline, run_id: str = _PLACEHOLDER_RUN) -> list[str]:
    """Each sink's file and its run's parts folder can be created (no file where a folder goes)."""
    from elspeth_beam.pipeline.sink import parts_dir

    problems = []
    for name, sink in loaded.settings.sinks.items():
        path = registry.build(SinkPlugin, sink.plugin, sink.options).path()
        reason = unwritable(path) or unwritable(parts_dir(path, run_id) / "part")
        if reason:
            problems.append(f"sinks.{name}.options.path: cannot write {str(path)!r}: {reason}")
    return problems


def unwritable(path: Path) -> str | None:
    """Why a file could not be created at ``path`` (making its folders as needed), or None."""
    if path.is_dir():
        return f"{str(path)!r} is a folder"
    for folder in path.parents:
        if folder.exists():
            if not folder.is_dir():
                return f"{str(folder)!r} is a file, not a folder"
            if not os.access(folder, os.W_OK | os.X_OK):
                return f"folder {str(folder)!r} is not writable"
            return None
    return None


# ---- fields named by gates and computed fields ------------------------------------------------

def field_problems(loaded: LoadedPipeline) -> list[str]:
    """Gate conditions and computed fields that read ``row['x']`` where no row has ``x``.

    Fields are followed from the source (its declared schema plus the file's header) through
    field_mapper, coerce and computed transforms; past any other plugin or an aggregation they
    are unknown and nothing further is checked. ``row.get('x')`` is never a problem.
    """
    graph = loaded.graph
    source_fields = _source_fields(loaded.settings.source)
    fields_out: dict[str, Fields] = {}
    problems: list[str] = []
    for node in graph.nodes:
        fields = source_fields if node.node_type is NodeType.SOURCE else _fields_in(graph, node, fields_out)
        problems += _missing_in(node, fields)
        fields_out[node.node_id] = _fields_after(node, fields)
    return problems


def _fields_in(graph: PipelineGraph, node: NodeSpec, fields_out: dict[str, Fields]) -> Fields:
    """Fields some row reaching ``node`` has: the union over the nodes that send to its input."""
    producers = [fields_out.get(n.node_id) for n in graph.nodes if node.input in n.destinations]
    if not producers or any(f is None for f in producers):
        return None
    return frozenset().union(*producers)  # type: ignore[arg-type]


def _missing_in(node: NodeSpec, fields: Fields) -> list[str]:
    if fields is None:
        return []
    settings = node.settings
    if isinstance(settings, GateSettings):
        return _unknown(f"{node.yaml_path}.condition", f"gate {node.name!r}", settings.condition, fields)
    if isinstance(settings, TransformSettings) and settings.plugin == "computed":
        problems, known = [], set(fields)
        for name, expression in settings.options.get("fields", {}).items():  # evaluated in order
            problems += _unknown(f"{node.yaml_path}.options.fields.{name}", f"transform {node.name!r}", str(expression), known)
            known.add(name)
        return problems
    return []


def _unknown(where: str, what: str, expression: str, fields: frozenset[str] | set[str]) -> list[str]:
    have = ", ".join(sorted(fields)) or "none"
    return [f"{where}: names field {name!r}, which no row reaching {what} has (they have: {have})"
            for name in sorted(named_fields(expression) - fields)]


def named_fields(expression: str) -> set[str]:
    """The fields an expression reads as ``row['name']`` (constant names only)."""
    return {
        node.slice.value
        for node in ast.walk(ast.parse(expression.strip(), mode="eval"))
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "row"
        and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str)
    }


def _fields_after(node: NodeSpec, fields: Fields) -> Fields:
    """The fields out of ``node`` given the fields in; None where the plugin's effect is unknown."""
    if fields is None or node.node_type in (NodeType.SOURCE, NodeType.GATE):
        return fields
    settings = node.settings
    if not isinstance(settings, TransformSettings):
        return None  # aggregations: their plugins decide the output rows
    options = settings.options
    if settings.plugin in ("computed", "coerce"):
        return fields | frozenset(options.get("fields", {}))
    if settings.plugin == "field_mapper":
        renamed = frozenset(options.get("rename", {}).get(f, f) for f in fields)
        selected = frozenset(options["select"]) if options.get("select") is not None else renamed
        return selected - frozenset(options.get("drop", []))
    return None


def _source_fields(source: SourceSettings) -> Fields:
    """The declared schema plus the file's own field names (a CSV header, a Parquet schema, the
    first JSON Lines record); None when neither is known (no schema, unreadable or other plugin)."""
    schema = frozenset(source.options.get("schema") or {})
    header = _header(source)
    if header is None:
        return schema or None
    return schema | header


def _header(source: SourceSettings) -> frozenset[str] | None:
    path = Path(str(source.options.get("path", "")))
    if not path.is_file():
        return None
    try:
        if source.plugin == "csv":
            lift_csv_field_limit()
            with path.open(newline="", encoding=source.options.get("encoding", "utf-8")) as handle:
                return frozenset(next(csv.reader(handle, delimiter=source.options.get("delimiter", ",")), []))
        if source.plugin == "parquet":
            import pyarrow.parquet as pq

            return frozenset(pq.read_schema(path).names)
        if source.plugin == "jsonl":
            with path.open(encoding="utf-8") as handle:
                first = next((line for line in handle if line.strip()), "{}")
            record = json.loads(first)
            return frozenset(record) if isinstance(record, dict) else None
    except (OSError, ValueError, RecursionError, csv.Error):  # unreadable: the source's own problem, reported when it reads
        return None
    return None
