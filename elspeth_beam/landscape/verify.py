"""verify: check a run's Landscape against the audit invariants (DESIGN §7, 1–3).

1. every token (so every source row, on every path) has exactly one terminal outcome;
2. every node_state is completed or failed — none open;
3. every batch is completed or failed, has a trigger type, and its aggregation_state_id
   names a node_state at its aggregation node.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import and_, func, select

from elspeth_beam.landscape import schema as s
from elspeth_beam.landscape.store import LandscapeStore

_EXAMPLES = 5


@dataclass
class VerifyReport:
    run_id: str
    problems: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        head = f"run {self.run_id}: " + ("OK" if self.ok else f"{len(self.problems)} problem(s)")
        counts = ", ".join(f"{k} {v}" for k, v in self.checked.items())
        return "\n".join([head, f"  checked: {counts}", *(f"  - {p}" for p in self.problems)])


def _examples(ids: list[str]) -> str:
    more = f" (+{len(ids) - _EXAMPLES} more)" if len(ids) > _EXAMPLES else ""
    return ", ".join(ids[:_EXAMPLES]) + more


def verify_run(store: LandscapeStore, run_id: str) -> VerifyReport:
    store.run(run_id)  # raises RunNotFoundError
    report = VerifyReport(run_id)
    with store.engine.connect() as conn:
        count = lambda t: conn.execute(select(func.count()).select_from(t).where(t.c.run_id == run_id)).scalar_one()  # noqa: E731
        report.checked = {"rows": count(s.rows), "tokens": count(s.tokens), "node_states": count(s.node_states), "batches": count(s.batches)}

        rows_without_tokens = conn.execute(
            select(s.rows.c.row_id)
            .outerjoin(s.tokens, s.tokens.c.row_id == s.rows.c.row_id)
            .where(s.rows.c.run_id == run_id, s.tokens.c.token_id.is_(None))
        ).scalars().all()
        if rows_without_tokens:
            report.problems.append(f"{len(rows_without_tokens)} row(s) have no token: {_examples(rows_without_tokens)}")

        terminal = (
            select(s.token_outcomes.c.token_id, func.count().label("n"))
            .where(s.token_outcomes.c.run_id == run_id, s.token_outcomes.c.is_terminal.is_(True))
            .group_by(s.token_outcomes.c.token_id)
            .subquery()
        )
        no_outcome = conn.execute(
            select(s.tokens.c.token_id)
            .outerjoin(terminal, terminal.c.token_id == s.tokens.c.token_id)
            .where(s.tokens.c.run_id == run_id, terminal.c.token_id.is_(None))
        ).scalars().all()
        if no_outcome:
            report.problems.append(f"{len(no_outcome)} token(s) have no terminal outcome: {_examples(no_outcome)}")
        several = conn.execute(select(terminal.c.token_id).where(terminal.c.n > 1)).scalars().all()
        if several:
            report.problems.append(f"{len(several)} token(s) have several terminal outcomes: {_examples(several)}")
        orphans = conn.execute(
            select(s.token_outcomes.c.token_id)
            .outerjoin(s.tokens, s.tokens.c.token_id == s.token_outcomes.c.token_id)
            .where(s.token_outcomes.c.run_id == run_id, s.tokens.c.token_id.is_(None))
        ).scalars().all()
        if orphans:
            report.problems.append(f"{len(orphans)} outcome(s) name unknown tokens: {_examples(orphans)}")

        open_states = conn.execute(
            select(s.node_states.c.state_id).where(
                s.node_states.c.run_id == run_id, s.node_states.c.status.not_in(["completed", "failed"])
            )
        ).scalars().all()
        if open_states:
            report.problems.append(f"{len(open_states)} node_state(s) are still open: {_examples(open_states)}")

        b, ns = s.batches, s.node_states
        unfinished = conn.execute(
            select(b.c.batch_id).where(b.c.run_id == run_id, b.c.status.not_in(["completed", "failed"]))
        ).scalars().all()
        if unfinished:
            report.problems.append(f"{len(unfinished)} batch(es) are not completed or failed: {_examples(unfinished)}")
        no_trigger = conn.execute(
            select(b.c.batch_id).where(b.c.run_id == run_id, b.c.trigger_type.is_(None))
        ).scalars().all()
        if no_trigger:
            report.problems.append(f"{len(no_trigger)} batch(es) have no trigger type: {_examples(no_trigger)}")
        unlinked = conn.execute(
            select(b.c.batch_id)
            .outerjoin(
                ns,
                and_(
                    ns.c.state_id == b.c.aggregation_state_id,
                    ns.c.node_id == b.c.aggregation_node_id,
                    ns.c.batch_id == b.c.batch_id,
                ),
            )
            .where(b.c.run_id == run_id, ns.c.state_id.is_(None))
        ).scalars().all()
        if unlinked:
            report.problems.append(
                f"{len(unlinked)} batch(es) lack a flush node_state at their aggregation node: {_examples(unlinked)}"
            )
    return report
