"""Aggregations (DESIGN §5, §7): every flush is an audited boundary with correct lineage.

Each test runs a real pipeline (``testing.run_for_test``: FnApiRunner unless streaming) and checks the
Landscape against values the test recomputes itself: member rows, hashes, sink contents.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import random
import sqlite3
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, retarget
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from elspeth_beam import testing
from elspeth_beam.core.canonical import stable_hash
from elspeth_beam.core.chain import rows_hash as flush_hash

from elspeth_beam.inspect import explain
from elspeth_beam.landscape import schema as s
from elspeth_beam.landscape.store import LandscapeStore

TESTS_DIR = Path(__file__).resolve().parent
AGG = "aggregation:agg"
SOURCE = "source:source"


# ---- helpers ----------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def agg_settings(
    tmp_path: Path,
    rows: list[dict[str, Any]],
    *,
    plugin: str = "batch_stats",
    options: dict[str, Any] | None = None,
    group_by: tuple[str, ...] = ("k",),
    count: int | None = 3,
    timeout: float | None = None,
    output_mode: str = "single",
    on_error: str = "quarantine",
    expected_output_count: int | None = None,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """JSONL source → aggregation ``agg`` → jsonl sink ``out`` (plus csv sink ``rejects`` when on_error names it)."""
    src = write_jsonl(tmp_path / "in" / "rows.jsonl", rows)
    out_dir = out_dir or tmp_path / "out"
    trigger: dict[str, Any] = {}
    if count is not None:
        trigger["count"] = count
    if timeout is not None:
        trigger["timeout_seconds"] = timeout
    agg: dict[str, Any] = {
        "name": "agg",
        "plugin": plugin,
        "input": "raw",
        "on_success": "out",
        "on_error": on_error,
        "group_by": list(group_by),
        "trigger": trigger,
        "output_mode": output_mode,
        "options": options if options is not None else {"fields": ["v"]},
    }
    if expected_output_count is not None:
        agg["expected_output_count"] = expected_output_count
    sinks = {"out": {"plugin": "jsonl", "options": {"path": str(out_dir / "out.jsonl")}}}
    if on_error == "rejects":
        sinks["rejects"] = {"plugin": "csv", "options": {"path": str(out_dir / "rejects.csv")}}
    return {
        "source": {"plugin": "jsonl", "on_success": "raw", "options": {"path": str(src)}},
        "aggregations": [agg],
        "sinks": sinks,
    }


@dataclass
class Audit:
    """One run's Landscape, indexed for the assertions below."""

    run_id: str
    store: LandscapeStore
    batches: dict[str, dict[str, Any]]
    members: dict[str, list[str]]  # batch_id → member token ids in ordinal order
    outputs: dict[str, list[str]]  # batch_id → output token ids in ordinal order
    states: list[dict[str, Any]]
    outcomes: dict[str, list[dict[str, Any]]]  # token_id → outcomes
    tokens: dict[str, dict[str, Any]]
    parents: dict[str, list[str]]  # token_id → parent ids in ordinal order
    rows: dict[str, dict[str, Any]]  # row_id → row

    @classmethod
    def load(cls, run: testing.TestRun) -> "Audit":
        store, run_id = run.store, run.run_id
        t = lambda table: store.table_rows(table, run_id)  # noqa: E731
        members: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for m in t(s.batch_members):
            members[m["batch_id"]].append((m["ordinal"], m["token_id"]))
        outputs: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for o in t(s.batch_outputs):
            outputs[o["batch_id"]].append((o["ordinal"], o["token_id"]))
        outcomes: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for o in t(s.token_outcomes):
            outcomes[o["token_id"]].append(o)
        tokens = {tok["token_id"]: tok for tok in t(s.tokens)}
        parents: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for link in store.table_rows(s.token_parents):
            if link["token_id"] in tokens:
                parents[link["token_id"]].append((link["ordinal"], link["parent_token_id"]))
        ordered = lambda d: {k: [x for _, x in sorted(v)] for k, v in d.items()}  # noqa: E731
        for d in (members, outputs):
            for k, v in d.items():
                assert [o for o, _ in sorted(v)] == list(range(len(v))), f"ordinals of {k} are not 0..n-1"
        return cls(
            run_id=run_id,
            store=store,
            batches={b["batch_id"]: b for b in t(s.batches)},
            members=ordered(members),
            outputs=ordered(outputs),
            states=t(s.node_states),
            outcomes=dict(outcomes),
            tokens=tokens,
            parents=ordered(parents),
            rows={r["row_id"]: r for r in t(s.rows)},
        )

    # -- views --
    def flush_states(self, batch_id: str) -> list[dict[str, Any]]:
        return [st for st in self.states if st["batch_id"] == batch_id and st["node_id"] == AGG]

    def by_key(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for b in self.batches.values():
            out[b["key"]].append(b)
        return {k: sorted(v, key=lambda b: b["sequence"]) for k, v in out.items()}

    def terminal(self, token_id: str) -> list[dict[str, Any]]:
        return [o for o in self.outcomes.get(token_id, []) if o["is_terminal"]]

    def outcome_names(self, token_id: str) -> list[str]:
        return sorted(o["outcome"] for o in self.outcomes.get(token_id, []))

    def source_token(self, row_index: int) -> str:
        (row,) = [r for r in self.rows.values() if r["row_index"] == row_index]
        (tok,) = [t for t in self.tokens.values() if t["row_id"] == row["row_id"] and t["created_at_node"] == SOURCE]
        return tok["token_id"]

    def row_of_token(self, token_id: str) -> dict[str, Any]:
        return self.rows[self.tokens[token_id]["row_id"]]

    def buffered_row(self, token_id: str) -> dict[str, Any]:
        """The member's row as the aggregation received it: the checkpoint in its `buffered` outcome."""
        (buf,) = [o for o in self.outcomes[token_id] if o["outcome"] == "buffered"]
        assert not buf["is_terminal"]
        assert buf["node_id"] == AGG
        token = json.loads(buf["token_json"])
        assert token["token_id"] == token_id
        return token["row"]

    def source_payload(self, token_id: str) -> dict[str, Any]:
        return json.loads(self.row_of_token(token_id)["payload_json"])["row"]


def sink_rows_by_token(audit: Audit, sink: str, path: Path) -> dict[str, dict[str, Any]]:
    """Each line of a merged jsonl sink file, keyed by the token the Landscape says wrote it."""
    lines = path.read_text().splitlines()
    out = {}
    for n, line in enumerate(lines, start=1):
        token_id = explain.token_at_sink_line(audit.store, audit.run_id, sink, n)
        assert token_id not in out
        out[token_id] = json.loads(line)
    return out


def run(settings: dict[str, Any], tmp_path: Path, status: str = "completed", **kwargs: Any) -> tuple[testing.TestRun, Audit]:
    result = testing.run_for_test(settings, tmp_path, **kwargs)
    testing.assert_audit_complete(result)
    assert result.result.status.value == status
    return result, Audit.load(result)


def keyed_rows(keys: list[str], seed: int = 7) -> list[dict[str, Any]]:
    """Rows with ids 0..n-1 for the given key sequence; ``v`` mixes ints and floats."""
    rng = random.Random(seed)
    return [{"id": i, "k": k, "v": i if i % 2 else round(rng.uniform(0, 100), 2)} for i, k in enumerate(keys)]


def gkey(value: str) -> str:
    return json.dumps([value])


# ---- 1. the flush audit -----------------------------------------------------------------


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    keys = ["a"] * 10 + ["b"] * 7 + ["c"] * 6
    random.Random(3).shuffle(keys)
    rows = keyed_rows(keys)
    settings = agg_settings(tmp, rows, count=3)
    result, audit = run(settings, tmp)
    return result, audit, rows, Path(settings["sinks"]["out"]["options"]["path"])


def test_each_flush_is_one_audited_node_state_with_recomputed_hashes(single_run):
    result, audit, rows, out_path = single_run
    sink_rows = sink_rows_by_token(audit, "out", out_path)
    assert len(audit.batches) == 4 + 3 + 2  # a: 3+3+3+1, b: 3+3+1, c: 3+3
    assert len(sink_rows) == len(audit.batches)

    for batch_id, batch in audit.batches.items():
        assert batch["status"] == "completed", batch
        assert batch["aggregation_node_id"] == AGG
        (state,) = audit.flush_states(batch_id)
        assert state["token_id"] is None
        assert state["batch_id"] == batch_id
        assert batch["aggregation_state_id"] == state["state_id"]
        assert state["status"] == "completed"
        assert state["error_json"] is None and state["duration_ms"] is not None and state["attempt"] == 1

        members = audit.members[batch_id]
        member_rows = [audit.buffered_row(t) for t in members]
        # the members arrived unchanged (no transform), so the source payload is the same row
        assert member_rows == [audit.source_payload(t) for t in members]
        assert state["input_hash"] == flush_hash(member_rows)

        (out_token,) = audit.outputs[batch_id]
        assert state["output_hash"] == flush_hash([sink_rows[out_token]])
        # the summary row is really the stats of these members
        summary = sink_rows[out_token]
        assert summary["k"] == json.loads(batch["key"])[0]
        assert summary["batch_size"] == len(members) == summary["v_count"]
        assert summary["v_sum"] == pytest.approx(sum(r["v"] for r in member_rows))
        assert summary["v_min"] == min(r["v"] for r in member_rows)
        assert summary["v_max"] == max(r["v"] for r in member_rows)
        assert all(r["k"] == summary["k"] for r in member_rows)

    # nothing is left half-done anywhere in the run
    assert {b["status"] for b in audit.batches.values()} == {"completed"}
    assert all(st["status"] in ("completed", "failed") for st in audit.states)


def test_triggers_and_reasons_per_batch(single_run):
    _, audit, rows, _ = single_run
    per_key = audit.by_key()
    assert set(per_key) == {gkey("a"), gkey("b"), gkey("c")}
    expected_sizes = {gkey("a"): [3, 3, 3, 1], gkey("b"): [3, 3, 1], gkey("c"): [3, 3]}
    for key, batches in per_key.items():
        assert [b["sequence"] for b in batches] == list(range(len(batches)))
        assert [len(audit.members[b["batch_id"]]) for b in batches] == expected_sizes[key]
        for b in batches:
            if len(audit.members[b["batch_id"]]) == 3:
                assert (b["trigger_type"], b["trigger_reason"]) == ("count", "count reached 3")
            else:
                assert (b["trigger_type"], b["trigger_reason"]) == ("end_of_source", "end of source")
                assert b is batches[-1]
        # the key's members are exactly the key's source rows
        member_rows = {audit.row_of_token(t)["row_index"] for b in batches for t in audit.members[b["batch_id"]]}
        assert member_rows == {r["id"] for r in rows if gkey(r["k"]) == key}


def test_members_consumed_and_output_is_a_new_token_with_members_as_parents(single_run):
    _, audit, rows, _ = single_run
    all_members = [t for ms in audit.members.values() for t in ms]
    assert sorted(all_members) == sorted(audit.source_token(r["id"]) for r in rows)
    for batch_id, members in audit.members.items():
        for t in members:
            assert audit.outcome_names(t) == ["buffered", "consumed_in_batch"]
            (term,) = audit.terminal(t)
            assert term["outcome"] == "consumed_in_batch" and term["node_id"] == AGG
        (out_token,) = audit.outputs[batch_id]
        assert out_token not in members
        assert out_token not in all_members
        assert audit.parents[out_token] == members
        assert audit.tokens[out_token]["created_at_node"] == AGG
        (term,) = audit.terminal(out_token)
        assert (term["outcome"], term["node_id"], term["sink_name"]) == ("completed", "sink:out", "out")


# ---- 2. count trigger: exact batches and the remainder -------------------------------------


def batch_sizes_are_exact(audit: Audit, keys: list[str], count: int) -> None:
    """Per key: [count]*floor(n/count) by `count`, then the remainder by `end_of_source`."""
    n_per_key = Counter(keys)
    per_key = audit.by_key()
    assert set(per_key) == {gkey(k) for k in n_per_key}
    for key, n in n_per_key.items():
        batches = per_key[gkey(key)]
        full, rest = divmod(n, count)
        expected = [count] * full + ([rest] if rest else [])
        assert len(batches) == math.ceil(n / count)
        assert [len(audit.members[b["batch_id"]]) for b in batches] == expected
        assert [b["trigger_type"] for b in batches] == ["count"] * full + (["end_of_source"] if rest else [])
        assert all(b["status"] == "completed" for b in batches)
    # every source token is a member of exactly one batch and consumed exactly once
    membership = Counter(t for ms in audit.members.values() for t in ms)
    source_tokens = [t for t, tok in audit.tokens.items() if tok["created_at_node"] == SOURCE]
    assert len(source_tokens) == len(keys)
    assert sorted(membership) == sorted(source_tokens)
    assert set(membership.values()) == {1}
    for t in source_tokens:
        consumed = [o for o in audit.outcomes[t] if o["outcome"] == "consumed_in_batch"]
        assert len(consumed) == 1 and len(audit.terminal(t)) == 1


@pytest.mark.parametrize("n,count", [(10, 4), (8, 4), (3, 5), (1, 1), (7, 7)])
def test_count_trigger_exact_with_remainder_at_end_of_source(tmp_path, n, count):
    keys = ["a"] * n
    _, audit = run(agg_settings(tmp_path, keyed_rows(keys), count=count), tmp_path)
    batch_sizes_are_exact(audit, keys, count)


@hsettings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), n=st.integers(1, 60), k=st.integers(1, 4), count=st.integers(1, 7))
def test_count_trigger_property(tmp_path_factory, data, n, k, count):
    keys = data.draw(st.lists(st.sampled_from("abcd"[:k]), min_size=n, max_size=n), label="keys")
    tmp = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    _, audit = run(agg_settings(tmp, keyed_rows(keys), count=count), tmp)
    batch_sizes_are_exact(audit, keys, count)


