"""Retention of sink parts: a run's ``<sink path>.parts/<run_id>/`` folders go once they are
no longer needed, so a sink's output is not kept twice forever.

Sinks write durable parts while the pipeline runs and the run merges them into the
configured file at its end. The parts are what ``resume`` merges, so they stay while the run
can be resumed: until it is ``completed`` (a failed or interrupted run keeps them). The rule
is recorded with the run — ``summary_json["sink_parts"]``, ``removed`` or ``kept``
(``--keep-parts``) — in the finish that digests it, and the folders are removed after that
finish. A process killed in between leaves a completed run whose parts are recorded removed
yet still on disk: the next run that finishes with one of those sinks sweeps them
(``remove_parts``), and nothing reads them meanwhile — ``verify``, ``explain --sink``,
``export`` and the digest read the Landscape, where each part's artifact row stays.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from elspeth_beam.config.loader import LoadedPipeline
from elspeth_beam.core.enums import NodeType, RunStatus
from elspeth_beam.landscape.store import LandscapeStore
from elspeth_beam.pipeline.sink import parts_dir
from elspeth_beam.plugins import registry
from elspeth_beam.plugins.base import SinkPlugin

REMOVED = "removed"
KEPT = "kept"


def parts_rule(status: RunStatus, keep_parts: bool) -> str:
    """What becomes of the run's parts once it finishes with ``status``."""
    return REMOVED if status is RunStatus.COMPLETED and not keep_parts else KEPT


def remove_parts(store: LandscapeStore, loaded: LoadedPipeline, run_id: str, rule: str) -> int:
    """After the finish: remove this run's parts folders if its rule says so, and those of
    earlier completed runs recorded ``removed`` that a killed process left; folders removed."""
    removed = 0
    for sink_path in _sink_paths(loaded):
        folder = parts_dir(sink_path, run_id).parent
        if not folder.is_dir():
            continue
        for run_folder in sorted(p for p in folder.iterdir() if p.is_dir()):
            mine = run_folder.name == run_id
            if (rule == REMOVED if mine else _recorded_removed(store, run_folder.name)) and _removed(run_folder):
                removed += 1
        if not any(folder.iterdir()):
            _removed(folder)
    return removed


def _removed(folder: Path) -> bool:
    """Remove a folder; one that cannot be removed is left, with a warning, for the next run's
    sweep — the run it belongs to is finished, and a leftover copy loses nothing."""
    try:
        shutil.rmtree(folder)
    except OSError as exc:
        logging.getLogger(__name__).warning("could not remove the sink parts folder %s (%s); the next run retries", folder, exc)
        return False
    return True


def _recorded_removed(store: LandscapeStore, run_id: str) -> bool:
    """Whether the Landscape holds ``run_id`` as completed with its parts to be removed (a
    folder of another Landscape's run, or of an older version's, is left alone)."""
    if not store.has_run(run_id):
        return False
    run = store.run(run_id)
    summary = json.loads(run["summary_json"] or "{}")
    return run["status"] == RunStatus.COMPLETED.value and summary.get("sink_parts") == REMOVED


def _sink_paths(loaded: LoadedPipeline) -> list[Path]:
    return [
        registry.build(SinkPlugin, node.settings.plugin, node.settings.options).path()  # type: ignore[attr-defined]
        for node in loaded.graph.nodes
        if node.node_type is NodeType.SINK
    ]
