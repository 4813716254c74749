"""verify: check a run's Landscape against the audit invariants (DESIGN §7) and its digest.

1. every token (so every source row, on every path) has exactly one terminal outcome;
2. every node_state is completed or failed — none open;
3. every batch is completed or failed, has a trigger type, and its aggregation_state_id
   names a node_state at its aggregation node;
5. (what one database can show of it) every token traces back to a source row of the run
   through token_parents, an aggregated output's parents are exactly its batch's members,
   and every reference between records names a record of the same run — event tables have
   no foreign keys, since events land in any order;
6. every sink part holds exactly the rows whose outcomes place them there — a part recorded
   again with other boundaries (a runner replaying rows in new bundles) would put rows into
   the merged file twice;
8. every token's path is complete and its hash chain continuous (inspect/paths.py): each
   node from the token's creation to its outcome holds its record, each input hash continues
   the previous step's output, a flush's hashes derive from its members and outputs;
and the run's records still match the digest written when it finished (auditlog/digest.py).
"""

from __future__ import annotations

import functools
import json
import multiprocessing
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, and_, exists, func, select
from sqlalchemy.engine import Connection, make_url

from elspeth_beam.config.secrets import SecretsRecorded
from elspeth_beam.landscape import schema as s
from elspeth_beam.core.canonical import CANONICAL_VERSION, stable_hash
from elspeth_beam.auditlog.digest import (
    DigestCheck, DigestFormatError, canonical_version, check_digest, check_digest_at, describe_key,
)
from elspeth_beam.inspect.paths import PathChecker, PathProblem
from elspeth_beam.landscape.store import LandscapeStore, absolute_url, run_rows

_EXAMPLES = 5


@dataclass
class VerifyReport:
    run_id: str
    problems: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    digest: DigestCheck | None = None
    secrets: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        head = f"run {self.run_id}: " + ("OK" if self.ok else f"{len(self.problems)} problem(s)")
        counts = ", ".join(f"{k} {v}" for k, v in self.checked.items())
        lines = [head, f"  checked: {counts}"]
        if self.digest is not None:
            lines.append(f"  digest:  {self._digest_text(self.digest)}")
        if self.secrets:
            lines.append(f"  secrets: {self.secrets}")
        return "\n".join([*lines, *(f"  - {p}" for p in self.problems)])

    @staticmethod
    def _digest_text(d: DigestCheck) -> str:
        if d.root is None:
            return "none (written when the run finishes)"
        return f"{d.root} ({d.records} records; keep a copy elsewhere, check it with --expect-digest)"


def _examples(ids: list[str]) -> str:
    more = f" (+{len(ids) - _EXAMPLES} more)" if len(ids) > _EXAMPLES else ""
    return ", ".join(ids[:_EXAMPLES]) + more


def verify_run(store: LandscapeStore, run_id: str, *, expected_digest: str | None = None) -> VerifyReport:
    run = store.run(run_id)  # raises RunNotFoundError
    report = VerifyReport(run_id, secrets=SecretsRecorded.of(run["settings_json"]).text())
    digest_check = _digest_check(store, run, expected_digest)
    with store.engine.connect() as conn:
        count = lambda t: conn.execute(select(func.count()).select_from(t).where(t.c.run_id == run_id)).scalar_one()  # noqa: E731
        report.checked = {"rows": count(s.rows), "tokens": count(s.tokens), "node_states": count(s.node_states), "batches": count(s.batches)}

        rows_without_tokens = _unmatched(conn, s.rows.c.row_id, s.tokens.c.row_id, run_id)
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
        orphans = _unmatched(conn, s.token_outcomes.c.token_id, s.tokens.c.token_id, run_id)
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
        report.problems += _lineage(conn, run_id) + _parts(conn, run_id) + _references(conn, run_id) + _paths(conn, run, report.checked)
    digest = digest_check()
    report.digest = digest
    report.problems += digest.problems + _digest_problems(digest)
    return report


def _digest_check(store: LandscapeStore, run: dict[str, Any], expected: str | None) -> Callable[[], DigestCheck]:
    """Start checking the run's seal; the returned call gives the result. A sealed run's every
    record is re-hashed — the larger half of verify's work — so a helper process does it on
    another core while this one runs the set queries. In this process: a run not sealed yet
    (nothing to re-hash), a small one (below ``DIGEST_APART_FROM`` records: starting the
    helper costs more), a database only this process can open, or no helper to be had."""
    if _sealed_records(run) >= DIGEST_APART_FROM and not _private(store.url):
        try:
            pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            future = pool.submit(check_digest_at, absolute_url(store.url), run, expected)
        except OSError:  # no process to be had here (limits): check in this one
            pass
        else:
            def result() -> DigestCheck:
                try:
                    return future.result()
                except BrokenProcessPool:  # the helper died (killed, out of memory): check here
                    return _check_here(store, run, expected)
                finally:
                    pool.shutdown()
            return result
    check = _check_here(store, run, expected)
    return lambda: check


