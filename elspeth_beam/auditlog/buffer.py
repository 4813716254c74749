"""Per-bundle audit buffers and the segment element they become.

An audited DoFn appends each fact as a record tuple (``auditlog/records.py``) to its
bundle's buffer; at the end of the bundle, or every ``SEGMENT_RECORDS`` records on a huge one,
the buffer is taken as one ``AuditSegment`` — the records transposed into columns — and leaves
on the DoFn's ``audit`` output. The audit sink commits it as a segment and loads it into the
Landscape (``pipeline/audit_sink.py``). Because the segment is an *output*, a failed bundle's
records are discarded with it; only the audit sink's commit makes them durable. (Its Beam
coder lives with the audit sink: this module is also the writer child's, which never imports
Beam.)
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from elspeth_beam.auditlog.records import TABLE_OF, Columns, count, to_columns

SEGMENT_RECORDS = 20_000  # records per segment at most: bounds memory on huge bundles


@dataclass
class AuditSegment:
    """One bundle's (or part of one) audit records of one node, as columns per table."""

    run_id: str
    node_id: str
    tables: dict[str, Columns] = field(default_factory=dict)

    @property
    def records(self) -> int:
        return count(self.tables)


class AuditBuffer:
    """A bundle's audit records, per table, until they are taken as one segment."""

    def __init__(self) -> None:
        self._tables: defaultdict[type, list[tuple]] = defaultdict(list)
        self._count = 0

    def add(self, record: tuple) -> None:
        self._tables[type(record)].append(record)
        self._count += 1

    def __len__(self) -> int:
        return self._count

    def take(self, run_id: str, node_id: str) -> AuditSegment:
        tables = {TABLE_OF[kind]: to_columns(records) for kind, records in self._tables.items() if records}
        self._tables = defaultdict(list)
        self._count = 0
        return AuditSegment(run_id, node_id, tables)
