"""Hostile input end to end: generated hostile files (``hostile_files.py``) through generated
pipelines — coerce, computed, field_mapper, a gate, a fork, an aggregation, every sink kind,
every ``on_error`` — run by the command line as a user runs it. For each run:

- the command exits 0, 1 or 2 with a one-line reason, never a traceback; a failed pipeline is
  only one of the refusals the sinks document (``DOCUMENTED_REFUSALS``);
- every record the file was made with is a row of the Landscape (counted from how the file was
  made), every quarantined or failed outcome has its reason, and each sink's file holds as many
  records as the Landscape says reached it;
- ``verify`` is OK, and each sink's file reads back — with an independent reader of its format —
  equal to the rows the sink was given, whose hashes are what the Landscape says it received;
- ``explain`` (a row, a sink's line), ``report`` and ``export`` (Parquet, JSON Lines) work on
  every run it leaves.

Marker ``hostile`` (``.ci/run`` runs it; ``ELSPETH_HOSTILE_EXAMPLES`` sets how many, default 60: about 2–3 minutes).
The examples are a function of this code (Hypothesis ``derandomize``), so CI runs the same ones
until the code changes and never fails by chance; ``ELSPETH_HOSTILE_EXPLORE=1`` draws new ones
each run, to hunt (a failure prints the ``@reproduce_failure`` blob that repeats it).
The failing examples it found are regression tests in ``test_hostile_regressions.py``.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

from elspeth_beam.core.canonical import canonical_json, stable_hash
from elspeth_beam.plugins import sinks as sink_plugins

from hostile_files import HostileFile, hostile_files, read_back, run_cli

pytestmark = pytest.mark.hostile

RUN_ID = "hostile"
SINK_KINDS = ["csv", "jsonl", "parquet"]
TYPES = ["int", "float", "str", "bool", "date", "datetime", "int?", "float?"]
DOCUMENTED_REFUSALS = ("a Parquet file cannot hold rows without fields",)


# ---- generated pipelines ---------------------------------------------------------------------------

@st.composite
def pipelines(draw, source: HostileFile) -> dict[str, Any]:
    names = list(source.columns) or ["id"]
    column = st.sampled_from(names)
    on_error = st.sampled_from(["quarantine", "fail", "rejects"])
    sinks = {name: draw(st.sampled_from(SINK_KINDS)) for name in ("out_a", "out_b", "rejects")}
    settings_: dict[str, Any] = {
        "source": {"plugin": source.kind, "on_success": "s0", "on_validation_failure": draw(st.sampled_from(["quarantine", "rejects"])),
                   "options": {}, "split_bytes": draw(st.sampled_from([64, 4096, 1 << 26]))},
        "transforms": [], "gates": [], "aggregations": [],
        "sinks": {name: {"plugin": kind} for name, kind in sinks.items()},
    }
    if source.kind == "csv" and draw(st.booleans()):
        settings_["source"]["options"]["schema"] = draw(st.dictionaries(column, st.sampled_from(TYPES), max_size=2))
    steps = draw(st.lists(st.sampled_from(["coerce", "computed", "field_mapper"]), max_size=3))
    for i, plugin in enumerate(steps):
        settings_["transforms"].append({"name": f"t{i}", "plugin": plugin, "input": f"s{i}", "on_success": f"s{i + 1}",
                                        "on_error": draw(on_error), "options": draw(_transform_options(plugin, column))})
    last = f"s{len(steps)}"
    aggregate = draw(st.booleans())
    ends = ["out_a", ["out_a", "out_b"], "to_agg"] if aggregate else ["out_a", ["out_a", "out_b"]]
    if draw(st.booleans()):
        name = draw(column)
        settings_["gates"].append({"name": "g", "input": last, "on_error": draw(on_error),
                                   "condition": draw(st.sampled_from([f"len(str(row.get({name!r}))) > 3", f"row[{name!r}] > 0"])),
                                   "routes": {"true": draw(st.sampled_from(ends)), "false": "out_b"}})
        if aggregate and "to_agg" not in json.dumps(settings_["gates"][0]["routes"]):
            aggregate = False
        agg_input = "to_agg"
    else:
        agg_input = last
        if not aggregate:
            settings_["transforms"] and settings_["transforms"][-1].update(on_success="out_a")
            if not steps:
                settings_["source"]["on_success"] = "out_a"
    if aggregate:
        settings_["aggregations"].append({
            "name": "agg", "plugin": "batch_stats", "input": agg_input, "on_success": "out_b", "on_error": draw(on_error),
            "group_by": draw(st.lists(column, max_size=1)), "trigger": {"count": draw(st.integers(1, 3))},
            "output_mode": draw(st.sampled_from(["single", "transform", "passthrough"])),
            "options": {"fields": [draw(column)]}})
    wired = json.dumps({k: v for k, v in settings_.items() if k != "sinks"})
    settings_["sinks"] = {n: sink for n, sink in settings_["sinks"].items() if f'"{n}"' in wired}  # an unfed sink is refused
    return settings_


def _transform_options(plugin: str, column: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    if plugin == "coerce":
        return st.builds(lambda f: {"fields": f}, st.dictionaries(column, st.sampled_from(TYPES), min_size=1, max_size=2))
    if plugin == "computed":
        expressions = column.flatmap(lambda c: st.sampled_from([
            f"row[{c!r}] * 2", f"len(str(row.get({c!r})))", f"float(row.get({c!r}))", f"int(row.get({c!r})) + 1",
            f"str(row.get({c!r}))[:3]", f"round(row[{c!r}], 2)"]))
        return st.builds(lambda e: {"fields": {"v": e}}, expressions)
    return st.one_of(st.builds(lambda c, s: {"rename": {c: "renamed"}, "strict": s}, column, st.booleans()),
                     st.builds(lambda c: {"select": c}, st.lists(column, max_size=2, unique=True)),
                     st.builds(lambda c: {"drop": [c]}, column))


def _with_paths(settings_: dict[str, Any], tmp: Path, source: Path) -> dict[str, Any]:
    out = copy.deepcopy(settings_)
    out["source"]["options"]["path"] = str(source)
    for name, sink in out["sinks"].items():
        sink["options"] = {"path": str(tmp / "out" / f"{name}.{sink['plugin']}")}
    out["landscape"] = {"url": f"sqlite:///{tmp / 'landscape.db'}"}
    return out


# ---- running ------------------------------------------------------------------------------------

class SinkSpy:
    """The rows each part file was given, by the part's path (the real write happens too)."""

    def __init__(self) -> None:
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self._patches = [mock.patch.object(cls, "write_part", self._wrap(cls.write_part))
                         for cls in (sink_plugins.CsvSink, sink_plugins.JsonlSink, sink_plugins.ParquetSink)]

    def _wrap(self, write_part):
        def spied(plugin, rows, target):
            write_part(plugin, rows, target)
            self.rows[str(target)] = copy.deepcopy(rows)
        return spied

    def __enter__(self) -> SinkSpy:
        for patch in self._patches:
            patch.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for patch in self._patches:
            patch.stop()


