"""The audit sink: each node's audit segments into the audit log and the Landscape.

Segments go to this process's audit writer child (``auditlog/writer_process.py``), which on
the second core commits each as segment files (``auditlog/segments.py``: the unit of
durability) and loads it into the Landscape in one transaction. ``finish_bundle`` waits until
all of the bundle's segments are committed and loaded, so what Beam counts as done is in the
audit log and in the Landscape. (In-process writes took turns with the pipeline for the GIL;
a writer thread was measured and lost to a GIL convoy.)

A segment is never split: a sink's part arrives as one segment (its artifact with every row's
outcome), so a crash leaves the part either recorded whole or not at all.
"""

from __future__ import annotations

import pickle

import apache_beam as beam
from apache_beam import coders

from elspeth_beam.auditlog.buffer import AuditSegment
from elspeth_beam.auditlog.writer_process import AuditWriter
from elspeth_beam.landscape.store import absolute_url


_RECORD_BYTES = 150  # a typical record's encoded size, for Beam's byte-size estimates


class AuditSegmentCoder(coders.Coder):
    """Coder of segment elements (between stages on runners that do not fuse the audit sink),
    with a size estimate that does not encode: Beam samples the encoded size of early elements,
    and a segment is large."""

    def encode(self, value: AuditSegment) -> bytes:
        return pickle.dumps((value.run_id, value.node_id, value.tables), pickle.HIGHEST_PROTOCOL)

    def decode(self, encoded: bytes) -> AuditSegment:
        return AuditSegment(*pickle.loads(encoded))

    def estimate_size(self, value: AuditSegment) -> int:
        return _RECORD_BYTES * value.records

    def to_type_hint(self) -> type:
        return AuditSegment

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


coders.registry.register_coder(AuditSegment, AuditSegmentCoder)


class WriteAuditFn(beam.DoFn):
    """Hands a bundle's segments to the audit writer and waits for them before the bundle ends."""

    def __init__(self, url: str, audit_log: str) -> None:
        super().__init__()
        self.url = url
        self.audit_log = audit_log

    def setup(self) -> None:
        self.url = absolute_url(self.url)  # relative to this worker's directory, not the writer's
        self.writer = AuditWriter.shared()
        self.writer.attach(self.url)

    def start_bundle(self) -> None:
        self._tickets: list[int] = []

    def process(self, segment: AuditSegment) -> None:
        self._tickets.append(self.writer.submit_segment(self.url, self.audit_log, segment))

    def finish_bundle(self) -> None:
        tickets, self._tickets = self._tickets, []
        self.writer.wait(tickets)

    def teardown(self) -> None:
        writer = getattr(self, "writer", None)
        if writer is not None:
            writer.release(self.url)


class WriteAudit(beam.PTransform):
    def __init__(self, url: str, audit_log: str) -> None:
        super().__init__()
        self.url = url
        self.audit_log = audit_log

    def expand(self, segments):
        return segments | "Write" >> beam.ParDo(WriteAuditFn(self.url, self.audit_log))
