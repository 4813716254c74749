"""A run's summary: what a user wants to see when it ends (and `runs` lists).

``summarize`` reads the counts and the most common reasons rows were set aside from the
Landscape; ``render_text`` lays them out as the table ``run`` and ``resume`` print.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError

from elspeth_beam.inspect.reasons import ReasonGroup, error_reasons, examples_text
from elspeth_beam.landscape import schema as s
from elspeth_beam.landscape.store import LandscapeStore

TOP_REASONS = 5  # reasons listed per outcome; the rest are counted, not listed
_REASON_WIDTH = 110  # characters of a reason shown in the text table


def summarize(store: LandscapeStore, run_id: str, *, reasons: list[ReasonGroup] | None = None) -> dict[str, Any]:
    """The run's counts and commonest reasons; ``reasons``, the run's ``error_reasons``, when
    the caller has read them already (``show`` lists them too)."""
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
        by_trigger = _batches_by_trigger(conn, run_id)
        set_aside = rows_set_aside(conn, run_id)
        if reasons is None:
            reasons = error_reasons(conn, run_id)
    quarantine_reasons = _reason_rows(reasons, "quarantined")
    failure_reasons = _reason_rows(reasons, "failed")
    return {
        "rows_read": rows_read,
        "rows_per_sink": dict(sorted(per_sink.items())),
        "outcomes": dict(sorted(by_outcome.items())),
        "quarantined": by_outcome.get("quarantined", 0),
        "failed": by_outcome.get("failed", 0),
        "rows_set_aside": set_aside,
        "batches": sum(by_trigger.values()),
        "batches_by_trigger": by_trigger,
        "quarantine_reasons": quarantine_reasons,
        "failure_reasons": failure_reasons,
    }


def rows_set_aside(conn: Connection, run_id: str) -> int:
    """Source rows with a token quarantined or failed (on any path): what the run's
    ``max_quarantined_fraction`` is measured against."""
    o, t = s.token_outcomes, s.tokens
    rows = (
        select(t.c.row_id)
        .join(o, o.c.token_id == t.c.token_id)
        .where(o.c.run_id == run_id, o.c.is_terminal.is_(True), o.c.outcome.in_(("quarantined", "failed")))
        .distinct()
        .subquery()
    )
    return conn.execute(select(func.count()).select_from(rows)).scalar_one()


def duration_s(started_at: str | None, completed_at: str | None) -> float | None:
    """Seconds between two recorded ISO timestamps; None while the run has not finished."""
    if not started_at or not completed_at:
        return None
    return (dt.datetime.fromisoformat(completed_at) - dt.datetime.fromisoformat(started_at)).total_seconds()


def _batches_by_trigger(conn: Connection, run_id: str) -> dict[str, int]:
    """Batches per trigger type; a batch not flushed yet has none and counts as ``open``."""
    b = s.batches
    counts = conn.execute(select(b.c.trigger_type, func.count()).where(b.c.run_id == run_id).group_by(b.c.trigger_type))
    return dict(sorted((trigger or "open", n) for trigger, n in counts.all()))


def _reason_rows(groups: list[ReasonGroup], outcome: str, limit: int = TOP_REASONS) -> list[dict[str, Any]]:
    """The commonest causes tokens ended with ``outcome`` (``inspect/reasons.py``), as the
    summary's JSON lists them."""
    chosen = [g for g in groups if g.outcome == outcome][:limit]
    return [g.model_dump(include={"count", "node_id", "error_type", "reason", "examples", "distinct"}) for g in chosen]


class RunHeader(BaseModel):
    """Who ran what, when, where: the head of ``show`` and of the HTML report."""

    run_id: str
    status: str
    runner: str
    started_at: str
    completed_at: str | None
    duration_s: float | None
    settings_hash: str
    landscape_url: str  # password hidden
    beam_options: dict[str, Any]
    rows_read: int


def run_header(store: LandscapeStore, run: dict[str, Any], rows_read: int) -> RunHeader:
    """The header of a ``runs`` row (``store.run(run_id)``)."""
    return RunHeader(
        run_id=run["run_id"],
        status=run["status"],
        runner=run["runner"],
        started_at=run["started_at"],
        completed_at=run["completed_at"],
        duration_s=duration_s(run["started_at"], run["completed_at"]),
        settings_hash=run["settings_hash"],
        landscape_url=display_url(store.url),
        beam_options=json.loads(run["beam_options_json"] or "{}"),
        rows_read=rows_read,
    )


