"""export: a run's Landscape as typed parquet/jsonl files plus a manifest an auditor can check.

The files are checked against the database read with plain ``sqlite3`` (not through the
exporter's SQLAlchemy code): same tables, same rows in primary-key order, same values, arrow
types matching the declared SQL types, manifest counts and hashes right, no rows of another run.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import QUICKSTART, REPO, retarget
from resume_helpers import cli
from sqlalchemy import Boolean, Column, Float, Integer, MetaData, String, Table, Text, func, select

import elspeth_beam
from elspeth_beam import testing
from elspeth_beam.cli import main
from elspeth_beam.inspect import export as ex
from elspeth_beam.landscape import schema as s
from elspeth_beam.landscape.store import RUN_TABLES, LandscapeStore

ACCOUNTS = REPO / "pipelines" / "accounts.yaml"
# the declared SQLite column types and the arrow type an auditor should get for each
SQL_TO_ARROW = {"VARCHAR": pa.string(), "TEXT": pa.string(), "INTEGER": pa.int64(), "FLOAT": pa.float64(), "BOOLEAN": pa.bool_()}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """One Landscape holding an accounts run (aggregations: batches) and a later quickstart run."""
    tmp = tmp_path_factory.mktemp("export")
    url = testing.landscape_url(tmp)
    accounts = testing.run_for_test(retarget(yaml.safe_load(ACCOUNTS.read_text()), tmp / "out-a"), tmp, landscape=url)
    quick = testing.run_for_test(retarget(yaml.safe_load(QUICKSTART.read_text()), tmp / "out-q"), tmp, landscape=url)
    for run in (accounts, quick):
        testing.assert_audit_complete(run)
    return {"db": tmp / "landscape.db", "store": quick.store, "accounts": accounts.run_id, "quick": quick.run_id, "tmp": tmp}


# ---- the database, read independently ------------------------------------------------------


def _columns(conn: sqlite3.Connection, table: str) -> list[tuple[str, str, bool, int]]:
    """(name, declared type, nullable, position in primary key) per column, in table order."""
    return [(name, decl, not notnull, pk) for _, name, decl, notnull, _, pk in conn.execute(f"PRAGMA table_info({table})")]


def db_tables(db: Path) -> dict[str, list[tuple[str, str, bool, int]]]:
    with closing(sqlite3.connect(db)) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        # not records of a run: the schema version, and the ledger of audit-log segments loaded
        return {n: _columns(conn, n) for n in names if n not in ("landscape_schema", "audit_segments")}


def db_rows(db: Path, table: str, run_id: str) -> list[dict[str, Any]]:
    """One run's rows of a table in primary-key order, booleans as bool."""
    with closing(sqlite3.connect(db)) as conn:
        cols = _columns(conn, table)
        names = [c[0] for c in cols]
        pk = ", ".join(c[0] for c in sorted((c for c in cols if c[3]), key=lambda c: c[3]))
        if "run_id" in names:
            where = "run_id = ?"
        else:
            assert table == "token_parents", table
            where = "token_id IN (SELECT token_id FROM tokens WHERE run_id = ?)"
        rows = conn.execute(f"SELECT * FROM {table} WHERE {where} ORDER BY {pk}", (run_id,)).fetchall()
    booleans = {c[0] for c in cols if c[1] == "BOOLEAN"}
    return [{k: (bool(v) if k in booleans and v is not None else v) for k, v in zip(names, r)} for r in rows]


def read_export(out: Path, fmt: str, table: str) -> list[dict[str, Any]]:
    path = out / f"{table}.{fmt}"
    if fmt == "parquet":
        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text().splitlines()]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- what gets exported ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_export_is_the_runs_tables_row_for_row(two_runs, tmp_path, fmt):
    db, run_id = two_runs["db"], two_runs["accounts"]
    out = tmp_path / "audit"
    ex.export_run(two_runs["store"], run_id, out, fmt)

    tables = db_tables(db)
    assert set(tables) == {t.name for t in RUN_TABLES}  # every table of the database, none made up
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{t}.{fmt}" for t in tables] + ["manifest.json"])
    for table in tables:
        expected = db_rows(db, table, run_id)
        assert read_export(out, fmt, table) == expected, table
    # the accounts run exercises every table (batches included), so the comparison is not vacuous
    assert all(db_rows(db, t, run_id) for t in tables), {t: len(db_rows(db, t, run_id)) for t in tables}


