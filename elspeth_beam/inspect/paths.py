"""Path completeness and hash-chain continuity of a run's tokens (DESIGN §7, invariant 8).

Each node's audit commits on its own, so after a crash an aggregation's ``buffered`` outcome
can be durable while the upstream transform's node_state of the same token is not. This
module walks every token through the graph as the Landscape recorded it (``nodes``,
``edges``): from where the token was made, each node on its way must hold its record — a
node_state, a gate's routing event, an aggregation's membership with its ``buffered``
checkpoint — and each record's input hash must continue the previous one's (core/chain.py).
A flush's input hash must derive from its members, its output hash from its outputs.

The walk stops where a token's records stop. Nothing recorded beyond that point means the
token is unfinished (a crashed run's frontier, which invariant 1 reports in a finished run);
anything recorded beyond it — a later state, a membership, a terminal outcome — makes it a
**hole**. ``verify`` reports every problem; ``resume`` redoes the work that fills the holes:
the source row again, or an aggregation's output again when the hole lies past the flush.

Tokens carry their row's position in their ids (core/ids.py), so the walk reads the run in
windows of row positions, each through the indexes, and holds one window in memory.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import and_, func, select
from sqlalchemy.engine import Connection

from elspeth_beam.core import ids
from elspeth_beam.core.canonical import stable_hash
from elspeth_beam.core.chain import members_hash, raw_row
from elspeth_beam.landscape import schema as s

WINDOW_ROWS = 20_000  # row positions read at a time: bounds memory on big runs

Hasher = Callable[[Any], str]


@dataclass(frozen=True)
class PathProblem:
    """One hole or broken link, named by the table that lacks (or holds) the record."""

    table: str
    key: str  # the record's key, or (for a missing one) what it would describe
    token_id: str
    row_index: int
    node_id: str
    detail: str
    redo_from: str | None = None  # an aggregation whose output must be re-emitted to refill it; None: the source row
    missing: bool = True  # a hole (resume fills it); False: a wrong record (only verify can name it)

    def place(self) -> str:
        """The record: table, key and (for a token's) row index."""
        return f"{self.table} {self.key}" + (f" (row index {self.row_index})" if self.row_index >= 0 else "")

    def text(self) -> str:
        return f"{self.place()} at {self.node_id}: {self.detail}"


# ---- the graph as recorded --------------------------------------------------------------


@dataclass(frozen=True)
class RecordedNode:
    node_id: str
    node_type: str
    success: str | None  # the node its success output feeds (not for gates: they route)
    error_sink: str | None
    passthrough: bool  # an aggregation whose outputs are its member tokens


@dataclass(frozen=True)
class RecordedGraph:
    nodes: dict[str, RecordedNode]
    targets: dict[str, str]  # a destination name (connection or sink) → the node it feeds

    @classmethod
    def load(cls, conn: Connection, run_id: str) -> RecordedGraph:
        n, e = s.nodes, s.edges
        edges = conn.execute(select(e.c.from_node, e.c.to_node, e.c.label).where(e.c.run_id == run_id)).all()
        follows = {(f, label): to for f, to, label in edges}
        nodes, targets = {}, {}
        for node_id, name, node_type, config_json in conn.execute(
            select(n.c.node_id, n.c.name, n.c.node_type, n.c.config_json).where(n.c.run_id == run_id)
        ):
            config = json.loads(config_json)
            if node_type == "sink":
                targets[name] = node_id
            elif config.get("input") is not None:
                targets[config["input"]] = node_id
            nodes[node_id] = RecordedNode(
                node_id, node_type,
                success=follows.get((node_id, "on_success")),
                error_sink=follows.get((node_id, "on_error")),
                passthrough=config.get("output_mode") == "passthrough",
            )
        return cls(nodes, targets)


# ---- what one window of row positions recorded ------------------------------------------


class _State(NamedTuple):  # a tuple: one per node_state, made by the hundred thousand
    state_id: str
    status: str
    input_hash: str | None
    output_hash: str | None


@dataclass(frozen=True)
class _Batch:
    batch_id: str
    node_id: str
    status: str
    trigger_type: str | None
    flush: _State | None


def _between(column: Any, kind: str, lo: int, hi: int) -> Any:
    """Ids of ``kind`` whose position is in [lo, hi): a range of the column's index. (Bounds of
    hex digits only, which every collation orders alike — PostgreSQL's need not be C.)"""
    return and_(column >= f"{kind}_{ids.position(lo)}", column < f"{kind}_{ids.position(hi)}")


def _fetch(conn: Connection, stmt: Any) -> list[tuple]:
    """Rows as plain tuples straight from the driver: building SQLAlchemy rows cost as much as
    the queries themselves for the hundreds of thousands of records a window holds."""
    compiled = stmt.compile(dialect=conn.dialect)
    params: Any = compiled.construct_params()
    if compiled.positional:
        params = tuple(params[name] for name in compiled.positiontup or ())
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(str(compiled), params)
        return cursor.fetchall()
    finally:
        cursor.close()


def _of_run(column: Any, run_id: str) -> Any:
    """``run_id = :run`` written so that SQLite reads the id range's index, not the run's
    (without statistics it prefers the equality, and scans the whole run per window)."""
    return column.concat("") == run_id


@dataclass
class _Window:
    tokens: dict[str, tuple[str, str, str | None, str | None]]  # token → (row_id, created at, branch, first parent)
    states: dict[str, dict[str, _State]]  # token → node → its state
    routes: dict[str, list[str]]  # gate state → destinations
    terminal: dict[str, list[tuple[str, str]]]  # token → its terminal outcomes (outcome, node)
    arrivals: dict[tuple[str, str], str | None]  # (token, aggregation) → row hash of its buffered checkpoint
    memberships: dict[str, list[tuple[str, int]]]  # token → (batch, ordinal)
    outputs: dict[str, dict[str, tuple[int, str]]]  # token → batch → (ordinal, the output row's hash)
    rows: dict[str, tuple[int, str, str | None]]  # row_id → (index, source_data_hash, payload_json)
    children: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # forked token → its children's branches

    @classmethod
    def read(cls, conn: Connection, run_id: str, lo: int, hi: int, hasher: Hasher) -> _Window:
        t, tp, ns, re_, o, bm, bo, r = (s.tokens, s.token_parents, s.node_states, s.routing_events, s.token_outcomes,
                                        s.batch_members, s.batch_outputs, s.rows)
        window = cls({}, defaultdict(dict), defaultdict(list), defaultdict(list), {}, defaultdict(list), defaultdict(dict), {})
        parents = dict(_fetch(conn,
            select(tp.c.token_id, tp.c.parent_token_id).where(_between(tp.c.token_id, "tok", lo, hi), tp.c.ordinal == 0)
        ))
        for tid, row_id, created, branch in _fetch(conn,
            select(t.c.token_id, t.c.row_id, t.c.created_at_node, t.c.branch_name)
            .where(_between(t.c.token_id, "tok", lo, hi), _of_run(t.c.run_id, run_id))
        ):
            window.tokens[tid] = (row_id, created, branch, parents.get(tid))
            if branch is not None and tid in parents:
                window.children[parents[tid]].add(branch)
        for tid, node, *state in _fetch(conn,
            select(ns.c.token_id, ns.c.node_id, ns.c.state_id, ns.c.status, ns.c.input_hash, ns.c.output_hash)
            .where(_between(ns.c.token_id, "tok", lo, hi), _of_run(ns.c.run_id, run_id))
        ):
            window.states[tid][node] = _State(*state)
        for state_id, destination in _fetch(conn,
            select(re_.c.state_id, re_.c.destination).where(_between(re_.c.state_id, "st", lo, hi), _of_run(re_.c.run_id, run_id))
        ):
            window.routes[state_id].append(destination)
        for tid, outcome, node, is_terminal, token_json in _fetch(conn,
            select(o.c.token_id, o.c.outcome, o.c.node_id, o.c.is_terminal, o.c.token_json)
            .where(_between(o.c.token_id, "tok", lo, hi), _of_run(o.c.run_id, run_id))
        ):
            if is_terminal:
                window.terminal[tid].append((outcome, node))
            elif outcome == "buffered":
                window.arrivals[(tid, node)] = _row_hash(token_json, hasher)
        for tid, batch_id, ordinal in _fetch(conn,
            select(bm.c.token_id, bm.c.batch_id, bm.c.ordinal).where(bm.c.run_id == run_id, _between(bm.c.token_id, "tok", lo, hi))
        ):
            window.memberships[tid].append((batch_id, ordinal))
        for batch_id, tid, ordinal, token_json in _fetch(conn,
            select(bo.c.batch_id, bo.c.token_id, bo.c.ordinal, bo.c.token_json)
            .where(bo.c.run_id == run_id, _between(bo.c.token_id, "tok", lo, hi))
        ):
            window.outputs[tid][batch_id] = (ordinal, _row_hash(token_json, hasher))
        for row_id, index, source_hash, payload in _fetch(conn,
            select(r.c.row_id, r.c.row_index, r.c.source_data_hash, r.c.payload_json)
            .where(_between(r.c.row_id, "row", lo, hi), _of_run(r.c.run_id, run_id))
        ):
            window.rows[row_id] = (index, source_hash, payload)
        return window

    def token_ids(self) -> list[str]:
        """Every token any record of the window names — one may lack its own ``tokens`` row."""
        named = {*self.tokens, *self.states, *self.terminal, *self.memberships, *(tid for tid, _ in self.arrivals)}
        return sorted(named)


def _row_hash(token_json: str | None, hasher: Hasher) -> str | None:
    return hasher(json.loads(token_json)["row"]) if token_json else None


# ---- the walk ---------------------------------------------------------------------------


@dataclass
class _Walk:
    """One token's walk: where it is, the hash it carries, what it has not yet accounted for."""

    token_id: str
    row_index: int
    node: str | None
    carried: str | None
    states: dict[str, _State]
    memberships: list[tuple[str, int]]
    redo_from: str | None = None  # the last aggregation passed (passthrough): where a redo starts
    problems: list[PathProblem] = field(default_factory=list)

    def problem(self, table: str, key: str, detail: str, *, missing: bool = True) -> None:
        self.problems.append(PathProblem(table, key, self.token_id, self.row_index, self.node or "(no node)", detail,
                                         self.redo_from, missing))


class PathChecker:
    """Walks a run's tokens window by window; see the module docstring."""

    def __init__(self, conn: Connection, run_id: str, hasher: Hasher = stable_hash, check_flushes: bool = True) -> None:
        self.conn, self.run_id, self.hasher, self.check_flushes = conn, run_id, hasher, check_flushes
        self.graph = RecordedGraph.load(conn, run_id)
        self.batches = self._batches()
        self.retried = {b for (b,) in conn.execute(
            select(s.batches.c.retry_of_batch_id).where(s.batches.c.run_id == run_id, s.batches.c.retry_of_batch_id.is_not(None))
        )}
        self._arrivals: dict[str, list[tuple[int, str | None]]] = defaultdict(list)  # batch → members' (ordinal, hash)
        self._outputs: dict[str, list[tuple[int, str | None]]] = defaultdict(list)  # batch → outputs' (ordinal, hash)
        self.walked = 0  # tokens whose paths were walked so far

    def _batches(self) -> dict[str, _Batch]:
        b, ns = s.batches, s.node_states
        flushes = {bid: _State(*rest) for bid, *rest in self.conn.execute(
            select(ns.c.batch_id, ns.c.state_id, ns.c.status, ns.c.input_hash, ns.c.output_hash)
            .where(ns.c.batch_id.is_not(None), ns.c.run_id == self.run_id)
        )}
        return {bid: _Batch(bid, node, status, trigger, flushes.get(bid)) for bid, node, status, trigger in self.conn.execute(
            select(b.c.batch_id, b.c.aggregation_node_id, b.c.status, b.c.trigger_type).where(b.c.run_id == self.run_id)
        )}

    def problems(self) -> Iterator[PathProblem]:
        for lo in range(0, self._end(), WINDOW_ROWS):
            window = _Window.read(self.conn, self.run_id, lo, lo + WINDOW_ROWS, self.hasher)
            self._collect_flush_rows(window)
            for tid in window.token_ids():
                self.walked += 1
                yield from self._walk(window, tid)
        if self.check_flushes:
            yield from self._flush_links()

    def _end(self) -> int:
        """One past the highest row position any token of the run carries."""
        highest = [self.conn.execute(select(func.max(t.c.token_id)).where(t.c.run_id == self.run_id)).scalar()
                   for t in (s.tokens, s.token_outcomes, s.node_states)]
        positions = [int(order, 16) for tid in highest if tid and (order := ids.order_of(tid))]
        return max(positions, default=-1) + 1

    # -- one token

    def _walk(self, window: _Window, tid: str) -> Iterator[PathProblem]:
        order = ids.order_of(tid)
        walk = _Walk(tid, int(order, 16) if order else -1, None, None, dict(window.states.get(tid, {})),
                     list(window.memberships.get(tid, ())))
        token = window.tokens.get(tid)
        if token is None:
            walk.problem("tokens", tid, "the token has records but no tokens row (its creating node's audit is missing)")
            return iter(walk.problems)
        self._start(window, walk, token)
        while walk.node is not None:
            node = self.graph.nodes.get(walk.node)
            if node is None:
                walk.problem("nodes", walk.node, "the token's path leads to a node the run does not have", missing=False)
                break
            step = self._aggregation_step if node.node_type == "aggregation" else self._state_step
            if not step(window, walk, node):
                break
        if not any(p.missing for p in walk.problems):  # past a hole, the records further on are expected
            self._leftovers(walk)
        return iter(walk.problems)

    def _start(self, window: _Window, walk: _Walk, token: tuple[str, str, str | None, str | None]) -> None:
        row_id, created, branch, parent = token
        node = self.graph.nodes.get(created)
        if node is None:
            walk.problem("tokens", walk.token_id, f"created at unknown node {created}", missing=False)
            return
        if node.node_type == "source":
            walk.node, row = created, window.rows.get(row_id)
            walk.carried = row[1] if row else None
            if row is None:
                walk.problem("rows", row_id, "the token's source row is not recorded")
        elif node.node_type == "gate":  # a fork's child: from its parent's row at the gate
            walk.node = self.graph.targets.get(branch or "")
            parent_state = window.states.get(parent or "", {}).get(created)
            walk.carried = parent_state.input_hash if parent_state else None
        else:  # an aggregation's new output token: from its own row
            walk.node, walk.redo_from = node.success, created
            made = [h for b, (_, h) in window.outputs.get(walk.token_id, {}).items() if self.batches.get(b, _NO_BATCH).node_id == created]
            walk.carried = made[0] if made else None
            if not made:
                walk.problem("batch_outputs", walk.token_id, f"the token is not recorded as an output of a batch of {created}")

    def _state_step(self, window: _Window, walk: _Walk, node: RecordedNode) -> bool:
        """At a source, transform, gate or sink: its node_state, then where the token went."""
        state = walk.states.pop(node.node_id, None)
        if state is None:
            return self._stopped(window, walk, "node_states", f"{walk.token_id}@{node.node_id}", "no node_state")
        if walk.carried is not None and state.input_hash != walk.carried:
            walk.problem("node_states", state.state_id, f"input hash {_short(state.input_hash)} does not continue the "
                         f"previous step's {_short(walk.carried)}", missing=False)
        ended_here = any(n == node.node_id for _, n in window.terminal.get(walk.token_id, ()))
        if state.status != "completed":
            return self._diverted(window, walk, node, state, ended_here)
        if node.node_type == "sink":
            walk.node = None
            if not ended_here:
                walk.problem("token_outcomes", f"{walk.token_id}@{node.node_id}", "a sink wrote the token but recorded no outcome")
            return False
        if node.node_type != "gate":
            walk.node, walk.carried = node.success, state.output_hash
            return True
        destinations = window.routes.get(state.state_id, [])
        if not destinations:
            return self._stopped(window, walk, "routing_events", state.state_id, "the gate decided but recorded no route",
                                 always=True)
        if len(destinations) == 1:
            walk.node = self.graph.targets.get(destinations[0])
            return True
        walk.node = None  # forked: the children go on (each walked on its own)
        for dest in sorted(set(destinations) - window.children.get(walk.token_id, set())):
            walk.problem("tokens", f"child of {walk.token_id} for {dest}", "the gate forked but the child token is not recorded")
        return False

    def _diverted(self, window: _Window, walk: _Walk, node: RecordedNode, state: _State, ended_here: bool) -> bool:
        """A failed step: the token ends here (quarantined, failed) or goes on to the error sink."""
        if node.error_sink is None:
            walk.node = None
            if not ended_here:
                return self._stopped(window, walk, "token_outcomes", f"{walk.token_id}@{node.node_id}",
                                     "the step failed but the token's outcome is not recorded", always=True)
            return False
        walk.node = node.error_sink
        if node.node_type == "source":
            payload = window.rows.get(window.tokens[walk.token_id][0], (0, None, None))[2]
            raw = json.loads(payload).get("raw") if payload else None  # a record that did not parse keeps its raw text
            walk.carried = self.hasher(raw_row(raw)) if raw is not None else None
        else:
            walk.carried = state.input_hash
        return True

    def _aggregation_step(self, window: _Window, walk: _Walk, node: RecordedNode) -> bool:
        """At an aggregation: the token's membership and checkpoint, then its batch's fate."""
        mine = [(b, o) for b, o in walk.memberships if self.batches.get(b, _NO_BATCH).node_id == node.node_id]
        for m in mine:
            walk.memberships.remove(m)
        if not mine:
            return self._stopped(window, walk, "batch_members", f"{walk.token_id}@{node.node_id}", "no batch membership")
        arrived = window.arrivals.get((walk.token_id, node.node_id))
        if arrived is None:
            walk.problem("token_outcomes", f"{walk.token_id}@{node.node_id}", "no buffered checkpoint for the membership")
        elif walk.carried is not None and arrived != walk.carried:
            walk.problem("token_outcomes", ids.outcome_id(walk.token_id, "buffered", node.node_id),
                         f"the buffered row hashes to {_short(arrived)}, not to the previous step's {_short(walk.carried)}",
                         missing=False)
        current = [b for b, _ in mine if b not in self.retried]
        batch = self.batches[current[0]] if current else None
        walk.node = None
        if batch is None or batch.status not in ("completed", "failed"):
            return False  # still buffered: the run did not finish this batch
        if batch.status == "failed":
            if node.error_sink is not None and batch.trigger_type != "interrupted":
                walk.node, walk.carried = node.error_sink, arrived
                return True
            return False
        if node.passthrough:
            walk.carried = window.outputs.get(walk.token_id, {}).get(batch.batch_id, (0, None))[1]
            if walk.carried is None:
                walk.problem("batch_outputs", f"{batch.batch_id}/{walk.token_id}", "a passthrough member is not among its batch's outputs")
            walk.node, walk.redo_from = node.success, node.node_id
            return True
        return False

    def _stopped(self, window: _Window, walk: _Walk, table: str, key: str, detail: str, *, always: bool = False) -> bool:
        """The token's records stop here: a hole if anything of it is recorded further on."""
        beyond = walk.states or walk.memberships or window.terminal.get(walk.token_id)
        if always or beyond:
            walk.problem(table, key, detail + (" — yet the token is recorded further on" if beyond else ""))
        walk.node = None
        return False

    def _leftovers(self, walk: _Walk) -> None:
        for node_id, state in walk.states.items():
            walk.problem("node_states", state.state_id, f"a node_state at {node_id}, off the token's recorded path", missing=False)
        for batch_id, _ in walk.memberships:
            walk.problem("batch_members", f"{batch_id}/{walk.token_id}", "a membership off the token's recorded path", missing=False)

    # -- flushes

    def _collect_flush_rows(self, window: _Window) -> None:
        """Members' and outputs' row hashes per batch (a batch's rows span windows)."""
        for (tid, node), digest in window.arrivals.items():
            for batch_id, ordinal in window.memberships.get(tid, ()):
                if self.batches.get(batch_id, _NO_BATCH).node_id == node:
                    self._arrivals[batch_id].append((ordinal, digest))
        for made in window.outputs.values():
            for batch_id, (ordinal, digest) in made.items():
                self._outputs[batch_id].append((ordinal, digest))

    def _flush_links(self) -> Iterator[PathProblem]:
        """Each flush's input hash derives from its members' checkpoints, its output hash from its
        outputs' rows, each in ordinal order."""
        for batch in self.batches.values():
            flush = batch.flush
            if flush is None:
                continue
            for side, rows, recorded in (("input", self._arrivals, flush.input_hash), ("output", self._outputs, flush.output_hash)):
                ordered = [digest for _, digest in sorted(rows.get(batch.batch_id, []))]
                if recorded is None or None in ordered or (side == "output" and flush.status != "completed"):
                    continue  # nothing to derive, or a row is missing: reported with its token
                if members_hash(ordered) != recorded:  # type: ignore[arg-type]
                    yield PathProblem("node_states", flush.state_id, batch.batch_id, -1, batch.node_id,
                                      f"the flush's {side} hash {_short(recorded)} is not derived from its "
                                      f"{len(ordered)} {'members' if side == 'input' else 'outputs'}' rows in ordinal order",
                                      missing=False)


_NO_BATCH = _Batch("", "", "", None, None)


def _short(digest: str | None) -> str:
    return (digest or "none")[:12]


def path_problems(conn: Connection, run_id: str, hasher: Hasher = stable_hash, check_flushes: bool = True) -> list[PathProblem]:
    """Every hole and broken link of a run's token paths (invariant 8)."""
    return list(PathChecker(conn, run_id, hasher, check_flushes).problems())
