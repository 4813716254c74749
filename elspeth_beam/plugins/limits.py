"""What one field of a record may hold, and the csv module's own limit kept out of the way.

The csv module refuses fields over ``csv.field_size_limit()`` (128 KiB by default) with a
process-wide setting. A source's limit is a rule about the user's data and is the source's to
enforce and report (a quarantine with the field named); a file elspeth_beam wrote itself — a
sink's part, read back by its merge — must read back whatever a row held. So every reader of
CSV here lifts the module's limit, and the CSV source checks its own (``max_field_chars``).
"""

from __future__ import annotations

import csv
import sys

MAX_FIELD_CHARS = 128 * 1024
"""The CSV source's default limit on one field (the csv module's old default, so that a runaway
quoted field is still caught where it was)."""


def lift_csv_field_limit() -> None:
    """Let the csv module read fields of any length (idempotent, process-wide)."""
    if csv.field_size_limit() < sys.maxsize:
        csv.field_size_limit(sys.maxsize)
