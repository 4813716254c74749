"""What hostile input broke, kept as it was found (by hand, then by ``test_hostile_input.py``),
each run through the command line as a user runs it: exit code, one-line reason, and what the
sinks hold read back by an independent reader (``hostile_files.read_back``)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from sqlalchemy import create_engine, text

from hostile_files import read_back, run_cli

RUN_ID = "regression"


def _run(tmp: Path, data: bytes, kind: str, *, sink: str = "jsonl", rejects: str = "jsonl", transforms: list | None = None,
         source_options: dict | None = None, run: dict | None = None) -> tuple[int, str, str]:
    """source (its failures to ``rejects``) → transforms → sink ``out``."""
    (tmp / f"in.{kind}").write_bytes(data)
    transforms = transforms or []
    settings: dict[str, Any] = {
        "source": {"plugin": kind, "on_success": transforms[0]["input"] if transforms else "out",
                   "on_validation_failure": "rejects", "options": {"path": str(tmp / f"in.{kind}"), **(source_options or {})}},
        "transforms": transforms,
        "sinks": {"out": {"plugin": sink, "options": {"path": str(tmp / f"out.{sink}")}},
                  "rejects": {"plugin": rejects, "options": {"path": str(tmp / f"rejects.{rejects}")}}},
        "landscape": {"url": f"sqlite:///{tmp / 'landscape.db'}"},
        **({"run": run} if run else {}),
    }
    (tmp / "pipeline.yaml").write_text(yaml.safe_dump(settings))
    code, out, err = run_cli("run", str(tmp / "pipeline.yaml"), "--run-id", RUN_ID, "--no-progress")
    assert "Traceback" not in err, err
    return code, out, err


def _reasons(tmp: Path) -> dict[int, str]:
    """Quarantined source rows by index → the reason recorded."""
    engine = create_engine(f"sqlite:///{tmp / 'landscape.db'}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT r.row_index, o.error_json FROM token_outcomes o JOIN tokens t ON t.token_id = o.token_id "
                "JOIN rows r ON r.row_id = t.row_id WHERE o.run_id = :r AND o.outcome = 'quarantined'"), {"r": RUN_ID}).all()
    finally:
        engine.dispose()
    return {index: json.loads(error)["message"] for index, error in rows}


def _parquet(table: pa.Table) -> bytes:
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


# ---- a field the csv module's default limit refuses --------------------------------------------------

def test_a_quarantined_huge_field_is_read_back_by_the_csv_rejects_merge(tmp_path):
    """The issue's report: the source quarantined the 10 MB field, then the CSV sink's merge died
    reading its own part back with the csv module's default field limit."""
    huge = "x" * (10 * 1024 * 1024)
    code, out, _ = _run(tmp_path, f"id,name\n1,a\n2,{huge}\n3,c\n".encode(), "csv", sink="csv", rejects="csv")
    assert code == 0, out
    assert _reasons(tmp_path) == {1: f"line 3: field 'name' is {len(huge)} characters long, over the source's max_field_chars (131072)"}
    (rejected,) = read_back(tmp_path / "rejects.csv")
    assert rejected["_raw"] == f"2,{huge}"
    assert read_back(tmp_path / "out.csv") == [{"id": "1", "name": "a"}, {"id": "3", "name": "c"}]


def test_a_huge_value_from_json_lines_reaches_a_csv_sink_whole(tmp_path):
    huge = "é" * 300_000
    code, out, _ = _run(tmp_path, json.dumps({"id": 1, "name": huge}).encode() + b"\n", "jsonl", sink="csv")
    assert code == 0, out
    assert read_back(tmp_path / "out.csv") == [{"id": "1", "name": huge}]


def test_max_field_chars_is_the_csv_sources_own_setting(tmp_path):
    code, out, _ = _run(tmp_path, b"id,name\n1,abcdef\n2,ab\n", "csv", source_options={"max_field_chars": 4})
    assert code == 0, out
    assert _reasons(tmp_path) == {0: "line 2: field 'name' is 6 characters long, over the source's max_field_chars (4)"}


# ---- nesting -----------------------------------------------------------------------------------

def _nested(depth: int) -> str:
    return '{"d":' * depth + "1" + "}" * depth


def test_nesting_beyond_the_json_parser_and_beyond_the_limit_is_quarantined(tmp_path):
    lines = ['{"id": 0}', '{"n": ' + _nested(5000) + "}", '{"n": ' + _nested(101) + "}", '{"n": ' + _nested(100) + "}"]
    code, out, _ = _run(tmp_path, ("\n".join(lines) + "\n").encode(), "jsonl")
    assert code == 0, out
    reasons = _reasons(tmp_path)
    assert reasons[1] == "malformed JSON: nested deeper than the JSON parser can follow"
    assert reasons[2].startswith("field 'n") and reasons[2].endswith("is nested deeper than 100 levels (objects and arrays)")
    assert sorted(reasons) == [1, 2]
    assert [row.get("id") for row in read_back(tmp_path / "out.jsonl")] == [0, None]


