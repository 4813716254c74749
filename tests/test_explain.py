"""explain: the Landscape alone tells each row's story — path, routing, forks, errors, hashes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import text
from conftest import QUICKSTART, REPO, retarget

from elspeth_beam import testing
from elspeth_beam.core.canonical import stable_hash
from elspeth_beam.inspect import explain
from elspeth_beam.landscape import schema as s

ORDERS = REPO / "pipelines" / "data" / "orders.csv"
STANDARD_PATH = ["source:source", "transform:tidy", "transform:pricing", "gate:size", "transform:label_region", "sink:standard"]


@pytest.fixture(scope="module")
def qs(tmp_path_factory):
    """One quickstart run shared by this module's read-only tests."""
    tmp = tmp_path_factory.mktemp("explain")
    settings = retarget(yaml.safe_load(QUICKSTART.read_text()), tmp / "out")
    run = testing.run_for_test(settings, tmp)
    testing.assert_audit_complete(run)
    return run, settings, tmp


def _raw_line(row_index: int) -> str:
    return ORDERS.read_text().splitlines()[row_index + 1]  # +1: the header


def _nodes(token: dict) -> list[str]:
    return [st["node_id"] for st in token["states"]]


def test_routed_then_completed_row(qs):
    run, settings, _ = qs
    e = explain.explain_row(run.store, run.run_id, row_index=3)
    assert e["row"]["row_index"] == 3
    assert e["row"]["payload"]["row"]["order_id"] == 10003
    assert len(e["tokens"]) == 1
    tok = e["tokens"][0]
    assert tok["parent_ids"] == [] and tok["branch"] is None
    assert _nodes(tok) == STANDARD_PATH
    assert all(st["status"] == "completed" and st["error"] is None for st in tok["states"])
    gate = tok["states"][3]
    assert gate["routing"] == [{"route": "false", "destination": "regular", "mode": "move"}]
    assert all(st["routing"] == [] for i, st in enumerate(tok["states"]) if i != 3)
    assert tok["outcome"]["outcome"] == "completed"
    assert tok["outcome"]["sink"] == "standard"
    assert tok["outcome"]["node_id"] == "sink:standard"
    assert tok["outcome"]["error"] is None
    assert e["batches"] == []

    text = explain.render_text(e)
    assert "route 'false' → regular (move)" in text
    assert "outcome: COMPLETED → sink standard" in text
    for node in STANDARD_PATH:
        assert node in text


def test_hashes_chain_through_the_transforms(qs):
    run, _, _ = qs
    e = explain.explain_row(run.store, run.run_id, row_index=3)
    states = {st["node_id"]: st for st in e["tokens"][0]["states"]}
    src, tidy, pricing, gate, label, sink = (states[n] for n in STANDARD_PATH)

    # the source hashed exactly the raw line it read; it is also the row's source_data_hash
    assert src["input_hash"] == stable_hash(_raw_line(3)) == e["row"]["source_data_hash"]
    # recompute hashes from the recorded payload, independently of the pipeline
    payload = e["row"]["payload"]["row"]
    assert src["output_hash"] == stable_hash(payload)
    tidied = {("price" if k == "unit_price" else k): v for k, v in payload.items()}
    assert tidy["output_hash"] == stable_hash(tidied)
    priced = {
        **tidied,
        "total": round(tidied["quantity"] * tidied["price"] - tidied["discount"], 2),
        "discount_per_item": round(tidied["discount"] / tidied["quantity"], 2),
    }
    assert pricing["output_hash"] == stable_hash(priced)
    labelled = {**priced, "region_code": priced["region"][:1].upper()}
    assert label["output_hash"] == stable_hash(labelled)

    # each state's input is the previous row-changing state's output (a gate does not change the row)
    assert tidy["input_hash"] == src["output_hash"]
    assert pricing["input_hash"] == tidy["output_hash"]
    assert gate["input_hash"] == pricing["output_hash"]
    assert label["input_hash"] == pricing["output_hash"]
    assert sink["input_hash"] == label["output_hash"]
    # the sink state's output is the part file it wrote
    part = next(a for a in run.store.table_rows(s.artifacts, run.run_id) if a["artifact_id"] == e["tokens"][0]["outcome"]["artifact_id"])
    assert part["artifact_kind"] == "part" and sink["output_hash"] == part["content_hash"]
    assert len({src["output_hash"], tidy["output_hash"], pricing["output_hash"], label["output_hash"]}) == 4


