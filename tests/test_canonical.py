"""Canonical JSON and stable hashing (DESIGN §3)."""

from __future__ import annotations

import base64
import collections
import dataclasses
import datetime as dt
import enum
import hashlib
import json
import math
import struct
import uuid
from decimal import Decimal

import pytest
import rfc8785
from hypothesis import example, given, settings
from hypothesis import strategies as st

from elspeth_beam.core import canonical as _canonical
from elspeth_beam.core.canonical import CANONICAL_VERSION, VERSIONS, canonical_json, normalize, stable_hash
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


@pytest.mark.parametrize("x", [2.0**53, 2.0**53 + 2, 1e16, 123456789012345680.0, 1e20, 2.7890840981819507e20, 2.0**60])
def test_large_integral_floats_hash_like_the_int_they_read_back_as(x):
    """'1.0 and 1 hash alike' holds for every integral float below 1e21, not only those below
    2**53: RFC 8785 writes them as plain digits (9007199254740992, 10000000000000000, never
    '9007199254740992.0' or '1e+16') — the double's shortest ones, which above 2**54 need not
    be its exact value (2**60 is written 1152921504606847000). Reading those digits back as an
    int gives the int that hashes like the float."""
    assert x.is_integer()
    text = canonical_json(x)
    assert text == rfc8785.dumps(x) and b"." not in text and b"e" not in text
    assert float(int(text)) == x
    assert stable_hash(x) == stable_hash(int(text))


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
    '{"alpha":{"a":"line\\nbreak \\"q\\"","b":"ü€𝄞"},"big":"12345678901234567890",'
    '"n":-17,"small":1.5e-10,"zeta":[1,1,2.5,0,true,false,null]}'
).encode("utf-8")
KNOWN_HASH = "ceb5f00e73c499bedf7f19e7def5ec70ebaaacf9e0a528334eb686043e29135c"
KNOWN_JSON_V1 = KNOWN_JSON.replace(b'"12345678901234567890"', b"12345678901234567890")
KNOWN_HASH_V1 = "f7e5258d0916fd1495007a737c88f4b4e8be1aa3202ec8b100b590d40e8d4f4b"


def test_known_answer_vector():
    """Fixed bytes and hash: any accidental change of the encoding breaks this test."""
    assert CANONICAL_VERSION == 2
    assert canonical_json(KNOWN_OBJECT) == KNOWN_JSON == _rfc8785_of_normalized(KNOWN_OBJECT)
    assert hashlib.sha256(KNOWN_JSON).hexdigest() == KNOWN_HASH
    assert stable_hash(KNOWN_OBJECT) == KNOWN_HASH
    assert stable_hash(KNOWN_OBJECT, version=2) == KNOWN_HASH


def test_known_answer_vector_version_1():
    """Version 1, the form before RFC 8785 numbers, byte for byte: older runs' hashes verify."""
    assert canonical_json(KNOWN_OBJECT, version=1) == KNOWN_JSON_V1
    assert stable_hash(KNOWN_OBJECT, version=1) == KNOWN_HASH_V1 == hashlib.sha256(KNOWN_JSON_V1).hexdigest()


@pytest.mark.parametrize(("value", "v1", "v2"), [
    (2.7890840981819507e20, b"278908409818195066880", b"278908409818195070000"),  # the example
    (-2.7890840981819507e20, b"-278908409818195066880", b"-278908409818195070000"),
    (2.0**60, b"1152921504606846976", b"1152921504606847000"),
    (4.679105997138059e16, b"46791059971380592", b"46791059971380590"),
    (2**60, b"1152921504606846976", b'"1152921504606846976"'),
    (2**60 + 1, b"1152921504606846977", b'"1152921504606846977"'),
    (46791059971380590, b"46791059971380590", b"46791059971380590"),
    (10**400, str(10**400).encode(), f'"{10**400}"'.encode()),
    ({"f": 1e20, "n": 2**53, "z": -0.0, "x": 1.5e-7}, b'{"f":100000000000000000000,"n":9007199254740992,"x":1.5e-7,"z":0}',
     b'{"f":100000000000000000000,"n":9007199254740992,"x":1.5e-7,"z":0}'),
    ({"row": 2.7890840981819507e20, "id": 2**60 + 1}, b'{"id":1152921504606846977,"row":278908409818195066880}',
     b'{"id":"1152921504606846977","row":278908409818195070000}'),
    ([1e21, 5e-324, 1e-7], b"[1e+21,5e-324,1e-7]", b"[1e+21,5e-324,1e-7]"),
])
def test_version_1_encodings_are_pinned_and_version_2_writes_rfc_8785(value, v1, v2):
    assert canonical_json(value, version=1) == v1
    assert stable_hash(value, version=1) == hashlib.sha256(v1).hexdigest()
    assert canonical_json(value) == canonical_json(value, version=2) == v2
    assert canonical_json(value, version=2) == _rfc8785_of_normalized(value)