# ---- 3. output modes and lineage -----------------------------------------------------------


@pytest.fixture
def user_plugins(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS_DIR))


def test_passthrough_keeps_token_ids_and_enriches_rows(tmp_path, user_plugins):
    keys = ["a", "b", "a", "a", "b", "a", "b", "a", "a", "b", "a"]  # a: 7, b: 4
    rows = keyed_rows(keys)
    settings = agg_settings(
        tmp_path, rows, plugin="agg_plugins_for_tests.Enrich", options={"tag": "seen"}, count=3, output_mode="passthrough"
    )
    _, audit = run(settings, tmp_path)
    batch_sizes_are_exact_passthrough = {gkey("a"): [3, 3, 1], gkey("b"): [3, 1]}
    assert {k: [len(audit.members[b["batch_id"]]) for b in v] for k, v in audit.by_key().items()} == batch_sizes_are_exact_passthrough

    sink_rows = sink_rows_by_token(audit, "out", Path(settings["sinks"]["out"]["options"]["path"]))
    source_tokens = {audit.source_token(r["id"]) for r in rows}
    assert set(sink_rows) == source_tokens  # the same tokens reached the sink
    assert all(tok["created_at_node"] == SOURCE for tok in audit.tokens.values())  # no token was minted
    assert audit.parents == {}
    for batch_id, members in audit.members.items():
        assert audit.outputs[batch_id] == members
        (state,) = audit.flush_states(batch_id)
        enriched = []
        for ordinal, t in enumerate(members):
            original = audit.source_payload(t)
            expected = {**original, "batch_size": len(members), "position": ordinal, "tag": "seen"}
            assert sink_rows[t] == expected
            enriched.append(expected)
            assert audit.outcome_names(t) == ["buffered", "completed"]
            (term,) = audit.terminal(t)
            assert (term["outcome"], term["node_id"], term["sink_name"]) == ("completed", "sink:out", "out")
        assert state["input_hash"] == flush_hash([audit.source_payload(t) for t in members])
        assert state["output_hash"] == flush_hash(enriched)
    assert not any(o["outcome"] == "consumed_in_batch" for os_ in audit.outcomes.values() for o in os_)


