"""Terse builders of audit records for tests, with the defaults the write path fills in
(timestamps, attempt 1, a token's parent records, an outcome's ``is_terminal``)."""

from __future__ import annotations

from typing import Any

from elspeth_beam.auditlog import records as r
from elspeth_beam.auditlog.loader import load_records
from elspeth_beam.core.enums import Outcome
from elspeth_beam.core.timestamps import now_us


def row(**kw: Any) -> tuple:
    return r.RowRecord(**kw)


def token(*, parent_ids: tuple[str, ...] = (), created_at: int | str | None = None, **kw: Any) -> list[tuple]:
    """A token and its parent links (two tables, as the write path records them)."""
    made = [r.TokenRecord(created_at=created_at or now_us(), **kw)]
    return made + [r.TokenParentRecord(token_id=kw["token_id"], parent_token_id=p, ordinal=i) for i, p in enumerate(parent_ids)]


def node_state(**kw: Any) -> tuple:
    return r.NodeStateRecord(**kw)


def routing(**kw: Any) -> tuple:
    return r.RoutingRecord(**kw)


def outcome(*, outcome: Outcome, recorded_at: int | str | None = None, **kw: Any) -> tuple:
    return r.OutcomeRecord(outcome=outcome.value, is_terminal=outcome.is_terminal, recorded_at=recorded_at or now_us(), **kw)


def batch(*, node_id: str, created_at: int | str | None = None, **kw: Any) -> tuple:
    return r.BatchRecord(aggregation_node_id=node_id, created_at=created_at or now_us(), **kw)


def batch_member(**kw: Any) -> tuple:
    return r.BatchMemberRecord(**kw)


def batch_output(**kw: Any) -> tuple:
    return r.BatchOutputRecord(**kw)


def artifact(*, artifact_kind: str = "part", created_at: int | str | None = None, **kw: Any) -> tuple:
    return r.ArtifactRecord(artifact_kind=artifact_kind, created_at=created_at or now_us(), **kw)


def flat(items: Any) -> list[tuple]:
    """Records from records and lists of them (a token is a list)."""
    out: list[tuple] = []
    for item in items:
        if isinstance(item, list):
            out.extend(item)
        else:
            out.append(item)
    return out


def write(store: Any, items: Any) -> int:
    """Load records (any tables, any order, duplicates allowed) in one transaction."""
    return load_records(store.engine, r.tables_of(flat(items)))


def of_segment(segment: Any) -> list[tuple]:
    """A segment element's records, as record tuples of their tables."""
    return [r.RECORD_TYPES[table](*values) for table, columns in segment.tables.items() for values in r.to_records(columns)]
