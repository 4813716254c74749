"""Command-line guards: a run id is used once, unknown flags are errors, Ctrl-C is one line and
a resumable run, and validate/run catch a missing source, a sink folder that is a file and a
gate naming a field no row has — each a one-line (or YAML-path) error, never a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import QUICKSTART, REPO, retarget

from elspeth_beam import testing
from elspeth_beam.bench import generate
from elspeth_beam.bench import settings as bench_settings
from elspeth_beam.cli import main, unknown_beam_args
from elspeth_beam.core.errors import AuditLogExistsError, LandscapeError, RunExistsError
from elspeth_beam.landscape import schema as s
from elspeth_beam.landscape.store import LandscapeStore
from elspeth_beam.inspect.verify import verify_run


def _yaml(path: Path, settings: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def _quickstart(tmp_path: Path, out: str = "qs") -> dict[str, Any]:
    return retarget(yaml.safe_load(QUICKSTART.read_text()), tmp_path / out)


def _small(tmp_path: Path, *, gate_field: str = "v", schema: dict[str, str] | None = None) -> dict[str, Any]:
    """in.csv (id,v — and a column 'extra' not in the schema) → gate on ``gate_field`` → big | small."""
    src = tmp_path / "in.csv"
    src.write_text("id,v,extra\n1,5,a\n2,50,b\n")
    return {
        "source": {"plugin": "csv", "on_success": "raw",
                   "options": {"path": str(src), "schema": schema if schema is not None else {"id": "int", "v": "int"}}},
        "gates": [{"name": "size", "input": "raw", "condition": f"row['{gate_field}'] >= 10", "on_error": "quarantine",
                   "routes": {"true": "big", "false": "small"}}],
        "sinks": {"big": {"plugin": "jsonl", "options": {"path": str(tmp_path / "out" / "big.jsonl")}},
                  "small": {"plugin": "jsonl", "options": {"path": str(tmp_path / "out" / "small.jsonl")}}},
    }


def _run_row(db: Path, run_id: str) -> dict[str, Any]:
    store = LandscapeStore(f"sqlite:///{db}", create=False)
    try:
        return store.run(run_id)
    finally:
        store.dispose()


def _snapshot(db: Path) -> dict[str, list[str]]:
    store = LandscapeStore(f"sqlite:///{db}", create=False)
    try:
        return testing.snapshot(store, ignore=frozenset())
    finally:
        store.dispose()


# ---- a run id names one run -----------------------------------------------------------------

def test_a_completed_run_id_is_refused_and_its_seal_kept(tmp_path, capsys):
    db, settings = tmp_path / "l.db", _yaml(tmp_path / "p.yaml", _quickstart(tmp_path))
    assert main(["run", str(settings), "-l", str(db), "--run-id", "sealed", "-q"]) == 0
    before = _snapshot(db)
    root = _run_row(db, "sealed")["digest_root"]
    assert root

    assert main(["run", str(settings), "-l", str(db), "--run-id", "sealed", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "run sealed already exists" in err and "status completed" in err and "elspeth-beam resume sealed" in err
    assert _run_row(db, "sealed")["digest_root"] == root
    assert _snapshot(db) == before


def test_another_pipeline_under_an_existing_id_touches_nothing(tmp_path, capsys):
    db = tmp_path / "l.db"
    first = _yaml(tmp_path / "first.yaml", _quickstart(tmp_path))
    assert main(["run", str(first), "-l", str(db), "--run-id", "taken", "-q"]) == 0
    before = _snapshot(db)

    other = _yaml(tmp_path / "other.yaml", _small(tmp_path))
    assert main(["run", str(other), "-l", str(db), "--run-id", "taken", "-q"]) == 2
    assert "run taken already exists" in capsys.readouterr().err
    assert _snapshot(db) == before
    assert not (tmp_path / "out").exists()  # the other pipeline wrote nothing
    assert verify_run(LandscapeStore(f"sqlite:///{db}", create=False), "taken").ok


def test_a_new_run_refuses_an_audit_log_folder_holding_another_runs_segments(tmp_path):
    """Two Landscapes sharing one audit log, one run id: the second run must not start (its
    catch-up would load the first run's segments into it), and it writes nothing."""
    settings = retarget(yaml.safe_load(QUICKSTART.read_text()), tmp_path / "out")
    settings["landscape"] = {"audit_log": str(tmp_path / "shared-log")}
    first = testing.run_for_test(settings, tmp_path, run_id="run-twice", landscape=f"sqlite:///{tmp_path / 'a.db'}")
    assert first.result.status.value == "completed"
    second = tmp_path / "b.db"
    with pytest.raises(AuditLogExistsError, match=r"already holds segments of a run run-twice.*choose another --run-id"):
        testing.run_for_test(settings, tmp_path, run_id="run-twice", landscape=f"sqlite:///{second}")
    assert LandscapeStore(f"sqlite:///{second}").table_rows(s.runs) == []


def test_begin_run_refuses_an_existing_id_and_resumes_only_a_reopened_run(tmp_path):
    store = LandscapeStore(f"sqlite:///{tmp_path / 'l.db'}")
    begin = dict(settings_json="{}", settings_hash="h", runner="t", beam_options={}, nodes=[], edges=[])
    store.begin_run(run_id="r", **begin)
    with pytest.raises(RunExistsError, match="run r already exists .*status running"):
        store.begin_run(run_id="r", **begin)
    store.begin_run(run_id="r", resuming=True, **begin)  # reopened by resume: status running
    with pytest.raises(LandscapeError, match="not in the Landscape"):
        store.begin_run(run_id="nope", resuming=True, **begin)
    assert [r["run_id"] for r in store.table_rows(s.runs)] == ["r"]


# ---- options: ours, Beam's, or an error --------------------------------------------------------

def test_beam_args_are_checked_against_beams_own_options():
    assert unknown_beam_args(["--runner", "FnApiRunner", "--streaming", "--direct_num_workers=2"]) == []
    assert unknown_beam_args(["--runner=X", "-l", "db.sqlite", "--no_such_option=1"]) == ["-l", "db.sqlite", "--no_such_option=1"]


def test_an_unknown_flag_is_an_error_before_anything_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = _yaml(tmp_path / "p.yaml", _small(tmp_path))
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(settings), "--no_such_option", "1"])
    assert exit_.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def test_run_takes_l_and_passes_what_follows_double_dash_unchecked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = _yaml(tmp_path / "p.yaml", _small(tmp_path))
    db = tmp_path / "elsewhere.db"
    assert main(["run", str(settings), "-l", str(db), "--run-id", "r", "-q", "--", "--only_my_runner_knows=1"]) == 0
    assert _run_row(db, "r")["status"] == "completed"
    assert not (tmp_path / "runs").exists()  # not the default Landscape