def _check_here(store: LandscapeStore, run: dict[str, Any], expected: str | None) -> DigestCheck:
    with store.engine.connect() as conn:
        return check_digest(conn, run, expected)


DIGEST_APART_FROM = 200_000
"""Sealed records from which the seal is checked in a helper process: starting one (a fresh
interpreter importing SQLAlchemy) takes ~0.5 s, re-hashing 200 000 records ~0.9 s."""


def _sealed_records(run: dict[str, Any]) -> int:
    """The records the run's digest manifest counts (0 for a run not sealed, or a manifest that
    is not one: check_digest says so, in this process)."""
    if run["digest_root"] is None or run["digest_manifest"] is None:
        return 0
    try:
        return sum(int(entry["count"]) for entry in json.loads(run["digest_manifest"])["tables"].values())
    except (ValueError, KeyError, TypeError, AttributeError):
        return 0


def _private(url: str) -> bool:
    """A database no other process can open (SQLite in memory)."""
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")


def _lineage(conn: Connection, run_id: str) -> list[str]:
    """Invariant 5: every token reaches a source row; aggregated outputs descend from exactly
    their batch's members (a passthrough output is the member token itself)."""
    t, tp, r = s.tokens, s.token_parents, s.rows
    roots = (
        select(t.c.token_id)
        .join(r, and_(r.c.row_id == t.c.row_id, r.c.run_id == run_id, r.c.source_node_id == t.c.created_at_node))
        .where(t.c.run_id == run_id, ~exists().where(tp.c.token_id == t.c.token_id))
        .cte("grounded", recursive=True)
    )
    grounded = roots.union(select(tp.c.token_id).join(roots, tp.c.parent_token_id == roots.c.token_id))
    adrift = conn.execute(
        select(t.c.token_id).where(t.c.run_id == run_id, t.c.token_id.not_in(select(grounded.c.token_id))).order_by(t.c.token_id)
    ).scalars().all()
    problems = []
    if adrift:
        problems.append(f"{len(adrift)} token(s) do not trace back to a source row of the run: {_examples(adrift)}")

    bo, bm, mine = s.batch_outputs, s.batch_members, s.batch_members.alias("mine")
    member = lambda token: exists().where(mine.c.batch_id == bo.c.batch_id, mine.c.token_id == token)  # noqa: E731
    new_output = and_(bo.c.run_id == run_id, ~member(bo.c.token_id))
    lacking = select(bo.c.batch_id, bo.c.token_id).join(bm, bm.c.batch_id == bo.c.batch_id).where(
        new_output, ~exists().where(tp.c.token_id == bo.c.token_id, tp.c.parent_token_id == bm.c.token_id)
    )
    foreign = select(bo.c.batch_id, bo.c.token_id).join(tp, tp.c.token_id == bo.c.token_id).where(
        new_output, ~member(tp.c.parent_token_id)
    )
    wrong = sorted({f"{b}/{tok}" for b, tok in [*conn.execute(lacking), *conn.execute(foreign)]})
    if wrong:
        problems.append(
            f"{len(wrong)} aggregation output(s) do not have exactly their batch's members as parents "
            f"(batch/token): {_examples(wrong)}"
        )
    return problems


def _parts(conn: Connection, run_id: str) -> list[str]:
    """Invariant 6: a part's row count equals the outcomes that name it."""
    a, o = s.artifacts, s.token_outcomes
    placed = (
        select(o.c.artifact_id, func.count().label("n"))
        .where(o.c.run_id == run_id, o.c.artifact_id.is_not(None))
        .group_by(o.c.artifact_id)
        .subquery()
    )
    n = func.coalesce(placed.c.n, 0)
    off = conn.execute(
        select(a.c.artifact_id, a.c.row_count, n)
        .outerjoin(placed, placed.c.artifact_id == a.c.artifact_id)
        .where(a.c.run_id == run_id, a.c.artifact_kind == "part", a.c.row_count != n)
        .order_by(a.c.artifact_id)
    ).all()
    if not off:
        return []
    examples = [f"{art} ({rows} rows, {placed_n} placed)" for art, rows, placed_n in off]
    return [f"{len(off)} sink part(s) hold rows their outcomes do not place there, so the merged file may repeat "
            f"or lack rows: {_examples(examples)}"]


