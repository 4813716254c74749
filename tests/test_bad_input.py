"""Bad input: user mistakes are clear errors (exit 2, no traceback); bad data is audited, never dropped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import QUICKSTART, REPO
from sqlalchemy import func, select

from elspeth_beam import testing
from elspeth_beam.core.canonical import stable_hash
from elspeth_beam.landscape.store import LandscapeStore
from elspeth_beam.landscape import schema as s

TESTS = Path(__file__).resolve().parent


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "elspeth_beam.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def _write_yaml(tmp_path: Path, settings: dict, name: str = "pipeline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def _simple(tmp_path: Path, source_path: Path, *, source_plugin: str = "csv", transforms: list | None = None) -> dict:
    """source → (transforms) → sink 'good', with the transforms' errors to sink 'rejects'."""
    transforms = transforms or []
    return {
        "source": {"plugin": source_plugin, "on_success": transforms[0]["input"] if transforms else "good",
                   "options": {"path": str(source_path)}},
        "transforms": transforms,
        "sinks": {
            "good": {"plugin": "jsonl", "options": {"path": str(tmp_path / "out" / "good.jsonl")}},
            **({"rejects": {"plugin": "jsonl", "options": {"path": str(tmp_path / "out" / "rejects.jsonl")}}}
               if any(t.get("on_error") == "rejects" for t in transforms) else {}),
        },
    }


