"""Tamper evidence: a digest of every audit record of a finished run.

At run end (``LandscapeStore.finish_run``) each record of the run — in every table, in
primary-key order (``run_rows``) — is hashed: ``record_hash = stable_hash([values…])``, its
values in the order of the manifest's ``columns`` for its table. Per table, the list
``[[record_key, record_hash], …]`` is stored in chunks in ``record_digests`` and its
``root = stable_hash(list)``; the manifest ``{"format": 3, "canonical": 2, "tables": {table:
{"count": n, "root": …, "columns": […]}}}`` goes to ``runs.digest_manifest`` and
``runs.digest_root = stable_hash(manifest)``. Every hash uses the canonical JSON version the
manifest names (``canonical``; ``core/canonical.py``), so an auditor knows which rules to apply.
Formats 1 and 2, still verified, imply canonical version 1; format 2 is format 3 without
``canonical``; format 1 hashed each record as a column → value mapping, which cost a third more
time.

``verify`` recomputes every record's hash and compares it with its stored entry, so an edited
record is named by table and key (changed / missing / added). Entries edited to match no longer
hash to their table's root; an edited manifest no longer hashes to the root. Only a copy of the
root kept outside the database catches someone who rewrites all three consistently.

The runs row is hashed as ``finish_run`` leaves it — final status, completed_at and summary
included — without its two digest columns. Resume re-opens a run (``reopen_run``): status back
to running, digest dropped; the resumed run's own finish digests it again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, delete, insert, select
from sqlalchemy.engine import Connection, Engine

from elspeth_beam.core.canonical import (
    CANONICAL_VERSION, VERSIONS, canonical_json, plain_json, plain_values, stable_hash,
)
from elspeth_beam.core.enums import RunStatus
from elspeth_beam.core.errors import LandscapeError
from elspeth_beam.landscape import schema as s
from elspeth_beam.landscape.store import RUN_TABLES, run_rows

FORMAT = 3  # the manifest names its canonical version; 2: canonical 1 implied; 1: also records as mappings
DIGEST_COLUMNS = ("digest_root", "digest_manifest")
"""The runs columns left out of the runs record's hash (they hold the digest itself)."""

DIGESTED_TABLES: tuple[Table, ...] = tuple(t for t in RUN_TABLES if t is not s.record_digests)
CHUNK = 1000  # entries per record_digests row
_FETCH = 5000  # rows per fetch while streaming a table

# canonical_json of a list or mapping of plain values (``plain_values``) is exactly this
# encoder's output; one instance, because json.dumps builds a new encoder per call, which
# dominated the digest's time
_json = plain_json


def key_columns(table: Table) -> list[str]:
    """The columns that name a record within its run (the primary key, less run_id)."""
    cols = [c.name for c in table.primary_key.columns]
    return [c for c in cols if c != "run_id"] or cols


def describe_key(table_name: str, key: str) -> str:
    """``state_id=abc`` / ``token_id=a parent_token_id=b``: a record's key for people."""
    table = s.metadata.tables.get(table_name)
    cols = key_columns(table) if table is not None else ["key"]
    values = json.loads(key) if len(cols) > 1 else [key]
    return " ".join(f"{c}={v}" for c, v in zip(cols, values))


def record_hash(values: Sequence[Any], version: int = CANONICAL_VERSION) -> str:
    """Formats 2 and 3: ``stable_hash`` of the record's values in its table's column order (the
    manifest lists the columns). Faster than format 1's mapping: no keys to sort or encode."""
    plain = plain_values(list(values), version)
    if plain is None:
        return stable_hash(list(values), version=version)
    return hashlib.sha256(_json(plain).encode("utf-8")).hexdigest()


def record_hash_v1(row: dict[str, Any]) -> str:
    """Format 1 (runs digested before format 2, canonical version 1): ``stable_hash`` of the
    column → value mapping."""
    plain = plain_values(list(row.values()), 1)
    if plain is None:
        return stable_hash(row, version=1)
    return hashlib.sha256(_json(dict(zip(row, plain))).encode("utf-8")).hexdigest()


