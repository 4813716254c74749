"""Secrets in settings: recorded as keyed fingerprints, never in clear.

A value is secret when its key is named like one (``password``, ``secret``, ``token``,
``api_key``, ``credential``, ``private_key``), when it is the password of a URL
(``scheme://user:PASSWORD@host``), or when a plugin marks the option in its schema with
``Field(json_schema_extra={"secret": True})``. The Landscape records it as
``hmac-sha256:<hex>`` — HMAC-SHA256 keyed by ``ELSPETH_FINGERPRINT_KEY`` over the value's UTF-8
bytes (over its canonical JSON when a marked option is not a string) — so two runs with the same
secret and key record the same fingerprint, and nobody without the key can test a guess against
it. Without a key the value is recorded as ``***``: hidden, but not comparable between runs.
A fixed fallback key would not do: anyone can read it here and test guesses of weak secrets.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from elspeth_beam.core.canonical import canonical_json

KEY_ENV = "ELSPETH_FINGERPRINT_KEY"
PREFIX = "hmac-sha256:"
REDACTED = "***"

_SECRET_NAMES = re.compile(r"(password|passwd|secret|token|api_?key|credential|private_?key)", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"://([^:/@]+):([^@]+)@")
_OPTION_ARG = re.compile(r"^(--?[A-Za-z0-9_.\-]+)=(.*)$", re.DOTALL)  # a "--name=value" Beam argument
_FINGERPRINT = re.compile(re.escape(PREFIX) + r"[0-9a-f]{64}")

log = logging.getLogger(__name__)


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAMES.search(name))


@dataclass(frozen=True)
class Fingerprinter:
    """Replaces secret values by their fingerprint (with a key) or by ``***`` (without)."""

    key: bytes | None

    @classmethod
    def from_env(cls) -> "Fingerprinter":
        key = os.environ.get(KEY_ENV)
        return cls(key.encode("utf-8") if key else None)

    def hide(self, value: Any) -> str:
        if self.key is None:
            return REDACTED
        data = value.encode("utf-8") if isinstance(value, str) else canonical_json(value)
        return PREFIX + hmac.new(self.key, data, hashlib.sha256).hexdigest()

    def protect(self, value: Any, marked: Iterable[str] = ()) -> Any:
        """A copy of ``value`` with every secret hidden; ``marked`` keys of the top-level
        mapping are secret whatever their name or type."""
        marked = frozenset(marked)
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                if k in marked and v is not None:
                    out[k] = self.hide(v)
                elif is_secret_name(k) and isinstance(v, str):
                    out[k] = self.hide(v)
                else:
                    out[k] = self.protect(v)
            return out
        if isinstance(value, list):
            return [self.protect(v) for v in value]
        if isinstance(value, str):
            return self._protect_text(value)
        return value

    def _protect_text(self, text: str) -> str:
        arg = _OPTION_ARG.match(text)
        if arg and is_secret_name(arg.group(1)):
            return f"{arg.group(1)}={self.hide(arg.group(2))}"
        return _URL_PASSWORD.sub(lambda m: f"://{m.group(1)}:{self.hide(m.group(2))}@", text)


def marked_options(kind: type, plugin: str) -> frozenset[str]:
    """The options a plugin's schema marks secret (``json_schema_extra={"secret": True}``)."""
    from elspeth_beam.plugins import registry

    try:
        cls = registry.resolve(kind, plugin)
    except Exception:  # an unknown plugin is reported by the settings check, not here
        return frozenset()
    return frozenset(
        name
        for name, f in cls.Options.model_fields.items()
        if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("secret") is True
    )


def protect_settings(dump: dict[str, Any], fp: Fingerprinter) -> dict[str, Any]:
    """Settings as dumped (``model_dump(mode="json")``) with every secret hidden (each value
    is walked once: hiding a fingerprint again would give a fingerprint of a fingerprint)."""
    from elspeth_beam.plugins.base import BatchPlugin, SinkPlugin, SourcePlugin, TransformPlugin

    nodes = {"source", "transforms", "aggregations", "sinks"}
    out = fp.protect({k: v for k, v in dump.items() if k not in nodes})
    if "source" in dump:
        out["source"] = protect_node(dump["source"], SourcePlugin, fp)
    for section, kind in (("transforms", TransformPlugin), ("aggregations", BatchPlugin)):
        if section in dump:
            out[section] = [protect_node(n, kind, fp) for n in dump[section]]
    if "sinks" in dump:
        out["sinks"] = {name: protect_node(n, SinkPlugin, fp) for name, n in dump["sinks"].items()}
    if "gates" in dump:
        out["gates"] = fp.protect(dump["gates"])
    return {k: out[k] for k in dump}


def protect_node(node: dict[str, Any], kind: type | None, fp: Fingerprinter) -> dict[str, Any]:
    """One node's settings (``plugin`` + ``options``) with its secrets hidden."""
    options = node.get("options")
    if not isinstance(options, dict):
        return fp.protect(node)
    marked = marked_options(kind, node["plugin"]) if kind is not None and node.get("plugin") else frozenset()
    out = fp.protect({k: v for k, v in node.items() if k != "options"})
    out["options"] = fp.protect(options, marked)
    return {k: out[k] for k in node}


@dataclass(frozen=True)
class SecretsRecorded:
    """How a run's settings_json recorded its secrets."""

    fingerprinted: int
    redacted: int

    @classmethod
    def of(cls, settings_json: str) -> "SecretsRecorded":
        fingerprinted = redacted = 0
        for text in _strings(json.loads(settings_json)):
            fingerprinted += len(_FINGERPRINT.findall(text))
            redacted += (text == REDACTED) + text.endswith("=" + REDACTED) + text.count(f":{REDACTED}@")
        return cls(fingerprinted, redacted)

    def text(self) -> str:
        """How they were recorded, for ``verify``; empty when the settings hold none."""
        if self.redacted:
            return (f"{self.redacted} redacted as {REDACTED}, not fingerprinted ({KEY_ENV} was not set): "
                    "they cannot be compared between runs")
        if self.fingerprinted:
            return f"{self.fingerprinted} fingerprinted ({PREFIX.rstrip(':')}, keyed by {KEY_ENV})"
        return ""


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def warn_if_unkeyed(settings_json: str) -> None:
    """A run about to record secrets as ``***`` says so once: they will not be comparable."""
    recorded = SecretsRecorded.of(settings_json)
    if recorded.redacted:
        log.warning(
            "the settings hold %d secret value(s) and %s is not set: the Landscape records them as %s, so "
            "runs cannot be compared on them; set %s to a long random key kept outside the Landscape",
            recorded.redacted, KEY_ENV, REDACTED, KEY_ENV,
        )
