"""Plugin protocols. A plugin declares its options as a pydantic model; settings validate
them at load time, so a misconfigured plugin is a settings error naming the YAML path."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from elspeth_beam.core.errors import RowError
from elspeth_beam.plugins.splits import SourceSplit


class PluginOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Plugin:
    """Base of all plugins: ``name`` is what YAML refers to; ``Options`` validates options."""

    name: ClassVar[str]
    Options: ClassVar[type[PluginOptions]] = PluginOptions

    def __init__(self, options: PluginOptions) -> None:
        self.options = options


@dataclass(frozen=True)
class SourceRecord:
    """One record as read: its parsed row, or why it could not be parsed, and its raw text.
    The why is a message, or a ``RowError`` that keeps its reason apart from the values."""

    index: int
    raw: str
    row: dict[str, Any] | None
    error: str | RowError | None = None


class SourcePlugin(Plugin):
    """Yields every record of the source, each with its index (the row's identity)."""

    def read(self) -> Iterator[SourceRecord]:
        raise NotImplementedError

    def splits(self, target_bytes: int) -> list[SourceSplit]:
        """Parts of about ``target_bytes`` that workers read in parallel, each knowing its first
        record's index (``plugins/splits.py``). By default the whole source is one."""
        return [SourceSplit("")]

    def read_split(self, split: SourceSplit) -> Iterator[SourceRecord]:
        return self.read()


class TransformPlugin(Plugin):
    """Row in, row out. Raise to fail the row (it goes to the node's ``on_error``)."""

    def process(self, row: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


class BatchPlugin(Plugin):
    """Rows of one batch in (ordinal order), rows out (see the aggregation's output_mode)."""

    def process_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        raise NotImplementedError


class SinkPlugin(Plugin):
    """Writes one part file of rows, and merges parts into the final file at run end."""

    extension: ClassVar[str]

    def path(self) -> Path:
        return Path(self.options.path)  # type: ignore[attr-defined]

    def write_part(self, rows: list[dict[str, Any]], target: Path) -> None:
        raise NotImplementedError

    def merge(self, parts: list[Path], target: Path) -> None:
        raise NotImplementedError
