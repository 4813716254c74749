"""File sources: CSV, JSON Lines, Parquet.

A record that cannot be parsed or does not fit the declared schema is still yielded — with
its raw text and the reason — so the source node can quarantine it. Nothing is dropped.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from elspeth_beam.core.errors import PluginError, RowError
from elspeth_beam.plugins.base import PluginOptions, SourcePlugin, SourceRecord
from elspeth_beam.plugins.coercion import check_type_name, coerce_row


class FileSourceOptions(PluginOptions):
    path: str
    schema_: dict[str, str] = Field(default={}, alias="schema")

    @field_validator("schema_")
    @classmethod
    def _types_known(cls, schema: dict[str, str]) -> dict[str, str]:
        for type_name in schema.values():
            check_type_name(type_name)
        return schema


class _FileSource(SourcePlugin):
    Options = FileSourceOptions
    options: FileSourceOptions

    def preflight(self) -> None:
        self._open_path()

    def _open_path(self) -> Path:
        path = Path(self.options.path)
        if not path.is_file():
            raise PluginError(f"source file {str(path)!r} does not exist (relative paths are from {Path.cwd()})")
        return path

    def _record(self, index: int, raw: str, row: dict[str, Any]) -> SourceRecord:
        try:
            return SourceRecord(index, raw, coerce_row(row, self.options.schema_) if self.options.schema_ else row)
        except RowError as exc:
            return SourceRecord(index, raw, None, str(exc))


class CsvSourceOptions(FileSourceOptions):
    delimiter: str = ","
    encoding: str = "utf-8"


class CsvSource(_FileSource):
    """CSV with a header row. A line with the wrong number of fields is malformed."""

    name = "csv"
    Options = CsvSourceOptions
    options: CsvSourceOptions

    def read(self) -> Iterator[SourceRecord]:
        with self._open_path().open(newline="", encoding=self.options.encoding) as handle:
            consumed: list[str] = []

            def lines() -> Iterator[str]:
                for line in handle:
                    consumed.append(line)
                    yield line

            reader = csv.reader(lines(), delimiter=self.options.delimiter)
            header = next(reader, None)
            if header is None:
                return
            consumed.clear()
            for index, fields in enumerate(reader):
                raw = "".join(consumed).rstrip("\r\n")
                consumed.clear()
                if len(fields) != len(header):
                    yield SourceRecord(
                        index, raw, None, f"malformed CSV line: expected {len(header)} fields, got {len(fields)}"
                    )
                    continue
                yield self._record(index, raw, dict(zip(header, fields)))


class JsonlSource(_FileSource):
    """One JSON object per line; blank lines are skipped (they are not records)."""

    name = "jsonl"

    def read(self) -> Iterator[SourceRecord]:
        with self._open_path().open(encoding="utf-8") as handle:
            index = 0
            for line in handle:
                raw = line.rstrip("\r\n")
                if not raw.strip():
                    continue
                try:
                    value = json.loads(raw)
                except json.JSONDecodeError as exc:
                    yield SourceRecord(index, raw, None, f"malformed JSON: {exc.msg} at column {exc.colno}")
                else:
                    if isinstance(value, dict):
                        yield self._record(index, raw, value)
                    else:
                        yield SourceRecord(index, raw, None, f"a JSON Lines record must be an object, got {type(value).__name__}")
                index += 1


def _json_native(value: Any) -> Any:
    """Arrow values as JSON types: timestamps/dates as ISO strings, Decimal as str, bytes base64."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {k: _json_native(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_native(v) for v in value]
    return value


class ParquetSource(_FileSource):
    name = "parquet"

    def read(self) -> Iterator[SourceRecord]:
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(self._open_path())
        except PluginError:
            raise
        except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
            raise PluginError(f"cannot read Parquet file {self.options.path!r}: {exc}") from None
        index = 0
        for batch in parquet.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                native = {k: _json_native(v) for k, v in row.items()}
                yield self._record(index, repr(native), native)
                index += 1
