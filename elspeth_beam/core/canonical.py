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


def _check_finite(value: float) -> float:
    if not math.isfinite(value):
        raise CanonicalizationError(
            f"{value!r} has no canonical JSON form; replace NaN/Infinity with null or a finite number"
        )
    return value


def _es_number(value: float) -> str:
    """A finite float as ECMAScript's Number.prototype.toString writes it (RFC 8785 §3.2.2.3):
    the shortest round-trip digits (Python's repr), plain notation for exponents in [-7, 21)."""
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    _, digit_tuple, exponent = Decimal(repr(abs(value))).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0") or "0"
    exponent += len(digit_tuple) - len(digits)  # value = digits × 10^exponent
    k, n = len(digits), exponent + len(digits)  # n: position of the decimal point
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = f"{digits[:n]}.{digits[n:]}"
    elif -6 < n <= 0:
        text = "0." + "0" * (-n) + digits
    else:
        mantissa = digits[0] + (f".{digits[1:]}" if k > 1 else "")
        text = f"{mantissa}e{'+' if n - 1 >= 0 else '-'}{abs(n - 1)}"
    return sign + text


class _Flags:
    """Set while normalizing when the fast encoder (json.dumps) would not be canonical."""

    __slots__ = ("slow",)

    def __init__(self) -> None:
        self.slow = False


def _float(value: float, flags: _Flags) -> int | float:
    _check_finite(value)
    if value.is_integer() and abs(value) < 1e21:
        return int(value)  # ECMAScript writes these without a fraction or exponent
    if not 1e-4 <= abs(value) < 1e16:
        flags.slow = True  # repr would use an exponent where ECMAScript does not, or vice versa
    return value


def _normalize(obj: Any, flags: _Flags) -> Any:
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, float):
        return _float(obj, flags)
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise CanonicalizationError(f"object keys must be strings, got {key!r}")
            if not key.isascii() and max(key) >= "\ue000":
                flags.slow = True  # UTF-16 key order differs from code point order here
            out[key] = _normalize(value, flags)
        return out
    if isinstance(obj, (list, tuple)):
        return [_normalize(v, flags) for v in obj]
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
        return _normalize(obj.model_dump(mode="python"), flags)
    raise CanonicalizationError(f"cannot canonicalize a value of type {type(obj).__name__}: {obj!r}")


def normalize(obj: Any) -> Any:
    """Turn ``obj`` into plain JSON types the canonical encoder accepts, or raise."""
    return _normalize(obj, _Flags())


def _encode(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(_es_number(value))
    elif isinstance(value, str):
        out.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, list):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out)
        out.append("]")
    else:  # dict, keys sorted by UTF-16 code units as RFC 8785 §3.2.3 requires
        out.append("{")
        for i, key in enumerate(sorted(value, key=lambda k: k.encode("utf-16-be", "surrogatepass"))):
            if i:
                out.append(",")
            out.append(json.dumps(key, ensure_ascii=False))
            out.append(":")
            _encode(value[key], out)
        out.append("}")


_compact_sorted = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


_PLAIN = frozenset({str, int, bool, type(None)})


def _flat_row_text(obj: Any) -> str | None:
    """The canonical text of the usual row — a flat dict of ASCII keys and plain values, floats
    written alike by Python and ECMAScript — straight from the C encoder; None otherwise."""
    if type(obj) is not dict:
        return None
    for key, value in obj.items():
        kind = type(value)
        if kind is float:
            if value.is_integer() or not 1e-4 <= abs(value) < 1e16:  # NaN fails this too
                return None
        elif kind not in _PLAIN:
            return None
        if type(key) is not str or not key.isascii():
            return None
    return _compact_sorted(obj)


def canonical_json(obj: Any) -> bytes:
    """Canonical UTF-8 JSON bytes of ``obj`` (raises CanonicalizationError)."""
    text = _flat_row_text(obj)
    if text is None:
        flags = _Flags()
        value = _normalize(obj, flags)
        if flags.slow:
            out: list[str] = []
            _encode(value, out)
            text = "".join(out)
        else:  # the common case: the C encoder gives exactly the canonical text
            text = _compact_sorted(value)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalizationError(f"a string holds a lone surrogate ({exc.object[exc.start:exc.end]!r}); it has no UTF-8 form") from None


def stable_hash(obj: Any) -> str:
    """sha256 hex digest of ``canonical_json(obj)``."""
    return hashlib.sha256(canonical_json(obj)).hexdigest()
