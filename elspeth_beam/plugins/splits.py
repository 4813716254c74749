"""Source splits: parts of a source that workers read in parallel, each row keeping its index.

A row's identity is its index in the source (files in path order, records in file order), and
users look rows up by it months later, so a split must know the index of its first record:
splits are planned where records start, by one pass over the file's bytes. The pass is cheap
(binary line iteration; only lines holding a quote are examined character by character, for
CSV's quoted line breaks); the parse, the coercion, the hashing and the audit then run per
split, wherever the runner sends it. The same file gives the same splits on every run, and
however it is split, the same rows.

A file whose line breaks the pass cannot count exactly as the reader does (a lone carriage
return, which the reader takes as a line break) is one split: slower, never wrong.
"""

from __future__ import annotations

import glob
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SPLIT_BYTES = 64 * 1024 * 1024
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class SourceSplit:
    """Records ``[start, end)`` of one file: byte offsets for text files, row groups for Parquet."""

    path: str
    start: int = 0
    end: int | None = None  # None: to the end of the file
    first_index: int = 0  # the row index of the split's first record
    first_line: int = 1  # the line its first record starts on (text files)


def source_files(pattern: str) -> list[str]:
    """The files a source's ``path`` names: itself, or a glob's matches in path order."""
    if _GLOB_CHARS.isdisjoint(pattern):
        return [pattern]
    return sorted(p for p in glob.glob(pattern, recursive=True) if Path(p).is_file())


def ascii_compatible(encoding: str) -> bool:
    """Whether line breaks, quotes and delimiters are single ASCII bytes in ``encoding`` (so
    the byte pass finds the record boundaries the decoder would)."""
    probe = '\n\r",;\t|'
    try:
        return probe.encode(encoding) == probe.encode("ascii")
    except (LookupError, UnicodeError):
        return False


@dataclass
class _Plan:
    path: str
    target: int
    splits: list[SourceSplit]
    index: int  # the next record's index
    start: int = 0
    start_index: int = -1  # set from index
    start_line: int = 1

    def __post_init__(self) -> None:
        self.start_index = self.index

    def boundary(self, offset: int, line: int) -> None:
        """A record starts at ``offset`` (on ``line``): cut a split there if this one is big enough."""
        if offset - self.start >= self.target:
            self.splits.append(SourceSplit(self.path, self.start, offset, self.start_index, self.start_line))
            self.start, self.start_index, self.start_line = offset, self.index, line

    def close(self, size: int) -> list[SourceSplit]:
        """The last split runs to the end of the file (none is left empty at its end)."""
        if self.start < size or not self.splits:
            self.splits.append(SourceSplit(self.path, self.start, None, self.start_index, self.start_line))
        else:
            last = self.splits.pop()
            self.splits.append(SourceSplit(last.path, last.start, None, last.first_index, last.first_line))
        return self.splits


def _lone_carriage_return(line: bytes) -> bool:
    core = line[:-1] if line.endswith(b"\n") else line
    core = core[:-1] if core.endswith(b"\r") else core
    return b"\r" in core


def plan_lines(
    path: str,
    target: int,
    first_index: int,
    *,
    record_end: Callable[[bytes], bool],
    is_record: Callable[[bytes, int], bool] = lambda line, number: True,
    skip_records: int = 0,
) -> tuple[list[SourceSplit], int] | None:
    """Splits of a line-based file of at least ``target`` bytes each, cut where a record starts,
    and the index after its last record; None if the file cannot be cut exactly (a lone
    carriage return). ``record_end(line)`` says whether a record ends with this line (CSV: not
    inside a quoted field); ``is_record(line, number)`` whether a line that ends one is a
    record (JSON Lines: not blank); the first ``skip_records`` (a header) are no rows."""
    plan = _Plan(path, target, [], first_index)
    offset, line_number, skipped, pending = 0, 0, 0, False
    with open(path, "rb") as handle:
        for line in handle:
            line_number += 1
            offset += len(line)
            if b"\r" in line and _lone_carriage_return(line):
                return None
            pending = not record_end(line)
            if pending:
                continue
            if skipped < skip_records:
                skipped += 1
                plan.start, plan.start_line = offset, line_number + 1
                continue
            if is_record(line, line_number):
                plan.index += 1
            plan.boundary(offset, line_number + 1)
    if pending and skipped >= skip_records:  # a quoted field left open at the end: one last record
        plan.index += 1
    return plan.close(offset), plan.index


class ByteWindow(io.RawIOBase):
    """Bytes ``[start, end)`` of a file, as a raw stream a text decoder can wrap."""

    def __init__(self, path: str, start: int, end: int | None) -> None:
        super().__init__()
        self._file = open(path, "rb")
        self._file.seek(start)
        self._left = None if end is None else end - start

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        view = memoryview(buffer)
        if self._left is not None:
            view = view[: self._left]
        read = self._file.readinto(view)
        if self._left is not None:
            self._left -= read
        return read

    def close(self) -> None:
        self._file.close()
        super().close()


def open_window(split: SourceSplit, encoding: str, newline: str | None) -> io.TextIOWrapper:
    """The split's text; undecodable bytes kept as escapes, as the whole file's reader keeps them."""
    return io.TextIOWrapper(io.BufferedReader(ByteWindow(split.path, split.start, split.end)),
                            encoding=encoding, errors="surrogateescape", newline=newline)
