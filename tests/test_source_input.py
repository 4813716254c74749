"""Bad source input: each bad record is quarantined with a one-line reason, never kills the run, never loses data.

Every record stays a row with its own index (its position in the file), so lineage stays exact
however many records around it were bad.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO
from sqlalchemy import select

from elspeth_beam import testing
from elspeth_beam.core.errors import PluginError, SettingsError
from elspeth_beam.landscape import schema as s
from elspeth_beam.landscape.store import LandscapeStore
from elspeth_beam.plugins import registry
from elspeth_beam.plugins.base import SourcePlugin, SourceRecord

LIMIT = 131072  # the CSV source's default max_field_chars (plugins/limits.py)
ENCODING_HINT = "encoding option"


def _settings(tmp_path: Path, data: bytes, plugin: str, **options) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    src = tmp_path / f"in.{plugin}"
    src.write_bytes(data)
    return {
        "source": {"plugin": plugin, "on_success": "good", "options": {"path": str(src), **options}},
        "sinks": {"good": {"plugin": "jsonl", "options": {"path": str(tmp_path / "out" / "good.jsonl")}}},
    }


def _run(tmp_path: Path, data: bytes, plugin: str = "csv", status: str = "completed", **options) -> testing.TestRun:
    run = testing.run_for_test(_settings(tmp_path, data, plugin, **options), tmp_path)
    testing.assert_audit_complete(run)
    assert run.result.status.value == status
    return run


def _fates(run: testing.TestRun) -> dict[int, tuple[str, str | None]]:
    """Each source row's terminal outcome and, when it was set aside, the recorded reason."""
    with run.store.engine.connect() as conn:
        found = conn.execute(
            select(s.rows.c.row_index, s.token_outcomes.c.outcome, s.token_outcomes.c.error_json)
            .join(s.tokens, s.tokens.c.row_id == s.rows.c.row_id)
            .join(s.token_outcomes, s.token_outcomes.c.token_id == s.tokens.c.token_id)
            .where(s.rows.c.run_id == run.run_id, s.token_outcomes.c.is_terminal)
        ).all()
    fates = {}
    for index, outcome, error_json in found:
        assert index not in fates, f"row {index} has two terminal outcomes"
        fates[index] = (outcome, json.loads(error_json)["message"] if error_json else None)
    return fates


def _quarantined(run: testing.TestRun) -> dict[int, str]:
    fates = _fates(run)
    assert sorted(fates) == list(range(len(fates))), "row indices must be the records' positions, none skipped"
    reasons = {i: reason for i, (outcome, reason) in fates.items() if outcome == "quarantined"}
    for reason in reasons.values():
        assert "\n" not in reason and "http" not in reason, reason
    assert all(outcome == "completed" for i, (outcome, _) in fates.items() if i not in reasons)
    return reasons


def _good(tmp_path: Path) -> list[dict]:
    path = tmp_path / "out" / "good.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _raw_payload(run: testing.TestRun, index: int) -> str:
    (row,) = [r for r in run.store.table_rows(s.rows, run.run_id) if r["row_index"] == index]
    return json.loads(row["payload_json"])["raw"]


def _read(tmp_path: Path, data: bytes, plugin: str = "csv", **options) -> list[SourceRecord]:
    src = tmp_path / f"unit.{plugin}"
    src.write_bytes(data)
    return list(registry.build(SourcePlugin, plugin, {"path": str(src), **options}).read())


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "elspeth_beam.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


# ---- CSV: bytes the encoding cannot decode -----------------------------------------------------

def test_csv_bad_byte_quarantines_its_record_and_names_the_encoding_option(tmp_path):
    run = _run(tmp_path, b"id,name\n1,ok\n2,caf\xe9\n3,fine\n")
    reasons = _quarantined(run)
    assert list(reasons) == [1]
    assert reasons[1].startswith("line 3: byte 0xe9 ")
    assert ENCODING_HINT in reasons[1] and "utf-8" in reasons[1]
    assert _raw_payload(run, 1) == "2,caf\\xe9"  # the raw record is kept, the bad byte shown
    assert _good(tmp_path) == [{"id": "1", "name": "ok"}, {"id": "3", "name": "fine"}]


