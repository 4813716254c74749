"""explain: the full story of a row or token, from the Landscape alone.

For a row: its source record, then every token it became (forks, aggregation outputs), each
with its node_states in order (status, hashes, duration, error), routing decisions, batches
and terminal outcome. For a token: its own path, plus its ancestors back to the source rows —
through batch memberships too, so an aggregated output lists every member row and the flush.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from elspeth_beam.core.enums import BatchStatus, NodeStateStatus
from elspeth_beam.core.errors import ElspethError
from elspeth_beam.landscape import schema as s
from elspeth_beam.landscape.store import LandscapeStore


FEW = 3  # members (and row indexes) shown at each end of a long list unless --full
MANY = 2 * FEW + 1  # lists longer than this are summarised


class ExplainTargetNotFound(ElspethError):
    """The row, token or sink line asked about is not in the run."""


class _RunView:
    """One run's audit tables, read once and indexed for walking lineage."""

    def __init__(self, store: LandscapeStore, run_id: str) -> None:
        store.run(run_id)
        self.run_id = run_id
        rows = lambda t: store.table_rows(t, run_id)  # noqa: E731
        self.rows = {r["row_id"]: r for r in rows(s.rows)}
        self.tokens = {t["token_id"]: t for t in rows(s.tokens)}
        self.position = {n["node_id"]: n["position"] for n in rows(s.nodes)}
        self.parents: dict[str, list[str]] = {}
        self.children: dict[str, list[str]] = {}
        with store.engine.connect() as conn:
            links = conn.execute(
                select(s.token_parents).join(s.tokens, s.tokens.c.token_id == s.token_parents.c.token_id)
                .where(s.tokens.c.run_id == run_id).order_by(s.token_parents.c.ordinal)
            ).mappings().all()
        for link in links:
            self.parents.setdefault(link["token_id"], []).append(link["parent_token_id"])
            self.children.setdefault(link["parent_token_id"], []).append(link["token_id"])
        self.states: dict[str, list[dict[str, Any]]] = {}
        self.batch_states: dict[str, dict[str, Any]] = {}
        for st in rows(s.node_states):
            if st["token_id"]:
                self.states.setdefault(st["token_id"], []).append(st)
            else:
                self.batch_states[st["state_id"]] = st
        self.routing: dict[str, list[dict[str, Any]]] = {}
        for r in rows(s.routing_events):
            self.routing.setdefault(r["state_id"], []).append(r)
        self.outcomes: dict[str, list[dict[str, Any]]] = {}
        for o in rows(s.token_outcomes):
            self.outcomes.setdefault(o["token_id"], []).append(o)
        self.batches = {b["batch_id"]: b for b in rows(s.batches)}
        self.members: dict[str, list[dict[str, Any]]] = {}
        self.member_of: dict[str, list[str]] = {}
        for m in sorted(rows(s.batch_members), key=lambda m: m["ordinal"]):
            self.members.setdefault(m["batch_id"], []).append(m)
            self.member_of.setdefault(m["token_id"], []).append(m["batch_id"])
        self.produced_by: dict[str, str] = {}
        self.outputs: dict[str, list[str]] = {}
        for o in sorted(rows(s.batch_outputs), key=lambda o: o["ordinal"]):
            self.produced_by[o["token_id"]] = o["batch_id"]
            self.outputs.setdefault(o["batch_id"], []).append(o["token_id"])
        self.artifacts = rows(s.artifacts)

    # ---- pieces ---------------------------------------------------------------------------

    def _state(self, st: dict[str, Any]) -> dict[str, Any]:
        out = {k: st[k] for k in ("state_id", "node_id", "attempt", "status", "input_hash", "output_hash", "duration_ms", "started_at")}
        out["error"] = json.loads(st["error_json"]) if st["error_json"] else None
        out["routing"] = [
            {"route": r["route_label"], "destination": r["destination"], "mode": r["mode"]}
            for r in sorted(self.routing.get(st["state_id"], []), key=lambda r: r["destination"])
        ]
        return out

    def batch(self, batch_id: str) -> dict[str, Any]:
        b = self.batches[batch_id]
        flush = self.batch_states.get(b["aggregation_state_id"] or "")
        return {
            "batch_id": batch_id,
            "node_id": b["aggregation_node_id"],
            "key": b["key"],
            "attempt": b["attempt"],
            "status": b["status"],
            "trigger_type": b["trigger_type"],
            "trigger_reason": b["trigger_reason"],
            "flush_state": self._state(flush) if flush else None,
            "members": [
                {"ordinal": m["ordinal"], "token_id": m["token_id"], "row_index": self.single_row_index(m["token_id"])}
                for m in self.members.get(batch_id, [])
            ],
            "outputs": self.outputs.get(batch_id, []),
        }

    def single_row_index(self, token_id: str) -> int | None:
        """The source row index of a token that descends from one row (None after a batch)."""
        if len(self.parents.get(token_id, [])) > 1:
            return None
        return self.rows[self.tokens[token_id]["row_id"]]["row_index"]

    def token(self, token_id: str) -> dict[str, Any]:
        t = self.tokens[token_id]
        states = sorted(self.states.get(token_id, []), key=lambda st: (st["started_at"], self.position.get(st["node_id"], 0)))
        outcomes = self.outcomes.get(token_id, [])
        terminal = [o for o in outcomes if o["is_terminal"]]
        return {
            "token_id": token_id,
            "row_id": t["row_id"],
            "branch": t["branch_name"],
            "created_at_node": t["created_at_node"],
            "parent_ids": self.parents.get(token_id, []),
            "produced_by_batch": self.produced_by.get(token_id),
            "states": [self._state(st) for st in states],
            "batches": self.member_of.get(token_id, []),
            "outcome": _outcome(terminal[0]) if terminal else None,
            "buffered": any(o["outcome"] == "buffered" for o in outcomes),
        }

    def _walk(self, start: list[str], step: dict[str, list[str]]) -> list[str]:
        seen: dict[str, None] = {}
        frontier = list(start)
        while frontier:
            tid = frontier.pop(0)
            if tid in seen:
                continue
            seen[tid] = None
            frontier.extend(step.get(tid, []))
        return list(seen)

    def descendants(self, token_ids: list[str]) -> list[str]:
        return self._walk(token_ids, self.children)

    def ancestors(self, token_id: str) -> list[str]:
        return self._walk([token_id], self.parents)

    def row_summary(self, row_id: str) -> dict[str, Any]:
        r = self.rows[row_id]
        return {k: r[k] for k in ("row_id", "row_index", "source_node_id", "source_data_hash")} | {
            "payload": json.loads(r["payload_json"]) if r["payload_json"] else None
        }


