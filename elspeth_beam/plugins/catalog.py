"""What plugins a pipeline can name and what options each takes (``elspeth-beam plugins``).

Read from the same places ``registry.resolve`` looks (built-ins, then the entry-point group),
and the options from each plugin's pydantic ``Options`` model — the model settings validate
against, so the listing cannot disagree with what a run accepts.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from elspeth_beam.core.errors import PluginError
from elspeth_beam.plugins import registry
from elspeth_beam.plugins.base import Plugin

_MODULE_PATH = re.compile(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)")  # typing.Literal → Literal


class OptionInfo(BaseModel):
    name: str  # as written in YAML (the alias, if the model has one)
    type: str
    required: bool
    default: Any = None  # JSON-able, when not required
    description: str = ""


class PluginInfo(BaseModel):
    kind: str  # source, transform, batch, sink
    name: str
    origin: str  # "built-in", or the installing package and its entry point
    summary: str = ""
    options: list[OptionInfo] = []
    problem: str | None = None  # why a listed entry point cannot be used


def catalog() -> list[PluginInfo]:
    """Every built-in and installed plugin, by kind then name."""
    infos = [_describe(registry.kind_name(kind), name, cls, "built-in")
             for kind, known in registry.BUILTINS.items() for name, cls in known.items()]
    infos += [_installed(name, entry_point) for name, entry_point in registry.installed().items()]
    order = [registry.kind_name(kind) for kind in registry.KINDS]
    return sorted(infos, key=lambda i: (order.index(i.kind) if i.kind in order else len(order), i.name))


def _installed(name: str, entry_point: Any) -> PluginInfo:
    origin = f"{registry.distribution_of(entry_point)} ({entry_point.value})"
    try:
        cls = registry.load_entry_point(entry_point)
    except PluginError as exc:
        return PluginInfo(kind="unusable", name=name, origin=origin, problem=str(exc))
    kind = next(k for k in registry.KINDS if issubclass(cls, k))
    info = _describe(registry.kind_name(kind), name, cls, origin)
    if name in registry.BUILTINS[kind]:
        info.problem = f"shadowed: the built-in {registry.kind_name(kind)} {name!r} is used instead; register it under another name"
    return info


def _describe(kind: str, name: str, cls: type[Plugin], origin: str) -> PluginInfo:
    summary = (cls.__doc__ or "").strip().split("\n\n")[0]
    options = [_option(field_name, field) for field_name, field in cls.Options.model_fields.items()]
    summary = " ".join(summary.replace("``", "`").split())
    return PluginInfo(kind=kind, name=name, origin=origin, summary=summary, options=options)


def _option(field_name: str, field: FieldInfo) -> OptionInfo:
    required = field.is_required()
    default = None if required else field.get_default(call_default_factory=True)
    return OptionInfo(name=field.alias or field_name, type=type_name(field.annotation), required=required,
                      default=_jsonable(default), description=field.description or "")


def type_name(annotation: Any) -> str:
    """An annotation as the listing shows it: ``int``, ``dict[str, str]``, ``Literal[...]``."""
    if isinstance(annotation, type) and not getattr(annotation, "__args__", None):
        return annotation.__name__
    return _MODULE_PATH.sub(r"\1", str(annotation))


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except TypeError:
        return repr(value)
    return value


def render_text(infos: list[PluginInfo]) -> str:
    """Per kind, each plugin with where it comes from, what it does and its options."""
    lines: list[str] = []
    for kind in dict.fromkeys(i.kind for i in infos):
        lines.append(f"{kind} plugins")
        for info in (i for i in infos if i.kind == kind):
            lines.append(f"  {info.name}  [{info.origin}]" + (f"  {info.summary}" if info.summary else ""))
            if info.problem:
                lines.append(f"      ! {info.problem}")
            width = max((len(o.name) for o in info.options), default=0)
            for o in info.options:
                when = "required" if o.required else f"default {json.dumps(o.default, ensure_ascii=False)}"
                about = f"  {o.description}" if o.description else ""
                lines.append(f"      {o.name:<{width}}  {o.type}, {when}{about}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