def test_csv_bad_byte_inside_a_quoted_multiline_field(tmp_path):
    data = b'id,note\n1,a\n2,"first\nsec\xffond\nthird"\n3,b\n4,"c\nd"\n'
    run = _run(tmp_path, data)
    reasons = _quarantined(run)
    assert list(reasons) == [1]
    assert reasons[1].startswith("line 4: byte 0xff ")  # the bad byte's own line, in the record from line 3
    assert _good(tmp_path) == [{"id": "1", "note": "a"}, {"id": "3", "note": "b"}, {"id": "4", "note": "c\nd"}]


def test_csv_all_latin1_every_row_quarantined_then_read_with_the_encoding_option(tmp_path):
    data = "id,city\n1,Zürich\n2,Malmö\n3,Besançon\n".encode("latin-1")
    run = _run(tmp_path / "utf8", data, status="failed")  # audited in full, but no row got through
    reasons = _quarantined(run)
    assert list(reasons) == [0, 1, 2]
    assert all(ENCODING_HINT in r for r in reasons.values())
    assert [r.split(":")[0] for r in reasons.values()] == ["line 2", "line 3", "line 4"]

    _run(tmp_path / "latin1", data, encoding="latin-1")
    assert _good(tmp_path / "latin1") == [
        {"id": "1", "city": "Zürich"}, {"id": "2", "city": "Malmö"}, {"id": "3", "city": "Besançon"}
    ]


def test_csv_bad_byte_in_the_header_is_refused_before_the_run(tmp_path):
    settings = _settings(tmp_path, "id,prénom\n1,Zoé\n".encode("latin-1"), "csv")
    with pytest.raises(PluginError, match=r"header.*line 1: byte 0xe9 .*encoding option"):
        testing.run_for_test(settings, tmp_path)
    assert LandscapeStore(testing.landscape_url(tmp_path)).table_rows(s.runs) == []


def test_csv_unknown_encoding_is_a_settings_error(tmp_path):
    for encoding in ("utf9", "base64"):  # base64 is a codec, but not a text encoding
        with pytest.raises(SettingsError, match=f"unknown text encoding '{encoding}'"):
            testing.run_for_test(_settings(tmp_path, b"id\n1\n", "csv", encoding=encoding), tmp_path)


# ---- CSV: a field over the source's max_field_chars---------------------------------------------

def test_csv_over_long_field_then_good_rows(tmp_path):
    long = "x" * (LIMIT + 10)
    data = f"id,v\n1,a\n2,{long}\n3,c\n4,d\n".encode()
    run = _run(tmp_path, data)
    reasons = _quarantined(run)
    assert list(reasons) == [1]
    assert reasons[1].startswith("line 3: ") and str(LIMIT) in reasons[1]
    assert _raw_payload(run, 1) == f"2,{long}"  # not truncated: nothing is lost
    assert _good(tmp_path) == [{"id": "1", "v": "a"}, {"id": "3", "v": "c"}, {"id": "4", "v": "d"}]


def test_csv_over_long_quoted_multiline_field_does_not_shift_later_rows(tmp_path):
    """The limit is hit on the record's first line: its later lines (quotes, commas) are still its own."""
    long = "x" * (LIMIT + 10)
    data = f'id,v\r\n1,a\r\n2,"{long}\r\n3,"",not a row\r\nend"\r\n4,d\r\n5,"e\r\nf"\r\n'.encode()
    run = _run(tmp_path, data)
    reasons = _quarantined(run)
    assert list(reasons) == [1]
    assert reasons[1].startswith("line 3: ")
    assert _raw_payload(run, 1) == f'2,"{long}\r\n3,"",not a row\r\nend"'
    assert _good(tmp_path) == [{"id": "1", "v": "a"}, {"id": "4", "v": "d"}, {"id": "5", "v": "e\r\nf"}]