# ---- Parquet sinks: values with no one Arrow type ---------------------------------------------------

def test_integers_beyond_int64_reach_a_parquet_sink_exactly(tmp_path):
    data = b'{"a": 18446744073709551617}\n{"a": 1}\n{"a": -9223372036854775808}\n'
    code, out, _ = _run(tmp_path, data, "jsonl", sink="parquet")
    assert code == 0, out
    held = read_back(tmp_path / "out.parquet")
    assert sorted(row["a"] for row in held) == [-(2**63), 1, 2**64 + 1]
    assert pq.read_schema(tmp_path / "out.parquet").field("a").metadata == {b"elspeth_beam.encoding": b"json"}


def test_a_parquet_map_column_goes_through_to_a_parquet_sink(tmp_path):
    """A map column reads as [key, value] pairs: lists of mixed types, which Arrow cannot infer."""
    table = pa.table({"m": pa.array([[("k", 1)], [], None], pa.map_(pa.string(), pa.int64())), "id": [1, 2, 3]})
    code, out, _ = _run(tmp_path, _parquet(table), "parquet", sink="parquet")
    assert code == 0, out
    assert sorted(read_back(tmp_path / "out.parquet"), key=lambda r: r["id"]) == [
        {"m": [["k", 1]], "id": 1}, {"m": [], "id": 2}, {"m": None, "id": 3}]


def test_parquet_columns_keep_their_types_when_they_have_one(tmp_path):
    data = b'{"i": 1, "f": 1.5, "s": "x", "b": true, "mixed": 1}\n{"i": 2, "f": 2, "s": "y", "b": false, "mixed": 2.5}\n'
    code, out, _ = _run(tmp_path, data, "jsonl", sink="parquet")
    assert code == 0, out
    schema = pq.read_schema(tmp_path / "out.parquet")
    assert {f.name: str(f.type) for f in schema} == {"i": "int64", "f": "double", "s": "string", "b": "bool", "mixed": "double"}
    assert all(not f.metadata for f in schema)


def test_parquet_parts_of_other_schemas_merge_by_reading_back(tmp_path, monkeypatch):
    """One part holds ints, another text in the same column: the merged column is JSON text."""
    from elspeth_beam.pipeline import sink as sink_module

    monkeypatch.setattr(sink_module, "PART_ROWS", 2)
    data = b"".join(json.dumps({"id": i, "v": i if i < 2 else f"t{i}"}).encode() + b"\n" for i in range(4))
    code, out, _ = _run(tmp_path, data, "jsonl", sink="parquet")
    assert code == 0, out
    assert sorted(read_back(tmp_path / "out.parquet"), key=lambda r: r["id"]) == [
        {"id": 0, "v": 0}, {"id": 1, "v": 1}, {"id": 2, "v": "t2"}, {"id": 3, "v": "t3"}]


def test_rows_without_fields_are_refused_by_a_parquet_sink_in_one_line(tmp_path):
    code, out, err = _run(tmp_path, b'{"a": 1}\n{"a": 2}\n', "jsonl", sink="parquet", transforms=[
        {"name": "nothing", "plugin": "field_mapper", "input": "raw", "on_success": "out", "on_error": "fail",
         "options": {"select": []}}])
    assert code == 1
    (line,) = [line for line in err.splitlines() if line.strip()]
    assert re.fullmatch(rf"elspeth-beam: error: run {RUN_ID} failed: sink 'out' could not write \S+\.parquet: "
                        rf"a Parquet file cannot hold rows without fields \(2 such rows for {re.escape(str(tmp_path))}/out\.parquet\): "
                        r"give them a field, or send them to a csv or jsonl sink( \[while running '[^']+'\])?", line), line


def test_rows_without_fields_are_read_back_from_a_csv_sink(tmp_path):
    """A CSV file of rows without fields is an empty header and a blank line per row; a reader
    that skips blank lines (csv.DictReader, the merge before) loses them."""
    code, out, _ = _run(tmp_path, b'{"a": 1}\n{"a": 2}\n{}\n', "jsonl", sink="csv", transforms=[
        {"name": "nothing", "plugin": "field_mapper", "input": "raw", "on_success": "out", "on_error": "fail",
         "options": {"drop": ["a"]}}])
    assert code == 0, out
    assert read_back(tmp_path / "out.csv") == [{}, {}, {}]


# ---- Parquet sources: values Python's types do not hold ---------------------------------------------