def _rfc8785_of_normalized(value):
    """rfc8785.dumps of ``normalize(value)``, whose ints beyond 2**53 - 1 (which rfc8785 refuses)
    are those written as the digits RFC 8785 gives their double: passed as that double."""
    def doubles_for_big_ints(v):
        if type(v) is int and abs(v) >= 2**53:
            return float(v)
        if isinstance(v, dict):
            return {k: doubles_for_big_ints(x) for k, x in v.items()}
        if isinstance(v, list):
            return [doubles_for_big_ints(x) for x in v]
        return v
    return rfc8785.dumps(doubles_for_big_ints(normalize(value)))


def test_an_unknown_version_is_refused_with_the_known_ones():
    for call in (canonical_json, stable_hash, normalize):
        with pytest.raises(CanonicalizationError, match="version 3 is unknown; this elspeth_beam writes versions 1, 2"):
            call({"a": 1}, version=3)


# ---- fixed bugs, one example each ---------------------------------------------------------------


def test_integral_floats_between_1e16_and_1e21_use_the_shortest_digits():
    """Version 1 wrote int(value), the double's exact digits; RFC 8785 writes ECMAScript's."""
    assert canonical_json(2.7890840981819507e20) == b"278908409818195070000"
    assert canonical_json([2.7890840981819507e20]) == b"[278908409818195070000]"  # the normalizing path
    assert canonical_json({"a": {"b": 2.7890840981819507e20}}) == b'{"a":{"b":278908409818195070000}}'


def test_ints_beyond_2_53_are_numbers_only_where_rfc_8785_writes_their_digits():
    """Version 1 wrote every int's digits: RFC 8785 readers take numbers as doubles, so
    9007199254740993 read back as 9007199254740992 — another value, another hash."""
    assert canonical_json(2**53) == b"9007199254740992"
    assert canonical_json(2**53 + 1) == b'"9007199254740993"'
    assert canonical_json(-(2**53) - 1) == b'"-9007199254740993"'
    assert canonical_json(46791059971380590) == b"46791059971380590"  # RFC 8785's digits for its double
    assert canonical_json(10**400) == f'"{10**400}"'.encode()  # no double at all
    assert stable_hash(2**53 + 1) != stable_hash(2**53 + 2)  # no two ints hash alike


def test_the_flat_row_fast_path_applies_the_big_int_rule():
    """A flat dict of plain values skips normalizing: it must not pass an int beyond 2**53."""
    assert canonical_json({"id": 2**60 + 1, "name": "x"}) == b'{"id":"1152921504606846977","name":"x"}'
    assert canonical_json({"id": 2**53, "name": "x"}) == b'{"id":9007199254740992,"name":"x"}'


def test_negative_zero_is_zero():
    for value in (-0.0, [-0.0], {"z": -0.0}, {"z": [-0.0]}):
        assert canonical_json(value) == canonical_json(value, version=1) == rfc8785.dumps(value)


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
    # canonical form is a fixed point: encoding the decoded value gives the same bytes (json.loads
    # makes ints of 278908409818195070000 and the like: they are written as the same number)
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
    """The shortcuts (orjson; the exact rules' use of json's C encoder) must equal the RFC 8785 encoder."""
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


# ---- against an independent RFC 8785 implementation (the rfc8785 package) --------------------------
#
# rfc8785.dumps accepts None, bool, int, float, str, lists/tuples and str-keyed dicts. It refuses
# ints beyond ±(2**53 - 1), NaN/±Infinity and lone surrogates (so do we, with our own errors for
# the last two), and datetimes, Decimal, bytes and models, which we normalize to strings first: the
# strategies below draw only what it accepts. Big ints get their own property.

_MAX_SAFE = 2**53 - 1


