"""Path completeness and hash-chain continuity of a run's tokens (DESIGN §7, invariant 8).

Each node's audit commits on its own, so after a crash an aggregation's ``buffered`` outcome
can be durable while the upstream transform's node_state of the same token is not. Along the
graph as the Landscape recorded it (``nodes``, ``edges``), every token must, from where it was
made, hold its record at each node on its way — a node_state, a gate's routing event, an
aggregation's membership with its ``buffered`` checkpoint — and each record's input hash must
continue the previous one's (core/chain.py). A flush's input hash must derive from its members,
its output hash from its outputs.

A missing record with nothing of the token recorded beyond it means the token is unfinished (a
crashed run's frontier, which invariant 1 reports in a finished run); anything recorded beyond
it — a later state, a membership, a terminal outcome — makes it a **hole**. ``verify`` reports
every problem; ``resume`` redoes the work that fills the holes: the source row again, or an
aggregation's output again when the hole lies past the flush.

How: set queries over the whole run (``_SetChecks``) name the tokens whose paths are not whole,
and only those are walked one by one (``_Walk``), which places each problem exactly — the first
hole on a path and whether anything lies beyond it, a rule about one token that SQL would say at
length. Each record sends its token on to a next node with a hash; a join of every record (and
every token's making) with the record at that next node finds a missing record or a broken link.
A record off the path — one nothing leads to — shows in a per-node census (as many records as
arrivals); only when the census does not balance are records searched one by one. The hashes
SQL cannot derive (canonical JSON of members' checkpoint rows and outputs' rows) are computed in
Python, once per member and per output, kept compactly per aggregation (a run has about as many
members as rows), and compared with what SQL says the token carried; a flush's input link is
derived batch by batch as the database streams each batch's members in ordinal order.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import and_, case, exists, false, func, null, or_, select, true
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement

from elspeth_beam.core import ids
from elspeth_beam.core.canonical import stable_hash
from elspeth_beam.core.chain import members_hash, raw_row
from elspeth_beam.landscape import schema as s
from elspeth_beam.landscape.store import fetch_tuples

SUSPECTS_PER_READ = 2000  # tokens whose records one explaining read fetches (bounded parameter lists)

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

    def of(self, *types: str) -> list[str]:
        """The nodes of these types."""
        return sorted(n.node_id for n in self.nodes.values() if n.node_type in types)

    def successes(self, *types: str) -> dict[str, str]:
        """Node → the node its success output feeds, for nodes of these types."""
        return {n.node_id: n.success for n in self.nodes.values() if n.node_type in types and n.success}

    def errors(self) -> dict[str, str]:
        """Node → its error sink."""
        return {n.node_id: n.error_sink for n in self.nodes.values() if n.error_sink}


# ---- SQL helpers ------------------------------------------------------------------------


def _map(column: Any, mapping: dict[str, str]) -> ColumnElement[Any]:
    """A small mapping of the recorded graph (node → node, name → node), written into the query."""
    return case(mapping, value=column) if mapping else null()


def _differs(recorded: Any, carried: Any) -> ColumnElement[bool]:
    """A record's input hash does not continue the carried one (nothing to check if none is carried)."""
    return and_(carried.is_not(None), recorded.is_distinct_from(carried))


def _row_hash(token_json: str | None, hasher: Hasher) -> str | None:
    """The hash of a token's row from its recorded JSON (a checkpoint, an output)."""
    return hasher(json.loads(token_json)["row"]) if token_json else None


@dataclass(frozen=True)
class _Batch:
    batch_id: str
    node_id: str
    status: str
    trigger_type: str | None
    flush: _State | None


class _State(NamedTuple):  # a tuple: the explaining walk holds a few thousand after a crash
    state_id: str
    status: str
    input_hash: str | None
    output_hash: str | None


_NO_BATCH = _Batch("", "", "", None, None)


# ---- the set queries: which tokens' paths are not whole ---------------------------------


