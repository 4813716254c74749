"""The timeout trigger (DESIGN §5): a quiet key is flushed by processing time, and only when
its deadline has really passed on the aggregation's clock (BEAM_NOTES: runners may fire
pending processing-time timers early, which must not be recorded as a timeout).

Streaming tests drive ``AggregationDoFn`` with a TestStream on the BundleBasedDirectRunner
and a fake clock (the pattern of Beam's GroupIntoBatches tests), and tap its audit output
into a real Landscape.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Tuple

import apache_beam as beam
import pytest
from agg_plugins_for_tests import StepClock
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_pipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import GlobalWindow, TimestampedValue
from test_aggregation import AGG, agg_settings, keyed_rows, run

from elspeth_beam.config.settings import AggregationSettings, TriggerSettings
from elspeth_beam.core import ids
from elspeth_beam.core.canonical import stable_hash
from elspeth_beam.core.chain import rows_hash as flush_hash

from elspeth_beam.core.tokens import TokenInfo
from elspeth_beam.landscape import schema as s
from elspeth_beam.landscape.store import LandscapeStore, absolute_url
from elspeth_beam.pipeline.aggregation import AggregationDoFn, end_of_window, group_key
from elspeth_beam.pipeline.audit import NodeContext
from elspeth_beam.auditlog.writer_process import AuditWriter
from elspeth_beam.pipeline.audit_sink import WriteAudit

RUN_ID = "run-timeout-stream"
TIMEOUT = 30
# (row index, key): 'a' gets 4 rows (a count flush of 3, then 1 left), 'b' one row, then nothing
ARRIVALS = [(0, "a"), (1, "a"), (2, "b"), (3, "a"), (4, "a")]
BATCH_STARTS = 3  # a#0 (rows 0,1,3), a#1 (row 4), b#0 (row 2): the clock calls before any timer


def make_token(index: int, key: str) -> TokenInfo:
    row_id = ids.row_id(RUN_ID, "source:source", index)
    return TokenInfo(
        run_id=RUN_ID,
        row_id=row_id,
        token_id=ids.token_id([row_id], "source:source", 0),
        row_index=index,
        row={"id": index, "k": key, "v": index * 10},
    )


def run_stream(tmp_path: Path, clock: StepClock, *, advance_processing_time: bool) -> LandscapeStore:
    url = f"sqlite:///{tmp_path / 'stream.db'}"
    settings = AggregationSettings(
        name="agg",
        plugin="batch_stats",
        input="raw",
        on_success="next",
        on_error="quarantine",
        group_by=["k"],
        trigger=TriggerSettings(count=3, timeout_seconds=TIMEOUT),
        options={"fields": ["v"]},
    )
    dofn = AggregationDoFn(NodeContext(RUN_ID, AGG, "quarantine"), settings, clock=clock)
    stream = TestStream().add_elements(
        [TimestampedValue((group_key({"k": k}, ["k"]), make_token(i, k)), 0) for i, k in ARRIVALS]
    )
    if advance_processing_time:
        stream = stream.advance_processing_time(2 * TIMEOUT)
    # the end-of-source timer sits at the global window's end floored to whole ms
    stream = stream.advance_watermark_to(end_of_window(GlobalWindow())).advance_watermark_to_infinity()

    options = PipelineOptions(["--streaming", "--runner=BundleBasedDirectRunner"])
    with test_pipeline.TestPipeline(options=options) as p:
        outs = (
            p
            | "Stream" >> stream
            | "Typed" >> beam.Map(lambda kv: kv).with_output_types(Tuple[str, TokenInfo])
            | "Aggregate" >> beam.ParDo(dofn).with_outputs("audit", "error", "out:next")
        )
        outs["audit"] | "Landscape" >> WriteAudit(url, str(tmp_path / "audit"))
        # a side-effect tap, not assert_that: its GroupByKey would drop the end-of-source
        # outputs (timestamped at the window end) as late in streaming mode
        outs["out:next"] | "Tap" >> beam.ParDo(_AppendRow(str(tmp_path / "outputs.jsonl")))
    emitted = sorted(
        (r["k"], r["batch_size"], r["v_sum"]) for r in map(json.loads, (tmp_path / "outputs.jsonl").read_text().splitlines())
    )
    assert emitted == [("a", 1, 40), ("a", 3, 0 + 10 + 30), ("b", 1, 20)]
    AuditWriter.drain_shared(absolute_url(url))  # segments are committed; their loads may still be queued
    return LandscapeStore(url)


class _AppendRow(beam.DoFn):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def process(self, token: TokenInfo) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(token.row) + "\n")


def batches_by_key(store: LandscapeStore) -> dict[str, list[dict[str, Any]]]:
    members: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for m in store.table_rows(s.batch_members):
        members[m["batch_id"]].append((m["ordinal"], m["token_id"]))
    states = {st["state_id"]: st for st in store.table_rows(s.node_states)}
    outputs = defaultdict(list)
    for o in store.table_rows(s.batch_outputs):
        outputs[o["batch_id"]].append(o["token_id"])
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for b in store.table_rows(s.batches):
        rows = [t for _, t in sorted(members[b["batch_id"]])]
        flush = states.get(b["aggregation_state_id"])
        out[json.loads(b["key"])[0]].append(
            {
                "sequence": b["sequence"],
                "status": b["status"],
                "trigger": (b["trigger_type"], b["trigger_reason"]),
                "members": rows,
                "flush": flush,
                "outputs": outputs[b["batch_id"]],
                "batch_id": b["batch_id"],
            }
        )
    return {k: sorted(v, key=lambda b: b["sequence"]) for k, v in out.items()}


def check_batches(store: LandscapeStore, remainder_trigger: tuple[str, str]) -> None:
    tok = {i: make_token(i, k) for i, k in ARRIVALS}
    row_of = {t.token_id: t.row for t in tok.values()}
    per_key = batches_by_key(store)
    assert sorted(per_key) == ["a", "b"]
    a0, a1 = per_key["a"]
    (b0,) = per_key["b"]
    assert a0["trigger"] == ("count", "count reached 3")
    assert a0["members"] == [tok[0].token_id, tok[1].token_id, tok[3].token_id]
    assert a1["members"] == [tok[4].token_id]
    assert b0["members"] == [tok[2].token_id]
    assert a1["trigger"] == remainder_trigger
    assert b0["trigger"] == remainder_trigger
    for b in (a0, a1, b0):
        assert b["status"] == "completed"
        flush = b["flush"]
        assert flush is not None and flush["batch_id"] == b["batch_id"] and flush["token_id"] is None
        assert flush["node_id"] == AGG and flush["status"] == "completed"
        assert flush["input_hash"] == flush_hash([row_of[m] for m in b["members"]])
        assert len(b["outputs"]) == 1 and b["outputs"][0] not in b["members"]
    # every token was buffered, then consumed exactly once
    outcomes = defaultdict(list)
    for o in store.table_rows(s.token_outcomes):
        outcomes[o["token_id"]].append(o["outcome"])
    for t in tok.values():
        assert sorted(outcomes[t.token_id]) == ["buffered", "consumed_in_batch"]


def test_quiet_keys_are_flushed_by_timeout(tmp_path):
    # accepts see t=0 (deadline 30); the timer callbacks see t=60, past the deadline
    clock = StepClock(start=0, hold=BATCH_STARTS, after=2 * TIMEOUT)
    store = run_stream(tmp_path, clock, advance_processing_time=True)
    check_batches(store, ("timeout", f"timeout {TIMEOUT}s"))
    assert clock.calls() == BATCH_STARTS + 2  # one deadline check per timed-out batch


def test_without_processing_time_the_remainder_waits_for_end_of_source(tmp_path):
    clock = StepClock(start=0, hold=BATCH_STARTS, after=2 * TIMEOUT)
    store = run_stream(tmp_path, clock, advance_processing_time=False)
    check_batches(store, ("end_of_source", "end of source"))
    assert clock.calls() == BATCH_STARTS  # no timeout callback ran


def test_a_timer_firing_before_the_deadline_is_not_a_timeout(tmp_path):
    # the runner's processing time passes the timers, but the aggregation's clock stands
    # still: the callbacks run (and check), and the end-of-source flush takes the rows
    clock = StepClock(start=0, hold=BATCH_STARTS, after=0)
    store = run_stream(tmp_path, clock, advance_processing_time=True)
    check_batches(store, ("end_of_source", "end of source"))
    assert clock.calls() == BATCH_STARTS + 2  # the timeout callbacks did run


@pytest.mark.parametrize("beam_args", [(), ("--streaming",)], ids=["batch", "streaming"])
@pytest.mark.parametrize("attempt", range(2))
def test_bounded_input_with_timeout_setting_ends_by_end_of_source(tmp_path, attempt, beam_args):
    """A bounded file source with a timeout setting: every remainder ends by end_of_source,
    never by a premature timeout — whether the timer is armed at all (streaming) or not, and
    although runners fire pending processing-time timers when a bounded input ends (BEAM_NOTES)."""
    keys = ["a"] * 7 + ["b"] * 2 + ["c"] * 6
    settings = agg_settings(tmp_path, keyed_rows(keys, seed=attempt), count=3, timeout=TIMEOUT)
    _, audit = run(settings, tmp_path, beam_args=beam_args)
    triggers = sorted((b["key"], b["sequence"], b["trigger_type"], b["trigger_reason"]) for b in audit.batches.values())
    assert triggers == [
        ('["a"]', 0, "count", "count reached 3"), ('["a"]', 1, "count", "count reached 3"),
        ('["a"]', 2, "end_of_source", "end of source"),
        ('["b"]', 0, "end_of_source", "end of source"),
        ('["c"]', 0, "count", "count reached 3"), ('["c"]', 1, "count", "count reached 3"),
    ]
