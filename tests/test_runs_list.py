"""`runs` says which pipeline each run was (its settings file, as recorded) and filters by it
and by status, in text and in JSON — checked against the runs table read with plain SQL."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
import yaml
from conftest import QUICKSTART, REPO, retarget

from elspeth_beam.cli import main
from elspeth_beam.core.enums import RunStatus

ACCOUNTS = REPO / "pipelines" / "accounts.yaml"


@pytest.fixture(scope="module")
def landscape(tmp_path_factory):
    """Three runs through the CLI: quickstart, accounts, and a quickstart copy that fails (any
    quarantined row fails it) under another file name."""
    tmp = tmp_path_factory.mktemp("runs")
    db = tmp / "landscape.db"
    strict = retarget(yaml.safe_load(QUICKSTART.read_text()), tmp / "out-s")
    strict["run"] = {"max_quarantined_fraction": 0}
    files = {
        "quickstart": (tmp / "quickstart.yaml", retarget(yaml.safe_load(QUICKSTART.read_text()), tmp / "out-q"), 0),
        "accounts": (tmp / "pipelines" / "accounts.yaml", retarget(yaml.safe_load(ACCOUNTS.read_text()), tmp / "out-a"), 0),
        "strict": (tmp / "strict.yml", strict, 1),
    }
    for name, (path, settings, code) in files.items():
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump(settings))
        assert main(["run", str(path), "-l", str(db), "--run-id", f"run-{name}", "-q"]) == code
    return db, {name: str(path) for name, (path, _, _) in files.items()}


def _recorded(db: Path) -> list[tuple[str, str, str]]:
    """(run_id, settings_path, status) of every run, newest first — the truth, by plain SQL."""
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT run_id, settings_path, status FROM runs ORDER BY started_at DESC").fetchall()


def _runs_json(capsys, *args: str) -> list[dict]:
    assert main(["runs", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_each_run_records_its_settings_file_as_given(landscape):
    db, paths = landscape
    assert {(r, p) for r, p, _ in _recorded(db)} == {(f"run-{name}", path) for name, path in paths.items()}


def test_runs_shows_the_pipeline_column(landscape, capsys):
    db, paths = landscape
    assert main(["runs", "-l", str(db)]) == 0
    header, *lines, footer = capsys.readouterr().out.splitlines()
    assert header.split()[:4] == ["run", "id", "pipeline", "status"]
    assert footer == f"landscape: sqlite:///{db}"
    assert [ln.split()[:3] for ln in lines] == [[r, p, s] for r, p, s in _recorded(db)]
    assert len({ln.index(" completed ") if " completed " in ln else ln.index(" failed ") for ln in lines}) == 1  # aligned


@pytest.mark.parametrize("name,expected", [
    ("quickstart", ["run-quickstart"]), ("quickstart.yaml", ["run-quickstart"]), ("accounts", ["run-accounts"]),
    ("pipelines/accounts.yaml", ["run-accounts"]), ("strict", ["run-strict"]), ("strict.yml", ["run-strict"]),
    ("strict.yaml", []), ("ickstart", []), ("nope", []),
])
def test_pipeline_filter_matches_the_file_name_its_stem_or_the_end_of_its_path(landscape, capsys, name, expected):
    db, paths = landscape
    listed = _runs_json(capsys, "-l", str(db), "--pipeline", name)
    assert [r["run_id"] for r in listed] == expected
    assert all(r["settings_path"] == paths[r["run_id"].removeprefix("run-")] for r in listed)


def test_pipeline_filter_by_full_path(landscape, capsys):
    db, paths = landscape
    assert [r["run_id"] for r in _runs_json(capsys, "-l", str(db), "--pipeline", paths["accounts"])] == ["run-accounts"]


@pytest.mark.parametrize("status", [s.value for s in RunStatus])
def test_status_filter_in_text_and_json(landscape, capsys, status):
    db, _ = landscape
    expected = [r for r, _, s in _recorded(db) if s == status]
    assert [r["run_id"] for r in _runs_json(capsys, "-l", str(db), "--status", status)] == expected
    assert main(["runs", "-l", str(db), "--status", status]) == 0
    out = capsys.readouterr().out.splitlines()
    if expected:
        assert [ln.split()[0] for ln in out[1:-1]] == expected
    else:
        assert out[0] == f"no runs match --status {status}"


def test_filters_combine(landscape, capsys):
    db, _ = landscape
    assert [r["run_id"] for r in _runs_json(capsys, "-l", str(db), "--pipeline", "strict", "--status", "failed")] == ["run-strict"]
    assert _runs_json(capsys, "-l", str(db), "--pipeline", "quickstart", "--status", "failed") == []


def test_a_wrong_status_names_the_valid_ones(landscape, capsys):
    db, _ = landscape
    with pytest.raises(SystemExit) as exit_:
        main(["runs", "-l", str(db), "--status", "done"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert "invalid choice: 'done'" in err and all(repr(s.value) in err for s in RunStatus), err


def test_the_positional_landscape_still_works(landscape, capsys):
    db, _ = landscape
    assert _runs_json(capsys, str(db)) == _runs_json(capsys, "-l", str(db))