class _Rows:
    """The hashes only Python derives (canonical JSON), each row once: members' checkpoints and
    outputs' rows. Held per aggregation and token, compactly — one entry per member: its
    checkpoint hash as 32 bytes and its batch id, the batch's own string — since a run has about
    as many members as rows;
    a flush's links are streamed from the database batch by batch (``member_hashes``)."""

    def __init__(self, conn: Connection, run_id: str, graph: RecordedGraph, batches: dict[str, _Batch], hasher: Hasher) -> None:
        o, m, bo = s.token_outcomes, s.batch_members, s.batch_outputs
        self.conn, self.run_id, self.hasher = conn, run_id, hasher
        # aggregation → token → (its buffered row's hash, its batch or batches there; None: no membership)
        self.arrivals: dict[str, dict[str, tuple[bytes | None, str | tuple[str, ...] | None]]] = defaultdict(dict)
        self.outputs: dict[tuple[str, str], str | None] = {}  # (token, batch) → the output row's hash
        self.made: dict[tuple[str, str], str | None] = {}  # (token, aggregation) → the hash of its row as a batch's output
        self.outputs_of: dict[str, list[tuple[int, str | None]]] = defaultdict(list)  # batch → outputs' (ordinal, row hash)
        self.strays: set[str] = set()  # tokens with a membership of no recorded batch at an aggregation (off any path)
        aggregations = {node: node for node in graph.of("aggregation")}  # one string per node, shared by every entry
        for tid, node, token_json in fetch_tuples(conn, select(o.c.token_id, o.c.node_id, o.c.token_json).where(
                o.c.run_id == run_id, o.c.outcome == "buffered", o.c.is_terminal == false())):
            self.arrivals[aggregations.get(node, node)][tid] = (_digest_bytes(_row_hash(token_json, hasher)), None)
        names = {b: b for b in batches}
        for batch_id, tid in fetch_tuples(conn, select(m.c.batch_id, m.c.token_id).where(m.c.run_id == run_id)):
            node = batches.get(batch_id, _NO_BATCH).node_id
            if node not in aggregations:
                self.strays.add(tid)
                continue
            here = self.arrivals[aggregations[node]]
            digest, known = here.get(tid, (None, None))
            batch_id = names[batch_id]
            here[tid] = (digest, batch_id if known is None else (*((known,) if isinstance(known, str) else known), batch_id))
        for batch_id, tid, ordinal, token_json in fetch_tuples(conn,
            select(bo.c.batch_id, bo.c.token_id, bo.c.ordinal, bo.c.token_json).where(bo.c.run_id == run_id)
        ):
            digest = self.outputs[(tid, batch_id)] = _row_hash(token_json, hasher)
            self.made.setdefault((tid, batches.get(batch_id, _NO_BATCH).node_id), digest)
            self.outputs_of[batch_id].append((ordinal, digest))

    def checkpoint(self, tid: str, node: str) -> str | None:
        """The hash of the token's buffered row at the aggregation (None: none recorded)."""
        digest = self.arrivals.get(node, {}).get(tid, (None, None))[0]
        return None if digest is None else digest.hex()

    def member(self, tid: str, node: str) -> bool:
        return self.arrivals.get(node, {}).get(tid, (None, None))[1] is not None

    def memberships(self) -> Iterator[tuple[str, str | tuple[str, ...]]]:
        """(aggregation, batch or batches) of every member token."""
        for node, tokens in self.arrivals.items():
            for _, batch_ids in tokens.values():
                if batch_ids is not None:
                    yield node, batch_ids

    def batches_of(self, batch_ids: str | tuple[str, ...]) -> list[str]:
        return [batch_ids] if isinstance(batch_ids, str) else list(batch_ids)

    def member_hashes(self) -> Iterator[tuple[str, list[str | None]]]:
        """Each batch's members' checkpoint hashes in ordinal order, batch by batch as the
        database hands them over (no per-batch lists kept)."""
        m, b = s.batch_members, s.batches
        stmt = (select(m.c.batch_id, m.c.token_id, b.c.aggregation_node_id)
                .select_from(m.join(b, b.c.batch_id == m.c.batch_id))
                .where(m.c.run_id == self.run_id).order_by(m.c.batch_id, m.c.ordinal))
        current, hashes = None, []
        for batch_id, tid, node in fetch_tuples(self.conn, stmt):
            if batch_id != current:
                if current is not None:
                    yield current, hashes
                current, hashes = batch_id, []
            hashes.append(self.checkpoint(tid, node))
        if current is not None:
            yield current, hashes


def _digest_bytes(digest: str | None) -> bytes | None:
    return None if digest is None else bytes.fromhex(digest)