def _one_line_reason(code: int, out: str, err: str) -> None:
    assert "Traceback" not in err and "Traceback" not in out, err[-3000:]
    assert code in (0, 1, 2), (code, err[-2000:])
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) >= 1 and lines[0].startswith("elspeth-beam:"), err
    if code == 1:
        why = [line for line in out.splitlines() if line.startswith("why ")]
        told = [line for line in err.splitlines() if line.startswith("elspeth-beam: error:")]
        assert why or told, (out, err)
        if told:  # the pipeline itself failed: only a refusal the sinks document may do that
            assert any(refusal in told[0] for refusal in DOCUMENTED_REFUSALS), told


def _pipeline_refused(code: int, err: str) -> bool:
    """A failed pipeline leaves a partial audit by design (resume completes it): not checked here."""
    return code == 1 and any(line.startswith("elspeth-beam: error:") for line in err.splitlines())


# ---- comparing what sinks hold with what they were given ------------------------------------------

def _as_held(kind: str, row: dict[str, Any], columns: list[str]) -> bytes:
    """A row as a file of ``kind`` holds it: CSV text (floats as repr, nested values as JSON),
    a Parquet row with every column (a field the row lacks is null); JSON Lines exactly."""
    if kind == "jsonl":
        return canonical_json(row)
    if kind == "csv":
        cell = lambda v: "" if v is None else json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v) if not isinstance(v, float) else repr(v)  # noqa: E731
        return canonical_json({c: cell(row.get(c)) for c in columns})
    return canonical_json({c: row.get(c) for c in columns})


def _given_hash(sink: str, row: dict[str, Any]) -> str:
    """What the Landscape hashed: the token's row — for the error sink, before it added its
    two fields (``_error``, ``_error_node``, or longer names the row left free) at the end."""
    return stable_hash(dict(list(row.items())[:-2]) if sink == "rejects" else row)


