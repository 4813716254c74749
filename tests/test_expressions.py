"""The safe expression language of gates and computed fields."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elspeth_beam.core.errors import ExpressionError
from elspeth_beam.plugins.expressions import Expression

ROW = {"a": 5, "b": 2.5, "s": " Hello ", "name": "Widget", "l": [1, 2, 3], "n": None, "flag": True, "region": "north"}


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        # comparisons (incl. chained)
        ("row['a'] > 3", True),
        ("row['a'] >= 5", True),
        ("row['a'] < 5", False),
        ("row['a'] <= 4", False),
        ("row['a'] == 5", True),
        ("row['a'] != 5", False),
        ("1 < row['a'] < 10", True),
        ("1 < row['a'] < 4", False),
        ("row['n'] is None", True),
        ("row['a'] is not None", True),
        # boolean logic (with Python's value-returning semantics)
        ("row['a'] > 3 and row['b'] < 3", True),
        ("row['a'] > 3 and row['b'] > 3", False),
        ("row['a'] > 10 or row['flag']", True),
        ("not row['flag']", False),
        ("0 or 'x'", "x"),
        ("'' and 1/0", ""),  # short circuit: the division never runs
        ("row['a'] > 3 or 1/0", True),
        # arithmetic
        ("row['a'] + row['b']", 7.5),
        ("row['a'] - 7", -2),
        ("row['a'] * 3", 15),
        ("row['a'] / 2", 2.5),
        ("row['a'] // 2", 2),
        ("row['a'] % 3", 2),
        ("-row['a']", -5),
        ("+row['b']", 2.5),
        ("(row['a'] + 1) * 2", 12),
        # subscripts and slices
        ("row['l'][0]", 1),
        ("row['l'][-1]", 3),
        ("row['l'][1:]", [2, 3]),
        ("row['l'][::-1]", [3, 2, 1]),
        ("row['name'][:3]", "Wid"),
        ("row['region'][:1].upper()", "N"),
        # row.get
        ("row.get('a')", 5),
        ("row.get('missing')", None),
        ("row.get('missing', 7)", 7),
        ("row.get('missing', 0) + 1", 1),
        # functions
        ("len(row['l'])", 3),
        ("len(row['name'])", 6),
        ("round(2.567, 2)", 2.57),
        ("round(row['b'])", 2),
        ("min(row['l'])", 1),
        ("max(1, row['a'], 3)", 5),
        ("abs(-row['a'])", 5),
        ("str(row['a'])", "5"),
        ("int('12') + 1", 13),
        ("float(row['a'])", 5.0),
        ("bool(row['n'])", False),
        # string methods
        ("row['s'].strip()", "Hello"),
        ("row['s'].lower()", " hello "),
        ("row['s'].upper()", " HELLO "),
        ("row['s'].strip().lower()", "hello"),
        ("row['name'].startswith('Wid')", True),
        ("row['name'].endswith('x')", False),
        # if-else
        ("'big' if row['a'] > 3 else 'small'", "big"),
        ("'big' if row['a'] > 30 else 'small'", "small"),
        # membership
        ("row['a'] in [1, 5]", True),
        ("row['a'] in (1, 2)", False),
        ("row['region'] not in ['south', 'east']", True),
        ("row['a'] in {5, 6}", True),
        ("'ell' in row['s']", True),
        ("'a' in row", True),
        # literals
        ("42", 42),
        ("'text'", "text"),
        ("[1, row['a']]", [1, 5]),
    ],
)
def test_allowed_constructs_evaluate(src, expected):
    result = Expression(src).evaluate(ROW)
    assert result == expected
    assert type(result) is type(expected)


def test_expression_keeps_source_and_strips_whitespace():
    e = Expression("  row['a'] > 1  \n")
    assert e.evaluate(ROW) is True
    assert e.source == "  row['a'] > 1  \n"


def test_expression_can_be_reused_across_rows():
    e = Expression("row['x'] * 2")
    assert [e.evaluate({"x": i}) for i in range(4)] == [0, 2, 4, 6]


@pytest.mark.parametrize(
    ("src", "needle"),
    [
        ("x", "unknown name 'x'"),
        ("x > 1", "unknown name 'x'"),
        ("__builtins__", "unknown name"),
        ("row.__class__", "Attribute is not allowed"),
        ("row['a'].__class__", "Attribute is not allowed"),
        ("().__class__.__bases__", "Attribute is not allowed"),
        ("().__class__.__bases__[0].__subclasses__()", "not allowed"),
        ("row['s'].lower.__self__", "Attribute is not allowed"),
        ("(1).real", "Attribute is not allowed"),
        ("lambda: 1", "Lambda is not allowed"),
        ("(lambda r: r)(row)", "not allowed"),
        ("[x for x in row]", "ListComp is not allowed"),
        ("{k: 1 for k in row}", "DictComp is not allowed"),
        ("(x for x in row)", "GeneratorExp is not allowed"),
        ("open('/etc/passwd')", "function 'open' is not allowed"),
        ("__import__('os')", "function '__import__' is not allowed"),
        ("eval('1')", "function 'eval' is not allowed"),
        ("exec('x=1')", "function 'exec' is not allowed"),
        ("getattr(row, 'get')", "function 'getattr' is not allowed"),
        ("(y := 1)", "NamedExpr is not allowed"),
        ("row.keys()", "not allowed"),
        ("row['s'].format(1)", "not allowed"),
        ("'{0.__class__}'.format(row)", "not allowed"),
        ("'x'.join(row)", "not allowed"),
        ("row['s'].lower(x=1)", "not allowed"),
        ("len(row['l'], x=1)", "not allowed"),
        ("f'{row}'", "JoinedStr is not allowed"),
        ("{'a': 1}", "Dict is not allowed"),
        ("2 ** 100", "BinOp is not allowed"),
        ("row['a'] & 1", "BinOp is not allowed"),
        ("row['a'] << 1", "BinOp is not allowed"),
        ("~row['a']", "not allowed"),
        ("row.get('a', 1, 2)", "row.get takes a field name"),
        ("row.get()", "row.get takes a field name"),
        ("row['a'] >", "invalid expression"),
        ("import os", "invalid expression"),
        ("x = 1", "invalid expression"),
    ],
)
def test_forbidden_constructs_rejected_at_construction(src, needle):
    with pytest.raises(ExpressionError) as info:
        Expression(src)
    assert needle in str(info.value)


def test_rejection_happens_even_inside_allowed_constructs():
    """The check walks the whole tree, not just the top node."""
    for src in [
        "row['a'] > 1 and open('f')",
        "'x' if row.__class__ else 'y'",
        "len([x for x in row])",
        "row['l'][__import__('os')]",
        "row[1:row.__class__]",
        "row.get('a', lambda: 1)",
        "row['s'].startswith(row.__dict__)",
        "[1, (y := 2)]",
        "-(lambda: 1)",
    ]:
        with pytest.raises(ExpressionError):
            Expression(src)


def test_function_error_lists_allowed_functions():
    with pytest.raises(ExpressionError) as info:
        Expression("sum(row['l'])")
    msg = str(info.value)
    for name in ("len", "round", "min", "max"):
        assert name in msg


def test_unknown_name_suggests_row_syntax():
    with pytest.raises(ExpressionError, match=r"row\['amount'\]"):
        Expression("amount > 3")


# ---- runtime errors ----------------------------------------------------------------------------


def test_missing_field_names_the_field():
    e = Expression("row['amount'] > 3")
    with pytest.raises(ExpressionError) as info:
        e.evaluate({"total": 1})
    assert "'amount'" in str(info.value)
    assert "row['amount'] > 3" in str(info.value)


@pytest.mark.parametrize("src", ["row['a'] / 0", "row['a'] // 0", "row['a'] % 0", "1 / row['z']"])
def test_division_by_zero_is_expression_error(src):
    with pytest.raises(ExpressionError) as info:
        Expression(src).evaluate({"a": 1, "z": 0})
    assert "zero" in str(info.value)


@pytest.mark.parametrize(
    "src",
    ["row['s'] + 1", "row['a'].lower()", "int(row['s'])", "len(row['a'])", "row['a'] < row['s']"],
)
def test_type_and_value_errors_are_expression_errors(src):
    with pytest.raises(ExpressionError):
        Expression(src).evaluate({"a": 1, "s": "abc"})


def test_string_method_on_non_string_explains():
    with pytest.raises(ExpressionError, match=r"\.lower\(\) needs a string, got int"):
        Expression("row['a'].lower()").evaluate({"a": 1})


@pytest.mark.parametrize("src", ["row['l'][10]", "row['s'][99]"])
def test_index_out_of_range_is_expression_error(src):
    """A missing list element is like a missing field: an ExpressionError naming the
    expression, not a bare IndexError escaping ``evaluate``."""
    with pytest.raises(ExpressionError) as info:
        Expression(src).evaluate({"l": [1], "s": "abc"})
    assert src in str(info.value)


# ---- pickling (Beam ships DoFns holding expressions to workers) ------------------------------


@pytest.mark.parametrize(
    "src",
    ["row['a'] > 3", "round(row['a'] * row['b'], 2)", "'x' if row.get('n') is None else row['s'][1:3].upper()"],
)
def test_pickles_and_evaluates_the_same(src):
    e = Expression(src)
    e2 = pickle.loads(pickle.dumps(e))
    assert isinstance(e2, Expression)
    assert e2.source == src
    assert e2.evaluate(ROW) == e.evaluate(ROW)
    assert e2.evaluate({**ROW, "a": 0, "n": 1}) == e.evaluate({**ROW, "a": 0, "n": 1})


def test_unpickling_rechecks_the_source():
    """__reduce__ rebuilds from source, so a tampered pickle cannot smuggle in a forbidden tree."""
    e = Expression("row['a']")
    e.source = "__import__('os')"
    with pytest.raises(ExpressionError):
        pickle.loads(pickle.dumps(e))


@given(a=st.integers(-1000, 1000), b=st.integers(-1000, 1000))
@settings(max_examples=100, deadline=None)
def test_arithmetic_matches_python(a, b):
    row = {"a": a, "b": b}
    assert Expression("row['a'] + row['b'] * 2 - 3").evaluate(row) == a + b * 2 - 3
    assert Expression("row['a'] >= row['b']").evaluate(row) is (a >= b)
    assert Expression("max(row['a'], row['b']) - min(row['a'], row['b'])").evaluate(row) == abs(a - b)
    if b != 0:
        assert Expression("row['a'] // row['b']").evaluate(row) == a // b
    else:
        with pytest.raises(ExpressionError):
            Expression("row['a'] // row['b']").evaluate(row)
