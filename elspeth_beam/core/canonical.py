"""Canonical JSON and stable hashing (DESIGN §3).

Hashes in the Landscape must be reproducible by anyone, months later, from the data alone, so
the encoding is fixed: sorted keys (by UTF-16 code units), no whitespace, UTF-8, numbers as RFC
8785 writes them (ECMAScript's shortest round-trip form; ``1.0`` and ``1`` hash alike),
NaN/±Infinity rejected, datetimes as ISO 8601 UTC, bytes as base64, Decimal as string. RFC
8785 numbers are doubles: an integer beyond ±2**53 whose digits are not those RFC 8785 writes
for its nearest double (2**60 + 1; 2**60 too, whose double it writes 1152921504606847000) is
written as the string of its digits, as RFC 8785 advises for big numbers, not rounded: as a
number it would read back as another value, and two values would hash alike.

The form is versioned, so that hashes made before a fix still verify (``CANONICAL_VERSION``);
the Landscape's digest manifest names the version its hashes were made with.

Speed: canonical JSON, not sha256, was the audit's biggest hashing cost, so the usual value goes
to orjson, whose compact, key-sorted output is RFC 8785's byte for byte once a walk has vouched
for it (``_orjson_form``: plain types, integral floats made ints, no exponent where RFC 8785 has
none, keys whose code point order is their UTF-16 order; orjson itself refuses ints beyond 53
bits and lone surrogates). Anything else takes the exact rules (``_exact_json``), and the tests
hold the two, and the rfc8785 package, to the same bytes. µs per call, json's C encoder before →
orjson (old and new interleaved, best of 9 × 50k calls, a busy 2-core machine): the bench row
``{"id": 123, "key": "k042", "amount": 517.23, "category": "c", "amount_eur": 475.85}`` 2.2 →
0.7; a 10-field row with a list, a dict and a list of dicts 10 → 3; the bench row with integral
floats 3.2 → 1.05. What remains is mostly the walk; orjson itself takes 0.25 of the 0.7.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import json.encoder
import math
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson

from elspeth_beam.core.errors import CanonicalizationError

__all__ = ["CANONICAL_VERSION", "VERSIONS", "canonical_json", "stable_hash", "normalize", "plain_values", "plain_json"]

CANONICAL_VERSION = 2
"""The canonical form new hashes are made with. Version 1 (before it) wrote integral floats
from 2**53 up to 1e21 and integers beyond ±2**53 with all their exact digits, where RFC 8785
writes the double's shortest digits (``278908409818195070000``, not ``278908409818195066880``)."""
VERSIONS = (1, 2)

_SAFE = 2**53
"""Integers up to this magnitude are doubles exactly, and their digits are RFC 8785's."""


def _known(version: int) -> int:
    if version not in VERSIONS:
        raise CanonicalizationError(
            f"canonical JSON version {version!r} is unknown; this elspeth_beam writes versions "
            f"{', '.join(map(str, VERSIONS))} — upgrade it to check hashes made with a newer one"
        )
    return version


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
    """The version being written, and whether the C encoder would not write what was
    normalized canonically (set while normalizing)."""

    __slots__ = ("slow", "version")

    def __init__(self, version: int = CANONICAL_VERSION) -> None:
        self.slow = False
        self.version = version


def _float(value: float, flags: _Flags) -> int | float:
    if value.is_integer():  # False for NaN and ±Infinity
        if abs(value) <= _SAFE or (flags.version == 1 and abs(value) < 1e21):
            return int(value)  # ECMAScript writes these without a fraction or exponent
        flags.slow = True  # ECMAScript's shortest digits, not the exact ones
    elif not 1e-4 <= abs(value) < 1e16:
        _check_finite(value)
        flags.slow = True  # repr would use an exponent where ECMAScript does not, or vice versa
    return value


def _int(value: int, flags: _Flags) -> int | str:
    """Beyond ±2**53 (version 2) an int stays a number only if its digits are RFC 8785's for
    the double nearest it (as 46791059971380590 is); any other is written as the string of its
    digits — as a number it would read back as another value, and two values would hash alike."""
    if flags.version == 1:
        return value
    try:
        nearest = float(value)
    except OverflowError:
        return str(value)
    digits = str(value)
    return value if _es_number(nearest) == digits else digits


def _normalize(obj: Any, flags: _Flags) -> Any:
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, int):
        return obj if -_SAFE <= obj <= _SAFE else _int(obj, flags)
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


def normalize(obj: Any, *, version: int = CANONICAL_VERSION) -> Any:
    """Turn ``obj`` into plain JSON types the canonical encoder accepts, or raise."""
    return _normalize(obj, _Flags(_known(version)))


_json_string = json.encoder.encode_basestring  # what json.dumps(s, ensure_ascii=False) writes


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
        out.append(_json_string(value))
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
            out.append(_json_string(key))
            out.append(":")
            _encode(value[key], out)
        out.append("}")


def _c_encoder() -> Callable[[Any], str]:
    """Compact, key-sorted, non-ASCII JSON text from json's C encoder, made once:
    ``JSONEncoder.encode`` builds a new one per call, a fifth of a flat row's time. Without a
    circular-reference check: what reaches it is a flat row or a freshly normalized tree."""
    make = json.encoder.c_make_encoder
    if make is None:  # no C accelerator (e.g. PyPy)
        return json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
    encode = make(None, None, json.encoder.encode_basestring, None, ":", ",", True, False, True)
    return lambda value: "".join(encode(value, 0))


_compact_sorted = _c_encoder()
plain_json = _compact_sorted
"""Compact, key-sorted JSON text of plain values (``plain_values``'s): their canonical form."""


