"""The hash chain: what each hash along a token's path covers (DESIGN §7, invariant 8).

A node_state's ``input_hash`` must equal the hash the token carried out of its previous
step, so an auditor can follow one row from the source to every output without a gap:

- source: input = the raw record (``rows.source_data_hash``), output = the parsed row; a
  record that did not parse travels on as ``{"_raw": raw}`` (``raw_row``);
- transform: input = the row it received, output = the row it made;
- gate and sink: input = the row it received, which goes on unchanged (a gate's output
  hash is its decision's, a sink's the part file's);
- a fork's children start from their parent's row at the gate;
- a flush: input = ``members_hash`` of its members' row hashes in ordinal order (each as the
  member arrived, kept in its ``buffered`` outcome), output = ``members_hash`` of its outputs'
  row hashes; each output token starts from its own row's hash.

``verify`` (inspect/paths.py) re-derives every link from these definitions.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from elspeth_beam.core.canonical import stable_hash


def members_hash(row_hashes: Iterable[str]) -> str:
    """A flush's input (or output) hash: of its rows' hashes, in ordinal order."""
    return stable_hash(list(row_hashes))


def rows_hash(rows: Iterable[Any]) -> str:
    """``members_hash`` of whole rows: what a flush of these rows records."""
    return members_hash(stable_hash(row) for row in rows)


def raw_row(raw: Any) -> dict[str, Any]:
    """The row a record that did not parse carries on to an error sink."""
    return {"_raw": raw}