def test_passthrough_with_wrong_row_count_is_a_failed_flush(tmp_path, user_plugins):
    rows = keyed_rows(["a"] * 4)
    settings = agg_settings(tmp_path, rows, plugin="agg_plugins_for_tests.DropLast", options={}, count=3, output_mode="passthrough")
    _, audit = run(settings, tmp_path, status="failed")  # every row set aside: run.max_quarantined_fraction
    assert len(audit.batches) == 2
    for batch_id, batch in audit.batches.items():
        (state,) = audit.flush_states(batch_id)
        assert batch["status"] == state["status"] == "failed"
        assert batch["aggregation_state_id"] == state["state_id"]
        error = json.loads(state["error_json"])
        assert error["type"] == "BatchOutputError"
        n = len(audit.members[batch_id])
        assert error["message"] == f"passthrough needs {n} rows out (one per member), plugin returned {n - 1}"
        assert batch_id not in audit.outputs
        for t in audit.members[batch_id]:
            assert [o["outcome"] for o in audit.terminal(t)] == ["quarantined"]


DEDUPE_ROWS = [
    # key a, count 4: [t1 t1 t2 t3] → 3 out (count), [t3 t4] → 2 out (end of source)
    {"id": 0, "k": "a", "txn": "t1", "v": 1},
    {"id": 1, "k": "b", "txn": "t5", "v": 2},
    {"id": 2, "k": "a", "txn": "t1", "v": 1},
    {"id": 3, "k": "a", "txn": "t2", "v": 3},
    {"id": 4, "k": "b", "txn": "t5", "v": 2},
    {"id": 5, "k": "a", "txn": "t3", "v": 4},
    {"id": 6, "k": "b", "txn": "t5", "v": 2},
    {"id": 7, "k": "a", "txn": "t3", "v": 4},
    {"id": 8, "k": "b", "txn": "t5", "v": 2},
    {"id": 9, "k": "a", "txn": "t4", "v": 5},
    {"id": 10, "k": "b", "txn": "t6", "v": 6},
    # key b: [t5 t5 t5 t5] → 1 out (count), [t6] → 1 out (end of source)
]


