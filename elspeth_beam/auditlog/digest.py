"""Tamper evidence: a Merkle tree over every audit record of a finished run.

At run end (``finish_run``) the run is sealed: one root in ``runs.digest_root``
that every record reaches, so ``verify`` can name a record that changed since and ``prove``
can show one source row's records are in the root without the rest of the database. The
trees are RFC 6962's with sha256 (``auditlog/merkle.py``): a leaf ``H(0x00 ‖ d)``, a node
``H(0x01 ‖ left ‖ right)``, over n > 1 leaves split at the largest power of two below n.

Format 4, byte for byte (what an auditor recomputes; ``tools/check_proof.py`` does):

- **record**: ``d`` = the canonical JSON (``core/canonical.py``, the manifest's ``canonical``
  version; RFC 8785 numbers in version 2) of the list of the record's values in the order of
  its table's ``columns`` in the manifest, UTF-8. Its leaf is ``H(0x00 ‖ d)``.
- **segment**: a table's records in primary-key order (``run_rows``), cut into segments of
  ``SEGMENT`` = 4096 consecutive records (the last may be shorter); a segment's root is the
  tree over its records' leaves. Each segment is one ``record_digests`` row: ``chunk`` its
  number, ``entries`` the canonical JSON ``[[record_key, leaf_hex], …]``.
- **table**: its root is the tree over its segment roots, each joined as the subtree it is
  (not hashed again as a leaf). 4096 being a power of two, that is exactly the RFC 6962 tree
  over all the table's record leaves: a record's audit path is an ordinary RFC 9162
  inclusion proof (its position, the table's count) and the root does not depend on the
  segment size. An empty table's root is ``H()``.
- **run**: ``d`` of a table = canonical JSON ``{"canonical": v, "columns": […], "count": n,
  "format": 4, "root": table_root_hex, "table": name}``; the run's tree is over these
  tables' leaves ``H(0x00 ‖ d)`` in byte order of the table names, and its root, in hex, is
  ``runs.digest_root``. ``runs.digest_manifest`` holds ``{"canonical": v, "format": 4,
  "segment": 4096, "tables": {name: {"columns", "count", "root"}}}``.

``verify`` recomputes every record's leaf and compares it with its stored entry, so an edited
record is named by table and key (changed / missing / added); entries edited to match no longer
reach their table's root, an edited manifest no longer reaches ``runs.digest_root``. Only a
copy of the root kept outside the database catches someone who rewrites all three.

Older formats still verify: 3 stored ``[[record_key, sha256(d)], …]`` in chunks of 1000, a
table's root ``stable_hash`` of that whole list and ``digest_root = stable_hash(manifest)``; 2
is 3 in canonical version 1; 1 also hashed each record as a column → value mapping.

The runs row is hashed as ``finish_run`` leaves it — final status, completed_at and summary
included — without its two digest columns. Resume re-opens a run (``reopen_run``): status back
to running, digest dropped; the resumed run's own finish digests it again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import orjson
from sqlalchemy import Float, Table, delete, insert, select
from sqlalchemy.engine import Connection, Engine

from elspeth_beam.auditlog import merkle
from elspeth_beam.core.canonical import (
    CANONICAL_VERSION, VERSIONS, canonical_json, plain_json, plain_values, stable_hash,
)
from elspeth_beam.core.enums import RunStatus
from elspeth_beam.core.errors import LandscapeError
from elspeth_beam.landscape import schema as s
from elspeth_beam.landscape.store import FINAL_STATUSES, RUN_TABLES, LandscapeStore, fetch_tuples, make_engine, run_rows

FORMAT = 4  # Merkle trees; 3: flat lists, the manifest names its canonical version; 2: canonical 1 implied; 1: mappings
SEGMENT = 4096
"""Records per segment (one ``record_digests`` row). A power of two, so that each segment is
one subtree of its table's tree."""
DIGEST_COLUMNS = ("digest_root", "digest_manifest")
"""The runs columns left out of the runs record's hash (they hold the digest itself)."""

DIGESTED_TABLES: tuple[Table, ...] = tuple(t for t in RUN_TABLES if t is not s.record_digests)
_STORE_EVERY = 5  # segments per insert (about 20 000 entries, one commit in digest_tables_apart)

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


def record_key(values: Sequence[Any]) -> str:
    """A record's key as the digest stores it: its one key value, or the JSON list of them."""
    return str(values[0]) if len(values) == 1 else _json(list(values))