# ---- validate and run preflight ------------------------------------------------------------------

def _validate(settings: dict[str, Any], tmp_path: Path, capsys) -> tuple[int, str]:
    code = main(["validate", str(_yaml(tmp_path / "v.yaml", settings))])
    return code, capsys.readouterr().err


def test_validate_reports_a_missing_source_file(tmp_path, capsys):
    settings = _small(tmp_path)
    settings["source"]["options"]["path"] = str(tmp_path / "missing.csv")
    code, err = _validate(settings, tmp_path, capsys)
    assert code == 2 and "source.options.path:" in err and "missing.csv" in err and "does not exist" in err


def test_validate_reports_a_gate_field_no_row_has(tmp_path, capsys):
    code, err = _validate(_small(tmp_path, gate_field="totl"), tmp_path, capsys)
    assert code == 2, err
    assert "gates[0].condition: names field 'totl', which no row reaching gate 'size' has" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("field", ["v", "extra"], ids=["declared", "csv-header-only"])
def test_validate_accepts_fields_of_the_schema_or_the_file(tmp_path, capsys, field):
    code, err = _validate(_small(tmp_path, gate_field=field), tmp_path, capsys)
    assert code == 0, err


def test_validate_follows_renames_and_computed_fields(tmp_path, capsys):
    settings = _quickstart(tmp_path)  # tidy renames unit_price → price; pricing computes total
    assert _validate(settings, tmp_path, capsys)[0] == 0
    settings["gates"][0]["condition"] = "row['unit_price'] * row['quantity'] >= 1000"
    code, err = _validate(settings, tmp_path, capsys)
    assert code == 2 and "gates[0].condition: names field 'unit_price'" in err, err


def test_a_sink_folder_that_is_a_file_is_one_line_before_the_run(tmp_path, capsys):
    settings = _small(tmp_path)
    (tmp_path / "out").write_text("a file where the sinks' folder should be")
    path = _yaml(tmp_path / "p.yaml", settings)
    db = tmp_path / "l.db"

    assert main(["run", str(path), "-l", str(db), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "sinks.big.options.path: cannot write" in err and "is a file, not a folder" in err
    assert not db.exists() or not LandscapeStore(f"sqlite:///{db}").table_rows(s.runs)  # nothing recorded

    code, err = _validate(settings, tmp_path, capsys)
    assert code == 2 and "sinks.small.options.path: cannot write" in err


# ---- Ctrl-C ---------------------------------------------------------------------------------------

def _rows_recorded(db: Path, run_id: str) -> int:
    import sqlite3

    try:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT count(*) FROM rows WHERE run_id = ?", (run_id,)).fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "elspeth_beam.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_ctrl_c_marks_the_run_interrupted_and_resume_finishes_it(tmp_path):
    data, db = tmp_path / "data.csv", tmp_path / "l.db"
    generate(data, 20_000)
    settings = _yaml(tmp_path / "p.yaml", bench_settings(data, tmp_path / "out", f"sqlite:///{db}"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "elspeth_beam.cli", "run", str(settings), "--run-id", "cc", "--no-progress"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), process_group=0,
    )
    deadline = time.monotonic() + 120
    while _rows_recorded(db, "cc") == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be interrupted; make its input bigger"
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    out, err = proc.communicate(timeout=120)

    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = [line for line in err.splitlines() if not line.startswith("WARNING")]
    assert lines == [f"elspeth-beam: interrupted; finish it with: elspeth-beam resume cc -l sqlite:///{db}"], err
    assert _run_row(db, "cc")["status"] == "interrupted"

    resumed = _cli("resume", "cc", "-l", str(db), "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert _run_row(db, "cc")["status"] == "completed"
    assert verify_run(LandscapeStore(f"sqlite:///{db}", create=False), "cc").ok
