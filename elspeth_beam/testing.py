"""Helpers for users' own pipeline unit tests (and ours), built on Beam's TestPipeline.

    from elspeth_beam import testing

    def test_quickstart(tmp_path):
        run = testing.run_for_test("pipelines/quickstart.yaml", tmp_path)   # sinks under tmp_path
        testing.assert_audit_complete(run)
        assert run.result.summary["rows_per_sink"]["large"] == 62
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apache_beam as beam
import yaml
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_pipeline

from elspeth_beam.config.loader import LoadedPipeline, expand_env, load_settings_dict
from elspeth_beam.auditlog.buffer import AuditSegment
from elspeth_beam.auditlog.loader import load_records
from elspeth_beam.auditlog.records import RECORD_TYPES, tables_of, to_records
from elspeth_beam.landscape import schema as s
from elspeth_beam.landscape.store import LandscapeStore
from elspeth_beam.inspect.verify import VerifyReport, verify_run
from elspeth_beam.pipeline.builder import BuiltPipeline
from elspeth_beam.run import RunResult, execute_run

# Columns that legitimately differ between two runs of the same input.
VOLATILE_COLUMNS = frozenset(
    {"started_at", "completed_at", "created_at", "recorded_at", "duration_ms", "beam_options_json", "runner", "summary_json",
     "digest_root", "digest_manifest", "entries",  # the digest hashes the timestamps too
     "loaded_at", "attempt_tag"}  # audit_segments: when, and which write of a segment, was loaded
)


def landscape_url(tmp_path: Path, name: str = "landscape.db") -> str:
    return f"sqlite:///{tmp_path / name}"


@dataclass
class TestRun:
    result: RunResult
    store: LandscapeStore
    journal: Path | None
    sinks: dict[str, Path] = field(default_factory=dict)  # where each sink's file was written

    __test__ = False  # not a pytest test class

    @property
    def run_id(self) -> str:
        return self.result.run_id

    def sink_path(self, name: str) -> Path:
        """The file sink ``name`` wrote (under the test's folder unless the settings put it there)."""
        return self.sinks[name]

    def segments(self) -> list[AuditSegment]:
        """Every audit segment the pipeline emitted (replays included), from the journal."""
        assert self.journal is not None, "run_for_test(..., journal=True) records the segments"
        return [AuditSegment(**json.loads(line)) for line in self.journal.read_text().splitlines()]

    def records(self) -> list[tuple]:
        """Every audit record the pipeline emitted (replays included), as record tuples."""
        return [RECORD_TYPES[table](*r) for seg in self.segments() for table, cols in seg.tables.items()
                for r in to_records(cols)]


class _JournalFn(beam.DoFn):
    """Append each audit segment as one JSON line (a test-side tap; replays append again)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def process(self, segment: AuditSegment) -> None:
        line = json.dumps({"run_id": segment.run_id, "node_id": segment.node_id, "tables": segment.tables})
        with open(self.path, "a") as handle:
            handle.write(line + "\n")


def write_records(store: LandscapeStore, records: list[tuple]) -> int:
    """Load record tuples (any tables, any order, duplicates allowed) in one transaction."""
    return load_records(store.engine, tables_of(records))


def sinks_in(settings: dict[str, Any], folder: Path, *, unless_under: Path | None = None) -> dict[str, Any]:
    """A copy of raw settings whose file sinks write ``folder/<sink name><suffix>``; a sink whose
    path (``${VAR}`` expanded) is already under ``unless_under``, or is a URL, keeps it."""
    settings = copy.deepcopy(settings)
    for name, sink in settings["sinks"].items():
        path = (sink.get("options") or {}).get("path") if isinstance(sink, dict) else None
        if not isinstance(path, str) or "://" in path:
            continue
        path = str(expand_env(path, "", []))
        if unless_under is not None and Path(path).resolve().is_relative_to(Path(unless_under).resolve()):
            continue
        sink["options"]["path"] = str(folder / f"{name}{Path(path).suffix}")
    return settings


def load_for_test(settings: dict[str, Any] | str | Path, landscape: str, audit_log: Path | None = None,
                  sinks_under: Path | None = None) -> LoadedPipeline:
    """The settings with the test's Landscape (and, given one, the test's audit-log folder, and
    every sink outside ``sinks_under`` moved to ``sinks_under/sinks/``)."""
    raw = yaml.safe_load(Path(settings).read_text()) if isinstance(settings, (str, Path)) else settings
    if sinks_under is not None and isinstance(raw, dict) and isinstance(raw.get("sinks"), dict):
        raw = sinks_in(raw, sinks_under / "sinks", unless_under=sinks_under)
    if audit_log is not None and not (raw.get("landscape") or {}).get("audit_log"):
        raw = {**raw, "landscape": {**(raw.get("landscape") or {}), "audit_log": str(audit_log)}}
    return load_settings_dict(raw, landscape_url=landscape)


def run_for_test(
    settings: dict[str, Any] | str | Path,
    tmp_path: Path,
    *,
    beam_args: tuple[str, ...] = (),
    run_id: str | None = None,
    journal: bool = False,
    landscape: str | None = None,
    keep_parts: bool = False,
) -> TestRun:
    """Run a pipeline on Beam's TestPipeline (FnApiRunner by default) with a temp Landscape; its
    sinks write under ``tmp_path/sinks/`` (``run.sink_path(name)``) unless already under tmp_path,
    so a test never overwrites what a real run of the same YAML wrote. ``keep_parts`` keeps the
    sinks' part files a completed run removes."""
    url = landscape or landscape_url(tmp_path)
    # a SQLite Landscape keeps its audit log beside it; any other keeps it under the test's folder
    loaded = load_for_test(settings, url, audit_log=None if url.startswith("sqlite") else tmp_path / "audit-log",
                           sinks_under=tmp_path)
    journal_path = tmp_path / f"journal-{run_id or 'run'}.jsonl" if journal else None
    if journal_path is not None and journal_path.exists():
        journal_path.unlink()

    def make_pipeline(options: PipelineOptions) -> beam.Pipeline:
        return test_pipeline.TestPipeline(options=options, blocking=True)

    def tap(built: BuiltPipeline) -> None:
        if journal_path is not None:
            built.audit() | "Journal" >> beam.ParDo(_JournalFn(str(journal_path)))

    result = execute_run(loaded, beam_args=beam_args, run_id=run_id, make_pipeline=make_pipeline, tap=tap,
                         keep_parts=keep_parts)
    sinks = {name: Path(sink.options["path"]) for name, sink in loaded.settings.sinks.items()}
    return TestRun(result=result, store=LandscapeStore(url), journal=journal_path, sinks=sinks)