def test_csv_read_gives_positions_and_line_numbers_after_a_long_field(tmp_path):
    long = "y" * (LIMIT + 1)
    records = _read(tmp_path, f'h\n"{long}\nstill the same field"\nafter\n"q"\n'.encode())
    assert [r.index for r in records] == [0, 1, 2]
    assert records[0].row is None and records[0].error.startswith("line 2: ")
    assert [(r.row, r.error) for r in records[1:]] == [({"h": "after"}, None), ({"h": "q"}, None)]


# ---- CSV: byte order mark, repeated header names -----------------------------------------------

def test_csv_bom_is_stripped_with_a_schema(tmp_path):
    run = _run(tmp_path, b'\xef\xbb\xbf"id",v\n1,2\n3,4\n', schema={"id": "int", "v": "int"})
    assert _quarantined(run) == {}
    assert _good(tmp_path) == [{"id": 1, "v": 2}, {"id": 3, "v": 4}]


def test_csv_bom_read_gives_a_clean_header(tmp_path):
    records = _read(tmp_path, b"\xef\xbb\xbfid,v\r\n1,2\r\n")
    assert [(r.row, r.error) for r in records] == [({"id": "1", "v": "2"}, None)]
    source = registry.build(SourcePlugin, "csv", {"path": str(tmp_path / "unit.csv")})
    assert source.header() == ["id", "v"]


def test_csv_repeated_header_name_is_refused_naming_the_column(tmp_path):
    settings = _settings(tmp_path, b"id,amount,note,amount\n1,2,x,3\n", "csv")
    with pytest.raises(PluginError, match=r"repeats column 'amount' \(columns 2 and 4\)"):
        testing.run_for_test(settings, tmp_path)
    assert LandscapeStore(testing.landscape_url(tmp_path)).table_rows(s.runs) == []
    with pytest.raises(PluginError, match="repeats column 'amount'"):
        _read(tmp_path, b"id,amount,note,amount\n1,2,x,3\n")


def test_csv_repeated_header_name_exits_2_from_the_command_line(tmp_path):
    settings = _settings(tmp_path, b"id,v,v\n1,2,3\n", "csv")
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(settings))
    proc = _cli("run", str(path), "--landscape-url", f"sqlite:///{tmp_path}/l.db")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert "repeats column 'v'" in proc.stderr
    assert not (tmp_path / "out").exists()


# ---- JSON Lines ---------------------------------------------------------------------------------

def test_jsonl_nan_and_infinity_without_a_schema_get_one_line_reasons(tmp_path):
    lines = [
        '{"id": 0, "x": 1.5}',
        '{"id": 1, "x": NaN}',
        '{"id": 2, "x": Infinity}',
        '{"id": 3, "x": {"deep": [1, -Infinity]}}',
        '{"id": 4, "x": 1e400}',
        '[1, 2]',
        '{"id": 6, "x": 6}',
    ]
    run = _run(tmp_path, ("\n".join(lines) + "\n").encode(), "jsonl")
    assert _quarantined(run) == {
        1: "field 'x': NaN has no canonical form (use null or a finite number)",
        2: "field 'x': Infinity has no canonical form (use null or a finite number)",
        3: "field 'x.deep[1]': -Infinity has no canonical form (use null or a finite number)",
        4: "field 'x': Infinity has no canonical form (use null or a finite number)",
        5: "a JSON Lines record must be an object, got array",
    }
    assert _good(tmp_path) == [{"id": 0, "x": 1.5}, {"id": 6, "x": 6}]


def test_jsonl_nan_outside_the_schema_gets_a_one_line_reason(tmp_path):
    run = _run(tmp_path, b'{"id": "1", "x": NaN}\n{"id": "2", "x": 2}\n', "jsonl", schema={"id": "int"})
    assert _quarantined(run) == {0: "field 'x': NaN has no canonical form (use null or a finite number)"}
    assert _good(tmp_path) == [{"id": 2, "x": 2}]


def test_jsonl_lone_surrogate_gets_a_one_line_reason(tmp_path):
    run = _run(tmp_path, b'{"x": "a\\ud800b"}\n{"x": "ok"}\n', "jsonl")
    reasons = _quarantined(run)
    assert list(reasons) == [0] and reasons[0].startswith("field 'x' holds a lone surrogate")


