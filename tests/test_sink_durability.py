"""A sink records a part only once it is durably whole (DESIGN §6, README "How the audit works").

- the part goes to a temp name, is fsynced, renamed into place, and its folder fsynced —
  all before its artifact and outcomes are recorded;
- a write that fails, or a process killed mid-part, leaves no file at the part's name and
  nothing in the Landscape pointing at it; the run's merge (after ``resume`` too) removes the
  temp files a kill left;
- every outcome's artifact is a file that exists, hashes to ``content_hash`` and holds
  ``row_count`` rows, in each format.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import QUICKSTART, retarget

import records_for_tests as rec
from elspeth_beam import testing
from elspeth_beam.config.settings import SinkSettings
from elspeth_beam.core import ids
from elspeth_beam.core.canonical import stable_hash
from elspeth_beam.auditlog.records import OutcomeRecord
from elspeth_beam.core.tokens import TokenInfo
from elspeth_beam.landscape import schema as s
from elspeth_beam.landscape.store import LandscapeStore
from elspeth_beam.pipeline import sink as sink_module
from elspeth_beam.pipeline.audit import NodeContext
from elspeth_beam.pipeline.sink import SinkDoFn, SinkWriteError

TESTS_DIR = Path(__file__).resolve().parent
RUN = "run-durability"
SOURCE = "source:source"
FORMATS = ("csv", "jsonl", "parquet")


# ---- a sink DoFn driven by hand -------------------------------------------------------------


def tokens(n: int) -> list[TokenInfo]:
    out = []
    for i in range(n):
        row_id = ids.row_id(RUN, SOURCE, i)
        out.append(TokenInfo(run_id=RUN, row_id=row_id, token_id=ids.token_id([row_id], SOURCE, 0), row_index=i,
                             row={"id": i, "name": f"name-{i}", "v": i * 0.5}))
    return out


def sink_dofn(fmt: str, out_dir: Path) -> SinkDoFn:
    settings = SinkSettings(plugin=fmt, options={"path": str(out_dir / f"out.{fmt}")})
    dofn = SinkDoFn(NodeContext(run_id=RUN, node_id="sink:out", on_error="quarantine"), "out", settings)
    dofn.setup()
    dofn.start_bundle()
    return dofn


def write_bundle(dofn: SinkDoFn, toks: list[TokenInfo]) -> list[Any]:
    """Feed one bundle and return the audit events it emits."""
    for t in toks:
        assert list(dofn.process(("completed", t, None))) == []
    return [e for out in dofn.finish_bundle() for e in rec.of_segment(out.value.value)]


def part_target(dofn: SinkDoFn, toks: list[TokenInfo]) -> Path:
    """The final name of the part holding exactly ``toks`` (named by its token ids)."""
    ordered = sorted(toks, key=lambda t: (t.row_index, t.token_id))
    return dofn.dir / f"{ids.make_id('part', [t.token_id for t in ordered])}.{dofn.plugin.extension}"


def fd_path(fd: int) -> Path:
    return Path(os.readlink(f"/proc/self/fd/{fd}"))


def temp_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob(".*") if ".tmp-" in p.name)


# ---- 1. fsync, rename, fsync, then record --------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_part_is_fsynced_renamed_and_its_folder_fsynced_before_it_is_recorded(tmp_path, monkeypatch, fmt):
    calls: list[tuple[str, Path, Path | None]] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd: int) -> None:
        calls.append(("fsync", fd_path(fd), None))
        real_fsync(fd)

    def replace(src: Any, dst: Any, *a: Any, **k: Any) -> None:
        calls.append(("rename", Path(src), Path(dst)))
        real_replace(src, dst, *a, **k)

    def rename(src: Any, dst: Any, *a: Any, **k: Any) -> None:
        calls.append(("rename", Path(src), Path(dst)))
        real_rename(src, dst, *a, **k)

    dofn = sink_dofn(fmt, tmp_path / "out")
    real_record = dofn.record
    monkeypatch.setattr(dofn, "record", lambda e: (calls.append(("record", Path(type(e).__name__), None)), real_record(e)))
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)

    toks = tokens(7)
    events = write_bundle(dofn, toks)
    target = part_target(dofn, toks)

    renames = [i for i, c in enumerate(calls) if c[0] == "rename"]
    assert len(renames) == 1, calls
    (moved,) = renames
    _, tmp, dst = calls[moved]
    assert dst == target and tmp != target and tmp.parent == target.parent  # a temp name, same folder: atomic
    file_syncs = [i for i, c in enumerate(calls) if c == ("fsync", tmp, None)]
    dir_syncs = [i for i, c in enumerate(calls) if c == ("fsync", target.parent, None)]
    records = [i for i, c in enumerate(calls) if c[0] == "record"]
    assert file_syncs and file_syncs[-1] < moved, f"the part's data must be fsynced before the rename: {calls}"
    assert dir_syncs and moved < dir_syncs[0], f"its folder must be fsynced after the rename: {calls}"
    assert records and dir_syncs[0] < records[0], f"nothing is recorded before the part is durable: {calls}"
    assert calls[records[0]][1] == Path("ArtifactRecord")
    assert len([e for e in events if isinstance(e, OutcomeRecord)]) == 7
    assert not tmp.exists() and target.exists()


# ---- 2. an interrupted write ---------------------------------------------------------------


class _DiskFull(OSError):
    pass


class _FailingHandle:
    """A text handle that writes ``budget`` chunks to disk, then fails like a full disk."""

    def __init__(self, handle: Any, budget: int) -> None:
        self._handle, self._budget = handle, budget

    def write(self, data: str) -> int:
        if self._budget == 0:
            self._handle.flush()
            raise _DiskFull(28, "No space left on device")
        self._budget -= 1
        return self._handle.write(data)

    def __enter__(self) -> "_FailingHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def _fail_mid_part(monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    """Make the plugin's writer put some rows on disk, then raise."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        real_write = pq.write_table

        def write_table(table: Any, where: Any, *a: Any, **k: Any) -> None:
            real_write(table.slice(0, table.num_rows // 2), where, *a, **k)
            raise _DiskFull(28, "No space left on device")

        monkeypatch.setattr(pq, "write_table", write_table)
        return
    real_open = Path.open

    def open_(self: Path, mode: str = "r", *a: Any, **k: Any) -> Any:
        handle = real_open(self, mode, *a, **k)
        return _FailingHandle(handle, budget=5) if "w" in mode and self.parent.parent.name.endswith(".parts") else handle

    monkeypatch.setattr(Path, "open", open_)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_write_that_fails_mid_part_leaves_no_part_and_records_nothing(tmp_path, monkeypatch, fmt):
    dofn = sink_dofn(fmt, tmp_path / "out")
    toks = tokens(40)
    _fail_mid_part(monkeypatch, fmt)
    with pytest.raises(SinkWriteError) as info:
        write_bundle(dofn, toks)
    target = part_target(dofn, toks)
    assert f"sink 'out' could not write {target}" in str(info.value)
    assert "No space left on device" in str(info.value)
    assert not target.exists(), "a part that was never whole must not be at its final name"
    assert len(dofn._audit) == 0, "nothing of the failed part is recorded"
    assert temp_files(tmp_path / "out") == [], "a write that raised removes its temp file"


# ---- 2b. a real kill mid-part, then resume --------------------------------------------------

_KILL_MID_PART = """
import os, pathlib, signal, sys
marker, after = pathlib.Path(sys.argv[1]), int(sys.argv[2])
real_open = pathlib.Path.open

class Dying:
    def __init__(self, handle, path):
        self.handle, self.path, self.writes = handle, path, 0
    def write(self, data):
        self.writes += 1
        if self.writes > after:  # rows already on disk, the part unfinished: die as a crash does
            self.handle.flush()
            marker.write_text(str(self.path))
            os.kill(os.getpid(), signal.SIGKILL)
        return self.handle.write(data)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.handle.close()
    def __getattr__(self, name):
        return getattr(self.handle, name)

def open_(self, mode="r", *a, **k):
    handle = real_open(self, mode, *a, **k)
    if "w" in mode and self.parent.parent.name.endswith(".parts") and not marker.exists():
        return Dying(handle, self)
    return handle

pathlib.Path.open = open_
from elspeth_beam.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _python(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ELSPETH_FAULT"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR.parent), str(TESTS_DIR), env.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, *args], cwd=tempfile.gettempdir(), env=env, capture_output=True, text=True,
                          timeout=300)


def _split_settings(source: Path, out: Path) -> dict[str, Any]:
    """source → gate: even ids to a jsonl sink, odd ids to a csv sink."""
    return {
        "source": {"plugin": "jsonl", "on_success": "raw", "options": {"path": str(source)}},
        "gates": [{"name": "parity", "input": "raw", "condition": "row['id'] % 2 == 0", "on_error": "quarantine",
                   "routes": {"true": "evens", "false": "odds"}}],
        "sinks": {"evens": {"plugin": "jsonl", "options": {"path": str(out / "evens.jsonl")}},
                  "odds": {"plugin": "csv", "options": {"path": str(out / "odds.csv")}}},
    }


def _artifacts(db: Path, run_id: str) -> list[dict[str, Any]]:
    store = LandscapeStore(f"sqlite:///{db}", create=False)
    try:
        return store.table_rows(s.artifacts, run_id)
    finally:
        store.dispose()


def _outcome_artifacts(db: Path, run_id: str) -> set[str]:
    store = LandscapeStore(f"sqlite:///{db}", create=False)
    try:
        return {o["artifact_id"] for o in store.table_rows(s.token_outcomes, run_id) if o["artifact_id"]}
    finally:
        store.dispose()


def test_a_kill_mid_part_leaves_no_part_and_resume_leaves_no_temp_files(tmp_path):
    rows = [{"id": i, "name": f"row {i}", "v": i * 0.25} for i in range(3000)]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out, db, marker = tmp_path / "out", tmp_path / "landscape.db", tmp_path / "killed-while-writing"
    settings = tmp_path / "pipeline.yaml"
    settings.write_text(yaml.safe_dump(_split_settings(source, out)))

    crash = _python("-c", _KILL_MID_PART, str(marker), "200", "run", str(settings), "--landscape-url", f"sqlite:///{db}",
                    "--run-id", "rid")
    assert crash.returncode == -signal.SIGKILL, crash.stderr
    written = Path(marker.read_text())
    assert written.name.startswith(".") and ".tmp-" in written.name, f"the part was written in place: {written}"
    assert written.exists() and written.stat().st_size > 0, "the kill came mid-part, rows on disk"
    final = written.with_name(written.name[1:].rsplit(".tmp-", 1)[0])
    assert not final.exists(), f"{final} is at its final name but was never whole"
    recorded = _artifacts(db, "rid")
    assert all(Path(a["path"]) not in (written, final) for a in recorded)
    for a in recorded:  # whatever the Landscape did record is whole
        assert hashlib.sha256(Path(a["path"]).read_bytes()).hexdigest() == a["content_hash"]
    assert _outcome_artifacts(db, "rid") <= {a["artifact_id"] for a in recorded}

    resume = _python("-m", "elspeth_beam.cli", "resume", "rid", "--landscape-url", f"sqlite:///{db}")
    assert resume.returncode == 0, resume.stdout + resume.stderr
    assert "verify     OK" in resume.stdout
    assert temp_files(out) == [], "resume must remove the temp files the kill left"
    evens = [json.loads(line) for line in (out / "evens.jsonl").read_text().splitlines()]
    with (out / "odds.csv").open(newline="") as handle:
        odds = list(csv.DictReader(handle))
    assert sorted(r["id"] for r in evens) == list(range(0, 3000, 2))
    assert sorted(int(r["id"]) for r in odds) == list(range(1, 3000, 2))


# ---- 3. what an outcome points at is whole --------------------------------------------------


def _rows_in(path: Path) -> list[Any]:
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


@pytest.fixture(scope="module")
def small_parts_run(tmp_path_factory) -> Iterator[testing.TestRun]:
    """The quickstart (csv, jsonl and parquet sinks) with parts of at most 40 rows, so each
    sink writes several."""
    tmp = tmp_path_factory.mktemp("parts")
    settings = retarget(yaml.safe_load(QUICKSTART.read_text()), tmp / "out")
    mp = pytest.MonkeyPatch()
    mp.setattr(sink_module, "PART_ROWS", 40)
    try:
        run = testing.run_for_test(settings, tmp, keep_parts=True)  # the parts are what it checks
    finally:
        mp.undo()
    testing.assert_audit_complete(run)
    yield run
    run.store.dispose()


def test_every_outcome_points_at_a_whole_part_in_every_format(small_parts_run):
    run = small_parts_run
    artifacts = {a["artifact_id"]: a for a in run.store.table_rows(s.artifacts, run.run_id)}
    outcomes = [o for o in run.store.table_rows(s.token_outcomes, run.run_id) if o["artifact_id"]]
    sink_states = {st["token_id"]: st for st in run.store.table_rows(s.node_states, run.run_id)
                   if st["node_id"].startswith("sink:")}
    assert {o["outcome"] for o in outcomes} == {"completed", "routed", "quarantined"}
    assert {Path(artifacts[o["artifact_id"]]["path"]).suffix for o in outcomes} == {".csv", ".jsonl", ".parquet"}

    placed: dict[str, list[int]] = {}
    for o in outcomes:
        placed.setdefault(o["artifact_id"], []).append(o["artifact_row"])
    assert any(len(rows) > 1 for rows in placed.values()) and len(placed) > 8, "several parts of several rows"
    for artifact_id, positions in placed.items():
        a = artifacts[artifact_id]
        path = Path(a["path"])
        assert a["artifact_kind"] == "part" and path.is_file(), a
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == a["content_hash"]
        assert len(data) == a["size_bytes"]
        file_rows = _rows_in(path)
        assert len(file_rows) == a["row_count"]
        assert sorted(positions) == list(range(a["row_count"])), f"{path}: outcomes place rows {sorted(positions)}"

    # a JSON Lines part holds, at each outcome's position, exactly the row its sink state hashed
    for o in outcomes:
        path = Path(artifacts[o["artifact_id"]]["path"])
        if path.suffix == ".jsonl" and o["outcome"] != "quarantined":
            row = _rows_in(path)[o["artifact_row"]]
            assert stable_hash(row) == sink_states[o["token_id"]]["input_hash"]

    merged = [a for a in artifacts.values() if a["artifact_kind"] == "merged"]
    assert len(merged) == 4
    for a in merged:
        path = Path(a["path"])
        assert hashlib.sha256(path.read_bytes()).hexdigest() == a["content_hash"]
        assert len(_rows_in(path)) == a["row_count"]
        assert a["row_count"] == sum(p["row_count"] for p in artifacts.values()
                                     if p["artifact_kind"] == "part" and p["sink_node_id"] == a["sink_node_id"])
    assert temp_files(Path(merged[0]["path"]).parent) == []
