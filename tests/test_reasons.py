"""Reasons rows were set aside are grouped by cause — the message with the offending value
taken out — in the end-of-run summary, `show` and `report` alike."""

from __future__ import annotations

import csv
import html
import json

import pytest
import yaml
from conftest import QUICKSTART, REPO, retarget
from hypothesis import given, settings
from hypothesis import strategies as st

from elspeth_beam import testing
from elspeth_beam.core.errors import RowError
from elspeth_beam.core.reasons import PLACEHOLDER, without_values
from elspeth_beam.inspect.reasons import EXAMPLES, group_errors
from elspeth_beam.inspect.report import build_report
from elspeth_beam.inspect.report_html import render_html
from elspeth_beam.inspect.show import render_text as show_text
from elspeth_beam.inspect.show import show_run
from elspeth_beam.pipeline.audit import error_info
from elspeth_beam.plugins.coercion import coerce_row

FIELDS = ("quantity", "amount", "order_id")
TYPES = ("int", "float")


def _recorded(exc: Exception, node: str = "transform:t") -> str:
    """The error_json the executor records for ``exc`` raised at ``node``."""
    try:
        raise exc
    except Exception as raised:
        return json.dumps(error_info(raised, node), sort_keys=True)


def _coercion_error(field: str, type_name: str, value: str) -> RowError:
    with pytest.raises(RowError) as caught:
        coerce_row({field: value}, {field: type_name})
    return caught.value


def _not_a_number(text: str) -> bool:
    try:
        float(text.strip().replace("_", ""))
    except ValueError:
        return bool(text.strip())
    return False


bad_values = st.text(st.characters(categories=("L", "N", "P", "S", "Zs")), min_size=1, max_size=12).filter(_not_a_number)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(st.sampled_from(FIELDS), st.sampled_from(TYPES), bad_values), min_size=1, max_size=40))
def test_coercion_errors_group_by_field_and_type_whatever_the_value(rows):
    """Our own errors record their reason apart from the value: one reason per (field, type)
    — the normaliser alone would merge the fields, whose names are quoted too."""
    recorded = [("quarantined", "source:source", None, _recorded(_coercion_error(f, t, v), "source:source"), 1)
                for f, t, v in rows]
    groups = group_errors(recorded)
    expected: dict[str, list[str]] = {}
    for field, type_name, value in rows:
        expected.setdefault(f"field {field!r}: cannot coerce {PLACEHOLDER} to {type_name}", []).append(repr(value))
    assert {g.reason: g.count for g in groups} == {reason: len(values) for reason, values in expected.items()}
    for g in groups:
        values = expected[g.reason]
        assert g.distinct == len(set(values))
        assert len(g.examples) == min(EXAMPLES, len(set(values))) and set(g.examples) <= set(values)
        assert g.error_type == "RowError" and g.node_id == "source:source"
    assert [g.count for g in groups] == sorted((g.count for g in groups), reverse=True)


CAUSES = ("unknown product code {} in the catalogue", "price {} is below the floor", "{} is not a region we ship to")
values = st.one_of(st.text(st.characters(categories=("L", "N", "P", "S", "Zs")), max_size=10), st.integers(-10**6, 10**6),
                   st.floats(allow_nan=False, allow_infinity=False, width=32))


@settings(max_examples=80, deadline=None)
@given(rows=st.lists(st.tuples(st.sampled_from(CAUSES), values), min_size=1, max_size=40))
def test_messages_of_user_plugins_that_differ_only_in_a_value_are_one_reason(rows):
    """A user plugin's message (no recorded reason): quoted literals and numbers are taken
    out, so rows of one cause are one reason with their values as examples; causes stay apart."""
    recorded = [("quarantined", "transform:mine", "rejects", _recorded(ValueError(cause.format(repr(v)))), 1)
                for cause, v in rows]
    groups = group_errors(recorded)
    expected: dict[str, list[str]] = {}
    for cause, value in rows:
        expected.setdefault(cause.format(PLACEHOLDER), []).append(repr(value))
    assert {g.reason: g.count for g in groups} == {reason: len(v) for reason, v in expected.items()}
    for g in groups:
        assert set(g.examples) <= set(expected[g.reason]) and g.distinct == len(set(expected[g.reason]))
        assert (g.error_type, g.sink, g.outcome) == ("ValueError", "rejects", "quarantined")


