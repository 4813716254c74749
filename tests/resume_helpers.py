"""Helpers for the crash-and-resume tests (``test_resume*.py``).

- ``Passthrough``: a user batch plugin (passthrough mode) referenced from YAML by dotted path
  ``resume_helpers.Passthrough``; the CLI subprocesses get this folder on ``PYTHONPATH``.
- builders for the deterministic keyed input and the pipelines the crash tests run;
- ``cli()``: run ``python -m elspeth_beam.cli …`` in a subprocess and capture everything;
- readers for sink files and Landscape tables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from elspeth_beam.plugins.base import BatchPlugin, PluginOptions

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent


# ---- a user batch plugin ------------------------------------------------------------------


class PassthroughOptions(PluginOptions):
    field: str = "seen"


class Passthrough(BatchPlugin):
    """Passthrough: every row comes back unchanged plus ``field: True``.

    It adds nothing that depends on batch composition, so the sink content is the same
    whichever rows share a batch (the uninterrupted run is a faithful reference).
    """

    name = "passthrough_for_resume"
    Options = PassthroughOptions
    options: PassthroughOptions

    def process_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**row, self.options.field: True} for row in rows]


# ---- input and pipelines ------------------------------------------------------------------

KEYS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot")


def keyed_rows(keys: tuple[str, ...] = KEYS, per_key: int = 40) -> list[dict[str, Any]]:
    """Interleaved keys, each with its own sequence 0..per_key-1 and a deterministic value."""
    return [
        {"key": k, "seq": seq, "value": (seq * 7 + i * 3) % 23 + 0.5}
        for seq in range(per_key)
        for i, k in enumerate(keys)
    ]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def gate_passthrough_settings(source: Path, out_dir: Path, *, count: int = 7) -> dict[str, Any]:
    """source → gate (seq % 5 == 0 → sink ``fifths``) → passthrough aggregation (count) → ``main``."""
    return {
        "source": {"plugin": "jsonl", "on_success": "raw", "options": {"path": str(source)}},
        "gates": [
            {"name": "fifths_gate", "input": "raw", "condition": "row['seq'] % 5 == 0", "on_error": "quarantine",
             "routes": {"true": "fifths", "false": "rest"}},
        ],
        "aggregations": [
            {"name": "pass", "plugin": "resume_helpers.Passthrough", "input": "rest", "on_success": "main",
             "on_error": "quarantine", "group_by": ["key"], "trigger": {"count": count},
             "output_mode": "passthrough"},
        ],
        "sinks": {
            "main": {"plugin": "jsonl", "options": {"path": str(out_dir / "main.jsonl")}},
            "fifths": {"plugin": "jsonl", "options": {"path": str(out_dir / "fifths.jsonl")}},
        },
    }


def stats_settings(source: Path, out_dir: Path) -> dict[str, Any]:
    """source → batch_stats per key, single mode, end-of-source trigger only → ``totals``."""
    return {
        "source": {"plugin": "jsonl", "on_success": "raw", "options": {"path": str(source)}},
        "aggregations": [
            {"name": "stats", "plugin": "batch_stats", "input": "raw", "on_success": "totals",
             "on_error": "quarantine", "group_by": ["key"], "output_mode": "single",
             "options": {"fields": ["value", "seq"], "stats": ["count", "sum", "min", "max"]}},
        ],
        "sinks": {"totals": {"plugin": "jsonl", "options": {"path": str(out_dir / "totals.jsonl")}}},
    }


def write_yaml(path: Path, settings: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


# ---- the CLI in a subprocess --------------------------------------------------------------


@dataclass(repr=False)
class Proc:
    code: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"

    __repr__ = __str__  # pytest shows an assertion message's repr


def cli(*args: str, fault: str | None = None, cwd: Path | None = None, timeout: float = 180) -> Proc:
    """``python -m elspeth_beam.cli ARGS`` with this checkout and this folder importable (the
    code under test, whatever else is installed); stdout/stderr captured."""
    env = {k: v for k, v in os.environ.items() if k != "ELSPETH_FAULT"}
    paths = (str(TESTS_DIR.parent), str(TESTS_DIR), env.get("PYTHONPATH", ""))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    if fault is not None:
        env["ELSPETH_FAULT"] = fault
    done = subprocess.run(
        [sys.executable, "-m", "elspeth_beam.cli", *args],
        cwd=str(cwd or Path(tempfile.gettempdir())), env=env, capture_output=True, text=True, timeout=timeout,
    )
    return Proc(done.returncode, done.stdout, done.stderr)


# ---- reading results ----------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def canonical_records(records: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in records)


def duplicates(items: list[Any]) -> dict[Any, int]:
    return {k: n for k, n in Counter(items).items() if n > 1}


# ---- smaller audit buffers (same mechanism, reachable with small inputs) -----------------

def cli_small_buffers(*args: str, segment_records: int, fault: str | None = None, timeout: float = 180) -> Proc:
    """Like ``cli`` but with the audited DoFns' segment size lowered.

    Audited DoFns hand over a segment every ``SEGMENT_RECORDS`` records (mid bundle), which
    the audit sink commits at once; with the default (20000) a crash leaves a partly committed
    bundle only for inputs of several thousand rows. Lowering the limit in the subprocess
    reproduces the same partial commit with a small input.
    """
    code = (
        "import sys\n"
        "import elspeth_beam.auditlog.buffer as buffer\n"
        f"buffer.SEGMENT_RECORDS = {int(segment_records)}\n"
        "from elspeth_beam.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ELSPETH_FAULT"}
    paths = (str(TESTS_DIR.parent), str(TESTS_DIR), env.get("PYTHONPATH", ""))  # this checkout, as cli()
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    if fault is not None:
        env["ELSPETH_FAULT"] = fault
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=str(Path(tempfile.gettempdir())), env=env,
                          capture_output=True, text=True, timeout=timeout)
    return Proc(done.returncode, done.stdout, done.stderr)


# ---- Landscape checks (plain SQL, independent of `verify`) -------------------------------

def durable_rows(db: Path, run_id: str) -> int:
    """Source rows a crash left durable: in the Landscape, or in committed segments of the
    audit log not loaded yet (which resume loads first)."""
    from elspeth_beam.auditlog import segments

    loaded = sql(db, "SELECT COUNT(*) FROM rows WHERE run_id = ?", run_id)[0][0]
    directory = segments.run_dir(segments.audit_log_dir(f"sqlite:///{db}"), run_id)
    pending = [segments.read(m)[1] for m in segments.committed(directory)
               if not sql(db, "SELECT 1 FROM audit_segments WHERE segment_id = ?", m.stem)]
    row_ids = {r for seg in pending for r in (seg.tables.get("rows") or [()])[0]}
    stored = {r for (r,) in sql(db, "SELECT row_id FROM rows WHERE run_id = ?", run_id)}
    return loaded + len(row_ids - stored)


def sql(db: Path, query: str, *params: Any) -> list[tuple]:
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(query, params).fetchall()


def tokens_without_exactly_one_terminal(db: Path, run_id: str) -> list[tuple]:
    return sql(db, """
        SELECT t.token_id, COUNT(o.outcome_id) AS n
        FROM tokens t LEFT JOIN token_outcomes o ON o.token_id = t.token_id AND o.is_terminal
        WHERE t.run_id = ? GROUP BY t.token_id HAVING n <> 1""", run_id)


def rows_without_exactly_one_terminal(db: Path, run_id: str) -> list[tuple]:
    """Rows of a pipeline without forks take one path, so each row's own token (aggregation
    outputs of single/transform mode belong to their batch, not to one row) ends with exactly
    one terminal outcome."""
    return sql(db, """
        SELECT r.row_index, COUNT(o.outcome_id) AS n
        FROM rows r
        LEFT JOIN tokens t ON t.row_id = r.row_id AND t.created_at_node NOT LIKE 'aggregation:%'
        LEFT JOIN token_outcomes o ON o.token_id = t.token_id AND o.is_terminal
        WHERE r.run_id = ? GROUP BY r.row_id HAVING n <> 1""", run_id)


def copy_db(src: Path, dst: Path) -> Path:
    """Copy a SQLite Landscape with its WAL files (a killed writer leaves them behind)."""
    import shutil

    dst.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{src}{suffix}").exists():
            shutil.copyfile(f"{src}{suffix}", f"{dst}{suffix}")
    return dst