def manifest_canonical_version(manifest: dict[str, Any]) -> int:
    """The canonical JSON version a digest manifest's hashes were made with: formats 1 and 2
    predate versions (1); format 3 names it. Raises DigestFormatError otherwise."""
    fmt = manifest["format"]
    if type(fmt) is int and fmt in (1, 2):
        return 1
    if type(fmt) is not int or fmt != FORMAT:
        raise DigestFormatError(f"runs.digest_manifest has format {fmt!r}; this elspeth_beam reads formats 1 to {FORMAT}")
    version = manifest.get("canonical")
    if type(version) is not int or version not in VERSIONS:
        raise DigestFormatError(
            f"runs.digest_manifest names canonical JSON version {version!r}; this elspeth_beam reads versions "
            f"{', '.join(map(str, VERSIONS))}")
    return version


def canonical_version(run_row: dict[str, Any]) -> int:
    """The canonical JSON version the run's hashes were made with, to recompute them
    (``stable_hash(value, version=canonical_version(run))``): its digest manifest's, or the
    current one for a run without a digest (still running). Raises DigestFormatError for a
    manifest that is not one (``check_digest`` reports that too)."""
    text = run_row.get("digest_manifest")
    if text is None:
        return CANONICAL_VERSION
    try:
        return manifest_canonical_version(json.loads(text))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise DigestFormatError("runs.digest_manifest is not a digest manifest") from None


def hashed_columns(table: Table) -> list[str]:
    """The columns a record's hash covers, in order (the runs row less its digest columns)."""
    return [c.name for c in table.columns if not (table is s.runs and c.name in DIGEST_COLUMNS)]


def live_records(conn: Connection, table: Table, run_id: str, fmt: int = FORMAT,
                 columns: list[str] | None = None, version: int = CANONICAL_VERSION) -> Iterator[tuple[str, str]]:
    """(record_key, record_hash) of the run's records, streamed in primary-key order;
    ``columns`` are the hashed ones and ``version`` the canonical one (the manifest's, when
    verifying)."""
    result = conn.execute(run_rows(table, run_id).execution_options(yield_per=_FETCH))
    try:
        names = list(result.keys())
        at = [names.index(c) for c in key_columns(table)]
        columns = columns or hashed_columns(table)
        hashed = [names.index(c) if c in names else _missing(table, c) for c in columns]
        for values in result:
            key = str(values[at[0]]) if len(at) == 1 else _json([values[i] for i in at])
            if fmt == 1:
                yield key, record_hash_v1(dict(zip(columns, (values[i] for i in hashed))))
            else:
                yield key, record_hash([values[i] for i in hashed], version)
    finally:
        result.close()


def _missing(table: Table, column: str) -> int:
    raise DigestFormatError(f"the digest covers {table.name}.{column}, which this Landscape's {table.name} does not have")


class DigestFormatError(LandscapeError):
    """A digest manifest this elspeth_beam cannot check against this database."""


def stored_chunks(conn: Connection, table_name: str, run_id: str) -> Iterator[str]:
    """The table's ``record_digests`` entries, chunk by chunk, as stored (JSON text)."""
    d = s.record_digests
    stmt = select(d.c.entries).where(d.c.run_id == run_id, d.c.table_name == table_name).order_by(d.c.chunk)
    result = conn.execute(stmt.execution_options(yield_per=10))
    try:
        yield from result.scalars()
    finally:
        result.close()


def parse_chunk(text: str) -> list[tuple[str, str]]:
    """A chunk's entries; an edited chunk that no longer parses has none (its table's root
    will not match, and its records show as added)."""
    try:
        entries = json.loads(text)
    except ValueError:
        return []
    if not isinstance(entries, list):
        return []
    return [(str(e[0]), str(e[1])) if isinstance(e, list) and len(e) == 2 else (str(e), "") for e in entries]


