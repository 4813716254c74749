"""Sources split where records start, and however they are split they yield the same records,
with the same indexes, line numbers (in their reasons) and raw text, as read whole."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from elspeth_beam import testing
from elspeth_beam.core.errors import PluginError
from elspeth_beam.plugins.sources import CsvSource, JsonlSource, ParquetSource
from elspeth_beam.plugins.splits import SourceSplit, plan_lines

from conftest import REPO, retarget


def _split_read(source, target: int) -> list:
    splits = source.splits(target)
    return [record for split in splits for record in source.read_split(split)]


def _csv(path: Path, **options) -> CsvSource:
    return CsvSource(CsvSource.Options(path=str(path), **options))


# CSV pieces that stress the boundaries: quoted line breaks, doubled quotes, a quote inside a
# plain field, blank lines, CRLF, a wrong field count, an undecodable byte
_CSV_RECORDS = st.lists(st.sampled_from([
    "1,a\n", "2,b\r\n", '3,"multi\nline"\n', '4,"say ""hi"""\n', '5,x"y\n', "\n", "6\n",
    '7,"a,b"\r\n', "8,\xe9t\xe9\n", '9,"two\r\nlines"\r\n', "10,\"\"\n",
]), max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=_CSV_RECORDS, target=st.integers(1, 60), last_newline=st.booleans(), tail=st.sampled_from(["", '11,"open']))
def test_csv_splits_read_as_the_whole_file(tmp_path, records, target, last_newline, tail):
    text = "id,name\n" + "".join(records)
    if not last_newline:
        text = text.rstrip("\r\n")
    path = tmp_path / "in.csv"
    path.write_bytes((text + tail).encode("utf-8"))
    source = _csv(path, schema={"id": "int"})
    whole = list(source.read())
    assert _split_read(source, target) == whole
    assert [r.index for r in whole] == list(range(len(whole)))


def test_csv_splits_cut_where_records_start_and_carry_index_and_line(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text('id,name\n0,a\n1,"x\ny"\n2,c\n3,d\n')
    splits = _csv(path).splits(4)
    assert [(s.first_index, s.first_line) for s in splits] == [(0, 2), (1, 3), (2, 5), (3, 6)]
    data = path.read_bytes()
    assert [data[s.start:s.end].decode() for s in splits] == ["0,a\n", '1,"x\ny"\n', "2,c\n", "3,d\n"]
    assert splits[-1].end is None


def test_a_lone_carriage_return_makes_the_file_one_split(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(b"id,name\r0,a\r1,b\r")
    source = _csv(path)
    assert source.splits(1) == [SourceSplit(str(path), 0, None, 0, 1)]
    assert [r.row for r in _split_read(source, 1)] == [{"id": "0", "name": "a"}, {"id": "1", "name": "b"}]


def test_an_encoding_whose_line_breaks_are_not_bytes_is_one_split(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes("id,name\n0,a\n1,b\n".encode("utf-16"))
    source = _csv(path, encoding="utf-16")
    assert len(source.splits(1)) == 1
    assert _split_read(source, 1) == list(source.read())


def test_a_glob_reads_files_in_path_order_and_indexes_run_on(tmp_path):
    for name, rows in (("b.csv", ["2,c"]), ("a.csv", ["0,a", "1,b"]), ("c.csv", [])):
        (tmp_path / name).write_text("id,name\n" + "".join(f"{r}\n" for r in rows))
    source = _csv(tmp_path / "*.csv")
    whole = list(source.read())
    assert [(r.index, r.row["name"]) for r in whole] == [(0, "a"), (1, "b"), (2, "c")]
    assert _split_read(source, 1) == whole
    assert {s.path for s in source.splits(1)} == {str(tmp_path / n) for n in ("a.csv", "b.csv", "c.csv")}


def test_a_glob_that_matches_nothing_is_an_empty_input(tmp_path):
    source = _csv(tmp_path / "*.csv")
    source.preflight()  # not refused: the run's summary warns of an empty input (tests/test_hostile_input.py)
    assert list(source.read()) == [] and source.splits(1) == [] and source.header() is None


def test_a_missing_file_is_refused_with_its_path(tmp_path):
    with pytest.raises(PluginError, match="does not exist"):
        _csv(tmp_path / "absent.csv").preflight()


_JSONL_LINES = st.lists(st.sampled_from([
    '{"a": 1}\n', "\n", "   \n", '{"a": 2}\r\n', "not json\n", "[1]\n", '{"a": "\u3000"}\n', "\u3000\n",
    '{"a": 1, "a": 2}\n',
]), max_size=40)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=_JSONL_LINES, target=st.integers(1, 50), bom=st.booleans())
def test_jsonl_splits_read_as_the_whole_file(tmp_path, lines, target, bom):
    path = tmp_path / "in.jsonl"
    path.write_bytes(("\ufeff" if bom else "").encode() + "".join(lines).encode("utf-8"))
    source = JsonlSource(JsonlSource.Options(path=str(path)))
    assert _split_read(source, target) == list(source.read())


def test_parquet_splits_are_whole_row_groups_with_their_first_index(tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(10))}), path, row_group_size=3)
    source = ParquetSource(ParquetSource.Options(path=str(path)))
    splits = source.splits(1)
    assert [(s.start, s.end, s.first_index) for s in splits] == [(0, 1, 0), (1, 2, 3), (2, 3, 6), (3, None, 9)]
    assert _split_read(source, 1) == list(source.read())
    assert [r.row["id"] for r in _split_read(source, 1)] == list(range(10))


def test_plan_counts_only_what_ends_records(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"a\n\nb\n")
    splits, after = plan_lines(str(path), 1, 5, record_end=lambda line: True, is_record=lambda line, number: bool(line.strip()))
    assert after == 7
    assert [(s.first_index, s.first_line) for s in splits] == [(5, 1), (6, 2), (6, 3)]
    assert json.dumps([s.start for s in splits]) == "[0, 2, 3]"


@pytest.mark.parametrize("pipeline", ["quickstart.yaml", "accounts.yaml"])
def test_a_split_source_leaves_the_same_landscape_as_one_read_whole(tmp_path, pipeline):
    settings = retarget(yaml.safe_load((REPO / "pipelines" / pipeline).read_text()), tmp_path / "out")
    whole = testing.run_for_test(settings, tmp_path, run_id="run-split", landscape=f"sqlite:///{tmp_path / 'whole.db'}")
    settings["source"]["split_bytes"] = 512
    split = testing.run_for_test(settings, tmp_path, run_id="run-split", landscape=f"sqlite:///{tmp_path / 'split.db'}")
    testing.assert_audit_complete(split)
    a, b = testing.snapshot(split.store), testing.snapshot(whole.store)
    assert a["rows"] and a["token_outcomes"]
    for table in a:
        if table not in ("runs", "nodes"):  # they record the settings, split_bytes included
            assert a[table] == b[table], table