def test_forked_row_has_parent_and_two_routed_children(qs):
    run, _, _ = qs
    e = explain.explain_row(run.store, run.run_id, row_index=9)
    payload = e["row"]["payload"]["row"]
    assert round(payload["quantity"] * payload["unit_price"] - payload["discount"], 2) >= 1000  # a large order
    assert len(e["tokens"]) == 3
    parent = e["tokens"][0]
    children = e["tokens"][1:]
    assert parent["parent_ids"] == []
    assert _nodes(parent) == ["source:source", "transform:tidy", "transform:pricing", "gate:size"]
    assert parent["outcome"]["outcome"] == "forked"
    assert parent["outcome"]["node_id"] == "gate:size"
    assert parent["outcome"]["sink"] is None
    assert parent["states"][-1]["routing"] == [
        {"route": "true", "destination": "large", "mode": "copy"},
        {"route": "true", "destination": "review", "mode": "copy"},
    ]
    assert sorted(c["branch"] for c in children) == ["large", "review"]
    for child in children:
        assert child["parent_ids"] == [parent["token_id"]]
        assert child["row_id"] == parent["row_id"]
        assert child["created_at_node"] == "gate:size"
        assert _nodes(child) == [f"sink:{child['branch']}"]
        assert child["states"][0]["status"] == "completed"
        # a child carries the gate's input row unchanged to its sink
        assert child["states"][0]["input_hash"] == parent["states"][-1]["input_hash"]
        assert child["outcome"]["outcome"] == "routed"
        assert child["outcome"]["sink"] == child["branch"]

    # explain of a child token reaches back to the parent and the one source row
    child = explain.explain_token(run.store, run.run_id, children[0]["token_id"])
    assert [a["token_id"] for a in child["ancestors"]] == [parent["token_id"]]
    assert [r["row_index"] for r in child["source_rows"]] == [9]
    text = explain.render_text(child)
    assert "outcome: ROUTED" in text
    assert f"from source row index 9 (row_id {child['source_rows'][0]['row_id']})" in text.splitlines()


@pytest.mark.parametrize(
    "row_index,failed_node,message,completed_before",
    [
        (17, "source:source", "cannot coerce 'nan' to float", []),
        (64, "source:source", "malformed CSV line: expected 8 fields, got 9", []),
        (150, "transform:pricing", "division by zero", ["source:source", "transform:tidy"]),
    ],
)
def test_quarantined_rows_show_the_failure(qs, row_index, failed_node, message, completed_before):
    run, settings, _ = qs
    e = explain.explain_row(run.store, run.run_id, row_index=row_index)
    assert len(e["tokens"]) == 1
    tok = e["tokens"][0]
    assert _nodes(tok) == [*completed_before, failed_node, "sink:rejects"]
    for st in tok["states"][: len(completed_before)]:
        assert st["status"] == "completed"
    failed = tok["states"][len(completed_before)]
    assert failed["status"] == "failed"
    assert failed["output_hash"] is None
    assert message in failed["error"]["message"]
    assert failed["error"]["node_id"] == failed_node
    assert tok["states"][-1]["status"] == "completed"  # durably written to the rejects sink
    assert tok["outcome"]["outcome"] == "quarantined"
    assert tok["outcome"]["sink"] == "rejects"
    assert message in tok["outcome"]["error"]["message"]
    if failed_node == "source:source":
        # an unparsable record keeps its raw text as the payload
        assert e["row"]["payload"] == {"raw": _raw_line(row_index)}
    text = explain.render_text(e)
    assert "QUARANTINED → sink rejects" in text
    assert message in text

    # the rejects file holds the reason at the line the Landscape points to
    rejects = list(csv.DictReader(open(settings["sinks"]["rejects"]["options"]["path"], newline="")))
    line = next(n for n in range(1, len(rejects) + 1) if explain.token_at_sink_line(run.store, run.run_id, "rejects", n) == tok["token_id"])
    assert message in rejects[line - 1]["_error"]
    assert rejects[line - 1]["_error_node"] == failed_node