class _Root:
    """stable_hash of a table's entry list, fed as the chunks of its canonical JSON stream by."""

    def __init__(self) -> None:
        self._h = hashlib.sha256(b"[")
        self.count = 0
        self._first = True

    def add_chunk(self, text: str, count: int) -> None:
        """``text`` is the canonical JSON list of ``count`` entries: its items join the stream."""
        inner = text[1:-1]
        if inner:
            self._h.update((b"" if self._first else b",") + inner.encode("utf-8"))
            self._first = False
        self.count += count

    def entry(self) -> dict[str, Any]:
        h = self._h.copy()
        h.update(b"]")
        return {"count": self.count, "root": h.hexdigest()}


EVENT_TABLES: tuple[str, ...] = tuple(t.name for t in DIGESTED_TABLES if t not in (s.runs, s.nodes, s.edges))
"""The tables no longer written once a run's sinks are merged: digestible before it finishes,
by both processes at once (``run.execute_run``)."""

DIGESTED_IN_PIPELINE_PROCESS: tuple[str, ...] = ("rows", "tokens", "token_parents", "routing_events", "batch_members")
"""Event tables the pipeline process digests after verifying, while the writer process digests
the rest: at 100 000 rows these took 3.4 s, node_states and token_outcomes 5.4 s, and verify
with summarize 2.8 s, so both finish at about the same time."""


