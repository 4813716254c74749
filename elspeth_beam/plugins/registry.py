"""Plugin lookup: a built-in name, an installed package's entry point, or a dotted path.

An installed plugin package registers its classes under the entry-point group
``elspeth_beam.plugins`` (``name = "package.module:Class"``); the name is what YAML refers to.
Built-in names win: an installed plugin cannot silently replace one (``elspeth-beam plugins``
lists such an entry as shadowed). A dotted path (``pkg.module.Class``) needs no registration,
only an importable module.
"""

from __future__ import annotations

import functools
import importlib
from importlib import metadata
from typing import TypeVar

from elspeth_beam.core.errors import PluginError
from elspeth_beam.plugins import batch, sinks, sources, transforms
from elspeth_beam.plugins.base import BatchPlugin, Plugin, SinkPlugin, SourcePlugin, TransformPlugin

P = TypeVar("P", bound=Plugin)

ENTRY_POINT_GROUP = "elspeth_beam.plugins"
KINDS: tuple[type[Plugin], ...] = (SourcePlugin, TransformPlugin, BatchPlugin, SinkPlugin)

BUILTINS: dict[type[Plugin], dict[str, type[Plugin]]] = {
    SourcePlugin: {p.name: p for p in (sources.CsvSource, sources.JsonlSource, sources.ParquetSource)},
    TransformPlugin: {p.name: p for p in (transforms.FieldMapper, transforms.Coerce, transforms.Computed)},
    BatchPlugin: {p.name: p for p in (batch.BatchStats, batch.Dedupe)},
    SinkPlugin: {p.name: p for p in (sinks.CsvSink, sinks.JsonlSink, sinks.ParquetSink)},
}


def kind_name(kind: type[Plugin]) -> str:
    """``transform`` for TransformPlugin: how settings and messages name a kind."""
    return kind.__name__.removesuffix("Plugin").lower()


@functools.cache
def installed() -> dict[str, metadata.EntryPoint]:
    """The group's entry points by name (read once per process: workers build plugins per DoFn)."""
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def distribution_of(entry_point: metadata.EntryPoint) -> str:
    """``package 1.2.0``: who installed an entry point, for messages and listings."""
    dist = entry_point.dist
    return f"{dist.name} {dist.version}" if dist is not None else "an installed package"


def load_entry_point(entry_point: metadata.EntryPoint) -> type[Plugin]:
    """The class an entry point names; any import failure becomes a PluginError naming its package."""
    try:
        cls = entry_point.load()
    except Exception as exc:  # noqa: BLE001  (a broken third-party package: say which, not a traceback)
        raise PluginError(f"plugin {entry_point.name!r} (entry point {entry_point.value!r} of "
                          f"{distribution_of(entry_point)}) cannot be loaded: {type(exc).__name__}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Plugin) and issubclass(cls, KINDS)):
        raise PluginError(f"plugin {entry_point.name!r} (entry point {entry_point.value!r} of {distribution_of(entry_point)}) "
                          "is not a plugin class: subclass one of SourcePlugin, TransformPlugin, BatchPlugin, SinkPlugin "
                          "from elspeth_beam.plugins.base")
    return cls


def resolve(kind: type[P], name: str) -> type[P]:
    """The plugin class for ``name``: built-in, then installed entry point, then dotted path."""
    known = BUILTINS[kind]
    if name in known:
        return known[name]  # type: ignore[return-value]
    if name in installed():
        return _of_kind(kind, name, load_entry_point(installed()[name]), f"installed by {distribution_of(installed()[name])}")
    if "." not in name and ":" not in name:
        others = sorted(n for n, ep in installed().items() if n not in known)
        raise PluginError(
            f"unknown {kind_name(kind)} plugin {name!r}; built-in: {', '.join(sorted(known))}"
            + (f"; installed: {', '.join(others)}" if others else "")
            + f" (or a dotted path to your own class, e.g. mypkg.mymod.MyPlugin; `elspeth-beam plugins` lists them all)"
        )
    return _of_kind(kind, name, _import_dotted(name), "")


def _import_dotted(name: str) -> object:
    module_name, _, class_name = name.replace(":", ".").rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginError(f"cannot import plugin module {module_name!r} for {name!r}: {exc} "
                          "(install its package, or put its folder on PYTHONPATH)") from None
    return getattr(module, class_name, None)


def _of_kind(kind: type[P], name: str, cls: object, origin: str) -> type[P]:
    if not (isinstance(cls, type) and issubclass(cls, kind)):
        where = f" ({origin})" if origin else ""
        raise PluginError(f"{name!r}{where} is not a {kind.__name__} subclass, so it cannot be used as a "
                          f"{kind_name(kind)} (import the base class from elspeth_beam.plugins.base)")
    return cls  # type: ignore[return-value]


def build(kind: type[P], name: str, options: dict) -> P:
    cls = resolve(kind, name)
    return cls(cls.Options.model_validate(options))  # type: ignore[return-value]
