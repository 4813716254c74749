"""Tamper evidence: the digest written at run end names any record changed, missing or added
afterwards; edited digests are caught by the root; verify checks invariant 5 and references."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import Boolean, Float, Integer, select, update

from elspeth_beam import testing
from elspeth_beam.core.canonical import CANONICAL_VERSION, canonical_json, stable_hash
from elspeth_beam.core.errors import CanonicalizationError, LandscapeError
import records_for_tests as rec
from elspeth_beam.core.enums import NodeStateStatus
from elspeth_beam.landscape import schema as s
from elspeth_beam.auditlog.digest import (
    DIGESTED_IN_PIPELINE_PROCESS,
    DIGESTED_TABLES,
    EVENT_TABLES,
    DigestFormatError,
    canonical_version,
    check_digest,
    digest_tables_apart,
    finish_run,
    key_columns,
    hashed_columns,
    record_encoder,
    record_hash,
    record_text,
    write_digest,
)
from elspeth_beam.landscape.store import LandscapeStore
from elspeth_beam.inspect.verify import verify_run

REPO = Path(__file__).resolve().parent.parent


def _settings(tmp: Path, rows: int = 16) -> dict[str, Any]:
    """source → gate (every 4th row to ``big``) → per-key count-3 aggregation → ``totals``:
    every table of the Landscape gets records, token_parents and batches included."""
    data = tmp / "in.jsonl"
    data.write_text("".join(json.dumps({"k": "ab"[i % 2], "v": i + 0.5}) + "\n" for i in range(rows)))
    return {
        "source": {"plugin": "jsonl", "on_success": "raw", "options": {"path": str(data)}},
        "gates": [{"name": "split", "input": "raw", "condition": "row['v'] % 4 < 1", "on_error": "quarantine",
                   "routes": {"true": "big", "false": "tobatch"}}],
        "aggregations": [{"name": "rollup", "plugin": "batch_stats", "input": "tobatch", "on_success": "totals",
                          "on_error": "quarantine", "group_by": ["k"], "trigger": {"count": 3},
                          "output_mode": "single", "options": {"fields": ["v"]}}],
        "sinks": {"big": {"plugin": "jsonl", "options": {"path": str(tmp / "out" / "big.jsonl")}},
                  "totals": {"plugin": "jsonl", "options": {"path": str(tmp / "out" / "totals.jsonl")}}},
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, str]:
    """One finished run; tests tamper with copies of its database."""
    tmp = tmp_path_factory.mktemp("digest")
    run = testing.run_for_test(_settings(tmp), tmp)
    testing.assert_audit_complete(run)
    run.store.dispose()
    return tmp / "landscape.db", run.run_id


def _copy(db: Path, to: Path) -> Path:
    """A consistent copy (the backup API, so nothing is left in a WAL file)."""
    src, dst = sqlite3.connect(db), sqlite3.connect(to)
    src.backup(dst)
    src.close()
    dst.close()
    return to


def _sql(db: Path, statement: str, *params: Any) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        with con:
            return con.execute(statement, params).fetchall()
    finally:
        con.close()


def _verify(db: Path, run_id: str, **kw: Any):
    store = LandscapeStore.open_existing(str(db))
    try:
        return verify_run(store, run_id, **kw)
    finally:
        store.dispose()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "elspeth_beam.cli", *args], cwd=REPO, capture_output=True, text=True)


# ---- an untouched run ---------------------------------------------------------------------------


def test_untouched_run_verifies_ok_twice_with_the_same_answer(finished, tmp_path):
    db, run_id = finished
    db = _copy(db, tmp_path / "l.db")
    first, second = _verify(db, run_id), _verify(db, run_id)
    assert first.ok, first.text()
    assert first.text() == second.text()
    root, manifest = _sql(db, "SELECT digest_root, digest_manifest FROM runs")[0]
    assert first.digest is not None and first.digest.root == root
    tables = json.loads(manifest)["tables"]
    assert set(tables) == {t.name for t in DIGESTED_TABLES}
    for name in ("rows", "tokens", "token_parents", "node_states", "routing_events", "batches", "batch_members",
                 "batch_outputs", "token_outcomes", "artifacts", "nodes", "edges", "runs"):
        assert tables[name]["count"] == _sql(db, f"SELECT COUNT(*) FROM {name}")[0][0] > 0, name
    assert _recipe_root(tables) == root  # the tree over the manifest's tables
    cli = _cli("verify", run_id, "-l", str(db))
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.startswith(f"run {run_id}: OK\n")
    assert f"  digest:  {root} (" in cli.stdout
    assert _cli("verify", run_id, "-l", str(db), "--expect-digest", root).returncode == 0


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1's Merkle Tree Hash over leaf hashes, written as the RFC defines it (the
    recipe's own, not auditlog/merkle.py's): split at the largest power of two below n."""
    if len(leaves) <= 1:
        return leaves[0] if leaves else hashlib.sha256(b"").digest()
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


