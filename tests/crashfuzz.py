"""Crash fuzzing: kill a run at random moments, resume it until it completes, and compare the
result with an uninterrupted run of the same input — the way Flink checks exactly-once.

    python -m tests.crashfuzz --runs 20 [--rows 20000] [--seed 7] [--workdir DIR]

The pipeline has a transform, a gate that routes large amounts to one sink and forks the rest
to a copy sink and to a count-triggered aggregation, whose flushes go to a third sink; a few
source rows are malformed (quarantined). Each iteration kills the run with SIGKILL — the
pipeline process, or separately the Landscape writer process, once the run has committed a
random number of its audit segments, or at a random crash point (``ELSPETH_FAULT``
after_rows:N / in_flush) — then kills the first resume once more, a few segments into its
work, and resumes until the run is completed. Every crash point is progress the run reports
(segment manifests in the audit log, source rows, flushes), strictly inside the run, never a
moment of wall time: a machine twice as slow crashes at the same point, and a crash that does
not happen (the run ended first) is a difference, not a pass. Checked against the
uninterrupted run:

- every sink's merged file equal as a multiset of records;
- every row's records equal, ignoring timestamps and durations: rows, tokens and their
  parents, node_states with their hashes, routing events, token outcomes, and per batch
  (aggregation, key, sequence) its final attempt's trigger, flush hashes, members and outputs
  (an interrupted attempt's failed flush and batch row are the retry rows resume adds);
- ``verify`` OK, which includes path completeness and hash-chain continuity (invariant 8).

Sink parts differ in their boundaries from run to run, so what names a part (its content hash
in a sink's node_state, an outcome's artifact and row) is compared through the merged files.
The command prints one line per iteration and a total; it exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import create_engine, inspect, text

from elspeth_beam import bench, faults
from elspeth_beam.auditlog import segments
from elspeth_beam.core.canonical import canonical_json

RUN_ID = "fuzz"
AGGREGATION = "totals"
BAD_EVERY = 997  # every so many rows, a malformed amount: quarantined at the source
POLL = 0.01  # s between looks at the audit log's folder, waiting for a kill point


def write_input(path: Path, rows: int, seed: int) -> None:
    """The bench's generated CSV, with a malformed amount now and then."""
    bench.generate(path, rows, seed=seed)
    lines = path.read_text().splitlines()
    for i in range(1, len(lines), BAD_EVERY):
        fields = lines[i].split(",")
        fields[2] = "n/a"
        lines[i] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")


def settings(data: Path, out: Path, landscape: str) -> dict[str, Any]:
    """source → computed → gate (large | fork to copy and to the aggregation) → totals."""
    raw = bench.settings(data, out, landscape)
    raw["gates"][0]["routes"] = {"true": "large", "false": ["to_batch", "copy"]}
    raw["aggregations"][0]["input"] = "to_batch"
    raw["sinks"]["copy"] = {"plugin": "jsonl", "options": {"path": str(out / "copy.jsonl")}}
    # segments of 2 000 records: a run of a few thousand rows commits many, as a large run does
    raw["landscape"]["segment_records"] = 2000
    return raw


@dataclass
class Workspace:
    """One run's folder: settings, Landscape and sink files."""

    root: Path
    data: Path

    @property
    def url(self) -> str:
        return f"sqlite:///{self.root / 'landscape.db'}"

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def settings_file(self) -> Path:
        return self.root / "pipeline.yaml"

    @property
    def audit_log(self) -> Path:
        """The run's folder of the audit log (``<root>/landscape.audit/fuzz``, beside the SQLite file)."""
        return segments.run_dir(segments.audit_log_dir(self.url), RUN_ID)

    def committed(self) -> int:
        """Segments the run has committed so far: the progress every SIGKILL is timed by."""
        return len(segments.committed(self.audit_log))

    def prepare(self) -> Workspace:
        self.root.mkdir(parents=True, exist_ok=True)
        self.settings_file.write_text(yaml.safe_dump(settings(self.data, self.out, self.url)))
        return self


# ---- running and killing ----------------------------------------------------------------------


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "elspeth_beam.cli", *args]


