"""The audit-record schema, declared once: one record type per Landscape event table.

The Landscape's tables (``landscape/schema.py``) are the declaration; this module derives
from them what the write path needs: a record type per table (a named tuple whose fields are
the table's columns, in order) and its Arrow schema for segment files. The writer (audited
DoFns), the segment files, the loader, verify, digest and export therefore agree on every
column by construction — a column added to a table appears everywhere at once.

Records are tuples, not objects: an audited run makes ~10 of them per source row, and
appending a tuple to a per-table list is all the hot path does (no per-record dict for the
garbage collector to walk, no validation — the database's constraints check them on load).
"""

from __future__ import annotations

import functools
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyarrow as pa
from sqlalchemy import Boolean, Float, Integer, Table

from elspeth_beam.core.timestamps import iso
from elspeth_beam.landscape import schema as s

EVENT_TABLES: tuple[Table, ...] = (
    s.rows, s.tokens, s.token_parents, s.node_states, s.routing_events, s.batches,
    s.batch_members, s.batch_outputs, s.token_outcomes, s.artifacts,
)
"""The tables audited DoFns write, in load order (the rest are written by the run itself)."""


def _record_type(table: Table, name: str, **defaults: Any) -> type:
    """A named tuple of the table's columns; a field defaults to None unless given here."""
    columns = [c.name for c in table.columns]
    return namedtuple(name, columns, defaults=tuple(defaults.get(c) for c in columns))


RowRecord = _record_type(s.rows, "RowRecord")
TokenRecord = _record_type(s.tokens, "TokenRecord")
TokenParentRecord = _record_type(s.token_parents, "TokenParentRecord")
NodeStateRecord = _record_type(s.node_states, "NodeStateRecord", attempt=1)
RoutingRecord = _record_type(s.routing_events, "RoutingRecord")
BatchRecord = _record_type(s.batches, "BatchRecord", attempt=1)
BatchMemberRecord = _record_type(s.batch_members, "BatchMemberRecord")
BatchOutputRecord = _record_type(s.batch_outputs, "BatchOutputRecord")
OutcomeRecord = _record_type(s.token_outcomes, "OutcomeRecord")
ArtifactRecord = _record_type(s.artifacts, "ArtifactRecord")

RECORD_TYPES: dict[str, type] = {
    t.name: r for t, r in zip(EVENT_TABLES, (RowRecord, TokenRecord, TokenParentRecord, NodeStateRecord, RoutingRecord,
                                             BatchRecord, BatchMemberRecord, BatchOutputRecord, OutcomeRecord, ArtifactRecord))
}
TABLE_OF: dict[type, str] = {r: name for name, r in RECORD_TYPES.items()}
TABLES: dict[str, Table] = {t.name: t for t in EVENT_TABLES}


def positional(record_type: type, fields: str) -> Callable[[tuple], tuple]:
    """A constructor of ``record_type`` from a tuple of all its values in column order — a
    fifth of the keyword constructor's time, for the records made per row. ``fields`` names
    the columns as the caller orders them: checked here, once, against the table, so a column
    added to the table fails at import rather than shifting values into the wrong columns."""
    if tuple(fields.split()) != record_type._fields:
        raise TypeError(f"{record_type.__name__} has the columns {' '.join(record_type._fields)}, not {fields}")
    return functools.partial(tuple.__new__, record_type)


def _arrow_type(column: Any) -> pa.DataType:
    if column.type is s.TS:  # records hold integer microseconds (core/timestamps.py)
        return pa.timestamp("us", tz="UTC")
    if isinstance(column.type, Boolean):
        return pa.bool_()
    if isinstance(column.type, Integer):
        return pa.int64()
    if isinstance(column.type, Float):
        return pa.float64()
    return pa.string()


ARROW_SCHEMAS: dict[str, pa.Schema] = {
    t.name: pa.schema([pa.field(c.name, _arrow_type(c), nullable=c.nullable) for c in t.columns])
    for t in EVENT_TABLES
}


def key_positions(table: str) -> tuple[int, ...]:
    """Where a record's primary key sits in its tuple."""
    t = TABLES[table]
    names = [c.name for c in t.columns]
    return tuple(names.index(c.name) for c in t.primary_key.columns)


Columns = Sequence[Sequence[Any]]  # a table's records transposed: one sequence per column


def to_columns(records: Sequence[tuple]) -> list[tuple]:
    """Records as columns (what Arrow and pickle handle fastest)."""
    return list(zip(*records))


def to_records(columns: Columns) -> list[tuple]:
    """Columns back to records, in the table's column order (what executemany binds)."""
    return list(zip(*columns))


def tables_of(records: Sequence[tuple]) -> dict[str, list[tuple]]:
    """Records of any tables (record types) as columns per table, for the loader."""
    grouped: dict[str, list[tuple]] = {}
    for record in records:
        grouped.setdefault(TABLE_OF[type(record)], []).append(record)
    return {table: to_columns(rows) for table, rows in grouped.items()}


def record_batch(table: str, columns: Columns) -> pa.RecordBatch:
    schema = ARROW_SCHEMAS[table]
    return pa.RecordBatch.from_arrays([pa.array(col, type=f.type) for col, f in zip(columns, schema)], schema=schema)


def batch_columns(batch: pa.RecordBatch) -> list[list[Any]]:
    """A segment file's records as Python columns, timestamps as integer microseconds."""
    return [col.cast(pa.int64()).to_pylist() if f.type == _TS else col.to_pylist()
            for col, f in zip(batch.columns, batch.schema)]


def landscape_columns(table: str, columns: Columns) -> list[Sequence[Any]]:
    """A table's columns in the Landscape's types: timestamps rendered as ISO text."""
    return [[iso(v) for v in col] if i in _TS_POSITIONS[table] else col for i, col in enumerate(columns)]


_TS = pa.timestamp("us", tz="UTC")
_TS_POSITIONS: dict[str, frozenset[int]] = {
    t.name: frozenset(i for i, c in enumerate(t.columns) if c.type is s.TS) for t in EVENT_TABLES
}


def count(tables: Mapping[str, Columns]) -> int:
    return sum(len(cols[0]) if cols else 0 for cols in tables.values())
