"""Restore-then-flush: a runner checkpoint of an aggregation's BagState, simulated.

A Flink snapshot or a Dataflow drain/update stores the ``tokens`` BagState with its coder
(``AggregationDoFn.TOKENS.coder``, the deterministic ``TokenInfoCoder``) and a fresh DoFn
instance flushes what it decodes. That flush must be indistinguishable — ids, lineage,
hashes — from a flush of the original, never-encoded tokens (DESIGN §2, §5, §7.6).
A corrupt restore (rows without tokens, a token twice, another run's token, a count that
disagrees with the bag) must stop with a RestoredStateError that names the batch and says
what to do — never an IndexError deep inside the flush.
And resume restores the members of a flush that failed while they were on their way to the
error sink: a real crash there, then ``resume``, puts each in the error sink once.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from apache_beam.coders.coder_impl import create_InputStream, create_OutputStream
from apache_beam.pvalue import TaggedOutput

import records_for_tests as rec
from elspeth_beam.config.settings import AggregationSettings
from elspeth_beam.core import ids
from elspeth_beam.core.canonical import stable_hash
from elspeth_beam.core.chain import rows_hash as flush_hash

from elspeth_beam.core.enums import BatchStatus, NodeStateStatus, Outcome, TriggerType
from elspeth_beam.auditlog.records import (
    BatchOutputRecord,
    BatchRecord,
    NodeStateRecord,
    OutcomeRecord,
    TokenParentRecord,
    TokenRecord,
)
from elspeth_beam.core.tokens import TokenInfo, TokenInfoCoder
from elspeth_beam.pipeline.aggregation import AggregationDoFn, KeyState
from elspeth_beam.pipeline.audit import AUDIT_TAG, NodeContext
from elspeth_beam.pipeline.restore import RestoredStateError

from fake_state import FakeBag, FakeTimer, FakeValue
from resume_helpers import REPO, TESTS_DIR, cli, read_jsonl, sql, write_jsonl, write_yaml

RUN = "run-restore-test"
SOURCE = "source:source"
NODE = "aggregation:agg"
KEY = '["acct-7"]'
SEQ = 4
REASON = "count reached 3"
VOLATILE = {"created_at", "completed_at", "started_at", "recorded_at", "duration_ms"}

# output mode → (plugin, options)
MODES = {
    "single": ("batch_stats", {"fields": ["amount"], "stats": ["count", "sum", "min", "max"]}),
    "transform": ("dedupe", {"fields": ["txn"]}),
    "passthrough": ("resume_helpers.Passthrough", {}),
}


def settings(mode: str) -> AggregationSettings:
    plugin, options = MODES[mode]
    return AggregationSettings(
        name="agg", plugin=plugin, input="in", on_success="out", on_error="quarantine",
        group_by=["account"], trigger={"count": 3}, output_mode=mode, options=options,
    )


def member(i: int, **row: Any) -> TokenInfo:
    row_id = ids.row_id(RUN, SOURCE, i)
    return TokenInfo(run_id=RUN, row_id=row_id, token_id=ids.token_id([row_id], SOURCE, 0), row_index=i,
                     row={"account": "acct-7", **row})


def members() -> list[TokenInfo]:
    """Three tokens whose rows exercise the coder: int vs float, unicode, nulls, nesting,
    a big int; the third is a fork child (parent ids and a branch) to check lineage fields."""
    a = member(0, txn="t-1", amount=10, note="plain", tags=["x", "y"])
    b = member(1, txn="t-2", amount=2.5, note="naïve ☃ — ünïcödé", meta={"n": None, "ok": True, "deep": {"k": [1, 2.0]}})
    fork_parent = member(2, txn="t-3", amount=1.0, note=None, big=2**62 + 1)
    c = TokenInfo(run_id=RUN, row_id=fork_parent.row_id, token_id=ids.token_id([fork_parent.token_id], "gate:g", 1),
                  row_index=2, parent_ids=(fork_parent.token_id,), branch="to_batch", row=fork_parent.row)
    return [a, b, c]


def checkpoint_roundtrip(tokens: list[TokenInfo]) -> list[Any]:
    """Encode the bag as a runner's state backend does (nested, appended to one stream) with
    the state spec's own coder, then decode it element by element."""
    impl = AggregationDoFn.TOKENS.coder.get_impl()
    out = create_OutputStream()
    for t in tokens:
        impl.encode_to_stream(t, out, True)
    stream = create_InputStream(out.get())
    decoded = []
    while stream.size() > 0:
        decoded.append(impl.decode_from_stream(stream, True))
    return decoded


def fresh_dofn(mode: str) -> AggregationDoFn:
    dofn = AggregationDoFn(NodeContext(run_id=RUN, node_id=NODE, on_error="quarantine"), settings(mode))
    dofn.setup()
    dofn.start_bundle()
    return dofn


