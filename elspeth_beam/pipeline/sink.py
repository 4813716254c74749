"""Sink node: write a bundle's rows as durable part files, then record them.

Outcomes (``completed``, ``routed``, ``quarantined``) and the part's artifact are emitted
only after the part is fsynced and atomically renamed into place, so the Landscape never
claims a row is written that is not. The part's name derives from its token ids: a replayed
bundle rewrites the same parts. A part holds at most ``PART_ROWS`` rows: the FnApiRunner runs
a whole batch stage as one bundle, and a sink holding all of it until the bundle ends made
peak memory grow with the input. Each part's records leave as one audit segment, committed
and loaded whole. When the run ends, ``merge_sink`` joins the recorded parts
into the file the user configured.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from elspeth_beam.config.settings import SinkSettings
from elspeth_beam.core import ids
from elspeth_beam.core.enums import Outcome
from elspeth_beam.core.errors import ElspethError
from elspeth_beam.auditlog.records import ArtifactRecord
from elspeth_beam.core.timestamps import now_us
from elspeth_beam.core.tokens import TokenInfo
from elspeth_beam.pipeline.audit import AuditedDoFn, NodeContext
from elspeth_beam.plugins import registry
from elspeth_beam.plugins.base import SinkPlugin
from elspeth_beam.plugins.sinks import leftover_temps

SinkItem = tuple[str, TokenInfo, "dict[str, Any] | None"]  # (arrival outcome, token, error)
PART_ROWS = 5000  # rows per part file at most: bounds a sink's memory within a bundle


class SinkWriteError(ElspethError):
    """A sink could not durably write its rows (disk, permissions, type conflicts)."""


def parts_dir(sink_path: Path, run_id: str) -> Path:
    return sink_path.parent / f"{sink_path.name}.parts" / run_id


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def output_row(token: TokenInfo, error: dict[str, Any] | None) -> dict[str, Any]:
    """The row a sink writes: on an error path, the row and then why (``_error``, ``_error_node``,
    each with one more leading underscore while the row has a field of that name, so none of
    the row's own values is overwritten)."""
    if error is None:
        return token.row
    row = dict(token.row)
    for name, value in (("_error", error["message"]), ("_error_node", error["node_id"])):
        while name in row:
            name = "_" + name
        row[name] = value
    return row


class SinkDoFn(AuditedDoFn):
    def __init__(self, ctx: NodeContext, sink_name: str, settings: SinkSettings,
                 done_tokens: frozenset[str] = frozenset()) -> None:
        super().__init__(ctx)
        self.sink_name = sink_name
        self.settings = settings
        self.done_tokens = done_tokens  # on resume: already written (or otherwise ended)

    def setup(self) -> None:
        self.plugin = registry.build(SinkPlugin, self.settings.plugin, self.settings.options)
        self.dir = parts_dir(self.plugin.path(), self.ctx.run_id)

    def start_bundle(self) -> None:
        super().start_bundle()
        self._items: list[SinkItem] = []

    def process(self, item: SinkItem) -> Iterator[Any]:
        if item[1].token_id not in self.done_tokens:
            self._items.append(item)
            if len(self._items) >= PART_ROWS:
                self._write_buffered()
                yield from self.audit_now()  # the part's records, alone in one segment

    def finish_bundle(self) -> Iterator[Any]:
        self._write_buffered()
        yield from super().finish_bundle()

    def _write_buffered(self) -> None:
        if self._items:
            items, self._items = self._items, []
            self._write_part(items)

    def _write_part(self, items: list[SinkItem]) -> None:
        items.sort(key=lambda it: (it[1].row_index, it[1].token_id))
        name = ids.make_id("part", [tok.token_id for _, tok, _ in items])
        target = self.dir / f"{name}.{self.plugin.extension}"
        started_at, t0 = now_us(), time.perf_counter()
        try:
            self.plugin.write_part([output_row(tok, err) for _, tok, err in items], target)
        except Exception as exc:
            raise SinkWriteError(f"sink {self.sink_name!r} could not write {target}: {exc}") from exc
        duration_ms = (time.perf_counter() - t0) * 1000.0
        content_hash = file_digest(target)
        run_id, node_id = self.ctx.run_id, self.ctx.node_id
        artifact_id = ids.artifact_id(run_id, node_id, str(target), content_hash)
        self.record(
            ArtifactRecord(
                artifact_id=artifact_id,
                run_id=run_id,
                sink_node_id=node_id,
                path=str(target),
                content_hash=content_hash,
                size_bytes=target.stat().st_size,
                row_count=len(items),
                artifact_kind="part",
                created_at=now_us(),
            )
        )
        for position, (arrival, token, error) in enumerate(items):
            self.record_state(
                state_id=ids.state_id(token.token_id, node_id, 1),
                token_id=token.token_id,
                input_hash=token.row_hash,
                output_hash=content_hash,
                duration_ms=duration_ms,
                started_at=started_at,
            )
            self.record_outcome(
                token,
                Outcome(arrival),
                sink_name=self.sink_name,
                artifact_id=artifact_id,
                artifact_row=position,
                error_json=None if error is None else json.dumps(error, sort_keys=True),
            )


def remove_leftover_temps(sink_path: Path, run_id: str) -> None:
    """Delete the temp files of part (or merge) writes a killed process left: no outcome
    points at them, and no writer of the run is left to finish them once its pipeline ended."""
    for leftover in [*leftover_temps(parts_dir(sink_path, run_id)), *leftover_temps(sink_path.parent, sink_path.name)]:
        leftover.unlink(missing_ok=True)


def merge_sink(plugin: SinkPlugin, parts: list[dict[str, Any]], run_id: str, node_id: str) -> ArtifactRecord:
    """Join a sink's recorded parts (in path order) into its configured file."""
    ordered = sorted(parts, key=lambda a: a["path"])
    target = plugin.path()
    remove_leftover_temps(target, run_id)
    plugin.merge([Path(a["path"]) for a in ordered], target)
    content_hash = file_digest(target)
    return ArtifactRecord(
        artifact_id=ids.artifact_id(run_id, node_id, str(target), content_hash),
        run_id=run_id,
        sink_node_id=node_id,
        path=str(target),
        content_hash=content_hash,
        size_bytes=target.stat().st_size,
        row_count=sum(a["row_count"] for a in ordered),
        artifact_kind="merged",
        created_at=now_us(),
    )
