"""LandscapeStore: the one way anything writes or reads the audit database.

It owns the engine, the schema's creation and version check, and a run's own record
(begin, finish, reopen). Audit records are written by the loader (``auditlog/loader.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Select, Table, create_engine, event, inspect, select, update
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from elspeth_beam.core.enums import RunStatus
from elspeth_beam.core.errors import LandscapeError, RunExistsError, RunNotFoundError
from elspeth_beam.core.timestamps import utc_now
from elspeth_beam.landscape import DEFAULT_PATH
from elspeth_beam.landscape import schema as s

DEFAULT_URL = f"sqlite:///{DEFAULT_PATH}"
FINAL_STATUSES = (RunStatus.COMPLETED.value, RunStatus.FAILED.value)  # sealed at finish (auditlog/digest.finish_run)


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

    # ---- runs ---------------------------------------------------------------------------

    def begin_run(
        self,
        *,
        run_id: str,
        settings_json: str,
        settings_hash: str,
        settings_path: str | None = None,
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
            "settings_path": settings_path,
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
                    if nodes:
                        conn.execute(s.nodes.insert(), [{"run_id": run_id, **n} for n in nodes])
                    if edges:
                        conn.execute(s.edges.insert(), [{"run_id": run_id, **e} for e in edges])
        except IntegrityError:
            raise self._run_exists(run_id, RunStatus.RUNNING.value) from None

    def _run_exists(self, run_id: str, status: str) -> RunExistsError:
        where = make_url(self.url).render_as_string(hide_password=True)
        return RunExistsError(
            f"run {run_id} already exists in the Landscape at {where} (status {status}); a run id names one run: "
            f"choose another --run-id or leave it out. `elspeth-beam resume {run_id}` continues an unfinished run"
        )

    def mark_finished(self, conn: Connection, run_id: str, status: str, summary: dict[str, Any]) -> None:
        """The runs row as a finished run leaves it, on the caller's transaction: the seal
        (``auditlog/digest.finish_run``) is written in the same one."""
        conn.execute(
            update(s.runs)
            .where(s.runs.c.run_id == run_id)
            .values(status=status, completed_at=utc_now(), summary_json=json.dumps(summary, sort_keys=True))
        )

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

    def has_run(self, run_id: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(s.runs.c.run_id).where(s.runs.c.run_id == run_id)).first() is not None

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



def fetch_tuples(conn: Connection, stmt: Select, batch: int = 5000) -> Iterator[tuple]:
    """A query's rows as plain tuples straight from the driver, streamed ``batch`` at a time:
    building SQLAlchemy rows cost as much as the queries themselves over a run's hundreds of
    thousands of records (verify, digest), and a whole run's rows at once made memory grow
    with the run. Values are SQLAlchemy's (its result processors applied, e.g. SQLite's 0/1
    as booleans), so a hash of them is the same either way."""
    compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    params: Any = compiled.construct_params()
    if compiled.positional:
        params = tuple(params[name] for name in compiled.positiontup or ())
    processors = [(i, p) for i, c in enumerate(stmt.selected_columns)
                  if (p := c.type.result_processor(conn.dialect, None)) is not None]
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(str(compiled), params)
        while chunk := cursor.fetchmany(batch):
            if processors:
                chunk = [_processed(row, processors) for row in chunk]
            yield from chunk
    finally:
        cursor.close()


def _processed(row: tuple, processors: list[tuple[int, Any]]) -> tuple:
    values = list(row)
    for i, process in processors:
        values[i] = process(values[i])
    return tuple(values)

RUN_TABLES: tuple[Table, ...] = tuple(t for t in s.metadata.sorted_tables if t not in (s.landscape_schema, s.audit_segments))
"""Every table that holds a run's records (not the schema-version marker, nor the ledger of
loaded segments: bookkeeping of how the records arrived, not part of them)."""