def _recipe_tables(db: Path, run_id: str, fmt: int) -> dict[str, dict]:
    """The manifest's tables recomputed with sqlite3, sha256 and canonical JSON only (formats 1
    and 2 in canonical version 1, formats 3 and 4 in the current one; format 4 as a Merkle tree
    over H(0x00 ‖ record))."""
    version = 1 if fmt < 3 else CANONICAL_VERSION
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    tables = {}
    for table in DIGESTED_TABLES:
        keys = [c.name for c in table.primary_key.columns]
        where = ("WHERE token_id IN (SELECT token_id FROM tokens WHERE run_id = ?)" if table is s.token_parents
                 else "WHERE run_id = ?")
        columns = [c.name for c in table.columns if c.name not in ("digest_root", "digest_manifest")]
        entries = []
        for r in con.execute(f"SELECT * FROM {table.name} {where} ORDER BY {', '.join(keys)}", (run_id,)):
            row = {k: r[k] for k in columns}
            for c in table.columns:
                if isinstance(c.type, Boolean) and row[c.name] is not None:
                    row[c.name] = bool(row[c.name])
            cols = key_columns(table)
            key = row[cols[0]] if len(cols) == 1 else canonical_json([row[c] for c in cols], version=version).decode()
            hashed = row if fmt == 1 else [row[c] for c in columns]
            leaf = hashlib.sha256(b"\x00" + canonical_json(hashed, version=version)).hexdigest()
            entries.append([key, leaf if fmt == 4 else stable_hash(hashed, version=version)])
        root = _mth([bytes.fromhex(h) for _, h in entries]).hex() if fmt == 4 else stable_hash(entries, version=version)
        tables[table.name] = {"count": len(entries), "root": root} | ({"columns": columns} if fmt >= 2 else {})
        tables[table.name]["entries"] = entries
    con.close()
    return tables


def _recipe_root(tables: dict[str, dict]) -> str:
    """Format 4's run root: the tree over each table's entry (with its name) in name order."""
    leaves = [hashlib.sha256(b"\x00" + canonical_json({"canonical": CANONICAL_VERSION, "columns": t["columns"],
                                                         "count": t["count"], "format": 4, "root": t["root"],
                                                         "table": name})).digest() for name, t in sorted(tables.items())]
    return _mth(leaves).hex()


def test_digest_is_reproducible_from_the_documented_recipe(finished):
    """Anyone can recompute the root with sha256 and canonical JSON, from the data alone, and
    finds each table's record leaves in record_digests, 4096 to a segment."""
    db, run_id = finished
    tables = _recipe_tables(db, run_id, 4)
    stored, manifest = _sql(db, "SELECT digest_root, digest_manifest FROM runs WHERE run_id = ?", run_id)[0]
    manifest = json.loads(manifest)
    assert (manifest["format"], manifest["canonical"], manifest["segment"]) == (4, CANONICAL_VERSION, 4096)
    assert CANONICAL_VERSION == 2
    assert manifest["tables"] == {name: {k: v for k, v in t.items() if k != "entries"} for name, t in tables.items()}
    assert _recipe_root(tables) == stored
    for name, t in tables.items():
        chunks = _sql(db, "SELECT chunk, entries FROM record_digests WHERE table_name = ? ORDER BY chunk", name)
        assert [e for _, text in chunks for e in json.loads(text)] == t["entries"]
        assert [c for c, _ in chunks] == list(range(len(chunks))) and all(len(json.loads(x)) <= 4096 for _, x in chunks)


# A duration whose canonical JSON differs between the versions: version 1 wrote the double's
# exact digits (278908409818195066880), RFC 8785 its shortest ones (278908409818195070000).
BAND_FLOAT = 2.7890840981819507e20


def _with_band_float(db: Path) -> str:
    """One node_state's duration set to BAND_FLOAT (its record hashes differently per version)."""
    state_id = _sql(db, "SELECT state_id FROM node_states ORDER BY state_id LIMIT 1")[0][0]
    _sql(db, "UPDATE node_states SET duration_ms = ? WHERE state_id = ?", BAND_FLOAT, state_id)
    assert canonical_json(BAND_FLOAT, version=1) != canonical_json(BAND_FLOAT)
    return state_id


