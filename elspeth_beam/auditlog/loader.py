"""The loader: audit records into the Landscape, idempotently and in bulk.

Inserts ignore a record whose deterministic key exists; statuses only move forward (batches:
draft < executing < completed|failed; node_states: open < completed|failed). Loading any set
of records, in any order, any number of times, gives the same database. A committed segment
is loaded in one transaction together with its row in ``audit_segments``, so a segment is in
the Landscape whole or not at all, and never twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any

from sqlalchemy import Table, and_, bindparam, literal, or_, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from elspeth_beam.auditlog import segments
from elspeth_beam.auditlog.records import EVENT_TABLES, Columns, key_positions, landscape_columns, to_records
from elspeth_beam.core.enums import BatchStatus, NodeStateStatus
from elspeth_beam.core.errors import LandscapeError
from elspeth_beam.core.timestamps import utc_now
from elspeth_beam.landscape import schema as s

_RETRIES = 5


class WriteStats:
    """What this process's loads cost: records offered and seconds inside their transactions
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


def load_records(engine: Engine, tables: Mapping[str, Columns], *, manifest: dict[str, Any] | None = None) -> int:
    """Load records (columns per table) in one transaction, retried on a deadlock or race;
    with a segment's ``manifest``, only if that segment is not loaded yet, and marked loaded.
    Returns the records offered (0 for a segment loaded before)."""
    started = time.perf_counter()
    for attempt in range(_RETRIES):
        try:
            with engine.begin() as conn:
                if manifest is not None and _loaded(conn, manifest["segment"]):
                    return 0
                offered = write(conn, tables)
                if manifest is not None:
                    _mark_loaded(conn, manifest)
            WRITE_STATS.add(offered, time.perf_counter() - started)
            return offered
        except (OperationalError, IntegrityError) as exc:
            # A deadlock victim, or a race: another writer was committing the same record,
            # which PostgreSQL reports on a secondary unique index before the primary key
            # lets ON CONFLICT ignore it. Replaying the load is safe; a real conflict (a
            # second, different terminal outcome) fails every attempt and surfaces.
            if attempt + 1 == _RETRIES or not _is_retryable(exc):
                raise
            time.sleep(0.05 * (attempt + 1))
    return 0


def load_segment(engine: Engine, manifest_path: Path) -> int:
    """Load one committed segment from its files (the catch-up path: resume, a run's end)."""
    manifest, segment = segments.read(manifest_path)
    return load_records(engine, segment.tables, manifest=manifest)


def load_committed(engine: Engine, directory: Path) -> int:
    """Load every committed segment of a run's folder the Landscape does not hold yet."""
    manifests = segments.committed(directory)
    if not manifests:
        return 0
    with engine.connect() as conn:
        loaded = set(conn.execute(select(s.audit_segments.c.segment_id)
                                  .where(s.audit_segments.c.segment_id.in_([m.stem for m in manifests]))).scalars())
    return sum(load_segment(engine, m) for m in manifests if m.stem not in loaded)


def write(conn: Connection, tables: Mapping[str, Columns]) -> int:
    """Insert every table's records on ``conn``; the number of records offered."""
    offered = 0
    for table in EVENT_TABLES:
        columns = tables.get(table.name)
        if not columns or not columns[0]:
            continue
        records = to_records(landscape_columns(table.name, columns))
        offered += _insert_ignore(conn, table, records)
        if table is s.node_states:
            _close_open_states(conn, records)
        elif table is s.batches:
            _advance_batches(conn, records)
    return offered


# ---- inserts ------------------------------------------------------------------------------

_COMPILED: dict[tuple[str, str], tuple[str, tuple[str, ...] | None]] = {}


def _insert_sql(conn: Connection, table: Table) -> tuple[str, tuple[str, ...] | None]:
    """The dialect's insert-or-ignore of every column, compiled once per process."""
    cache_key = (conn.dialect.name, table.name)
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
            dialect=conn.dialect, column_keys=[c.name for c in table.columns]
        )
        _COMPILED[cache_key] = (str(compiled), tuple(compiled.positiontup) if compiled.positional else None)
    return _COMPILED[cache_key]


_COPY_FROM = 200  # records from which PostgreSQL gets them by COPY


def _insert_ignore(conn: Connection, table: Table, records: Sequence[tuple]) -> int:
    """Insert-or-ignore on the primary key as one driver-level executemany (SQLAlchemy's own
    executemany spent more time building parameters than SQLite inserting), or on PostgreSQL
    by COPY. Records are in key order, one order for every writer, so concurrent transactions
    lock rows alike."""
    ordered = sorted(records, key=itemgetter(*key_positions(table.name)))
    if conn.dialect.name == "postgresql" and len(ordered) >= _COPY_FROM:
        return _copy_ignore(conn, table, ordered)
    sql, positions = _insert_sql(conn, table)
    names = [c.name for c in table.columns]
    if positions is not None and list(positions) != names:
        index = [names.index(p) for p in positions]
        params: list[Any] = [tuple(r[i] for i in index) for r in ordered]
    elif positions is not None:
        params = ordered
    else:
        params = [dict(zip(names, r)) for r in ordered]
    conn.exec_driver_sql(sql, params)
    return len(params)