def _source_order_id(store, run_id: str, token_id: str) -> int:
    tok = explain.explain_token(store, run_id, token_id)
    (row,) = tok["source_rows"]
    return row["payload"]["row"]["order_id"]


def test_token_at_sink_line_maps_back_to_the_source_row(qs):
    run, settings, _ = qs
    standard = list(csv.DictReader(open(settings["sinks"]["standard"]["options"]["path"], newline="")))
    assert len(standard) == 230
    for n in (1, 2, 77, 229, 230):
        tid = explain.token_at_sink_line(run.store, run.run_id, "standard", n)
        assert _source_order_id(run.store, run.run_id, tid) == int(standard[n - 1]["order_id"]), f"line {n}"

    large = [json.loads(line) for line in Path(settings["sinks"]["large"]["options"]["path"]).read_text().splitlines()]
    for n in (1, len(large)):
        tid = explain.token_at_sink_line(run.store, run.run_id, "large", n)
        assert _source_order_id(run.store, run.run_id, tid) == large[n - 1]["order_id"]

    with pytest.raises(explain.ExplainTargetNotFound, match=r"line 231 is out of range \(1\.\.230\)"):
        explain.token_at_sink_line(run.store, run.run_id, "standard", 231)
    with pytest.raises(explain.ExplainTargetNotFound):
        explain.token_at_sink_line(run.store, run.run_id, "nosuchsink", 1)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "elspeth_beam.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_cli_explain_json_and_missing_row(qs):
    run, _, tmp = qs
    db = str(tmp / "landscape.db")
    ok = _cli("explain", run.run_id, "-l", db, "--row", "3", "--json")
    assert ok.returncode == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert data["run_id"] == run.run_id
    assert data["row"]["row_index"] == 3
    assert data == json.loads(json.dumps(explain.explain_row(run.store, run.run_id, row_index=3)))
    assert _cli("explain", "-l", db, "--row", "3", "--json").stdout == ok.stdout  # the latest run by default

    missing = _cli("explain", run.run_id, "-l", db, "--row", "4000")
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr
    assert "has no row with index 4000" in missing.stderr
    assert missing.stdout == ""


@pytest.mark.parametrize("old", [["{db}", "--row", "3"], ["{db}", "--run", "{run}", "--row", "3"]], ids=["landscape", "with-run"])
def test_the_old_explain_form_is_refused_with_the_new_one(qs, old):
    """``explain LANDSCAPE --row 3`` was the form before explain took the run like the others:
    a path where the run id goes is refused with the new form, not looked up as a run id."""
    run, _, tmp = qs
    db = str(tmp / "landscape.db")
    proc = _cli("explain", *(a.format(db=db, run=run.run_id) for a in old))
    assert (proc.returncode, proc.stdout) == (2, "")
    (line,) = proc.stderr.splitlines()
    if "--run" in old:
        assert line == f"elspeth-beam: error: explain takes the run like the other commands: elspeth-beam explain {run.run_id} [-l LANDSCAPE] --row N"
    else:
        assert line == f"elspeth-beam: error: {db!r} is a Landscape, not a run id; name the Landscape with -l: elspeth-beam explain [RUN_ID] -l {db} …"


# ---- an aggregated output: every member row and the flush --------------------------------