def _paths(conn: Connection, run: dict[str, Any], checked: dict[str, int]) -> list[str]:
    """Invariant 8: every token's path is recorded without a hole and its hashes chain; one
    line per kind of problem, naming the records (table, key, row index). Hashes are re-derived
    in the canonical form the run used; flushes hashed their members' rows whole before
    canonical version 2, so their links are checked from version 2 on."""
    try:
        version = canonical_version(run)
    except DigestFormatError:  # check_digest reports the manifest
        version = CANONICAL_VERSION
    hasher = functools.partial(stable_hash, version=version)
    grouped: dict[tuple[str, str, str], list[PathProblem]] = defaultdict(list)
    checker = PathChecker(conn, run["run_id"], hasher, check_flushes=version >= 2)
    for problem in checker.problems():
        grouped[(problem.table, problem.node_id, problem.detail.split(" — ")[0])].append(problem)
    checked["token paths"] = checker.walked
    lines = []
    for (table, node, _), found in grouped.items():
        kind = "hole(s) in a token's path" if found[0].missing else "broken link(s) in the hash chain"
        lines.append(f"{len(found)} {kind} at {node}: {found[0].detail}: {_examples([p.place() for p in found])}")
    return lines


# (table, column, table it names, column there): references checked within the run
_REFERENCES: tuple[tuple[Table, str, Table, str], ...] = (
    (s.rows, "source_node_id", s.nodes, "node_id"),
    (s.tokens, "row_id", s.rows, "row_id"),
    (s.token_parents, "parent_token_id", s.tokens, "token_id"),
    (s.node_states, "token_id", s.tokens, "token_id"),
    (s.node_states, "batch_id", s.batches, "batch_id"),
    (s.node_states, "node_id", s.nodes, "node_id"),
    (s.routing_events, "state_id", s.node_states, "state_id"),
    (s.batches, "aggregation_node_id", s.nodes, "node_id"),
    (s.batches, "retry_of_batch_id", s.batches, "batch_id"),
    (s.batch_members, "batch_id", s.batches, "batch_id"),
    (s.batch_members, "token_id", s.tokens, "token_id"),
    (s.batch_outputs, "batch_id", s.batches, "batch_id"),
    (s.batch_outputs, "token_id", s.tokens, "token_id"),
    (s.token_outcomes, "node_id", s.nodes, "node_id"),
    (s.token_outcomes, "artifact_id", s.artifacts, "artifact_id"),
    (s.artifacts, "sink_node_id", s.nodes, "node_id"),
)


def _unmatched(conn: Connection, column: Any, target: Any, run_id: str) -> list[Any]:
    """Values of ``column`` in the run's records that no record of ``target``'s table holds."""
    return conn.execute(
        select(column).outerjoin(target.table, target == column).where(column.table.c.run_id == run_id, target.is_(None))
    ).scalars().all()


def _references(conn: Connection, run_id: str) -> list[str]:
    """Referential integrity the schema cannot enforce: each reference names a record of this run."""
    problems = []
    for table, col, target, target_col in _REFERENCES:
        child = run_rows(table, run_id).order_by(None).subquery()
        known = exists().where(target.c[target_col] == child.c[col], target.c.run_id == run_id)
        dangling = conn.execute(
            select(child.c[col]).where(child.c[col].is_not(None), ~known).distinct().order_by(child.c[col])
        ).scalars().all()
        if dangling:
            problems.append(
                f"{len(dangling)} {table.name}.{col} value(s) name no {target.name} record of this run: {_examples(dangling)}"
            )
    return problems


def _digest_problems(d: DigestCheck) -> list[str]:
    """One line per table and kind of difference, naming the records by key."""
    problems = []
    for tc in d.tables:
        for kind, keys in (("changed", tc.changed), ("missing", tc.missing), ("added", tc.added)):
            if keys:
                named = _examples([describe_key(tc.table, k) for k in keys])
                problems.append(f"{tc.table}: {len(keys)} record(s) {kind} since the run's digest: {named}")
        if tc.digests_altered:
            problems.append(
                f"{tc.table}: its record_digests rows no longer hash to the root in runs.digest_manifest "
                "(the per-record digests were edited)"
            )
    return problems