class _SetChecks:
    """Invariant 8 as set queries over the run: the tokens whose paths are not whole.

    Every query is over all the run's tokens at once and returns only what is wrong, plus, for
    arrivals at an aggregation or a hash only Python derives, what Python must compare. A token
    it names may still be merely unfinished; the walk decides."""

    def __init__(self, checker: PathChecker, rows: _Rows) -> None:
        self.conn, self.run_id, self.graph, self.hasher = checker.conn, checker.run_id, checker.graph, checker.hasher
        self.batches, self.retried, self.rows = checker.batches, checker.retried, rows
        g = self.graph
        self.sources, self.gates, self.sinks, self.aggregations = g.of("source"), g.of("gate"), g.of("sink"), g.of("aggregation")
        self.state_nodes = g.of("source", "transform", "gate", "sink")  # where a token's records are node_states
        self.steps = g.successes("source", "transform")  # a completed state's next node
        self.made = g.successes("aggregation")  # where an aggregation's outputs go
        self.errors = g.errors()  # a state's (or a failed batch's) error sink
        self.passthrough = [a for a in self.aggregations if g.nodes[a].passthrough]
        self.sends_on = bool(set(self.passthrough) & set(self.made) or set(self.aggregations) & set(self.errors))  # members go on
        self.suspects: set[str] = set(rows.strays)

    def run(self) -> set[str]:
        for check in (self._starts, self._steps, self._routes, self._member_steps, self._unnamed, self._off_path):
            check()  # _off_path last: it needs to know whether every arrival found its record
        return self.suspects

    # -- where each record leads

    def _start(self, t: Any) -> ColumnElement[Any]:
        """The node a token's path starts at: its source; a fork child's branch; an aggregation's successor."""
        created = t.c.created_at_node
        return case((created.in_(self.sources), created), (created.in_(self.gates), _map(t.c.branch_name, self.graph.targets)),
                    else_=_map(created, self.made))

    def _next(self, p: Any) -> ColumnElement[Any]:
        """Where a non-gate state (or a failed one) sends its token: the success or the error sink."""
        return case((p.c.status != "completed", _map(p.c.node_id, self.errors)), else_=_map(p.c.node_id, self.steps))

    def _routed(self, p: Any) -> ColumnElement[bool]:
        """A completed gate state: it routes (the others take ``_next``)."""
        return and_(p.c.node_id.in_(self.gates), p.c.status == "completed")

    def _batch_next(self, b: Any) -> ColumnElement[Any]:
        """Where a finished batch sends its members: a passthrough's successor, or a failed flush's error sink."""
        node = b.c.aggregation_node_id
        return case((and_(b.c.status == "completed", node.in_(self.passthrough)), _map(node, self.made)),
                    (and_(b.c.status == "failed", b.c.trigger_type.is_distinct_from("interrupted")), _map(node, self.errors)))

    def _current(self, b: Any) -> ColumnElement[bool]:
        """A batch that was not retried (a retry's members go on from the retry)."""
        retry = s.batches.alias("retry")
        return b.c.batch_id.not_in(select(retry.c.retry_of_batch_id).where(retry.c.run_id == self.run_id,
                                                                          retry.c.retry_of_batch_id.is_not(None)))

    def _single_route(self, r: Any) -> ColumnElement[bool]:
        other = s.routing_events.alias("other")
        return ~exists().where(other.c.state_id == r.c.state_id, other.c.destination != r.c.destination)

    # -- the checks

    def _starts(self) -> None:
        """Each token's first record: at its start node, continuing its source row, its parent's row
        at the fork, or (checked in Python) its own row as a batch's output. One query per way a
        token is made: each is a plain join."""
        t, r, tp, ps, x = s.tokens, s.rows, s.token_parents, s.node_states.alias("ps"), s.node_states.alias("x")
        created = t.c.created_at_node
        at_source = (  # a source row's token: its row recorded, its source state continuing the raw record
            select(t.c.token_id)
            .select_from(t.outerjoin(r, r.c.row_id == t.c.row_id)
                         .outerjoin(x, and_(x.c.token_id == t.c.token_id, x.c.node_id == created)))
            .where(t.c.run_id == self.run_id, created.in_(self.sources),
                   or_(r.c.row_id.is_(None), x.c.state_id.is_(None), _differs(x.c.input_hash, r.c.source_data_hash)))
        )
        self.suspects.update(tid for (tid,) in fetch_tuples(self.conn, at_source))
        start = _map(t.c.branch_name, self.graph.targets)
        to_state = and_(start.is_not(None), start.not_in(self.aggregations))
        flagged = and_(to_state, or_(x.c.state_id.is_(None), _differs(x.c.input_hash, ps.c.input_hash)))
        forked = (  # a fork's child: from its parent's row at the gate
            select(t.c.token_id, start, ps.c.input_hash, flagged)
            .select_from(t.outerjoin(tp, and_(tp.c.token_id == t.c.token_id, tp.c.ordinal == 0))
                         .outerjoin(ps, and_(ps.c.token_id == tp.c.parent_token_id, ps.c.node_id == created))
                         .outerjoin(x, and_(x.c.token_id == t.c.token_id, x.c.node_id == start)))
            .where(t.c.run_id == self.run_id, created.in_(self.gates), or_(flagged, start.in_(self.aggregations)))
        )
        for tid, node, carried, bad in fetch_tuples(self.conn, forked):
            self._arrive(tid, node, carried, False, None, bad)
        start = _map(created, self.made)
        made = (  # an aggregation's output (or a token made at a node the graph lacks)
            select(t.c.token_id, created, start, x.c.state_id.is_not(None), x.c.input_hash)
            .select_from(t.outerjoin(x, and_(x.c.token_id == t.c.token_id, x.c.node_id == start)))
            .where(t.c.run_id == self.run_id, created.not_in(self.sources + self.gates))
        )
        for tid, made_at, node, found, input_hash in fetch_tuples(self.conn, made):
            carried = self.rows.made.get((tid, made_at))
            self._arrive(tid, node, carried, found, input_hash, made_at not in self.aggregations or carried is None)

    def _steps(self) -> None:
        """Each state but a routing gate's: its next record continues its output (a failed one's
        input), or the token's terminal outcome is at its node."""
        p, x, o = s.node_states.alias("p"), s.node_states.alias("x"), s.token_outcomes
        nxt = self._next(p)
        carried = case((p.c.status == "completed", p.c.output_hash), else_=p.c.input_hash)
        raw = and_(p.c.node_id.in_(self.sources), p.c.status != "completed")  # a record that did not parse: Python hashes it
        ends = and_(nxt.is_(None), or_(p.c.node_id.in_(self.sinks), p.c.status != "completed"))
        to_state = and_(nxt.is_not(None), nxt.not_in(self.aggregations))
        flagged = or_(p.c.node_id.not_in(self.state_nodes),  # unknown nodes; a token's records at an aggregation are memberships
                      and_(ends, o.c.outcome_id.is_(None)),
                      and_(to_state, or_(x.c.state_id.is_(None), and_(~raw, _differs(x.c.input_hash, carried)))))
        stmt = (
            select(p.c.token_id, nxt, carried, x.c.state_id.is_not(None), x.c.input_hash, flagged, raw)
            .select_from(p.outerjoin(x, and_(to_state, x.c.token_id == p.c.token_id, x.c.node_id == nxt))
                         .outerjoin(o, and_(ends, o.c.token_id == p.c.token_id, o.c.is_terminal == true(),
                                            o.c.node_id == p.c.node_id)))
            .where(p.c.run_id == self.run_id, p.c.token_id.is_not(None), ~self._routed(p),
                   or_(flagged, nxt.in_(self.aggregations), and_(raw, nxt.is_not(None))))
        )
        unparsed = []
        for tid, node, carried_hash, found, input_hash, bad, from_raw in fetch_tuples(self.conn, stmt):
            if from_raw and not bad:
                unparsed.append((tid, node, found, input_hash))
            else:
                self._arrive(tid, node, carried_hash, found, input_hash, bad)
        if unparsed:
            raws = self._raw_hashes([tid for tid, *_ in unparsed])
            for tid, node, found, input_hash in unparsed:
                self._arrive(tid, node, raws.get(tid), found, input_hash, False)

    def _routes(self) -> None:
        """Each completed gate state: a routing event; one route leads on (its row unchanged), a
        fork's every route has its child token."""
        p, r, r2, x = s.node_states.alias("p"), s.routing_events, s.routing_events.alias("r2"), s.node_states.alias("x")
        tp, c = s.token_parents, s.tokens.alias("c")
        target, single = _map(r.c.destination, self.graph.targets), r2.c.routing_id.is_(None)
        child = exists().where(tp.c.parent_token_id == p.c.token_id, tp.c.ordinal == 0, c.c.token_id == tp.c.token_id,
                               c.c.branch_name == r.c.destination)
        flagged = or_(r.c.state_id.is_(None),
                      and_(single, target.is_not(None), target.not_in(self.aggregations),
                           or_(x.c.state_id.is_(None), _differs(x.c.input_hash, p.c.input_hash))),
                      and_(~single, ~child))
        stmt = (
            select(p.c.token_id, target, p.c.input_hash, flagged)
            .select_from(p.outerjoin(r, r.c.state_id == p.c.state_id)
                         .outerjoin(r2, and_(r2.c.state_id == p.c.state_id, r2.c.destination != r.c.destination))
                         .outerjoin(x, and_(single, x.c.token_id == p.c.token_id, x.c.node_id == target)))
            .where(p.c.run_id == self.run_id, p.c.token_id.is_not(None), self._routed(p),
                   or_(flagged, and_(single, target.in_(self.aggregations))))
        )
        for tid, node, carried_hash, bad in fetch_tuples(self.conn, stmt):
            self._arrive(tid, node, carried_hash, False, None, bad)

    def _member_steps(self) -> None:
        """Members a finished batch sends on — a passthrough's outputs, a failed flush's members to
        its error sink — continue their output row or their checkpoint (hashes from Python)."""
        if not self.sends_on:
            return
        m, b, x = s.batch_members, s.batches, s.node_states.alias("x")
        nxt = self._batch_next(b)
        stmt = (
            select(m.c.token_id, m.c.batch_id, b.c.aggregation_node_id, b.c.status, nxt, x.c.state_id.is_not(None),
                   x.c.input_hash)
            .select_from(m.join(b, b.c.batch_id == m.c.batch_id)
                         .outerjoin(x, and_(x.c.token_id == m.c.token_id, x.c.node_id == nxt)))
            .where(m.c.run_id == self.run_id, self._current(b), nxt.is_not(None))
        )
        for tid, batch_id, node, status, to, found, input_hash in fetch_tuples(self.conn, stmt):
            carried = self.rows.outputs.get((tid, batch_id)) if status == "completed" else self.rows.checkpoint(tid, node)
            self._arrive(tid, to, carried, found, input_hash, carried is None)

    def _off_path(self) -> None:
        """Records no record leads to (nor the token's making): off the path, or past a hole.
        Looked for record by record only when the census cannot rule them out."""
        if not self.suspects and self._balanced():
            return
        x, m, b, t = s.node_states.alias("x"), s.batch_members, s.batches, s.tokens
        place = b.c.aggregation_node_id
        for records, run, token, node, wrong in (
            (x.outerjoin(t, t.c.token_id == x.c.token_id), x.c.run_id, x.c.token_id, x.c.node_id, false()),
            (m.outerjoin(b, b.c.batch_id == m.c.batch_id).outerjoin(t, t.c.token_id == m.c.token_id), m.c.run_id, m.c.token_id,
             place, or_(place.is_(None), place.not_in(self.aggregations))),  # a membership of no batch at an aggregation
        ):
            sent = self._sent_on()
            if sent is not None:  # a join, not a correlated lookup: batch_members has no index on its token
                records = records.outerjoin(sent, and_(sent.c.token_id == token, sent.c.node == node))
            stmt = select(token).select_from(records).where(
                run == self.run_id, token.is_not(None), or_(wrong, ~self._reached(t, token, node, sent)))
            self.suspects.update(tid for (tid,) in fetch_tuples(self.conn, stmt))

    def _balanced(self) -> bool:
        """The census: every node holds as many records as arrivals lead to it (from the tokens'
        makings and from records), counted per node in a few grouped queries.

        When every arrival has found its record, a record off the path unbalances some node: each
        record on a path is reached once, and a node can only receive a surplus arrival from a
        record off the path further up the graph; at the uppermost node holding such a record's
        origin — a record nothing reaches — no surplus can make up for it."""
        t, p, r = s.tokens, s.node_states, s.routing_events
        arrivals: Counter[str | None] = Counter()
        records: Counter[str | None] = Counter()
        for created, branch, n in fetch_tuples(self.conn, select(t.c.created_at_node, t.c.branch_name, func.count())
                                         .where(t.c.run_id == self.run_id).group_by(t.c.created_at_node, t.c.branch_name)):
            arrivals[self._start_of(created, branch)] += n
        states = (select(p.c.node_id, p.c.status, func.count())
                  .where(p.c.run_id == self.run_id, p.c.token_id.is_not(None)).group_by(p.c.node_id, p.c.status))
        for node, status, n in fetch_tuples(self.conn, states):
            records[node] += n
            if status != "completed":
                arrivals[self.errors.get(node)] += n
            elif node not in self.gates:
                arrivals[self.steps.get(node)] += n
        routed = (select(r.c.destination, func.count()).select_from(r.join(p, p.c.state_id == r.c.state_id))
                  .where(r.c.run_id == self.run_id, self._routed(p), self._single_route(r)).group_by(r.c.destination))
        for destination, n in fetch_tuples(self.conn, routed):
            arrivals[self.graph.targets.get(destination)] += n
        for node, batch_ids in self.rows.memberships():
            records[node] += 1
            if self.sends_on:
                arrivals[self._sent_to(self.rows.batches_of(batch_ids))] += 1
        arrivals.pop(None, None)
        return arrivals == records

    def _start_of(self, created: str, branch: str | None) -> str | None:
        """``_start`` for one kind of token."""
        kind = self.graph.nodes[created].node_type if created in self.graph.nodes else None
        if kind == "source":
            return created
        return self.graph.targets.get(branch or "") if kind == "gate" else self.made.get(created)

    def _sent_to(self, batch_ids: list[str]) -> str | None:
        """``_batch_next`` for a member: where its current batch sends it."""
        current = [b for b in batch_ids if b not in self.retried]
        batch = self.batches[current[0]] if current else None
        if batch is None:
            return None
        if batch.status == "completed" and batch.node_id in self.passthrough:
            return self.made.get(batch.node_id)
        return self.errors.get(batch.node_id) if batch.status == "failed" and batch.trigger_type != "interrupted" else None

    def _sent_on(self) -> Any:
        """(token, node) of the members finished batches send on, as a subquery; None if no
        aggregation of the graph sends its members on."""
        if not self.sends_on:
            return None
        mm, bb = s.batch_members.alias("mm"), s.batches.alias("bb")
        nxt = self._batch_next(bb)
        return (select(mm.c.token_id, nxt.label("node")).select_from(mm.join(bb, bb.c.batch_id == mm.c.batch_id))
                .where(mm.c.run_id == self.run_id, self._current(bb), nxt.is_not(None)).subquery("sent_on"))

    def _reached(self, t: Any, token: Any, node: Any, sent: Any) -> ColumnElement[bool]:
        """The token's making, or one of its records, leads to this node."""
        p, g, r = s.node_states.alias("p"), s.node_states.alias("g"), s.routing_events.alias("r")
        ways = [
            self._start(t) == node,
            exists().where(p.c.token_id == token, ~self._routed(p), self._next(p) == node),
            exists().where(g.c.token_id == token, self._routed(g), r.c.state_id == g.c.state_id,
                           _map(r.c.destination, self.graph.targets) == node, self._single_route(r)),
        ]
        if sent is not None:
            ways.append(sent.c.token_id.is_not(None))
        return or_(*ways)

    def _unnamed(self) -> None:
        """Outcomes of tokens that have no ``tokens`` row (their other records are off the path)."""
        o, t = s.token_outcomes, s.tokens
        stmt = (select(o.c.token_id).select_from(o.outerjoin(t, t.c.token_id == o.c.token_id))
                .where(o.c.run_id == self.run_id, t.c.token_id.is_(None),
                       or_(o.c.is_terminal == true(), o.c.outcome == "buffered")))
        self.suspects.update(tid for (tid,) in fetch_tuples(self.conn, stmt))

    # -- Python's part: arrivals at aggregations, hashes of rows

    def _arrive(self, tid: str, node: str | None, carried: str | None, found: bool, input_hash: str | None, bad: bool) -> None:
        """A token reaches ``node`` carrying ``carried``: its record there must continue it. A
        node_state's presence and input come from SQL; a membership's checkpoint hash from Python."""
        if bad:
            self.suspects.add(tid)
        elif node is None:
            return
        elif node in self.aggregations:
            digest = self.rows.checkpoint(tid, node)
            if not self.rows.member(tid, node) or digest is None or (carried is not None and digest != carried):
                self.suspects.add(tid)
        elif not found or (carried is not None and input_hash != carried):
            self.suspects.add(tid)

    def _raw_hashes(self, token_ids: list[str]) -> dict[str, str | None]:
        """The hash of what a record that did not parse carries on: its raw text (rare rows)."""
        t, r = s.tokens, s.rows
        found: dict[str, str | None] = {}
        for chunk in _chunks(token_ids):
            payloads = select(t.c.token_id, r.c.payload_json).select_from(t.join(r, r.c.row_id == t.c.row_id))
            for tid, payload in self.conn.execute(payloads.where(t.c.token_id.in_(chunk))):
                raw = json.loads(payload).get("raw") if payload else None
                found[tid] = self.hasher(raw_row(raw)) if raw is not None else None
        return found


