"""The one audited execution mechanism every node kind uses.

``AuditedDoFn.execute`` runs a unit of work (a plugin call on a token, or a flush on a
batch) and records its node_state — input hash, output hash, duration, attempt, status,
error — so no node kind can bypass the audit. Records go into the bundle's column buffer
(``auditlog/buffer.py``) and leave as one segment element on the ``audit`` tag per bundle (or
per ``SEGMENT_RECORDS``): a failed bundle's records are discarded with it, a committed
bundle's reach the audit sink, which commits them to the audit log and the Landscape.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from elspeth_beam.auditlog import buffer
from elspeth_beam.auditlog.buffer import AuditBuffer, AuditSegment
from elspeth_beam.auditlog.records import NodeStateRecord, OutcomeRecord, TokenParentRecord, TokenRecord
from elspeth_beam.core import ids
from elspeth_beam.core.canonical import stable_hash
from elspeth_beam.core.enums import NodeStateStatus, Outcome
from elspeth_beam.core.errors import DataError
from elspeth_beam.core.timestamps import now_us
from elspeth_beam.core.tokens import TokenInfo

AUDIT_TAG = "audit"
ERROR_TAG = "error"


_recent: tuple[Any, str, Any, str] = (None, "", None, "")  # the last two values hashed, newest first


def row_hash(value: Any) -> str:
    """stable_hash, remembering the last two values by identity: a token's output hash at one
    node is its input hash at the next, computed a moment later in the same fused stage (and
    a source row's raw record and parsed row are each hashed twice)."""
    global _recent
    a, da, b, db = _recent  # one read: safe if another thread replaces it meanwhile
    if value is a:
        return da
    if value is b:
        return db
    digest = stable_hash(value)
    _recent = (value, digest, a, da)
    return digest


def remember_hash(value: Any, digest: str) -> None:
    """Tell ``row_hash`` the digest of ``value``, computed elsewhere from its canonical bytes."""
    global _recent
    a, da, _, _ = _recent
    _recent = (value, digest, a, da)


def out_tag(destination: str) -> str:
    return f"out:{destination}"


@dataclass(frozen=True)
class NodeContext:
    """What an audited DoFn needs to know about its node (small, picklable)."""

    run_id: str
    node_id: str
    on_error: str  # 'fail' | 'quarantine' | a sink name
    segment_records: int | None = None  # records per audit segment at most (None: buffer.SEGMENT_RECORDS)


@dataclass(frozen=True)
class StepResult:
    state_id: str
    output: Any = None
    error: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def error_info(exc: BaseException, node_id: str) -> dict[str, Any]:
    """error_json content: type, message, and a short traceback summary (last frames); for our
    own data errors also the reason and values apart, which reports group rows by."""
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    info: dict[str, Any] = {
        "type": type(exc).__name__,
        "message": str(exc),
        "node_id": node_id,
        "traceback": [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} in {f.name}" for f in frames],
    }
    if isinstance(exc, DataError) and exc.reason is not None:
        info["reason"], info["values"] = exc.reason, list(exc.values)
    return info


def _json(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, default=str)


class AuditedDoFn(beam.DoFn):
    """Base of every audited node DoFn: per-bundle audit buffer + the audited executor.

    Records are plain tuples built from validated tokens and our own code: no per-record
    validation (pydantic events per fact were the largest single audit cost); the database's
    constraints check them when they are loaded."""

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__()
        self.ctx = ctx
        self._audit = AuditBuffer()

    # ---- audit buffer -------------------------------------------------------------------

    def start_bundle(self) -> None:
        self._audit = AuditBuffer()

    def record(self, record: tuple) -> None:
        self._audit.add(record)

    def audit_if_full(self) -> Iterator[TaggedOutput]:
        if len(self._audit) >= (self.ctx.segment_records or buffer.SEGMENT_RECORDS):
            yield from self.audit_now()

    def audit_now(self) -> Iterator[TaggedOutput]:
        """Emit the buffered records as one segment (from ``process``)."""
        if len(self._audit):
            yield TaggedOutput(AUDIT_TAG, self._take_audit())

    def finish_bundle(self) -> Iterator[TaggedOutput]:
        if len(self._audit):
            yield TaggedOutput(AUDIT_TAG, WindowedValue(self._take_audit(), MIN_TIMESTAMP, [GlobalWindow()]))

    def _take_audit(self) -> AuditSegment:
        return self._audit.take(self.ctx.run_id, self.ctx.node_id)

    # ---- the audited executor -----------------------------------------------------------

    def execute(
        self,
        *,
        inputs: Any,
        work: Callable[[], Any],
        token_id: str | None = None,
        batch_id: str | None = None,
        attempt: int = 1,
        hash_output: Callable[[Any], Any] = lambda out: out,
    ) -> StepResult:
        """Run ``work`` as one node_state of this node on a token (or a batch's flush).

        The state is always closed: completed with an output hash, or failed with the error.
        """
        subject = token_id or batch_id
        assert subject is not None, "a node_state belongs to a token or a batch"
        state_id = ids.state_id(subject, self.ctx.node_id, attempt)
        started_at = now_us()
        t0 = time.perf_counter()
        output_hash: str | None = None
        error: dict[str, Any] | None = None
        output: Any = None
        try:
            input_hash = row_hash(inputs)
            output = work()
            output_hash = row_hash(hash_output(output))
        except Exception as exc:  # a plugin's failure is data for the audit, not a crash
            error = error_info(exc, self.ctx.node_id)
            input_hash = _safe_hash(inputs)
        self.record_state(
            state_id=state_id,
            token_id=token_id,
            batch_id=batch_id,
            attempt=attempt,
            status=(NodeStateStatus.FAILED if error else NodeStateStatus.COMPLETED).value,
            input_hash=input_hash,
            output_hash=output_hash,
            duration_ms=(time.perf_counter() - t0) * 1000.0,
            error_json=_json(error),
            started_at=started_at,
        )
        return StepResult(state_id, None if error else output, error)

    def record_state(self, **fields: Any) -> None:
        """Record a closed node_state of this node (``execute`` and multi-token writers)."""
        self.record(NodeStateRecord(run_id=self.ctx.run_id, node_id=self.ctx.node_id, completed_at=now_us(), **fields))

    # ---- tokens and outcomes ------------------------------------------------------------

    def record_token(self, token: TokenInfo) -> None:
        self.record(TokenRecord(token_id=token.token_id, run_id=token.run_id, row_id=token.row_id,
                                branch_name=token.branch, created_at_node=self.ctx.node_id, created_at=now_us()))
        for ordinal, parent in enumerate(token.parent_ids):
            self.record(TokenParentRecord(token_id=token.token_id, parent_token_id=parent, ordinal=ordinal))

    def record_outcome(self, token: TokenInfo, outcome: Outcome, **fields: Any) -> None:
        self.record(
            OutcomeRecord(
                outcome_id=ids.outcome_id(token.token_id, outcome.value, self.ctx.node_id),
                run_id=token.run_id,
                token_id=token.token_id,
                outcome=outcome.value,
                is_terminal=outcome.is_terminal,
                node_id=self.ctx.node_id,
                recorded_at=now_us(),
                **fields,
            )
        )

    def divert(self, token: TokenInfo, error: dict[str, Any]) -> Iterator[TaggedOutput]:
        """Send a token whose step failed where the node's ``on_error`` says."""
        if self.ctx.on_error == "fail":
            self.record_outcome(token, Outcome.FAILED, error_json=_json(error))
        elif self.ctx.on_error == "quarantine":
            self.record_outcome(token, Outcome.QUARANTINED, error_json=_json(error))
        else:  # an error sink records `quarantined` once the row is durably written
            yield TaggedOutput(ERROR_TAG, (token, error))


def _safe_hash(inputs: Any) -> str | None:
    try:
        return stable_hash(inputs)
    except Exception:
        return None
