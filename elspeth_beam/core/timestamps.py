"""Audit timestamps: ISO 8601 UTC with microseconds (sortable text, portable across databases)."""

from __future__ import annotations

import datetime as dt
import time

_second: tuple[int, str] = (-1, "")


def utc_now() -> str:
    """``datetime.now(utc).isoformat(timespec="microseconds")``, formatting the date and time
    once per second: several timestamps per token made it 1.7 µs → 0.5 µs a call."""
    global _second
    sec, micro = divmod(time.time_ns() // 1000, 1_000_000)
    cached_sec, text = _second  # one read: another thread may replace the pair meanwhile
    if sec != cached_sec:
        text = dt.datetime.fromtimestamp(sec, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        _second = (sec, text)
    return f"{text}.{micro:06d}+00:00"