def _assert_usage_error(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert "elspeth-beam:" in proc.stderr


def _landscape(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/l.db"


# ---- (a)–(e): the command line ----------------------------------------------------------------

def test_unknown_plugin_lists_the_known_ones(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("a,b\n1,2\n")
    settings = _simple(tmp_path, src)
    settings["source"]["plugin"] = "xlsx"
    proc = _cli("run", str(_write_yaml(tmp_path, settings)), "--landscape-url", _landscape(tmp_path))
    _assert_usage_error(proc)
    assert "source.plugin" in proc.stderr
    assert "unknown source plugin 'xlsx'" in proc.stderr
    assert "built-in: csv, jsonl, parquet" in proc.stderr


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("source:\n  plugin: csv\n  on_success: good: oops\nsinks: {}\n")
    proc = _cli("run", str(path), "--landscape-url", _landscape(tmp_path))
    _assert_usage_error(proc)
    assert f"{path}:3:" in proc.stderr
    assert "invalid YAML" in proc.stderr


def test_missing_source_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "orders.csv"
    proc = _cli("run", str(_write_yaml(tmp_path, _simple(tmp_path, missing))), "--landscape-url", _landscape(tmp_path))
    _assert_usage_error(proc)
    assert str(missing) in proc.stderr
    assert "does not exist" in proc.stderr


def test_misspelt_key_names_its_path(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("a,b\n1,2\n")
    settings = _simple(
        tmp_path, src,
        transforms=[{"name": "t", "plugin": "field_mapper", "input": "raw", "on_success": "good", "on_error": "fail",
                     "optoins": {"rename": {"a": "x"}}}],
    )
    proc = _cli("run", str(_write_yaml(tmp_path, settings)), "--landscape-url", _landscape(tmp_path))
    _assert_usage_error(proc)
    assert "transforms[0].optoins" in proc.stderr
    assert "extra inputs are not permitted" in proc.stderr.lower()
    assert not (tmp_path / "out").exists()  # nothing ran


def test_unknown_runner_is_a_clear_error(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("a,b\n1,2\n")
    proc = _cli("run", str(_write_yaml(tmp_path, _simple(tmp_path, src))), "--landscape-url", _landscape(tmp_path),
                "--runner", "NoSuchRunner")
    _assert_usage_error(proc)
    assert "NoSuchRunner" in proc.stderr


def test_unknown_runner_does_not_leave_a_run_running(tmp_path):
    """A run recorded before the mistake was noticed is marked failed (or never recorded)."""
    src = tmp_path / "in.csv"
    src.write_text("a,b\n1,2\n")
    with pytest.raises(Exception, match="NoSuchRunner"):
        testing.run_for_test(_simple(tmp_path, src), tmp_path, run_id="run-bad-runner", beam_args=("--runner", "NoSuchRunner"))
    runs = LandscapeStore(testing.landscape_url(tmp_path)).table_rows(s.runs)
    assert [r["status"] for r in runs] in ([], ["failed"]), runs


@pytest.mark.parametrize("command", ["explain", "verify"])
@pytest.mark.parametrize("content", [b"this is not a database\n", b""], ids=["text-file", "empty-file"])
def test_a_file_that_is_not_a_landscape_is_a_clear_error(tmp_path, command, content):
    path = tmp_path / "not-a-landscape.db"
    path.write_bytes(content)
    args = ["-l", str(path), "--row", "0"] if command == "explain" else ["latest", "--landscape-url", str(path)]
    proc = _cli(command, *args)
    _assert_usage_error(proc)
    assert str(path) in proc.stderr


def test_validate_quickstart_ok():
    proc = _cli("validate", str(QUICKSTART))
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout
    assert "Traceback" not in proc.stderr
    for name in ("source", "tidy", "pricing", "size", "label_region", "standard", "large", "review", "rejects"):
        assert name in proc.stdout


# ---- (f): bad records in a JSONL source -------------------------------------------------------

def _count(conn, table, *where) -> int:
    return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def test_jsonl_bad_records_are_quarantined_not_dropped(tmp_path):
    lines = [
        '{"id": 1, "v": 1.5}',
        '{"id": 2, "v": ',                 # malformed JSON
        "",                                # blank: not a record
        "[1, 2, 3]",                       # JSON, but not an object
        '{"id": 4, "v": NaN}',             # NaN has no canonical form
        "   ",                             # blank (whitespace only)
        '{"id": 5, "v": {"deep": -Infinity}}',
        '"just a string"',
        '{"id": 7, "v": 7}',
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    records = [line for line in lines if line.strip()]
    bad = {1: "malformed JSON", 2: "must be an object, got array", 3: "NaN", 4: "Infinity", 5: "must be an object, got string"}

    run = testing.run_for_test(_simple(tmp_path, src, source_plugin="jsonl"), tmp_path)
    testing.assert_audit_complete(run)
    rows = {r["row_index"]: r for r in run.store.table_rows(s.rows, run.run_id)}
    assert sorted(rows) == list(range(len(records)))  # every non-blank line is a row, none dropped
    tokens = {t["row_id"]: t for t in run.store.table_rows(s.tokens, run.run_id)}
    assert len(tokens) == len(records)
    outcomes = [o for o in run.store.table_rows(s.token_outcomes, run.run_id) if o["is_terminal"]]
    by_token = {}
    for o in outcomes:
        by_token.setdefault(o["token_id"], []).append(o)
    states = {st["token_id"]: st for st in run.store.table_rows(s.node_states, run.run_id) if st["node_id"] == "source:source"}

    for index, raw in enumerate(records):
        row = rows[index]
        assert row["source_data_hash"] == stable_hash(raw)
        token = tokens[row["row_id"]]
        (outcome,) = by_token[token["token_id"]]  # exactly one terminal outcome
        if index in bad:
            assert outcome["outcome"] == "quarantined", raw
            assert outcome["node_id"] == "source:source"
            assert bad[index] in json.loads(outcome["error_json"])["message"], raw
            assert states[token["token_id"]]["status"] == "failed"
            assert bad[index] in json.loads(states[token["token_id"]]["error_json"])["message"]
            assert json.loads(row["payload_json"]) == {"raw": raw}
        else:
            assert outcome["outcome"] == "completed", raw
            assert outcome["sink_name"] == "good"
            assert states[token["token_id"]]["status"] == "completed"
    good = [json.loads(line) for line in (tmp_path / "out" / "good.jsonl").read_text().splitlines()]
    assert good == [{"id": 1, "v": 1.5}, {"id": 7, "v": 7}]
    assert run.result.summary["quarantined"] == len(bad)


# ---- (g): coerce with on_error: fail ----------------------------------------------------------

def test_coerce_on_error_fail_records_failed(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("id,amount\n1,10.5\n2,ten\n3,\n4,7\n")
    settings = _simple(
        tmp_path, src,
        transforms=[{"name": "types", "plugin": "coerce", "input": "raw", "on_success": "good", "on_error": "fail",
                     "options": {"fields": {"id": "int", "amount": "float"}}}],
    )
    run = testing.run_for_test(settings, tmp_path)
    assert run.result.status.value == "completed"
    report = testing.assert_audit_complete(run)
    assert report.ok

    with run.store.engine.connect() as conn:
        failed = conn.execute(
            select(s.rows.c.row_index, s.token_outcomes.c.node_id, s.token_outcomes.c.sink_name, s.token_outcomes.c.error_json)
            .join(s.tokens, s.tokens.c.row_id == s.rows.c.row_id)
            .join(s.token_outcomes, s.token_outcomes.c.token_id == s.tokens.c.token_id)
            .where(s.rows.c.run_id == run.run_id, s.token_outcomes.c.outcome == "failed")
            .order_by(s.rows.c.row_index)
        ).all()
        failed_states = conn.execute(
            select(s.rows.c.row_index, s.node_states.c.error_json, s.node_states.c.output_hash, s.node_states.c.duration_ms)
            .join(s.tokens, s.tokens.c.row_id == s.rows.c.row_id)
            .join(s.node_states, s.node_states.c.token_id == s.tokens.c.token_id)
            .where(s.rows.c.run_id == run.run_id, s.node_states.c.status == "failed")
            .order_by(s.rows.c.row_index)
        ).all()
        assert _count(conn, s.node_states, s.node_states.c.run_id == run.run_id, s.node_states.c.status == "open") == 0
    assert [f.row_index for f in failed] == [1, 2]
    assert all(f.node_id == "transform:types" and f.sink_name is None for f in failed)
    assert [f.row_index for f in failed_states] == [1, 2]
    errors = [json.loads(f.error_json) for f in failed_states]
    assert errors[0]["type"] == "RowError" and "cannot coerce 'ten' to float" in errors[0]["message"]
    assert errors[1]["type"] == "RowError" and "'amount' is empty" in errors[1]["message"]
    assert all(e["node_id"] == "transform:types" for e in errors)
    assert all(f.output_hash is None and f.duration_ms is not None for f in failed_states)
    assert [json.loads(f.error_json) for f in failed] == errors
    assert run.result.summary["failed"] == 2
    good = [json.loads(line) for line in (tmp_path / "out" / "good.jsonl").read_text().splitlines()]
    assert good == [{"id": 1, "amount": 10.5}, {"id": 4, "amount": 7.0}]


# ---- (h): a user's transform class by dotted path ---------------------------------------------

def test_user_transform_by_dotted_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"n": n}) + "\n" for n in range(10)))
    settings = _simple(
        tmp_path, src, source_plugin="jsonl",
        transforms=[{"name": "flaky", "plugin": "plugins_for_tests.Flaky", "input": "raw", "on_success": "good",
                     "on_error": "rejects", "options": {"every": 3}}],
    )
    run = testing.run_for_test(settings, tmp_path)
    testing.assert_audit_complete(run)

    rows = {r["row_id"]: r["row_index"] for r in run.store.table_rows(s.rows, run.run_id)}
    tokens = {t["token_id"]: rows[t["row_id"]] for t in run.store.table_rows(s.tokens, run.run_id)}
    states = [st for st in run.store.table_rows(s.node_states, run.run_id) if st["node_id"] == "transform:flaky"]
    assert len(states) == 10
    failed = {tokens[st["token_id"]]: json.loads(st["error_json"]) for st in states if st["status"] == "failed"}
    assert sorted(failed) == [0, 3, 6, 9]
    for n, err in failed.items():
        assert err["type"] == "FlakyError"
        assert err["message"] == f"refusing n={n}"
        assert err["node_id"] == "transform:flaky"
    outcomes = {tokens[o["token_id"]]: o for o in run.store.table_rows(s.token_outcomes, run.run_id) if o["is_terminal"]}
    assert len(outcomes) == 10
    for n, o in outcomes.items():
        if n in failed:
            assert (o["outcome"], o["sink_name"]) == ("quarantined", "rejects")
        else:
            assert (o["outcome"], o["sink_name"]) == ("completed", "good")
    good = [json.loads(line) for line in (tmp_path / "out" / "good.jsonl").read_text().splitlines()]
    assert good == [{"n": n, "doubled": 2 * n} for n in (1, 2, 4, 5, 7, 8)]
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [r["n"] for r in rejects] == [0, 3, 6, 9]
    assert all(r["_error_node"] == "transform:flaky" for r in rejects)


# ---- (i): Parquet in, Parquet out --------------------------------------------------------------

def test_parquet_source_to_parquet_sink(tmp_path):
    table = pa.table(
        {
            "id": pa.array([1, 2, 3, 4, 5], pa.int64()),
            "name": pa.array(["a", "béta", "", None, "e,with comma"], pa.string()),
            "price": pa.array([1.0, 2.5, 3.0, None, -0.125], pa.float64()),  # whole-valued floats stay floats
            "flag": pa.array([True, False, None, True, False], pa.bool_()),
        }
    )
    src = tmp_path / "in.parquet"
    pq.write_table(table, src)
    settings = {
        "source": {"plugin": "parquet", "on_success": "out", "options": {"path": str(src)}},
        "sinks": {"out": {"plugin": "parquet", "options": {"path": str(tmp_path / "out" / "copy.parquet")}}},
    }
    run = testing.run_for_test(settings, tmp_path)
    testing.assert_audit_complete(run)
    assert run.result.summary["rows_per_sink"] == {"out": 5}
    written = pq.read_table(tmp_path / "out" / "copy.parquet")
    assert sorted(written.to_pylist(), key=lambda r: r["id"]) == table.to_pylist()
    assert written.schema.names == table.schema.names
    for field in table.schema:
        assert written.schema.field(field.name).type == field.type, field.name