def _store_recipe_digest(db: Path, run_id: str, fmt: int) -> dict:
    """Replace the run's digest by one made with the recipe of format ``fmt``; its manifest."""
    tables = _recipe_tables(db, run_id, fmt)
    version = 1 if fmt < 3 else CANONICAL_VERSION
    _sql(db, "DELETE FROM record_digests")
    for name, entry in tables.items():
        entries = entry.pop("entries")
        for chunk, start in enumerate(range(0, len(entries), 1000)):
            _sql(db, "INSERT INTO record_digests (run_id, table_name, chunk, entries) VALUES (?, ?, ?, ?)",
                 run_id, name, chunk, canonical_json(entries[start:start + 1000], version=version).decode())
    manifest = {"format": fmt, "tables": tables} | ({"canonical": version} if fmt >= 3 else {})
    _sql(db, "UPDATE runs SET digest_manifest = ?, digest_root = ?",
         canonical_json(manifest, version=version).decode(), stable_hash(manifest, version=version))
    return manifest


@pytest.mark.parametrize("fmt", [1, 2, 3])
def test_an_older_format_digest_still_verifies_in_its_canonical_version_and_names_an_edit(finished, tmp_path, fmt):
    """Runs digested before the Merkle tree (format 4) kept flat lists: format 3 in the version
    its manifest names; before it in canonical version 1 (format 1 also each record as a column
    → value mapping). verify recomputes their hashes with their rules."""
    db, run_id = finished
    db = _copy(db, tmp_path / "l.db")
    state_id = _with_band_float(db)
    _store_recipe_digest(db, run_id, fmt)
    assert canonical_version(_run(db, run_id)) == (1 if fmt < 3 else 2)
    assert _verify(db, run_id).ok, _verify(db, run_id).problems

    _sql(db, "UPDATE node_states SET duration_ms = ? WHERE state_id = ?", BAND_FLOAT * 2, state_id)
    assert _verify(db, run_id).problems == [f"node_states: 1 record(s) changed since the run's digest: state_id={state_id}"]


def test_a_digest_hashes_in_the_version_its_manifest_names(finished, tmp_path):
    """The run's own digest (format 4, canonical 2) of a record whose bytes differ per version
    verifies and is the recipe's; a digest made with version 1 but naming version 2 does not."""
    db, run_id = finished
    db = _copy(db, tmp_path / "l.db")
    state_id = _with_band_float(db)
    store = LandscapeStore.open_existing(str(db))
    with store.engine.begin() as conn:
        root = write_digest(conn, run_id)
    store.dispose()
    assert root == _recipe_root(_recipe_tables(db, run_id, 4))  # the recipe gives the same root
    assert canonical_version(_run(db, run_id)) == 2
    assert _verify(db, run_id).ok, _verify(db, run_id).problems

    manifest = _store_recipe_digest(db, run_id, 2) | {"format": 3, "canonical": 2}  # version 1 hashes
    _sql(db, "UPDATE runs SET digest_manifest = ?, digest_root = ?", canonical_json(manifest).decode(), stable_hash(manifest))
    assert _verify(db, run_id).problems == [f"node_states: 1 record(s) changed since the run's digest: state_id={state_id}"]


def _run(db: Path, run_id: str) -> dict[str, Any]:
    store = LandscapeStore.open_existing(str(db))
    try:
        return store.run(run_id)
    finally:
        store.dispose()


def test_canonical_version_of_a_run():
    """What a verify check passes to ``stable_hash(value, version=…)`` to recompute a run's hashes."""
    assert canonical_version({"digest_manifest": None}) == CANONICAL_VERSION  # still running
    assert canonical_version({"digest_manifest": '{"format":1,"tables":{}}'}) == 1
    assert canonical_version({"digest_manifest": '{"format":2,"tables":{}}'}) == 1
    assert canonical_version({"digest_manifest": '{"canonical":2,"format":3,"tables":{}}'}) == 2
    assert canonical_version({"digest_manifest": '{"canonical":1,"format":3,"tables":{}}'}) == 1
    assert canonical_version({"digest_manifest": '{"canonical":2,"format":4,"segment":4096,"tables":{}}'}) == 2
    with pytest.raises(DigestFormatError, match="names canonical JSON version 9; this elspeth_beam reads versions 1, 2"):
        canonical_version({"digest_manifest": '{"canonical":9,"format":4,"tables":{}}'})
    with pytest.raises(DigestFormatError, match="has format 5; this elspeth_beam reads formats 1 to 4"):
        canonical_version({"digest_manifest": '{"canonical":2,"format":5,"tables":{}}'})
    for bad in ('{"format":3,"tables":{}}', '{"format":4,"tables":{}}', '{"canonical":true,"format":4}', "[1]", "not json"):
        with pytest.raises(DigestFormatError):
            canonical_version({"digest_manifest": bad})


