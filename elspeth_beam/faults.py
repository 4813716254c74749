"""Fault injection for crash tests: kill the process (``os._exit``) at a chosen point.

Set ``ELSPETH_FAULT`` before ``elspeth-beam run``:

- ``after_rows:N``         — die once the source has produced N rows;
- ``in_flush:NAME``        — die inside the first flush of aggregation NAME;
- ``in_flush:NAME:K``      — die inside its K-th flush (1-based).

The process exits with code 137 (like SIGKILL): no cleanup, no finally blocks, nothing
flushed — exactly what a crash leaves behind for ``resume``.
"""

from __future__ import annotations

import os
import sys

ENV = "ELSPETH_FAULT"
EXIT_CODE = 137
_flushes: dict[str, int] = {}


def armed() -> bool:
    """Whether a fault is configured (checked once per DoFn, not once per row)."""
    return bool(os.environ.get(ENV))


def _spec() -> list[str]:
    return os.environ.get(ENV, "").split(":") if os.environ.get(ENV) else []


def _die(reason: str) -> None:
    sys.stderr.write(f"elspeth-beam: fault injected ({ENV}={os.environ.get(ENV)}): {reason}\n")
    sys.stderr.flush()
    os._exit(EXIT_CODE)


def after_source_row(rows_read: int) -> None:
    spec = _spec()
    if len(spec) == 2 and spec[0] == "after_rows" and rows_read == int(spec[1]):
        _die(f"after {rows_read} source rows")


def in_flush(aggregation: str) -> None:
    spec = _spec()
    if len(spec) in (2, 3) and spec[0] == "in_flush" and spec[1] == aggregation:
        _flushes[aggregation] = _flushes.get(aggregation, 0) + 1
        if _flushes[aggregation] == (int(spec[2]) if len(spec) == 3 else 1):
            _die(f"inside flush {_flushes[aggregation]} of aggregation {aggregation!r}")
