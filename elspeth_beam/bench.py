"""elspeth-beam bench: the audit's cost, measured against the same pipeline without it.

Both variants read the same generated CSV with the same plugins — source parsing and schema
coercion, a computed field, a gate, a count aggregation with ``batch_stats`` per key, JSON
Lines sinks written per bundle — on the same runner. (A) is plain Beam (``GroupIntoBatches``)
with no audit; (B) is elspeth_beam with the full audit into SQLite. Variants alternate
A B A B …, each in a fresh process (so peak RSS is its own); the report gives medians, the
median of pair-wise B/A ratios, and the raw SQLite executemany rate for the same audit rows.
"""

from __future__ import annotations

import csv
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

KEYS = 100
BATCH = 50
SPLIT_BYTES = 256 * 1024  # ~8 splits of the 100 000-row file, so a cluster reads it in parallel
SCHEMA = {"id": "int", "key": "str", "amount": "float", "category": "str"}


def generate(path: Path, rows: int, seed: int = 42) -> None:
    rng = random.Random(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "key", "amount", "category"])
        for i in range(rows):
            writer.writerow([i, f"k{rng.randrange(KEYS):03d}", f"{rng.uniform(1, 1000):.2f}", rng.choice("abcde")])


def settings(data: Path, out: Path, landscape: str) -> dict[str, Any]:
    return {
        "source": {"plugin": "csv", "on_success": "raw", "on_validation_failure": "quarantine",
                   "split_bytes": SPLIT_BYTES, "options": {"path": str(data), "schema": SCHEMA}},
        "transforms": [{"name": "fx", "plugin": "computed", "input": "raw", "on_success": "priced",
                        "on_error": "quarantine", "options": {"fields": {"amount_eur": "round(row['amount'] * 0.92, 2)"}}}],
        "gates": [{"name": "size", "input": "priced", "condition": "row['amount'] >= 900", "on_error": "quarantine",
                   "routes": {"true": "large", "false": "small"}}],
        "aggregations": [{"name": "totals", "plugin": "batch_stats", "input": "small", "on_success": "totals_out",
                          "on_error": "quarantine", "group_by": ["key"], "trigger": {"count": BATCH},
                          "output_mode": "single", "options": {"fields": ["amount_eur"]}}],
        "sinks": {"large": {"plugin": "jsonl", "options": {"path": str(out / "large.jsonl")}},
                  "totals_out": {"plugin": "jsonl", "options": {"path": str(out / "totals.jsonl")}}},
        "landscape": {"url": landscape},
    }


# ---- variant A: the same work in plain Beam -------------------------------------------------

class _ReadFn(beam.DoFn):
    """Reads one split of the source (planned by the audited pipeline's own ``PlanSplitsFn``),
    so both variants read the same splits, in parallel on a cluster."""

    def __init__(self, data: str) -> None:
        self.data = data

    def setup(self) -> None:
        from elspeth_beam.plugins.sources import CsvSource

        self.source = CsvSource(CsvSource.Options(path=self.data, schema=SCHEMA))

    def process(self, split: Any):
        for record in self.source.read_split(split):
            if record.row is not None:
                yield record.row


class _PartSinkFn(beam.DoFn):
    """Per-bundle part files through the same sink plugin (durable write included)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def setup(self) -> None:
        from elspeth_beam.plugins.sinks import JsonlSink

        self.sink = JsonlSink(JsonlSink.Options(path=self.path))

    def start_bundle(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def process(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def finish_bundle(self) -> None:
        if self.rows:
            # a uuid, not pid + count: an SDK worker runs concurrent bundles in one process, each with its own DoFn
            self.sink.write_part(self.rows, Path(f"{self.path}.parts/plain/part-{uuid.uuid4().hex}.jsonl"))


def run_plain(data: Path, out: Path, beam_args: list[str] | None = None) -> None:
    from elspeth_beam.config.settings import SourceSettings
    from elspeth_beam.pipeline.source import PlanSplitsFn
    from elspeth_beam.plugins.batch import BatchStats
    from elspeth_beam.plugins.expressions import Expression
    from elspeth_beam.plugins.transforms import Computed

    fx = Computed(Computed.Options(fields={"amount_eur": "round(row['amount'] * 0.92, 2)"}))
    condition = Expression("row['amount'] >= 900")
    stats = BatchStats(BatchStats.Options(fields=["amount_eur"]))

    def summarise(kv):
        key, rows = kv
        return [{"key": key, **r} for r in stats.process_batch(list(rows))]

    with beam.Pipeline(options=PipelineOptions(beam_args or ["--runner=FnApiRunner"])) as p:
        source = SourceSettings.model_validate(settings(data, out, "")["source"])
        rows = (p | beam.Create([None]) | "Plan" >> beam.ParDo(PlanSplitsFn(source)) | beam.Reshuffle()
                | "Read" >> beam.ParDo(_ReadFn(str(data))) | "fx" >> beam.Map(fx.process))
        large, small = rows | beam.Partition(lambda r, n: 0 if condition.evaluate(r) else 1, 2)
        large | "large" >> beam.ParDo(_PartSinkFn(str(out / "large.jsonl")))
        (small
         | beam.Map(lambda r: (r["key"], r)).with_output_types(tuple[str, dict])
         | beam.GroupIntoBatches(BATCH)
         | beam.FlatMap(summarise)
         | "totals" >> beam.ParDo(_PartSinkFn(str(out / "totals.jsonl"))))


def run_audited(data: Path, out: Path, landscape: str, beam_args: list[str] | None = None) -> dict[str, float]:
    """The audited run; its phases' wall seconds."""
    from elspeth_beam.config.loader import load_settings_dict
    from elspeth_beam.run import execute_run

    result = execute_run(load_settings_dict(settings(data, out, landscape)), beam_args=beam_args or ())
    assert result.report.ok, result.report.problems
    return result.phases


