"""export: one run's Landscape as typed files an auditor can read without elspeth_beam.

One file per table (``<table>.parquet`` or ``<table>.jsonl``), typed from the SQLAlchemy
schema itself — so a column or table added to schema.py is exported without touching this
module — plus ``manifest.json`` with each file's row count and SHA-256, so the auditor can
check that the files are the ones exported. All tables are read in one snapshot (a run
still writing does not yield a token_parents file newer than its tokens), streamed in
chunks (a big run never sits in memory), staged beside DIR and moved in only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel
from sqlalchemy import Boolean, Float, Integer, LargeBinary, String, Table
from sqlalchemy.engine import Connection

import elspeth_beam
from elspeth_beam.core.errors import ElspethError
from elspeth_beam.core.timestamps import utc_now
from elspeth_beam.landscape import schema as s
from elspeth_beam.landscape.store import RUN_TABLES, LandscapeStore, run_rows

CHUNK_ROWS = 10_000
MANIFEST = "manifest.json"

# Checked in order: Text is a String, Double a Float, BigInteger an Integer.
_ARROW_TYPES: tuple[tuple[type, pa.DataType], ...] = (
    (Boolean, pa.bool_()),
    (Integer, pa.int64()),
    (Float, pa.float64()),
    (String, pa.string()),
    (LargeBinary, pa.binary()),
)


class ExportError(ElspethError):
    """The export cannot be written as asked (target folder, unknown column type)."""


class ExportFormat(StrEnum):
    PARQUET = "parquet"
    JSONL = "jsonl"


class ColumnInfo(BaseModel):
    name: str
    type: str
    nullable: bool
    primary_key: bool


class TableFile(BaseModel):
    file: str
    rows: int
    bytes: int
    sha256: str
    columns: list[ColumnInfo]


class Manifest(BaseModel):
    run_id: str
    run_status: str
    format: ExportFormat
    exported_at: str
    elspeth_beam_version: str
    schema_version: int
    landscape: str
    tables: dict[str, TableFile]


def arrow_schema(table: Table) -> pa.Schema:
    """The arrow schema of a Landscape table, from its column types and nullability."""
    fields = []
    for col in table.columns:
        arrow_type = next((a for sql_type, a in _ARROW_TYPES if isinstance(col.type, sql_type)), None)
        if arrow_type is None:
            raise ExportError(
                f"column {table.name}.{col.name} has type {col.type!r}, which export does not map to an arrow "
                "type; add it to elspeth_beam/inspect/export.py _ARROW_TYPES"
            )
        fields.append(pa.field(col.name, arrow_type, nullable=bool(col.nullable)))
    return pa.schema(fields, metadata={"elspeth_beam.table": table.name, "elspeth_beam.schema_version": str(s.SCHEMA_VERSION)})


def export_run(
    store: LandscapeStore,
    run_id: str,
    out_dir: str | Path,
    fmt: ExportFormat | str = ExportFormat.PARQUET,
    *,
    force: bool = False,
    chunk_rows: int = CHUNK_ROWS,
) -> Manifest:
    """Write every table of one run into ``out_dir`` and return the manifest written with them.

    ``out_dir`` must be missing or empty; ``force`` lets it hold files already, and then
    replaces only the files this export writes (other files stay, and are not in the manifest).
    """
    fmt = ExportFormat(fmt)
    out = Path(out_dir)
    run = store.run(run_id)  # RunNotFoundError before anything touches the disk
    _check_target(out, force)
    stage = out.parent / f".{out.name}.export-{uuid.uuid4().hex[:12]}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage.mkdir()  # beside out_dir: same filesystem, so the final renames are atomic
        return _export_staged(store, run, out, stage, fmt, chunk_rows)
    except OSError as exc:
        raise ExportError(f"cannot write the export to {out}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _export_staged(store: LandscapeStore, run: dict[str, Any], out: Path, stage: Path, fmt: ExportFormat, chunk_rows: int) -> Manifest:
    run_id = run["run_id"]
    tables: dict[str, TableFile] = {}
    with _snapshot(store) as conn:
        for table in RUN_TABLES:
            tables[table.name] = _write_table(conn, table, run_id, stage, fmt, chunk_rows)
    manifest = Manifest(
        run_id=run_id,
        run_status=run["status"],
        format=fmt,
        exported_at=utc_now(),
        elspeth_beam_version=elspeth_beam.__version__,
        schema_version=s.SCHEMA_VERSION,
        landscape=store.engine.url.render_as_string(hide_password=True),
        tables=tables,
    )
    with _durable(stage / MANIFEST, "w") as handle:
        handle.write(manifest.model_dump_json(indent=2) + "\n")
    _move_into_place(stage, out, [t.file for t in tables.values()])
    return manifest


def _check_target(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file, not a folder; name a new or empty folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"--out {out} is not empty; name a new or empty folder, or pass --force to overwrite the export files in it")


def _move_into_place(stage: Path, out: Path, files: list[str]) -> None:
    """A new folder appears whole (one rename); into an existing one the manifest moves last,
    so a manifest always describes files that are already there."""
    if not out.exists():
        os.rename(stage, out)
        return
    for name in [*files, MANIFEST]:
        os.replace(stage / name, out / name)


@contextmanager
def _snapshot(store: LandscapeStore) -> Iterator[Connection]:
    """A connection whose reads all see one state of the database."""
    with store.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            conn.begin()
        elif conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN")  # pysqlite starts no transaction for reads; WAL keeps this snapshot
        try:
            yield conn
        finally:
            conn.rollback()


def _chunks(conn: Connection, table: Table, run_id: str, schema: pa.Schema, chunk_rows: int) -> Iterator[pa.RecordBatch]:
    result = conn.execute(run_rows(table, run_id).execution_options(yield_per=chunk_rows))
    for part in result.partitions():
        columns = list(zip(*part))
        try:
            yield pa.record_batch([pa.array(col, type=f.type) for col, f in zip(columns, schema)], schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ExportError(f"table {table.name} holds a value that does not fit its declared column type: {exc}") from None


def _write_table(conn: Connection, table: Table, run_id: str, stage: Path, fmt: ExportFormat, chunk_rows: int) -> TableFile:
    if "run_id" not in table.c and table is not s.token_parents:
        raise ExportError(f"table {table.name} has no run_id; export cannot tell which of its rows belong to a run")
    schema = arrow_schema(table)
    path = stage / f"{table.name}.{fmt.value}"
    rows = 0
    with _durable(path, "wb") as handle:
        batches = _chunks(conn, table, run_id, schema, chunk_rows)
        if fmt is ExportFormat.PARQUET:
            with pq.ParquetWriter(handle, schema) as writer:
                for batch in batches:
                    writer.write_batch(batch)
                    rows += batch.num_rows
        else:
            for batch in batches:
                handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in batch.to_pylist()).encode())
                rows += batch.num_rows
    columns = [
        ColumnInfo(name=c.name, type=str(f.type), nullable=f.nullable, primary_key=c.primary_key)
        for c, f in zip(table.columns, schema)
    ]
    return TableFile(file=path.name, rows=rows, bytes=path.stat().st_size, sha256=sha256_file(path), columns=columns)


@contextmanager
def _durable(path: Path, mode: str) -> Iterator[IO[Any]]:
    """A file flushed to disk when the block ends, so a rename after it never exposes a torn file."""
    with open(path, mode) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