def _distinct_first(rows: list[dict[str, Any]], field: str) -> list[dict[str, Any]]:
    seen, out = set(), []
    for r in rows:
        if r[field] not in seen:
            seen.add(r[field])
            out.append(r)
    return out


@pytest.fixture(scope="module")
def dedupe_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dedupe")
    settings = agg_settings(tmp, DEDUPE_ROWS, plugin="dedupe", options={"fields": ["txn"]}, count=4, output_mode="transform")
    result, audit = run(settings, tmp)
    return result, audit, Path(settings["sinks"]["out"]["options"]["path"])


def test_transform_mode_mints_new_tokens_with_all_members_as_parents(dedupe_run):
    _, audit, out_path = dedupe_run
    sink_rows = sink_rows_by_token(audit, "out", out_path)
    sizes = {k: [(len(audit.members[b["batch_id"]]), len(audit.outputs[b["batch_id"]])) for b in v] for k, v in audit.by_key().items()}
    assert sizes == {gkey("a"): [(4, 3), (2, 2)], gkey("b"): [(4, 1), (1, 1)]}
    all_members = {t for ms in audit.members.values() for t in ms}
    minted = []
    for batch_id, members in audit.members.items():
        member_rows = [audit.source_payload(t) for t in members]
        assert member_rows == [audit.buffered_row(t) for t in members]
        outs = audit.outputs[batch_id]
        assert [sink_rows[t] for t in outs] == _distinct_first(member_rows, "txn")
        (state,) = audit.flush_states(batch_id)
        assert state["input_hash"] == flush_hash(member_rows)
        assert state["output_hash"] == flush_hash([sink_rows[t] for t in outs])
        for t in outs:
            assert t not in all_members
            assert audit.parents[t] == members  # every output descends from every member
            assert audit.tokens[t]["created_at_node"] == AGG
            assert [o["outcome"] for o in audit.terminal(t)] == ["completed"]
        for t in members:
            assert audit.outcome_names(t) == ["buffered", "consumed_in_batch"]
        minted += outs
    assert len(minted) == len(set(minted)) == 7
    assert set(sink_rows) == set(minted)


def test_explain_row_of_a_dropped_duplicate_reaches_the_batch_outputs(dedupe_run):
    _, audit, _ = dedupe_run
    (first_a,) = [b for b in audit.by_key()[gkey("a")] if b["sequence"] == 0]
    e = explain.explain_row(audit.store, audit.run_id, row_index=2)  # the second "t1": dropped by dedupe
    member = audit.source_token(2)
    assert e["tokens"][0]["token_id"] == member
    assert sorted(t["token_id"] for t in e["tokens"][1:]) == sorted(audit.outputs[first_a["batch_id"]])
    assert e["tokens"][0]["outcome"]["outcome"] == "consumed_in_batch"
    assert e["tokens"][0]["batches"] == [first_a["batch_id"]]
    assert all(t["produced_by_batch"] == first_a["batch_id"] for t in e["tokens"][1:])
    assert [b["batch_id"] for b in e["batches"]] == [first_a["batch_id"]]
    assert e["batches"][0]["flush_state"]["state_id"] == first_a["aggregation_state_id"]


