"""Source node: read records, record each as a row and its first token, emit valid tokens.

A record that did not parse (or fails its schema, or holds NaN) still gets a row, a token
and a failed node_state, and is quarantined with the reason — never dropped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import apache_beam as beam

from elspeth_beam import faults
from elspeth_beam.config.settings import SourceSettings
from elspeth_beam.core import ids
from elspeth_beam.core.chain import raw_row
from elspeth_beam.core.canonical import canonical_json, stable_hash
from elspeth_beam.core.errors import CanonicalizationError, RowError
from elspeth_beam.auditlog.records import RowRecord, positional
from elspeth_beam.core.tokens import TokenInfo
from elspeth_beam.pipeline.audit import AuditedDoFn, NodeContext, out_tag, token_row_hash
from elspeth_beam.plugins import registry
from elspeth_beam.plugins.base import SourcePlugin, SourceRecord
from elspeth_beam.plugins.splits import SourceSplit


_encode_raw = json.JSONEncoder().encode


_ROW = positional(RowRecord, "row_id run_id source_node_id row_index source_data_hash payload_json")


def _payload(record: SourceRecord) -> tuple[str, str | None]:
    """``{"row": …}`` in canonical JSON, or ``{"raw": …}`` for a row without a canonical form;
    and the row's hash. The row's canonical bytes are also its hash's: computed once, here,
    and carried by its token."""
    if record.row is not None:
        try:
            canonical = canonical_json(record.row)
        except CanonicalizationError:
            pass
        else:
            return f'{{"row":{canonical.decode()}}}', hashlib.sha256(canonical).hexdigest()
    return _encode_raw({"raw": record.raw}), None


class SourceDoFn(AuditedDoFn):
    def __init__(self, ctx: NodeContext, settings: SourceSettings, settled_rows: frozenset[int] = frozenset()) -> None:
        super().__init__(ctx)
        self.settings = settings
        self.settled_rows = settled_rows  # on resume: rows the Landscape already accounts for
        self.tag = out_tag(settings.on_success)

    def setup(self) -> None:
        self.plugin = registry.build(SourcePlugin, self.settings.plugin, self.settings.options)
        self.fault_check = faults.after_source_row if faults.armed() else None  # not an env lookup per row

    def process(self, split: SourceSplit) -> Iterator[Any]:
        for produced, record in enumerate(self.plugin.read_split(split), start=1):
            if record.index not in self.settled_rows:
                yield from self._one(record)
                yield from self.audit_if_full()
            if self.fault_check is not None:
                self.fault_check(produced)

    def _one(self, record: SourceRecord) -> Iterator[Any]:
        run_id, node_id = self.ctx.run_id, self.ctx.node_id
        row_id = ids.row_id(run_id, node_id, record.index)
        token_id = ids.token_id([row_id], node_id, 0)
        raw_hash = stable_hash(record.raw)
        payload, parsed_hash = _payload(record)
        self.record(_ROW((row_id, run_id, node_id, record.index, raw_hash, payload)))

        def token_of(row: dict[str, Any], digest: str | None = None) -> TokenInfo:
            return TokenInfo.of(row, run_id=run_id, row_id=row_id, token_id=token_id, row_index=record.index,
                                row_hash=digest)

        def parse() -> TokenInfo:
            if isinstance(record.error, RowError):
                raise record.error
            if record.error is not None:
                raise RowError(record.error)
            return token_of(record.row or {}, parsed_hash)  # no row: no hash (an empty one's is {}'s)

        step = self.execute(token_id=token_id, input_hash=raw_hash, work=parse, output_hash=token_row_hash)
        if step.ok:
            self.record_token(step.output)
            yield beam.pvalue.TaggedOutput(self.tag, step.output)
        else:
            raw_token = token_of(raw_row(record.raw))
            self.record_token(raw_token)
            yield from self.divert(raw_token, step.error)


class PlanSplitsFn(beam.DoFn):
    """The source's splits, planned on a worker (it reads the files; the driver may not see them)."""

    def __init__(self, settings: SourceSettings) -> None:
        self.settings = settings

    def setup(self) -> None:
        self.plugin = registry.build(SourcePlugin, self.settings.plugin, self.settings.options)

    def process(self, _: Any) -> Iterator[SourceSplit]:
        yield from self.plugin.splits(self.settings.split_bytes)


class ReadSource(beam.PTransform):
    """Plan the source's splits, spread them over the workers, read each where it lands.

    The reshuffle is what makes the pipeline parallel from the source on: without it a runner
    fuses the read, and every stateless node after it, into the one task that planned. Rows
    keep their indexes however the source is split (``plugins/splits.py``)."""

    def __init__(self, ctx: NodeContext, settings: SourceSettings, tags: list[str],
                 settled_rows: frozenset[int] = frozenset()) -> None:
        super().__init__()
        self.ctx, self.settings, self.tags, self.settled_rows = ctx, settings, tags, settled_rows

    def expand(self, pbegin):
        return (
            pbegin
            | "Start" >> beam.Create([None])
            | "Plan" >> beam.ParDo(PlanSplitsFn(self.settings))
            | "Spread" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(SourceDoFn(self.ctx, self.settings, self.settled_rows)).with_outputs(*self.tags)
        )