def _env(fault: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ELSPETH_FAULT"}
    if fault:
        env["ELSPETH_FAULT"] = fault
    return env


def start_run(ws: Workspace, fault: str | None = None) -> subprocess.Popen:
    return subprocess.Popen(_command("run", str(ws.settings_file), "--run-id", RUN_ID, "--no-progress", "--quiet"),
                            env=_env(fault), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def start_resume(ws: Workspace) -> subprocess.Popen:
    return subprocess.Popen(_command("resume", RUN_ID, "-l", ws.url, "--no-progress", "--quiet"),
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def writer_pid(parent: int) -> int | None:
    """The Landscape writer child of a pipeline process (auditlog/writer_process.py)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"elspeth_beam.auditlog.writer_process" in cmdline:
            return int(entry.name)
    return None


def kill_at_segment(ws: Workspace, proc: subprocess.Popen, count: int, target: str) -> bool:
    """SIGKILL the process (or its writer child) once the run's audit log holds ``count``
    committed segments; False if the process ended first."""
    while ws.committed() < count:
        if proc.poll() is not None:
            return False
        time.sleep(POLL)
    return _sigkill(proc, target)


def _sigkill(proc: subprocess.Popen, target: str) -> bool:
    """SIGKILL the pipeline process or its writer child; False if it is gone (polled first, so a
    finished process is reaped and never counted as killed)."""
    pid = proc.pid if target == "pipeline" else writer_pid(proc.pid)
    if pid is None or proc.poll() is not None:
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def finish(proc: subprocess.Popen, timeout: float = 900) -> tuple[int, str]:
    """Wait for the process; its exit code and the last line it wrote on stderr."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return proc.returncode, (err or "").strip().splitlines()[-1] if (err or "").strip() else ""


def run_status(ws: Workspace) -> str | None:
    """The run's status; None while the Landscape holds no record of it (killed before it began)."""
    if not (ws.root / "landscape.db").exists():
        return None
    engine = create_engine(ws.url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("runs"):
                return None
            return conn.execute(text("SELECT status FROM runs WHERE run_id = :r"), {"r": RUN_ID}).scalar()
    finally:
        engine.dispose()


@dataclass
class Crash:
    """How one iteration interrupts the run: a fault or a SIGKILL, then a kill during resume.

    Points are progress, not time: ``at_segment`` of the ``segments`` the uninterrupted run
    commits, ``fault``'s rows or flushes, and for the first resume a share of the work left,
    turned into ``resume_after`` segments when it starts (what is left depends on where the
    crash landed). Never wall time: on a machine whose speed varies, a kill after so many
    seconds can land after the run has ended and test nothing."""

    target: str  # "pipeline" | "writer" | "fault"
    segments: int = 0  # committed by the uninterrupted run: the scale of at_segment
    at_segment: int | None = None  # SIGKILL once the run has committed this many segments
    fault: str | None = None  # ELSPETH_FAULT, for target "fault"
    resume_share: float | None = None  # [0, 1): where in its first few segments to kill the first resume
    resume_after: int | None = None  # the first resume's kill point: segments it commits (set as it starts)

    def describe(self) -> str:
        return self._what() + self._during()

    def _what(self) -> str:
        if self.target == "fault":
            return self.fault or "fault"
        return f"SIGKILL {self.target} at segment {self.at_segment}/{self.segments}"

    def _during(self) -> str:
        return f", resume at +{self.resume_after} segment(s)" if self.resume_after is not None else ""


@dataclass
class Outcome:
    kills: int = 0
    resumes: int = 0
    differences: list[str] = field(default_factory=list)


def crash_and_resume(ws: Workspace, crash: Crash, max_resumes: int = 6) -> Outcome:
    """Run, crash as told, resume (killed once more if told) until the run is completed. A crash
    at a segment or a fault that does not happen is a difference: the iteration would test nothing."""
    killed, rc, err = interrupt(ws, start_run(ws, crash.fault), crash)
    if not killed:
        return Outcome(differences=[f"{crash.describe()}: no crash, the run exited {rc} first "
                                    f"({ws.committed()} segments committed){': ' + err if err else ''}"])
    if run_status(ws) is None:  # died before the run was recorded: nothing to resume, run it again
        rc, err = finish(start_run(ws))
        if rc != 0:
            return Outcome(killed, differences=[f"the run, started again, exited {rc}: {err}"])
    outcome = resume_until_completed(ws, crash, max_resumes)
    outcome.kills += killed
    return outcome


def interrupt(ws: Workspace, proc: subprocess.Popen, crash: Crash) -> tuple[bool, int, str]:
    """Crash the running ``proc`` at the crash's point and wait for it: whether it crashed
    there, its exit code and the last line it wrote on stderr."""
    if crash.target == "fault":
        rc, err = finish(proc)
        return rc == faults.EXIT_CODE, rc, err  # the fault fired
    killed = kill_at_segment(ws, proc, crash.at_segment or 1, crash.target)
    return (killed, *finish(proc))


def resume_until_completed(ws: Workspace, crash: Crash | None = None, max_resumes: int = 6) -> Outcome:
    """Resume the crashed run (the first resume SIGKILLed as ``crash`` tells) until completed. A
    first resume that finishes before its kill point is fine: no kill is counted."""
    outcome = Outcome()
    while run_status(ws) != "completed":
        if outcome.resumes >= max_resumes:
            outcome.differences.append(f"the run is still {run_status(ws)!r} after {max_resumes} resumes")
            return outcome
        outcome.resumes += 1
        committed = ws.committed()  # before it starts: what the crash left
        proc = start_resume(ws)
        if outcome.resumes == 1 and crash is not None:
            outcome.kills += kill_first_resume(ws, proc, crash, committed)
        rc, err = finish(proc)
        if rc not in (0, -signal.SIGKILL) and run_status(ws) != "completed" and "AuditWriterError" not in err:
            outcome.differences.append(f"resume exited {rc}: {err}")
            return outcome
    return outcome


def kill_first_resume(ws: Workspace, proc: subprocess.Popen, crash: Crash, committed: int) -> bool:
    """SIGKILL the first resume once it has committed ``resume_after`` new segments, drawn within
    the first sixth of the reference's segments the crash left uncommitted: a resume redoes
    work under names already committed and writes larger segments than a run, so it commits
    far fewer new ones than that count (15 after a crash at segment 8 of 79)."""
    if crash.resume_share is not None:
        crash.resume_after = 1 + int(crash.resume_share * max(1, (crash.segments - committed) // 6))
        return kill_at_segment(ws, proc, committed + crash.resume_after, "pipeline")
    return False


# ---- what must be equal -------------------------------------------------------------------------


def sink_lines(ws: Workspace) -> dict[str, Counter[bytes]]:
    """Each sink's records as canonical JSON: a row restored from a checkpoint (sorted keys)
    is the same record as the original, whatever its key order."""
    sinks = yaml.safe_load(ws.settings_file.read_text())["sinks"]
    return {name: Counter(canonical_json(json.loads(line)) for line in Path(sink["options"]["path"]).read_text().splitlines())
            for name, sink in sinks.items()}


_QUERIES = {
    "rows": "SELECT row_index, row_id, source_data_hash, payload_json FROM rows WHERE run_id = :r",
    "tokens": "SELECT token_id, row_id, branch_name, created_at_node FROM tokens WHERE run_id = :r",
    "token_parents": "SELECT tp.token_id, tp.parent_token_id, tp.ordinal FROM token_parents tp "
                     "JOIN tokens t ON t.token_id = tp.token_id WHERE t.run_id = :r",
    # a sink's output hash is its part's content hash: parts differ, the merged files are compared
    "node_states": "SELECT s.token_id, s.node_id, s.attempt, s.status, s.input_hash, "
                   "CASE WHEN n.node_type = 'sink' THEN NULL ELSE s.output_hash END, s.error_json "
                   "FROM node_states s JOIN nodes n ON n.run_id = s.run_id AND n.node_id = s.node_id "
                   "WHERE s.run_id = :r AND s.token_id IS NOT NULL",
    "routing_events": "SELECT state_id, route_label, destination, mode, reason_hash FROM routing_events WHERE run_id = :r",
    "token_outcomes": "SELECT token_id, outcome, is_terminal, node_id, sink_name, error_json, token_json "
                      "FROM token_outcomes WHERE run_id = :r",
}

# a batch by what identifies its work — its final attempt (not one an interruption closed)
_FINAL = ("FROM batches b {join} WHERE b.run_id = :r AND (b.trigger_type IS NULL OR b.trigger_type <> 'interrupted')")
_BATCH_QUERIES = {
    "batches": "SELECT b.aggregation_node_id, b.key, b.sequence, b.status, b.trigger_type, b.trigger_reason "
               + _FINAL.format(join=""),
    "flushes": "SELECT b.aggregation_node_id, b.key, b.sequence, s.status, s.input_hash, s.output_hash, s.error_json "
               + _FINAL.format(join="JOIN node_states s ON s.state_id = b.aggregation_state_id"),
    "batch_members": "SELECT b.aggregation_node_id, b.key, b.sequence, m.token_id, m.ordinal "
                     + _FINAL.format(join="JOIN batch_members m ON m.batch_id = b.batch_id"),
    "batch_outputs": "SELECT b.aggregation_node_id, b.key, b.sequence, o.token_id, o.ordinal, o.token_json "
                     + _FINAL.format(join="JOIN batch_outputs o ON o.batch_id = b.batch_id"),
}


def audit_snapshot(ws: Workspace) -> dict[str, Counter[tuple]]:
    engine = create_engine(ws.url)
    try:
        with engine.connect() as conn:
            return {name: Counter(tuple(row) for row in conn.execute(text(sql), {"r": RUN_ID}))
                    for name, sql in {**_QUERIES, **_BATCH_QUERIES}.items()}
    finally:
        engine.dispose()


def verify_problems(ws: Workspace) -> list[str]:
    from elspeth_beam.landscape.store import LandscapeStore
    from elspeth_beam.inspect.verify import verify_run

    store = LandscapeStore(ws.url, create=False)
    try:
        return verify_run(store, RUN_ID).problems
    finally:
        store.dispose()


@dataclass
class Reference:
    """What the uninterrupted run left: the yardstick of every iteration, and the scale of its
    crash points (segments committed, flushes, rows of a source split)."""

    sinks: dict[str, Counter[str]]
    audit: dict[str, Counter[tuple]]
    seconds: float
    flushes: int
    segments: int
    split_rows: int

    @classmethod
    def of(cls, ws: Workspace) -> Reference:
        t0 = time.monotonic()
        rc, err = finish(start_run(ws))
        if rc != 0:
            raise RuntimeError(f"the uninterrupted run failed ({rc}): {err}")
        seconds = time.monotonic() - t0
        audit = audit_snapshot(ws)
        problems = verify_problems(ws)
        if problems:
            raise RuntimeError(f"the uninterrupted run does not verify: {problems}")
        if ws.committed() < 2:
            raise RuntimeError(f"the uninterrupted run committed {ws.committed()} segment(s): no kill point lies inside it")
        return cls(sink_lines(ws), audit, seconds, len(audit["flushes"]), ws.committed(), largest_split(ws))


def largest_split(ws: Workspace) -> int:
    """The most rows one source split holds: ``after_rows:N`` counts the rows of a split (the
    source DoFn's ``process``), so only an N below this fires — 20 000 rows are two splits."""
    from elspeth_beam.plugins import registry
    from elspeth_beam.plugins.base import SourcePlugin

    source = yaml.safe_load(ws.settings_file.read_text())["source"]
    plugin = registry.build(SourcePlugin, source["plugin"], source["options"])
    return max(sum(1 for _ in plugin.read_split(split)) for split in plugin.splits(source["split_bytes"]))


def differences(ref: Reference, ws: Workspace) -> list[str]:
    found = [f"verify: {p}" for p in verify_problems(ws)]
    for name, lines in sink_lines(ws).items():
        found += _diff(f"sink {name}", ref.sinks[name], lines)
    audit = audit_snapshot(ws)
    for table, records in ref.audit.items():
        found += _diff(table, records, audit[table])
    return found


def _diff(what: str, want: Counter, got: Counter) -> list[str]:
    missing, extra = want - got, got - want
    if not missing and not extra:
        return []
    sample = [f"-{r}" for r in list(missing)[:2]] + [f"+{r}" for r in list(extra)[:2]]
    return [f"{what}: {sum(missing.values())} missing, {sum(extra.values())} extra, e.g. {'; '.join(map(str, sample))}"]


# ---- the command --------------------------------------------------------------------------------


def random_crash(rng: random.Random, ref: Reference) -> Crash:
    """SIGKILL of the pipeline or of the writer at a segment, or a crash point (a source row, a
    flush), each strictly inside the run; the first resume killed too."""
    target = rng.choice(("pipeline", "writer", "fault"))
    crash = Crash(target, ref.segments)
    if target == "fault":
        crash.fault = (f"after_rows:{rng.randrange(1, ref.split_rows)}" if rng.random() < 0.6
                       else f"in_flush:{AGGREGATION}:{rng.randrange(1, max(2, ref.flushes))}")
    else:
        crash.at_segment = rng.randint(*kill_range(ref.segments))
    crash.resume_share = rng.random()
    return crash


def kill_range(total: int) -> tuple[int, int]:
    """Segment counts to SIGKILL at: 10–75 % of what the whole run commits, at least 1 and below
    ``total`` — after the run has begun its work, well before its last commit (a run's segment
    count varies a little with its bundles)."""
    low = max(1, total // 10)
    return low, max(low, min(total - 1, total * 3 // 4))


def fuzz(runs: int, rows: int, seed: int, workdir: Path) -> Iterator[tuple[Crash, Outcome]]:
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "input.csv"
    write_input(data, rows, seed)
    ref = Reference.of(Workspace(workdir / "reference", data).prepare())
    print(f"reference: {rows} rows, {ref.segments} segments, {ref.flushes} flushes, {ref.seconds:.1f}s", flush=True)
    rng = random.Random(seed)
    for i in range(runs):
        crash = random_crash(rng, ref)
        ws = Workspace(workdir / f"run{i}", data).prepare()
        outcome = crash_and_resume(ws, crash)
        if not outcome.differences:
            outcome.differences = differences(ref, ws)
        yield crash, outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.crashfuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="iterations (each: a crash, a killed resume, resumes)")
    parser.add_argument("--rows", type=int, default=20_000, help="source rows of the generated input")
    parser.add_argument("--seed", type=int, default=7, help="seed of the input and of the crash points")
    parser.add_argument("--workdir", type=Path, help="keep every run's folder here (default: a temporary folder)")
    parser.add_argument("--prepare", type=Path, metavar="DIR",
                        help="only write the input and DIR/pipeline.yaml (Landscape DIR/landscape.db), to crash by hand")
    args = parser.parse_args(argv)
    if args.prepare:
        args.prepare.mkdir(parents=True, exist_ok=True)
        write_input(args.prepare / "input.csv", args.rows, args.seed)
        ws = Workspace(args.prepare.resolve(), (args.prepare / "input.csv").resolve()).prepare()
        print(f"wrote {ws.settings_file} ({args.rows} rows); its Landscape: {ws.url}")
        return 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="crashfuzz-"))
    kills = resumes = failed = 0
    for i, (crash, outcome) in enumerate(fuzz(args.runs, args.rows, args.seed, workdir)):
        kills, resumes, failed = kills + outcome.kills, resumes + outcome.resumes, failed + bool(outcome.differences)
        verdict = "equal" if not outcome.differences else f"{len(outcome.differences)} difference(s)"
        print(f"run {i:3d}  {crash.describe():<60}  kills {outcome.kills}  resumes {outcome.resumes}  {verdict}", flush=True)
        for d in outcome.differences:
            print(f"          {d}", flush=True)
    print(f"total: {args.runs} runs, {kills} kills, {resumes} resumes, {failed} with differences  ({workdir})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
