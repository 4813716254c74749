"""Deterministic ids (DESIGN §2).

Beam retries bundles; the same work must produce the same ids so the Landscape writer can
ignore replays. Every id is a shortened sha256 of canonical parts, prefixed by its kind so a
reader can tell a token id from a batch id at a glance.

Ids of a source row's work also carry the row's position — ``tok_<10 hex: row index><24 hex:
hash>``, inherited by its tokens, node_states, outcomes and routings — so the Landscape's
indexes grow at their end as a run proceeds instead of taking each insert on a random page
(at 400 000 rows the writer had slowed to half its 100 000-row rate once the indexes outgrew
its page cache). Ids without a position (batches' keep their sequence, artifacts none) are
the kind and the hash alone.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

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
    return rest[:_ORDER_HEX] if len(rest) == _ORDER_HEX + _ID_HEX else ""


def row_id(run_id: str, source_node_id: str, row_index: int) -> str:
    return make_id("row", run_id, source_node_id, row_index, order=position(row_index))


def token_id(parent_ids: list[str] | tuple[str, ...], node_id: str, ordinal: int) -> str:
    """A token inherits its first parent's position (an aggregate: its first member's)."""
    return make_id("tok", list(parent_ids), node_id, ordinal, order=order_of(parent_ids[0]) if parent_ids else "")


def state_id(subject_id: str, node_id: str, attempt: int) -> str:
    """A node_state id; ``subject_id`` is a token id, or a batch id for a flush."""
    return make_id("st", subject_id, node_id, attempt, order=order_of(subject_id))


def batch_id(run_id: str, node_id: str, key: str, sequence: int, attempt: int) -> str:
    return make_id("bat", run_id, node_id, key, sequence, attempt, order=position(sequence))


def outcome_id(token_id_: str, outcome: str, node_id: str) -> str:
    return make_id("out", token_id_, outcome, node_id, order=order_of(token_id_))


def routing_id(state_id_: str, destination: str) -> str:
    return make_id("rte", state_id_, destination, order=order_of(state_id_))


def artifact_id(run_id: str, sink_node_id: str, path: str, content_hash: str) -> str:
    return make_id("art", run_id, sink_node_id, path, content_hash)
