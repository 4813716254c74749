"""A run's summary: what a user wants to see when it ends (and `runs` lists)."""

from __future__ import annotations

import datetime as dt
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


def duration_s(started_at: str | None, completed_at: str | None) -> float | None:
    """Seconds between two recorded ISO timestamps; None while the run has not finished."""
    if not started_at or not completed_at:
        return None
    return (dt.datetime.fromisoformat(completed_at) - dt.datetime.fromisoformat(started_at)).total_seconds()


def list_runs(store: LandscapeStore) -> list[dict[str, Any]]:
    """Every run, newest first: status, times, row count and terminal outcome counts."""
    counts = (
        select(s.rows.c.run_id, func.count().label("rows")).group_by(s.rows.c.run_id).subquery()
    )
    stmt = (
        select(
            s.runs.c.run_id,
            s.runs.c.status,
            s.runs.c.started_at,
            s.runs.c.completed_at,
            func.coalesce(counts.c.rows, 0).label("rows"),
        )
        .outerjoin(counts, counts.c.run_id == s.runs.c.run_id)
        .order_by(s.runs.c.started_at.desc())
    )
    o = s.token_outcomes
    per_outcome = select(o.c.run_id, o.c.outcome, func.count()).where(o.c.is_terminal.is_(True)).group_by(o.c.run_id, o.c.outcome)
    with store.engine.connect() as conn:
        runs = [dict(r) for r in conn.execute(stmt).mappings()]
        outcomes: dict[str, dict[str, int]] = {}
        for run_id, outcome, n in conn.execute(per_outcome):
            outcomes.setdefault(run_id, {})[outcome] = n
    for r in runs:
        r["duration_s"] = duration_s(r["started_at"], r["completed_at"])
        r["outcomes"] = dict(sorted(outcomes.get(r["run_id"], {}).items()))
    return runs
