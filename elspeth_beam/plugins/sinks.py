"""File sinks: CSV, JSON Lines, Parquet.

A sink writes one *part* per bundle (durably: temp name, fsync, atomic rename) and, when the
run ends, merges the parts the Landscape recorded into the file the user asked for. Whatever a
row held, what a sink wrote it reads back (``read_rows``): the merge reads parts back with the
sink's own reader, never with a library default a row can exceed (the csv module's field
limit), and a Parquet column whose values share no Arrow type holds them as JSON text.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import shutil
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from elspeth_beam.core.errors import PluginError
from elspeth_beam.plugins.base import PluginOptions, SinkPlugin
from elspeth_beam.plugins.limits import lift_csv_field_limit


class FileSinkOptions(PluginOptions):
    path: str = Field(description="the file to write (its parts go to <path>.parts/<run id>/ until the run's merge)")


def temp_name(target: Path) -> Path:
    """Where ``durable_write`` writes ``target`` before the rename (hidden, per process)."""
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


def leftover_temps(folder: Path, of: str | None = None) -> list[Path]:
    """Temp files in ``folder`` (of the file named ``of``, else of any) that killed writers left."""
    pattern = "*" if of is None else glob.escape(of)
    return sorted(folder.glob(f".{pattern}.tmp-*")) if folder.is_dir() else []


def durable_write(target: Path, write: Any) -> None:
    """Write via ``write(tmp_path)`` to a temp name, fsync, then atomically rename to ``target``.

    A write that raises removes its temp file; one a kill interrupts leaves it, for the
    run's merge to remove (``leftover_temps``) — ``target`` is only ever whole or absent."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(target)
    try:
        write(tmp)
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    """The file's columns: the rows' own order when every row lists the same keys, else sorted.

    Arrival order must not decide a header (runners bundle and order rows differently), and
    the rule holds through merging: parts that agree keep their order, parts that differ sort."""
    orders = {tuple(row) for row in rows}
    if len(orders) == 1:
        return list(orders.pop())
    return sorted({key for order in orders for key in order})


def _first_line(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.readline()


def _cell(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


class CsvSink(SinkPlugin):
    """A CSV file with a header: the rows' own column order when all rows agree, else sorted."""

    name = "csv"
    extension: ClassVar[str] = "csv"
    Options = FileSinkOptions

    def write_part(self, rows: list[dict[str, Any]], target: Path) -> None:
        def write(tmp: Path) -> None:
            with tmp.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=_columns(rows))
                writer.writeheader()
                writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)

        durable_write(target, write)

    def merge(self, parts: list[Path], target: Path) -> None:
        """Parts with one plain header (no quotes, so one line) are concatenated below it;
        others are read back and written again as one part of all their rows would be."""
        headers = {_first_line(part) for part in parts}
        if len(headers) == 1 and b'"' not in (header := headers.pop()) and header.endswith(b"\r\n"):
            def write(tmp: Path) -> None:
                with tmp.open("wb") as out:
                    out.write(header)
                    for part in parts:
                        with part.open("rb") as handle:
                            handle.readline()
                            shutil.copyfileobj(handle, out)

            durable_write(target, write)
            return
        self.write_part([row for part in parts for row in self.read_rows(part)], target)

    @staticmethod
    def read_rows(path: Path) -> list[dict[str, str]]:
        """The rows of a file this sink wrote, every value as text (a missing value as '').
        A file whose header is empty holds rows without fields, one blank line each."""
        lift_csv_field_limit()
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                return []
            if not header:
                return [{} for _ in reader]
            return [dict(zip(header, fields)) for fields in reader if fields]