def drain(dofn: AggregationDoFn) -> list[Any]:
    """The bundle's audit events, taken the way the runner takes them: from finish_bundle."""
    events: list[Any] = []
    for out in dofn.finish_bundle():
        assert isinstance(out, TaggedOutput) and out.tag == AUDIT_TAG
        events.extend(rec.of_segment(out.value.value))  # a WindowedValue of a segment
    return events


def flush(mode: str, batch_members: list[Any]) -> tuple[list[TokenInfo], list[Any]]:
    dofn = fresh_dofn(mode)
    outputs = [o.value for o in dofn.flush_batch(KEY, SEQ, batch_members, TriggerType.COUNT, REASON)]
    return outputs, drain(dofn)


def stable(event: Any) -> dict[str, Any]:
    return {k: v for k, v in event._asdict().items() if k not in VOLATILE}


def of(events: list[Any], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


# ---- the coder itself ------------------------------------------------------------------------


def test_state_spec_uses_the_deterministic_token_coder() -> None:
    coder = AggregationDoFn.TOKENS.coder
    assert isinstance(coder, TokenInfoCoder) and coder.is_deterministic()
    for t in members():
        assert TokenInfoCoder().decode(TokenInfoCoder().encode(t)) == t
        assert type(TokenInfoCoder().decode(TokenInfoCoder().encode(t))) is TokenInfo


def test_checkpoint_roundtrip_restores_whole_tokens() -> None:
    original = members()
    restored = checkpoint_roundtrip(original)
    assert restored == original
    assert all(type(t) is TokenInfo for t in restored)
    # int stays int, float stays float, through the checkpoint
    assert type(restored[0].row["amount"]) is int and type(restored[2].row["amount"]) is float
    assert restored[2].row["big"] == 2**62 + 1
    assert restored[2].parent_ids == original[2].parent_ids and restored[2].branch == "to_batch"


# ---- restore-then-flush equals flush ----------------------------------------------------------


@pytest.mark.parametrize("mode", sorted(MODES))
def test_flush_of_restored_members_equals_flush_of_originals(mode: str) -> None:
    original = members()
    restored = checkpoint_roundtrip(original)

    out_a, events_a = flush(mode, original)
    out_b, events_b = flush(mode, restored)

    expected_batch = ids.batch_id(RUN, NODE, KEY, SEQ, 1)
    member_ids = tuple(m.token_id for m in original)

    # the same batch, moving executing → completed, with trigger and reason
    for events in (events_a, events_b):
        batches = of(events, BatchRecord)
        assert [b.batch_id for b in batches] == [expected_batch, expected_batch]
        assert [b.status for b in batches] == [BatchStatus.EXECUTING, BatchStatus.COMPLETED]
        assert all(b.trigger_type == TriggerType.COUNT and b.trigger_reason == REASON for b in batches)
        assert all(b.attempt == 1 and b.retry_of_batch_id is None and b.sequence == SEQ for b in batches)
        (state,) = of(events, NodeStateRecord)
        assert state.status == NodeStateStatus.COMPLETED and state.batch_id == expected_batch
        assert state.state_id == ids.state_id(expected_batch, NODE, 1) == batches[-1].aggregation_state_id
        # a flush's input hash: the members' rows in ordinal order (DESIGN §3), recomputed here
        assert state.input_hash == flush_hash([m.row for m in original])
        assert state.output_hash == flush_hash([o.row for o in (out_a if events is events_a else out_b)])

    # identical outputs and identical audit (modulo timestamps and durations)
    assert out_a == out_b
    assert [stable(e) for e in events_a] == [stable(e) for e in events_b]

    # lineage, checked against the members themselves
    outputs = of(events_b, BatchOutputRecord)
    assert [o.token_id for o in outputs] == [t.token_id for t in out_b]
    assert [o.ordinal for o in outputs] == list(range(len(out_b)))
    assert all(o.batch_id == expected_batch for o in outputs)
    assert [TokenInfo.from_json_bytes(o.token_json.encode()) for o in outputs] == out_b
    created = of(events_b, TokenRecord)
    consumed = [e for e in of(events_b, OutcomeRecord) if e.outcome == Outcome.CONSUMED_IN_BATCH]
    if mode == "passthrough":
        assert [t.token_id for t in out_b] == list(member_ids)  # same tokens continue
        assert [t.parent_ids for t in out_b] == [m.parent_ids for m in original]
        assert [t.branch for t in out_b] == [m.branch for m in original]
        assert created == [] and consumed == []
    else:
        assert out_b and all(t.parent_ids == member_ids for t in out_b)
        assert [c.token_id for c in created] == [t.token_id for t in out_b]
        links = of(events_b, TokenParentRecord)
        for c in created:
            assert tuple(p.parent_token_id for p in sorted((p for p in links if p.token_id == c.token_id),
                                                           key=lambda p: p.ordinal)) == member_ids
        assert not set(member_ids) & {t.token_id for t in out_b}  # new tokens, never a member's
        assert sorted(c.token_id for c in consumed) == sorted(member_ids)
    if mode == "single":
        assert len(out_b) == 1
        assert out_b[0].row["amount_count"] == 3 and out_b[0].row["amount_sum"] == 13.5
    if mode == "transform":
        assert [t.row["txn"] for t in out_b] == ["t-1", "t-2", "t-3"]


# ---- corrupt restores -------------------------------------------------------------------------


def _corrupt(kind: str) -> tuple[list[Any], str]:
    a, b, c = checkpoint_roundtrip(members())
    if kind == "plain dict":
        return [a, dict(b.row), c], "member 1 is a dict, not a TokenInfo"
    if kind == "duplicated token":
        return [a, b, a], f"member 2 repeats token {a.token_id}"
    if kind == "other run":
        return [a, b.replace(run_id="run-elsewhere"), c], "belongs to run run-elsewhere"
    raise AssertionError(kind)


@pytest.mark.parametrize("mode", ["single", "passthrough"])
@pytest.mark.parametrize("kind", ["plain dict", "duplicated token", "other run"])
def test_corrupt_restored_members_are_refused_clearly(kind: str, mode: str) -> None:
    bad, detail = _corrupt(kind)
    dofn = fresh_dofn(mode)
    batch = ids.batch_id(RUN, NODE, KEY, SEQ, 1)
    with pytest.raises(RestoredStateError) as info:  # not IndexError / AttributeError / KeyError
        list(dofn.flush_batch(KEY, SEQ, bad, TriggerType.COUNT, REASON))
    message = str(info.value)
    assert batch in message
    assert detail in message
    assert "elspeth-beam resume" in message  # says what to do
    assert len(dofn._audit) == 0  # nothing recorded for a flush that never ran


# ---- _flush with fake state -------------------------------------------------------------------


def key_state(bag: list[Any], count: int, seq: int = SEQ) -> KeyState:
    return KeyState(KEY, FakeBag(bag), FakeValue((seq, count)), FakeValue(), FakeTimer())


@pytest.mark.parametrize("bag_size,count", [(3, 5), (3, 2), (0, 2)])
def test_flush_with_count_disagreeing_with_bag_is_refused(bag_size: int, count: int) -> None:
    dofn = fresh_dofn("single")
    state = key_state(checkpoint_roundtrip(members())[:bag_size], count)
    with pytest.raises(RestoredStateError) as info:
        list(dofn._flush(state, TriggerType.END_OF_SOURCE, "end of source"))
    message = str(info.value)
    assert ids.batch_id(RUN, NODE, KEY, SEQ, 1) in message
    assert f"says {count} member(s)" in message and f"holds {bag_size}" in message
    assert "elspeth-beam resume" in message
    assert len(dofn._audit) == 0


def test_flush_of_restored_rows_without_tokens_is_refused() -> None:
    """The seed bug: a restore that kept rows (dicts) but lost tokens."""
    dofn = fresh_dofn("single")
    rows = [dict(m.row) for m in members()]
    state = key_state(rows, len(rows))
    with pytest.raises(RestoredStateError) as info:
        list(dofn._flush(state, TriggerType.END_OF_SOURCE, "end of source"))
    assert ids.batch_id(RUN, NODE, KEY, SEQ, 1) in str(info.value)
    assert "not a TokenInfo" in str(info.value)


def test_flush_through_fake_state_equals_direct_flush_and_advances_sequence() -> None:
    restored = checkpoint_roundtrip(members())
    dofn = fresh_dofn("single")
    state = key_state(restored, len(restored))
    outputs = [o.value for o in dofn._flush(state, TriggerType.COUNT, REASON)]
    events = drain(dofn)
    direct_out, direct_events = flush("single", members())
    assert outputs == direct_out
    assert [stable(e) for e in events] == [stable(e) for e in direct_events]
    assert state.tokens.items == [] and state.position.value == (SEQ + 1, 0)


def test_empty_state_flushes_nothing() -> None:
    dofn = fresh_dofn("single")
    state = key_state([], 0)
    assert list(dofn._flush(state, TriggerType.END_OF_SOURCE, "end of source")) == []
    assert len(dofn._audit) == 0 and state.position.value == (SEQ, 0)


# ---- resume re-diverts a failed flush's members (README "Crash and resume") ---------------------

# the first rejects part waits until the failed flush is committed, then the process dies (a real
# crash: os._exit, nothing flushed): the members are on their way to the error sink, never there
_KILL_BEFORE_REJECTS = """
import os, sqlite3, sys, time
import elspeth_beam.auditlog.buffer as buffer
from elspeth_beam.pipeline import sink
buffer.SEGMENT_RECORDS = 1  # audit leaves each node at once, so the flush commits first
db, real_write = sys.argv[1], sink.SinkDoFn._write_part

def write_part(self, items):
    if self.sink_name != "rejects":
        return real_write(self, items)
    for _ in range(600):
        with sqlite3.connect(db) as con:
            if con.execute("SELECT COUNT(*) FROM batches WHERE status = 'failed'").fetchone()[0]:
                os._exit(137)
        time.sleep(0.05)
    sys.stderr.write("the failed flush never committed\\n")
    os._exit(3)

sink.SinkDoFn._write_part = write_part
from elspeth_beam.cli import main
sys.exit(main(sys.argv[2:]))
"""

BOOM_ROWS = [{"id": i, "k": k, "v": i, "bad": i == 4} for i, k in enumerate("aaaaababba")]
# key a: ids 0 1 2 | 3 4 6 (4 is bad: Boom refuses the batch) | 9 (end of source);  key b: 5 7 8
BOOM_MESSAGE = "refusing a batch with bad rows [4]"


def _python(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ELSPETH_FAULT"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), str(TESTS_DIR), env.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, *args], cwd=tempfile.gettempdir(), env=env, capture_output=True, text=True,
                          timeout=300)


def test_resume_sends_a_failed_flushs_stranded_members_to_the_error_sink_exactly_once(tmp_path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", BOOM_ROWS)
    out, db = tmp_path / "out", tmp_path / "landscape.db"
    settings = write_yaml(tmp_path / "pipeline.yaml", {
        "source": {"plugin": "jsonl", "on_success": "raw", "options": {"path": str(source)}},
        "aggregations": [{"name": "agg", "plugin": "agg_plugins_for_tests.Boom", "input": "raw", "on_success": "out",
                          "on_error": "rejects", "group_by": ["k"], "trigger": {"count": 3}, "output_mode": "single",
                          "options": {}}],
        "sinks": {"out": {"plugin": "jsonl", "options": {"path": str(out / "out.jsonl")}},
                  "rejects": {"plugin": "csv", "options": {"path": str(out / "rejects.csv")}}},
    })
    crash = _python("-c", _KILL_BEFORE_REJECTS, str(db), "run", str(settings), "--landscape-url", f"sqlite:///{db}",
                    "--run-id", "rid")
    assert crash.returncode == 137, crash.stderr

    # what the crash left: the failed flush with its error, its members buffered but ended nowhere
    ((bad_batch, state_id),) = sql(db, "SELECT batch_id, aggregation_state_id FROM batches WHERE status = 'failed'")
    ((error_json,),) = sql(db, "SELECT error_json FROM node_states WHERE state_id = ?", state_id)
    assert json.loads(error_json)["message"] == BOOM_MESSAGE
    members = [t for (t,) in sql(db, "SELECT token_id FROM batch_members WHERE batch_id = ? ORDER BY ordinal", bad_batch)]
    assert len(members) == 3
    marks = ",".join("?" * len(members))
    assert sql(db, f"SELECT COUNT(*) FROM token_outcomes WHERE is_terminal AND token_id IN ({marks})", *members) == [(0,)]
    assert sql(db, "SELECT COUNT(*) FROM artifacts WHERE sink_node_id = 'sink:rejects'") == [(0,)]

    resume = cli("resume", "rid", "--landscape-url", f"sqlite:///{db}")
    assert resume.code == 0, resume
    assert "verify     OK" in resume.stdout, resume

    with (out / "rejects.csv").open(newline="") as handle:
        rejected = list(csv.DictReader(handle))
    assert sorted(int(r["id"]) for r in rejected) == [3, 4, 6]  # each member once, no other row
    assert all((r["_error"], r["_error_node"]) == (BOOM_MESSAGE, "aggregation:agg") for r in rejected)
    for token_id in members:
        ((outcome, node, sink_name, outcome_error),) = sql(
            db, "SELECT outcome, node_id, sink_name, error_json FROM token_outcomes WHERE token_id = ? AND is_terminal",
            token_id)
        assert (outcome, node, sink_name) == ("quarantined", "sink:rejects", "rejects")
        assert json.loads(outcome_error) == json.loads(error_json)  # the flush's own error
    totals = sorted((r["k"], r["n"], r["v_sum"]) for r in read_jsonl(out / "out.jsonl"))
    assert totals == [("a", 1, 9), ("a", 3, 3), ("b", 3, 20)]  # the other batches, once each
