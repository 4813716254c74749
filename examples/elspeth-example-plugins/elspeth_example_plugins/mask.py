"""``mask``: replace all but the last few characters of sensitive fields.

A transform plugin is a class with a ``name``, an ``Options`` model (pydantic: settings are
validated against it when the pipeline loads, and ``elspeth-beam plugins`` lists it) and a
``process(row) -> row``. Raising ``RowError`` fails that row only: it goes to the node's
``on_error`` with the message as its recorded reason.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from elspeth_beam.core.errors import RowError
from elspeth_beam.plugins.base import PluginOptions, TransformPlugin


class MaskOptions(PluginOptions):
    fields: list[str] = Field(min_length=1, description="the text fields to mask")
    keep_last: int = Field(default=4, ge=0, description="how many trailing characters stay readable")
    char: str = Field(default="*", min_length=1, max_length=1, description="the masking character")


class Mask(TransformPlugin):
    """Mask text fields, keeping their last few characters (e.g. a card number's last four)."""

    name = "mask"
    Options = MaskOptions
    options: MaskOptions

    def process(self, row: dict[str, Any]) -> dict[str, Any]:
        out = dict(row)
        for field in self.options.fields:
            value = row.get(field)
            if not isinstance(value, str) or not value:
                raise RowError(f"field {field!r} must be non-empty text to mask, got {value!r}")
            hidden = max(len(value) - self.options.keep_last, 0)
            out[field] = self.options.char * hidden + value[hidden:]
        return out