def test_jsonl_bad_byte_names_the_encoding_option_and_the_option_is_honoured(tmp_path):
    data = '{"city": "Zürich"}\n\n{"city": "Bern"}\n'.encode("latin-1")
    run = _run(tmp_path / "utf8", data, "jsonl")
    reasons = _quarantined(run)
    assert list(reasons) == [0] and reasons[0].startswith("line 1: byte 0xfc ") and ENCODING_HINT in reasons[0]
    assert _good(tmp_path / "utf8") == [{"city": "Bern"}]

    _run(tmp_path / "latin1", data, "jsonl", encoding="latin-1")
    assert _good(tmp_path / "latin1") == [{"city": "Zürich"}, {"city": "Bern"}]


def test_jsonl_line_numbers_count_blank_lines(tmp_path):
    records = _read(tmp_path, b'{"a": 1}\n\n\n{"a": "\xff"}\n', "jsonl")
    assert [r.index for r in records] == [0, 1]
    assert records[1].error.startswith("line 4: byte 0xff ")
    assert records[1].raw == '{"a": "\\xff"}'


def test_jsonl_bom_is_stripped(tmp_path):
    records = _read(tmp_path, b'\xef\xbb\xbf{"id": 1}\n{"id": 2}\n', "jsonl")
    assert [(r.row, r.error) for r in records] == [({"id": 1}, None), ({"id": 2}, None)]


def test_jsonl_repeated_key_is_quarantined_not_overwritten(tmp_path):
    records = _read(tmp_path, b'{"id": 1, "v": 1, "v": 2}\n{"id": 2, "n": {"k": 1, "k": 1}}\n{"id": 3}\n', "jsonl")
    assert [r.error for r in records] == [
        "key 'v' appears twice in one object; rename one so neither value is lost",
        "key 'k' appears twice in one object; rename one so neither value is lost",
        None,
    ]
    assert records[2].row == {"id": 3}


# ---- Parquet ------------------------------------------------------------------------------------

def test_parquet_nan_without_a_schema_gets_a_one_line_reason(tmp_path):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3], "x": [1.0, math.nan, -math.inf]}), src)
    records = list(registry.build(SourcePlugin, "parquet", {"path": str(src)}).read())
    assert [r.error if r.error is None else str(r.error) for r in records] == [
        None,
        "field 'x': NaN has no canonical form (use null or a finite number)",
        "field 'x': -Infinity has no canonical form (use null or a finite number)",
    ]


def test_parquet_repeated_column_name_is_refused(tmp_path):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["a", "a"]), src)
    settings = {"source": {"plugin": "parquet", "on_success": "good", "options": {"path": str(src)}},
                "sinks": {"good": {"plugin": "jsonl", "options": {"path": str(tmp_path / "good.jsonl")}}}}
    with pytest.raises(PluginError, match="repeats column 'a'"):
        testing.run_for_test(settings, tmp_path)
    with pytest.raises(PluginError, match=r"repeats column 'a' \(columns 1 and 2\)"):
        list(registry.build(SourcePlugin, "parquet", {"path": str(src)}).read())


def test_parquet_map_column_reaches_the_sink(tmp_path):
    """pyarrow gives a map's entries as (key, value) tuples, which are not JSON: they become pairs."""
    src = tmp_path / "in.parquet"
    tags = pa.array([[("a", 1), ("b", 2)], []], pa.map_(pa.string(), pa.int64()))
    pq.write_table(pa.table({"id": [1, 2], "tags": tags}), src)
    settings = {"source": {"plugin": "parquet", "on_success": "good", "options": {"path": str(src)}},
                "sinks": {"good": {"plugin": "jsonl", "options": {"path": str(tmp_path / "out" / "good.jsonl")}}}}
    run = testing.run_for_test(settings, tmp_path)
    testing.assert_audit_complete(run)
    assert _quarantined(run) == {}
    assert _good(tmp_path) == [{"id": 1, "tags": [["a", 1], ["b", 2]]}, {"id": 2, "tags": []}]