def disk_mb(landscape: str) -> dict[str, float]:
    """The audit on disk: the SQLite Landscape (with its WAL) and the audit log's segments."""
    from elspeth_beam.auditlog.segments import audit_log_dir

    database = Path(landscape.removeprefix("sqlite:///"))
    db = sum(p.stat().st_size for p in database.parent.glob(database.name + "*") if p.is_file())
    log = sum(p.stat().st_size for p in audit_log_dir(landscape).rglob("*") if p.is_file())
    return {"landscape_mb": round(db / 1e6, 1), "segments_mb": round(log / 1e6, 1)}


def _sink_rows(out: Path) -> dict[str, int]:
    """Rows per sink: the audited run's merged files (its parts are gone once it completed),
    the plain run's parts."""
    counts = {}
    for name in ("large", "totals"):
        merged = out / f"{name}.jsonl"
        files = [merged] if merged.is_file() else list(out.glob(f"{name}.jsonl.parts/**/*.jsonl"))
        counts[name] = sum(len(p.read_text().splitlines()) for p in files)
    return counts


def child(variant: str, data: Path, out: Path, landscape: str, beam_args: list[str] | None = None) -> dict[str, Any]:
    """One measured run, in its own process: wall time, peak RSS (of this process and the
    writer child: on a cluster the workers' are not counted), rows per sink."""
    from elspeth_beam.auditlog.loader import WRITE_STATS
    from elspeth_beam.auditlog.writer_process import AuditWriter

    t0 = time.perf_counter()
    phases: dict[str, float] = {}
    if variant == "plain":
        run_plain(data, out, beam_args)
    else:
        phases = run_audited(data, out, landscape, beam_args)
    wall = time.perf_counter() - t0
    # the audited variant's writer child counts too: the sum of both peaks (an upper bound)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 + AuditWriter.peak_rss_mb()
    return {"variant": variant, "wall_s": wall, "peak_rss_mb": rss, "sink_rows": _sink_rows(out),
            "writer_rows": WRITE_STATS.rows, "writer_s": WRITE_STATS.seconds, "phases": phases,
            "disk": disk_mb(landscape) if variant == "audited" else {}}


def audit_rows(landscape: str) -> int:
    from elspeth_beam.landscape.store import RUN_TABLES, LandscapeStore

    store = LandscapeStore(landscape)
    return sum(len(store.table_rows(t)) for t in RUN_TABLES)


def raw_insert_rate(landscape: str, work: Path) -> tuple[int, float]:
    """The database's own limit: the same audit rows inserted with the sqlite3 module's
    ``executemany`` (plain INSERT, one transaction, the Landscape's pragmas) into a fresh copy
    of the schema — no SQLAlchemy, no conflict handling, no Beam. Tables are read one at a
    time (as tuples) and only the inserts are timed."""
    import sqlite3

    from elspeth_beam.landscape.store import RUN_TABLES, LandscapeStore, normalize_url

    LandscapeStore(f"sqlite:///{work / 'raw.db'}").dispose()  # creates the schema
    source = sqlite3.connect(normalize_url(landscape).removeprefix("sqlite:///"))
    target = sqlite3.connect(work / "raw.db", isolation_level=None)
    target.execute("PRAGMA journal_mode=WAL")
    target.execute("PRAGMA synchronous=NORMAL")
    total, elapsed = 0, 0.0
    target.execute("BEGIN")
    for table in RUN_TABLES:
        cols = ", ".join(c.name for c in table.columns)
        rows = source.execute(f"SELECT {cols} FROM {table.name}").fetchall()
        if not rows:
            continue
        t0 = time.perf_counter()
        target.executemany(f"INSERT INTO {table.name} ({cols}) VALUES ({', '.join('?' * len(table.columns))})", rows)
        elapsed += time.perf_counter() - t0
        total += len(rows)
    t0 = time.perf_counter()
    target.execute("COMMIT")
    elapsed += time.perf_counter() - t0
    source.close()
    target.close()
    return total, total / elapsed


def database_floor_ratio(plain_s: float, audit_rows: int, raw_rate: float) -> float:
    """The lowest ratio this audit could reach on this machine: the pipeline costing nothing
    extra and the database taking every audit row at its raw rate, fully overlapped with it."""
    return max(plain_s, audit_rows / raw_rate) / plain_s