_SCALARS = frozenset({str, int, bool, type(None)})
"""Types orjson writes as RFC 8785 does (ints: within 53 bits, ``_ORJSON`` refuses others)."""
_ORJSON = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER | orjson.OPT_PASSTHROUGH_SUBCLASS
"""Sorted keys (by code point), ints beyond ±(2**53 - 1) and non-string keys refused, subclasses
not written (orjson raises for each)."""
_UNFIT = object()  # _orjson_form's answer for a value orjson would not write canonically


def _orjson_form(obj: Any) -> Any:
    """``obj`` itself if orjson writes its numbers and types as RFC 8785 does, a copy with its
    integral floats made ints (orjson writes ``1.0``) if that is all it needs, or _UNFIT.
    Fractions pass only where both use plain notation (orjson from 1e-5, RFC 8785 from 1e-6; from
    2**52 up every double is integral, so the upper bound only keeps out ±Infinity, which orjson
    writes as null; NaN fails both). Only exact types pass: subclasses, datetimes, enums and the
    like (orjson writes some its own way) take the exact rules."""
    kind = type(obj)
    if kind is dict:
        pairs: Any = obj.items()
    elif kind is list or kind is tuple:
        pairs = enumerate(obj)
    elif kind is float:
        form = _orjson_form([obj])
        return form if form is _UNFIT else form[0]
    else:
        return obj if kind in _SCALARS else _UNFIT
    copy = None
    for key, value in pairs:  # scalars checked inline: a call per value costs ~0.1 µs
        kind = type(value)
        if kind in _SCALARS:
            continue
        if kind is float:
            if not value.is_integer():
                if 1e-5 <= abs(value) < 1e16:
                    continue
                return _UNFIT
            if not -_SAFE <= value <= _SAFE:
                return _UNFIT
            new = int(value)
        else:
            new = _orjson_form(value)
            if new is value:
                continue
            if new is _UNFIT:
                return _UNFIT
        if copy is None:
            copy = dict(obj) if type(obj) is dict else list(obj)
        copy[key] = new
    return obj if copy is None else copy


def _keys_in_utf16_order(obj: Any) -> bool:
    """Whether orjson's key order (code points) is RFC 8785's (UTF-16 code units) throughout
    ``obj``: they differ only between U+E000..U+FFFF and the astral planes (surrogates come first
    in UTF-16), so a dict whose keys hold a character from U+E000 up says no."""
    kind = type(obj)
    if kind is dict:
        keys = "".join(obj)
        if not keys.isascii() and max(keys) >= "\ue000":
            return False
        return all(map(_keys_in_utf16_order, obj.values()))
    return kind not in (list, tuple) or all(map(_keys_in_utf16_order, obj))


def plain_values(values: list[Any], version: int = CANONICAL_VERSION) -> list[Any] | None:
    """``values`` (str/int/float/bool/None, changed in place) as the C JSON encoder must get them
    to write their canonical form — integral floats as ints; None if one needs the full rules
    (an exponent, NaN/±Infinity, in version 2 a number beyond ±2**53). For hot loops that
    encode many flat lists (the digest) without ``canonical_json``'s checks."""
    if version == CANONICAL_VERSION:
        integral_limit, int_limit = _SAFE + 1, _SAFE
    else:  # version 1 wrote every integral float below 1e21, and every int, with exact digits
        _known(version)
        integral_limit, int_limit = 1e21, math.inf
    for i, value in enumerate(values):
        kind = type(value)
        if kind is str or value is None:
            continue
        if kind is float:
            if value.is_integer():
                if not abs(value) < integral_limit:
                    return None
                values[i] = int(value)
            elif not 1e-4 <= abs(value) < 1e16:
                return None  # an exponent, NaN or ±Infinity
        elif kind is int and not -int_limit <= value <= int_limit:
            return None
    return values


def canonical_json(obj: Any, *, version: int = CANONICAL_VERSION) -> bytes:
    """Canonical UTF-8 JSON bytes of ``obj`` in the given version of the form (raises
    CanonicalizationError). The versions differ only in numbers beyond ±2**53, which orjson
    refuses or is not given: its text is both versions'."""
    if version != CANONICAL_VERSION:
        _known(version)
    form = _orjson_form(obj)
    if form is not _UNFIT:
        try:
            text = orjson.dumps(form, option=_ORJSON)
        except orjson.JSONEncodeError:  # an int beyond 53 bits, a lone surrogate, 255 levels deep...
            pass
        else:
            # code point and UTF-16 order differ only for U+E000..U+FFFF (UTF-8 lead bytes EE, EF)
            if text.isascii() or (b"\xee" not in text and b"\xef" not in text) or _keys_in_utf16_order(form):
                return text
    return _exact_json(obj, version)


def _exact_json(obj: Any, version: int) -> bytes:
    """``canonical_json`` by the rules themselves: normalized, then json's C encoder where it
    writes the canonical text, else ``_encode``."""
    flags = _Flags(_known(version))
    value = _normalize(obj, flags)
    if flags.slow:
        out: list[str] = []
        _encode(value, out)
        text = "".join(out)
    else:
        text = _compact_sorted(value)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalizationError(f"a string holds a lone surrogate ({exc.object[exc.start:exc.end]!r}); it has no UTF-8 form") from None


def stable_hash(obj: Any, *, version: int = CANONICAL_VERSION) -> str:
    """sha256 hex digest of ``canonical_json(obj, version=version)``."""
    return hashlib.sha256(canonical_json(obj, version=version)).hexdigest()
