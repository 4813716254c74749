"""File sinks: CSV, JSON Lines, Parquet.

A sink writes one *part* per bundle (durably: temp name, fsync, atomic rename) and, when the
run ends, merges the parts the Landscape recorded into the file the user asked for.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from elspeth_beam.plugins.base import PluginOptions, SinkPlugin


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
        rows: list[dict[str, Any]] = []
        for part in parts:
            with part.open(newline="", encoding="utf-8") as handle:
                rows.extend(csv.DictReader(handle))
        self.write_part(rows, target)


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


class ParquetSink(SinkPlugin):
    """A Parquet file; columns as for csv, types as pyarrow infers them."""

    name = "parquet"
    extension: ClassVar[str] = "parquet"
    Options = FileSinkOptions

    def write_part(self, rows: list[dict[str, Any]], target: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = _columns(rows)
        table = pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows])
        durable_write(target, lambda tmp: pq.write_table(table, tmp))

    def merge(self, parts: list[Path], target: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = [pq.read_table(p) for p in parts]
        merged = pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})
        merged = merged.select(_columns([dict.fromkeys(t.column_names) for t in tables]))
        durable_write(target, lambda tmp: pq.write_table(merged, tmp))
