"""Retention of sink parts: a completed run removes its `<sink>.parts/<run_id>/` folders once
the merge is recorded; `--keep-parts` keeps them; a run that can still be resumed keeps them;
and whatever is removed, verify and explain keep working from the Landscape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import QUICKSTART, REPO, retarget
from resume_helpers import cli, gate_passthrough_settings, keyed_rows, sql, write_jsonl, write_yaml

from elspeth_beam import run as run_module
from elspeth_beam import testing
from elspeth_beam.core.canonical import stable_hash
from elspeth_beam.inspect import explain
from elspeth_beam.inspect.verify import verify_run
from elspeth_beam.landscape import schema as s
from elspeth_beam.pipeline.sink import parts_dir


def _sinks(settings: dict) -> dict[str, Path]:
    return {name: Path(sink["options"]["path"]) for name, sink in settings["sinks"].items()}


def _parts_folders(settings: dict, run_id: str) -> dict[str, bool]:
    """Per sink: whether its parts folder for the run is on disk."""
    return {name: parts_dir(path, run_id).is_dir() for name, path in _sinks(settings).items()}


def _recorded_rule(store, run_id: str) -> str | None:  # type: ignore[no-untyped-def]
    return json.loads(store.run(run_id)["summary_json"]).get("sink_parts")


@pytest.fixture
def quickstart(tmp_path: Path) -> dict:
    return retarget(yaml.safe_load(QUICKSTART.read_text()), tmp_path / "out")


def test_a_completed_run_removes_its_parts_and_still_verifies_and_explains(quickstart, tmp_path):
    run = testing.run_for_test(quickstart, tmp_path)
    assert run.result.status == "completed"
    assert not any(_parts_folders(quickstart, run.run_id).values())
    assert not any(path.with_name(f"{path.name}.parts").exists() for path in _sinks(quickstart).values())
    assert _recorded_rule(run.store, run.run_id) == "removed"
    parts = [a for a in run.store.table_rows(s.artifacts, run.run_id) if a["artifact_kind"] == "part"]
    assert parts and not any(Path(a["path"]).exists() for a in parts)  # recorded, removed by the rule
    assert verify_run(run.store, run.run_id).ok
    # explain --sink resolves a line of the merged file from the Landscape alone
    large = _sinks(quickstart)["large"].read_text().splitlines()
    for line in (1, len(large)):
        token = explain.explain_token(run.store, run.run_id, explain.token_at_sink_line(run.store, run.run_id, "large", line))
        written = next(st for st in token["token"]["states"] if st["node_id"] == "sink:large")
        assert written["input_hash"] == stable_hash(json.loads(large[line - 1]))


def test_keep_parts_keeps_them(quickstart, tmp_path):
    run = testing.run_for_test(quickstart, tmp_path, keep_parts=True)
    assert all(_parts_folders(quickstart, run.run_id).values())
    assert _recorded_rule(run.store, run.run_id) == "kept"
    parts = [a for a in run.store.table_rows(s.artifacts, run.run_id) if a["artifact_kind"] == "part"]
    assert all(Path(a["path"]).is_file() for a in parts)
    assert verify_run(run.store, run.run_id).ok


def test_parts_left_by_a_kill_after_the_finish_go_with_the_next_run(quickstart, tmp_path, monkeypatch):
    """Killed between the finish that records the rule and the removal: the run is completed
    and verifies, its parts are still there, and the next run with those sinks removes them."""
    monkeypatch.setattr(run_module, "remove_parts", lambda *args: 0)  # the process "dies" before removing
    first = testing.run_for_test(quickstart, tmp_path, run_id="first")
    assert all(_parts_folders(quickstart, "first").values()) and _recorded_rule(first.store, "first") == "removed"
    assert verify_run(first.store, "first").ok
    monkeypatch.undo()
    kept = testing.run_for_test(quickstart, tmp_path, run_id="kept", keep_parts=True)
    assert not any(_parts_folders(quickstart, "first").values())  # swept
    assert all(_parts_folders(quickstart, "kept").values())  # a run recorded `kept` is left alone
    testing.run_for_test(quickstart, tmp_path, run_id="third")
    assert all(_parts_folders(quickstart, "kept").values()) and not any(_parts_folders(quickstart, "third").values())
    assert all(verify_run(kept.store, r).ok for r in ("first", "kept", "third"))


_KILLED_AT = """
import os, sys
from elspeth_beam import run
point, merge = sys.argv[1], run.merge_sinks
def merge_sinks(*args, **kwargs):  # dies as a crash does (os._exit: no cleanup), before or after the merge
    if point == "after_merge":
        merge(*args, **kwargs)
    os._exit(137)
run.merge_sinks = merge_sinks
from elspeth_beam.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _killed_at(point: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")))}
    return subprocess.run([sys.executable, "-c", _KILLED_AT, point, *args], env=env, capture_output=True, text=True,
                          timeout=180, check=False)


@pytest.mark.parametrize("point", ["before_merge", "after_merge"])
def test_a_killed_run_keeps_its_parts_and_its_resume_removes_them(tmp_path, point):
    """Killed with every part written and recorded, before the merge or just after it was
    recorded: the parts stay (resume merges them), and the completed resume removes them."""
    rows = keyed_rows(per_key=40)
    settings = gate_passthrough_settings(write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out")
    db = tmp_path / "landscape.db"
    settings["landscape"] = {"url": f"sqlite:///{db}"}
    pipeline = write_yaml(tmp_path / "pipeline.yaml", settings)
    killed = _killed_at(point, "run", str(pipeline), "--run-id", "crash", "--no-progress")
    assert killed.returncode == 137, killed.stderr
    merged = sql(db, "SELECT COUNT(*) FROM artifacts WHERE run_id = 'crash' AND artifact_kind = 'merged'")[0][0]
    assert (sql(db, "SELECT status FROM runs")[0][0], merged) == ("running", 2 if point == "after_merge" else 0)
    parts = [Path(p) for (p,) in sql(db, "SELECT path FROM artifacts WHERE run_id = 'crash' AND artifact_kind = 'part'")]
    assert parts and all(p.is_file() for p in parts)  # what resume merges
    resumed = cli("resume", "crash", "-l", str(db), "--no-progress")
    assert resumed.code == 0 and "verify     OK" in resumed.stdout, resumed
    assert not any(_parts_folders(settings, "crash").values()) and not any(p.exists() for p in parts)
    assert json.loads(sql(db, "SELECT summary_json FROM runs")[0][0])["sink_parts"] == "removed"
    checked = cli("verify", "crash", "-l", str(db))
    assert checked.code == 0 and "run crash: OK" in checked.stdout, checked
    main = (tmp_path / "out" / "main.jsonl").read_text().splitlines()
    fifths = (tmp_path / "out" / "fifths.jsonl").read_text().splitlines()
    assert len(main) + len(fifths) == len(rows)


def test_the_cli_keeps_parts_when_asked(tmp_path):
    rows = keyed_rows(per_key=5)
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    settings = gate_passthrough_settings(source, tmp_path / "out")
    db = tmp_path / "landscape.db"
    settings["landscape"] = {"url": f"sqlite:///{db}"}
    pipeline = write_yaml(tmp_path / "pipeline.yaml", settings)
    kept = cli("run", str(pipeline), "--run-id", "kept", "--keep-parts", "--quiet")
    removed = cli("run", str(pipeline), "--run-id", "removed", "--quiet")
    assert kept.code == removed.code == 0, (kept, removed)
    assert all(_parts_folders(settings, "kept").values()) and not any(_parts_folders(settings, "removed").values())