def test_parquet_columns_carry_the_declared_types_and_nullability(two_runs, tmp_path):
    out = tmp_path / "audit"
    ex.export_run(two_runs["store"], two_runs["accounts"], out, "parquet")
    for table, cols in db_tables(two_runs["db"]).items():
        schema = pq.read_schema(out / f"{table}.parquet")
        assert schema.names == [c[0] for c in cols], table
        for name, decl, nullable, pk in cols:
            field = schema.field(name)
            assert field.type == SQL_TO_ARROW[decl.split("(")[0]], (table, name, decl, field.type)
            assert field.nullable == (nullable and not pk), (table, name)
    outcomes = pq.read_schema(out / "token_outcomes.parquet")
    assert outcomes.field("is_terminal").type == pa.bool_() and not outcomes.field("is_terminal").nullable
    assert pq.read_schema(out / "node_states.parquet").field("duration_ms").type == pa.float64()
    assert pq.read_schema(out / "runs.parquet").field("completed_at").nullable


def test_manifest_lets_an_auditor_check_the_files(two_runs, tmp_path):
    out = tmp_path / "audit"
    returned = ex.export_run(two_runs["store"], two_runs["accounts"], out, "parquet")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == json.loads(returned.model_dump_json())
    assert manifest["run_id"] == two_runs["accounts"] and manifest["run_status"] == "completed"
    assert manifest["format"] == "parquet"
    assert manifest["schema_version"] == s.SCHEMA_VERSION and manifest["elspeth_beam_version"] == elspeth_beam.__version__
    tables = db_tables(two_runs["db"])
    assert set(manifest["tables"]) == set(tables)
    for table, entry in manifest["tables"].items():
        path = out / entry["file"]
        assert entry["file"] == f"{table}.parquet"
        assert entry["rows"] == len(db_rows(two_runs["db"], table, two_runs["accounts"])) == pq.read_metadata(path).num_rows
        assert entry["sha256"] == sha256(path) and entry["bytes"] == path.stat().st_size
        assert [c["name"] for c in entry["columns"]] == [c[0] for c in tables[table]]
    assert manifest["tables"]["batches"]["rows"] > 0 and manifest["tables"]["batch_members"]["rows"] > 0


def test_an_export_holds_no_rows_of_another_run(two_runs, tmp_path):
    db, store = two_runs["db"], two_runs["store"]
    exported: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for key in ("accounts", "quick"):
        ex.export_run(store, two_runs[key], tmp_path / key, "jsonl")
        exported[key] = {t: read_export(tmp_path / key, "jsonl", t) for t in db_tables(db)}
    for key in ("accounts", "quick"):
        run_id = two_runs[key]
        tokens = {r["token_id"] for r in exported[key]["tokens"]}
        for table, rows in exported[key].items():
            if table == "token_parents":
                assert {r["token_id"] for r in rows} <= tokens
            else:
                assert {r["run_id"] for r in rows} <= {run_id}, table
    # together the two exports are the whole database: nothing lost, nothing shared
    with closing(sqlite3.connect(db)) as conn:
        for table in db_tables(db):
            total = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            assert len(exported["accounts"][table]) + len(exported["quick"][table]) == total, table


def test_parquet_and_jsonl_hold_the_same_data(two_runs, tmp_path):
    store, run_id = two_runs["store"], two_runs["quick"]
    ex.export_run(store, run_id, tmp_path / "p", "parquet")
    ex.export_run(store, run_id, tmp_path / "j", "jsonl")
    for table in RUN_TABLES:
        assert read_export(tmp_path / "p", "parquet", table.name) == read_export(tmp_path / "j", "jsonl", table.name)


