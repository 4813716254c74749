"""The documentation's reference pages, generated from the code when the site is built.

Each page is written from what the program itself uses, so it cannot drift from it: the
pipeline YAML keys from the pydantic settings models, the plugins from the catalog
``elspeth-beam plugins`` prints, the commands from the argparse parser, the Landscape's tables
from ``landscape/schema.py``. ``docs/hooks.py`` adds them to the MkDocs build;
``tests/test_docs_reference.py`` checks they follow the code.
"""

from __future__ import annotations

import argparse
import json
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from elspeth_beam.cli import build_parser
from elspeth_beam.config.settings import PipelineSettings
from elspeth_beam.landscape import schema as landscape_schema
from elspeth_beam.plugins.catalog import catalog, type_name

PAGES = {
    "reference/pipeline.md": "pipeline_page",
    "reference/plugins.md": "plugins_page",
    "reference/cli.md": "cli_page",
    "reference/landscape.md": "landscape_page",
}
"""Generated page → the function here that writes it."""

_GENERATED = "<!-- generated from the code by docs/reference.py when the site is built: edit the code, not this page -->\n\n"


def pages() -> dict[str, str]:
    """Every generated page's path in the site and its Markdown."""
    return {path: globals()[writer]() for path, writer in PAGES.items()}


# ---- pipeline YAML ---------------------------------------------------------------------------

def pipeline_page(settings: type[BaseModel] = PipelineSettings) -> str:
    lines = [_GENERATED, "# Pipeline YAML reference", "",
             "Every key a pipeline file takes, from the settings models a run validates against "
             "(`elspeth_beam/config/settings.py`; a misspelt key is an error). A plugin's own `options` "
             "are in the [plugin reference](plugins.md); `elspeth-beam schema` prints all of it as a JSON "
             "Schema for editors.", ""]
    for path, model in _models(settings):
        lines += [f"## {f'`{path}`' if path else 'The file'}", ""]
        doc = (model.__doc__ or "").strip()
        if doc and model.__doc__ is not BaseModel.__doc__:
            lines += [" ".join(doc.replace("``", "`").split()), ""]
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            default = ("required" if field.is_required()
                       else f"`{json.dumps(_plain(field.get_default(call_default_factory=True)), ensure_ascii=False)}`")
            lines.append(f"| `{field.alias or name}` | {_cell(_type_text(field))} | {_cell(default)} | "
                         f"{_cell(field.description or '')} |")
        lines.append("")
    return "\n".join(lines)


def _models(model: type[BaseModel], path: str = "") -> list[tuple[str, type[BaseModel]]]:
    """The model and each settings model under it, with the YAML path to it (``aggregations[].trigger``)."""
    found = [(path, model)]
    for name, field in model.model_fields.items():
        for inner, shape in _nested(field.annotation):
            found += _models(inner, f"{path}.{name}{shape}" if path else f"{name}{shape}")
    return found


def _nested(annotation: Any, shape: str = "") -> list[tuple[type[BaseModel], str]]:
    """Settings models inside an annotation, each with how it is held: ``[]`` in a list, ``.<name>`` in a mapping."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, shape)]
    origin = getattr(annotation, "__origin__", None)
    args = getattr(annotation, "__args__", ())
    if origin is list:
        return [m for arg in args for m in _nested(arg, shape + "[]")]
    if origin is dict:
        return [m for arg in args[1:] for m in _nested(arg, shape + ".<name>")]
    return [m for arg in args for m in _nested(arg, shape)]


def _type_text(field: Any) -> str:
    """A field's type for people: ``integer ≥ 1, or null``, ``list of TransformSettings``."""
    return _annotation_text(field.annotation, field.metadata)


_CONSTRAINTS = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}


