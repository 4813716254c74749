"""Audit elements between stages: typed streams, a cheap size estimate, a faithful coder."""

from __future__ import annotations

import apache_beam as beam
import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners import pipeline_context
from conftest import QUICKSTART, retarget
from hypothesis import given, settings
from hypothesis import strategies as st

from elspeth_beam.config.loader import load_settings_dict
from elspeth_beam.core.enums import NodeStateStatus, Outcome
import records_for_tests as rec
from elspeth_beam.auditlog.buffer import AuditBuffer, AuditSegment
from elspeth_beam.pipeline.audit_sink import AuditSegmentCoder
from elspeth_beam.core.tokens import TokenInfoCoder
from elspeth_beam.pipeline.builder import apply_graph

text = st.text(max_size=30)
maybe = st.none() | text

node_states = st.builds(
    rec.node_state, run_id=text, state_id=text, node_id=text, token_id=maybe, attempt=st.integers(1, 9),
    status=st.sampled_from(list(NodeStateStatus)), input_hash=maybe, output_hash=maybe,
    duration_ms=st.none() | st.floats(allow_nan=False), error_json=maybe, started_at=text, completed_at=maybe,
)
tokens = st.builds(rec.token, run_id=text, token_id=text, row_id=text, created_at_node=text,
                   parent_ids=st.lists(text, max_size=3).map(tuple))
outcomes = st.builds(rec.outcome, run_id=text, outcome_id=text, token_id=text,
                     outcome=st.sampled_from(list(Outcome)), node_id=text, sink_name=maybe, artifact_row=st.none() | st.integers())
events = st.lists(node_states | tokens | outcomes, max_size=20)


@given(events)
@settings(max_examples=100, deadline=None)
def test_audit_segment_coder_round_trips_every_field(batch):
    buffer = AuditBuffer()
    for record in rec.flat(batch):
        buffer.add(record)
    segment = buffer.take("run-c", "node:n")
    coder = AuditSegmentCoder()
    decoded = coder.decode(coder.encode(segment))
    assert type(decoded) is AuditSegment
    assert decoded == segment
    assert sorted(map(repr, rec.of_segment(decoded))) == sorted(map(repr, rec.flat(batch)))


def test_size_estimate_does_not_encode():
    class Unpicklable:
        def __reduce__(self):
            raise AssertionError("estimate_size encoded the element")

    segment = AuditSegment("run-c", "node:n", {"rows": [(Unpicklable(), Unpicklable())]})
    assert AuditSegmentCoder().estimate_size(segment) > 0


def test_audit_streams_and_token_streams_have_their_own_coders(tmp_path):
    """Beam samples the encoded size of early elements: with the default coder every audit
    list was pickled just to be measured. Token streams use the deterministic token coder."""
    loaded = load_settings_dict(retarget(yaml.safe_load(QUICKSTART.read_text()), tmp_path / "out")
                                | {"landscape": {"url": f"sqlite:///{tmp_path}/l.db"}})
    pipeline = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
    apply_graph(pipeline, loaded, "run-coders")
    proto = pipeline.to_runner_api()
    context = pipeline_context.PipelineContext(proto.components)
    coders = {pc.unique_name: context.coders.get_by_id(pc.coder_id) for pc in proto.components.pcollections.values()}
    audit = {name: c for name, c in coders.items() if name.endswith(".audit")}
    streams = {name: c for name, c in coders.items() if ".out:" in name}
    assert len(audit) == len(loaded.graph.nodes)
    assert all(isinstance(c, AuditSegmentCoder) for c in audit.values()), audit
    assert streams and all(isinstance(c, TokenInfoCoder) for c in streams.values()), streams


@given(st.integers(min_value=0, max_value=4_102_444_800 * 10**6))
@settings(max_examples=200, deadline=None)
def test_utc_now_matches_datetime_isoformat(micros):
    import datetime as dt
    from unittest import mock

    from elspeth_beam.core import timestamps as events

    expected = (dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=micros)).isoformat(
        timespec="microseconds")
    with mock.patch.object(events.time, "time_ns", return_value=micros * 1000 + 999):
        assert events.utc_now() == expected
        assert events.utc_now() == expected  # the cached second gives the same text


def test_positional_records_are_the_keyword_ones_and_refuse_another_column_order():
    """The executor builds its per-row records by position: each value lands in its column."""
    from elspeth_beam.auditlog.records import NodeStateRecord, OutcomeRecord, TokenParentRecord, TokenRecord, positional
    from elspeth_beam.core.tokens import TokenInfo
    from elspeth_beam.pipeline.audit import AuditedDoFn, NodeContext

    fn = AuditedDoFn(NodeContext("run-1", "transform:fx", "quarantine"))
    token = TokenInfo(run_id="run-1", row_id="row_1", token_id="tok_1", row_index=0, parent_ids=("tok_0",),
                      branch="b", row={"a": 1})
    ok = fn.execute(token_id="tok_1", input_hash="in", work=lambda: 5, output_hash=lambda out: f"out{out}")
    failed = fn.execute(token_id="tok_1", attempt=2, input_hash="in", work=lambda: 1 / 0, output_hash=str)
    fn.record_token(token)
    fn.record_outcome(token, Outcome.BUFFERED, token_json="{}")
    tables = fn._take_audit().tables
    states = list(zip(*tables["node_states"]))
    timing = lambda r: r._replace(duration_ms=None, started_at=None, completed_at=None)  # noqa: E731
    assert [timing(NodeStateRecord(*r)) for r in states] == [
        NodeStateRecord(state_id=ok.state_id, run_id="run-1", token_id="tok_1", batch_id=None, node_id="transform:fx",
                        attempt=1, status="completed", input_hash="in", output_hash="out5", duration_ms=None,
                        error_json=None, started_at=None, completed_at=None),
        NodeStateRecord(state_id=failed.state_id, run_id="run-1", token_id="tok_1", batch_id=None,
                        node_id="transform:fx", attempt=2, status="failed", input_hash="in", output_hash=None,
                        duration_ms=None, error_json=states[1][10], started_at=None, completed_at=None),
    ]
    assert '"ZeroDivisionError"' in states[1][10] and all(type(r[9]) is float and r[11] <= r[12] for r in states)
    [made] = list(zip(*tables["tokens"]))
    assert TokenRecord(*made)._replace(created_at=None) == TokenRecord(
        token_id="tok_1", run_id="run-1", row_id="row_1", branch_name="b", created_at_node="transform:fx", created_at=None)
    assert list(zip(*tables["token_parents"])) == [TokenParentRecord(token_id="tok_1", parent_token_id="tok_0", ordinal=0)]
    [outcome] = list(zip(*tables["token_outcomes"]))
    assert OutcomeRecord(*outcome)._replace(recorded_at=None, outcome_id=None) == OutcomeRecord(
        run_id="run-1", token_id="tok_1", outcome="buffered", is_terminal=False, node_id="transform:fx", token_json="{}")
    with pytest.raises(TypeError, match="token_id parent_token_id ordinal"):
        positional(TokenParentRecord, "parent_token_id token_id ordinal")
