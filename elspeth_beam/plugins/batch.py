"""Built-in batch-aware plugins for aggregations."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from elspeth_beam.core.errors import RowError
from elspeth_beam.plugins.base import BatchPlugin, PluginOptions

Stat = Literal["count", "sum", "mean", "min", "max"]


class BatchStatsOptions(PluginOptions):
    fields: list[str] = Field(description="the numeric fields to summarise")
    stats: list[Stat] = Field(default=["count", "sum", "mean", "min", "max"], description="the statistics per field")

    @field_validator("fields")
    @classmethod
    def _non_empty(cls, fields: list[str]) -> list[str]:
        if not fields:
            raise ValueError("name at least one numeric field")
        return fields


class BatchStats(BatchPlugin):
    """One summary row per batch: ``<field>_<stat>`` for each field and stat (nulls skipped)."""

    name = "batch_stats"
    Options = BatchStatsOptions
    options: BatchStatsOptions

    def process_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: dict[str, Any] = {"batch_size": len(rows)}
        for field in self.options.fields:
            values = []
            for row in rows:
                value = row.get(field)
                if value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise RowError.about(lambda v: f"batch_stats: field {field!r} must be numeric, got {v}", value)
                values.append(value)
            computed = {
                "count": len(values),
                "sum": sum(values) if values else None,
                "mean": sum(values) / len(values) if values else None,
                "min": min(values) if values else None,
                "max": max(values) if values else None,
            }
            for stat in self.options.stats:
                out[f"{field}_{stat}"] = computed[stat]
        return [out]


class DedupeOptions(PluginOptions):
    fields: list[str] = Field(description="the fields whose combination must be distinct")


class Dedupe(BatchPlugin):
    """Keep the first row of each distinct combination of ``fields`` (transform mode)."""

    name = "dedupe"
    Options = DedupeOptions
    options: DedupeOptions

    def process_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        seen: set[tuple] = set()
        out = []
        for row in rows:
            key = tuple(repr(row.get(f)) for f in self.options.fields)
            if key not in seen:
                seen.add(key)
                out.append(row)
        return out
