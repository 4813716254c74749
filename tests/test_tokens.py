"""TokenInfo, its deterministic Beam coder, and deterministic ids (DESIGN §2)."""

from __future__ import annotations

import datetime as dt
import json
import pickle
import typing

import apache_beam as beam
import pytest
from apache_beam import coders
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given, settings
from hypothesis import strategies as st

from elspeth_beam.core import ids
from elspeth_beam.core import tokens as tokens_module
from elspeth_beam.core.canonical import stable_hash
from elspeth_beam.core.errors import CanonicalizationError
from elspeth_beam.core.tokens import TokenError, TokenInfo, TokenInfoCoder

# ---- strategies ------------------------------------------------------------------------------

finite_floats = st.floats(allow_nan=False, allow_infinity=False)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | finite_floats
    | st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0, 1e300, 5e-324, 1.5])
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=15,
)
rows = st.dictionaries(st.text(max_size=8), json_values, max_size=6)
ids_text = st.text(min_size=1, max_size=20)

tokens = st.builds(
    TokenInfo,
    run_id=ids_text,
    row_id=ids_text,
    token_id=ids_text,
    row_index=st.integers(min_value=0, max_value=2**40),
    parent_ids=st.lists(ids_text, max_size=4).map(tuple),
    branch=st.none() | st.text(max_size=10),
    row=rows,
)


def typed(value):
    """A structural view that tells int from float from bool (== does not: 1 == 1.0 == True)."""
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, typed(v)) for k, v in value.items())))
    if isinstance(value, list):
        return ("list", tuple(typed(v) for v in value))
    if isinstance(value, float):
        return ("float", repr(value))  # repr keeps -0.0 apart from 0.0
    return (type(value).__name__, value)


