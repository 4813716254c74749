"""Hostile source files as Hypothesis strategies — CSV, JSON Lines and Parquet, each drawn with
the number of records it holds, counted by how the file was made — not by any reader.

What a user's file can do to a reader: bytes that are no UTF-8, a byte order mark, a field of
hundreds of kilobytes, NULs, CR-only line breaks inside quotes, formulas, ragged rows, repeated
and empty column names, thousands of columns, nesting deeper than parsers follow, integers past
2**53 and 2**64, numbers past double range, every spelling of NaN, an empty file, a header
only, no line break at the end. The counting rules are the sources' documented ones: a CSV
record is what its rendering made (a blank line too), a JSON Lines record a line that is not
blank (whitespace only), a Parquet record a row.
"""

from __future__ import annotations

import csv
import io
import json
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import strategies as st

from elspeth_beam import cli
from elspeth_beam.plugins.limits import lift_csv_field_limit


@dataclass(frozen=True)
class HostileFile:
    kind: str  # csv | jsonl | parquet
    data: bytes
    records: int  # as made, not as read
    columns: tuple[str, ...]  # names a pipeline may refer to

    def __repr__(self) -> str:  # Hypothesis prints failing examples: keep huge files readable
        shown = self.data[:300] + (b"..." if len(self.data) > 300 else b"")
        return f"HostileFile({self.kind!r}, records={self.records}, columns={self.columns!r}, {len(self.data)} bytes: {shown!r})"


NAMES = ["id", "amount", "name", "c", "", " ", "Amount", "a,b", 'q"uote', "ünï", "x\ny", "_error", "_raw"]
FORMULAS = ["=1+1", "+1", "-1", "@SUM(A1)", "=cmd|' /C calc'!A0"]
NUMBERS = ["0", "-0", "1.5", "1e400", "-1e400", "1e-400", str(2**53 + 1), str(2**64 + 1), "9" * 400,
           "NaN", "nan", "-nan", "Infinity", "-inf", "1_000", "0x10", " 7 ", "1,5"]
HUGE = [131_072, 131_073, 300_000]
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


def _huge() -> st.SearchStrategy[str]:
    return st.builds(lambda n, c: c * n, st.sampled_from(HUGE), st.sampled_from(["x", "é", ",", "\n"]))


def _field_text() -> st.SearchStrategy[str]:
    return st.one_of(TEXT, st.sampled_from(FORMULAS + NUMBERS + ["", "\x00", "a\rb", "a\r\nb", "\r", '"', "true"]),
                     _huge())


# ---- CSV -------------------------------------------------------------------------------------------

def _quoted(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _csv_field(value: str | bytes) -> bytes:
    """A field as bytes: quoted when it holds a delimiter, quote or line break (as a CSV writer
    would), raw otherwise — so the record boundaries are the ones the file was made with."""
    if isinstance(value, bytes):  # raw bytes, maybe no UTF-8
        special = any(c in value for c in b',"\r\n')
        return b'"' + value.replace(b'"', b'""') + b'"' if special else value
    special = any(c in value for c in ',"\r\n') or (value and value[0] in " ")
    return (_quoted(value) if special else value).encode("utf-8")


@st.composite
def csv_files(draw) -> HostileFile:
    wide = draw(st.integers(0, 19)) == 0
    if wide:
        names = [f"c{i}" for i in range(10_000)]
    else:
        names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=5, unique=draw(st.integers(0, 4)) > 0))
    field = st.one_of(_field_text(), st.binary(max_size=6))
    shape = draw(st.sampled_from(["rows"] * 8 + ["empty", "header"]))
    if shape == "empty":
        return HostileFile("csv", b"", 0, ())
    record = st.lists(field, min_size=max(0, len(names) - 1), max_size=len(names) + 1)
    records = [] if shape == "header" else draw(st.lists(
        record if not wide else st.just([str(i) for i in range(10_000)]), min_size=1, max_size=6))
    terminator = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    rendered = [b",".join(_csv_field(v) for v in record) for record in records]
    header = b",".join(_csv_field(n) for n in names)
    lines = [header, *rendered]
    data = terminator.join(lines)
    trailing = draw(st.booleans()) or (rendered and rendered[-1] == b"")  # a last blank record needs its break
    data += terminator if trailing else b""
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    return HostileFile("csv", data, len(records), tuple(dict.fromkeys(names)))