def record_text(values: Sequence[Any], version: int = CANONICAL_VERSION) -> bytes:
    """``d`` of a record (formats 2 to 4): the canonical JSON list of its values in its table's
    column order (the manifest lists the columns). No keys to sort or encode, unlike format 1.
    orjson writes it, a fifth of json's time (the record's encoding was the seal's largest
    cost): its text is canonical JSON's for strings, null, booleans, ints within 53 bits (it
    refuses others) and the floats ``plain_values`` lets through; any other value (a datetime,
    bytes, a Decimal) takes ``canonical_json``."""
    types = set(map(type, values))
    plain = tuple(values) if types <= _EXACT else plain_values(list(values), version) if types <= _PLAIN else None
    if plain is not None:
        try:
            return orjson.dumps(plain, option=orjson.OPT_STRICT_INTEGER)
        except orjson.JSONEncodeError:  # an int beyond 53 bits, a lone surrogate
            pass
    return canonical_json(list(values), version=version)


_EXACT = frozenset({str, int, bool, type(None)})  # orjson writes these as canonical JSON does
_PLAIN = _EXACT | {float}  # … and floats once plain_values has vetted them


def record_hash(values: Sequence[Any], version: int = CANONICAL_VERSION) -> str:
    """Formats 2 and 3: ``stable_hash`` of the record's values, ``sha256(record_text)``."""
    return hashlib.sha256(record_text(values, version)).hexdigest()


def record_hash_v1(row: dict[str, Any]) -> str:
    """Format 1 (runs digested before format 2, canonical version 1): ``stable_hash`` of the
    column → value mapping."""
    plain = plain_values(list(row.values()), 1)
    if plain is None:
        return stable_hash(row, version=1)
    return hashlib.sha256(_json(dict(zip(row, plain))).encode("utf-8")).hexdigest()


def manifest_canonical_version(manifest: dict[str, Any]) -> int:
    """The canonical JSON version a digest manifest's hashes were made with: formats 1 and 2
    predate versions (1); formats 3 and 4 name it. Raises DigestFormatError otherwise."""
    fmt = manifest["format"]
    if type(fmt) is int and fmt in (1, 2):
        return 1
    if type(fmt) is not int or fmt not in (3, FORMAT):
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
    """(record_key, entry) of the run's records, streamed in primary-key order — the entry
    ``record_digests`` holds in format ``fmt``: the leaf hash (4), the record hash (1 to 3);
    ``columns`` are the hashed ones and ``version`` the canonical one (the manifest's, when
    verifying)."""
    columns = columns or hashed_columns(table)
    if fmt == FORMAT:
        for keys, leaves in segment_leaves(conn, table, run_id, columns, version):
            yield from zip(keys, [leaf.hex() for leaf in leaves])
        return
    for keys, rows in _batches(conn, table, run_id, columns):
        if fmt == 1:
            yield from zip(keys, [record_hash_v1(dict(zip(columns, r))) for r in rows])
        else:
            yield from zip(keys, [record_hash(r, version) for r in rows])


def segment_leaves(conn: Connection, table: Table, run_id: str, columns: list[str] | None = None,
                   version: int = CANONICAL_VERSION) -> Iterator[tuple[list[str], list[bytes]]]:
    """Format 4: the keys and leaf hashes of the run's records in primary-key order, one
    segment (``SEGMENT`` records, the last fewer) at a time."""
    sha256, prefix = hashlib.sha256, merkle.LEAF
    columns = columns or hashed_columns(table)
    encode = record_encoder(table, columns, version)
    for keys, rows in _batches(conn, table, run_id, columns):
        yield keys, [sha256(prefix + encode(r)).digest() for r in rows]


def record_encoder(table: Table, columns: Sequence[str], version: int = CANONICAL_VERSION) -> Callable[[Sequence[Any]], bytes]:
    """``record_text`` for the records of ``table`` as selected in ``columns`` order, faster: a
    value of ours is a float only in a Float column (SQLite's INTEGER affinity keeps an integral
    float an integer), so only those columns need the float checks ``plain_values`` makes of
    every value; any value that fails them, or that orjson will not write (an int beyond 53
    bits, a lone surrogate, bytes), takes ``record_text``. (A float elsewhere — an edited
    record — encodes other bytes than any record that was sealed, so it is still named.)"""
    floats = tuple(i for i, c in enumerate(columns) if c in table.c and isinstance(table.c[c].type, Float))
    dumps, strict = orjson.dumps, orjson.OPT_STRICT_INTEGER

    def encode(values: Sequence[Any]) -> bytes:
        for i in floats:
            v = values[i]
            if v is not None and (type(v) is not float or v.is_integer() or not 1e-4 <= abs(v) < 1e16):
                return record_text(values, version)
        try:
            return dumps(values, option=strict)
        except (orjson.JSONEncodeError, TypeError):
            return record_text(values, version)

    return encode