def _outcome(o: dict[str, Any]) -> dict[str, Any]:
    return {
        "outcome": o["outcome"],
        "node_id": o["node_id"],
        "sink": o["sink_name"],
        "artifact_id": o["artifact_id"],
        "artifact_row": o["artifact_row"],
        "error": json.loads(o["error_json"]) if o["error_json"] else None,
    }


def _with_batches(view: _RunView, token_ids: list[str]) -> list[dict[str, Any]]:
    batch_ids: dict[str, None] = {}
    for tid in token_ids:
        for bid in view.member_of.get(tid, []):
            batch_ids[bid] = None
        if tid in view.produced_by:
            batch_ids[view.produced_by[tid]] = None
    return [view.batch(b) for b in batch_ids]


def explain_row(store: LandscapeStore, run_id: str, *, row_index: int | None = None, row_id: str | None = None) -> dict[str, Any]:
    view = _RunView(store, run_id)
    if row_id is None:
        matches = [r for r in view.rows.values() if r["row_index"] == row_index]
        if not matches:
            raise ExplainTargetNotFound(f"run {run_id} has no row with index {row_index} (rows are 0-based, {len(view.rows)} read)")
        row_id = matches[0]["row_id"]
    if row_id not in view.rows:
        raise ExplainTargetNotFound(f"run {run_id} has no row {row_id!r}")
    own = [t for t, tok in view.tokens.items() if tok["row_id"] == row_id and not view.parents.get(t)]
    token_ids = view.descendants(own)
    return {
        "run_id": run_id,
        "row": view.row_summary(row_id),
        "tokens": [view.token(t) for t in token_ids],
        "batches": _with_batches(view, token_ids),
    }


