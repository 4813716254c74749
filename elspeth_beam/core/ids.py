"""Deterministic ids (DESIGN §2), positional and cheap.

Beam retries bundles; the same work must produce the same ids so the loader can ignore
replays. Ids of a source row's work carry the row's position — ``tok_<10 hex: row index>…``,
inherited by its tokens, node_states, outcomes and routings — so the Landscape's indexes grow
at their end as a run proceeds instead of taking each insert on a random page.

Only what is *minted* is hashed (24 hex digits of sha256 over canonical parts): a fork's
children, an aggregation's outputs, batches, artifacts. Everything else is composed from
positions and from codes computed once per run or node, because an audited run makes several
ids per row and hashing each cost more than the rest of the row's audit:

| id | form |
|---|---|
| row | ``row_<position><24 hex of (run, source node)>`` |
| a source row's token | ``tok_<position><24 hex of (row's suffix, source node)>`` |
| other tokens | ``tok_<first parent's position><24 hex of (parents, node, ordinal)>`` |
| node_state | ``st_<subject's 34>.<t|b>.<node code>.<attempt>`` (subject: token, or batch of a flush) |
| outcome | ``out_<token's 34>.<outcome code>.<node code>`` |
| routing | ``rte_<state's rest>.<destination code>`` |

A node code is 8 hex digits of sha256 of the node id; ``check_node_codes`` refuses a graph
in which two nodes share one.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable
from typing import Any

from elspeth_beam.core.errors import ElspethError

_ID_HEX = 24  # 96 bits: collision-free for any realistic run, still readable
_ORDER_HEX = 10  # a row index up to 2**40
_encode = json.JSONEncoder(separators=(",", ":")).encode  # one encoder: json.dumps builds one per call


def make_id(kind: str, *parts: Any, order: str = "") -> str:
    digest = hashlib.sha256(_encode([kind, *parts]).encode()).hexdigest()
    return f"{kind}_{order}{digest[:_ID_HEX]}"


def position(index: int) -> str:
    """The ordering prefix of a row index."""
    return f"{index:0{_ORDER_HEX}x}"


def order_of(id_: str) -> str:
    """The ordering prefix an id carries ('' for one without)."""
    rest = id_.partition("_")[2]
    return rest[:_ORDER_HEX] if len(rest) >= _ORDER_HEX + _ID_HEX else ""


@functools.lru_cache(maxsize=4096)
def code(name: str) -> str:
    """8 hex digits naming a node (or a destination) inside composed ids."""
    return hashlib.sha256(name.encode()).hexdigest()[:8]


@functools.lru_cache(maxsize=256)
def _scope(kind: str, *parts: str) -> str:
    """The hashed part of positional ids, computed once per run and node."""
    return make_id(kind, *parts)[len(kind) + 1:]


def row_id(run_id: str, source_node_id: str, row_index: int) -> str:
    return f"row_{position(row_index)}{_scope('row', run_id, source_node_id)}"


def token_id(parent_ids: list[str] | tuple[str, ...], node_id: str, ordinal: int) -> str:
    """A token inherits its first parent's position (an aggregate: its first member's); a
    source row's own token is composed from its row id, any other is minted (hashed)."""
    if len(parent_ids) == 1 and ordinal == 0 and parent_ids[0].startswith("row_") and order_of(parent_ids[0]):
        row = parent_ids[0]
        return f"tok_{row[4:4 + _ORDER_HEX]}{_scope('tok', row[4 + _ORDER_HEX:], node_id)}"
    return make_id("tok", list(parent_ids), node_id, ordinal, order=order_of(parent_ids[0]) if parent_ids else "")


_SUBJECT_KIND = {"tok": "t", "bat": "b"}


def state_id(subject_id: str, node_id: str, attempt: int) -> str:
    """A node_state id; ``subject_id`` is a token id, or a batch id for a flush."""
    kind, _, rest = subject_id.partition("_")
    return f"st_{rest or subject_id}.{_SUBJECT_KIND.get(kind, kind)}.{code(node_id)}.{attempt}"


def batch_id(run_id: str, node_id: str, key: str, sequence: int, attempt: int) -> str:
    return make_id("bat", run_id, node_id, key, sequence, attempt, order=position(sequence))


_OUTCOME_CODE = {"completed": "c", "routed": "r", "forked": "f", "consumed_in_batch": "b", "quarantined": "q",
                 "failed": "x", "buffered": "w"}


def outcome_id(token_id_: str, outcome: str, node_id: str) -> str:
    rest = token_id_.partition("_")[2] or token_id_
    return f"out_{rest}.{_OUTCOME_CODE.get(outcome) or code(outcome)}.{code(node_id)}"


def routing_id(state_id_: str, destination: str) -> str:
    return f"rte_{state_id_.partition('_')[2] or state_id_}.{code(destination)}"


class NodeCodeClashError(ElspethError):
    """Two node names of one pipeline hash to the same 8-digit code used inside ids."""


def check_node_codes(node_ids: Iterable[str]) -> None:
    seen: dict[str, str] = {}
    for node in node_ids:
        other = seen.setdefault(code(node), node)
        if other != node:
            raise NodeCodeClashError(f"nodes {other!r} and {node!r} share the id code {code(node)}; rename one of them")


def artifact_id(run_id: str, sink_node_id: str, path: str, content_hash: str) -> str:
    return make_id("art", run_id, sink_node_id, path, content_hash)