def _batches(conn: Connection, table: Table, run_id: str, columns: list[str]) -> Iterator[tuple[list[str], list[Any]]]:
    """The run's records in primary-key order, ``SEGMENT`` at a time: their keys, and their
    values as selected in ``columns`` order (no per-record reshuffle)."""
    for c in columns:
        if c not in table.c:
            _missing(table, c)
    keys = key_columns(table)
    wanted = [*columns, *(k for k in keys if k not in columns)]
    at, n = [wanted.index(k) for k in keys], len(columns)
    stmt = run_rows(table, run_id).with_only_columns(*(table.c[c] for c in wanted))
    records = fetch_tuples(conn, stmt, SEGMENT)
    while rows := list(islice(records, SEGMENT)):
        if len(at) == 1:
            i = at[0]
            names = [str(r[i]) for r in rows]
        else:
            names = [_json([r[i] for i in at]) for r in rows]
        yield names, (rows if len(wanted) == n else [r[:n] for r in rows])


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
        entries = orjson.loads(text)
    except ValueError:
        return []
    if not isinstance(entries, list):
        return []
    return [(str(e[0]), str(e[1])) if isinstance(e, list) and len(e) == 2 else (str(e), "") for e in entries]


def _leaves(entries: Sequence[tuple[str, str]]) -> list[bytes]:
    """The leaf hashes of a segment's entries (raises ValueError for one that is not hex)."""
    return [bytes.fromhex(leaf) for _, leaf in entries]


class _Root:
    """Formats 1 to 3: stable_hash of a table's entry list, fed as the chunks of its canonical
    JSON stream by."""

    def __init__(self) -> None:
        self._h = hashlib.sha256(b"[")
        self.count = 0
        self._first = True

    def add_chunk(self, text: str, entries: Sequence[tuple[str, str]]) -> None:
        """``text`` is the canonical JSON list of ``entries``: its items join the stream."""
        inner = text[1:-1]
        if inner:
            self._h.update((b"" if self._first else b",") + inner.encode("utf-8"))
            self._first = False
        self.count += len(entries)

    def entry(self) -> dict[str, Any]:
        h = self._h.copy()
        h.update(b"]")
        return {"count": self.count, "root": h.hexdigest()}


class _TreeRoot:
    """Format 4: a table's root from its stored segments, one segment at a time."""

    def __init__(self) -> None:
        self._roots: list[bytes] = []
        self.count = 0
        self._broken = False

    def add_chunk(self, _text: str, entries: Sequence[tuple[str, str]]) -> list[bytes] | None:
        """Join a stored segment; its leaves (None if one is not a hash)."""
        try:
            leaves = _leaves(entries)
        except ValueError:  # an entry edited to something that is not a hash
            self._broken = True
            self.count += len(entries)
            return None
        self.add_leaves(leaves)
        return leaves

    def add_leaves(self, leaves: list[bytes]) -> None:
        """Join a stored segment already read as leaf bytes."""
        self.count += len(leaves)
        self._roots.append(merkle.root(leaves))

    def entry(self) -> dict[str, Any]:
        return {"count": self.count, "root": None if self._broken else merkle.root(self._roots).hex()}


EVENT_TABLES: tuple[str, ...] = tuple(t.name for t in DIGESTED_TABLES if t not in (s.runs, s.nodes, s.edges))
"""The tables no longer written once a run's sinks are merged: digestible before it finishes,
by both processes at once (``run.execute_run``)."""

DIGESTED_IN_PIPELINE_PROCESS: tuple[str, ...] = ()
"""Event tables the pipeline process digests after verifying, while the writer process digests
the rest from the moment verify starts: the knob that balances the two. Since the seal's
per-table encoder (2026-12-08) the writer digests every event table of the 100 000-row bench
within verify's 5 s, and the digest phase after verify went from 0.8 s to 0.0 (with
token_parents and batch_members here, as balanced before, it was 0.8). Should verify become
the shorter of the two, tables move back here."""


