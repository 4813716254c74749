"""Aggregation node: a keyed stateful DoFn whose every flush is an audited transform boundary.

State per key: a BagState of full ``TokenInfo`` (deterministic coder — a runner checkpoint
restores whole tokens), the position (the open batch's sequence number and its member count, one
cell: Beam's state cache walks every cell it caches to size it) and the timeout deadline.
Triggers: ``count`` (in ``process``), ``end_of_source`` (event-time timer at the window end —
after the last element of a bounded source) and ``timeout`` (processing-time timer from the
batch's first accept, so a quiet key is flushed even when no further row arrives).

A flush always goes through ``AuditedDoFn.execute``: the batch moves draft → executing →
completed/failed with its trigger, the node_state at the aggregation node carries the
members' input hash, the outputs' hash and any error, and members are never lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Tuple

import apache_beam as beam
from apache_beam.coders import FloatCoder, TupleCoder, VarIntCoder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (
    BagStateSpec,
    ReadModifyWriteStateSpec,
    TimerSpec,
    on_timer,
)
from apache_beam.utils.timestamp import Timestamp

from elspeth_beam import faults
from elspeth_beam.config.settings import AggregationSettings
from elspeth_beam.core import ids
from elspeth_beam.core.canonical import canonical_json
from elspeth_beam.core.enums import BatchStatus, Outcome, TriggerType
from elspeth_beam.core.errors import ElspethError
from elspeth_beam.auditlog.records import BatchMemberRecord, BatchOutputRecord, BatchRecord, positional
from elspeth_beam.core.chain import members_hash
from elspeth_beam.core.timestamps import now_us
from elspeth_beam.core.tokens import TokenInfo, TokenInfoCoder
from elspeth_beam.pipeline.audit import AuditedDoFn, NodeContext, out_tag
from elspeth_beam.pipeline.restore import AggregationRestore, RestoredStateError
from elspeth_beam.plugins import registry
from elspeth_beam.plugins.base import BatchPlugin

Clock = Callable[[], float]
_MEMBER = positional(BatchMemberRecord, "batch_id run_id token_id ordinal")


class BatchOutputError(ElspethError):
    """A batch plugin returned the wrong number of rows for the aggregation's output_mode."""


def group_key(row: dict[str, Any], group_by: list[str]) -> str:
    """The aggregation key: canonical JSON of the group_by values (a missing field is null)."""
    return canonical_json([row.get(f) for f in group_by]).decode() if group_by else ""