def test_transform_mode_expected_output_count_mismatch_fails_the_flush(tmp_path):
    settings = agg_settings(
        tmp_path, DEDUPE_ROWS, plugin="dedupe", options={"fields": ["txn"]}, count=4, output_mode="transform", expected_output_count=1
    )
    _, audit = run(settings, tmp_path)
    per_key = audit.by_key()
    # key b's batches dedupe to one row each: they complete; key a's give 3 and 2 rows: they fail
    for b, outs in zip(per_key[gkey("b")], (1, 1)):
        assert b["status"] == "completed" and len(audit.outputs[b["batch_id"]]) == outs
    for b, got in zip(per_key[gkey("a")], (3, 2)):
        (state,) = audit.flush_states(b["batch_id"])
        assert b["status"] == state["status"] == "failed"
        assert b["aggregation_state_id"] == state["state_id"]
        assert state["output_hash"] is None
        error = json.loads(state["error_json"])
        assert error["type"] == "BatchOutputError"
        assert error["message"] == f"output_mode transform expects 1 row(s) per flush, plugin returned {got}"
        assert b["batch_id"] not in audit.outputs
        for t in audit.members[b["batch_id"]]:
            (term,) = audit.terminal(t)
            assert term["outcome"] == "quarantined" and term["node_id"] == AGG
            assert json.loads(term["error_json"])["type"] == "BatchOutputError"
    assert not [t for t, tok in audit.tokens.items() if tok["created_at_node"] == AGG and not audit.terminal(t)]


def _check_explanation(audit: Audit, token_id: str) -> dict[str, Any]:
    e = explain.explain_token(audit.store, audit.run_id, token_id)
    batch_id = e["token"]["produced_by_batch"]
    members = audit.members[batch_id]
    assert [r["row_index"] for r in e["source_rows"]] == sorted(audit.row_of_token(t)["row_index"] for t in members)
    assert e["token"]["parent_ids"] == members
    (b,) = [b for b in e["batches"] if b["batch_id"] == batch_id]
    batch = audit.batches[batch_id]
    assert b["trigger_type"] == batch["trigger_type"] and b["trigger_reason"] == batch["trigger_reason"]
    assert b["trigger_type"] in ("count", "end_of_source")
    assert b["flush_state"] is not None
    assert b["flush_state"]["state_id"] == batch["aggregation_state_id"]
    assert b["flush_state"]["node_id"] == AGG and b["flush_state"]["status"] == "completed"
    assert b["flush_state"]["input_hash"] == flush_hash([audit.source_payload(t) for t in members])
    assert [m["token_id"] for m in b["members"]] == members
    assert token_id in b["outputs"]
    text = explain.render_text(e)
    assert f"trigger {batch['trigger_type']} ({batch['trigger_reason']})" in text
    return e


def test_explain_single_output_reaches_exactly_its_member_rows(single_run):
    _, audit, _, _ = single_run
    for batch_id, (out_token,) in audit.outputs.items():
        e = _check_explanation(audit, out_token)
        assert e["token"]["outcome"]["sink"] == "out"


def test_explain_transform_output_reaches_every_member_row_even_dropped_duplicates(dedupe_run):
    _, audit, _ = dedupe_run
    (first_a,) = [b for b in audit.by_key()[gkey("a")] if b["sequence"] == 0]
    outs = audit.outputs[first_a["batch_id"]]
    for t in outs:
        e = _check_explanation(audit, t)
        assert [r["row_index"] for r in e["source_rows"]] == [0, 2, 3, 5]


# ---- 4. a failing flush ---------------------------------------------------------------------


BOOM_ROWS = [{"id": i, "k": k, "v": i, "bad": i == 4} for i, k in enumerate("aaaaababba")]
# key a: ids 0 1 2 | 3 4 6 (4 is bad) | 9 (end of source);  key b: 5 7 8 (count)


