"""File sources: CSV, JSON Lines, Parquet.

A record that cannot be parsed or does not fit the declared schema is still yielded — with
its raw text and the reason — so the source node can quarantine it. Nothing is dropped, and
one bad record (an undecodable byte, an over-long field) never stops the records after it.
A file that cannot be read as a whole (a repeated column name, a bad header) is refused at
preflight, before the run starts.
"""

from __future__ import annotations

import base64
import codecs
import csv
import datetime as dt
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

from pydantic import Field, field_validator

from elspeth_beam.core.errors import PluginError, RowError
from elspeth_beam.plugins.base import PluginOptions, SourcePlugin, SourceRecord
from elspeth_beam.plugins.coercion import check_json_values, check_type_name, coerce_row, json_type_name
from elspeth_beam.plugins.limits import MAX_FIELD_CHARS, lift_csv_field_limit
from elspeth_beam.plugins.splits import SourceSplit, ascii_compatible, open_window, plan_lines, source_files

# Bytes the decoder could not read survive as these (errors="surrogateescape"): 0xDC00 + the byte.
_UNDECODABLE = re.compile("[\udc80-\udcff]")
_LINE_BREAK = re.compile("\r\n|\r|\n")
_BOM = "\ufeff"


class FileSourceOptions(PluginOptions):
    path: str = Field(description="the file, or a glob of files read in path order (relative to the working directory)")
    schema_: dict[str, str] = Field(default={}, alias="schema", description=(
        "field → type (str, int, float, bool, date, datetime; `?` = nullable): rows that do not "
        "coerce are validation failures"))

    @field_validator("schema_")
    @classmethod
    def _types_known(cls, schema: dict[str, str]) -> dict[str, str]:
        for type_name in schema.values():
            check_type_name(type_name)
        return schema


class TextSourceOptions(FileSourceOptions):
    encoding: str = Field(default="utf-8", description="the file's text encoding (e.g. utf-8, cp1252, latin-1)")

    @field_validator("encoding")
    @classmethod
    def _encoding_known(cls, encoding: str) -> str:
        try:
            "".encode(encoding)  # also refuses codecs that are not text encodings (base64)
        except LookupError:
            raise ValueError(f"unknown text encoding {encoding!r}; use e.g. utf-8, cp1252 or latin-1") from None
        return encoding


def _existing(path: str) -> str:
    if not Path(path).is_file():
        raise PluginError(f"source file {path!r} does not exist (relative paths are from {Path.cwd()})")
    return path


class _FileSource(SourcePlugin):
    """A source over one file or a glob of files (read in path order, indexes running on).
    Subclasses read a split (``_read``) and may plan splits of a file (``_plan``)."""

    Options = FileSourceOptions
    options: FileSourceOptions

    def preflight(self) -> None:
        self.files()

    def files(self) -> list[str]:
        """The files the source reads; refuses a missing file. A pattern that matches none is an
        empty input (the run's summary warns of it; ``run.allow_empty: false`` fails the run)."""
        return [_existing(path) for path in source_files(self.options.path)]

    def read(self) -> Iterator[SourceRecord]:
        index = 0
        for path in self.files():
            for record in self._read(SourceSplit(path, first_index=index)):
                index = record.index + 1
                yield record

    def splits(self, target_bytes: int) -> list[SourceSplit]:
        """Each file's splits, planned where records start (``plugins/splits.py``); a file that
        cannot be cut exactly is one split, its records counted by reading it."""
        splits: list[SourceSplit] = []
        index = 0
        for path in self.files():
            planned = self._plan(path, target_bytes, index)
            if planned is None:
                whole = SourceSplit(path, first_index=index)
                index += sum(1 for _ in self._read(whole))
                splits.append(whole)
            else:
                file_splits, index = planned
                splits.extend(file_splits)
        return splits

    def read_split(self, split: SourceSplit) -> Iterator[SourceRecord]:
        return self._read(split)

    def _read(self, split: SourceSplit) -> Iterator[SourceRecord]:
        raise NotImplementedError

    def _plan(self, path: str, target_bytes: int, first_index: int) -> tuple[list[SourceSplit], int] | None:
        return None

    def _record(self, index: int, raw: str, row: dict[str, Any]) -> SourceRecord:
        try:
            if self.options.schema_:
                row = coerce_row(row, self.options.schema_)
            self._check_values(row)
        except RowError as exc:
            return SourceRecord(index, raw, None, exc)
        return SourceRecord(index, raw, row)

    def _check_values(self, row: dict[str, Any]) -> None:
        """Values as parsed may have no canonical form (NaN); say which, in one line."""
        check_json_values(row)

    def _refuse_repeated(self, names: list[str], path: str) -> None:
        """A repeated column name would keep only one of its values: refuse the file."""
        repeated = [name for name, count in Counter(names).items() if count > 1]
        if repeated:
            first, second = [i + 1 for i, name in enumerate(names) if name == repeated[0]][:2]
            raise PluginError(
                f"source file {path!r} repeats column {repeated[0]!r} "
                f"(columns {first} and {second}); rename one so neither column's values are lost"
            )