def assert_audit_complete(run: TestRun | RunResult, store: LandscapeStore | None = None) -> VerifyReport:
    """Fail with the verify problems unless the run's audit is complete and consistent."""
    result = run.result if isinstance(run, TestRun) else run
    store = store or (run.store if isinstance(run, TestRun) else LandscapeStore(result.landscape_url))
    report = verify_run(store, result.run_id)
    assert report.ok, report.text()
    return report


def without_parts(snapshot_: dict[str, list[str]]) -> dict[str, list[str]]:
    """A ``snapshot`` without what a sink's part boundaries decide, which are the runner's
    bundles: the artifacts, a sink node_state's output hash (its part's content hash) and an
    outcome's artifact and row in it. Compare runs on different runners with this."""
    def strip(table: str, line: str) -> str:
        record = json.loads(line)
        if table == "node_states" and record["node_id"].startswith("sink:"):
            record.pop("output_hash")
        if table == "token_outcomes":
            record.pop("artifact_id"), record.pop("artifact_row")
        return json.dumps(record, sort_keys=True)

    return {table: sorted(strip(table, line) for line in lines)
            for table, lines in snapshot_.items() if table != "artifacts"}


def snapshot(store: LandscapeStore, *, ignore: frozenset[str] = VOLATILE_COLUMNS) -> dict[str, list[str]]:
    """Every table's rows (sorted, volatile columns dropped): compare two Landscapes with ==."""
    out: dict[str, list[str]] = {}
    for table in s.metadata.sorted_tables:
        rows = [
            json.dumps({k: v for k, v in row.items() if k not in ignore}, sort_keys=True, default=str)
            for row in store.table_rows(table)
        ]
        out[table.name] = sorted(rows)
    return out
