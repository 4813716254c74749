"""A reason rows are set aside, apart from the values that differ row by row.

1 461 rows that fail because one column holds decimal commas are one cause, not 1 461: an
error message names the offending value, so grouping by the message would count each row
alone. Our own errors record their reason with the values taken out (``DataError``); for
messages from user plugins ``without_values`` takes out what looks like a value — quoted
literals and numbers — and nothing else, so different causes stay apart.
"""

from __future__ import annotations

import re

PLACEHOLDER = "<value>"

# a quoted literal ('…' or "…", backslash escapes as repr writes them) that starts and ends
# outside a word (so the apostrophe of "row's" is no quote), or a number standing alone
# (not the 8 of utf-8 or sha256, nor a version's dots)
_VALUE = re.compile(
    r"""(?<![\w'"])(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")(?![\w'"])"""
    r"""|(?<![\w.-])(?:0x[0-9a-fA-F]+|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)(?![\w.])"""
)


def without_values(message: str) -> tuple[str, tuple[str, ...]]:
    """``message`` with each value it quotes replaced by ``PLACEHOLDER``, and those values."""
    values = tuple(match.group() for match in _VALUE.finditer(message))
    return _VALUE.sub(PLACEHOLDER, message), values