@pytest.mark.parametrize(("manifest", "problem"), [
    ({"format": 3, "canonical": 9}, "runs.digest_manifest names canonical JSON version 9; this elspeth_beam reads versions 1, 2"),
    ({"format": 3}, "runs.digest_manifest names canonical JSON version None; this elspeth_beam reads versions 1, 2"),
    ({"format": 5, "canonical": 2}, "runs.digest_manifest has format 5; this elspeth_beam reads formats 1 to 4"),
])
def test_a_manifest_of_an_unknown_format_or_version_is_one_problem(finished, tmp_path, manifest, problem):
    db, run_id = finished
    db = _copy(db, tmp_path / "l.db")
    stored = json.loads(_sql(db, "SELECT digest_manifest FROM runs")[0][0])
    manifest = {k: v for k, v in stored.items() if k not in ("format", "canonical")} | manifest
    _sql(db, "UPDATE runs SET digest_manifest = ?, digest_root = ?", canonical_json(manifest).decode(), stable_hash(manifest))
    assert _verify(db, run_id).problems == [problem]


@given(st.lists(st.none() | st.booleans() | st.text(max_size=4) | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                | st.floats(min_value=1e15, max_value=1e22) | st.floats(min_value=1e-6, max_value=1e-3)
                | st.sampled_from([2**53 - 1, 2**53, 2**53 + 1, -2**60, 2**70, 2.0**53, 2.0**53 + 2, 1e-4, 1e16, "\x00\x1f\u2028"]),
                max_size=8))
@settings(max_examples=300, deadline=None)
def test_record_hash_fast_path_is_stable_hash_of_the_values(values):
    """The digest's shortcut past canonical_json (orjson for plain values) writes what
    canonical_json writes, per version."""
    assert record_text(values) == canonical_json(values)
    assert record_hash(values) == stable_hash(values)
    assert record_hash(values, 1) == stable_hash(values, version=1)


_FLOATS = (st.floats(allow_nan=False, allow_infinity=False) | st.floats(min_value=1e15, max_value=1e22)
           | st.floats(min_value=1e-7, max_value=1e-3) | st.sampled_from([0.0, -0.0, 1.0, 2.0**53, 1e-4, 1e16, BAND_FLOAT]))
_OTHERS = (st.none() | st.booleans() | st.text(max_size=6) | st.integers()
           | st.sampled_from([2**53, -(2**53) - 1, 2**70, "\ud800", "\x00\u2028\ue000"]))


@pytest.mark.parametrize("duration", [1.0, 0.0, -0.0, 0.5, 1e-5, 1e-6, 1e-4, 9.99e15, 1e16, 1.5e16, 2.0**53, BAND_FLOAT, None])
def test_the_seals_encoder_writes_a_states_duration_canonically(duration):
    """node_states.duration_ms, the Float column of every run: integral, tiny and huge floats
    written as canonical JSON writes them."""
    columns = hashed_columns(s.node_states)
    values = tuple(duration if c == "duration_ms" else ("x" if c != "attempt" else 1) for c in columns)
    assert record_encoder(s.node_states, columns)(values) == canonical_json(list(values))


@pytest.mark.parametrize("table", DIGESTED_TABLES, ids=lambda t: t.name)
@given(data=st.data())
@settings(max_examples=40, deadline=None)
def test_the_seals_per_table_encoder_writes_record_text(table, data):
    """The seal's and verify's encoder checks floats only in a table's Float columns: for every
    record whose floats sit there, it writes exactly ``record_text`` (canonical JSON), in
    each canonical version."""
    columns = hashed_columns(table)
    values = tuple(data.draw(st.none() | _FLOATS if isinstance(table.c[c].type, Float) else _OTHERS) for c in columns)
    def outcome(encode):
        try:
            return encode(values)
        except CanonicalizationError as exc:  # a lone surrogate has no canonical form: both refuse it
            return type(exc)

    for version in (1, CANONICAL_VERSION):
        assert outcome(record_encoder(table, columns, version)) == outcome(lambda v: record_text(v, version))


def test_record_hash_writes_rfc_8785_numbers():
    """The digest's own float shortcut had the bug canonical_json had: exact digits in 1e16..1e21."""
    import hashlib

    assert record_hash([BAND_FLOAT, 2**60 + 1]) == hashlib.sha256(b'[278908409818195070000,"1152921504606846977"]').hexdigest()
    assert record_hash([BAND_FLOAT, 2**60 + 1], 1) == hashlib.sha256(b"[278908409818195066880,1152921504606846977]").hexdigest()


