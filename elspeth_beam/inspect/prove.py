"""prove: evidence that one source row's audit records are in a run's sealed digest root.

An auditor who kept a run's root (``verify`` prints it) can be shown what happened to one row
without being given the database: the row's records as the digest hashed them, each with
its RFC 9162 audit path up to its table's root, and each table's entry with its path up to
the run's root (the layout is in ``auditlog/digest.py``). ``tools/check_proof.py`` checks
such a proof with nothing but Python's standard library.

The records of row N: its ``rows`` record, its tokens (those whose ``row_id`` is the row's —
an aggregation's output token carries its first member's row), and of those tokens their
``token_parents``, ``node_states``, their states' ``routing_events``, their
``token_outcomes`` and ``batch_members``. A record edited since the run finished still goes
into the proof as it now is, so the proof fails to check there; ``RowProof.changed`` names it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, func, tuple_
from sqlalchemy.engine import Connection, RowMapping

from elspeth_beam.auditlog import merkle
from elspeth_beam.auditlog.digest import (
    FORMAT, DigestFormatError, audit_paths, describe_key, key_columns, record_key, record_text, run_tree, table_text,
)
from elspeth_beam.core.errors import ElspethError
from elspeth_beam.landscape import schema as s
from elspeth_beam.landscape.store import LandscapeStore, run_rows

PROOF_KIND = "elspeth-beam row proof 1"
PROVED_TABLES = (s.rows, s.tokens, s.token_parents, s.node_states, s.routing_events, s.token_outcomes, s.batch_members)
"""The tables a row's proof draws its records from."""


class ProofError(ElspethError):
    """No proof can be made: no such row, a run not sealed (yet), or sealed before format 4."""


@dataclass
class RowProof:
    document: dict[str, Any]
    changed: list[str] = field(default_factory=list)  # "table key=…" of records edited since the seal

    @property
    def records(self) -> int:
        return sum(len(t["records"]) for t in self.document["tables"].values())


def prove_row(store: LandscapeStore, run_id: str, row_index: int) -> RowProof:
    """The proof of source row ``row_index``'s records in the run's root (raises ProofError)."""
    run = store.run(run_id)  # raises RunNotFoundError
    manifest = _sealed_manifest(run)
    version, tables = manifest["canonical"], manifest["tables"]
    try:
        names, top = run_tree(tables, version)
    except (KeyError, TypeError, ValueError):
        raise ProofError(f"runs.digest_manifest of run {run_id} is not a digest manifest (verify says more)") from None
    proof = RowProof({"proof": PROOF_KIND, "check": "python tools/check_proof.py PROOF ROOT",
                      "hashing": "RFC 6962 sha256: leaf H(0x00 || utf8(text)), node H(0x01 || left || right); "
                                 "audit paths as RFC 9162 2.1.3 (index, size, siblings bottom up)",
                      "run_id": run_id, "row_index": row_index, "root": run["digest_root"], "tables_in_run": len(names),
                      "tables": {}})
    with store.engine.connect() as conn:
        for table, records in _row_records(conn, run_id, row_index).items():
            at = names.index(table.name)
            proof.document["tables"][table.name] = {
                "entry": table_text(table.name, tables[table.name], version).decode(), "index": at,
                "path": [p.hex() for p in merkle.path(top, at)],
                "records": _proved(conn, run_id, table, records, tables[table.name]["columns"], version, proof.changed)}
    return proof


def _sealed_manifest(run: dict[str, Any]) -> dict[str, Any]:
    """The run's format 4 manifest, or a ProofError that says why there is none."""
    run_id = run["run_id"]
    if run["digest_root"] is None or run["digest_manifest"] is None:
        raise ProofError(f"run {run_id} is {run['status']} and not sealed: it has no digest root to prove against "
                         "(a run is sealed when it finishes; resume an interrupted one)")
    try:
        manifest = json.loads(run["digest_manifest"])
        fmt = manifest["format"]
    except (ValueError, KeyError, TypeError):
        raise ProofError(f"runs.digest_manifest of run {run_id} is not a digest manifest (verify says more)") from None
    if fmt != FORMAT:
        raise ProofError(f"run {run_id} was sealed with digest format {fmt}, before the digest was a Merkle tree "
                         f"(format {FORMAT}): verify checks it, but no inclusion proof can be made")
    tables = manifest.get("tables")
    if not (isinstance(tables, dict) and isinstance(manifest.get("canonical"), int)
            and {t.name for t in PROVED_TABLES} <= set(tables)):
        raise ProofError(f"runs.digest_manifest of run {run_id} is not a digest manifest (verify says more)")
    return manifest


def _proved(conn: Connection, run_id: str, table: Table, records: Sequence[RowMapping], columns: list[str],
            version: int, changed: list[str]) -> list[dict[str, Any]]:
    """Each record's text, position and audit path; records whose text no longer hashes to the
    sealed leaf are added to ``changed``."""
    keys = key_columns(table)
    placed = [(_position(conn, run_id, table, r), record_key([r[k] for k in keys]), record_text([r[c] for c in columns], version))
              for r in records]
    try:
        sealed = audit_paths(conn, run_id, table.name, [p for p, _, _ in placed])
    except DigestFormatError as exc:
        raise ProofError(str(exc)) from None
    out = []
    for position, key, text in placed:
        at = sealed.get(position)
        if at is None or at.key != key:
            raise ProofError(f"{table.name} record {describe_key(table.name, key)} is not where the run's digest has it: "
                             "records were added or removed since the run was sealed (verify names them)")
        if merkle.leaf_hash(text).hex() != at.leaf:
            changed.append(f"{table.name} {describe_key(table.name, key)}")
        out.append({"key": key, "record": text.decode(), "index": position, "path": [p.hex() for p in at.path]})
    return out


def _position(conn: Connection, run_id: str, table: Table, record: RowMapping) -> int:
    """The record's place in its table's primary-key order within the run (the digest's order)."""
    cols = [table.c[k] for k in key_columns(table)]
    before = tuple_(*cols) < tuple_(*(record[c.name] for c in cols)) if len(cols) > 1 else cols[0] < record[cols[0].name]
    return conn.execute(run_rows(table, run_id).order_by(None).where(before).with_only_columns(func.count())).scalar_one()


def _row_records(conn: Connection, run_id: str, row_index: int) -> dict[Table, list[RowMapping]]:
    """The row's records per table, in primary-key order; ProofError if the run has no such row."""
    def fetch(table: Table, column: str, values: list[Any]) -> list[RowMapping]:
        if not values:
            return []
        return list(conn.execute(run_rows(table, run_id).where(table.c[column].in_(values))).mappings())

    rows = list(conn.execute(run_rows(s.rows, run_id).where(s.rows.c.row_index == row_index)).mappings())
    if not rows:
        count = conn.execute(run_rows(s.rows, run_id).order_by(None).with_only_columns(func.count())).scalar_one()
        raise ProofError(f"run {run_id} has no source row {row_index} (rows are 0-based; it read {count})")
    tokens = fetch(s.tokens, "row_id", [r["row_id"] for r in rows])
    token_ids = [t["token_id"] for t in tokens]
    states = fetch(s.node_states, "token_id", token_ids)
    found = {s.rows: rows, s.tokens: tokens, s.token_parents: fetch(s.token_parents, "token_id", token_ids),
             s.node_states: states, s.routing_events: fetch(s.routing_events, "state_id", [st["state_id"] for st in states]),
             s.token_outcomes: fetch(s.token_outcomes, "token_id", token_ids),
             s.batch_members: fetch(s.batch_members, "token_id", token_ids)}
    return {table: records for table, records in found.items() if records}
