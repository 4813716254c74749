"""Type coercion against a declared schema (shared by sources and the ``coerce`` transform).

Coerced values stay JSON-native (dates become ISO strings) so tokens encode deterministically.
A type name ending in ``?`` accepts an empty value as null.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any, Callable

from elspeth_beam.core.errors import RowError
from elspeth_beam.core.tokens import MAX_NESTING

_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _to_int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError("a boolean is not an integer")
    if isinstance(v, float):
        if not v.is_integer():
            raise ValueError(f"{v!r} is not a whole number")
        return int(v)
    return int(str(v).strip().replace("_", ""))


def _to_float(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError("a boolean is not a number")
    out = float(str(v).strip()) if not isinstance(v, (int, float)) else float(v)
    if not math.isfinite(out):
        raise ValueError(f"{v!r} is NaN or infinite and has no canonical form")
    return out


def _to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    text = str(v).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{v!r} is not a boolean (use true/false, yes/no, 1/0)")


def _to_date(v: Any) -> str:
    return dt.date.fromisoformat(str(v).strip()).isoformat()


def _to_datetime(v: Any) -> str:
    value = dt.datetime.fromisoformat(str(v).strip().replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


COERCERS: dict[str, Callable[[Any], Any]] = {
    "str": lambda v: str(v),
    "int": _to_int,
    "float": _to_float,
    "bool": _to_bool,
    "date": _to_date,
    "datetime": _to_datetime,
}


def check_type_name(type_name: str) -> str:
    base = type_name.rstrip("?")
    if base not in COERCERS:
        raise ValueError(f"unknown type {type_name!r}; known: {', '.join(COERCERS)} (append ? for nullable)")
    return type_name


def coerce_row(row: dict[str, Any], schema: dict[str, str]) -> dict[str, Any]:
    """Return ``row`` with every schema field coerced; raise RowError naming the field."""
    out = dict(row)
    for field, type_name in schema.items():
        nullable = type_name.endswith("?")
        base = type_name.rstrip("?")
        if field not in row:
            if nullable:
                out[field] = None
                continue
            raise RowError.about(lambda: f"field {field!r} is missing (declared {type_name})")
        value = row[field]
        if value is None or (isinstance(value, str) and value.strip() == ""):
            if nullable:
                out[field] = None
                continue
            raise RowError.about(lambda: f"field {field!r} is empty but declared {type_name} (use {base}? to allow empty)")
        try:
            out[field] = COERCERS[base](value)
        except (ValueError, TypeError, OverflowError) as exc:  # OverflowError: an int beyond a float's range
            raise RowError.about(lambda v: f"field {field!r}: cannot coerce {v} to {base}", value, detail=str(exc)) from None
    return out


def json_type_name(value: Any) -> str:
    """A parsed JSON value's type as JSON names it (``null``, not ``NoneType``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return {dict: "object", list: "array", str: "string", int: "number", float: "number"}.get(type(value), type(value).__name__)


def check_json_values(row: dict[str, Any]) -> None:
    """Raise RowError naming the first field whose value has no canonical JSON form.

    Sources whose parser can produce NaN, Infinity, lone surrogates, non-JSON types or values
    nested deeper than ``MAX_NESTING`` check here, so the quarantine reason is one line naming
    the field — not the token model's multi-line validation error later."""
    for field, value in row.items():
        _check_json_value(value, field, 1)


def _check_json_value(value: Any, path: str, depth: int) -> None:
    if isinstance(value, str):
        if not value.isascii() and (found := _LONE_SURROGATE.search(value)):
            raise RowError.about(lambda v: f"field {path!r} holds a lone surrogate ({v}), which has no UTF-8 form", found.group())
    elif isinstance(value, float):
        if not math.isfinite(value):
            name = "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
            raise RowError.about(lambda: f"field {path!r}: {name} has no canonical form (use null or a finite number)")
    elif isinstance(value, (dict, list)) and depth > MAX_NESTING:
        raise RowError.about(lambda: f"field {path!r} is nested deeper than {MAX_NESTING} levels (objects and arrays)")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise RowError.about(lambda v: f"field {path!r} has a non-string key {v}", key)
            _check_json_value(item, f"{path}.{key}", depth + 1)
    elif isinstance(value, list):
        for position, item in enumerate(value):
            _check_json_value(item, f"{path}[{position}]", depth + 1)
    elif value is not None and not isinstance(value, int):  # bool is an int
        raise RowError.about(lambda: f"field {path!r} holds a {type(value).__name__}; row values must be JSON types "
                                     "(str, int, float, bool, null, list, object)")