class JsonlSink(SinkPlugin):
    """One JSON object per line, each row with its own keys."""

    name = "jsonl"
    extension: ClassVar[str] = "jsonl"
    Options = FileSinkOptions

    def write_part(self, rows: list[dict[str, Any]], target: Path) -> None:
        def write(tmp: Path) -> None:
            with tmp.open("w", encoding="utf-8") as handle:
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")

        durable_write(target, write)

    def merge(self, parts: list[Path], target: Path) -> None:
        def write(tmp: Path) -> None:
            with tmp.open("wb") as out:
                for part in parts:
                    out.write(part.read_bytes())

        durable_write(target, write)

    @staticmethod
    def read_rows(path: Path) -> list[dict[str, Any]]:
        """The rows of a file this sink wrote. Lines end at ``\n`` only: a string may hold
        U+2028 or U+0085 unescaped, which ``str.splitlines`` would take for line breaks."""
        with path.open(encoding="utf-8", newline="\n") as handle:
            return [json.loads(line) for line in handle if line.strip()]


JSON_COLUMN = {b"elspeth_beam.encoding": b"json"}
"""Field metadata of a Parquet column that holds its values as JSON text: values of several
types (a number here, text there), nested objects and arrays, integers beyond int64."""
_INT64 = (-(2**63), 2**63 - 1)
_EXACT_IN_DOUBLE = 2**53


def _arrow_type(values: list[Any]) -> Any:
    """The Arrow type that holds every value exactly, or None if only JSON text does."""
    import pyarrow as pa

    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return pa.null()
    if kinds == {str}:
        return pa.string()
    if kinds == {bool}:
        return pa.bool_()
    if kinds <= {int, float}:
        ints = [v for v in values if type(v) is int]
        if kinds == {int} and _INT64[0] <= min(ints) and max(ints) <= _INT64[1]:
            return pa.int64()
        if all(abs(v) <= _EXACT_IN_DOUBLE for v in ints):  # ints with floats: doubles, if exact
            return pa.float64()
    return None


def _arrow_column(name: str, values: list[Any]) -> tuple[Any, Any]:
    import pyarrow as pa

    arrow_type = _arrow_type(values)
    if arrow_type is not None:
        return pa.field(name, arrow_type), pa.array(values, arrow_type)
    text = [None if v is None else json.dumps(v, ensure_ascii=False, allow_nan=False) for v in values]
    return pa.field(name, pa.string(), metadata=JSON_COLUMN), pa.array(text, pa.string())


class ParquetSink(SinkPlugin):
    """A Parquet file; columns as for csv. A column is int64, double, bool or string when its
    values share that type exactly (ints with floats: double, if every int is exact in one),
    else JSON text marked in the column's metadata (``JSON_COLUMN``); a field a row lacks is
    null. Parquet cannot hold a row without fields, so a part of only such rows is refused."""

    name = "parquet"
    extension: ClassVar[str] = "parquet"
    Options = FileSinkOptions

    def write_part(self, rows: list[dict[str, Any]], target: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = _columns(rows)
        if rows and not columns:
            raise PluginError(f"a Parquet file cannot hold rows without fields ({len(rows)} such rows for "
                              f"{self.path()}): give them a field, or send them to a csv or jsonl sink")
        fields, arrays = zip(*(_arrow_column(c, [row.get(c) for row in rows]) for c in columns)) if columns else ((), ())
        table = pa.Table.from_arrays(list(arrays), schema=pa.schema(list(fields)))
        durable_write(target, lambda tmp: pq.write_table(table, tmp))

    def merge(self, parts: list[Path], target: Path) -> None:
        """Parts of one schema are concatenated as tables; others are read back and written
        again as one part of all their rows would be."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        schemas = [pq.read_schema(part) for part in parts]
        if schemas and all(schema.equals(schemas[0], check_metadata=True) for schema in schemas):
            merged = pa.concat_tables([pq.read_table(part, schema=schemas[0]) for part in parts])
            durable_write(target, lambda tmp: pq.write_table(merged, tmp))
            return
        self.write_part([row for part in parts for row in self.read_rows(part)], target)

    @staticmethod
    def read_rows(path: Path) -> list[dict[str, Any]]:
        """The rows of a file this sink wrote, JSON text columns decoded."""
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        columns = []
        for field, column in zip(table.schema, table.columns):
            values = column.to_pylist()
            if field.metadata == JSON_COLUMN:
                values = [None if v is None else json.loads(v) for v in values]
            columns.append(values)
        return [dict(zip(table.column_names, values)) for values in zip(*columns)]
