"""Plugin lookup: built-in names, or a user's class by dotted path (``pkg.module.Class``)."""

from __future__ import annotations

import importlib
from typing import TypeVar

from elspeth_beam.core.errors import PluginError
from elspeth_beam.plugins import batch, sinks, sources, transforms
from elspeth_beam.plugins.base import BatchPlugin, Plugin, SinkPlugin, SourcePlugin, TransformPlugin

P = TypeVar("P", bound=Plugin)

BUILTINS: dict[type[Plugin], dict[str, type[Plugin]]] = {
    SourcePlugin: {p.name: p for p in (sources.CsvSource, sources.JsonlSource, sources.ParquetSource)},
    TransformPlugin: {p.name: p for p in (transforms.FieldMapper, transforms.Coerce, transforms.Computed)},
    BatchPlugin: {p.name: p for p in (batch.BatchStats, batch.Dedupe)},
    SinkPlugin: {p.name: p for p in (sinks.CsvSink, sinks.JsonlSink, sinks.ParquetSink)},
}


def resolve(kind: type[P], name: str) -> type[P]:
    """The plugin class for ``name``; a dotted path imports a user's class."""
    known = BUILTINS[kind]
    if name in known:
        return known[name]  # type: ignore[return-value]
    if "." not in name and ":" not in name:
        raise PluginError(
            f"unknown {kind.__name__.removesuffix('Plugin').lower()} plugin {name!r}; "
            f"known: {', '.join(sorted(known))} (or a dotted path to your own class, e.g. mypkg.mymod.MyPlugin)"
        )
    module_name, _, class_name = name.replace(":", ".").rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginError(f"cannot import plugin module {module_name!r} for {name!r}: {exc}") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, kind)):
        raise PluginError(f"{name!r} is not a {kind.__name__} subclass (import it from elspeth_beam.plugins.base)")
    return cls  # type: ignore[return-value]


def build(kind: type[P], name: str, options: dict) -> P:
    cls = resolve(kind, name)
    return cls(cls.Options.model_validate(options))  # type: ignore[return-value]
