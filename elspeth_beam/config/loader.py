"""Load YAML settings: expand ``${VAR}``/``${VAR:-default}``, validate, check plugins and graph.

Every problem is reported as ``yaml.path: message`` in one SettingsError, so a user fixes
them all at once instead of one per run.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from elspeth_beam.config.graph import PipelineGraph, build_graph
from elspeth_beam.config.secrets import Fingerprinter, protect_settings
from elspeth_beam.config.settings import PipelineSettings
from elspeth_beam.core.canonical import canonical_json, stable_hash
from elspeth_beam.core.errors import ElspethError, SettingsError
from elspeth_beam.plugins import registry
from elspeth_beam.plugins.base import BatchPlugin, SinkPlugin, SourcePlugin, TransformPlugin
from elspeth_beam.plugins.expressions import Expression

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class LoadedPipeline:
    settings: PipelineSettings
    graph: PipelineGraph
    path: str | None = None  # the settings file as given (recorded as runs.settings_path); None from a dict

    @property
    def settings_json(self) -> str:
        """Settings as recorded in the Landscape: canonical, secrets fingerprinted (or redacted)."""
        return canonical_json(redact(self.settings.model_dump(mode="json"))).decode()

    @property
    def settings_hash(self) -> str:
        return self.settings_hash_with(Fingerprinter.from_env())

    def settings_hash_with(self, fp: Fingerprinter) -> str:
        """What resume compares: everything that shapes processing (not where the audit goes).
        Hashed after fingerprinting, so the hash cannot be used to guess a secret, yet a changed
        secret changes it (when a fingerprint key is set)."""
        return stable_hash(protect_settings(self.settings.model_dump(mode="json", exclude={"landscape"}), fp))


def redact(value: Any) -> Any:
    """Settings (as dumped) with every secret replaced by its fingerprint (see config/secrets.py)."""
    return protect_settings(value, Fingerprinter.from_env())


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[str]", "function-after[_routes_present(), GateSettings]"):
            continue  # pydantic's union/validator labels, not YAML keys
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _message(msg: str) -> str:
    return msg[:1].lower() + msg[1:]


def expand_env(value: Any, where: str, problems: list[str]) -> Any:
    if isinstance(value, dict):
        return {k: expand_env(v, f"{where}.{k}" if where else str(k), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if isinstance(value, str):
        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            value = os.environ.get(name)
            if default is not None and not value:  # like the shell: unset or empty → default
                return default
            if value is not None:
                return value
            problems.append(f"{where}: environment variable {name} is not set (or give ${{{name}:-default}})")
            return match.group(0)

        return _VAR.sub(sub, value)
    return value


def load_settings(given: str | Path, landscape_url: str | None = None) -> LoadedPipeline:
    path = Path(given)
    if not path.is_file():
        raise SettingsError([f"{path}: settings file not found"])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise SettingsError([f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}"]) from None
    return replace(load_settings_dict(raw, landscape_url=landscape_url), path=str(given))


def load_settings_dict(raw: Any, landscape_url: str | None = None) -> LoadedPipeline:
    if not isinstance(raw, dict):
        raise SettingsError(["(top level): the settings must be a mapping with source, sinks, …"])
    problems: list[str] = []
    raw = expand_env(raw, "", problems)
    if landscape_url:
        raw = {**raw, "landscape": {**(raw.get("landscape") or {}), "url": landscape_url}}
    try:
        settings = PipelineSettings.model_validate(raw)
    except ValidationError as exc:
        problems += [f"{_path(e['loc'])}: {_message(e['msg'])}" for e in exc.errors()]
        raise SettingsError(problems) from None
    problems += check_plugins(settings)
    graph = build_graph(settings)
    problems += graph.problems
    if problems:
        raise SettingsError(problems)
    return LoadedPipeline(settings, graph)


def with_absolute_paths(loaded: LoadedPipeline) -> LoadedPipeline:
    """The pipeline to run: relative source and sink paths made absolute, from the directory
    the command runs in. A cluster's workers run elsewhere (the worker pool's directory), and
    the driver merges the parts the workers wrote. A URL (``gs://…``) is left alone."""
    def fixed(node: Any) -> Any:
        path = node.options.get("path")
        if not isinstance(path, str) or not path or "://" in path or os.path.isabs(path):
            return node
        return node.model_copy(update={"options": {**node.options, "path": os.path.abspath(path)}})

    settings = loaded.settings.model_copy(update={
        "source": fixed(loaded.settings.source),
        "sinks": {name: fixed(sink) for name, sink in loaded.settings.sinks.items()},
    })
    return LoadedPipeline(settings, build_graph(settings), loaded.path)


def _check_options(kind: type, name: str, options: dict[str, Any], where: str) -> list[str]:
    try:
        cls = registry.resolve(kind, name)
    except ElspethError as exc:
        return [f"{where}.plugin: {exc}"]
    try:
        cls.Options.model_validate(options)
    except ValidationError as exc:
        return [f"{where}.options.{_path(e['loc'])}: {_message(e['msg'])}" if e["loc"] else f"{where}.options: {_message(e['msg'])}" for e in exc.errors()]
    return []


def check_plugins(settings: PipelineSettings) -> list[str]:
    problems = _check_options(SourcePlugin, settings.source.plugin, settings.source.options, "source")
    for i, t in enumerate(settings.transforms):
        problems += _check_options(TransformPlugin, t.plugin, t.options, f"transforms[{i}]")
    for i, g in enumerate(settings.gates):
        try:
            Expression(g.condition)
        except ElspethError as exc:
            problems.append(f"gates[{i}].condition: {exc}")
    for i, a in enumerate(settings.aggregations):
        problems += _check_options(BatchPlugin, a.plugin, a.options, f"aggregations[{i}]")
        if a.output_mode == "single" and a.expected_output_count not in (None, 1):
            problems.append(f"aggregations[{i}].expected_output_count: output_mode single emits exactly 1 row")
    for name, s in settings.sinks.items():
        problems += _check_options(SinkPlugin, s.plugin, s.options, f"sinks.{name}")
    return problems