class _TextSource(_FileSource):
    Options = TextSourceOptions
    options: TextSourceOptions

    def _open_text(self, split: SourceSplit, newline: str | None) -> TextIO:
        """Undecodable bytes are kept as escapes, so they fail only the record they are in."""
        return open_window(split, self.options.encoding, newline)

    def _splittable(self) -> bool:
        return ascii_compatible(self.options.encoding)

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
    delimiter: str = Field(default=",", description="the field separator")
    max_field_chars: int = Field(default=MAX_FIELD_CHARS, ge=1, description=(
        "a record with a longer field is quarantined (the reason names the field); a header "
        "with a longer name refuses the file"))


class _LineTape:
    """The file's lines as the csv reader takes them, kept until its record is done, so each
    record has its raw text and its first line number. Strips a byte order mark."""

    def __init__(self, lines: Iterable[str], count: int = 0) -> None:
        self._lines = iter(lines)
        self._taken: list[str] = []
        self.count = count  # lines taken so far (a split starts past the lines before it)

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


def _csv_record_ends(delimiter: str, encoding: str) -> Callable[[bytes], bool]:
    """For planning: whether a record ends with each line, in order (not inside a quoted
    field). Only a line with a quote, or one inside a quoted field, is looked at closely. A
    UTF-8 byte order mark is no character of the first field, as the reader strips it (else a
    quoted header after one reads as unquoted, and a line break in it as the header's end)."""
    state = _START
    first = codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")

    def record_end(line: bytes) -> bool:
        nonlocal state, first
        if first:
            line, first = line.removeprefix(_BOM.encode("utf-8")), False
        if state != _QUOTED and b'"' not in line:
            return True
        state = _csv_state(line.decode("latin-1"), delimiter, state)  # the ASCII bytes are what counts
        if state == _QUOTED:
            return False
        state = _START
        return True

    return record_end