def display_url(url: str) -> str:
    """A Landscape URL safe to print: any password is replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def render_text(
    *, run_id: str, status: str, runner: str, duration_s: float, landscape_url: str, summary: dict[str, Any],
    problems: list[str], reason: str | None = None,
) -> str:
    """The end-of-run table: one labelled line per fact, sinks and reasons as indented rows."""
    lines = [
        _row("run", f"{run_id}  [{status}]"),
        *([_row("why", reason)] if reason else []),
        _row("runner", runner),
        _row("duration", f"{duration_s:.2f}s"),
        _row("rows read", str(summary["rows_read"])),
        *[_row("warning", warning) for warning in summary.get("warnings", [])],
        *_sink_rows(summary["rows_per_sink"]),
        *_outcome_rows("quarantined", summary["quarantined"], summary.get("quarantine_reasons", [])),
        *_outcome_rows("failed", summary["failed"], summary.get("failure_reasons", [])),
        _row("batches", _batches(summary["batches"], summary.get("batches_by_trigger", {}))),
        _row("landscape", display_url(landscape_url)),
        _row("verify", "OK" if not problems else "; ".join(problems)),
    ]
    return "\n".join(lines)


def _row(label: str, value: str) -> str:
    return f"{label:<10} {value}"


def _sink_rows(per_sink: dict[str, int]) -> list[str]:
    if not per_sink:
        return [_row("per sink", "none")]
    name_width = max(len(name) for name in per_sink)
    count_width = max(len(str(n)) for n in per_sink.values())
    return [_row("per sink" if i == 0 else "", f"{name:<{name_width}}  {n:>{count_width}}")
            for i, (name, n) in enumerate(per_sink.items())]


def _outcome_rows(label: str, total: int, reasons: list[dict[str, Any]]) -> list[str]:
    """``quarantined 8`` then its top reasons, one per line, and how many rows had others."""
    lines = [_row(label, str(total) + ("  top reasons:" if reasons else ""))]
    if not reasons:
        return lines
    count_width = max(len(str(r["count"])) for r in reasons)
    node_width = max(len(r["node_id"]) for r in reasons)
    for r in reasons:
        examples = examples_text(r["examples"], r["distinct"])
        lines.append(_row("", f"{r['count']:>{count_width}}  {r['node_id']:<{node_width}}  {_shortened(r['reason'])}"
                              + (f"  {examples}" if examples else "")))
    others = total - sum(r["count"] for r in reasons)
    if others > 0:
        lines.append(_row("", f"{others:>{count_width}}  (other reasons)"))
    return lines


def _shortened(text: str) -> str:
    return text if len(text) <= _REASON_WIDTH else text[: _REASON_WIDTH - 1] + "…"


def _batches(total: int, by_trigger: dict[str, int]) -> str:
    detail = ", ".join(f"{trigger} {n}" for trigger, n in by_trigger.items())
    return f"{total}  ({detail})" if detail else str(total)


def list_runs(store: LandscapeStore, *, pipeline: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
    """Every run, newest first — only those of ``pipeline`` (see ``is_pipeline``) and in
    ``status`` when given: its settings file, status, times, row count and terminal outcome counts."""
    counts = (
        select(s.rows.c.run_id, func.count().label("rows")).group_by(s.rows.c.run_id).subquery()
    )
    stmt = (
        select(
            s.runs.c.run_id,
            s.runs.c.settings_path,
            s.runs.c.status,
            s.runs.c.started_at,
            s.runs.c.completed_at,
            func.coalesce(counts.c.rows, 0).label("rows"),
        )
        .outerjoin(counts, counts.c.run_id == s.runs.c.run_id)
        .order_by(s.runs.c.started_at.desc())
    )
    if status is not None:
        stmt = stmt.where(s.runs.c.status == status)
    o = s.token_outcomes
    per_outcome = select(o.c.run_id, o.c.outcome, func.count()).where(o.c.is_terminal.is_(True)).group_by(o.c.run_id, o.c.outcome)
    with store.engine.connect() as conn:
        runs = [dict(r) for r in conn.execute(stmt).mappings() if pipeline is None or is_pipeline(r["settings_path"], pipeline)]
        outcomes: dict[str, dict[str, int]] = {}
        for run_id, outcome, n in conn.execute(per_outcome):
            outcomes.setdefault(run_id, {})[outcome] = n
    for r in runs:
        r["duration_s"] = duration_s(r["started_at"], r["completed_at"])
        r["outcomes"] = dict(sorted(outcomes.get(r["run_id"], {}).items()))
    return runs


def is_pipeline(settings_path: str | None, name: str) -> bool:
    """Whether a run's recorded settings file is the pipeline ``name``: the file's name without
    its extension (``quickstart``), or the end of its path (``accounts.yaml``,
    ``pipelines/accounts.yaml``, the whole path)."""
    if settings_path is None:
        return False
    path, asked = PurePath(settings_path), PurePath(name)
    return name == path.stem or (bool(asked.parts) and path.parts[-len(asked.parts):] == asked.parts)
