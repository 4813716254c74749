"""The benchmark's smoke run: report shape, and both variants produce the same sink rows."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_smoke_reports_both_variants_with_equal_outputs():
    proc = subprocess.run(
        [sys.executable, "-m", "elspeth_beam.cli", "bench", "--rows", "2000", "--repeat", "1", "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["rows"] == 2000
    for variant in ("plain", "audited"):
        assert report[variant]["median_wall_s"] > 0
        assert report[variant]["peak_rss_mb"] > 0
    assert report["same_sink_rows"] is True
    assert report["plain"]["sink_rows"]["large"] > 0 and report["plain"]["sink_rows"]["totals"] > 0
    assert report["audited"]["audit_rows"] > 2000 * 5  # rows, tokens, states, outcomes, batches…
    assert report["ratio_audited_over_plain"] > 0
    assert report["raw_sqlite_executemany_rows_per_s"] > 0
    floor = report["database_floor_ratio"]  # max(plain, audit rows at the raw rate) / plain
    raw_s = report["audited"]["audit_rows"] / report["raw_sqlite_executemany_rows_per_s"]
    assert floor >= 1 and abs(floor - max(1.0, raw_s / report["plain"]["median_wall_s"])) < 0.01
