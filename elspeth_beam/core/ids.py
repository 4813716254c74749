"""Deterministic ids (DESIGN §2).

Beam retries bundles; the same work must produce the same ids so the Landscape writer can
ignore replays. Every id is a shortened sha256 of canonical parts, prefixed by its kind so a
reader can tell a token id from a batch id at a glance.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

_ID_HEX = 24  # 96 bits: collision-free for any realistic run, still readable
_encode = json.JSONEncoder(separators=(",", ":")).encode  # one encoder: json.dumps builds one per call


def make_id(kind: str, *parts: Any) -> str:
    digest = hashlib.sha256(_encode([kind, *parts]).encode()).hexdigest()
    return f"{kind}_{digest[:_ID_HEX]}"


def row_id(run_id: str, source_node_id: str, row_index: int) -> str:
    return make_id("row", run_id, source_node_id, row_index)


def token_id(parent_ids: list[str] | tuple[str, ...], node_id: str, ordinal: int) -> str:
    return make_id("tok", list(parent_ids), node_id, ordinal)


def state_id(subject_id: str, node_id: str, attempt: int) -> str:
    """A node_state id; ``subject_id`` is a token id, or a batch id for a flush."""
    return make_id("st", subject_id, node_id, attempt)


def batch_id(run_id: str, node_id: str, key: str, sequence: int, attempt: int) -> str:
    return make_id("bat", run_id, node_id, key, sequence, attempt)


def outcome_id(token_id_: str, outcome: str, node_id: str) -> str:
    return make_id("out", token_id_, outcome, node_id)


def routing_id(state_id_: str, destination: str) -> str:
    return make_id("rte", state_id_, destination)


def artifact_id(run_id: str, sink_node_id: str, path: str, content_hash: str) -> str:
    return make_id("art", run_id, sink_node_id, path, content_hash)