def digest_tables(conn: Connection, run_id: str, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Store the entries of the named tables (replacing any), in the caller's transaction;
    their manifest entries."""
    _delete_entries(conn, run_id, names)
    return {name: _table_entry(conn, name, run_id, lambda rows: conn.execute(insert(s.record_digests), rows))
            for name in names}


def digest_tables_apart(engine: Engine, run_id: str, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``digest_tables``, committing each batch of entries on its own: two processes can then
    digest different tables of a finished pipeline at once (one would hold SQLite's write lock
    for its whole digest otherwise). Entries count only once ``finish_run`` stores the manifest."""
    with engine.begin() as conn:
        _delete_entries(conn, run_id, names)

    def store(rows: list[dict[str, Any]]) -> None:
        with engine.begin() as conn:
            conn.execute(insert(s.record_digests), rows)

    with engine.connect() as reader:
        return {name: _table_entry(reader, name, run_id, store) for name in names}


def _delete_entries(conn: Connection, run_id: str, names: Sequence[str]) -> None:
    d = s.record_digests
    conn.execute(delete(d).where(d.c.run_id == run_id, d.c.table_name.in_(list(names))))


def _table_entry(conn: Connection, name: str, run_id: str, store: Callable[[list[dict[str, Any]]], Any]) -> dict[str, Any]:
    table = s.metadata.tables[name]
    return {**_write_table(conn, table, run_id, store), "columns": hashed_columns(table)}


def write_digest(conn: Connection, run_id: str, done: dict[str, dict[str, Any]] | None = None) -> str:
    """Digest the run's records inside the caller's transaction; return the root. ``done``:
    manifest entries of tables already digested (``digest_tables``), whose entries stay."""
    done = done or {}
    entries = {**done, **digest_tables(conn, run_id, [t.name for t in DIGESTED_TABLES if t.name not in done])}
    manifest = {"format": FORMAT, "canonical": CANONICAL_VERSION,
                "tables": {t.name: entries[t.name] for t in DIGESTED_TABLES}}
    digest_root = stable_hash(manifest)
    conn.execute(
        s.runs.update()
        .where(s.runs.c.run_id == run_id)
        .values(digest_root=digest_root, digest_manifest=canonical_json(manifest).decode())
    )
    return digest_root


def _write_table(conn: Connection, table: Table, run_id: str, store: Callable[[list[dict[str, Any]]], Any]) -> dict[str, Any]:
    """Store one table's entries chunk by chunk as they stream by; its manifest entry."""
    root, entries, pending, chunk = _Root(), [], [], 0
    records = live_records(conn, table, run_id)
    while True:
        entries = list(islice(records, CHUNK))
        if entries:
            text = _json(entries)
            root.add_chunk(text, len(entries))
            pending.append({"run_id": run_id, "table_name": table.name, "chunk": chunk, "entries": text})
            chunk += 1
        if pending and (len(pending) == 20 or not entries):
            store(pending)
            pending = []
        if not entries:
            return root.entry()


@dataclass
class TableCheck:
    """What differs between one table's records and their digest."""

    table: str
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    digests_altered: bool = False


@dataclass
class DigestCheck:
    root: str | None
    records: int = 0
    tables: list[TableCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def check_digest(conn: Connection, run: dict[str, Any], expected_root: str | None = None) -> DigestCheck:
    """Recompute the run's digest and say which records differ from it."""
    run_id, root, manifest_text = run["run_id"], run["digest_root"], run["digest_manifest"]
    check = DigestCheck(root)
    if expected_root is not None and expected_root.strip().lower() != (root or ""):
        check.problems.append(f"runs.digest_root is {root or '(none)'}, not the expected {expected_root}")
    if root is None or manifest_text is None:
        if run["status"] != RunStatus.RUNNING.value:
            check.problems.append(f"the run is {run['status']} but has no digest (runs.digest_root is empty)")
        return check
    try:
        manifest = json.loads(manifest_text)
        tables = manifest["tables"]
        fmt = manifest["format"]
        version = manifest_canonical_version(manifest)
        check.records = sum(int(e["count"]) for e in tables.values())
    except (ValueError, KeyError, TypeError, AttributeError):
        check.problems.append("runs.digest_manifest is not a digest manifest")
        return check
    except DigestFormatError as exc:
        check.problems.append(str(exc))
        return check
    if stable_hash(manifest, version=version) != root:
        check.problems.append("runs.digest_manifest does not hash to runs.digest_root: the manifest was edited")
    for name in sorted(set(tables) - {t.name for t in DIGESTED_TABLES}):
        check.problems.append(f"the digest names a table this Landscape does not have: {name}")
    for table in DIGESTED_TABLES:
        try:
            tc = _check_table(conn, table, run_id, tables.get(table.name), fmt, version)
        except DigestFormatError as exc:
            check.problems.append(str(exc))
            continue
        if tc.changed or tc.missing or tc.added or tc.digests_altered:
            check.tables.append(tc)
    return check


def _check_table(conn: Connection, table: Table, run_id: str, expected: dict[str, Any] | None, fmt: int,
                 version: int) -> TableCheck:
    """One streaming pass compares records with their stored entries pairwise and recomputes
    the table's root; only when records and entries disagree are the entries loaded by key to
    tell changed from missing from added."""
    tc = TableCheck(table.name)
    root, aligned = _Root(), True
    columns = expected.get("columns") if expected else None
    if columns is not None and not (isinstance(columns, list) and all(isinstance(c, str) for c in columns)):
        raise DigestFormatError(f"the digest manifest's columns of {table.name} are not a list of column names")
    live = live_records(conn, table, run_id, fmt, columns, version)
    try:
        for text in stored_chunks(conn, table.name, run_id):
            entries = parse_chunk(text)
            root.add_chunk(text, len(entries))
            if aligned:
                aligned = bool(entries) and all(next(live, None) == entry for entry in entries)
        aligned = aligned and next(live, None) is None
    finally:
        live.close()
    tc.digests_altered = expected is None or root.entry() != {"count": expected.get("count"), "root": expected.get("root")}
    if aligned:
        return tc
    stored = {key: hash_ for text in stored_chunks(conn, table.name, run_id) for key, hash_ in parse_chunk(text)}
    for key, hash_ in live_records(conn, table, run_id, fmt, columns, version):
        recorded = stored.pop(key, None)
        if recorded is None:
            tc.added.append(key)
        elif recorded != hash_:
            tc.changed.append(key)
    tc.missing = sorted(stored)
    return tc
