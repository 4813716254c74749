"""File sources: CSV, JSON Lines, Parquet.

A record that cannot be parsed or does not fit the declared schema is still yielded — with
its raw text and the reason — so the source node can quarantine it. Nothing is dropped, and
one bad record (an undecodable byte, an over-long field) never stops the records after it.
A file that cannot be read as a whole (a repeated column name, a bad header) is refused at
preflight, before the run starts.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

from pydantic import Field, field_validator

from elspeth_beam.core.errors import PluginError, RowError
from elspeth_beam.plugins.base import PluginOptions, SourcePlugin, SourceRecord
from elspeth_beam.plugins.coercion import check_json_values, check_type_name, coerce_row

# Bytes the decoder could not read survive as these (errors="surrogateescape"): 0xDC00 + the byte.
_UNDECODABLE = re.compile("[\udc80-\udcff]")
_LINE_BREAK = re.compile("\r\n|\r|\n")
_BOM = "\ufeff"


class FileSourceOptions(PluginOptions):
    path: str
    schema_: dict[str, str] = Field(default={}, alias="schema")

    @field_validator("schema_")
    @classmethod
    def _types_known(cls, schema: dict[str, str]) -> dict[str, str]:
        for type_name in schema.values():
            check_type_name(type_name)
        return schema


class TextSourceOptions(FileSourceOptions):
    encoding: str = "utf-8"

    @field_validator("encoding")
    @classmethod
    def _encoding_known(cls, encoding: str) -> str:
        try:
            "".encode(encoding)  # also refuses codecs that are not text encodings (base64)
        except LookupError:
            raise ValueError(f"unknown text encoding {encoding!r}; use e.g. utf-8, cp1252 or latin-1") from None
        return encoding


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
            if self.options.schema_:
                row = coerce_row(row, self.options.schema_)
            self._check_values(row)
        except RowError as exc:
            return SourceRecord(index, raw, None, str(exc))
        return SourceRecord(index, raw, row)

    def _check_values(self, row: dict[str, Any]) -> None:
        """Values as parsed may have no canonical form (NaN); say which, in one line."""
        check_json_values(row)

    def _refuse_repeated(self, names: list[str]) -> None:
        """A repeated column name would keep only one of its values: refuse the file."""
        repeated = [name for name, count in Counter(names).items() if count > 1]
        if repeated:
            first, second = [i + 1 for i, name in enumerate(names) if name == repeated[0]][:2]
            raise PluginError(
                f"source file {self.options.path!r} repeats column {repeated[0]!r} "
                f"(columns {first} and {second}); rename one so neither column's values are lost"
            )


class _TextSource(_FileSource):
    Options = TextSourceOptions
    options: TextSourceOptions

    def _open_text(self, newline: str | None) -> TextIO:
        """Undecodable bytes are kept as escapes, so they fail only the record they are in."""
        return self._open_path().open(encoding=self.options.encoding, errors="surrogateescape", newline=newline)

    def _undecodable(self, text: str, first_line: int) -> str | None:
        """Why ``text`` (starting at line ``first_line``) cannot be decoded, or None if it can."""
        found = None if text.isascii() else _UNDECODABLE.search(text)
        if found is None:
            return None
        line = first_line + len(_LINE_BREAK.findall(text, 0, found.start()))
        byte = ord(found.group()) - 0xDC00
        return (f"line {line}: byte 0x{byte:02x} is not valid {self.options.encoding}; set the source's "
                "encoding option to the file's encoding (e.g. encoding: cp1252)")


def _visible(text: str) -> str:
    """``text`` with each undecodable byte written as ``\\xNN``: the raw record, storable as text."""
    if text.isascii():
        return text
    return _UNDECODABLE.sub(lambda found: f"\\x{ord(found.group()) - 0xDC00:02x}", text)


class CsvSourceOptions(TextSourceOptions):
    delimiter: str = ","


class _LineTape:
    """The file's lines as the csv reader takes them, kept until its record is done, so each
    record has its raw text and its first line number. Strips a byte order mark."""

    def __init__(self, lines: Iterable[str]) -> None:
        self._lines = iter(lines)
        self._taken: list[str] = []
        self.count = 0  # lines taken so far

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        if self.count == 0:
            line = line.removeprefix(_BOM)
        self.count += 1
        self._taken.append(line)
        return line

    def take(self) -> str:
        """The text of the record just read."""
        text = "".join(self._taken)
        self._taken.clear()
        return text

    def finish_record(self, delimiter: str) -> None:
        """After a csv error mid-record: take the rest of a quoted field that spans lines, so
        the next record starts where the csv module would have started it."""
        state = _csv_state("".join(self._taken), delimiter)
        while state == _QUOTED:
            line = next(self, None)
            if line is None:
                return
            state = _csv_state(line, delimiter, state)


_START, _PLAIN, _QUOTED, _QUOTE_IN_QUOTED = range(4)


def _csv_state(text: str, delimiter: str, state: int = _START) -> int:
    """The csv module's parser state after ``text`` (default dialect): a quote opens a quoted
    field only at a field's start; inside one, a doubled quote is a quote."""
    for char in text:
        if state == _QUOTED:
            if char == '"':
                state = _QUOTE_IN_QUOTED
        elif state == _QUOTE_IN_QUOTED:
            state = _QUOTED if char == '"' else _START if char == delimiter or char in "\r\n" else _PLAIN
        elif char == delimiter or char in "\r\n":
            state = _START
        else:
            state = _QUOTED if state == _START and char == '"' else _PLAIN
    return state