def end_of_window(window: Any) -> Timestamp:
    """The window end floored to whole milliseconds (TestStream watermarks are whole ms)."""
    return Timestamp(micros=(window.end.micros // 1000) * 1000)


@dataclass
class KeyState:
    """One key's state and timers, as bound for the current call."""

    key: str
    tokens: Any
    position: Any  # (sequence, members counted); None before the key's first element
    deadline: Any
    timeout_timer: Any


class AggregationDoFn(AuditedDoFn):
    TOKENS = BagStateSpec("tokens", TokenInfoCoder())
    POSITION = ReadModifyWriteStateSpec("position", TupleCoder([VarIntCoder(), VarIntCoder()]))
    DEADLINE = ReadModifyWriteStateSpec("deadline", FloatCoder())
    END_OF_SOURCE = TimerSpec("end_of_source", TimeDomain.WATERMARK)
    TIMEOUT = TimerSpec("timeout", TimeDomain.REAL_TIME)

    def __init__(
        self,
        ctx: NodeContext,
        settings: AggregationSettings,
        clock: Clock = time.time,
        restore: AggregationRestore | None = None,
        streaming: bool = True,
    ) -> None:
        super().__init__(ctx)
        self.settings = settings
        self.clock = clock
        # A bounded (batch) input ends with the end-of-source flush; there the runners either
        # fire processing-time timers early (BEAM_NOTES) or refuse to finish with them pending
        # (FnApiRunner behind a shuffle), so the timeout timer is armed only when streaming.
        self.timeout = settings.trigger.timeout_seconds if streaming else None
        self.restore = restore or AggregationRestore()
        self.tag = out_tag(settings.on_success)

    def setup(self) -> None:
        self.plugin = registry.build(BatchPlugin, self.settings.plugin, self.settings.options)
        self._open_batch_ids: dict[str, tuple[int, str]] = {}

    # ---- accept ---------------------------------------------------------------------------

    def process(
        self,
        element: Tuple[str, TokenInfo],
        window=beam.DoFn.WindowParam,
        tokens=beam.DoFn.StateParam(TOKENS),
        position=beam.DoFn.StateParam(POSITION),
        deadline=beam.DoFn.StateParam(DEADLINE),
        end_timer=beam.DoFn.TimerParam(END_OF_SOURCE),
        timeout_timer=beam.DoFn.TimerParam(TIMEOUT),
    ) -> Iterator[Any]:
        key, token = element
        state = KeyState(key, tokens, position, deadline, timeout_timer)
        if position.read() is None:  # first sight of this key in this pipeline
            position.write((self.restore.next_sequence.get(key, 0), 0))
            retry = self.restore.retries.get(key)
            for member in retry.members if retry else ():
                yield from self._accept(state, member, window, end_timer)
        if token.token_id not in self.restore.skip_tokens:
            yield from self._accept(state, token, window, end_timer)
        yield from self.audit_if_full()

    def _accept(self, state: KeyState, token: TokenInfo, window: Any, end_timer: Any) -> Iterator[Any]:
        state.tokens.add(token)
        seq, ordinal = state.position.read()
        state.position.write((seq, ordinal + 1))
        batch_id = self._batch_id(state.key, seq)
        if ordinal == 0:
            attempt, retry_of = self.restore.attempt(state.key, seq)
            self.record(
                BatchRecord(batch_id=batch_id, run_id=self.ctx.run_id, aggregation_node_id=self.ctx.node_id, key=state.key,
                            sequence=seq, attempt=attempt, retry_of_batch_id=retry_of, status=BatchStatus.DRAFT.value,
                            created_at=now_us())
            )
            end_timer.set(end_of_window(window))
            if self.timeout is not None:
                due = self.clock() + self.timeout
                state.deadline.write(due)
                state.timeout_timer.set(due)
        self.record(_MEMBER((batch_id, self.ctx.run_id, token.token_id, ordinal)))
        self.record_outcome(token, Outcome.BUFFERED, token_json=token.to_json_bytes().decode())
        limit = self.settings.trigger.count
        if limit is not None and ordinal + 1 >= limit:
            yield from self._flush(state, TriggerType.COUNT, f"count reached {limit}")

    # ---- triggers -------------------------------------------------------------------------

    @on_timer(END_OF_SOURCE)
    def on_end_of_source(
        self,
        key=beam.DoFn.KeyParam,
        tokens=beam.DoFn.StateParam(TOKENS),
        position=beam.DoFn.StateParam(POSITION),
        deadline=beam.DoFn.StateParam(DEADLINE),
        timeout_timer=beam.DoFn.TimerParam(TIMEOUT),
    ) -> Iterator[Any]:
        state = KeyState(key, tokens, position, deadline, timeout_timer)
        yield from self._flush(state, TriggerType.END_OF_SOURCE, "end of source")

    @on_timer(TIMEOUT)
    def on_timeout(
        self,
        key=beam.DoFn.KeyParam,
        tokens=beam.DoFn.StateParam(TOKENS),
        position=beam.DoFn.StateParam(POSITION),
        deadline=beam.DoFn.StateParam(DEADLINE),
        timeout_timer=beam.DoFn.TimerParam(TIMEOUT),
    ) -> Iterator[Any]:
        due = deadline.read()
        # Runners fire pending processing-time timers early when a bounded input ends; that
        # is not a timeout — the end-of-source timer flushes those rows instead. (Re-arming
        # here would loop: the runner's clock is already past the time it would be set for.)
        if due is None or self.clock() < due:
            return
        state = KeyState(key, tokens, position, deadline, timeout_timer)
        yield from self._flush(state, TriggerType.TIMEOUT, f"timeout {self.settings.trigger.timeout_seconds:g}s")

    # ---- flush ----------------------------------------------------------------------------

    def _batch_id(self, key: str, seq: int) -> str:
        """The open batch's id, hashed once per batch rather than once per member."""
        cached = self._open_batch_ids.get(key)
        if cached is None or cached[0] != seq:
            attempt, _ = self.restore.attempt(key, seq)
            cached = self._open_batch_ids[key] = (seq, ids.batch_id(self.ctx.run_id, self.ctx.node_id, key, seq, attempt))
        return cached[1]

    def _flush(self, state: KeyState, trigger: TriggerType, reason: str) -> Iterator[Any]:
        members: list[TokenInfo] = list(state.tokens.read())
        seq, counted = state.position.read() or (0, 0)
        state.tokens.clear()
        if self.timeout is not None:  # untouched otherwise: each state commit costs Beam's cache a deep-size walk
            state.deadline.clear()
            state.timeout_timer.clear()
        if not members and not counted:
            return
        if len(members) != counted:
            raise RestoredStateError(
                f"aggregation {self.ctx.node_id} key {state.key!r} batch {self._batch_id(state.key, seq)}: the count state "
                f"says {counted} member(s) but the token bag holds {len(members)}; the restored state is inconsistent. "
                "Discard the runner checkpoint and run `elspeth-beam resume` from the Landscape instead."
            )
        state.position.write((seq + 1, 0))
        yield from self.flush_batch(state.key, seq, members, trigger, reason)

    def flush_batch(self, key: str, seq: int, members: list[TokenInfo], trigger: TriggerType, reason: str) -> Iterator[Any]:
        """The one audited flush: batch executing → node_state → completed/failed, members kept."""
        attempt, retry_of = self.restore.attempt(key, seq)
        batch_id = ids.batch_id(self.ctx.run_id, self.ctx.node_id, key, seq, attempt)
        check_members(batch_id, members, self.ctx.run_id)
        batch = dict(batch_id=batch_id, run_id=self.ctx.run_id, aggregation_node_id=self.ctx.node_id, key=key,
                     sequence=seq, attempt=attempt, trigger_type=trigger.value, trigger_reason=reason,
                     retry_of_batch_id=retry_of, created_at=now_us())
        self.record(BatchRecord(status=BatchStatus.EXECUTING.value, **batch))
        step = self.execute(
            batch_id=batch_id,
            attempt=attempt,
            input_hash=members_hash(m.row_hash for m in members),
            work=lambda: self._outputs(members),
            output_hash=lambda outs: members_hash(t.row_hash for t in outs),
        )
        status = BatchStatus.COMPLETED if step.ok else BatchStatus.FAILED
        self.record(BatchRecord(status=status.value, aggregation_state_id=step.state_id, completed_at=now_us(), **batch))
        if not step.ok:
            for member in members:
                yield from self.divert(member, step.error)
            return
        outputs: list[TokenInfo] = step.output
        passthrough = self.settings.output_mode == "passthrough"
        for member in members if not passthrough else ():
            self.record_outcome(member, Outcome.CONSUMED_IN_BATCH)
        for ordinal, out in enumerate(outputs):
            if not passthrough:
                self.record_token(out)
            self.record(BatchOutputRecord(batch_id=batch_id, run_id=self.ctx.run_id, token_id=out.token_id,
                                          ordinal=ordinal, token_json=out.to_json_bytes().decode()))
            yield beam.pvalue.TaggedOutput(self.tag, out)

    def _outputs(self, members: list[TokenInfo]) -> list[TokenInfo]:
        """Run the plugin and turn its rows into tokens with correct lineage per output mode."""
        faults.in_flush(self.settings.name)
        rows = self.plugin.process_batch([dict(m.row) for m in members])
        mode, expected = self.settings.output_mode, self.settings.expected_output_count
        if mode == "passthrough":
            if len(rows) != len(members):
                raise BatchOutputError(f"passthrough needs {len(members)} rows out (one per member), plugin returned {len(rows)}")
            return [m.with_row(r) for m, r in zip(members, rows)]
        want = 1 if mode == "single" else expected
        if want is not None and len(rows) != want:
            raise BatchOutputError(f"output_mode {mode} expects {want} row(s) per flush, plugin returned {len(rows)}")
        group = {f: members[0].row.get(f) for f in self.settings.group_by}
        parents = tuple(m.token_id for m in members)
        first = members[0]
        return [
            TokenInfo(
                run_id=first.run_id,
                row_id=first.row_id,
                token_id=ids.token_id(parents, self.ctx.node_id, i),
                row_index=first.row_index,
                parent_ids=parents,
                row={**group, **row},
            )
            for i, row in enumerate(rows)
        ]


def check_members(batch_id: str, members: list[Any], run_id: str) -> None:
    """A restored buffer must hold whole tokens of this run, each once — or say what is wrong."""
    problems = []
    seen: set[str] = set()
    for i, m in enumerate(members):
        if not isinstance(m, TokenInfo):
            problems.append(f"member {i} is a {type(m).__name__}, not a TokenInfo (rows without tokens)")
        elif m.run_id != run_id:
            problems.append(f"member {i} ({m.token_id}) belongs to run {m.run_id}")
        elif m.token_id in seen:
            problems.append(f"member {i} repeats token {m.token_id}")
        else:
            seen.add(m.token_id)
    if problems:
        raise RestoredStateError(
            f"batch {batch_id} cannot flush from its restored state: {'; '.join(problems)}. "
            "Discard the runner checkpoint and run `elspeth-beam resume` from the Landscape instead."
        )


class Aggregate(beam.PTransform):
    """Key tokens by their group_by values, then aggregate them statefully.

    ``barrier`` puts a shuffle in front of the stateful DoFn. In batch, an aggregation fed by
    another one's flushes needs it on the FnApiRunner (Beam 2.77), which otherwise fires this
    stage's end-of-source timer before the upstream stage's end-of-source output arrives, and
    the remainder is never flushed (measured with two chained GroupIntoBatches: 3 of 23 lost).
    Not when streaming: there the upstream flush outputs sit at the window end and a shuffle
    would drop them as late.
    """

    def __init__(self, ctx: NodeContext, settings: AggregationSettings, tags: list[str],
                 clock: Clock = time.time, restore: AggregationRestore | None = None, barrier: bool = False,
                 streaming: bool = False) -> None:
        super().__init__()
        self.ctx, self.settings, self.tags, self.clock, self.restore = ctx, settings, tags, clock, restore
        self.barrier, self.streaming = barrier, streaming

    def expand(self, tokens):
        group_by = list(self.settings.group_by)
        keyed = tokens | "Key" >> beam.Map(lambda t: (group_key(t.row, group_by), t)).with_output_types(Tuple[str, TokenInfo])
        if self.barrier:
            keyed = keyed | "Barrier" >> beam.Reshuffle().with_output_types(Tuple[str, TokenInfo])
        dofn = AggregationDoFn(self.ctx, self.settings, self.clock, self.restore, self.streaming)
        return keyed | "Aggregate" >> beam.ParDo(dofn).with_outputs(*self.tags)
