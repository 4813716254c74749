"""The pipeline file's JSON Schema, generated from the settings models and the plugins' options.

An editor with the YAML language server validates and completes a pipeline as it is typed
against this schema (``# yaml-language-server: $schema=…`` as the file's first line). It is
made from the same pydantic models ``load_settings`` validates against — ``PipelineSettings``
and each plugin's ``Options`` (keyed on the node's ``plugin``) — so it cannot disagree with a
run about a key; what only a run can check (the graph, expressions, an installed plugin's
options) ``elspeth-beam validate`` checks. A value may be a ``${VAR}`` / ``${VAR:-default}``
placeholder wherever a number or a boolean goes: settings expand them before validating.

``SCHEMA_FILE`` ships the schema of the built-in plugins; ``elspeth-beam schema`` prints this
installation's (installed plugins too). ``tests/test_json_schema.py`` keeps the file current.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from elspeth_beam.config.settings import PipelineSettings
from elspeth_beam.core.errors import PluginError
from elspeth_beam.plugins import registry
from elspeth_beam.plugins.base import BatchPlugin, Plugin, SinkPlugin, SourcePlugin, TransformPlugin

SCHEMA_FILE = Path(__file__).with_name("pipeline.schema.json")
SCHEMA_ID = "https://elspeth-beam.dev/schema/pipeline.json"  # a name, not a download: editors read the file
PLACEHOLDER = r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}"

# the settings model of each node kind, and the plugins it names
_NODE_MODELS: dict[str, type[Plugin]] = {
    "SourceSettings": SourcePlugin,
    "TransformSettings": TransformPlugin,
    "AggregationSettings": BatchPlugin,
    "SinkSettings": SinkPlugin,
}


def pipeline_schema(*, installed: bool = True) -> dict[str, Any]:
    """The schema of a pipeline file: the settings, each node's options per plugin (built-in,
    and with ``installed`` the plugins of this installation's entry points)."""
    schema = PipelineSettings.model_json_schema(ref_template="#/$defs/{model}")
    defs = schema.setdefault("$defs", {})
    for model, kind in _NODE_MODELS.items():
        _options_per_plugin(defs[model], kind, _plugins(kind, installed), defs)
    schema = _placeholders_allowed(schema)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}


def schema_text(*, installed: bool = True) -> str:
    """The schema as the shipped file holds it (sorted keys, two-space indent, final newline)."""
    return json.dumps(pipeline_schema(installed=installed), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _plugins(kind: type[Plugin], installed: bool) -> dict[str, type[Plugin]]:
    """The plugins a node of this kind can name: built-ins win over installed ones of a name."""
    found = dict(registry.BUILTINS[kind])
    for name, entry_point in (registry.installed().items() if installed else ()):
        if name in found:
            continue
        try:
            cls = registry.load_entry_point(entry_point)
        except PluginError:  # `elspeth-beam plugins` says what is wrong with it
            continue
        if issubclass(cls, kind):
            found[name] = cls
    return found


def _options_per_plugin(node: dict[str, Any], kind: type[Plugin], plugins: dict[str, type[Plugin]],
                        defs: dict[str, Any]) -> None:
    """``plugin`` offers the known names (any other is allowed: it may be installed later);
    ``options`` follow the named plugin's ``Options`` model."""
    node["properties"]["plugin"] = {
        "type": "string", "examples": sorted(plugins),
        "description": f"the {registry.kind_name(kind)} plugin (`elspeth-beam plugins` lists them with their options)",
    }
    rules = []
    for name, cls in sorted(plugins.items()):
        prefix = f"{registry.kind_name(kind)}.{name}."
        options = cls.Options.model_json_schema(ref_template=f"#/$defs/{prefix}{{model}}")
        defs.update({prefix + key: value for key, value in options.pop("$defs", {}).items()})
        options.setdefault("description", f"options of the {registry.kind_name(kind)} plugin {name!r}")
        rules.append({"if": {"properties": {"plugin": {"const": name}}, "required": ["plugin"]},
                      "then": {"properties": {"options": options}}})
    node["allOf"] = rules


def _placeholders_allowed(schema: Any) -> Any:
    """Every number, integer or boolean may also be a string holding a ``${VAR}`` placeholder."""
    if isinstance(schema, list):
        return [_placeholders_allowed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    walked = {key: (value if key in _VALUES else _placeholders_allowed(value)) for key, value in schema.items()}
    if walked.get("type") not in ("integer", "number", "boolean"):
        return walked
    notes = {key: walked.pop(key) for key in _NOTES if key in walked}  # kept where editors show them
    return {**notes, "anyOf": [walked, {"type": "string", "pattern": PLACEHOLDER}]}


_VALUES = ("const", "enum", "default", "examples")  # JSON values, not schemas: left as they are
_NOTES = ("title", "description", "default", "examples")