def explain_token(store: LandscapeStore, run_id: str, token_id: str) -> dict[str, Any]:
    view = _RunView(store, run_id)
    if token_id not in view.tokens:
        raise ExplainTargetNotFound(f"run {run_id} has no token {token_id!r}")
    lineage = view.ancestors(token_id)
    source_rows = sorted({view.tokens[t]["row_id"] for t in lineage if not view.parents.get(t)}, key=lambda r: view.rows[r]["row_index"])
    return {
        "run_id": run_id,
        "token": view.token(token_id),
        "ancestors": [view.token(t) for t in lineage[1:]],
        "batches": _with_batches(view, lineage),
        "source_rows": [view.row_summary(r) for r in source_rows],
    }


def token_at_sink_line(store: LandscapeStore, run_id: str, sink: str, line: int) -> str:
    """The token written at data line ``line`` (1-based) of a sink's merged file."""
    view = _RunView(store, run_id)
    node_id = f"sink:{sink}"
    parts = sorted((a for a in view.artifacts if a["sink_node_id"] == node_id and a["artifact_kind"] == "part"), key=lambda a: a["path"])
    if not parts:
        raise ExplainTargetNotFound(f"run {run_id} wrote nothing to sink {sink!r}")
    offset = line - 1
    for part in parts:
        if offset < part["row_count"]:
            for tid, outcomes in view.outcomes.items():
                if any(o["artifact_id"] == part["artifact_id"] and o["artifact_row"] == offset for o in outcomes):
                    return tid
        offset -= part["row_count"]
    total = sum(p["row_count"] for p in parts)
    raise ExplainTargetNotFound(f"sink {sink!r} holds {total} rows in run {run_id}; line {line} is out of range (1..{total})")


# ---- text rendering -----------------------------------------------------------------------

def _fmt_state(st: dict[str, Any], indent: str) -> list[str]:
    dur = f"{st['duration_ms']:.2f}ms" if st["duration_ms"] is not None else "-"
    lines = [
        f"{indent}{st['node_id']:<28} {NodeStateStatus(st['status']).label:<9} in={(st['input_hash'] or '-')[:12]} "
        f"out={(st['output_hash'] or '-')[:12]} {dur} attempt {st['attempt']}"
    ]
    if st["error"]:
        lines.append(f"{indent}  error: {st['error']['type']}: {st['error']['message']}")
    for r in st["routing"]:
        lines.append(f"{indent}  route {r['route']!r} → {r['destination']} ({r['mode']})")
    return lines


def _fmt_token(t: dict[str, Any], indent: str = "  ") -> list[str]:
    head = f"{indent}token {t['token_id']}"
    if t["branch"]:
        head += f"  branch={t['branch']}"
    if t["parent_ids"]:
        parents = t["parent_ids"]
        head += f"  parents={','.join(parents)}" if len(parents) <= 2 else f"  parents={parents[0]},… ({len(parents)})"
    if t["produced_by_batch"]:
        head += f"  from batch {t['produced_by_batch']}"
    lines = [head]
    for st in t["states"]:
        lines += _fmt_state(st, indent + "  ")
    o = t["outcome"]
    if o:
        where = f" → sink {o['sink']} (part row {o['artifact_row']})" if o["sink"] else f" at {o['node_id']}"
        lines.append(f"{indent}  outcome: {o['outcome'].upper()}{where}")
        if o["error"]:
            lines.append(f"{indent}    reason: {o['error']['message']}")
    elif t["buffered"]:
        lines.append(f"{indent}  outcome: BUFFERED (in an unflushed batch)")
    else:
        lines.append(f"{indent}  outcome: NONE (no terminal outcome recorded)")
    return lines