def digest_tables(conn: Connection, run_id: str, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Store the segments of the named tables (replacing any), in the caller's transaction;
    their manifest entries."""
    _delete_entries(conn, run_id, names)
    return {name: _table_entry(conn, name, run_id, lambda rows: conn.execute(insert(s.record_digests), rows))
            for name in names}


def digest_tables_apart(engine: Engine, run_id: str, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``digest_tables``, committing each batch of segments on its own: two processes can then
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


def table_text(name: str, entry: dict[str, Any], version: int = CANONICAL_VERSION) -> bytes:
    """``d`` of a table in the run's tree (format 4): its manifest entry and its name."""
    return canonical_json({"canonical": version, "columns": entry["columns"], "count": entry["count"],
                           "format": FORMAT, "root": entry["root"], "table": name}, version=version)


def run_tree(tables: dict[str, dict[str, Any]], version: int = CANONICAL_VERSION) -> tuple[list[str], list[list[bytes]]]:
    """The run's tree over its tables' leaves (format 4): the table names in the leaves' order,
    and the tree's levels."""
    names = sorted(tables)
    return names, merkle.levels([merkle.leaf_hash(table_text(n, tables[n], version)) for n in names])


def run_root(tables: dict[str, dict[str, Any]], version: int = CANONICAL_VERSION) -> str:
    """``runs.digest_root`` in format 4: the root of ``run_tree``, in hex."""
    return merkle.root(run_tree(tables, version)[1][0]).hex()


def finish_run(store: LandscapeStore, run_id: str, status: str, summary: dict[str, Any],
               digested: dict[str, dict[str, Any]] | None = None) -> None:
    """Mark the run finished and, in the same transaction, seal a final one (completed or
    failed): its records digested and the manifest stored, so verify can tell later edits
    from what the run wrote. ``digested``: manifest entries of tables digested already
    (``digest_tables_apart``, by this process and the writer process); the rest are digested here."""
    with store.engine.begin() as conn:
        store.mark_finished(conn, run_id, status, summary)
        if status in FINAL_STATUSES:
            write_digest(conn, run_id, digested)
    store.checkpoint()


def write_digest(conn: Connection, run_id: str, done: dict[str, dict[str, Any]] | None = None) -> str:
    """Digest the run's records inside the caller's transaction; return the root. ``done``:
    manifest entries of tables already digested (``digest_tables``), whose entries stay."""
    done = done or {}
    entries = {**done, **digest_tables(conn, run_id, [t.name for t in DIGESTED_TABLES if t.name not in done])}
    manifest = {"format": FORMAT, "canonical": CANONICAL_VERSION, "segment": SEGMENT,
                "tables": {t.name: entries[t.name] for t in DIGESTED_TABLES}}
    digest_root = run_root(manifest["tables"])
    conn.execute(
        s.runs.update()
        .where(s.runs.c.run_id == run_id)
        .values(digest_root=digest_root, digest_manifest=canonical_json(manifest).decode())
    )
    return digest_root


def _write_table(conn: Connection, table: Table, run_id: str, store: Callable[[list[dict[str, Any]]], Any]) -> dict[str, Any]:
    """Store one table's segments as they stream by; its count and root."""
    roots: list[bytes] = []
    pending: list[dict[str, Any]] = []
    count = 0
    for chunk, (keys, leaves) in enumerate(segment_leaves(conn, table, run_id)):
        roots.append(merkle.root(leaves))
        count += len(keys)
        entries = _json(list(zip(keys, [leaf.hex() for leaf in leaves])))
        pending.append({"run_id": run_id, "table_name": table.name, "chunk": chunk, "entries": entries})
        if len(pending) == _STORE_EVERY:
            store(pending)
            pending = []
    if pending:
        store(pending)
    return {"count": count, "root": merkle.root(roots).hex()}


@dataclass(frozen=True)
class SealedRecord:
    """A record as its table's stored segments hold it, with its audit path to the table's root."""

    position: int
    key: str
    leaf: str  # hex, as stored
    path: list[bytes]


def audit_paths(conn: Connection, run_id: str, table_name: str, positions: Sequence[int]) -> dict[int, SealedRecord]:
    """The sealed entries at ``positions`` (in primary-key order) of a format 4 table, and their
    audit paths: within their segment, then their segment's among the table's segments. Reads
    the table's segments once, keeping the leaves only of those that hold a wanted position.
    Raises DigestFormatError if a segment's entries are not hashes (verify says which table)."""
    wanted = sorted(set(positions))
    roots: list[bytes] = []
    inner: dict[int, tuple[tuple[str, str], int, list[bytes]]] = {}
    start = 0
    for text in stored_chunks(conn, table_name, run_id):
        entries = parse_chunk(text)
        try:
            leaves = _leaves(entries)
        except ValueError:
            raise DigestFormatError(f"the record_digests rows of {table_name} hold entries that are not hashes: "
                                    "they were edited (verify names the table)") from None
        here = [p for p in wanted if start <= p < start + len(entries)]
        if here:
            tree = merkle.levels(leaves)
            inner.update({p: (entries[p - start], len(roots), merkle.path(tree, p - start)) for p in here})
        roots.append(merkle.root(leaves))
        start += len(entries)
    top = merkle.levels(roots)
    return {p: SealedRecord(p, key, leaf, path + merkle.path(top, segment))
            for p, ((key, leaf), segment, path) in inner.items()}


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
    """Recompute the run's digest and say which records differ from it: the manifest must reach
    the root, each table's stored entries its root in the manifest, each record its entry."""
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
        sealed = run_root(tables, version) if fmt == FORMAT else stable_hash(manifest, version=version)
    except (ValueError, KeyError, TypeError, AttributeError):
        check.problems.append("runs.digest_manifest is not a digest manifest")
        return check
    except DigestFormatError as exc:
        check.problems.append(str(exc))
        return check
    if sealed != root:
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


def check_digest_at(url: str, run: dict[str, Any], expected_root: str | None = None) -> DigestCheck:
    """``check_digest`` on an engine of its own: what a helper process runs while verify's set
    queries run in the caller (``inspect/verify.py``)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return check_digest(conn, run, expected_root)
    finally:
        engine.dispose()


def _check_table(conn: Connection, table: Table, run_id: str, expected: dict[str, Any] | None, fmt: int,
                 version: int) -> TableCheck:
    """One streaming pass compares records with their stored entries pairwise and recomputes
    the table's root; only when records and entries disagree are the entries loaded by key to
    tell changed from missing from added."""
    tc = TableCheck(table.name)
    root, aligned = (_TreeRoot() if fmt == FORMAT else _Root()), True
    columns = expected.get("columns") if expected else None
    if columns is not None and not (isinstance(columns, list) and all(isinstance(c, str) for c in columns)):
        raise DigestFormatError(f"the digest manifest's columns of {table.name} are not a list of column names")
    if isinstance(root, _TreeRoot):
        aligned = _segments_aligned(conn, table, run_id, columns, version, root)
    else:
        live = live_records(conn, table, run_id, fmt, columns, version)
        try:
            for text in stored_chunks(conn, table.name, run_id):
                entries = parse_chunk(text)
                root.add_chunk(text, entries)
                if aligned:
                    aligned = bool(entries) and list(islice(live, len(entries))) == entries
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


def _segments_aligned(conn: Connection, table: Table, run_id: str, columns: list[str] | None, version: int,
                      root: _TreeRoot) -> bool:
    """Format 4's one pass: each stored segment joins ``root`` and is compared, keys and leaf
    bytes, with the live segment in its place (both are ``SEGMENT`` records long)."""
    live = segment_leaves(conn, table, run_id, columns, version)
    aligned = True
    try:
        for text in stored_chunks(conn, table.name, run_id):
            keys, leaves = _segment_entries(text)
            if leaves is None:  # edited: the general reading says how
                keys, leaves = None, root.add_chunk(text, parse_chunk(text))
            else:
                root.add_leaves(leaves)
            if aligned:
                got = next(live, None)
                aligned = got is not None and leaves is not None and got[1] == leaves and got[0] == keys
        return aligned and next(live, None) is None
    finally:
        live.close()


def _segment_entries(text: str) -> tuple[list[str] | None, list[bytes] | None]:
    """A stored segment's keys and leaf bytes as written (``[[key, hex], …]``), or (None, None)
    for one that is not: ``parse_chunk`` then reads what is left of it."""
    try:
        entries = orjson.loads(text)
        keys = [key for key, _ in entries]
        leaves = [bytes.fromhex(leaf) for _, leaf in entries]
    except (ValueError, TypeError):
        return None, None
    return (keys, leaves) if all(type(k) is str for k in keys) else (None, None)
