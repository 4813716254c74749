"""User-style batch plugins (and a fake clock) for the aggregation tests.

YAML refers to the plugins by dotted path (``agg_plugins_for_tests.Enrich``); the tests put
this folder on ``sys.path`` first.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from elspeth_beam.plugins.base import BatchPlugin, PluginOptions


class EnrichOptions(PluginOptions):
    tag: str = "enriched"


class Enrich(BatchPlugin):
    """Passthrough: every row comes back with its batch size, its position and a tag."""

    name = "enrich"
    Options = EnrichOptions
    options: EnrichOptions

    def process_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**row, "batch_size": len(rows), "position": i, "tag": self.options.tag} for i, row in enumerate(rows)]


class DropLast(BatchPlugin):
    """Returns one row fewer than it gets (wrong for passthrough)."""

    name = "drop_last"

    def process_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [dict(r) for r in rows[:-1]]


class BoomError(RuntimeError):
    """Raised by Boom: a type name the audit must record."""


class BoomOptions(PluginOptions):
    field: str = "bad"


class Boom(BatchPlugin):
    """Sums ``v`` into one row, but raises BoomError for a batch holding a row whose ``field`` is truthy."""

    name = "boom"
    Options = BoomOptions
    options: BoomOptions

    def process_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        bad = [r["id"] for r in rows if r.get(self.options.field)]
        if bad:
            raise BoomError(f"refusing a batch with bad rows {bad}")
        return [{"n": len(rows), "v_sum": sum(r["v"] for r in rows)}]


# ---- a fake clock for the timeout trigger ------------------------------------------------

_COUNTS: dict[str, int] = {}
_LOCK = threading.Lock()


class StepClock:
    """A picklable fake clock: ``start`` for the first ``hold`` calls, then ``start + after``.

    Beam's direct runner pickles a fresh copy of the DoFn for every bundle, so the number of
    calls is kept per clock *id* in this module (the direct runners run in this process),
    not in the copy. With ``hold`` = the number of batch starts (accepts), every deadline is
    ``start + timeout`` and every later call (a timeout callback) sees ``start + after``.
    ``after=0`` is a stopped clock.
    """

    def __init__(self, start: float = 0.0, hold: int = 0, after: float = 0.0) -> None:
        self.id = uuid.uuid4().hex
        self.start, self.hold, self.after = start, hold, after

    def calls(self) -> int:
        with _LOCK:
            return _COUNTS.get(self.id, 0)

    def __call__(self) -> float:
        with _LOCK:
            n = _COUNTS.get(self.id, 0)
            _COUNTS[self.id] = n + 1
        return self.start if n < self.hold else self.start + self.after