class CsvSource(_TextSource):
    """CSV with a header row. A line with the wrong number of fields is malformed."""

    name = "csv"
    Options = CsvSourceOptions
    options: CsvSourceOptions

    def preflight(self) -> None:
        for path in self.files():
            self.header(path)

    def header(self, path: str | None = None) -> list[str] | None:
        """The column names of ``path`` (default: the first file) as ``read`` sees them (no byte
        order mark); None for an empty file. A header that cannot be decoded or repeats a name
        refuses the file (PluginError)."""
        path = path or next(iter(self.files()), None)
        if path is None:
            return None
        lift_csv_field_limit()
        with self._open_text(SourceSplit(path), newline="") as handle:
            tape = _LineTape(handle)
            return self._header(csv.reader(tape, delimiter=self.options.delimiter), tape, path)

    def _read(self, split: SourceSplit) -> Iterator[SourceRecord]:
        """A split past the header reads the header from its file's start."""
        header = None if split.start == 0 else self.header(split.path)
        lift_csv_field_limit()
        with self._open_text(split, newline="") as handle:
            tape = _LineTape(handle, split.first_line - 1)
            reader = csv.reader(tape, delimiter=self.options.delimiter)
            if split.start == 0:
                header = self._header(reader, tape, split.path)
            index = split.first_index
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

    def _plan(self, path: str, target_bytes: int, first_index: int) -> tuple[list[SourceSplit], int] | None:
        if not self._splittable():
            return None
        return plan_lines(path, target_bytes, first_index, record_end=_csv_record_ends(self.options.delimiter, self.options.encoding),
                          skip_records=1)

    def _header(self, reader: Iterator[list[str]], tape: _LineTape, path: str) -> list[str] | None:
        """The column names; a header that cannot be read refuses the whole file."""
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise PluginError(f"source file {path!r}: cannot read the header: {_csv_error(exc, 1)}") from None
        problem = self._undecodable(tape.take(), 1)
        if problem is not None:
            raise PluginError(f"source file {path!r}: the header cannot be read: {problem}")
        if header == []:
            raise PluginError(f"source file {path!r}: line 1, the header, is blank; the first line must name the columns")
        if header is not None:
            self._refuse_repeated(header, path)
            longest = max(map(len, header), default=0)
            if longest > self.options.max_field_chars:
                raise PluginError(f"source file {path!r}: a column name in the header is {longest} characters long, "
                                  f"over max_field_chars ({self.options.max_field_chars}); is line 1 the header?")
        return header

    def _csv_record(self, index: int, text: str, first_line: int, header: list[str], fields: list[str]) -> SourceRecord:
        raw = text.rstrip("\r\n")
        problem = self._undecodable(text, first_line)
        if problem is not None:
            return SourceRecord(index, _visible(raw), None, problem)
        if len(fields) != len(header):
            return SourceRecord(index, raw, None, f"malformed CSV line: expected {len(header)} fields, got {len(fields)}")
        if fields and max(map(len, fields)) > self.options.max_field_chars:
            return SourceRecord(index, raw, None, self._too_long(first_line, header, fields))
        return self._record(index, raw, dict(zip(header, fields)))

    def _too_long(self, line: int, header: list[str], fields: list[str]) -> str:
        position = max(range(len(fields)), key=lambda i: len(fields[i]))
        return (f"line {line}: field {header[position]!r} is {len(fields[position])} characters long, over the "
                f"source's max_field_chars ({self.options.max_field_chars})")

    def _check_values(self, row: dict[str, Any]) -> None:
        """CSV values are decoded text, and coercion yields canonical values: nothing to check."""


def _csv_error(exc: csv.Error, line: int) -> str:
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


def _line_text(line: str, line_number: int) -> str:
    """A JSON Lines line without its line break (and the file's byte order mark, on line 1)."""
    raw = line.rstrip("\r\n")
    return raw.removeprefix(_BOM) if line_number == 1 else raw


class JsonlSource(_TextSource):
    """One JSON object per line; blank lines are skipped (they are not records)."""

    name = "jsonl"

    def _read(self, split: SourceSplit) -> Iterator[SourceRecord]:
        with self._open_text(split, newline=None) as handle:
            index = split.first_index
            for line_number, line in enumerate(handle, start=split.first_line):
                raw = _line_text(line, line_number)
                if not raw.strip():
                    continue
                yield self._jsonl_record(index, raw, line_number)
                index += 1

    def _plan(self, path: str, target_bytes: int, first_index: int) -> tuple[list[SourceSplit], int] | None:
        if not self._splittable():
            return None
        encoding = self.options.encoding

        def is_record(line: bytes, number: int) -> bool:  # as _read decides: not blank
            return bool(line.strip()) and bool(_line_text(line.decode(encoding, "surrogateescape"), number).strip())

        return plan_lines(path, target_bytes, first_index, record_end=lambda line: True, is_record=is_record)

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
        except RecursionError:
            return SourceRecord(index, raw, None, "malformed JSON: nested deeper than the JSON parser can follow")
        except ValueError as exc:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
            return SourceRecord(index, raw, None, f"malformed JSON: {str(exc).split(';')[0]}")
        if not isinstance(value, dict):
            return SourceRecord(index, raw, None, f"a JSON Lines record must be an object, got {json_type_name(value)}")
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


