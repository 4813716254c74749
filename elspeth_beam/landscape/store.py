"""LandscapeStore: the one way anything writes or reads the audit database.

Writes are idempotent and order-independent: inserts ignore a row whose deterministic key
already exists, and statuses only move forward (draft < executing < completed|failed;
open < completed|failed). Replaying any set of events, in any order, changes nothing.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Select, Table, and_, bindparam, create_engine, event, inspect, literal, or_, select, update
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from elspeth_beam.core.enums import BatchStatus, NodeStateStatus, RunStatus
from elspeth_beam.core.errors import LandscapeError, RunExistsError, RunNotFoundError
from elspeth_beam.core.events import (
    AuditEvent,
    BatchRecorded,
    NodeStateRecorded,
    OutcomeRecorded,
    TokenCreated,
    utc_now,
)
from elspeth_beam.landscape import schema as s

DEFAULT_URL = "sqlite:///runs/landscape.db"
_DEADLOCK_RETRIES = 5
FINAL_STATUSES = (RunStatus.COMPLETED.value, RunStatus.FAILED.value)  # digested at finish (auditlog/digest.py)


class WriteStats:
    """What this process's audit writes cost: rows offered and seconds inside ``write_events``
    (the benchmark's audit-sink rate; cheap enough to keep always on)."""

    def __init__(self) -> None:
        self.rows = 0
        self.seconds = 0.0
        self._lock = threading.Lock()

    def add(self, rows: int, seconds: float) -> None:
        with self._lock:
            self.rows += rows
            self.seconds += seconds


WRITE_STATS = WriteStats()


def _is_retryable(exc: OperationalError | IntegrityError) -> bool:
    text = str(exc.orig).lower()
    if isinstance(exc, IntegrityError):
        return "duplicate key" in text or "unique constraint" in text
    return "deadlock" in text or "could not serialize" in text or "database is locked" in text


def normalize_url(url_or_path: str) -> str:
    """Accept a SQLAlchemy URL or a bare path to a SQLite file."""
    return url_or_path if "://" in url_or_path else f"sqlite:///{url_or_path}"


def absolute_url(url_or_path: str) -> str:
    """The URL with a relative SQLite path made absolute from this process's working
    directory — what it means here, handed to a process whose directory may differ."""
    url = normalize_url(url_or_path)
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:" or Path(database).is_absolute():
        return url
    return parsed.set(database=str(Path(database).resolve())).render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.execute("PRAGMA foreign_keys=OFF")  # events arrive in any order; verify checks integrity
    # ids are hashes, so inserts land all over every index: keep the hot pages in memory
    cur.execute("PRAGMA cache_size=-32768")  # KiB: 32 MiB per connection (default 2 MiB)
    cur.execute("PRAGMA wal_autocheckpoint=20000")  # pages: checkpoint every ~80 MB of WAL, not 4 MB
    cur.close()


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


_COMPILED: dict[tuple[str, str, tuple[str, ...]], tuple[str, tuple[str, ...] | None]] = {}


def _insert_sql(conn: Connection, table: Table, columns: tuple[str, ...]) -> tuple[str, tuple[str, ...] | None]:
    """The dialect's insert-or-ignore for these columns, compiled once per process."""
    cache_key = (conn.dialect.name, table.name, columns)
    if cache_key not in _COMPILED:
        dialect = conn.dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            raise LandscapeError(f"unsupported Landscape database dialect {dialect!r}: use SQLite or PostgreSQL")
        keys = [c.name for c in table.primary_key.columns]
        compiled = insert(table).on_conflict_do_nothing(index_elements=keys).compile(
            dialect=conn.dialect, column_keys=list(columns)
        )
        _COMPILED[cache_key] = (str(compiled), tuple(compiled.positiontup) if compiled.positional else None)
    return _COMPILED[cache_key]


def _insert_ignore(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert-or-ignore on the primary key, as one executemany at the driver level (the
    SQLAlchemy-level executemany spent more time building parameters than SQLite inserting).

    ``rows`` may be events' own ``__dict__``s: only the table's columns are read, so no copy
    is made. StrEnum values bind as their text on both drivers.
    """
    if not rows:
        return 0
    columns = tuple(c.name for c in table.columns if c.name in rows[0])
    # one key order for every writer: concurrent transactions lock rows in the same order
    ordered = sorted(rows, key=itemgetter(*(c.name for c in table.primary_key.columns)))
    sql, positions = _insert_sql(conn, table, columns)
    if positions is not None:
        params: list[Any] = list(map(itemgetter(*positions), ordered))
    else:
        params = [{c: r[c] for c in columns} for r in ordered]
    conn.exec_driver_sql(sql, params)
    return len(params)


def _fields(events: Sequence[AuditEvent]) -> list[dict[str, Any]]:
    """The events' field dicts, as rows for ``_insert_ignore`` (read-only, never copied)."""
    return [e.__dict__ for e in events]


class LandscapeStore:
    """Reads and idempotent writes of the Landscape behind one SQLAlchemy engine."""

    def __init__(self, url: str = DEFAULT_URL, *, create: bool = True) -> None:
        self.url = normalize_url(url)
        self.engine = make_engine(self.url)
        if create:
            self._create_or_check_schema()

    def _create_or_check_schema(self) -> None:
        """Create the tables in a new database; refuse one written by another schema version."""
        existing = set(inspect(self.engine).get_table_names())
        if "runs" in existing and "landscape_schema" not in existing:
            found: int | None = 1
        else:
            s.metadata.create_all(self.engine)
            with self.engine.begin() as conn:
                found = conn.execute(select(s.landscape_schema.c.version)).scalar()
                if found is None:
                    conn.execute(s.landscape_schema.insert().values(version=s.SCHEMA_VERSION))
                    found = s.SCHEMA_VERSION
        self._refuse_other_version(found)

    def _refuse_other_version(self, found: int | None) -> None:
        if found != s.SCHEMA_VERSION:
            self.dispose()
            raise LandscapeError(
                f"the Landscape at {self.url} has schema version {found}, this elspeth_beam writes version "
                f"{s.SCHEMA_VERSION}; use a new database (keep the old one for its runs)"
            )

    @classmethod
    def open_existing(cls, url: str) -> "LandscapeStore":
        """Open a Landscape that must already exist (explain, verify, resume, runs)."""
        store = cls(url, create=False)
        try:
            with store.engine.connect() as conn:
                conn.execute(select(s.runs.c.run_id).limit(1)).all()
        except SQLAlchemyError as exc:
            store.dispose()
            reason = str(getattr(exc, "orig", exc)).splitlines()[0]
            raise LandscapeError(f"{url} is not an elspeth_beam Landscape ({reason})") from None
        with store.engine.connect() as conn:
            versioned = inspect(conn).has_table(s.landscape_schema.name)
            store._refuse_other_version(conn.execute(select(s.landscape_schema.c.version)).scalar() if versioned else 1)
        return store

    def dispose(self) -> None:
        self.engine.dispose()

    # ---- audit events -------------------------------------------------------------------

    def write_events(self, events: Iterable[AuditEvent]) -> None:
        """Persist events in one transaction; replays and reorderings are no-ops."""
        started = time.perf_counter()
        by_kind: dict[str, list[AuditEvent]] = defaultdict(list)
        for ev in events:
            by_kind[ev.kind].append(ev)
        if not by_kind:
            return
        for attempt in range(_DEADLOCK_RETRIES):
            try:
                with self.engine.begin() as conn:
                    rows_written = self._write(conn, by_kind)
                WRITE_STATS.add(rows_written, time.perf_counter() - started)
                return
            except (OperationalError, IntegrityError) as exc:
                # A deadlock victim, or a race: another writer was committing the same record,
                # which PostgreSQL reports on a secondary unique index before the primary key
                # lets ON CONFLICT ignore it. Replaying the write is safe; a real conflict (a
                # second, different terminal outcome) fails every attempt and surfaces.
                if attempt + 1 == _DEADLOCK_RETRIES or not _is_retryable(exc):
                    raise
                time.sleep(0.05 * (attempt + 1))

    def _write(self, conn: Connection, by_kind: dict[str, list[AuditEvent]]) -> int:
        """Insert every kind of event; returns the number of rows offered to the database."""
        toks: list[TokenCreated] = by_kind.get("token", [])  # type: ignore[assignment]
        outcomes: list[OutcomeRecorded] = by_kind.get("outcome", [])  # type: ignore[assignment]
        parents = [{"token_id": e.token_id, "parent_token_id": p, "ordinal": i} for e in toks for i, p in enumerate(e.parent_ids)]
        n = _insert_ignore(conn, s.rows, _fields(by_kind.get("row", [])))
        n += _insert_ignore(conn, s.tokens, _fields(toks))
        n += _insert_ignore(conn, s.token_parents, parents)
        n += self._write_node_states(conn, by_kind.get("node_state", []))  # type: ignore[arg-type]
        n += _insert_ignore(conn, s.routing_events, _fields(by_kind.get("routing", [])))
        n += self._write_batches(conn, by_kind.get("batch", []))  # type: ignore[arg-type]
        n += _insert_ignore(conn, s.batch_members, _fields(by_kind.get("batch_member", [])))
        n += _insert_ignore(conn, s.batch_outputs, _fields(by_kind.get("batch_output", [])))
        n += _insert_ignore(conn, s.token_outcomes, [{**e.__dict__, "is_terminal": e.outcome.is_terminal} for e in outcomes])
        return n + _insert_ignore(conn, s.artifacts, _fields(by_kind.get("artifact", [])))

    def _write_node_states(self, conn: Connection, events: list[NodeStateRecorded]) -> int:
        written = _insert_ignore(conn, s.node_states, _fields(events))
        closed = self._still_open(conn, [e for e in events if e.status is not NodeStateStatus.OPEN])
        if closed:
            t = s.node_states
            stmt = (
                update(t)
                .where(and_(t.c.state_id == bindparam("b_state_id"), t.c.status == NodeStateStatus.OPEN.value))
                .values(
                    status=bindparam("b_status"),
                    output_hash=bindparam("b_output_hash"),
                    duration_ms=bindparam("b_duration_ms"),
                    error_json=bindparam("b_error_json"),
                    completed_at=bindparam("b_completed_at"),
                )
            )
            conn.execute(
                stmt,
                [
                    {
                        "b_state_id": e.state_id,
                        "b_status": e.status.value,
                        "b_output_hash": e.output_hash,
                        "b_duration_ms": e.duration_ms,
                        "b_error_json": e.error_json,
                        "b_completed_at": e.completed_at,
                    }
                    for e in closed
                ],
            )
        return written

    @staticmethod
    def _still_open(conn: Connection, events: list[NodeStateRecorded]) -> list[NodeStateRecorded]:
        """The closing events whose state is stored as open — usually none, since executors
        record states closed; asking first (a partial index of open states answers it)
        spares one UPDATE per state."""
        if not events:
            return []
        t = s.node_states
        # Only the status in the WHERE: with run_id there too, SQLite's planner took the run_id
        # index (same estimated cost) and walked every state of the run on each write — 10 ms
        # per write at 60k states, growing with the run. Open states are few in any database.
        stmt = select(t.c.state_id, t.c.run_id).where(t.c.status == literal(NodeStateStatus.OPEN.value, literal_execute=True))
        run_ids = {e.run_id for e in events}
        open_ids = {state for state, run in conn.execute(stmt) if run in run_ids}
        return [e for e in events if e.state_id in open_ids]

    def _write_batches(self, conn: Connection, events: list[BatchRecorded]) -> int:
        written = _insert_ignore(conn, s.batches, [{**e.__dict__, "aggregation_node_id": e.node_id} for e in events])
        t = s.batches
        if events:  # a batch was created when its first event was made, whichever lands first
            conn.execute(
                update(t)
                .where(and_(t.c.batch_id == bindparam("b_batch_id"), t.c.created_at > bindparam("b_created_at")))
                .values(created_at=bindparam("b_created_at")),
                [{"b_batch_id": e.batch_id, "b_created_at": e.created_at} for e in events],
            )
        earlier = {
            BatchStatus.EXECUTING: [BatchStatus.DRAFT.value],
            BatchStatus.COMPLETED: [BatchStatus.DRAFT.value, BatchStatus.EXECUTING.value],
            BatchStatus.FAILED: [BatchStatus.DRAFT.value, BatchStatus.EXECUTING.value],
        }
        for status, lower in earlier.items():
            moved = [e for e in events if e.status is status]
            if not moved:
                continue
            stmt = (
                update(t)
                .where(and_(t.c.batch_id == bindparam("b_batch_id"), or_(*(t.c.status == s_ for s_ in lower))))
                .values(
                    status=status.value,
                    trigger_type=bindparam("b_trigger_type"),
                    trigger_reason=bindparam("b_trigger_reason"),
                    aggregation_state_id=bindparam("b_state_id"),
                    completed_at=bindparam("b_completed_at"),
                )
            )
            conn.execute(
                stmt,
                [
                    {
                        "b_batch_id": e.batch_id,
                        "b_trigger_type": e.trigger_type.value if e.trigger_type else None,
                        "b_trigger_reason": e.trigger_reason,
                        "b_state_id": e.aggregation_state_id,
                        "b_completed_at": e.completed_at,
                    }
                    for e in moved
                ],
            )
        return written

    # ---- runs ---------------------------------------------------------------------------

    def begin_run(
        self,
        *,
        run_id: str,
        settings_json: str,
        settings_hash: str,
        runner: str,
        beam_options: dict[str, Any],
        nodes: list[dict[str, Any]],
        edges: list[dict[str, Any]],
        resuming: bool = False,
    ) -> None:
        """Write the run, its nodes and edges before the pipeline starts.

        A run id names one run: a new run under an id the Landscape holds is refused before
        anything is written (re-running a completed run would re-seal it with another digest
        root). ``resuming``: ``resume`` has reopened this run, which must be ``running``; its
        record, nodes and edges stay as the run first wrote them.
        """
        row = {
            "run_id": run_id,
            "status": RunStatus.RUNNING.value,
            "started_at": utc_now(),
            "settings_json": settings_json,
            "settings_hash": settings_hash,
            "runner": runner,
            "beam_options_json": json.dumps(beam_options, sort_keys=True, default=str),
        }
        try:
            with self.engine.begin() as conn:
                status = conn.execute(select(s.runs.c.status).where(s.runs.c.run_id == run_id)).scalar()
                if resuming and status != RunStatus.RUNNING.value:
                    raise LandscapeError(f"run {run_id} is {status or 'not in the Landscape'}, not reopened for resume")
                if not resuming and status is not None:
                    raise self._run_exists(run_id, status)
                if not resuming:
                    conn.execute(s.runs.insert().values(**row))  # a plain insert: a racing twin fails here
                _insert_ignore(conn, s.nodes, [{"run_id": run_id, **n} for n in nodes])
                _insert_ignore(conn, s.edges, [{"run_id": run_id, **e} for e in edges])
        except IntegrityError:
            raise self._run_exists(run_id, RunStatus.RUNNING.value) from None

    def _run_exists(self, run_id: str, status: str) -> RunExistsError:
        where = make_url(self.url).render_as_string(hide_password=True)
        return RunExistsError(
            f"run {run_id} already exists in the Landscape at {where} (status {status}); a run id names one run: "
            f"choose another --run-id or leave it out. `elspeth-beam resume {run_id}` continues an unfinished run"
        )

    def finish_run(self, run_id: str, status: str, summary: dict[str, Any],
                   digested: dict[str, dict[str, Any]] | None = None) -> None:
        """Mark the run finished and, in the same transaction, digest its records and store the
        manifest (auditlog/digest.py), so verify can tell later edits from what the run wrote.
        ``digested``: manifest entries of tables digested already (``digest_tables_apart``, by
        this process and the writer process); the rest are digested here."""
        from elspeth_beam.auditlog.digest import write_digest

        with self.engine.begin() as conn:
            conn.execute(
                update(s.runs)
                .where(s.runs.c.run_id == run_id)
                .values(status=status, completed_at=utc_now(), summary_json=json.dumps(summary, sort_keys=True))
            )
            if status in FINAL_STATUSES:
                write_digest(conn, run_id, digested)
        self.checkpoint()

    def checkpoint(self) -> None:
        """SQLite: fold the write-ahead log into the database file (the run checkpoints
        rarely, for speed), so the finished Landscape is one self-contained file."""
        if self.engine.dialect.name == "sqlite":
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    def reopen_run(self, run_id: str) -> None:
        """Resume is about to add to a finished run: back to running, its digest dropped
        (the records will change; the resumed run's finish digests them again)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(s.runs)
                .where(s.runs.c.run_id == run_id)
                .values(status=RunStatus.RUNNING.value, completed_at=None, digest_root=None, digest_manifest=None)
            )
            conn.execute(s.record_digests.delete().where(s.record_digests.c.run_id == run_id))

    def run(self, run_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(select(s.runs).where(s.runs.c.run_id == run_id)).mappings().first()
        if row is None:
            raise RunNotFoundError(f"run {run_id!r} is not in the Landscape at {self.url}; list runs with `elspeth-beam runs`")
        return dict(row)

    def latest_run_id(self) -> str:
        with self.engine.connect() as conn:
            row = conn.execute(select(s.runs.c.run_id).order_by(s.runs.c.started_at.desc()).limit(1)).first()
        if row is None:
            raise RunNotFoundError(f"the Landscape at {self.url} holds no runs")
        return row[0]

    def table_rows(self, table: Table, run_id: str | None = None) -> list[dict[str, Any]]:
        """All rows of a table (of one run if given), in primary-key order, for tools and tests."""
        stmt = select(table) if run_id is None else run_rows(table, run_id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]


def run_rows(table: Table, run_id: str) -> Select:
    """The rows of ``table`` that belong to one run, in primary-key order (a canonical order).

    ``token_parents`` has no run_id of its own: its rows belong to the run of their token.
    """
    stmt = select(table)
    if "run_id" in table.c:
        stmt = stmt.where(table.c.run_id == run_id)
    elif table is s.token_parents:
        stmt = stmt.where(table.c.token_id.in_(select(s.tokens.c.token_id).where(s.tokens.c.run_id == run_id)))
    return stmt.order_by(*table.primary_key.columns)


RUN_TABLES: tuple[Table, ...] = tuple(t for t in s.metadata.sorted_tables if t is not s.landscape_schema)
"""Every table that holds a run's records (all but the schema-version marker)."""
