"""Live progress of a run, counted from its Landscape while the pipeline runs.

Why the Landscape: every runner's workers commit their audit events there bundle by bundle,
so counting it works the same on the DirectRunner, Flink or Dataflow, with no runner metrics
API. A background thread polls through its own read-only connection (cheap COUNTs on indexed
columns, backing off when they get slow) and a ``ProgressLine`` writes to a stream: on a
terminal one line rewritten in place a few times a second, elsewhere (CI logs, pipes) plain
lines now and then, never an escape code.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

from sqlalchemy import Engine, Select, Table, event, func, literal_column, select
from sqlalchemy.engine import Connection, make_url

from elspeth_beam.landscape import schema as s
from elspeth_beam.landscape.store import make_engine

TTY_EVERY = 0.5  # seconds between updates of the live line on a terminal
PLAIN_EVERY = 5.0  # seconds between plain lines when the stream is not a terminal
_MAX_POLL_SHARE = 0.1  # poll at most this fraction of the time: a slow COUNT waits longer
_CLEAR_TO_EOL = "\x1b[K"

Clock = Callable[[], float]


@dataclass(frozen=True)
class Counts:
    """What a run has done so far, as its Landscape records it."""

    rows_read: int = 0
    per_sink: dict[str, int] = field(default_factory=dict)
    quarantined: int = 0
    failed: int = 0
    batches_flushed: int = 0


def count_progress(conn: Connection, run_id: str) -> Counts:
    """Counts of one run, each query on the indexed ``run_id`` (rows from the index alone;
    outcomes grouped once for sinks, quarantined and failed together)."""
    return LandscapeCounter(run_id, incremental=False)(conn)


class LandscapeCounter:
    """Counts one run's progress, poll after poll.

    A full COUNT costs time in proportion to the rows so far, so polling a long run would get
    slower and slower. On SQLite the counter therefore adds up only what is new: writers are
    serialised and rowids grow, so once ``max(rowid)`` is read, every row at or below it is
    committed, and the next poll counts the rowid range above it through the ``run_id`` index.
    Elsewhere (PostgreSQL) it counts in full (the reporter backs off if that gets slow).
    Batches change status in place, so they are always counted in full (one per flush: few).
    """

    def __init__(self, run_id: str, *, incremental: bool) -> None:
        self.run_id, self.incremental = run_id, incremental
        self._seen = {s.rows.name: 0, s.token_outcomes.name: 0}  # highest rowid counted, per table
        self._rows = 0
        self._outcomes: dict[tuple[str, str | None], int] = {}

    def __call__(self, conn: Connection) -> Counts:
        o, b = s.token_outcomes, s.batches
        keep = self.incremental
        seen, rows, outcomes = dict(self._seen), self._rows if keep else 0, dict(self._outcomes) if keep else {}
        count_rows, seen[s.rows.name] = self._new(select(func.count()).select_from(s.rows), s.rows, seen, conn)
        rows += conn.execute(count_rows).scalar_one()
        grouped = select(o.c.outcome, o.c.sink_name, func.count()).group_by(o.c.outcome, o.c.sink_name)
        count_outcomes, seen[o.name] = self._new(grouped, o, seen, conn)
        for outcome, sink, n in conn.execute(count_outcomes).all():
            outcomes[(outcome, sink)] = outcomes.get((outcome, sink), 0) + n
        flushed = conn.execute(
            select(func.count()).select_from(b).where(b.c.run_id == self.run_id, b.c.status == "completed")
        ).scalar_one()
        if keep:  # only a poll that completed moves the counter on
            self._seen, self._rows, self._outcomes = seen, rows, outcomes
        return _counts(rows, outcomes, flushed)

    def _new(self, stmt: Select, table: Table, seen: dict[str, int], conn: Connection) -> tuple[Select, int]:
        """``stmt`` on the run's rows of ``table`` not counted yet, and the rowid it counts to."""
        stmt = stmt.where(table.c.run_id == self.run_id)
        if not self.incremental:
            return stmt, 0
        rowid = literal_column(f"{table.name}.rowid")
        high = conn.execute(select(func.max(rowid)).select_from(table)).scalar() or 0  # read first: see above
        return stmt.where(rowid > seen[table.name], rowid <= high), high


def _counts(rows: int, outcomes: dict[tuple[str, str | None], int], flushed: int) -> Counts:
    per_sink: dict[str, int] = {}
    by_outcome: dict[str, int] = {}
    for (outcome, sink), n in outcomes.items():
        by_outcome[outcome] = by_outcome.get(outcome, 0) + n
        if sink is not None:
            per_sink[sink] = per_sink.get(sink, 0) + n
    return Counts(rows, dict(sorted(per_sink.items())), by_outcome.get("quarantined", 0), by_outcome.get("failed", 0),
                  flushed)


