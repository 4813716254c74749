"""What a resumed pipeline restores from the Landscape (built by ``elspeth_beam.resume``).

Plain, picklable data handed to the nodes: which source rows are already settled, which
tokens sinks already wrote, and per aggregation the batch sequence to continue from and the
interrupted batches to retry (with their full member tokens, in ordinal order), and the
members of failed flushes still to reach an error sink.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from elspeth_beam.core.errors import ElspethError
from elspeth_beam.core.tokens import TokenInfo


class RestoredStateError(ElspethError):
    """Restored aggregation state is inconsistent (tokens missing, counts disagree)."""


@dataclass(frozen=True)
class RetryBatch:
    """An interrupted batch, retried as ``attempt`` with the same members in the same order."""

    key: str
    sequence: int
    attempt: int
    retry_of: str
    members: tuple[TokenInfo, ...]


@dataclass(frozen=True)
class AggregationRestore:
    next_sequence: dict[str, int] = field(default_factory=dict)  # key → first sequence to use
    retries: dict[str, RetryBatch] = field(default_factory=dict)  # key → batch to rebuild first
    skip_tokens: frozenset[str] = frozenset()  # already in a finished batch, or in a retry

    def attempt(self, key: str, sequence: int) -> tuple[int, str | None]:
        retry = self.retries.get(key)
        if retry is not None and retry.sequence == sequence:
            return retry.attempt, retry.retry_of
        return 1, None


@dataclass(frozen=True)
class PipelineRestore:
    settled_rows: frozenset[int] = frozenset()  # source row indices not to read again
    done_tokens: frozenset[str] = frozenset()  # tokens with a terminal outcome: sinks skip them
    aggregations: dict[str, AggregationRestore] = field(default_factory=dict)  # by node_id
    reemit: dict[str, tuple[TokenInfo, ...]] = field(default_factory=dict)  # node_id → flushed outputs that went no further
    # node_id → members of failed flushes (with the flush's error) that never reached the node's error sink
    rediverted: dict[str, tuple[tuple[TokenInfo, dict[str, Any]], ...]] = field(default_factory=dict)