def _double_from_bits(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


any_double = st.integers(0, 2**64 - 1).map(_double_from_bits).filter(math.isfinite)  # every exponent alike
band_double = st.floats(min_value=1e15, max_value=1e22) | st.floats(min_value=-1e22, max_value=-1e15)
subnormal = st.floats(min_value=-2.2250738585072014e-308, max_value=2.2250738585072014e-308, allow_subnormal=True)
doubles = finite_floats | any_double | band_double | subnormal | st.sampled_from([-0.0, 5e-324, 1e21, 1e-7, 1e-6, 9.999999999999999e20])
safe_ints = st.integers(-_MAX_SAFE, _MAX_SAFE)
odd_chars = st.sampled_from(["é", "\u00ff", "\u20ac", "\ud7ff", "\ue000", "\uffff", "\U00010000", "\U0001f600", "\U0010ffff",
                             "\x00", "\x1f", "\x7f", '"', "\\", "\u2028", "a", "B", "0"])
keys = st.text(odd_chars, max_size=4) | st.text(max_size=6)  # st.text never draws lone surrogates
rfc_scalars = st.none() | st.booleans() | safe_ints | doubles | keys
rfc_values = st.recursive(
    rfc_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=20,
)


@given(doubles)
@example(2.7890840981819507e20)
@example(-0.0)
@example(5e-324)
@settings(max_examples=2000, deadline=None)
def test_every_double_is_written_as_rfc8785_writes_it(x):
    assert canonical_json(x) == rfc8785.dumps(x)
    assert canonical_json([x]) == rfc8785.dumps([x])  # the normalizing path
    assert canonical_json({"k": x, "s": "t"}) == rfc8785.dumps({"k": x, "s": "t"})  # the flat-row path


@given(rfc_values)
@example({"\U0001f600": 1, "\ue000": 2, "é": 3, "a": {"\U00010000": [1.5, 2.0**70]}})
@settings(max_examples=500, deadline=None)
def test_nested_values_are_written_as_rfc8785_writes_them(value):
    """Nested dicts and lists, non-ASCII and astral-plane keys (sorted by UTF-16 code units)."""
    assert canonical_json(value) == rfc8785.dumps(value)


@given(st.dictionaries(keys, rfc_scalars, max_size=8))
@settings(max_examples=500, deadline=None)
def test_flat_rows_are_written_as_rfc8785_writes_them(row):
    assert canonical_json(row) == rfc8785.dumps(row)


@given(st.integers() | st.integers(2**53 - 4, 2**70) | st.sampled_from([46791059971380590, 1152921504606847000]))
@settings(max_examples=500, deadline=None)
def test_ints_are_rfc8785_numbers_or_strings_of_their_digits(n):
    """rfc8785 refuses ints beyond 2**53 - 1; we write one as the double RFC 8785 writes
    when those are its digits, else as the string of its digits."""
    if -_MAX_SAFE <= n <= _MAX_SAFE:
        assert canonical_json(n) == rfc8785.dumps(n)
    else:
        as_number = rfc8785.dumps(float(n)) if abs(n) < 1e300 else b""
        assert canonical_json(n) == (as_number if as_number == str(n).encode() else rfc8785.dumps(str(n)))
    assert json.loads(canonical_json(n)) in (n, str(n))  # never another value
    assert canonical_json({"n": n}) == b'{"n":' + canonical_json(n) + b"}"  # the flat-row path
    assert canonical_json([n]) == b"[" + canonical_json(n) + b"]"  # the normalizing path


# ---- the orjson fast path against the exact rules and rfc8785 ------------------------------------
#
# canonical_json hands the usual value to orjson (``_orjson_form`` vouches for it) and everything
# else to the exact rules (``_exact_json``). These properties draw what would break the shortcut
# were its checks wrong: integral floats (orjson writes 1.0), exponents where RFC 8785 writes plain
# digits (orjson switches below 1e-5, RFC 8785 below 1e-6), keys that sort apart in UTF-16 and code
# points, control characters, big ints, -0.0, tuples and nesting deeper than orjson's 255 levels.

integral_doubles = st.integers(-(2**70), 2**70).map(float) | st.integers(-(10**6), 10**6).map(float)
notation_edges = st.sampled_from([1e-5, 9.999999999999999e-06, 1.0000000000000001e-05, 1e-6, 9.99999999999999e-7, 1.5e-5,
                                  1e16, 9999999999999998.0, 4503599627370495.5, 1e21, 9.999999999999999e20, 0.0, -0.0])
all_doubles = doubles | integral_doubles | notation_edges
control_text = st.text(st.characters(max_codepoint=0x20) | odd_chars, max_size=6)
fast_keys = keys | control_text | st.text(st.sampled_from(["\ue000", "\uffff", "\U00010000", "\U0001f600", "a"]), max_size=3)
fast_scalars = st.none() | st.booleans() | safe_ints | all_doubles | fast_keys
big_ints = st.integers() | st.integers(2**53 - 2, 2**65) | st.integers(-(2**65), -(2**53) + 2) | st.just(46791059971380590)


def _trees(scalars: st.SearchStrategy) -> st.SearchStrategy:
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=5) | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(fast_keys, children, max_size=5),
        max_leaves=40,
    )


