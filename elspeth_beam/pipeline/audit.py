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
import operator
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from elspeth_beam.auditlog import buffer
from elspeth_beam.auditlog.buffer import AuditBuffer, AuditSegment
from elspeth_beam.auditlog.records import NodeStateRecord, OutcomeRecord, TokenParentRecord, TokenRecord, positional
from elspeth_beam.core import ids
from elspeth_beam.core.enums import NodeStateStatus, Outcome
from elspeth_beam.core.errors import DataError
from elspeth_beam.core.timestamps import now_us
from elspeth_beam.core.tokens import TokenInfo

AUDIT_TAG = "audit"
ERROR_TAG = "error"


token_row_hash: Callable[[TokenInfo], str] = operator.attrgetter("row_hash")
"""The output hash of a step whose output is a token: its row's."""


def out_tag(destination: str) -> str:
    return f"out:{destination}"


@dataclass(frozen=True)
class NodeContext:
    """What an audited DoFn needs to know about its node (small, picklable)."""

    run_id: str
    node_id: str
    on_error: str  # 'fail' | 'quarantine' | a sink name
    segment_records: int | None = None  # records per audit segment at most (None: buffer.SEGMENT_RECORDS)


class StepResult(NamedTuple):
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
        input_hash: str | None,
        work: Callable[[], Any],
        output_hash: Callable[[Any], str],
        token_id: str | None = None,
        batch_id: str | None = None,
        attempt: int = 1,
    ) -> StepResult:
        """Run ``work`` as one node_state of this node on a token (or a batch's flush).

        The state is always closed: completed with ``output_hash`` of the output, or failed
        with the error. The caller gives the input's hash: the token carries it from where
        its row was made (``TokenInfo.row_hash``), so no row is hashed twice.
        """
        subject = token_id or batch_id
        assert subject is not None, "a node_state belongs to a token or a batch"
        state_id = ids.state_id(subject, self.ctx.node_id, attempt)
        started_at = now_us()
        t0 = time.perf_counter()
        error: dict[str, Any] | None = None
        try:
            output = work()
            digest = output_hash(output)
        except Exception as exc:  # a plugin's failure is data for the audit, not a crash
            output, digest, error = None, None, error_info(exc, self.ctx.node_id)
        self._record_state(state_id, token_id, batch_id, attempt, input_hash, digest,
                           (time.perf_counter() - t0) * 1000.0, error, started_at)
        return StepResult(state_id, output, error)

    def record_state(self, *, state_id: str, token_id: str, input_hash: str, output_hash: str, duration_ms: float,
                     started_at: int) -> None:
        """Record a completed node_state of this node on a token, attempt 1 (a sink's rows)."""
        self._record_state(state_id, token_id, None, 1, input_hash, output_hash, duration_ms, None, started_at)

    def _record_state(self, state_id: str, token_id: str | None, batch_id: str | None, attempt: int,
                      input_hash: str | None, output_hash: str | None, duration_ms: float,
                      error: dict[str, Any] | None, started_at: int) -> None:
        self.record(_STATE((state_id, self.ctx.run_id, token_id, batch_id, self.ctx.node_id, attempt,
                            _FAILED if error else _COMPLETED, input_hash, output_hash, duration_ms, _json(error),
                            started_at, now_us())))

    # ---- tokens and outcomes ------------------------------------------------------------

    def record_token(self, token: TokenInfo) -> None:
        self.record(_TOKEN((token.token_id, token.run_id, token.row_id, token.branch, self.ctx.node_id, now_us())))
        for ordinal, parent in enumerate(token.parent_ids):
            self.record(_PARENT((token.token_id, parent, ordinal)))

    def record_outcome(self, token: TokenInfo, outcome: Outcome, *, sink_name: str | None = None,
                       error_json: str | None = None, artifact_id: str | None = None, artifact_row: int | None = None,
                       token_json: str | None = None) -> None:
        value, terminal = _OUTCOMES[outcome]
        self.record(_OUTCOME((ids.outcome_id(token.token_id, value, self.ctx.node_id), token.run_id, token.token_id,
                              value, terminal, self.ctx.node_id, sink_name, error_json, artifact_id, artifact_row,
                              token_json, now_us())))

    def divert(self, token: TokenInfo, error: dict[str, Any]) -> Iterator[TaggedOutput]:
        """Send a token whose step failed where the node's ``on_error`` says."""
        if self.ctx.on_error == "fail":
            self.record_outcome(token, Outcome.FAILED, error_json=_json(error))
        elif self.ctx.on_error == "quarantine":
            self.record_outcome(token, Outcome.QUARANTINED, error_json=_json(error))
        else:  # an error sink records `quarantined` once the row is durably written
            yield TaggedOutput(ERROR_TAG, (token, error))


_STATE = positional(NodeStateRecord, "state_id run_id token_id batch_id node_id attempt status input_hash "
                    "output_hash duration_ms error_json started_at completed_at")
_TOKEN = positional(TokenRecord, "token_id run_id row_id branch_name created_at_node created_at")
_PARENT = positional(TokenParentRecord, "token_id parent_token_id ordinal")
_OUTCOME = positional(OutcomeRecord, "outcome_id run_id token_id outcome is_terminal node_id sink_name error_json "
                      "artifact_id artifact_row token_json recorded_at")
_COMPLETED, _FAILED = NodeStateStatus.COMPLETED.value, NodeStateStatus.FAILED.value
_OUTCOMES = {o: (o.value, o.is_terminal) for o in Outcome}  # enum attribute reads cost on every record
