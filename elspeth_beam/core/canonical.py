"""Canonical JSON and stable hashing (DESIGN §3).

Hashes in the Landscape must be reproducible by anyone, months later, from the data alone, so
the encoding is fixed: sorted keys, no whitespace, UTF-8, RFC 8785-style numbers (``1.0`` and
``1`` hash alike), NaN/±Infinity rejected, datetimes as ISO 8601 UTC, bytes as base64, Decimal
as string.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import math
from decimal import Decimal
from typing import Any

from elspeth_beam.core.errors import CanonicalizationError

__all__ = ["canonical_json", "stable_hash", "normalize"]


def _number(value: int | float) -> int | float:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CanonicalizationError(
                f"{value!r} has no canonical JSON form; replace NaN/Infinity with null or a finite number"
            )
        if value.is_integer() and abs(value) < 2**53:
            return int(value)
    return value


def normalize(obj: Any) -> Any:
    """Turn ``obj`` into plain JSON types the canonical encoder accepts, or raise."""
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, (int, float)):
        return _number(obj)
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise CanonicalizationError(f"object keys must be strings, got {key!r}")
            out[key] = normalize(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [normalize(v) for v in obj]
    if isinstance(obj, dt.datetime):
        if obj.tzinfo is None:
            obj = obj.replace(tzinfo=dt.timezone.utc)
        return obj.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(obj, dt.date):
        return obj.isoformat()
    if isinstance(obj, Decimal):
        if not obj.is_finite():
            raise CanonicalizationError(f"Decimal {obj} has no canonical JSON form")
        return str(obj)
    if isinstance(obj, (bytes, bytearray)):
        return base64.b64encode(bytes(obj)).decode("ascii")
    if hasattr(obj, "model_dump"):
        return normalize(obj.model_dump(mode="python"))
    raise CanonicalizationError(f"cannot canonicalize a value of type {type(obj).__name__}: {obj!r}")


def canonical_json(obj: Any) -> bytes:
    """Canonical UTF-8 JSON bytes of ``obj`` (raises CanonicalizationError)."""
    return json.dumps(
        normalize(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def stable_hash(obj: Any) -> str:
    """sha256 hex digest of ``canonical_json(obj)``."""
    return hashlib.sha256(canonical_json(obj)).hexdigest()
