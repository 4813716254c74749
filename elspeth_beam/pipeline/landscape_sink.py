"""WriteLandscape: the audit sink each node's audit stream goes into.

Writes run on one background thread per writer, so SQLite's (or the network's) time
overlaps the pipeline's Python work — SQLite releases the GIL while it inserts and syncs.
A bundle still finishes only after every one of its audit writes has committed, so what Beam
counts as done is always in the Landscape (a crash loses nothing a retry would not redo).
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor

import apache_beam as beam

from elspeth_beam.core.events import AuditEvent
from elspeth_beam.landscape.store import LandscapeStore

_WRITE_EVERY = 5000  # events per transaction: bounds memory (one buffer + one in flight per node)


class WriteLandscapeFn(beam.DoFn):
    """Buffers a bundle's audit events and writes them in idempotent transactions."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    def setup(self) -> None:
        self.store = LandscapeStore(self.url)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="landscape-writer")
        self._pending: Future[None] | None = None

    def start_bundle(self) -> None:
        self._buffer: list[AuditEvent] = []

    def process(self, events: Iterable[AuditEvent]) -> None:
        self._buffer.extend(events)
        if len(self._buffer) >= _WRITE_EVERY:
            self._submit()

    def finish_bundle(self) -> None:
        self._submit()
        self._wait()

    def _submit(self) -> None:
        """Hand the buffer to the writer thread; at most one write in flight (bounded memory,
        and a failed write surfaces at the next submit)."""
        if not self._buffer:
            return
        self._wait()
        self._pending = self._writer.submit(self.store.write_events, self._buffer)
        self._buffer = []

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def teardown(self) -> None:
        writer = getattr(self, "_writer", None)
        if writer is not None:
            writer.shutdown(wait=True)
        store = getattr(self, "store", None)
        if store is not None:
            store.dispose()


class WriteLandscape(beam.PTransform):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    def expand(self, audit_lists):
        return audit_lists | "Write" >> beam.ParDo(WriteLandscapeFn(self.url))
