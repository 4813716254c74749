"""Canonical JSON and stable hashing (DESIGN §3)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from decimal import Decimal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from elspeth_beam.core.canonical import canonical_json, normalize, stable_hash
from elspeth_beam.core.errors import CanonicalizationError

# ---- strategies ----------------------------------------------------------------------------

finite_floats = st.floats(allow_nan=False, allow_infinity=False)
json_scalars = st.none() | st.booleans() | st.integers() | finite_floats | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=15,
)
json_objects = st.dictionaries(st.text(max_size=6), json_values, max_size=6)


def _reordered(value, draw):
    """The same value with every dict rebuilt in a drawn key insertion order."""
    if isinstance(value, dict):
        keys = draw(st.permutations(list(value)))
        return {k: _reordered(value[k], draw) for k in keys}
    if isinstance(value, list):
        return [_reordered(v, draw) for v in value]
    return value


# ---- encoding rules ------------------------------------------------------------------------


def test_sorted_keys_and_no_whitespace():
    out = canonical_json({"b": 1, "a": [1, 2, {"d": None, "c": True}], "é": "x y"})
    assert out == '{"a":[1,2,{"c":true,"d":null}],"b":1,"é":"x y"}'.encode("utf-8")
    assert isinstance(out, bytes)


def test_utf8_not_ascii_escaped():
    out = canonical_json({"k": "ü€𝄞"})
    assert out == '{"k":"ü€𝄞"}'.encode("utf-8")
    assert b"\\u" not in out


def test_insertion_order_does_not_matter_simple():
    a = {"x": 1, "y": {"p": 1, "q": 2}}
    b = {"y": {"q": 2, "p": 1}, "x": 1}
    assert canonical_json(a) == canonical_json(b)
    assert stable_hash(a) == stable_hash(b)


@pytest.mark.parametrize(
    ("as_float", "as_int"),
    [(1.0, 1), (0.0, 0), (-0.0, 0), (-3.0, -3), (1e15, 10**15), ([1.0, {"a": 2.0}], [1, {"a": 2}])],
)
def test_integral_floats_hash_like_ints(as_float, as_int):
    assert canonical_json(as_float) == canonical_json(as_int)
    assert stable_hash(as_float) == stable_hash(as_int)


def test_non_integral_floats_differ_from_ints():
    assert stable_hash(1.5) != stable_hash(1)
    assert stable_hash(1.5) != stable_hash(2)
    assert canonical_json(2.5) == b"2.5"


@pytest.mark.parametrize("x", [2.0**53, 2.0**53 + 2, 1e16, 123456789012345680.0, 1e20])
def test_large_integral_floats_hash_like_ints(x):
    """'1.0 and 1 hash alike' holds for every integral float, not only those below 2**53.

    A float that is_integer() is exactly that integer, and RFC 8785 writes integral
    doubles below 1e21 as plain digits (9007199254740992, 10000000000000000) — never
    '9007199254740992.0' or '1e+16'.
    """
    assert x.is_integer()
    assert canonical_json(x) == str(int(x)).encode()
    assert stable_hash(x) == stable_hash(int(x))


def test_booleans_are_not_numbers():
    assert canonical_json(True) == b"true"
    assert stable_hash(True) != stable_hash(1)
    assert stable_hash(False) != stable_hash(0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("wrap", [lambda v: v, lambda v: {"a": [1, {"b": v}]}, lambda v: (v,)])
def test_nan_and_infinity_rejected_with_clear_message(bad, wrap):
    with pytest.raises(CanonicalizationError) as info:
        canonical_json(wrap(bad))
    msg = str(info.value)
    assert "no canonical" in msg
    assert "NaN" in msg or "Infinity" in msg
    with pytest.raises(CanonicalizationError):
        stable_hash(wrap(bad))


@pytest.mark.parametrize("bad", [Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity")])
def test_non_finite_decimals_rejected(bad):
    with pytest.raises(CanonicalizationError, match="no canonical"):
        canonical_json({"d": bad})


def test_canonicalization_error_is_a_value_error():
    with pytest.raises(ValueError):
        canonical_json(float("nan"))


def test_datetimes_as_iso_utc():
    aware = dt.datetime(2024, 3, 1, 12, 30, 15, 250000, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert canonical_json(aware) == b'"2024-03-01T10:30:15.250000Z"'
    naive = dt.datetime(2024, 3, 1, 12, 30, 15)
    assert canonical_json(naive) == b'"2024-03-01T12:30:15Z"'
    # naive is treated as UTC: it hashes like the explicit UTC datetime
    assert stable_hash(naive) == stable_hash(naive.replace(tzinfo=dt.timezone.utc))
    # the same instant in different zones hashes alike
    assert stable_hash(aware) == stable_hash(aware.astimezone(dt.timezone(dt.timedelta(hours=-5))))


def test_dates_as_iso():
    assert canonical_json(dt.date(2024, 2, 29)) == b'"2024-02-29"'


def test_bytes_as_base64():
    raw = b"\x00\xffhello\x10"
    expected = base64.b64encode(raw).decode("ascii")
    assert canonical_json(raw) == json.dumps(expected).encode()
    assert canonical_json(bytearray(raw)) == canonical_json(raw)
    assert normalize({"b": raw}) == {"b": expected}


def test_decimal_as_string():
    assert canonical_json(Decimal("1.10")) == b'"1.10"'
    assert normalize([Decimal("-0.001")]) == ["-0.001"]


def test_tuples_are_lists():
    assert canonical_json((1, "a", (2,))) == canonical_json([1, "a", [2]])


def test_pydantic_models_normalize_to_their_fields():
    from pydantic import BaseModel

    class M(BaseModel):
        b: int
        a: float

    assert canonical_json(M(b=2, a=1.5)) == b'{"a":1.5,"b":2}'


@pytest.mark.parametrize("bad", [{1: "int key"}, {"s": {1, 2}}, object(), {"c": complex(1, 2)}])
def test_unsupported_values_rejected(bad):
    with pytest.raises(CanonicalizationError):
        canonical_json(bad)


def test_non_string_key_message_names_key():
    with pytest.raises(CanonicalizationError, match="keys must be strings"):
        canonical_json({"ok": {3: "x"}})


def test_stable_hash_is_sha256_of_canonical_json():
    obj = {"b": [1, 2], "a": "x"}
    assert stable_hash(obj) == hashlib.sha256(canonical_json(obj)).hexdigest()
    assert len(stable_hash(obj)) == 64


# ---- known answer ----------------------------------------------------------------------------

KNOWN_OBJECT = {
    "zeta": [1, 1.0, 2.5, -0.0, True, False, None],
    "alpha": {"b": "ü€𝄞", "a": 'line\nbreak "q"'},
    "n": -17,
    "big": 12345678901234567890,
    "small": 1.5e-10,
}
KNOWN_JSON = (
    '{"alpha":{"a":"line\\nbreak \\"q\\"","b":"ü€𝄞"},"big":12345678901234567890,'
    '"n":-17,"small":1.5e-10,"zeta":[1,1,2.5,0,true,false,null]}'
).encode("utf-8")
KNOWN_HASH = "f7e5258d0916fd1495007a737c88f4b4e8be1aa3202ec8b100b590d40e8d4f4b"


def test_known_answer_vector():
    """Fixed bytes and hash: any accidental change of the encoding breaks this test."""
    assert canonical_json(KNOWN_OBJECT) == KNOWN_JSON
    assert hashlib.sha256(KNOWN_JSON).hexdigest() == KNOWN_HASH
    assert stable_hash(KNOWN_OBJECT) == KNOWN_HASH


def test_known_answer_vector_simple():
    assert canonical_json({"a": 1}) == b'{"a":1}'
    assert stable_hash({"a": 1}) == hashlib.sha256(b'{"a":1}').hexdigest()
    assert stable_hash({"a": 1}) == "015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862"


# ---- properties --------------------------------------------------------------------------------


@given(st.data())
@settings(max_examples=60, deadline=None)
def test_hash_invariant_under_key_insertion_order(data):
    obj = data.draw(json_objects)
    shuffled = _reordered(obj, data.draw)
    assert shuffled == obj
    assert canonical_json(shuffled) == canonical_json(obj)
    assert stable_hash(shuffled) == stable_hash(obj)


@given(json_values)
@settings(max_examples=100, deadline=None)
def test_round_trips_through_json_loads_to_normalized_value(value):
    encoded = canonical_json(value)
    decoded = json.loads(encoded.decode("utf-8"))
    normalized = normalize(value)
    # numbers come back as the same number (RFC 8785 writes 3e16 as an integer literal)
    assert _numbers_as_floats(decoded) == _numbers_as_floats(normalized)
    # canonical form is a fixed point: encoding the decoded value gives the same bytes
    assert canonical_json(decoded) == encoded


def _numbers_as_floats(value):
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        return {k: _numbers_as_floats(v) for k, v in value.items()}
    return [_numbers_as_floats(v) for v in value]


@given(json_values)
@settings(max_examples=50, deadline=None)
def test_normalize_is_idempotent(value):
    once = normalize(value)
    assert normalize(once) == once


@given(finite_floats)
@settings(max_examples=100, deadline=None)
def test_finite_floats_always_encode(x):
    back = json.loads(canonical_json(x))
    assert float(back) == x  # shortest round-trip digits: no precision lost


flat_rows = st.dictionaries(
    st.text(max_size=8),
    st.none() | st.booleans() | st.integers() | finite_floats | st.text(max_size=12),
    max_size=8,
)


@given(flat_rows | json_objects)
@example({"n": 1.0, "s": "x"})  # an integral float: ECMAScript writes no fraction
@example({"m": -0.0})
@example({"big": 1e16, "small": 1e-5, "mid": 0.5})  # where repr and ECMAScript switch notation
@example({"\U0001f600": 1, "\ue000": 2, "é": 3})  # UTF-16 key order differs from code points
@example({"a": "\ud800"})  # a lone surrogate has no UTF-8 form
@example({"nested": {"x": 1.0}, "list": [2.0, "s"]})
@settings(max_examples=300, deadline=None)
def test_fast_paths_write_what_the_reference_encoder_writes(row):
    """The C-encoder shortcuts (flat rows, plain nested values) must equal the RFC 8785 encoder."""
    from elspeth_beam.core.canonical import _encode

    out: list[str] = []
    _encode(normalize(row), out)
    try:
        expected = "".join(out).encode("utf-8")
    except UnicodeEncodeError:
        with pytest.raises(CanonicalizationError):
            canonical_json(row)
        return
    assert canonical_json(row) == expected