@pytest.mark.parametrize("on_error", ["quarantine", "fail", "rejects"])
def test_failed_flush_is_recorded_and_members_get_one_terminal_outcome(tmp_path, user_plugins, on_error):
    settings = agg_settings(tmp_path, BOOM_ROWS, plugin="agg_plugins_for_tests.Boom", options={}, count=3, on_error=on_error)
    result, audit = run(settings, tmp_path)
    assert result.result.report.ok

    failed = [b for b in audit.batches.values() if b["status"] == "failed"]
    (bad,) = failed
    assert (bad["key"], bad["sequence"], bad["trigger_type"], bad["trigger_reason"]) == (gkey("a"), 1, "count", "count reached 3")
    (state,) = audit.flush_states(bad["batch_id"])
    assert state["status"] == "failed" and state["token_id"] is None
    assert bad["aggregation_state_id"] == state["state_id"]
    assert state["output_hash"] is None and state["duration_ms"] is not None
    members = audit.members[bad["batch_id"]]
    assert state["input_hash"] == flush_hash([audit.source_payload(t) for t in members])
    error = json.loads(state["error_json"])
    assert error["type"] == "BoomError"
    assert error["message"] == "refusing a batch with bad rows [4]"
    assert error["node_id"] == AGG
    assert bad["batch_id"] not in audit.outputs
    assert sorted(audit.row_of_token(t)["row_index"] for t in members) == [3, 4, 6]

    expected_outcome = {"quarantine": "quarantined", "fail": "failed", "rejects": "quarantined"}[on_error]
    for t in members:
        outcomes = audit.outcomes[t]
        assert sorted(o["outcome"] for o in outcomes) == ["buffered", expected_outcome]
        (term,) = audit.terminal(t)
        assert term["outcome"] == expected_outcome
        if on_error == "rejects":
            assert (term["node_id"], term["sink_name"]) == ("sink:rejects", "rejects")
        else:
            assert term["node_id"] == AGG and term["sink_name"] is None
        outcome_error = json.loads(term["error_json"])
        assert outcome_error["type"] == "BoomError" and outcome_error["message"] == error["message"]

    if on_error == "rejects":
        rejects_path = Path(settings["sinks"]["rejects"]["options"]["path"])
        with rejects_path.open(newline="") as handle:
            rejected = list(csv.DictReader(handle))
        assert sorted(int(r["id"]) for r in rejected) == [3, 4, 6]
        assert all(r["_error"] == error["message"] and r["_error_node"] == AGG for r in rejected)
        assert result.result.summary["rows_per_sink"]["rejects"] == 3

    # the run went on: every other batch completed and reached the sink
    ok = [b for b in audit.batches.values() if b["status"] == "completed"]
    assert sorted((b["key"], b["sequence"]) for b in ok) == [(gkey("a"), 0), (gkey("a"), 2), (gkey("b"), 0)]
    out_lines = [json.loads(line) for line in Path(settings["sinks"]["out"]["options"]["path"]).read_text().splitlines()]
    assert sorted((r["k"], r["n"], r["v_sum"]) for r in out_lines) == [("a", 1, 9), ("a", 3, 3), ("b", 3, 20)]


def test_resume_sends_a_failed_flushs_members_on_to_the_error_sink_they_never_reached(tmp_path, user_plugins):
    """A crash after a failed flush committed, before its members reached the error sink: the
    Landscape holds the failed batch and the members' ``buffered`` checkpoints, but no terminal
    outcome for them and no part of the sink. Resume sends each member on with the flush's
    error, exactly once, and the run verifies."""
    from elspeth_beam.inspect.verify import verify_run
    from elspeth_beam.resume import resume_run

    settings = agg_settings(tmp_path, BOOM_ROWS, plugin="agg_plugins_for_tests.Boom", options={}, count=3, on_error="rejects")
    result, _ = run(settings, tmp_path, keep_parts=True)  # the crash this stands for came before the parts went
    run_id, db = result.run_id, Path(result.result.landscape_url.removeprefix("sqlite:///"))
    rejects, out = (Path(settings["sinks"][n]["options"]["path"]) for n in ("rejects", "out"))
    out_before = out.read_text()
    result.store.dispose()

    # what the crash left: the rejects sink never wrote, and nothing after the pipeline happened
    con = sqlite3.connect(db)
    with con:
        con.execute("DELETE FROM token_outcomes WHERE node_id = 'sink:rejects'")
        con.execute("DELETE FROM node_states WHERE node_id = 'sink:rejects'")
        con.execute("DELETE FROM artifacts WHERE sink_node_id = 'sink:rejects' OR artifact_kind = 'merged'")
        con.execute("DELETE FROM audit_segments WHERE node_id = 'sink:rejects'")
        con.execute("DELETE FROM record_digests")
        con.execute("UPDATE runs SET status = 'running', completed_at = NULL, digest_root = NULL, digest_manifest = NULL")
    con.close()
    for segment in db.parent.rglob("sink-rejects-*"):  # never committed, in the crash this stands for
        segment.unlink()
    for part in rejects.parent.glob(f"{rejects.name}.parts/*/*"):
        part.unlink()
    rejects.unlink()
    store = LandscapeStore(f"sqlite:///{db}")
    assert "3 token(s) have no terminal outcome" in " ".join(verify_run(store, run_id).problems)

    resumed = resume_run(store, run_id)
    assert resumed.report.ok, resumed.report.text()
    with rejects.open(newline="") as handle:
        rejected = list(csv.DictReader(handle))
    assert sorted(int(r["id"]) for r in rejected) == [3, 4, 6]
    assert all(r["_error"] == "refusing a batch with bad rows [4]" and r["_error_node"] == AGG for r in rejected)
    assert resumed.summary["rows_per_sink"]["rejects"] == 3
    assert out.read_text() == out_before
    audit = Audit.load(testing.TestRun(resumed, store, None))
    (bad,) = [b for b in audit.batches.values() if b["status"] == "failed"]
    for t in audit.members[bad["batch_id"]]:
        (term,) = audit.terminal(t)
        assert (term["outcome"], term["node_id"]) == ("quarantined", "sink:rejects")
        assert json.loads(term["error_json"])["type"] == "BoomError"
    store.dispose()


# ---- 5. Beam bundle retries ---------------------------------------------------------------


SNAPSHOT_TABLES = ("batches", "batch_members", "batch_outputs", "node_states", "token_outcomes", "tokens", "token_parents")