class CsvSource(_TextSource):
    """CSV with a header row. A line with the wrong number of fields is malformed."""

    name = "csv"
    Options = CsvSourceOptions
    options: CsvSourceOptions

    def preflight(self) -> None:
        self.header()

    def header(self) -> list[str] | None:
        """The column names as ``read`` sees them (no byte order mark); None for an empty file.
        A header that cannot be decoded or repeats a name refuses the file (PluginError)."""
        with self._open_text(newline="") as handle:
            tape = _LineTape(handle)
            return self._header(csv.reader(tape, delimiter=self.options.delimiter), tape)

    def read(self) -> Iterator[SourceRecord]:
        with self._open_text(newline="") as handle:
            tape = _LineTape(handle)
            reader = csv.reader(tape, delimiter=self.options.delimiter)
            header = self._header(reader, tape)
            index = 0
            while header is not None:
                first_line = tape.count + 1
                try:
                    fields = next(reader, None)
                except csv.Error as exc:
                    tape.finish_record(self.options.delimiter)
                    yield SourceRecord(index, _visible(tape.take().rstrip("\r\n")), None, _csv_error(exc, first_line))
                else:
                    if fields is None:
                        return
                    yield self._csv_record(index, tape.take(), first_line, header, fields)
                index += 1

    def _header(self, reader: Iterator[list[str]], tape: _LineTape) -> list[str] | None:
        """The column names; a header that cannot be read refuses the whole file."""
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise PluginError(f"source file {self.options.path!r}: cannot read the header: {_csv_error(exc, 1)}") from None
        problem = self._undecodable(tape.take(), 1)
        if problem is not None:
            raise PluginError(f"source file {self.options.path!r}: the header cannot be read: {problem}")
        if header is not None:
            self._refuse_repeated(header)
        return header

    def _csv_record(self, index: int, text: str, first_line: int, header: list[str], fields: list[str]) -> SourceRecord:
        raw = text.rstrip("\r\n")
        problem = self._undecodable(text, first_line)
        if problem is not None:
            return SourceRecord(index, _visible(raw), None, problem)
        if len(fields) != len(header):
            return SourceRecord(index, raw, None, f"malformed CSV line: expected {len(header)} fields, got {len(fields)}")
        return self._record(index, raw, dict(zip(header, fields)))

    def _check_values(self, row: dict[str, Any]) -> None:
        """CSV values are decoded text, and coercion yields canonical values: nothing to check."""


def _csv_error(exc: csv.Error, line: int) -> str:
    if "field larger than field limit" in str(exc):
        return f"line {line}: a field is longer than the csv module's limit of {csv.field_size_limit()} characters"
    return f"line {line}: malformed CSV: {exc}"


class _RepeatedKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object hook for json: a repeated key would silently keep only its last value."""
    out = dict(pairs)
    if len(out) != len(pairs):
        key = next(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
        raise _RepeatedKey(f"key {key!r} appears twice in one object; rename one so neither value is lost")
    return out


class JsonlSource(_TextSource):
    """One JSON object per line; blank lines are skipped (they are not records)."""

    name = "jsonl"

    def read(self) -> Iterator[SourceRecord]:
        with self._open_text(newline=None) as handle:
            index = 0
            for line_number, line in enumerate(handle, start=1):
                raw = line.rstrip("\r\n").removeprefix(_BOM) if line_number == 1 else line.rstrip("\r\n")
                if not raw.strip():
                    continue
                yield self._jsonl_record(index, raw, line_number)
                index += 1

    def _jsonl_record(self, index: int, raw: str, line_number: int) -> SourceRecord:
        problem = self._undecodable(raw, line_number)
        if problem is not None:
            return SourceRecord(index, _visible(raw), None, problem)
        try:
            value = json.loads(raw, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            return SourceRecord(index, raw, None, f"malformed JSON: {exc.msg} at column {exc.colno}")
        except _RepeatedKey as exc:
            return SourceRecord(index, raw, None, str(exc))
        if not isinstance(value, dict):
            return SourceRecord(index, raw, None, f"a JSON Lines record must be an object, got {type(value).__name__}")
        return self._record(index, raw, value)


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
    if isinstance(value, (list, tuple)):  # a map column's entries come as (key, value) tuples
        return [_json_native(v) for v in value]
    return value


class ParquetSource(_FileSource):
    name = "parquet"

    def preflight(self) -> None:
        self._refuse_repeated(self._parquet().schema_arrow.names)

    def _parquet(self) -> Any:
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(self._open_path())
        except PluginError:
            raise
        except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
            raise PluginError(f"cannot read Parquet file {self.options.path!r}: {exc}") from None

    def read(self) -> Iterator[SourceRecord]:
        parquet = self._parquet()
        self._refuse_repeated(parquet.schema_arrow.names)
        index = 0
        for batch in parquet.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                native = {k: _json_native(v) for k, v in row.items()}
                yield self._record(index, repr(native), native)
                index += 1
