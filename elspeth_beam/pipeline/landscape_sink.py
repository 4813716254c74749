"""WriteLandscape: the single audit sink every audit stream is flattened into."""

from __future__ import annotations

from collections.abc import Iterable

import apache_beam as beam

from elspeth_beam.core.events import AuditEvent
from elspeth_beam.landscape.store import LandscapeStore

_WRITE_EVERY = 20000  # events per transaction


class WriteLandscapeFn(beam.DoFn):
    """Buffers a bundle's audit events and writes them in one idempotent transaction."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    def setup(self) -> None:
        self.store = LandscapeStore(self.url)

    def start_bundle(self) -> None:
        self._buffer: list[AuditEvent] = []

    def process(self, events: Iterable[AuditEvent]) -> None:
        self._buffer.extend(events)
        if len(self._buffer) >= _WRITE_EVERY:
            self._flush()

    def finish_bundle(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self.store.write_events(self._buffer)
            self._buffer = []

    def teardown(self) -> None:
        store = getattr(self, "store", None)
        if store is not None:
            store.dispose()


class WriteLandscape(beam.PTransform):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    def expand(self, audit_lists):
        return audit_lists | "Write" >> beam.ParDo(WriteLandscapeFn(self.url))