@pytest.mark.parametrize("case", ["stats", "failing_flush"])
def test_bundle_repeat_leaves_the_same_landscape(tmp_path, user_plugins, case):
    if case == "stats":
        rows, kwargs = keyed_rows(["a", "b", "c"] * 9 + ["a", "b"]), {"count": 4}
    else:
        rows = BOOM_ROWS
        kwargs = {"count": 3, "plugin": "agg_plugins_for_tests.Boom", "options": {}, "on_error": "rejects"}
    out_dir = tmp_path / "out"
    snaps, journals = [], []
    for label, args in (("plain", ()), ("repeat", ("--direct_runner_bundle_repeat=3",))):
        work = tmp_path / label
        settings = agg_settings(work, rows, out_dir=out_dir, **kwargs)
        result = testing.run_for_test(  # tmp_path, not work: both runs write the same sink paths
            settings, tmp_path, run_id="run-bundle-repeat", beam_args=args, journal=True,
            landscape=testing.landscape_url(tmp_path, f"{label}.db"),
        )
        testing.assert_audit_complete(result)
        assert "FnApiRunner" in result.result.runner
        snaps.append(testing.snapshot(result.store))
        journals.append(len(result.journal.read_text().splitlines()))
    plain, repeat = snaps
    # the bundles really were replayed: the journal tap saw the audit lists again
    assert journals[1] > journals[0]
    statuses = Counter(json.loads(b)["status"] for b in plain["batches"])
    if case == "stats":
        assert statuses == {"completed": 3 + 3 + 3}  # a: 4+4+2, b: 4+4+2, c: 4+4+1
    else:
        assert statuses == {"completed": 3, "failed": 1}
    for table in SNAPSHOT_TABLES:
        assert plain[table], f"{table} is empty"
        assert repeat[table] == plain[table], f"table {table} differs after bundle replay"


# ---- chained aggregations -------------------------------------------------------------------


@pytest.mark.parametrize("beam_args", [(), ("--streaming",)], ids=["batch", "streaming"])
def test_chained_aggregation_receives_the_upstream_end_of_source_flush(tmp_path, beam_args):
    """agg (dedupe, count 3) feeds totals (batch_stats, count 4): every token agg emits —
    including its end-of-source remainder — must be accepted by totals and summed once."""
    rows = keyed_rows(["a"] * 10 + ["b"] * 5)
    settings = agg_settings(tmp_path, rows, plugin="dedupe", options={"fields": ["id"]}, count=3, output_mode="transform")
    settings["aggregations"][0]["on_success"] = "unique"
    settings["aggregations"].append(
        {"name": "totals", "plugin": "batch_stats", "input": "unique", "on_success": "out", "on_error": "quarantine",
         "group_by": ["k"], "trigger": {"count": 4}, "output_mode": "single", "options": {"fields": ["v"]}}
    )
    result = testing.run_for_test(settings, tmp_path, beam_args=beam_args)
    store, run_id = result.store, result.run_id
    batches = store.table_rows(s.batches, run_id)
    upstream_outputs = {
        o["token_id"] for o in store.table_rows(s.batch_outputs, run_id)
        if any(b["batch_id"] == o["batch_id"] and b["aggregation_node_id"] == AGG for b in batches)
    }
    totals_batches = {b["batch_id"] for b in batches if b["aggregation_node_id"] == "aggregation:totals"}
    accepted = [m["token_id"] for m in store.table_rows(s.batch_members, run_id) if m["batch_id"] in totals_batches]
    assert len(upstream_outputs) == 15
    assert sorted(accepted) == sorted(upstream_outputs), f"{len(upstream_outputs - set(accepted))} upstream output(s) never reached totals"
    out = [json.loads(line) for line in Path(settings["sinks"]["out"]["options"]["path"]).read_text().splitlines()]
    assert sorted((r["k"], r["batch_size"]) for r in out) == [("a", 2), ("a", 4), ("a", 4), ("b", 1), ("b", 4)]
    testing.assert_audit_complete(result)


# ---- 6. the accounts pipeline ---------------------------------------------------------------


def _expected_unique_charges() -> dict[str, set[str]]:
    """From the CSV itself: rows that parse, are not refunds, unique by txn_id, per account."""
    per_account: dict[str, set[str]] = defaultdict(set)
    with (REPO / "pipelines" / "data" / "transactions.csv").open(newline="") as handle:
        for rec in csv.DictReader(handle):
            try:
                amount = float(rec["amount"])
                dt.datetime.fromisoformat(rec["booked_at"])
            except ValueError:
                continue
            if amount >= 0:
                per_account[rec["account_id"]].add(rec["txn_id"])
    return per_account


@pytest.fixture(scope="module")
def accounts_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("accounts")
    raw = yaml.safe_load((REPO / "pipelines" / "accounts.yaml").read_text())
    settings = retarget(raw, tmp / "out")
    result = testing.run_for_test(settings, tmp)
    return result, settings


def test_accounts_pipeline_totals_count_each_unique_charge_once(accounts_run):
    result, settings = accounts_run
    report = testing.assert_audit_complete(result)
    assert report.ok and result.result.status.value == "completed"
    # the README's runner note: two chained aggregations, in batch, on the FnApiRunner, nothing lost
    assert result.result.runner.endswith("(FnApiRunner)"), result.result.runner
    batches = result.store.table_rows(s.batches, result.run_id)
    assert batches and {b["status"] for b in batches} == {"completed"}
    assert {b["aggregation_node_id"] for b in batches} == {"aggregation:dedupe_resent", "aggregation:account_totals"}
    assert all(b["trigger_reason"] for b in batches)

    expected = _expected_unique_charges()
    totals = [json.loads(line) for line in Path(settings["sinks"]["totals"]["options"]["path"]).read_text().splitlines()]
    assert sum(t["amount_count"] for t in totals) == sum(len(v) for v in expected.values())
    per_account = Counter()
    for t in totals:
        per_account[t["account_id"]] += t["amount_count"]
    assert dict(per_account) == {acc: len(txns) for acc, txns in expected.items()}