def test_parquet_nanosecond_timestamps_and_far_dates(tmp_path):
    table = pa.table({
        "t": pa.array([1_500_000_123_456_789, 1_500_000_123_456_000, None], pa.timestamp("ns")),
        "d": pa.array([0, 2**31 - 1, 1], pa.date32()),
    })
    code, out, _ = _run(tmp_path, _parquet(table), "parquet")
    assert code == 0, out
    assert read_back(tmp_path / "out.jsonl") == [
        {"t": "1970-01-18T08:40:00.123456789Z", "d": "1970-01-01"}, {"t": None, "d": "1970-01-02"}]
    (reason,) = _reasons(tmp_path).values()
    assert reason.startswith("field 'd' cannot be read as a JSON value: ")


# ---- empty input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, data", [("csv", b""), ("csv", b"id,name\r\n"), ("jsonl", b"\n \n"), ("parquet", None)])
def test_an_empty_input_completes_with_a_warning(tmp_path, kind, data):
    if data is None:
        data = _parquet(pa.table({"a": pa.array([], pa.int64())}))
    code, out, _ = _run(tmp_path, data, kind)
    assert code == 0, out
    assert "rows read  0" in out
    (warning,) = [line for line in out.splitlines() if line.startswith("warning")]
    assert "the source yielded no rows" in warning and "run.allow_empty: false" in warning


def test_a_glob_matching_nothing_is_an_empty_input_and_allow_empty_false_fails_it(tmp_path):
    settings = {"source": {"plugin": "csv", "on_success": "out", "options": {"path": str(tmp_path / "none-*.csv")}},
                "sinks": {"out": {"plugin": "csv", "options": {"path": str(tmp_path / "out.csv")}}},
                "landscape": {"url": f"sqlite:///{tmp_path / 'landscape.db'}"}}
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(settings))
    code, out, err = run_cli("run", str(tmp_path / "pipeline.yaml"), "--no-progress")
    assert code == 0 and "warning    the source yielded no rows" in out, (out, err)
    settings["run"] = {"allow_empty": False}
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(settings))
    code, out, err = run_cli("run", str(tmp_path / "pipeline.yaml"), "--no-progress")
    assert code == 1 and "Traceback" not in err
    assert "why        the source yielded no rows and run.allow_empty is false" in out


def test_a_json_lines_record_that_is_no_object_is_named_in_json_terms(tmp_path):
    code, out, _ = _run(tmp_path, b'{"a": 1}\n[1]\nnull\n"x"\n2\ntrue\n', "jsonl")
    assert code == 0, out
    assert _reasons(tmp_path) == {i: f"a JSON Lines record must be an object, got {name}"
                                  for i, name in enumerate(["array", "null", "string", "number", "boolean"], start=1)}


def test_an_error_sink_does_not_overwrite_a_field_named_like_its_own(tmp_path):
    code, out, _ = _run(tmp_path, b'{"_error": "mine", "x": "abc"}\n', "jsonl", transforms=[
        {"name": "num", "plugin": "coerce", "input": "raw", "on_success": "out", "on_error": "rejects",
         "options": {"fields": {"x": "int"}}}])
    assert code == 1, out  # its only row failed
    (row,) = read_back(tmp_path / "rejects.jsonl")
    assert row["_error"] == "mine" and row["x"] == "abc"
    assert row["__error"].startswith("field 'x': cannot coerce 'abc' to int") and row["_error_node"] == "transform:num"


def test_an_integer_of_more_digits_than_python_converts_is_quarantined(tmp_path):
    """json.loads raises a plain ValueError (no JSONDecodeError) past sys.get_int_max_str_digits()."""
    code, out, _ = _run(tmp_path, b'{"a": 1}\n{"a": ' + b"9" * 5000 + b'}\n', "jsonl")
    assert code == 0, out
    assert _reasons(tmp_path) == {1: "malformed JSON: Exceeds the limit (4300 digits) for integer string conversion: "
                                     "value has 5000 digits"}


def test_a_csv_whose_first_line_is_blank_is_refused(tmp_path):
    """Found by the fuzz: b"\\n\\n" read as a header of no columns and a row of no fields."""
    code, _, err = _run(tmp_path, b"\n\n", "csv")
    assert code == 2
    assert err.strip() == (f"elspeth-beam: error: source file '{tmp_path / 'in.csv'}': line 1, the header, is blank; "
                           "the first line must name the columns")


def test_a_quoted_multi_line_header_after_a_byte_order_mark_splits_where_records_start(tmp_path):
    """Found by the fuzz: the split planner took the BOM for the header's first character, so
    its quote did not open a quoted field and the line break inside it ended the header."""
    code, out, _ = _run(tmp_path, b'\xef\xbb\xbf"x\ny",b\n1,2\n', "csv", source_options={}, run=None)
    assert code == 0, out
    assert read_back(tmp_path / "out.jsonl") == [{"x\ny": "1", "b": "2"}]