# ---- tampering ----------------------------------------------------------------------------------


def test_edited_node_state_is_named_by_table_and_state_id(finished, tmp_path):
    db, run_id = finished
    db = _copy(db, tmp_path / "l.db")
    # a sink's output hash names its part file, which no later step continues: only the digest can tell
    state_id = _sql(db, "SELECT state_id FROM node_states WHERE status = 'completed' AND node_id LIKE 'sink:%' "
                        "ORDER BY state_id LIMIT 1")[0][0]
    _sql(db, "UPDATE node_states SET output_hash = ? WHERE state_id = ?", "0" * 64, state_id)

    report = _verify(db, run_id)
    assert not report.ok
    assert report.problems == [f"node_states: 1 record(s) changed since the run's digest: state_id={state_id}"]
    cli = _cli("verify", run_id, "-l", str(db))
    assert cli.returncode == 1
    assert f"  - node_states: 1 record(s) changed since the run's digest: state_id={state_id}" in cli.stdout
    assert _verify(db, run_id).problems == report.problems  # verify changes nothing


def test_deleted_record_is_missing_and_inserted_record_is_added(finished, tmp_path):
    db, run_id = finished
    db = _copy(db, tmp_path / "l.db")
    routing_id = _sql(db, "SELECT routing_id FROM routing_events ORDER BY routing_id DESC LIMIT 1")[0][0]
    _sql(db, "DELETE FROM routing_events WHERE routing_id = ?", routing_id)
    _sql(db, "INSERT INTO edges (run_id, from_node, to_node, label) VALUES (?, 'gate:split', 'sink:big', 'extra')", run_id)

    problems = _verify(db, run_id).problems
    assert f"routing_events: 1 record(s) missing since the run's digest: routing_id={routing_id}" in problems
    assert "edges: 1 record(s) added since the run's digest: from_node=gate:split to_node=sink:big label=extra" in problems
    holes = [p for p in problems if "hole(s) in a token's path" in p]  # and invariant 8 names the gap in the path
    assert len(holes) == 1 and "recorded no route" in holes[0]
    assert len(problems) == 3


def test_flipped_run_status_is_caught(finished, tmp_path):
    """The runs row is hashed with its final status: failed ↔ completed cannot be flipped."""
    db, run_id = finished
    db = _copy(db, tmp_path / "l.db")
    _sql(db, "UPDATE runs SET status = 'failed'")
    assert _verify(db, run_id).problems == [f"runs: 1 record(s) changed since the run's digest: run_id={run_id}"]


def test_record_and_its_digest_edited_together_are_caught_by_the_root(finished, tmp_path):
    db, run_id = finished
    db = _copy(db, tmp_path / "l.db")
    # a sink state: its output hash names its part, which no hash-chain check re-derives
    state_id = _sql(db, "SELECT state_id FROM node_states WHERE node_id LIKE 'sink:%' ORDER BY state_id LIMIT 1")[0][0]
    _sql(db, "UPDATE node_states SET output_hash = ? WHERE state_id = ?", "0" * 64, state_id)
    # the attacker recomputes the record's hash and rewrites its entry in record_digests
    store = LandscapeStore.open_existing(str(db))
    with store.engine.connect() as conn:
        row = dict(conn.execute(s.node_states.select().where(s.node_states.c.state_id == state_id)).mappings().one())
    store.dispose()
    chunk, text = next((c, t) for c, t in _sql(
        db, "SELECT chunk, entries FROM record_digests WHERE table_name = 'node_states' ORDER BY chunk") if state_id in t)
    leaf = hashlib.sha256(b"\x00" + record_text(list(row.values()))).hexdigest()
    entries = [[k, leaf if k == state_id else h] for k, h in json.loads(text)]
    _sql(db, "UPDATE record_digests SET entries = ? WHERE table_name = 'node_states' AND chunk = ?",
         canonical_json(entries).decode(), chunk)

    problems = _verify(db, run_id).problems
    assert problems == ["node_states: its record_digests rows no longer hash to the root in runs.digest_manifest "
                        "(the per-record digests were edited)"]

    # … and rewrites the table's root in the manifest too: the manifest no longer hashes to the root
    manifest = json.loads(_sql(db, "SELECT digest_manifest FROM runs")[0][0])
    original_root = _sql(db, "SELECT digest_root FROM runs")[0][0]
    all_entries = [e for (text_,) in _sql(db, "SELECT entries FROM record_digests WHERE table_name = 'node_states' "
                                              "ORDER BY chunk") for e in json.loads(text_)]
    manifest["tables"]["node_states"]["root"] = _mth([bytes.fromhex(h) for _, h in all_entries]).hex()
    _sql(db, "UPDATE runs SET digest_manifest = ?", canonical_json(manifest).decode())
    assert _verify(db, run_id).problems == [
        "runs.digest_manifest does not hash to runs.digest_root: the manifest was edited"]

    # … and the root itself: only the copy kept elsewhere tells
    forged = _recipe_root(manifest["tables"])
    _sql(db, "UPDATE runs SET digest_root = ?", forged)
    assert _verify(db, run_id).ok
    caught = _verify(db, run_id, expected_digest=original_root)
    assert caught.problems == [f"runs.digest_root is {forged}, not the expected {original_root}"]
    assert _cli("verify", run_id, "-l", str(db), "--expect-digest", original_root).returncode == 1