# ---- JSON Lines ----------------------------------------------------------------------------------

def _nested(depth: int) -> str:
    return '{"d":' * depth + "1" + "}" * depth


JSON_LITERALS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e999", str(2**53 + 1), str(2**64 + 1),
                 "-" + "9" * 30, "9" * 5000, "1E2", "-0.0", '"\\ud800"', '"\\u0000"', '"\\u2028"', "true", "null", "[]", "{}"]

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
              TEXT, st.sampled_from(FORMULAS)),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(TEXT, children, max_size=3)),
    max_leaves=8,
)


@st.composite
def _jsonl_line(draw) -> str | bytes:
    kind = draw(st.sampled_from(["object", "object", "literal", "deep", "huge", "broken", "bytes", "blank", "other"]))
    names = st.sampled_from(NAMES[:4] + ["", "d", "_error", "_error_node"])
    if kind == "object":
        return json.dumps(draw(st.dictionaries(names, json_values, max_size=4)), ensure_ascii=draw(st.booleans()))
    if kind == "literal":
        return "{" + f'"{draw(names)}": {draw(st.sampled_from(JSON_LITERALS))}' + "}"
    if kind == "deep":
        return '{"id": 1, "n": ' + _nested(draw(st.sampled_from([99, 100, 101, 5000]))) + "}"
    if kind == "huge":
        return json.dumps({"id": 1, "name": draw(_huge())})
    if kind == "broken":
        return draw(st.sampled_from(['{"a": 1', '{"a": 1, "a": 2}', "{'a': 1}", "[1, 2]", '"text"', "1", "null", "{]"]))
    if kind == "bytes":
        raw = draw(st.binary(min_size=1, max_size=8)).replace(b"\n", b"").replace(b"\r", b"")
        return b'{"name": "' + raw + b'"}'
    if kind == "blank":
        return draw(st.sampled_from(["", "   ", "\t", "\u3000", "\x1c"]))
    return draw(st.sampled_from(['{"": 1}', '{"a": {"": []}}', '{"id": 1, "n": []}', "{}"]))


def _jsonl_is_record(line: bytes, number: int) -> bool:
    """The source's rule: a line that is not blank (whitespace only) once decoded; line 1 without its BOM."""
    text = line.decode("utf-8", "surrogateescape")
    return bool((text.removeprefix("\ufeff") if number == 1 else text).strip())


@st.composite
def jsonl_files(draw) -> HostileFile:
    lines = [line if isinstance(line, bytes) else line.encode("utf-8", "surrogatepass")
             for line in draw(st.lists(_jsonl_line(), min_size=0 if draw(st.integers(0, 9)) == 0 else 1, max_size=8))]
    terminator = draw(st.sampled_from([b"\n", b"\r\n"]))
    data = terminator.join(lines) + (terminator if draw(st.booleans()) else b"")
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
        lines = [b"\xef\xbb\xbf" + lines[0], *lines[1:]] if lines else lines
    records = sum(_jsonl_is_record(line, n) for n, line in enumerate(lines, start=1))
    return HostileFile("jsonl", data, records, ("id", "amount", "name", "c"))


# ---- Parquet -------------------------------------------------------------------------------------

