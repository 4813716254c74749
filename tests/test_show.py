"""show and runs: what they print is what the Landscape holds.

Every number is checked against the database read with plain ``sqlite3`` queries written here,
on a quickstart run (gate, fork, quarantine) and an accounts run (two aggregations: batches).
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import QUICKSTART, REPO, retarget
from resume_helpers import cli

from elspeth_beam import testing
from elspeth_beam.cli import main
from elspeth_beam.core.reasons import without_values
from elspeth_beam.inspect.show import render_text, show_run

ACCOUNTS = REPO / "pipelines" / "accounts.yaml"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """One Landscape: a quickstart run, then an accounts run (the latest)."""
    tmp = tmp_path_factory.mktemp("show")
    url = testing.landscape_url(tmp)
    quick = testing.run_for_test(retarget(yaml.safe_load(QUICKSTART.read_text()), tmp / "out-q"), tmp, landscape=url)
    accounts = testing.run_for_test(retarget(yaml.safe_load(ACCOUNTS.read_text()), tmp / "out-a"), tmp, landscape=url)
    return {"db": tmp / "landscape.db", "store": accounts.store, "quick": quick.run_id, "accounts": accounts.run_id}


def q(db: Path, query: str, *params: Any) -> list[tuple]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(query, params).fetchall()


@pytest.mark.parametrize("which", ["quick", "accounts"])
def test_outcome_and_sink_counts_are_the_databases(two_runs, which):
    db, run_id = two_runs["db"], two_runs[which]
    d = show_run(two_runs["store"], run_id)
    assert d.outcomes == dict(q(db, "SELECT outcome, COUNT(*) FROM token_outcomes WHERE run_id = ? AND is_terminal GROUP BY outcome", run_id))
    assert d.rows_per_sink == dict(
        q(db, "SELECT sink_name, COUNT(*) FROM token_outcomes WHERE run_id = ? AND sink_name IS NOT NULL GROUP BY sink_name", run_id)
    )
    assert d.rows_read == q(db, "SELECT COUNT(*) FROM rows WHERE run_id = ?", run_id)[0][0] > 0
    text = render_text(d)
    for sink, n in d.rows_per_sink.items():
        assert f"{sink} {n}" in text


@pytest.mark.parametrize("which", ["quick", "accounts"])
def test_nodes_show_their_node_states(two_runs, which):
    db, run_id = two_runs["db"], two_runs[which]
    d = show_run(two_runs["store"], run_id)
    nodes = q(db, "SELECT node_id, name, node_type, plugin_name FROM nodes WHERE run_id = ? ORDER BY position", run_id)
    assert [(n.node_id, n.name, n.node_type, n.plugin) for n in d.nodes] == nodes
    for n in d.nodes:
        by_status = dict(q(db, "SELECT status, COUNT(*) FROM node_states WHERE run_id = ? AND node_id = ? GROUP BY status", run_id, n.node_id))
        assert (n.completed, n.errored, n.open) == (by_status.get("completed", 0), by_status.get("failed", 0), by_status.get("open", 0))
        mean = q(db, "SELECT AVG(duration_ms) FROM node_states WHERE run_id = ? AND node_id = ?", run_id, n.node_id)[0][0]
        assert n.mean_ms == pytest.approx(mean)
        assert n.completed > 0
    assert sum(n.errored for n in d.nodes) == q(db, "SELECT COUNT(*) FROM node_states WHERE run_id = ? AND status = 'failed'", run_id)[0][0]


def test_batches_per_aggregation_on_accounts(two_runs):
    db, run_id = two_runs["db"], two_runs["accounts"]
    d = show_run(two_runs["store"], run_id)
    assert [a.node_id for a in d.aggregations] == ["aggregation:account_totals", "aggregation:dedupe_resent"]
    for a in d.aggregations:
        where = "run_id = ? AND aggregation_node_id = ?"
        assert a.batches == q(db, f"SELECT COUNT(*) FROM batches WHERE {where}", run_id, a.node_id)[0][0] > 0
        assert a.by_trigger == dict(q(db, f"SELECT trigger_type, COUNT(*) FROM batches WHERE {where} GROUP BY trigger_type", run_id, a.node_id))
        assert a.by_status == dict(q(db, f"SELECT status, COUNT(*) FROM batches WHERE {where} GROUP BY status", run_id, a.node_id))
        # every member was consumed by that aggregation
        consumed = q(db, "SELECT COUNT(*) FROM token_outcomes WHERE run_id = ? AND node_id = ? AND outcome = 'consumed_in_batch'", run_id, a.node_id)
        assert a.members == consumed[0][0] > 0
    totals = next(a for a in d.aggregations if a.node_id == "aggregation:account_totals")
    assert set(totals.by_trigger) == {"count", "end_of_source"}  # trigger count 25 fires on the busy accounts
    text = render_text(d)
    assert "batches per aggregation" in text
    assert f"count {totals.by_trigger['count']}, end_of_source {totals.by_trigger['end_of_source']}" in text
    assert show_run(two_runs["store"], two_runs["quick"]).aggregations == []


def test_quarantine_reasons_on_quickstart(two_runs):
    db, run_id = two_runs["db"], two_runs["quick"]
    d = show_run(two_runs["store"], run_id, top=100)
    recorded = q(db, "SELECT outcome, error_json FROM token_outcomes WHERE run_id = ? AND is_terminal AND outcome IN ('quarantined', 'failed')", run_id)
    assert d.errors_total == len(recorded) == d.outcomes["quarantined"] > 0
    truth = Counter()
    for outcome, error_json in recorded:  # the reason as recorded, else the message without its values
        e = json.loads(error_json)
        truth[(outcome, e["node_id"], e["type"], e.get("reason") or without_values(e["message"])[0])] += 1
    assert {(r.outcome, r.node_id, r.error_type, r.reason): r.count for r in d.error_reasons} == dict(truth)
    assert [r.count for r in d.error_reasons] == sorted((r.count for r in d.error_reasons), reverse=True)
    zero = [r for r in d.error_reasons if "ZeroDivisionError" in r.reason]
    assert zero and all(r.node_id == "transform:pricing" and r.error_type == "ExpressionError" for r in zero)
    malformed = next(r for r in d.error_reasons if r.reason.startswith("malformed CSV line"))
    assert (malformed.count, malformed.examples) == (2, ["(8, 2)", "(8, 9)"])  # two messages, one cause
    text = render_text(d)
    assert f"quarantined / failed: {len(recorded)} token(s)" in text
    assert all(r.reason in text and r.examples_text() in text for r in d.error_reasons)

    top1 = show_run(two_runs["store"], run_id, top=1)
    assert top1.error_reasons == d.error_reasons[:1]
    assert f"{len(recorded) - d.error_reasons[0].count} more token(s) for rarer reasons" in render_text(top1)


def test_header_and_settings_are_as_recorded(two_runs):
    db, run_id = two_runs["db"], two_runs["accounts"]
    d = show_run(two_runs["store"], run_id)
    status, runner, started, completed, settings_hash, settings_json = q(
        db, "SELECT status, runner, started_at, completed_at, settings_hash, settings_json FROM runs WHERE run_id = ?", run_id
    )[0]
    h = d.header
    assert (h.run_id, h.status, h.runner, h.started_at, h.completed_at, h.settings_hash) == (
        run_id, status, runner, started, completed, settings_hash
    )
    assert h.duration_s == (dt.datetime.fromisoformat(completed) - dt.datetime.fromisoformat(started)).total_seconds() > 0
    assert d.settings == json.loads(settings_json)

    # the text's settings block is YAML that reads back as the recorded settings
    lines = render_text(d).splitlines()
    start = lines.index("settings (as recorded, secrets redacted)") + 1
    block = lines[start : lines.index("", start)]
    assert yaml.safe_load("\n".join(line[2:] for line in block)) == json.loads(settings_json)
    assert f"settings   sha256 {settings_hash}" in lines and f"run        {run_id}  [{status}]" in lines


def test_show_json_cli_defaults_to_the_latest_run(two_runs):
    proc = cli("show", "--json", "-l", str(two_runs["db"]))
    assert proc.code == 0, proc
    shown = json.loads(proc.stdout)
    assert shown["header"]["run_id"] == two_runs["accounts"]
    assert shown == json.loads(show_run(two_runs["store"], two_runs["accounts"]).model_dump_json())


def test_show_unknown_run_exits_2(two_runs, capsys):
    assert main(["show", "run-nope", "-l", str(two_runs["db"])]) == 2
    err = capsys.readouterr().err
    assert "run 'run-nope' is not in the Landscape" in err and "Traceback" not in err


def test_runs_lists_times_rows_and_outcomes(two_runs, capsys):
    db = two_runs["db"]
    assert main(["runs", "-l", str(db), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in listed] == [two_runs["accounts"], two_runs["quick"]]  # newest first
    for r in listed:
        started, completed, status = q(db, "SELECT started_at, completed_at, status FROM runs WHERE run_id = ?", r["run_id"])[0]
        assert (r["status"], r["started_at"], r["completed_at"]) == (status, started, completed)
        assert r["duration_s"] == (dt.datetime.fromisoformat(completed) - dt.datetime.fromisoformat(started)).total_seconds()
        assert r["rows"] == q(db, "SELECT COUNT(*) FROM rows WHERE run_id = ?", r["run_id"])[0][0]
        assert r["outcomes"] == dict(
            q(db, "SELECT outcome, COUNT(*) FROM token_outcomes WHERE run_id = ? AND is_terminal GROUP BY outcome", r["run_id"])
        )

    assert main(["runs", str(db)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "id", "pipeline", "status", "started", "duration", "rows", "outcomes"]
    for r, line in zip(listed, lines[1:]):
        outcomes = " ".join(f"{k}={v}" for k, v in r["outcomes"].items())
        assert r["settings_path"] is None  # run_for_test's settings are a dict, not a file
        assert line.split() == [r["run_id"], "-", r["status"], r["started_at"], f"{r['duration_s']:.1f}s", str(r["rows"]),
                                *outcomes.split()]


@pytest.mark.postgres
def test_show_on_postgres(postgres_url, quickstart_settings, tmp_path):
    from sqlalchemy import text

    run = testing.run_for_test(quickstart_settings, tmp_path, landscape=postgres_url)
    d = show_run(run.store, run.run_id)
    with run.store.engine.connect() as conn:
        outcomes = dict(conn.execute(text(
            "SELECT outcome, COUNT(*) FROM token_outcomes WHERE run_id = :r AND is_terminal GROUP BY outcome"), {"r": run.run_id}).all())
        failed = conn.execute(text("SELECT COUNT(*) FROM node_states WHERE run_id = :r AND status = 'failed'"), {"r": run.run_id}).scalar_one()
    assert d.outcomes == outcomes and d.errors_total == outcomes["quarantined"]
    assert sum(n.errored for n in d.nodes) == failed > 0
    assert all(n.mean_ms is not None for n in d.nodes)
    assert "quarantined / failed" in render_text(d)