def test_big_tables_stream_in_chunks_with_the_same_content(two_runs, tmp_path):
    store, run_id = two_runs["store"], two_runs["accounts"]
    ex.export_run(store, run_id, tmp_path / "whole", "parquet")
    ex.export_run(store, run_id, tmp_path / "chunked", "parquet", chunk_rows=100)
    parts = pq.ParquetFile(tmp_path / "chunked" / "token_parents.parquet")
    rows = parts.metadata.num_rows
    assert rows > 1000 and parts.num_row_groups == -(-rows // 100)  # one row group per chunk
    assert pq.ParquetFile(tmp_path / "whole" / "token_parents.parquet").num_row_groups == -(-rows // ex.CHUNK_ROWS)
    for table in RUN_TABLES:
        assert read_export(tmp_path / "whole", "parquet", table.name) == read_export(tmp_path / "chunked", "parquet", table.name)


# ---- schema-driven: new columns and tables come along --------------------------------------


def test_a_table_added_to_the_schema_is_exported_with_its_types(tmp_path, monkeypatch):
    store = LandscapeStore(testing.landscape_url(tmp_path))
    extra = Table(
        "run_digests", MetaData(),
        Column("run_id", String(64), primary_key=True),
        Column("digest", Text, nullable=False),
        Column("events", Integer),
        Column("sealed", Boolean, nullable=False),
        Column("score", Float),
    )
    extra.create(store.engine)
    with store.engine.begin() as conn:
        conn.execute(s.runs.insert().values(run_id="r1", status="completed", started_at="2026-01-01T00:00:00+00:00",
                                            settings_json="{}", settings_hash="h", runner="test", beam_options_json="{}"))
        conn.execute(extra.insert(), [{"run_id": "r1", "digest": "abc", "events": 7, "sealed": True, "score": 0.25},
                                      {"run_id": "r2", "digest": "zzz", "events": 1, "sealed": False, "score": None}])
    monkeypatch.setattr(ex, "RUN_TABLES", (*RUN_TABLES, extra))
    manifest = ex.export_run(store, "r1", tmp_path / "out", "parquet")
    got = pq.read_table(tmp_path / "out" / "run_digests.parquet")
    assert got.to_pylist() == [{"run_id": "r1", "digest": "abc", "events": 7, "sealed": True, "score": 0.25}]
    assert [(f.name, f.type, f.nullable) for f in got.schema] == [
        ("run_id", pa.string(), False), ("digest", pa.string(), False), ("events", pa.int64(), True),
        ("sealed", pa.bool_(), False), ("score", pa.float64(), True),
    ]
    assert manifest.tables["run_digests"].rows == 1


def test_a_table_without_run_id_is_refused_rather_than_leaked(tmp_path, monkeypatch):
    store = LandscapeStore(testing.landscape_url(tmp_path))
    orphan = Table("orphans", MetaData(), Column("id", String(64), primary_key=True))
    orphan.create(store.engine)
    with store.engine.begin() as conn:
        conn.execute(s.runs.insert().values(run_id="r1", status="completed", started_at="2026-01-01T00:00:00+00:00",
                                            settings_json="{}", settings_hash="h", runner="test", beam_options_json="{}"))
    monkeypatch.setattr(ex, "RUN_TABLES", (*RUN_TABLES, orphan))
    with pytest.raises(ex.ExportError, match="orphans has no run_id"):
        ex.export_run(store, "r1", tmp_path / "out", "jsonl")
    assert not (tmp_path / "out").exists() and list(tmp_path.glob(".out.export-*")) == []


def test_a_value_that_breaks_its_column_type_fails_the_export_and_leaves_nothing(tmp_path):
    store = LandscapeStore(testing.landscape_url(tmp_path))
    with store.engine.begin() as conn:
        conn.execute(s.runs.insert().values(run_id="r1", status="completed", started_at="2026-01-01T00:00:00+00:00",
                                            settings_json="{}", settings_hash="h", runner="test", beam_options_json="{}"))
        # SQLite stores text in an INTEGER column; the export must not pass it off as an int
        conn.exec_driver_sql(
            "INSERT INTO artifacts VALUES ('a1', 'r1', 'sink:x', '/x.csv', 'h', 'lots', 1, 'file', '2026-01-01')"
        )
    with pytest.raises(ex.ExportError, match="artifacts holds a value that does not fit"):
        ex.export_run(store, "r1", tmp_path / "out", "parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in tmp_path.glob("landscape.db*"))


def test_export_reads_one_snapshot_while_the_run_is_being_written(two_runs, tmp_path):
    """Rows committed by a writer after the export started are not in it (SQLite, WAL)."""
    db = tmp_path / "copy.db"
    with closing(sqlite3.connect(two_runs["db"])) as src, closing(sqlite3.connect(db)) as dst:
        src.backup(dst)
    store, writer = LandscapeStore.open_existing(str(db)), LandscapeStore.open_existing(str(db))
    count = select(func.count()).select_from(s.edges)
    with ex._snapshot(store) as conn:
        before = conn.execute(count).scalar_one()
        with writer.engine.begin() as w:
            w.execute(s.edges.insert().values(run_id="x", from_node="a", to_node="b", label="late"))
        assert conn.execute(count).scalar_one() == before
    with store.engine.connect() as conn:
        assert conn.execute(count).scalar_one() == before + 1


# ---- the command --------------------------------------------------------------------------


def test_cli_exports_the_latest_run_by_default(two_runs, tmp_path):
    out = tmp_path / "latest"
    proc = cli("export", "--landscape-url", str(two_runs["db"]), "--format", "jsonl", "--out", str(out))
    assert proc.code == 0, proc
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run_id"] == two_runs["quick"]  # started last
    assert f"exported run {two_runs['quick']}" in proc.stdout
    for entry in manifest["tables"].values():
        assert f"{entry['file']}" in proc.stdout and entry["sha256"] in proc.stdout


def test_cli_bad_run_id_exits_2_and_writes_nothing(two_runs, tmp_path, capsys):
    code = main(["export", "run-nope", "-l", str(two_runs["db"]), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "run 'run-nope' is not in the Landscape" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_a_non_empty_folder_unless_forced(two_runs, tmp_path, capsys):
    out = tmp_path / "audit"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code = main(["export", two_runs["accounts"], "-l", str(two_runs["db"]), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "is not empty" in err and "--force" in err and "Traceback" not in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]

    assert main(["export", two_runs["accounts"], "-l", str(two_runs["db"]), "--out", str(out), "--force"]) == 0
    assert (out / "notes.txt").read_text() == "mine"  # --force replaces export files only
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run_id"] == two_runs["accounts"]
    assert all(sha256(out / e["file"]) == e["sha256"] for e in manifest["tables"].values())
    assert list(tmp_path.glob(".audit.export-*")) == []


def test_cli_unwritable_target_exits_2_with_the_reason(two_runs, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    code = main(["export", "-l", str(two_runs["db"]), "--out", str(tmp_path / "a-file" / "audit")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"cannot write the export to {tmp_path / 'a-file' / 'audit'}" in err and "Traceback" not in err


@pytest.mark.postgres
def test_export_from_postgres_matches_its_tables(postgres_url, quickstart_settings, tmp_path):
    run = testing.run_for_test(quickstart_settings, tmp_path, landscape=postgres_url)
    testing.assert_audit_complete(run)
    ex.export_run(run.store, run.run_id, tmp_path / "audit", "parquet")
    for table in RUN_TABLES:
        exported = read_export(tmp_path / "audit", "parquet", table.name)
        assert exported == run.store.table_rows(table, run.run_id), table
        assert exported or table.name in ("batches", "batch_members", "batch_outputs"), table