def reversed_keys(value):
    if isinstance(value, dict):
        return {k: reversed_keys(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reversed_keys(v) for v in value]
    return value


def make_token(**overrides) -> TokenInfo:
    fields = dict(
        run_id="run-1",
        row_id="row_1",
        token_id="tok_a",
        row_index=3,
        parent_ids=("tok_p1", "tok_p2"),
        branch="large",
        row={"i": 1, "f": 1.0, "s": "héllo", "b": True, "n": None, "l": [1, 2.5, "x"], "d": {"z": 0.0, "a": -2}},
    )
    fields.update(overrides)
    return TokenInfo(**fields)


CODER = TokenInfoCoder()

# ---- model -----------------------------------------------------------------------------------


def test_token_is_frozen():
    t = make_token()
    with pytest.raises(AttributeError, match="frozen"):
        t.token_id = "other"  # type: ignore[misc]


def test_extra_fields_forbidden():
    with pytest.raises(TypeError, match="colour"):
        make_token(colour="red")
    with pytest.raises(TokenError, match="not a token"):
        TokenInfo.from_json_bytes(make_token().to_json_bytes()[:-1] + b',"colour":"red"}')


@pytest.mark.parametrize(("field", "value"), [("run_id", 1), ("row_index", "3"), ("parent_ids", "tok_p"), ("branch", 2)])
def test_field_types_checked(field, value):
    with pytest.raises(TokenError, match=field):
        make_token(**{field: value})


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize(
    ("row", "path"),
    [
        (lambda v: {"x": v}, "x"),
        (lambda v: {"a": {"b": [1, v]}}, "a.b[1]"),
    ],
)
def test_non_finite_rejected_with_message(bad, row, path):
    with pytest.raises(CanonicalizationError) as info:
        make_token(row=row(bad))
    msg = str(info.value)
    assert "NaN" in msg
    assert repr(path) in msg


def test_with_row_validates_too():
    with pytest.raises(CanonicalizationError, match="NaN"):
        make_token().with_row({"x": float("nan")})
    t2 = make_token().with_row({"y": 2})
    assert t2.row == {"y": 2}
    assert t2.token_id == "tok_a" and t2.parent_ids == ("tok_p1", "tok_p2")


@pytest.mark.parametrize("bad", [dt.date(2024, 1, 1), b"bytes", {1, 2}, (1, 2), object()])
def test_non_json_values_rejected(bad):
    with pytest.raises(CanonicalizationError, match="JSON types"):
        make_token(row={"v": bad})


def test_non_string_nested_key_rejected():
    with pytest.raises(CanonicalizationError, match="non-string key"):
        make_token(row={"v": {1: "x"}})


# ---- coder -----------------------------------------------------------------------------------


def test_coder_registered_with_beam():
    coder = coders.registry.get_coder(TokenInfo)
    assert isinstance(coder, TokenInfoCoder)
    assert coder.is_deterministic()
    assert coder.to_type_hint() is TokenInfo
    # deterministic as a component too (what GroupByKey / state need)
    tuple_coder = coders.registry.get_coder(beam.typehints.Tuple[str, TokenInfo])
    assert tuple_coder.is_deterministic()
    assert isinstance(tuple_coder, coders.TupleCoder)
    assert isinstance(tuple_coder.coders()[1], TokenInfoCoder)


def test_coder_is_not_pickle():
    encoded = CODER.encode(make_token())
    assert isinstance(encoded, bytes)
    data = json.loads(encoded)  # plain JSON, readable by anyone
    assert data["token_id"] == "tok_a"
    assert data["parent_ids"] == ["tok_p1", "tok_p2"]


def test_coder_keeps_the_rows_field_order():
    """The order is the sinks' column order: it must survive a stage boundary (a reshuffle)."""
    token = make_token().with_row({"zeta": 1, "alpha": {"y": 2, "b": 3}, "mid": [1]})
    back = CODER.decode(CODER.encode(token))
    assert list(back.row) == ["zeta", "alpha", "mid"]
    assert list(back.row["alpha"]) == ["y", "b"]
    assert CODER.encode(back) == CODER.encode(token)


def test_coder_fixed_example():
    t = make_token()
    back = CODER.decode(CODER.encode(t))
    assert back == t
    assert type(back.row["f"]) is float and type(back.row["i"]) is int and type(back.row["b"]) is bool
    assert type(back.row["d"]["z"]) is float
    assert back.parent_ids == ("tok_p1", "tok_p2") and isinstance(back.parent_ids, tuple)


def test_coder_equality_and_hash():
    assert TokenInfoCoder() == TokenInfoCoder()
    assert hash(TokenInfoCoder()) == hash(TokenInfoCoder())
    assert TokenInfoCoder() != coders.PickleCoder()


@given(tokens)
@settings(max_examples=100, deadline=None)
def test_coder_round_trip_preserves_value_and_types(t):
    encoded = CODER.encode(t)
    back = CODER.decode(encoded)
    assert back == t
    assert typed(back.row) == typed(t.row)
    assert back.parent_ids == t.parent_ids
    assert (back.run_id, back.row_id, back.token_id, back.row_index, back.branch) == (
        t.run_id,
        t.row_id,
        t.token_id,
        t.row_index,
        t.branch,
    )


@given(tokens)
@settings(max_examples=75, deadline=None)
def test_coder_is_deterministic(t):
    first = CODER.encode(t)
    assert CODER.encode(t) == first
    rebuilt = TokenInfo(
        run_id=t.run_id,
        row_id=t.row_id,
        token_id=t.token_id,
        row_index=t.row_index,
        parent_ids=t.parent_ids,
        branch=t.branch,
        row=reversed_keys(t.row),
    )
    assert rebuilt == t  # equal as tokens; its encoding keeps its own field order (the sinks' columns)
    assert list(CODER.decode(CODER.encode(rebuilt)).row) == list(rebuilt.row)
    # decode → encode is a fixed point
    assert CODER.encode(CODER.decode(first)) == first


def test_coder_nested_stream_round_trip():
    """Beam encodes components in nested contexts (e.g. inside a tuple, in BagState)."""
    t = make_token()
    coder = coders.registry.get_coder(beam.typehints.Tuple[str, TokenInfo])
    value = ("k", t)
    back = coder.decode(coder.encode(value))
    assert back == value
    assert type(back[1].row["f"]) is float
    list_coder = coders.IterableCoder(TokenInfoCoder())
    many = [t, make_token(token_id="tok_b", row={"x": 2.0})]
    assert list(list_coder.decode(list_coder.encode(many))) == many


# ---- inside a real Beam pipeline -------------------------------------------------------------


def _pipeline_tokens() -> list[TokenInfo]:
    return [
        make_token(token_id="a1", row={"f": 1.0, "i": 1, "nested": {"g": 2.0}}),
        make_token(token_id="a2", parent_ids=(), branch=None, row={"f": 0.5, "s": "ü"}),
        make_token(token_id="b1", row={"l": [1.0, 2, None, True]}),
    ]


def _types_of(t: TokenInfo) -> tuple[str, str]:
    return (t.token_id, repr(typed(t.row)))


def test_coder_used_by_group_by_key_on_fnapirunner(monkeypatch):
    encoded_ids: list[str] = []
    original = TokenInfoCoder.encode

    def spying_encode(self, value):
        encoded_ids.append(value.token_id)
        return original(self, value)

    monkeypatch.setattr(TokenInfoCoder, "encode", spying_encode)

    inputs = _pipeline_tokens()
    options = PipelineOptions(["--runner=FnApiRunner"])
    with test_pipeline.TestPipeline(options=options) as p:
        keyed = (
            p
            | beam.Create(inputs)
            | beam.Map(lambda t: (t.token_id[:1], t)).with_output_types(typing.Tuple[str, TokenInfo])
        )
        grouped = keyed | beam.GroupByKey()
        flat = grouped | beam.FlatMap(lambda kv: [(kv[0], t) for t in kv[1]])
        assert_that(flat, equal_to([(t.token_id[:1], t) for t in inputs]), label="tokens survive")
        assert_that(
            flat | "types" >> beam.Map(lambda kv: _types_of(kv[1])),
            equal_to([_types_of(t) for t in inputs]),
            label="types survive",
        )
        assert_that(
            grouped | "sizes" >> beam.Map(lambda kv: (kv[0], len(list(kv[1])))),
            equal_to([("a", 2), ("b", 1)]),
            label="grouping",
        )
    # the GroupByKey's PCollection carries the registered deterministic coder
    coder = coders.registry.get_coder(keyed.element_type)
    assert coder.is_deterministic()
    assert isinstance(coder.coders()[1], TokenInfoCoder)
    # our coder really did the work (not a pickle fallback)
    assert set(encoded_ids) >= {t.token_id for t in inputs}


# ---- ids -------------------------------------------------------------------------------------


def test_ids_deterministic_and_prefixed():
    row = ids.row_id("run", "source:s", 0)
    tok = ids.token_id([row], "source:s", 0)
    st_ = ids.state_id(tok, "transform:t", 1)
    cases = [
        (ids.row_id, ("run", "source:s", 0), "row_"),
        (ids.token_id, ([row], "source:s", 0), "tok_"),
        (ids.state_id, (tok, "transform:t", 1), "st_"),
        (ids.batch_id, ("run", "aggregation:a", "key", 0, 1), "bat_"),
        (ids.outcome_id, (tok, "completed", "sink:s"), "out_"),
        (ids.routing_id, (st_, "big"), "rte_"),
        (ids.artifact_id, ("run", "sink:s", "/p", "abc"), "art_"),
    ]
    for fn, args, prefix in cases:
        a, b = fn(*args), fn(*args)
        assert a == b
        assert a.startswith(prefix) and len(a) <= 64  # the Landscape's id columns
        first, *composed = a[len(prefix):].split(".")
        assert len(first) in (24, 34) and all(c in "0123456789abcdef" for c in first)
    # golden values: ids must not change between versions (resume matches work against
    # ids already stored in a Landscape); a change needs a new Landscape schema version
    assert ids.row_id("run", "source:s", 0) == "row_000000000046d28ab701c772257364d2bf"
    assert ids.token_id([ids.row_id("run", "source:s", 0)], "source:s", 0) == "tok_0000000000e34dfcbecf2a80bd625d0920"
    assert ids.token_id(["row_x"], "source:s", 0) == "tok_332c6b5cb8e819c41f0ffd62"
    assert ids.state_id(tok, "transform:t", 1) == "st_0000000000e34dfcbecf2a80bd625d0920.t.64c5fdd4.1"
    assert ids.batch_id("run", "aggregation:a", "key", 0, 1) == "bat_0000000000e92bf8c0ecf0048a4b561adc"


@given(st.integers(min_value=0, max_value=2**40 - 1), st.integers(min_value=0, max_value=2**40 - 1))
@settings(max_examples=100, deadline=None)
def test_a_rows_work_sorts_by_its_position(i, j):
    """Every id of a row's work carries the row's position, so inserts append to the indexes."""
    def work(index):
        row = ids.row_id("run", "source:s", index)
        tok = ids.token_id([row], "source:s", 0)
        st_ = ids.state_id(tok, "gate:g", 1)
        return [row, tok, ids.token_id([tok, "tok_other"], "aggregation:a", 0), st_,
                ids.outcome_id(tok, "completed", "sink:s"), ids.routing_id(st_, "big")]

    for a, b in zip(work(i), work(j)):
        assert ids.order_of(a) == ids.position(i) and ids.order_of(b) == ids.position(j)
        if i < j:
            assert a.partition("_")[2] < b.partition("_")[2]


def test_token_ids_accept_tuple_or_list_parents():
    assert ids.token_id(("a", "b"), "n", 0) == ids.token_id(["a", "b"], "n", 0)


def test_ids_distinguish_part_boundaries():
    # naive concatenation would make these equal
    assert ids.row_id("ab", "c", 1) != ids.row_id("a", "bc", 1)
    assert ids.token_id(["a", "b"], "n", 0) != ids.token_id(["a"], "b", 0)
    assert ids.token_id(["a", "b"], "n", 0) != ids.token_id(["b", "a"], "n", 0)
    assert ids.state_id("x", "n", 1) != ids.state_id("x", "n", 2)
    assert ids.batch_id("r", "n", "k", 0, 1) != ids.batch_id("r", "n", "k", 1, 0)


def test_different_kinds_never_collide():
    assert ids.make_id("row", "a") != ids.make_id("tok", "a")
    assert ids.outcome_id("t", "completed", "n") != ids.outcome_id("t", "failed", "n")


@given(
    st.tuples(st.text(max_size=10), st.text(max_size=10), st.integers(min_value=0, max_value=10**9)),
    st.tuples(st.text(max_size=10), st.text(max_size=10), st.integers(min_value=0, max_value=10**9)),
)
@settings(max_examples=100, deadline=None)
def test_row_ids_distinct_for_distinct_inputs(a, b):
    if a == b:
        assert ids.row_id(*a) == ids.row_id(*b)
    else:
        assert ids.row_id(*a) != ids.row_id(*b)


@given(
    st.tuples(st.lists(st.text(max_size=6), max_size=3), st.text(max_size=6), st.integers(min_value=0, max_value=100)),
    st.tuples(st.lists(st.text(max_size=6), max_size=3), st.text(max_size=6), st.integers(min_value=0, max_value=100)),
)
@settings(max_examples=100, deadline=None)
def test_token_ids_distinct_for_distinct_inputs(a, b):
    assert (ids.token_id(*a) == ids.token_id(*b)) == (a == b)


@pytest.mark.parametrize("value", [-9223372036854775809, 2**64, 10**30])
def test_coder_keeps_integers_beyond_64_bits_exact(value):
    """orjson would read these as floats (Hypothesis found -2**63 - 1)."""
    t = make_token(row={"n": value, "s": "1234567890123456789012"})
    back = CODER.decode(CODER.encode(t))
    assert back == t and type(back.row["n"]) is int


# ---- the row's hash, carried ----------------------------------------------------------------


@given(tokens)
@settings(max_examples=75, deadline=None)
def test_row_hash_is_the_rows_stable_hash_and_never_travels(t):
    digest = stable_hash(t.row)
    assert t.row_hash == digest
    encoded = CODER.encode(t)
    assert digest.encode() not in encoded  # derived data: a decoded token hashes its own row
    assert CODER.decode(encoded).row_hash == digest
    assert pickle.loads(pickle.dumps(t)).row_hash == digest
    assert t == CODER.decode(encoded)  # equality is over the fields, not the cached hash


def test_row_hash_computed_once_per_token_and_shared_by_a_fork_child(monkeypatch):
    parent = make_token()
    digest = parent.row_hash
    monkeypatch.setattr(tokens_module, "stable_hash", lambda _: pytest.fail("the row was hashed again"))
    assert parent.row_hash == digest
    child = parent.child(token_id="tok_child", branch="b")
    assert (child.row_hash, child.parent_ids, child.branch, child.row_id, child.row_index) == (
        digest, (parent.token_id,), "b", parent.row_id, parent.row_index)
    assert child.row is parent.row
    given_hash = TokenInfo.of({"a": 1}, run_id="r", row_id="row_1", token_id="tok_1", row_index=0, row_hash="h")
    assert given_hash.row_hash == "h"  # the source's, computed from the bytes it also stores


def test_with_row_hashes_the_new_row():
    token = make_token()
    assert token.row_hash != token.with_row({"other": 1}).row_hash == stable_hash({"other": 1})