def _annotation_text(annotation: Any, metadata: Any = ()) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    limits = [f"{sign} {getattr(m, name)}" for m in metadata for name, sign in _CONSTRAINTS.items()
              if getattr(m, name, None) is not None]
    if origin is Annotated:
        return _annotation_text(args[0], [*metadata, *args[1:]])
    if annotation is Any:
        return "any value"
    if origin in (Union, UnionType) or type(annotation) is UnionType:
        kinds = [_annotation_text(a, metadata) for a in args if a is not type(None)]
        return " or ".join(kinds) + (", or null" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"list of {_annotation_text(args[0])}"
    if origin is dict:
        return f"mapping of {_annotation_text(args[0])} to {_annotation_text(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping (below)"
    name = {str: "string", int: "integer", float: "number", bool: "boolean"}.get(annotation) or type_name(annotation)
    return " ".join([name, *limits]) if limits else name


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


# ---- plugins ---------------------------------------------------------------------------------

def plugins_page() -> str:
    lines = [_GENERATED, "# Plugin reference", "",
             "The built-in plugins and their `options`, from the catalog `elspeth-beam plugins` prints "
             "(installed plugins are listed there too).", ""]
    infos = [i for i in catalog() if i.origin == "built-in"]
    for kind in dict.fromkeys(i.kind for i in infos):
        lines += [f"## {kind} plugins", ""]
        for info in (i for i in infos if i.kind == kind):
            lines += [f"### `{info.name}`", "", info.summary, ""]
            if not info.options:
                lines += ["No options.", ""]
                continue
            lines += ["| option | type | default | description |", "|---|---|---|---|"]
            for o in info.options:
                default = "required" if o.required else f"`{json.dumps(o.default, ensure_ascii=False)}`"
                lines.append(f"| `{o.name}` | {_cell(o.type)} | {_cell(default)} | {_cell(o.description)} |")
            lines.append("")
    return "\n".join(lines)


# ---- command line ----------------------------------------------------------------------------

def cli_page(parser: argparse.ArgumentParser | None = None) -> str:
    parser = parser or build_parser()
    lines = [_GENERATED, "# Command-line reference", "", f"`{parser.prog}`: {parser.description}", ""]
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in commands._choices_actions}
    for name, sub in commands.choices.items():
        lines += [f"## `{parser.prog} {name}`", "", helps.get(name) or "", "", "```", sub.format_usage().strip(), "```", ""]
        rows = [a for a in sub._actions if a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)]
        if rows:
            lines += ["| argument | help |", "|---|---|"]
            lines += [f"| `{', '.join(a.option_strings) or a.dest}` | {_cell(_help(a))} |" for a in rows]
            lines.append("")
    lines += ["## Exit codes and environment", "", "```", (parser.epilog or "").strip(), "```", ""]
    return "\n".join(lines)


def _help(action: argparse.Action) -> str:
    text = action.help or ""
    if action.choices:
        text += f" (one of {', '.join(map(str, action.choices))})"
    return text


# ---- the Landscape ---------------------------------------------------------------------------

def landscape_page(metadata: Any = landscape_schema.metadata) -> str:
    lines = [_GENERATED, "# Landscape tables", "",
             f"The audit database's tables and columns (schema version {landscape_schema.SCHEMA_VERSION}, "
             "`elspeth_beam/landscape/schema.py`): the contract your SQL can rely on — names stay, a new "
             "column may be added.", ""]
    for table in sorted(metadata.tables.values(), key=lambda t: t.name):
        keys = {c.name for c in table.primary_key.columns}
        lines += [f"## `{table.name}`", "", "| column | type | key | null |", "|---|---|---|---|"]
        for column in table.columns:
            lines.append(f"| `{column.name}` | {column.type} | {'primary' if column.name in keys else ''} | "
                         f"{'yes' if column.nullable else 'no'} |")
        extra = [f"`{c.name}`" for c in [*table.indexes, *table.constraints] if getattr(c, "name", None)
                 and not str(c.name).startswith("pk_")]
        lines += ["", "Indexes and constraints: " + ", ".join(sorted(extra)) if extra else "", ""]
    return "\n".join(lines)


def _cell(text: str) -> str:
    """Text inside a Markdown table cell (no raw HTML: ``<sink path>`` is text)."""
    return str(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")