def test_accounts_totals_agree_on_the_bundle_based_runner(accounts_run, tmp_path):
    """Chained aggregations: the downstream end-of-source remainder is kept on both direct
    runners; batch composition may differ with arrival order (§7.7), per-account totals not."""
    result, settings = accounts_run
    other_settings = retarget(settings, tmp_path / "out")
    other = testing.run_for_test(other_settings, tmp_path, beam_args=("--runner=BundleBasedDirectRunner",))
    testing.assert_audit_complete(other)
    assert other.result.runner == "BundleBasedDirectRunner"
    assert "BundleBased" not in result.result.runner, "the default run should use the other direct runner"

    def per_account(path: str) -> dict[str, tuple[int, float]]:
        acc: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        for line in Path(path).read_text().splitlines():
            t = json.loads(line)
            acc[t["account_id"]][0] += t["amount_count"]
            acc[t["account_id"]][1] += t["amount_sum"]
        return {k: (n, round(total, 6)) for k, (n, total) in acc.items()}

    expected = _expected_unique_charges()
    mine = per_account(settings["sinks"]["totals"]["options"]["path"])
    theirs = per_account(other_settings["sinks"]["totals"]["options"]["path"])
    assert mine == theirs
    assert {k: n for k, (n, _) in mine.items()} == {acc: len(txns) for acc, txns in expected.items()}
    for run_ in (result, other):
        batches = run_.store.table_rows(s.batches, run_.run_id)
        assert {b["status"] for b in batches} == {"completed"}
        assert {b["trigger_type"] for b in batches} <= {"count", "end_of_source"}


def test_accounts_pipeline_streaming_keeps_every_unique_charge(tmp_path):
    """The same accounts file with --streaming (DirectRunner → BundleBasedDirectRunner)."""
    settings = retarget(yaml.safe_load((REPO / "pipelines" / "accounts.yaml").read_text()), tmp_path / "out")
    result = testing.run_for_test(settings, tmp_path, beam_args=("--streaming",))
    expected = _expected_unique_charges()
    per_account: Counter = Counter()
    for line in Path(settings["sinks"]["totals"]["options"]["path"]).read_text().splitlines():
        t = json.loads(line)
        per_account[t["account_id"]] += t["amount_count"]
    assert dict(per_account) == {acc: len(txns) for acc, txns in expected.items()}
    testing.assert_audit_complete(result)


def test_accounts_totals_line_explains_back_to_source_rows(accounts_run):
    result, settings = accounts_run
    store, run_id = result.store, result.run_id
    totals_path = Path(settings["sinks"]["totals"]["options"]["path"])
    lines = [json.loads(line) for line in totals_path.read_text().splitlines()]
    members = defaultdict(list)
    for m in store.table_rows(s.batch_members, run_id):
        members[m["batch_id"]].append(m["token_id"])
    produced_by = {o["token_id"]: o["batch_id"] for o in store.table_rows(s.batch_outputs, run_id)}
    tokens = {t["token_id"]: t for t in store.table_rows(s.tokens, run_id)}
    rows = {r["row_id"]: r for r in store.table_rows(s.rows, run_id)}

    # every valid charge row contributes to some totals line (walked by hand over all lines)
    covered = {
        rows[tokens[t]["row_id"]]["row_index"]
        for line_token in (o["token_id"] for o in store.table_rows(s.token_outcomes, run_id) if o["sink_name"] == "totals")
        for dedupe_out in members[produced_by[line_token]]
        for t in members[produced_by[dedupe_out]]
    }
    charges = {
        r["row_index"]
        for r in rows.values()
        if "row" in json.loads(r["payload_json"]) and json.loads(r["payload_json"])["row"]["amount"] >= 0
    }
    assert covered == charges

    # explain (which reads the Landscape on its own) agrees for the first, a middle and the last line
    for n in sorted({1, len(lines) // 2, len(lines)}):
        line = lines[n - 1]
        token_id = explain.token_at_sink_line(store, run_id, "totals", n)
        e = explain.explain_token(store, run_id, token_id)
        # expected source rows, walked by hand: totals batch → dedupe outputs → dedupe batches → rows
        totals_batch = produced_by[token_id]
        dedupe_batches = {produced_by[t] for t in members[totals_batch]}
        expected = sorted({rows[tokens[t]["row_id"]]["row_index"] for b in dedupe_batches for t in members[b]})
        got = [r["row_index"] for r in e["source_rows"]]
        assert got == expected
        assert len(got) >= line["amount_count"]
        assert {r["payload"]["row"]["account_id"] for r in e["source_rows"]} == {line["account_id"]}
        explained_batches = {b["batch_id"]: b for b in e["batches"]}
        assert set(explained_batches) >= {totals_batch, *dedupe_batches}
        for b in explained_batches.values():
            assert b["flush_state"] is not None and b["flush_state"]["status"] == "completed"
            assert b["trigger_type"] in ("count", "end_of_source")
        text = explain.render_text(e, full=True)
        assert f"from {len(expected)} source rows, row indexes " + ", ".join(map(str, expected)) in text.splitlines()