# ---- the checks ------------------------------------------------------------------------------------

def check_run(tmp: Path, source: HostileFile, settings_: dict[str, Any], spy: SinkSpy) -> None:
    url = settings_["landscape"]["url"]
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            q = lambda sql, **p: conn.execute(text(sql), {"r": RUN_ID, **p}).all()  # noqa: E731
            assert q("SELECT count(*) FROM rows WHERE run_id = :r")[0][0] == source.records
            assert q("SELECT count(*) FROM token_outcomes WHERE run_id = :r AND outcome IN ('quarantined', 'failed') "
                     "AND (error_json IS NULL OR error_json = '')")[0][0] == 0
            for name, sink in settings_["sinks"].items():
                node = f"sink:{name}"
                parts = [p for (p,) in q("SELECT path FROM artifacts WHERE run_id = :r AND sink_node_id = :n "
                                         "AND artifact_kind = 'part'", n=node)]
                given = [row for part in parts for row in spy.rows[part]]
                received = Counter(h for (h,) in q("SELECT input_hash FROM node_states WHERE run_id = :r AND node_id = :n "
                                                   "AND status = 'completed'", n=node))
                assert Counter(_given_hash(name, row) for row in given) == received, name
                held = read_back(Path(sink["options"]["path"]))
                reached = q("SELECT count(*) FROM token_outcomes WHERE run_id = :r AND sink_name = :s AND is_terminal",
                            s=name)[0][0]
                assert len(held) == len(given) == reached, name
                columns = sorted({c for row in held + given for c in row})
                kind = sink["plugin"]
                assert Counter(_as_held(kind, r, columns) for r in held) == Counter(_as_held(kind, r, columns) for r in given), name
    finally:
        engine.dispose()
    _check_read_side(tmp, source, settings_)


def _check_read_side(tmp: Path, source: HostileFile, settings_: dict[str, Any]) -> None:
    url = settings_["landscape"]["url"]
    code, out, err = run_cli("verify", RUN_ID, "-l", url)
    assert code == 0 and "Traceback" not in err, (out, err)
    for row in sorted({0, source.records - 1}) if source.records else []:
        code, out, err = run_cli("explain", RUN_ID, "-l", url, "--row", str(row))
        assert code == 0 and "Traceback" not in err, (out, err)
    for name, sink in settings_["sinks"].items():
        if read_back(Path(sink["options"]["path"])):
            code, out, err = run_cli("explain", RUN_ID, "-l", url, "--sink", name, "--line", "1")
            assert code == 0 and "Traceback" not in err, (name, out, err)
    code, out, err = run_cli("report", RUN_ID, "-l", url, "-o", str(tmp / "report.html"))
    assert code == 0 and (tmp / "report.html").stat().st_size > 0, (out, err)
    for form in ("parquet", "jsonl"):
        code, out, err = run_cli("export", RUN_ID, "-l", url, "--out", str(tmp / f"export-{form}"), "--format", form)
        assert code == 0 and "Traceback" not in err, (form, out, err)


def run_hostile(source: HostileFile, settings_: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        path = tmp / f"in.{source.kind}"
        path.write_bytes(source.data)
        full = _with_paths(settings_, tmp, path)
        (tmp / "pipeline.yaml").write_text(yaml.safe_dump(full, sort_keys=False, allow_unicode=True))
        with SinkSpy() as spy:
            code, out, err = run_cli("run", str(tmp / "pipeline.yaml"), "--run-id", RUN_ID, "--no-progress")
        _one_line_reason(code, out, err)
        event(f"{source.kind} exit {code}")
        event(f"rows: {'none' if not source.records else 'some'}")
        if code == 2 or _pipeline_refused(code, err):
            return
        check_run(tmp, source, full, spy)


@st.composite
def hostile_runs(draw) -> tuple[HostileFile, dict[str, Any]]:
    source = draw(hostile_files())
    return source, draw(pipelines(source))


@pytest.mark.filterwarnings("ignore:The recursion limit will not be reset")
@settings(max_examples=int(os.environ.get("ELSPETH_HOSTILE_EXAMPLES", "60")), deadline=None, database=None,
          derandomize=os.environ.get("ELSPETH_HOSTILE_EXPLORE") != "1", suppress_health_check=list(HealthCheck),
          print_blob=True)
@given(case=hostile_runs())
def test_hostile_files_through_generated_pipelines(case):
    run_hostile(*case)
