"""A run's summary: what a user wants to see when it ends (and `runs` lists)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from elspeth_beam.landscape import schema as s
from elspeth_beam.landscape.store import LandscapeStore


def summarize(store: LandscapeStore, run_id: str) -> dict[str, Any]:
    o = s.token_outcomes
    with store.engine.connect() as conn:
        rows_read = conn.execute(select(func.count()).select_from(s.rows).where(s.rows.c.run_id == run_id)).scalar_one()
        by_outcome = dict(
            conn.execute(
                select(o.c.outcome, func.count()).where(o.c.run_id == run_id, o.c.is_terminal.is_(True)).group_by(o.c.outcome)
            ).all()
        )
        per_sink = dict(
            conn.execute(
                select(o.c.sink_name, func.count())
                .where(o.c.run_id == run_id, o.c.sink_name.is_not(None))
                .group_by(o.c.sink_name)
            ).all()
        )
        batches = conn.execute(select(func.count()).select_from(s.batches).where(s.batches.c.run_id == run_id)).scalar_one()
    return {
        "rows_read": rows_read,
        "rows_per_sink": dict(sorted(per_sink.items())),
        "outcomes": dict(sorted(by_outcome.items())),
        "quarantined": by_outcome.get("quarantined", 0),
        "failed": by_outcome.get("failed", 0),
        "batches": batches,
    }


def list_runs(store: LandscapeStore) -> list[dict[str, Any]]:
    """Every run, newest first, with its row count."""
    counts = (
        select(s.rows.c.run_id, func.count().label("rows")).group_by(s.rows.c.run_id).subquery()
    )
    stmt = (
        select(s.runs.c.run_id, s.runs.c.status, s.runs.c.started_at, func.coalesce(counts.c.rows, 0).label("rows"))
        .outerjoin(counts, counts.c.run_id == s.runs.c.run_id)
        .order_by(s.runs.c.started_at.desc())
    )
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(stmt).mappings()]