rfc_domain = _trees(fast_scalars)  # what rfc8785.dumps accepts
native_values = _trees(fast_scalars | big_ints | st.sampled_from(["\ud800", "a\udfffb"]))  # + big ints, lone surrogates


def _exact_or_error(value, version):
    try:
        return _canonical._exact_json(value, version)
    except CanonicalizationError:
        return CanonicalizationError


def _fast_or_error(value, version):
    try:
        return canonical_json(value, version=version)
    except CanonicalizationError:
        return CanonicalizationError


@given(rfc_domain)
@example({"\U0001f600": 1, "\ue000": [1.0, -0.0], "\x1f": 1e-6, "é": 1.5e-5})
@example([1e16, 9999999999999998.0, 2.0**53, 1e21, 0.1])
@settings(max_examples=1500, deadline=None)
def test_fast_path_writes_what_rfc8785_writes(value):
    assert canonical_json(value) == rfc8785.dumps(value)


@given(native_values, st.sampled_from(VERSIONS))
@example({"id": 2**53 + 1, "f": 2.0}, 2)
@example({"s": "a\udfffb", "f": 2.0}, 1)
@settings(max_examples=1500, deadline=None)
def test_fast_path_writes_what_the_exact_rules_write(value, version):
    """Big ints and lone surrogates too (rfc8785 refuses them), in both versions."""
    assert _fast_or_error(value, version) == _exact_or_error(value, version)


@given(st.integers(240, 300), fast_scalars, st.booleans())
@settings(max_examples=30, deadline=None)
def test_nesting_deeper_than_orjson_allows_is_written_alike(depth, leaf, as_dict):
    value = leaf
    for _ in range(depth):
        value = {"k": value} if as_dict else [value]
    assert canonical_json(value) == rfc8785.dumps(value)


@given(native_values, st.sampled_from([math.nan, math.inf, -math.inf]), st.data())
@settings(max_examples=300, deadline=None)
def test_nan_and_infinity_are_refused_anywhere(value, bad, data):
    """orjson would write them as null: the fast path must never let one through."""
    path = data.draw(st.lists(st.sampled_from(["list", "dict", "tuple"]), max_size=4))
    planted = bad
    for kind in path:
        planted = {"k": planted, "v": value} if kind == "dict" else [value, planted] if kind == "list" else (planted,)
    with pytest.raises(CanonicalizationError, match="no canonical"):
        canonical_json(planted)


@pytest.mark.parametrize("row", [
    {"id": 123, "key": "k042", "amount": 517.23, "category": "c", "amount_eur": 475.85},
    {"id": 1, "amount": 100.0, "zero": -0.0, "tiny": 1.5e-5, "name": "Zoë 中文 😀", "ok": True, "none": None},
    {"tags": ["a", "b"], "price": {"net": 10.25, "gross": 12.0}, "lines": ({"sku": "x", "n": 2},), "é": 2**53 - 1},
])
def test_usual_rows_take_the_orjson_path(row, monkeypatch):
    """The speed is the point: plain rows, integral floats, non-ASCII and astral text among them,
    must not fall back to the exact rules."""
    expected = canonical_json(row)

    def refuse(value, version):
        raise AssertionError(f"{value!r} took the exact rules")

    monkeypatch.setattr(_canonical, "_exact_json", refuse)
    assert canonical_json(row) == expected == rfc8785.dumps(row)


class _Colour(enum.Enum):
    RED = 1


class _Size(enum.IntEnum):
    BIG = 7


class _Name(str):
    pass


@dataclasses.dataclass
class _Point:
    x: float


_foreign = st.sampled_from([
    dt.datetime(2024, 3, 1, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))), dt.datetime(2024, 3, 1), dt.date(2024, 2, 29),
    Decimal("1.10"), b"\x00\xff", bytearray(b"ab"), uuid.UUID(int=1), _Colour.RED, _Size.BIG, _Name("n"), _Point(1.5),
    collections.OrderedDict(b=1, a=2.0), {1: "int key"}, {_Name("k"): 1}, {2, 3}, complex(1, 2),
])


@given(_trees(fast_scalars | _foreign), st.sampled_from(VERSIONS))
@settings(max_examples=500, deadline=None)
def test_values_orjson_writes_its_own_way_take_the_exact_rules(value, version):
    """orjson writes datetimes, UUIDs, enums and dataclasses itself, differently or where we refuse."""
    assert _fast_or_error(value, version) == _exact_or_error(value, version)