def bench(rows: int = 100_000, repeat: int = 3, beam_args: list[str] | None = None) -> dict[str, Any]:
    """``beam_args`` run both variants on another runner (default: the FnApiRunner)."""
    work = Path(tempfile.mkdtemp(prefix="elspeth-bench-"))
    data = work / "input.csv"
    generate(data, rows)
    results: dict[str, list[dict[str, Any]]] = {"plain": [], "audited": []}
    for round_ in range(repeat):
        for variant in ("plain", "audited"):
            out = work / f"{variant}-{round_}"
            landscape = f"sqlite:///{work / f'audit-{round_}.db'}"
            proc = subprocess.run(
                [sys.executable, "-m", "elspeth_beam.bench", variant, str(data), str(out), landscape, *(beam_args or [])],
                capture_output=True, text=True, check=False,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"bench variant {variant} failed:\n{proc.stderr[-2000:]}")
            results[variant].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    last_db = f"sqlite:///{work / f'audit-{repeat - 1}.db'}"
    n_audit = audit_rows(last_db)
    raw_rows, raw_rate = raw_insert_rate(last_db, work)
    ratios = [b["wall_s"] / a["wall_s"] for a, b in zip(results["plain"], results["audited"])]

    def summary(runs: list[dict[str, Any]], audit: int = 0) -> dict[str, Any]:
        wall = statistics.median(r["wall_s"] for r in runs)
        out = {"median_wall_s": round(wall, 3), "rows_per_s": round(rows / wall),
               "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1), "sink_rows": runs[-1]["sink_rows"]}
        if audit:
            writer_s = statistics.median(r["writer_s"] for r in runs)
            names = list(runs[0]["phases"])
            out |= {"audit_rows": audit, "audit_rows_per_s": round(audit / wall),
                    "writer_s": round(writer_s, 3), "writer_rows_per_s": round(runs[-1]["writer_rows"] / writer_s),
                    "phases_s": {n: round(statistics.median(r["phases"].get(n, 0.0) for r in runs), 3) for n in names},
                    "disk": runs[-1]["disk"]}
        return out

    audited = summary(results["audited"], n_audit)
    plain_s = statistics.median(r["wall_s"] for r in results["plain"])
    return {
        "rows": rows,
        "repeat": repeat,
        "plain": summary(results["plain"]),
        "audited": audited,
        "ratio_audited_over_plain": round(statistics.median(ratios), 3),
        "raw_sqlite_executemany_rows_per_s": round(raw_rate),
        "audit_sink_vs_raw": round(audited["writer_rows_per_s"] / raw_rate, 3),
        "database_floor_ratio": round(database_floor_ratio(plain_s, n_audit, raw_rate), 3),
        "same_sink_rows": results["plain"][-1]["sink_rows"] == results["audited"][-1]["sink_rows"],
        "workdir": str(work),
    }


def render(report: dict[str, Any]) -> str:
    p, a = report["plain"], report["audited"]
    return "\n".join([
        f"rows {report['rows']}, {report['repeat']} rounds (A B alternating, one process each)",
        f"{'variant':<10} {'median s':>9} {'rows/s':>9} {'audit rows/s':>13} {'peak RSS MB':>12}",
        f"{'plain':<10} {p['median_wall_s']:>9.2f} {p['rows_per_s']:>9} {'-':>13} {p['peak_rss_mb']:>12}",
        f"{'audited':<10} {a['median_wall_s']:>9.2f} {a['rows_per_s']:>9} {a['audit_rows_per_s']:>13} {a['peak_rss_mb']:>12}",
        f"ratio audited/plain (median of pairs): {report['ratio_audited_over_plain']}; "
        f"the database's floor: {report['database_floor_ratio']} (its raw rate for these audit rows, fully overlapped)",
        f"audit rows: {a['audit_rows']}; the audit sink wrote {a['writer_rows_per_s']} rows/s "
        f"({a['writer_s']:.1f}s inside its transactions); raw SQLite executemany of the same rows: "
        f"{report['raw_sqlite_executemany_rows_per_s']} rows/s (audit sink at {report['audit_sink_vs_raw']:.0%} of it)",
        f"same sink rows in both variants: {report['same_sink_rows']} {p['sink_rows']}",
        "audited run's phases (median s): " + ", ".join(f"{n} {s:.2f}" for n, s in a["phases_s"].items()),
        f"audit on disk: Landscape {a['disk']['landscape_mb']} MB + segments {a['disk']['segments_mb']} MB "
        f"({(a['disk']['landscape_mb'] + a['disk']['segments_mb']) * 100_000 / report['rows']:.0f} MB per 100 000 rows)",
    ])


if __name__ == "__main__":
    variant, data_arg, out_arg, landscape_arg = sys.argv[1:5]
    print(json.dumps(child(variant, Path(data_arg), Path(out_arg), landscape_arg, sys.argv[5:])))
