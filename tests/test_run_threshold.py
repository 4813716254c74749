"""run.max_quarantined_fraction: a run that sets aside too many of its source rows — by default,
one that gets none through — ends ``failed`` (exit 1) with the reason in its summary, while its
audit is still complete, verified and digested."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from elspeth_beam import testing
from elspeth_beam.cli import main
from elspeth_beam.landscape.store import LandscapeStore
from elspeth_beam.inspect.verify import VerifyReport, verify_run
from elspeth_beam.run import failure_reason


def _all_quarantined(tmp_path: Path) -> dict[str, Any]:
    """Every row divides by zero in a computed field (quarantined): nothing reaches the sink."""
    src = tmp_path / "in.csv"
    src.write_text("id,n\n" + "".join(f"{i},0\n" for i in range(20)))
    return {
        "source": {"plugin": "csv", "on_success": "raw", "options": {"path": str(src), "schema": {"id": "int", "n": "int"}}},
        "transforms": [{"name": "ratio", "plugin": "computed", "input": "raw", "on_success": "good",
                        "on_error": "quarantine", "options": {"fields": {"r": "row['id'] / row['n']"}}}],
        "sinks": {"good": {"plugin": "jsonl", "options": {"path": str(tmp_path / "out" / "good.jsonl")}}},
    }


def test_a_run_whose_every_row_is_quarantined_fails_with_its_reason(tmp_path, capsys):
    settings = tmp_path / "p.yaml"
    settings.write_text(yaml.safe_dump(_all_quarantined(tmp_path)))
    db = tmp_path / "l.db"

    assert main(["run", str(settings), "-l", str(db), "--run-id", "bad", "--json"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "failed"
    assert summary["status_reason"].startswith("every source row (20 of 20) was quarantined or failed: none got through")
    assert summary["verify"] == [] and summary["quarantined"] == 20 and summary["rows_set_aside"] == 20

    store = LandscapeStore(f"sqlite:///{db}", create=False)
    run = store.run("bad")
    assert run["status"] == "failed" and run["digest_root"]  # finished and sealed: the audit is complete
    assert json.loads(run["summary_json"])["status_reason"] == summary["status_reason"]
    assert verify_run(store, "bad").ok


def test_the_text_summary_and_quiet_mode_say_why(tmp_path, capsys):
    settings = tmp_path / "p.yaml"
    settings.write_text(yaml.safe_dump(_all_quarantined(tmp_path)))
    assert main(["run", str(settings), "-l", str(tmp_path / "l.db"), "--no-progress"]) == 1
    assert "\nwhy        every source row (20 of 20) was quarantined or failed" in capsys.readouterr().out
    assert main(["run", str(settings), "-l", str(tmp_path / "l.db"), "-q"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "failed: every source row (20 of 20)" in captured.err


@pytest.mark.parametrize(("limit", "status"), [(None, "completed"), (0.03, "completed"), (0.02, "failed")])
def test_the_quickstart_against_the_threshold(quickstart_settings, tmp_path, limit, status):
    """8 of 300 rows (2.7 %) are quarantined: the default and 3 % pass it, 2 % does not."""
    if limit is not None:
        quickstart_settings["run"] = {"max_quarantined_fraction": limit}
    run = testing.run_for_test(quickstart_settings, tmp_path)
    assert run.result.summary["rows_set_aside"] == 8
    assert run.result.status.value == status
    if status == "failed":
        assert run.result.reason == "8 of 300 source rows (2.7%) were quarantined or failed, more than run.max_quarantined_fraction 0.02 allows"
    testing.assert_audit_complete(run)


def _summary(rows: int, set_aside: int) -> dict[str, int]:
    return {"rows_read": rows, "rows_set_aside": set_aside}


def test_failure_reason_boundaries():
    ok = VerifyReport(run_id="r")
    assert failure_reason(ok, _summary(100, 10), 0.1) is None  # exactly the limit is allowed
    assert failure_reason(ok, _summary(100, 11), 0.1) is not None
    assert failure_reason(ok, _summary(100, 0), 0.0) is None
    assert failure_reason(ok, _summary(100, 1), 0.0) is not None  # 0: no row may be set aside
    assert failure_reason(ok, _summary(5, 5), None) is not None  # unset: only when nothing got through
    assert failure_reason(ok, _summary(5, 4), None) is None
    assert failure_reason(ok, _summary(5, 5), 1.0) is None  # 1: set aside every row if you must
    assert failure_reason(ok, _summary(0, 0), 0.0) is None  # an empty source sets nothing aside
    broken = VerifyReport(run_id="r", problems=["node_states: 1 open"])
    assert failure_reason(broken, _summary(100, 0), None) == "the audit failed verification (1 problem(s))"