def _batch_rows(batch: Any) -> Iterator[tuple[dict[str, Any], str | None]]:
    """A record batch's rows as Python values, each with None or why it cannot be read. Arrow
    converts a whole batch at once; a value Python cannot hold (a nanosecond that is no whole
    microsecond, a date past year 9999) fails it, so that batch is read value by value."""
    import pyarrow as pa

    try:
        yield from ((row, None) for row in batch.to_pylist())
        return
    except (pa.ArrowException, ValueError, OverflowError):
        pass
    for i in range(batch.num_rows):
        row: dict[str, Any] = {}
        problem = None
        for name, column in zip(batch.schema.names, batch.columns):
            try:
                row[name] = _scalar_value(column[i])
            except (pa.ArrowException, ValueError, OverflowError) as exc:
                row[name] = None
                problem = problem or f"field {name!r} cannot be read as a JSON value: {exc}"
        yield row, problem


def _scalar_value(scalar: Any) -> Any:
    """``scalar.as_py()``, but a timestamp as ISO 8601 text at its own precision (nanoseconds
    included), the form ``_json_native`` gives a whole-microsecond one."""
    import pyarrow as pa

    if not pa.types.is_timestamp(scalar.type) or not scalar.is_valid:
        return scalar.as_py()
    per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[scalar.type.unit]
    seconds, fraction = divmod(scalar.value, per_second)
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=seconds)
    digits = f"{fraction * 10**9 // per_second:09d}"
    digits = digits[:6] if digits.endswith("000") else digits
    text = moment.isoformat().replace("+00:00", "")
    return text + ("" if fraction == 0 else f".{digits}") + "Z"


class ParquetSource(_FileSource):
    """Parquet; each row is a record, a file splits at row groups."""

    name = "parquet"

    def preflight(self) -> None:
        for path in self.files():
            self._refuse_repeated(self._parquet(path).schema_arrow.names, path)

    def _parquet(self, path: str) -> Any:
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(_existing(path))
        except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
            raise PluginError(f"cannot read Parquet file {path!r}: {exc}") from None

    def _read(self, split: SourceSplit) -> Iterator[SourceRecord]:
        parquet = self._parquet(split.path)
        self._refuse_repeated(parquet.schema_arrow.names, split.path)
        groups = range(split.start, parquet.num_row_groups if split.end is None else split.end)
        index = split.first_index
        for batch in parquet.iter_batches(batch_size=4096, row_groups=list(groups)):
            for row, problem in _batch_rows(batch):
                native = {k: _json_native(v) for k, v in row.items()}
                yield self._record(index, repr(native), native) if problem is None else SourceRecord(index, repr(native), None, problem)
                index += 1

    def _plan(self, path: str, target_bytes: int, first_index: int) -> tuple[list[SourceSplit], int] | None:
        """Splits of whole row groups, from the file's metadata alone."""
        meta = self._parquet(path).metadata
        splits: list[SourceSplit] = []
        start, start_index, size, index = 0, first_index, 0, first_index
        for group in range(meta.num_row_groups):
            size += meta.row_group(group).total_byte_size
            index += meta.row_group(group).num_rows
            if size >= target_bytes and group + 1 < meta.num_row_groups:
                splits.append(SourceSplit(path, start, group + 1, start_index))
                start, start_index, size = group + 1, index, 0
        splits.append(SourceSplit(path, start, None, start_index))
        return splits, index