def format_counts(counts: Counts, elapsed: float) -> str:
    """One progress line; the per-sink counts come last, so a narrow terminal cuts only them."""
    rate = f" ({counts.rows_read / elapsed:,.0f}/s)" if elapsed >= 1 and counts.rows_read else ""
    sinks = " ".join(f"{name}={n}" for name, n in counts.per_sink.items()) or "-"
    return (
        f"progress {elapsed:6.1f}s  rows read {counts.rows_read}{rate}  quarantined {counts.quarantined}  "
        f"failed {counts.failed}  batches {counts.batches_flushed}  sinks {sinks}"
    )


class ProgressLine:
    """Writes progress to a stream, at most once per ``every`` seconds (the final line always).

    On a terminal (``tty``) the line is rewritten in place (carriage return, clear to end of
    line) and cut to the terminal's width so it never wraps; otherwise each update is a plain
    line of text.
    """

    def __init__(self, stream: TextIO, *, tty: bool, every: float | None = None, clock: Clock = time.monotonic,
                 width: int | None = None) -> None:
        self.stream, self.tty, self.clock = stream, tty, clock
        self.every = every if every is not None else (TTY_EVERY if tty else PLAIN_EVERY)
        self.width = width
        self.started = clock()
        self._last: float | None = None

    def update(self, counts: Counts) -> bool:
        """Show ``counts`` if the last update is at least ``every`` seconds old."""
        now = self.clock()
        if self._last is not None and now - self._last < self.every:
            return False
        if self._last is None and now - self.started < self.every:
            return False  # a run shorter than one interval shows only its final line
        self._write(counts, now, final=False)
        return True

    def finish(self, counts: Counts) -> None:
        self._write(counts, self.clock(), final=True)

    def _write(self, counts: Counts, now: float, *, final: bool) -> None:
        self._last = now
        line = format_counts(counts, now - self.started)
        if self.tty:
            width = self.width or _columns(self.stream)
            line = f"\r{line[: max(width - 1, 1)]}{_CLEAR_TO_EOL}" + ("\n" if final else "")
        else:
            line += "\n"
        self.stream.write(line)
        self.stream.flush()


def _columns(stream: TextIO) -> int:
    """The width of the terminal ``stream`` writes to (stdout may be redirected elsewhere)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return shutil.get_terminal_size().columns


class ProgressReporter:
    """A daemon thread that polls ``poll`` and feeds a ``ProgressLine`` while a run runs.

    Use as a context manager around the pipeline; leaving it stops the thread, polls once
    more and writes the final line. Progress must never break the run it reports on: a failed
    poll (a database hiccup) is recorded in ``errors`` and skipped, and a stream that cannot
    be written (a closed pipe) ends the display.
    """

    def __init__(self, poll: Callable[[], Counts], line: ProgressLine, *, clock: Clock = time.monotonic) -> None:
        self.poll, self.line, self.clock = poll, line, clock
        self.errors: list[str] = []
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="elspeth-progress", daemon=True)
        self.last = Counts()  # the latest counts polled
        self._shown = True  # the stream still takes writes

    def __enter__(self) -> "ProgressReporter":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._show(self.line.finish, self._poll() or self.last)

    def _loop(self) -> None:
        delay = self.line.every
        while not self._stop.wait(delay):
            started = self.clock()
            counts = self._poll()
            if counts is not None and not self._stop.is_set():
                self._show(self.line.update, counts)
            delay = max(self.line.every, (self.clock() - started) / _MAX_POLL_SHARE)

    def _show(self, write: Callable[[Counts], object], counts: Counts) -> None:
        if self._shown:
            try:
                write(counts)
            except OSError as exc:
                self.errors.append(f"progress display stopped: {exc}")
                self._shown = False

    def _poll(self) -> Counts | None:
        try:
            counts = self.poll()
        except Exception as exc:  # noqa: BLE001 - a deliberate boundary: never fail the run
            message = str(getattr(exc, "orig", exc)).strip()
            self.errors.append(message.splitlines()[0] if message else type(exc).__name__)
            return None
        self.polls += 1
        self.last = counts
        return counts


def read_only_engine(url: str) -> Engine:
    """A separate engine whose connections cannot write (SQLite ``query_only``, a PostgreSQL
    read-only session): the reporter only looks."""
    engine = make_engine(url)
    sqlite = make_url(engine.url).get_backend_name() == "sqlite"
    event.listen(engine, "connect", _sqlite_read_only if sqlite else _postgres_read_only)
    return engine


def _sqlite_read_only(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.execute("PRAGMA query_only=ON")


def _postgres_read_only(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    cur.close()
    dbapi_conn.commit()  # a SET is transactional in PostgreSQL: keep it


@contextmanager
def landscape_progress(url: str, run_id: str, *, stream: TextIO, every: float | None = None,
                       tty: bool | None = None) -> Iterator[ProgressReporter]:
    """Report run ``run_id``'s progress from the Landscape at ``url`` to ``stream``."""
    engine = read_only_engine(url)
    counter = LandscapeCounter(run_id, incremental=engine.dialect.name == "sqlite")

    def poll() -> Counts:
        with engine.connect() as conn:
            return counter(conn)

    is_tty = stream.isatty() if tty is None else tty
    try:
        with ProgressReporter(poll, ProgressLine(stream, tty=is_tty, every=every)) as reporter:
            yield reporter
    finally:
        engine.dispose()