def _fmt_batch(b: dict[str, Any], full: bool) -> list[str]:
    lines = [
        f"  batch {b['batch_id']} at {b['node_id']} key={b['key']!r} attempt {b['attempt']}: {BatchStatus(b['status']).label}, "
        f"trigger {b['trigger_type']} ({b['trigger_reason']})"
    ]
    if b["flush_state"]:
        lines += _fmt_state(b["flush_state"], "    flush ")
    members = [
        f"#{m['ordinal']} row {m['row_index']}" if m["row_index"] is not None else f"#{m['ordinal']} {m['token_id']}"
        for m in b["members"]
    ]
    lines.append(f"    members ({len(members)}): {_first_and_last(members, full)}")
    return lines


def _first_and_last(items: list[str], full: bool) -> str:
    """All items, or (unless ``full``) the first and last ``FEW`` around how many were left out."""
    if full or len(items) <= MANY:
        return ", ".join(items)
    return f"{', '.join(items[:FEW])}, … {len(items) - 2 * FEW} more …, {', '.join(items[-FEW:])}"


def _fmt_tokens(tokens: list[dict[str, Any]], what: str, full: bool, heading: str | None = None) -> list[str]:
    """Each token in full (after ``heading``, if given), or — unless ``full`` — past ``MANY``
    one line: how many ``what`` there are and at which nodes they were made."""
    if full or len(tokens) <= MANY:
        return [line for t in tokens for line in [*([heading] if heading else []), *_fmt_token(t)]]
    made_at: dict[str, int] = {}
    for t in tokens:
        made_at[t["created_at_node"]] = made_at.get(t["created_at_node"], 0) + 1
    where = ", ".join(f"{node} {n}" for node, n in made_at.items())
    return [f"{what}: {len(tokens)} tokens, made at {where} (--full lists each)"]


def _fmt_source_rows(rows: list[dict[str, Any]], full: bool) -> str:
    """Where a token came from, as row indexes (0-based positions in the source), not a count."""
    if not rows:
        return "from no recorded source row (verify names the missing link)"
    if len(rows) == 1:
        return f"from source row index {rows[0]['row_index']} (row_id {rows[0]['row_id']})"
    indexes = _first_and_last([str(r["row_index"]) for r in rows], full)
    return f"from {len(rows)} source rows, row indexes {indexes}"


def render_text(explanation: dict[str, Any], *, full: bool = False) -> str:
    """The explanation as text. Aggregated lineage is summarised — per batch its trigger, flush,
    member count and first and last members; ancestors past ``MANY`` by where they were made —
    unless ``full``; the JSON form always holds everything."""
    lines = [f"run {explanation['run_id']}"]
    if "row" in explanation:
        r = explanation["row"]
        lines.append(f"row index {r['row_index']} (row_id {r['row_id']}) from {r['source_node_id']}, "
                     f"source hash {r['source_data_hash'][:16]}")
        lines.append(f"  payload: {json.dumps(r['payload'], sort_keys=True)}")
        tokens = explanation["tokens"]  # the row's own token first, then what it became
        lines += _fmt_tokens(tokens[:1], "tokens", full) + _fmt_tokens(tokens[1:], "descendants", full)
    else:
        lines += _fmt_token(explanation["token"], "")
        lines.append(_fmt_source_rows(explanation["source_rows"], full))
        lines += _fmt_tokens(explanation["ancestors"], "ancestors", full, heading="ancestor:")
    for b in explanation["batches"]:
        lines += _fmt_batch(b, full)
    return "\n".join(lines)
