"""Why tokens were set aside, grouped by cause: the one grouping the end-of-run summary,
``show`` and ``report`` all list.

A cause is the node that raised, the error type and the reason — the message with the
offending values taken out (recorded apart by our own errors, ``core/reasons.py``'s
normaliser for anyone else's) — so 1 461 rows failing on one column's decimal commas are one
reason of count 1 461 with a few of the values as examples, not 1 461 reasons of count 1.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from elspeth_beam.core.enums import Outcome
from elspeth_beam.core.reasons import without_values
from elspeth_beam.landscape import schema as s

EXAMPLES = 3  # offending values kept per reason
_EXAMPLE_WIDTH = 40  # characters of one example shown
SET_ASIDE = (Outcome.QUARANTINED.value, Outcome.FAILED.value)


class ReasonGroup(BaseModel):
    """The tokens that ended ``outcome`` for one cause."""

    outcome: str
    node_id: str  # the node that raised the error
    sink: str | None  # the error sink the tokens were written to, if any
    error_type: str
    reason: str  # the message, offending values replaced by core.reasons.PLACEHOLDER
    count: int
    examples: list[str]  # the commonest offending values (several in one message: in parentheses)
    distinct: int  # how many different values the tokens had

    def examples_text(self) -> str:
        return examples_text(self.examples, self.distinct)


def examples_text(examples: list[str], distinct: int) -> str:
    """``e.g. 'a', 'b', 'c' (75 distinct)``, or nothing when the reason quotes no value."""
    if not examples:
        return ""
    more = f" ({distinct:,} distinct)" if distinct > len(examples) else ""
    return "e.g. " + ", ".join(examples) + more


_Key = tuple[str, str, str | None, str, str]  # outcome, raising node, sink, error type, reason


def error_reasons(conn: Connection, run_id: str) -> list[ReasonGroup]:
    """Every cause tokens were quarantined or failed for, most frequent first.

    The database groups identical error records (their tracebacks and values differ, so there
    are as many as distinct values at most); the grouping by cause happens here, where the
    recorded JSON is read (portable across databases)."""
    o = s.token_outcomes
    recorded = conn.execute(
        select(o.c.outcome, o.c.node_id, o.c.sink_name, o.c.error_json, func.count())
        .where(o.c.run_id == run_id, o.c.is_terminal.is_(True), o.c.outcome.in_(SET_ASIDE))
        .group_by(o.c.outcome, o.c.node_id, o.c.sink_name, o.c.error_json)
    ).all()
    return group_errors(recorded)


def group_errors(recorded: Iterable[tuple[str, str, str | None, str | None, int]]) -> list[ReasonGroup]:
    """(outcome, outcome's node, sink, error_json, tokens) records grouped by cause."""
    values: dict[_Key, Counter[str]] = defaultdict(Counter)
    counts: Counter[_Key] = Counter()
    for outcome, node_id, sink, error_json, n in recorded:
        error = _error(error_json)
        reason, found = cause(error)
        key = (outcome, str(error.get("node_id") or node_id), sink, str(error.get("type") or ""), reason)
        counts[key] += n
        if found:
            values[key][_example(found)] += n
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0][1], kv[0][4], kv[0][0]))
    return [_group(key, n, values[key]) for key, n in ranked]


def _group(key: _Key, count: int, seen: Counter[str]) -> ReasonGroup:
    outcome, node_id, sink, error_type, reason = key
    examples = [v for v, _ in sorted(seen.items(), key=lambda kv: (-kv[1], kv[0]))[:EXAMPLES]]
    return ReasonGroup(outcome=outcome, node_id=node_id, sink=sink, error_type=error_type, reason=reason, count=count,
                       examples=examples, distinct=len(seen))


def cause(error: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """A recorded error's reason and its values: as our own errors recorded them, else the
    message with what looks like a value (quoted literals, numbers) taken out."""
    if isinstance(error.get("reason"), str):
        return error["reason"], tuple(str(v) for v in error.get("values") or ())
    return without_values(str(error.get("message") or "(no message)"))


def _error(error_json: str | None) -> dict[str, Any]:
    """A recorded error as a mapping; tolerant of records without one or not JSON."""
    if not error_json:
        return {"message": "(no error recorded)"}
    try:
        parsed = json.loads(error_json)
    except ValueError:
        return {"message": error_json}
    return parsed if isinstance(parsed, dict) else {"message": str(parsed)}


def _example(found: tuple[str, ...]) -> str:
    shown = [v if len(v) <= _EXAMPLE_WIDTH else v[: _EXAMPLE_WIDTH - 1] + "…" for v in found]
    return shown[0] if len(shown) == 1 else "(" + ", ".join(shown) + ")"