@pytest.mark.parametrize("message", [
    "float division by zero",
    "row's total is negative",
    "cannot read utf-8 text with sha256 checks",
    "don't know this value",
])
def test_the_normaliser_leaves_words_alone(message):
    assert without_values(message) == (message, ())


def test_the_normaliser_takes_out_literals_and_numbers():
    assert without_values("line 3: byte 0xe9 is not 'utf-8' text, got \"x\\\"y\" and -1.5e3") == (
        f"line {PLACEHOLDER}: byte {PLACEHOLDER} is not {PLACEHOLDER} text, got {PLACEHOLDER} and {PLACEHOLDER}",
        ("3", "0xe9", "'utf-8'", '"x\\"y"', "-1.5e3"),
    )


# ---- a real run with many rows failing for one cause -------------------------------------


@pytest.fixture(scope="module")
def comma_prices(tmp_path_factory):
    """The quickstart on orders.csv whose first 40 prices are written with a decimal comma; the
    run and the reprs of every price it cannot coerce (those, and the file's own 'nan')."""
    tmp = tmp_path_factory.mktemp("reasons")
    with (REPO / "pipelines" / "data" / "orders.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    commas = []
    for i, row in enumerate(rows[1:], start=1):
        if len(row) == 8 and "." in row[5] and i <= 40:
            row[5] = row[5].replace(".", ",")
        if len(row) == 8 and ("," in row[5] or row[5] == "nan"):
            commas.append(repr(row[5]))
    orders = tmp / "orders.csv"
    with orders.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    settings_ = retarget(yaml.safe_load(QUICKSTART.read_text()), tmp / "out")
    settings_["source"]["options"]["path"] = str(orders)
    run = testing.run_for_test(settings_, tmp)
    testing.assert_audit_complete(run)
    return run, commas


def test_the_summary_counts_one_cause_once(comma_prices):
    run, commas = comma_prices
    top = run.result.summary["quarantine_reasons"][0]
    assert (top["count"], top["node_id"], top["reason"]) == (
        len(commas), "source:source", f"field 'unit_price': cannot coerce {PLACEHOLDER} to float")
    assert top["distinct"] == len(set(commas)) > EXAMPLES and len(top["examples"]) == EXAMPLES
    assert set(top["examples"]) <= set(commas)
    line = next(line for line in run.result.text().splitlines() if "unit_price': cannot coerce" in line)
    assert line.split()[0] == str(len(commas)) and f"({len(set(commas))} distinct)" in line
    assert "e.g. " + ", ".join(top["examples"]) in line


def test_show_and_report_list_the_same_grouped_reason(comma_prices):
    run, commas = comma_prices
    details = show_run(run.store, run.run_id)
    shown = details.error_reasons[0]
    assert (shown.count, shown.reason) == (len(commas), f"field 'unit_price': cannot coerce {PLACEHOLDER} to float")
    text = show_text(details)
    assert f"RowError: {shown.reason}" in text and shown.examples_text() in text
    report = build_report(run.store, run.run_id)
    assert report.reasons[0].model_dump() == shown.model_dump()
    page = render_html(report)
    assert html.escape(shown.reason) in page and html.escape(shown.examples_text()) in page
    summary = run.result.summary["quarantine_reasons"][0]
    assert summary == shown.model_dump(include=set(summary))


def test_the_recorded_error_keeps_the_whole_message(comma_prices):
    """Grouping leaves the record itself alone: each row's error still names its value."""
    run, commas = comma_prices
    with run.store.engine.connect() as conn:
        messages = [json.loads(e)["message"] for (e,) in conn.exec_driver_sql(
            "SELECT error_json FROM token_outcomes WHERE error_json LIKE '%unit_price%cannot coerce%'")]
    assert sorted(m.split()[4] for m in messages) == sorted(commas)
    assert all(m.startswith("field 'unit_price': cannot coerce '") and "to float: " in m for m in messages)