ROLLUP = "aggregation:rollup"


@pytest.fixture(scope="module")
def rolled_up(tmp_path_factory):
    """11 rows, keys a/b alternating, ``v = 2**id``, summed per key in batches of 3: a totals
    line's ``v_sum`` spells out, bit by bit, exactly which rows it summed."""
    tmp = tmp_path_factory.mktemp("explain-agg")
    source = tmp / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "k": "ab"[i % 2], "v": 2**i}) + "\n" for i in range(11)))
    settings = {
        "source": {"plugin": "jsonl", "on_success": "raw", "options": {"path": str(source)}},
        "aggregations": [{"name": "rollup", "plugin": "batch_stats", "input": "raw", "on_success": "totals",
                          "on_error": "quarantine", "group_by": ["k"], "trigger": {"count": 3},
                          "output_mode": "single", "options": {"fields": ["v"], "stats": ["count", "sum"]}}],
        "sinks": {"totals": {"plugin": "jsonl", "options": {"path": str(tmp / "out" / "totals.jsonl")}}},
    }
    run = testing.run_for_test(settings, tmp)
    testing.assert_audit_complete(run)
    lines = [json.loads(line) for line in (tmp / "out" / "totals.jsonl").read_text().splitlines()]
    return run, lines


def test_an_aggregated_sink_line_names_every_member_row_and_the_flush(rolled_up):
    run, lines = rolled_up
    assert len(lines) == 4  # a: 0 2 4 | 6 8 10, b: 1 3 5 | 7 9
    with run.store.engine.connect() as conn:  # plain SQL, independent of explain
        flush_of = dict(conn.execute(text("SELECT batch_id, aggregation_state_id FROM batches")).all())
        ordinal_order: dict[str, list[int]] = {}
        for batch_id, row_index in conn.execute(text(
            "SELECT m.batch_id, r.row_index FROM batch_members m JOIN tokens t ON t.token_id = m.token_id "
            "JOIN rows r ON r.row_id = t.row_id ORDER BY m.batch_id, m.ordinal")):
            ordinal_order.setdefault(batch_id, []).append(row_index)

    for n, line in enumerate(lines, start=1):
        summed = sorted(i for i in range(11) if line["v_sum"] >> i & 1)  # the rows this line is made of
        assert len(summed) == line["v_count"] and {"ab"[i % 2] for i in summed} == {line["k"]}
        e = explain.explain_token(run.store, run.run_id, explain.token_at_sink_line(run.store, run.run_id, "totals", n))
        assert [r["row_index"] for r in e["source_rows"]] == summed
        batch_id = e["token"]["produced_by_batch"]
        (b,) = [b for b in e["batches"] if b["batch_id"] == batch_id]
        assert b["node_id"] == ROLLUP and b["status"] == "completed"
        assert sorted(m["row_index"] for m in b["members"]) == summed, f"line {n}: every member row, no other"
        assert [m["ordinal"] for m in b["members"]] == list(range(len(summed)))
        assert [m["row_index"] for m in b["members"]] == ordinal_order[batch_id]
        assert [m["token_id"] for m in b["members"]] == e["token"]["parent_ids"]
        flush = b["flush_state"]
        assert flush is not None and flush["state_id"] == flush_of[batch_id]
        assert (flush["node_id"], flush["status"], flush["error"]) == (ROLLUP, "completed", None)
        assert b["trigger_type"] == ("count" if len(summed) == 3 else "end_of_source")

        rendered = explain.render_text(e)
        listed = ", ".join(f"#{i} row {r}" for i, r in enumerate(ordinal_order[batch_id]))
        assert f"    members ({len(summed)}): {listed}" in rendered.splitlines()
        assert any(ln.startswith(f"    flush {ROLLUP}") and " completed " in ln for ln in rendered.splitlines()), text
        assert f"from {len(summed)} source rows, row indexes " + ", ".join(map(str, summed)) in rendered.splitlines()