def _chunks(items: list[str], size: int = SUSPECTS_PER_READ) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


# ---- explaining a suspect: its records, and the walk -------------------------------------


@dataclass
class _Window:
    """The records of a few suspect tokens (and the parents' states their paths start from)."""

    tokens: dict[str, tuple[str, str, str | None, str | None]]  # token → (row_id, created at, branch, first parent)
    states: dict[str, dict[str, _State]]  # token → node → its state
    routes: dict[str, list[str]]  # gate state → destinations
    terminal: dict[str, list[tuple[str, str]]]  # token → its terminal outcomes (outcome, node)
    arrivals: dict[tuple[str, str], tuple[str, str | None]]  # (token, aggregation) → its checkpoint (outcome id, row hash)
    memberships: dict[str, list[tuple[str, int]]]  # token → (batch, ordinal)
    outputs: dict[str, dict[str, tuple[int, str | None]]]  # token → batch → (ordinal, the output row's hash)
    rows: dict[str, tuple[int, str, str | None]]  # row_id → (index, source_data_hash, payload_json)
    children: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # forked token → its children's branches

    @classmethod
    def read(cls, conn: Connection, run_id: str, token_ids: list[str], hasher: Hasher) -> _Window:
        t, tp, ns, re_, o, bm, bo, r = (s.tokens, s.token_parents, s.node_states, s.routing_events, s.token_outcomes,
                                        s.batch_members, s.batch_outputs, s.rows)
        window = cls({}, defaultdict(dict), defaultdict(list), defaultdict(list), {}, defaultdict(list), defaultdict(dict), {})
        parents = dict(conn.execute(
            select(tp.c.token_id, tp.c.parent_token_id).where(tp.c.token_id.in_(token_ids), tp.c.ordinal == 0)
        ).all())
        for tid, row_id, created, branch in conn.execute(
            select(t.c.token_id, t.c.row_id, t.c.created_at_node, t.c.branch_name).where(t.c.token_id.in_(token_ids))
        ):
            window.tokens[tid] = (row_id, created, branch, parents.get(tid))
        for parent, branch in conn.execute(
            select(tp.c.parent_token_id, t.c.branch_name).select_from(tp.join(t, t.c.token_id == tp.c.token_id))
            .where(tp.c.parent_token_id.in_(token_ids), tp.c.ordinal == 0, t.c.branch_name.is_not(None))
        ):
            window.children[parent].add(branch)
        with_parents = sorted({*token_ids, *parents.values()})
        for chunk in _chunks(with_parents):
            for tid, node, *state in conn.execute(
                select(ns.c.token_id, ns.c.node_id, ns.c.state_id, ns.c.status, ns.c.input_hash, ns.c.output_hash)
                .where(ns.c.token_id.in_(chunk))
            ):
                window.states[tid][node] = _State(*state)
        for state_id, destination in conn.execute(
            select(re_.c.state_id, re_.c.destination).select_from(re_.join(ns, ns.c.state_id == re_.c.state_id))
            .where(ns.c.token_id.in_(token_ids))
        ):
            window.routes[state_id].append(destination)
        for outcome_id, tid, outcome, node, is_terminal, token_json in conn.execute(
            select(o.c.outcome_id, o.c.token_id, o.c.outcome, o.c.node_id, o.c.is_terminal, o.c.token_json)
            .where(o.c.token_id.in_(token_ids))
        ):
            if is_terminal:
                window.terminal[tid].append((outcome, node))
            elif outcome == "buffered":
                window.arrivals[(tid, node)] = (outcome_id, _row_hash(token_json, hasher))
        for tid, batch_id, ordinal in conn.execute(
            select(bm.c.token_id, bm.c.batch_id, bm.c.ordinal).where(bm.c.run_id == run_id, bm.c.token_id.in_(token_ids))
        ):
            window.memberships[tid].append((batch_id, ordinal))
        for batch_id, tid, ordinal, token_json in conn.execute(
            select(bo.c.batch_id, bo.c.token_id, bo.c.ordinal, bo.c.token_json)
            .where(bo.c.run_id == run_id, bo.c.token_id.in_(token_ids))
        ):
            window.outputs[tid][batch_id] = (ordinal, _row_hash(token_json, hasher))
        row_ids = sorted({row_id for row_id, *_ in window.tokens.values()})
        for row_id, index, source_hash, payload in conn.execute(
            select(r.c.row_id, r.c.row_index, r.c.source_data_hash, r.c.payload_json).where(r.c.row_id.in_(row_ids))
        ):
            window.rows[row_id] = (index, source_hash, payload)
        return window


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

    def problem(self, table: str, key: str, detail: str, *, missing: bool = True, node: str | None = None) -> None:
        self.problems.append(PathProblem(table, key, self.token_id, self.row_index, node or self.node or "(no node)", detail,
                                         self.redo_from, missing))