def test_a_finished_run_without_digest_is_a_problem(finished, tmp_path):
    db, run_id = finished
    db = _copy(db, tmp_path / "l.db")
    _sql(db, "UPDATE runs SET digest_root = NULL, digest_manifest = NULL")
    assert _verify(db, run_id).problems == ["the run is completed but has no digest (runs.digest_root is empty)"]


_MUTABLE = [(t, c) for t in DIGESTED_TABLES for c in t.columns
            if not (t is s.runs and c.name in ("run_id", "digest_root", "digest_manifest"))]


def _changed(value: Any, column) -> Any:
    if isinstance(column.type, Boolean):
        return int(not value)
    if value is None:
        return 7.5 if isinstance(column.type, Float) else 7 if isinstance(column.type, Integer) else "x"
    if isinstance(value, (int, float)):
        return value + 1.5 if isinstance(value, float) else value + 1
    return value + "x"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_field_change_in_any_table_is_named(finished, tmp_path_factory, data):
    db, run_id = finished
    table, column = data.draw(st.sampled_from(_MUTABLE), label="column")
    count = _sql(db, f"SELECT COUNT(*) FROM {table.name}")[0][0]
    offset = data.draw(st.integers(0, count - 1), label="record")
    copy = _copy(db, tmp_path_factory.mktemp("prop") / "l.db")
    con = sqlite3.connect(copy)
    con.row_factory = sqlite3.Row
    before = dict(con.execute(f"SELECT rowid AS rid, * FROM {table.name} ORDER BY rowid LIMIT 1 OFFSET ?", (offset,)).fetchone())
    try:
        with con:
            con.execute(f"UPDATE {table.name} SET {column.name} = ? WHERE rowid = ?",
                        (_changed(before[column.name], column), before["rid"]))
    except sqlite3.IntegrityError:
        assume(False)  # e.g. a second terminal outcome for a token: the schema refuses it already
    finally:
        con.close()
    cols = key_columns(table)
    key = str(before[cols[0]]) if len(cols) == 1 else canonical_json([before[c] for c in cols]).decode()

    store = LandscapeStore.open_existing(str(copy))
    with store.engine.connect() as conn:
        check = check_digest(conn, store.run(run_id))
    store.dispose()
    found = {tc.table: tc for tc in check.tables}
    assert table.name in found, (table.name, column.name)
    tc = found[table.name]
    if column.name in cols or column.name == "run_id" or (table is s.token_parents and column.name == "token_id"):
        assert key in tc.missing  # the record left its key (or its run)
    else:
        assert tc.changed == [key] and not tc.missing and not tc.added
    assert not tc.digests_altered


def test_digest_and_tampering_on_every_backend(landscape_url, tmp_path):
    """The same digest code on SQLite and PostgreSQL (the `postgres` suite runs the second)."""
    run = testing.run_for_test(_settings(tmp_path), tmp_path, landscape=landscape_url)
    report = testing.assert_audit_complete(run)
    assert report.digest is not None and report.digest.records > 50
    with run.store.engine.begin() as conn:
        state_id = conn.execute(select(s.node_states.c.state_id).order_by(s.node_states.c.state_id).limit(1)).scalar_one()
        conn.execute(update(s.node_states).where(s.node_states.c.state_id == state_id).values(attempt=9))
    assert verify_run(run.store, run.run_id).problems == [
        f"node_states: 1 record(s) changed since the run's digest: state_id={state_id}"]
    run.store.dispose()


# ---- life cycle ---------------------------------------------------------------------------------


def _events(run: str) -> list:
    return [
        rec.row(run_id=run, row_id="r0", source_node_id="source:source", row_index=0, source_data_hash="h" * 64),
        rec.token(run_id=run, token_id="t0", row_id="r0", created_at_node="source:source"),
        rec.node_state(run_id=run, state_id="s0", node_id="source:source", token_id="t0",
                          status=NodeStateStatus.COMPLETED, output_hash="o" * 64, duration_ms=1.25,
                          started_at="2026-01-01T00:00:00.000000Z", completed_at="2026-01-01T00:00:01.000000Z"),
    ]