def _parquet_column(kind: str, rows: int, draw) -> pa.Array:
    ints = st.integers(-(2**63), 2**63 - 1)
    pick = lambda strategy: draw(st.lists(st.one_of(st.none(), strategy), min_size=rows, max_size=rows))  # noqa: E731
    if kind == "int64":
        return pa.array(pick(ints), pa.int64())
    if kind == "uint64":
        return pa.array(pick(st.integers(0, 2**64 - 1)), pa.uint64())
    if kind == "float64":
        return pa.array(pick(st.floats()), pa.float64())
    if kind == "float32":
        return pa.array(pick(st.floats(width=32)), pa.float32())
    if kind == "string":
        return pa.array(pick(st.one_of(TEXT, _huge(), st.sampled_from(FORMULAS + ["\x00"]))), pa.string())
    if kind == "binary":
        return pa.array(pick(st.binary(max_size=8)), pa.binary())
    if kind == "bool":
        return pa.array(pick(st.booleans()), pa.bool_())
    if kind == "timestamp_ns":
        return pa.array(pick(ints), pa.timestamp("ns"))
    if kind == "timestamp_tz":
        return pa.array(pick(st.integers(-(2**40), 2**40)), pa.timestamp("us", tz="Europe/Paris"))
    if kind == "date32":
        return pa.array(pick(st.integers(-(2**31), 2**31 - 1)), pa.date32())
    if kind == "decimal":
        return pa.array(pick(st.decimals(allow_nan=False, allow_infinity=False, places=4,
                                         min_value=-(10**20), max_value=10**20)), pa.decimal128(30, 4))
    if kind == "struct":
        return pa.array(pick(st.fixed_dictionaries({"x": st.floats(), "y": st.lists(st.integers(0, 9), max_size=3)})),
                        pa.struct([("x", pa.float64()), ("y", pa.list_(pa.int64()))]))
    if kind == "map":
        return pa.array(pick(st.lists(st.tuples(TEXT, st.integers(-5, 5)), max_size=2)), pa.map_(pa.string(), pa.int64()))
    if kind == "dictionary":
        return pa.array(pick(st.sampled_from(["a", "b"])), pa.string()).dictionary_encode()
    if kind == "duration":
        return pa.array(pick(st.integers(-(2**40), 2**40)), pa.duration("ms"))
    return pa.nulls(rows)


PARQUET_KINDS = ["int64", "uint64", "float64", "float32", "string", "binary", "bool", "timestamp_ns",
                 "timestamp_tz", "date32", "decimal", "struct", "map", "dictionary", "duration", "null"]


@st.composite
def parquet_files(draw) -> HostileFile:
    rows = draw(st.integers(0, 8) if draw(st.integers(0, 9)) == 0 else st.integers(1, 8))
    kinds = draw(st.lists(st.sampled_from(PARQUET_KINDS), min_size=1, max_size=4))
    names = draw(st.lists(st.sampled_from(NAMES[:5]), min_size=len(kinds), max_size=len(kinds),
                          unique=draw(st.integers(0, 4)) > 0))
    table = pa.Table.from_arrays([_parquet_column(k, rows, draw) for k in kinds], names=names)
    out = io.BytesIO()
    pq.write_table(table, out, row_group_size=draw(st.integers(1, 4)))
    return HostileFile("parquet", out.getvalue(), rows, tuple(dict.fromkeys(names)))


def hostile_files() -> st.SearchStrategy[HostileFile]:
    return st.one_of(csv_files(), jsonl_files(), parquet_files())


# ---- running the command, reading sinks back (independently of the sinks' own code) -----------------

def read_back(path: Path) -> list[dict[str, Any]]:
    """A sink's file as its format's documented reader sees it: JSON Lines split at ``\\n``
    only, CSV as text (an empty header: rows without fields), Parquet with its JSON columns
    (``elspeth_beam.encoding: json`` in a column's metadata) decoded."""
    if not path.exists():
        return []
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_bytes().decode("utf-8").split("\n") if line]
    if path.suffix == ".csv":
        lift_csv_field_limit()
        with path.open(newline="", encoding="utf-8") as handle:
            records = list(csv.reader(handle))
        header, body = (records[0], records[1:]) if records else ([], [])
        return [dict(zip(header, fields)) for fields in body] if header else [{} for _ in body]
    table = pq.read_table(path)
    columns = []
    for field, column in zip(table.schema, table.columns):
        values = column.to_pylist()
        if (field.metadata or {}).get(b"elspeth_beam.encoding") == b"json":
            values = [None if v is None else json.loads(v) for v in values]
        columns.append(values)
    return [dict(zip(table.column_names, values)) for values in zip(*columns)]


def run_cli(*args: str) -> tuple[int, str, str]:
    """The command in this process, as a user runs it; an exception escaping it fails the example."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(list(args))
    return code, out.getvalue(), err.getvalue()