class PathChecker:
    """Checks a run's token paths: set queries name the suspects, a walk explains each."""

    def __init__(self, conn: Connection, run_id: str, hasher: Hasher = stable_hash, check_flushes: bool = True) -> None:
        self.conn, self.run_id, self.hasher, self.check_flushes = conn, run_id, hasher, check_flushes
        self.graph = RecordedGraph.load(conn, run_id)
        self.batches = self._batches()
        self.retried = {b for (b,) in conn.execute(
            select(s.batches.c.retry_of_batch_id).where(s.batches.c.run_id == run_id, s.batches.c.retry_of_batch_id.is_not(None))
        )}
        self.walked = 0  # tokens whose paths were checked

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
        rows = _Rows(self.conn, self.run_id, self.graph, self.batches, self.hasher)
        suspects = sorted(_SetChecks(self, rows).run())
        self.walked = self.conn.execute(select(func.count()).where(s.tokens.c.run_id == self.run_id)).scalar() or 0
        for chunk in _chunks(suspects):
            window = _Window.read(self.conn, self.run_id, chunk, self.hasher)
            self.walked += sum(1 for tid in chunk if tid not in window.tokens)
            for tid in chunk:
                yield from self._walk(window, tid)
        if self.check_flushes:
            yield from self._flush_links(rows)

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
                walk.problem("token_outcomes", f"{walk.token_id}@{node.node_id}", "a sink wrote the token but recorded no outcome",
                             node=node.node_id)
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
            walk.problem("tokens", f"child of {walk.token_id} for {dest}", "the gate forked but the child token is not recorded",
                         node=node.node_id)
        return False

    def _diverted(self, window: _Window, walk: _Walk, node: RecordedNode, state: _State, ended_here: bool) -> bool:
        """A failed step: the token ends here (quarantined, failed) or goes on to the error sink."""
        if node.error_sink is None:
            if not ended_here:  # named at the failed node (``_stopped`` ends the walk)
                return self._stopped(window, walk, "token_outcomes", f"{walk.token_id}@{node.node_id}",
                                     "the step failed but the token's outcome is not recorded", always=True)
            walk.node = None
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
        checkpoint, arrived = window.arrivals.get((walk.token_id, node.node_id), ("", None))
        if arrived is None:
            walk.problem("token_outcomes", f"{walk.token_id}@{node.node_id}", "no buffered checkpoint for the membership")
        elif walk.carried is not None and arrived != walk.carried:
            walk.problem("token_outcomes", checkpoint,
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
                walk.problem("batch_outputs", f"{batch.batch_id}/{walk.token_id}", "a passthrough member is not among its batch's outputs",
                             node=node.node_id)
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
            walk.problem("node_states", state.state_id, f"a node_state at {node_id}, off the token's recorded path",
                         missing=False, node=node_id)
        for batch_id, _ in walk.memberships:
            walk.problem("batch_members", f"{batch_id}/{walk.token_id}", "a membership off the token's recorded path",
                         missing=False, node=self.batches.get(batch_id, _NO_BATCH).node_id or None)

    # -- flushes

    def _flush_links(self, rows: _Rows) -> Iterator[PathProblem]:
        """Each flush's input hash derives from its members' checkpoints, its output hash from its
        outputs' rows, each in ordinal order (per batch: batches are a few per cent of the rows)."""
        seen = set()
        for batch_id, hashes in rows.member_hashes():
            seen.add(batch_id)
            yield from self._flush_link(batch_id, "input", hashes)
        for batch_id in self.batches.keys() - seen:  # a flush with no member recorded
            yield from self._flush_link(batch_id, "input", [])
        for batch_id in self.batches:
            outputs = sorted(rows.outputs_of.get(batch_id, []), key=lambda pair: pair[0])
            yield from self._flush_link(batch_id, "output", [digest for _, digest in outputs])

    def _flush_link(self, batch_id: str, side: str, ordered: list[str | None]) -> Iterator[PathProblem]:
        batch = self.batches.get(batch_id)
        flush = batch.flush if batch is not None else None
        if flush is None:
            return
        recorded = flush.input_hash if side == "input" else flush.output_hash
        if recorded is None or None in ordered or (side == "output" and flush.status != "completed"):
            return  # nothing to derive, or a row is missing: reported with its token
        if members_hash(ordered) != recorded:  # type: ignore[arg-type]
            yield PathProblem("node_states", flush.state_id, batch_id, -1, batch.node_id,
                              f"the flush's {side} hash {_short(recorded)} is not derived from its "
                              f"{len(ordered)} {'members' if side == 'input' else 'outputs'}' rows in ordinal order",
                              missing=False)


def _short(digest: str | None) -> str:
    return (digest or "none")[:12]


def path_problems(conn: Connection, run_id: str, hasher: Hasher = stable_hash, check_flushes: bool = True) -> list[PathProblem]:
    """Every hole and broken link of a run's token paths (invariant 8)."""
    return list(PathChecker(conn, run_id, hasher, check_flushes).problems())