def _copy_ignore(conn: Connection, table: Table, ordered: Sequence[tuple]) -> int:
    """PostgreSQL's bulk path: COPY into a temporary table, then one INSERT … SELECT … ON
    CONFLICT DO NOTHING in key order (COPY itself cannot ignore a key that exists)."""
    names = ", ".join(f'"{c.name}"' for c in table.columns)
    keys = ", ".join(f'"{c.name}"' for c in table.primary_key.columns)
    staging = f"elspeth_load_{table.name}"
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(f'CREATE TEMPORARY TABLE IF NOT EXISTS {staging} (LIKE "{table.name}" INCLUDING DEFAULTS) '
                       "ON COMMIT DELETE ROWS")
        with cursor.copy(f"COPY {staging} ({names}) FROM STDIN") as copy:
            for record in ordered:
                copy.write_row(record)
        cursor.execute(f'INSERT INTO "{table.name}" ({names}) SELECT {names} FROM {staging} ORDER BY {keys} '
                       f"ON CONFLICT ({keys}) DO NOTHING")  # on the key only: another unique index still objects
        cursor.execute(f"TRUNCATE {staging}")
    finally:
        cursor.close()
    return len(ordered)


# ---- forward-only statuses ------------------------------------------------------------------

def _close_open_states(conn: Connection, records: list[tuple]) -> None:
    """Close states stored as open by a later closing record — usually none, since executors
    record states closed; asking first (a partial index of open states answers it) spares one
    UPDATE per state. Only the status in the WHERE: with run_id too, SQLite's planner walked
    every state of the run on each write (same estimated cost, 10 ms at 60k states)."""
    t = s.node_states
    names = list(t.columns.keys())
    status = names.index("status")
    closing = [r for r in records if r[status] != NodeStateStatus.OPEN.value]
    if not closing:
        return
    stmt = select(t.c.state_id, t.c.run_id).where(t.c.status == literal(NodeStateStatus.OPEN.value, literal_execute=True))
    open_ids = {state for state, _ in conn.execute(stmt)}
    closed = [dict(zip(names, r)) for r in closing if r[0] in open_ids]
    if not closed:
        return
    conn.execute(
        update(t)
        .where(and_(t.c.state_id == bindparam("b_state_id"), t.c.status == NodeStateStatus.OPEN.value))
        .values(status=bindparam("b_status"), output_hash=bindparam("b_output_hash"),
                duration_ms=bindparam("b_duration_ms"), error_json=bindparam("b_error_json"),
                completed_at=bindparam("b_completed_at")),
        [{"b_state_id": r["state_id"], "b_status": r["status"], "b_output_hash": r["output_hash"],
          "b_duration_ms": r["duration_ms"], "b_error_json": r["error_json"], "b_completed_at": r["completed_at"]}
         for r in closed],
    )


_EARLIER = {
    BatchStatus.EXECUTING.value: [BatchStatus.DRAFT.value],
    BatchStatus.COMPLETED.value: [BatchStatus.DRAFT.value, BatchStatus.EXECUTING.value],
    BatchStatus.FAILED.value: [BatchStatus.DRAFT.value, BatchStatus.EXECUTING.value],
}


def _advance_batches(conn: Connection, records: list[tuple]) -> None:
    """A batch's records (draft, executing, completed) may land in any order: the earliest
    ``created_at`` and the furthest status win."""
    t = s.batches
    rows = [dict(zip(t.columns.keys(), r)) for r in records]
    conn.execute(
        update(t)
        .where(and_(t.c.batch_id == bindparam("b_batch_id"), t.c.created_at > bindparam("b_created_at")))
        .values(created_at=bindparam("b_created_at")),
        [{"b_batch_id": r["batch_id"], "b_created_at": r["created_at"]} for r in rows],
    )
    for status, lower in _EARLIER.items():
        moved = [r for r in rows if r["status"] == status]
        if not moved:
            continue
        conn.execute(
            update(t)
            .where(and_(t.c.batch_id == bindparam("b_batch_id"), or_(*(t.c.status == s_ for s_ in lower))))
            .values(status=status, trigger_type=bindparam("b_trigger_type"), trigger_reason=bindparam("b_trigger_reason"),
                    aggregation_state_id=bindparam("b_state_id"), completed_at=bindparam("b_completed_at")),
            [{"b_batch_id": r["batch_id"], "b_trigger_type": r["trigger_type"], "b_trigger_reason": r["trigger_reason"],
              "b_state_id": r["aggregation_state_id"], "b_completed_at": r["completed_at"]} for r in moved],
        )


# ---- segments loaded ------------------------------------------------------------------------

def _loaded(conn: Connection, name: str) -> bool:
    return conn.execute(select(s.audit_segments.c.segment_id).where(s.audit_segments.c.segment_id == name)).first() is not None


def _mark_loaded(conn: Connection, manifest: dict[str, Any]) -> None:
    conn.execute(s.audit_segments.insert().values(
        segment_id=manifest["segment"], run_id=manifest["run_id"], node_id=manifest["node_id"], attempt_tag=manifest["attempt"],
        records=manifest["records"], loaded_at=utc_now()))


def _is_retryable(exc: OperationalError | IntegrityError) -> bool:
    text = str(exc.orig).lower()
    if isinstance(exc, IntegrityError):
        return "duplicate key" in text or "unique constraint" in text
    return "deadlock" in text or "could not serialize" in text or "database is locked" in text