def test_failed_run_is_digested_resume_reopens_and_its_finish_digests_again(tmp_path):
    store = LandscapeStore(f"sqlite:///{tmp_path / 'l.db'}")
    store.begin_run(run_id="r", settings_json="{}", settings_hash="x", runner="test", beam_options={},
                    nodes=[{"node_id": "source:source", "name": "source", "plugin_name": "csv", "node_type": "source",
                            "config_json": "{}", "config_hash": "c", "position": 0}], edges=[])
    rec.write(store, _events("r")[:2])
    assert verify_run(store, "r").digest.root is None  # running: no digest yet, and not a problem of its own
    finish_run(store, "r", "failed", {"error": "boom"})
    failed_root = store.run("r")["digest_root"]
    assert failed_root is not None

    store.reopen_run("r")
    assert store.run("r")["status"] == "running" and store.run("r")["digest_root"] is None
    assert store.table_rows(s.record_digests, "r") == []
    rec.write(store, _events("r")[2:])  # what the resumed run adds is not "added": no digest to add to
    assert "digest:  none" in verify_run(store, "r").text()
    finish_run(store, "r", "completed", {})
    report = verify_run(store, "r")
    assert report.digest.root not in (None, failed_root)
    assert [p for p in report.problems if "digest" in p] == []

    rec.write(store, [rec.token(run_id="r", token_id="t1", row_id="r0", created_at_node="source:source")])
    assert "tokens: 1 record(s) added since the run's digest: token_id=t1" in verify_run(store, "r").problems
    store.dispose()


def test_old_schema_is_refused_with_a_clear_message(finished, tmp_path):
    db, run_id = finished
    db = _copy(db, tmp_path / "l.db")
    _sql(db, "UPDATE landscape_schema SET version = 2")
    with pytest.raises(LandscapeError, match=f"has schema version 2, this elspeth_beam writes version {s.SCHEMA_VERSION}"):
        LandscapeStore(str(db))
    cli = _cli("verify", run_id, "-l", str(db))
    assert cli.returncode == 2
    assert "has schema version 2" in cli.stderr and "Traceback" not in cli.stderr


# ---- invariant 5 and referential integrity ------------------------------------------------------


def test_dangling_reference_and_token_adrift_are_problems(finished, tmp_path):
    db, run_id = finished
    db = _copy(db, tmp_path / "l.db")
    state_id = _sql(db, "SELECT state_id FROM routing_events ORDER BY routing_id LIMIT 1")[0][0]
    _sql(db, "UPDATE routing_events SET state_id = 'nowhere' WHERE state_id = ?", state_id)
    token_id, parent = _sql(db, "SELECT token_id, parent_token_id FROM token_parents ORDER BY token_id LIMIT 1")[0]
    _sql(db, "UPDATE token_parents SET parent_token_id = 'ghost' WHERE token_id = ? AND parent_token_id = ?", token_id, parent)

    problems = _verify(db, run_id).problems
    assert "1 routing_events.state_id value(s) name no node_states record of this run: nowhere" in problems
    assert "1 token_parents.parent_token_id value(s) name no tokens record of this run: ghost" in problems
    assert any(p.startswith("1 aggregation output(s) do not have exactly their batch's members as parents") and token_id in p
               for p in problems)
    # the output token still descends from the other members, so it still reaches a source row
    assert not any("do not trace back" in p for p in problems)
    _sql(db, "DELETE FROM token_parents WHERE token_id = ? AND parent_token_id <> 'ghost'", token_id)
    assert f"1 token(s) do not trace back to a source row of the run: {token_id}" in _verify(db, run_id).problems