# ---- a line of the accounts pipeline's totals: summarised by default, everything with --full ------

@pytest.fixture(scope="module")
def accounts(tmp_path_factory):
    """An accounts run (dedupe in transform mode, then totals per account): a totals line
    descends from a batch of dedupe outputs, each of which has every member of its batch as a parent."""
    tmp = tmp_path_factory.mktemp("explain-accounts")
    settings = retarget(yaml.safe_load((REPO / "pipelines" / "accounts.yaml").read_text()), tmp / "out")
    run = testing.run_for_test(settings, tmp)
    testing.assert_audit_complete(run)
    token = explain.token_at_sink_line(run.store, run.run_id, "totals", 1)
    return run, tmp / "landscape.db", explain.explain_token(run.store, run.run_id, token)


def _member_label(m: dict) -> str:
    return f"#{m['ordinal']} row {m['row_index']}" if m["row_index"] is not None else f"#{m['ordinal']} {m['token_id']}"


def test_an_aggregated_line_is_summarised_per_batch(accounts):
    _, _, e = accounts
    assert len(e["ancestors"]) > explain.MANY and any(len(b["members"]) > explain.MANY for b in e["batches"])
    lines = explain.render_text(e).splitlines()
    # the token itself (≤ 4 lines: head, its flush state's sink state, outcome) + source rows + ancestors, then 3 a batch
    assert len(lines) <= 1 + 4 + len(e["token"]["states"]) + 2 + 3 * len(e["batches"]), "\n".join(lines)
    for b in e["batches"]:
        head = next(i for i, ln in enumerate(lines) if ln.startswith(f"  batch {b['batch_id']} at {b['node_id']} "))
        assert f"trigger {b['trigger_type']} ({b['trigger_reason']})" in lines[head]
        members = next(ln for ln in lines[head:] if ln.startswith("    members ("))
        labels = [_member_label(m) for m in b["members"]]
        assert members.startswith(f"    members ({len(labels)}): {', '.join(labels[:explain.FEW])}")
        assert members.endswith(", ".join(labels[-explain.FEW:]))
        left_out = len(labels) - 2 * explain.FEW
        assert (f"… {left_out} more …" in members) == (len(labels) > explain.MANY)
    made_at = {a["created_at_node"] for a in e["ancestors"]}
    (summary,) = [ln for ln in lines if ln.startswith("ancestors: ")]
    assert summary.startswith(f"ancestors: {len(e['ancestors'])} tokens, made at ") and all(n in summary for n in made_at)
    rows = [r["row_index"] for r in e["source_rows"]]
    assert f"from {len(rows)} source rows, row indexes {', '.join(map(str, rows[:explain.FEW]))}, …" in "\n".join(lines)


def test_full_lists_every_member_and_ancestor(accounts):
    _, _, e = accounts
    text = explain.render_text(e, full=True)
    for b in e["batches"]:
        assert f"    members ({len(b['members'])}): {', '.join(_member_label(m) for m in b['members'])}" in text.splitlines()
    for a in e["ancestors"]:
        assert f"  token {a['token_id']}" in text
    assert ", ".join(str(r["row_index"]) for r in e["source_rows"]) in text
    assert len(text.splitlines()) > 3 * len(explain.render_text(e).splitlines())


def test_cli_explain_summarises_a_totals_line_and_json_keeps_everything(accounts):
    run, db, e = accounts
    args = ("explain", run.run_id, "-l", str(db), "--sink", "totals", "--line", "1")
    summary, full, as_json = _cli(*args), _cli(*args, "--full"), _cli(*args, "--json")
    assert [summary.returncode, full.returncode, as_json.returncode] == [0, 0, 0], summary.stderr + full.stderr + as_json.stderr
    assert summary.stdout == explain.render_text(e) + "\n"
    assert full.stdout == explain.render_text(e, full=True) + "\n"
    assert json.loads(as_json.stdout) == json.loads(json.dumps(e))