def test_event_tables_digested_by_the_writer_process_give_the_same_root(finished, tmp_path):
    """The run's end digests the event tables in the writer process, while it verifies: the
    root is the one an in-process digest of the same records gives."""
    from elspeth_beam.auditlog.writer_process import AuditWriter

    db, run_id = finished
    stored = _sql(db, "SELECT digest_root FROM runs")[0][0]
    db = _copy(db, tmp_path / "l.db")
    store = LandscapeStore.open_existing(str(db))
    with store.engine.begin() as conn:
        assert write_digest(conn, run_id) == stored  # in this process, every table
    writer = AuditWriter()
    offloaded = writer.result(writer.submit_digest(f"sqlite:///{db}", run_id, EVENT_TABLES))
    assert set(offloaded) == set(EVENT_TABLES) and "runs" not in offloaded
    with store.engine.begin() as conn:
        assert write_digest(conn, run_id, offloaded) == stored  # its entries kept, the rest added

    # as a run ends: each process digests its share at the same time, committing as it goes
    theirs = [t for t in EVENT_TABLES if t not in DIGESTED_IN_PIPELINE_PROCESS]
    ticket = writer.submit_digest(f"sqlite:///{db}", run_id, theirs)
    mine = digest_tables_apart(store.engine, run_id, DIGESTED_IN_PIPELINE_PROCESS)
    split = {**mine, **writer.result(ticket)}
    assert set(split) == set(EVENT_TABLES) and split == offloaded
    with store.engine.begin() as conn:
        assert write_digest(conn, run_id, split) == stored
    store.dispose()
    assert _verify(db, run_id).ok
    assert len(_sql(db, "SELECT DISTINCT table_name FROM record_digests")) == len(DIGESTED_TABLES)
    assert _sql(db, "SELECT COUNT(*) FROM (SELECT table_name, chunk FROM record_digests GROUP BY 1, 2 HAVING COUNT(*) > 1)")[0][0] == 0


def test_verify_names_a_sink_part_whose_rows_are_placed_elsewhere(finished, tmp_path):
    """A runner replaying rows in new bundles would record a second part over rows whose
    outcomes already name the first: the merged file would hold them twice. verify says so."""
    db, run_id = finished
    db = _copy(db, tmp_path / "l.db")
    part = _sql(db, "SELECT artifact_id, sink_node_id, path, row_count FROM artifacts WHERE artifact_kind = 'part' LIMIT 1")[0]
    assert _verify(db, run_id).ok
    _sql(db, "INSERT INTO artifacts SELECT 'art_replayed', run_id, sink_node_id, path || '.again', content_hash, size_bytes, "
             "row_count, artifact_kind, created_at FROM artifacts WHERE artifact_id = ?", part[0])
    problems = _verify(db, run_id).problems
    assert any(p.startswith("1 sink part(s) hold rows their outcomes do not place there") and
               f"art_replayed ({part[3]} rows, 0 placed)" in p for p in problems), problems


@pytest.mark.parametrize("when", ["at submit", "at result"])
def test_a_run_digests_in_its_own_process_when_the_writer_cannot(tmp_path, monkeypatch, when):
    """The writer process's share of the digest falls back to this process, whether the
    writer is gone before the request or fails it: the run still finishes with a digest."""
    from elspeth_beam.auditlog.writer_process import AuditWriter, AuditWriterError

    def gone(*_args, **_kwargs):
        raise AuditWriterError("the audit writer process exited (code -9)")

    monkeypatch.setattr(AuditWriter, "submit_digest" if when == "at submit" else "result", gone)
    run = testing.run_for_test(_settings(tmp_path), tmp_path)
    testing.assert_audit_complete(run)
    db = tmp_path / "landscape.db"
    assert _sql(db, "SELECT digest_root IS NOT NULL FROM runs")[0][0] == 1
    assert len(_sql(db, "SELECT DISTINCT table_name FROM record_digests")) == len(DIGESTED_TABLES)
    run.store.dispose()


def test_a_large_sealed_runs_digest_is_checked_in_a_helper_process_alike(finished, tmp_path, monkeypatch):
    """From DIGEST_APART_FROM records the seal is re-hashed in a helper process beside the set
    queries: the same report, the same record named after an edit, the expected root checked."""
    from elspeth_beam.inspect import verify as verify_module

    db, run_id = finished
    db = _copy(db, tmp_path / "l.db")
    state_id = _sql(db, "SELECT state_id FROM node_states ORDER BY state_id LIMIT 1")[0][0]
    _sql(db, "UPDATE node_states SET duration_ms = duration_ms + 1 WHERE state_id = ?", state_id)
    root = _run(db, run_id)["digest_root"]
    here = _verify(db, run_id, expected_digest="0" * 64)
    started = []
    real_pool = verify_module.ProcessPoolExecutor
    monkeypatch.setattr(verify_module, "ProcessPoolExecutor", lambda *a, **k: started.append(1) or real_pool(*a, **k))
    monkeypatch.setattr(verify_module, "DIGEST_APART_FROM", 0)
    apart = _verify(db, run_id, expected_digest="0" * 64)
    assert started == [1]  # the helper did the check
    assert apart.problems == here.problems == [
        f"runs.digest_root is {root}, not the expected {'0' * 64}",
        f"node_states: 1 record(s) changed since the run's digest: state_id={state_id}",
    ]
    assert apart.digest == here.digest
