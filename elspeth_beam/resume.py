"""resume: finish a run that died, from what the Landscape committed.

The Landscape is the checkpoint on the DirectRunner: tokens buffered in aggregations carry
their full TokenInfo (the ``buffered`` outcome's token_json), source rows keep their payload
and every finished token has its terminal outcome. Resume marks batches left draft/executing
``failed`` (trigger ``interrupted``, with a failed node_state saying why), rebuilds each as
attempt + 1 with the same members in the same order, re-reads the rows the Landscape does
not account for or whose audit path has a hole (invariant 8; a hole past a flush re-emits its output), lets sinks skip tokens already written, and runs the rest of the pipeline
under the same run id — so every row ends with exactly one terminal outcome per path and each
sink holds every output exactly once.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from elspeth_beam.config.loader import LoadedPipeline, load_settings_dict
from elspeth_beam.config.secrets import KEY_ENV, Fingerprinter, SecretsRecorded
from elspeth_beam.core import ids
from elspeth_beam.core.chain import rows_hash
from elspeth_beam.core.enums import BatchStatus, NodeStateStatus, RunStatus, TriggerType
from elspeth_beam.core.errors import ElspethError
from elspeth_beam.auditlog.loader import load_records
from elspeth_beam.auditlog.records import BatchRecord, NodeStateRecord, tables_of
from elspeth_beam.core.timestamps import utc_now
from elspeth_beam.core.tokens import TokenInfo
from elspeth_beam.landscape import schema as s
from elspeth_beam.inspect.paths import path_problems
from elspeth_beam.landscape.store import LandscapeStore
from elspeth_beam.pipeline.restore import AggregationRestore, PipelineRestore, RestoredStateError, RetryBatch
from elspeth_beam.run import RunResult, catch_up, execute_run

_OPEN = (BatchStatus.DRAFT.value, BatchStatus.EXECUTING.value)


class ResumeRefusedError(ElspethError):
    """The run cannot (or need not) be resumed."""


def settings_for(store: LandscapeStore, run_id: str, loaded: LoadedPipeline | None) -> LoadedPipeline:
    """The run's own settings (from the Landscape) unless given; refuse if they changed."""
    run = store.run(run_id)
    if run["status"] == RunStatus.COMPLETED.value:
        raise ResumeRefusedError(f"run {run_id} is already completed; there is nothing to resume")
    secrets = SecretsRecorded.of(run["settings_json"])
    if loaded is None:
        if secrets.redacted or secrets.fingerprinted:
            raise ResumeRefusedError(
                f"run {run_id} was recorded with its secrets hidden; pass its settings file with --settings"
            )
        raw = json.loads(run["settings_json"])
        raw["landscape"] = {**raw.get("landscape", {}), "url": store.url}  # its audit log, at the given URL
        loaded = load_settings_dict(raw)
    fp = Fingerprinter.from_env()
    if secrets.fingerprinted and fp.key is None:
        raise ResumeRefusedError(
            f"run {run_id} recorded its secrets as fingerprints; set {KEY_ENV} to the key it ran with, "
            "so resume can check they are the same"
        )
    if secrets.redacted and not secrets.fingerprinted:
        fp = Fingerprinter(None)  # the run hashed its settings with the secrets as ***
    if loaded.settings_hash_with(fp) != run["settings_hash"]:
        hint = f"; secrets compare by fingerprint: is {KEY_ENV} the key the run used?" if secrets.fingerprinted else ""
        raise ResumeRefusedError(
            f"the settings differ from those run {run_id} started with (hash {run['settings_hash'][:12]}… vs "
            f"{loaded.settings_hash_with(fp)[:12]}…{hint}); resume with the original settings, or start a new run"
        )
    return loaded


def plan_restore(store: LandscapeStore, run_id: str) -> tuple[PipelineRestore, list[tuple]]:
    """What the resumed pipeline restores, and the events that close interrupted batches."""
    tokens = {t["token_id"]: t for t in store.table_rows(s.tokens, run_id)}
    outcomes = store.table_rows(s.token_outcomes, run_id)
    terminal = {o["token_id"] for o in outcomes if o["is_terminal"]}
    token_json = {o["token_id"]: o["token_json"] for o in outcomes if o["outcome"] == "buffered"}
    batches = {b["batch_id"]: b for b in store.table_rows(s.batches, run_id)}
    members: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for m in store.table_rows(s.batch_members, run_id):
        members[m["batch_id"]].append(m)

    retried = {b["retry_of_batch_id"] for b in batches.values() if b["retry_of_batch_id"]}

    def unfinished(b: dict[str, Any]) -> bool:
        """Open, or closed as interrupted by a resume that died before its retry committed."""
        interrupted = b["trigger_type"] == TriggerType.INTERRUPTED.value and b["batch_id"] not in retried
        return b["status"] in _OPEN or interrupted

    finished_members = {m["token_id"] for b, ms in members.items() if not unfinished(batches[b]) for m in ms}
    next_sequence: dict[str, dict[str, int]] = defaultdict(dict)
    for b in batches.values():
        keyed = next_sequence[b["aggregation_node_id"]]
        keyed[b["key"]] = max(keyed.get(b["key"], 0), b["sequence"] + 1)

    retries: dict[str, dict[str, RetryBatch]] = defaultdict(dict)
    closing: list[tuple] = []
    for b in sorted((b for b in batches.values() if unfinished(b)), key=lambda b: (b["sequence"], b["attempt"])):
        node, key = b["aggregation_node_id"], b["key"]
        if key in retries[node]:
            raise RestoredStateError(
                f"aggregation {node} key {key!r} has several unfinished batches ({retries[node][key].retry_of}, {b['batch_id']}); "
                "the Landscape is inconsistent — inspect it with `elspeth-beam verify`"
            )
        restored = _restore_members(b, members[b["batch_id"]], token_json)
        retries[node][key] = RetryBatch(key, b["sequence"], b["attempt"] + 1, b["batch_id"], restored)
        next_sequence[node][key] = b["sequence"]
        closing += _interrupted(run_id, b, restored)

    retry_tokens = {m.token_id for rs in retries.values() for r in rs.values() for m in r.members}
    redo_rows, redo_outputs = _holes(store, run_id)
    reemit = _outputs_to_reemit(store, run_id, batches, terminal | retry_tokens, redo_outputs)
    reemitted = {t.token_id for ts in reemit.values() for t in ts}
    accounted = terminal | retry_tokens | reemitted | finished_members
    by_row: dict[str, list[str]] = defaultdict(list)
    for tid, t in tokens.items():
        by_row[t["row_id"]].append(tid)
    rows = store.table_rows(s.rows, run_id)
    settled = frozenset(r["row_index"] for r in rows if by_row[r["row_id"]] and set(by_row[r["row_id"]]) <= accounted
                        and r["row_index"] not in redo_rows)
    aggregations = {
        node: AggregationRestore(
            next_sequence=dict(next_sequence.get(node, {})),
            retries=dict(retries.get(node, {})),
            skip_tokens=frozenset(finished_members | retry_tokens),
        )
        for node in set(next_sequence) | set(retries)
    }
    restore = PipelineRestore(
        settled_rows=settled,
        done_tokens=frozenset(terminal),
        aggregations=aggregations,
        reemit={node: tuple(ts) for node, ts in reemit.items()},
        rediverted=_members_to_redivert(store, run_id, batches, members, token_json, terminal),
    )
    return restore, closing


def _members_to_redivert(store: LandscapeStore, run_id: str, batches: dict[str, Any], members: dict[str, list[dict[str, Any]]],
                         token_json: dict[str, str | None], terminal: set[str]) -> dict[str, tuple[tuple[TokenInfo, dict[str, Any]], ...]]:
    """Members of failed flushes still without a terminal outcome, with the flush's error: they
    were on their way to the node's error sink when the process died. (A flush whose node
    quarantines or fails records their outcomes with the failed batch, in one transaction.)"""
    failed = [b for b in batches.values()
              if b["status"] == BatchStatus.FAILED.value and b["trigger_type"] != TriggerType.INTERRUPTED.value]
    if not failed:
        return {}
    ns, bt = s.node_states, s.batches
    with store.engine.connect() as conn:  # only the failed flushes' states: a run has millions of states
        errors = dict(conn.execute(
            select(ns.c.state_id, ns.c.error_json)
            .join(bt, bt.c.aggregation_state_id == ns.c.state_id)
            .where(bt.c.run_id == run_id, bt.c.status == BatchStatus.FAILED.value)
        ).all())
    rediverted: dict[str, list[tuple[TokenInfo, dict[str, Any]]]] = defaultdict(list)
    for b in sorted(failed, key=lambda b: (b["sequence"], b["attempt"], b["batch_id"])):
        stranded = [m for m in members[b["batch_id"]] if m["token_id"] not in terminal]
        if stranded:
            recorded = errors.get(b["aggregation_state_id"])
            error = json.loads(recorded) if recorded else {
                "type": "FailedFlush", "node_id": b["aggregation_node_id"], "traceback": [],
                "message": f"batch {b['batch_id']} failed; its flush's error is not in the Landscape"}
            for token in _restore_members(b, stranded, token_json):
                rediverted[b["aggregation_node_id"]].append((token, error))
    return {node: tuple(pairs) for node, pairs in rediverted.items()}


def _holes(store: LandscapeStore, run_id: str) -> tuple[set[int], dict[str, set[str]]]:
    """Where the crashed run's token paths have holes (invariant 8): the source rows to read
    again, and per token the aggregations whose output of it must go out again (a hole past
    a flush). Each node's audit commits on its own, so a row can have outcomes further on while
    an earlier step's record is missing; redoing the work fills exactly the holes (ids are
    deterministic), and sinks and aggregations skip what they already hold."""
    with store.engine.connect() as conn:
        holes = [p for p in path_problems(conn, run_id, check_flushes=False) if p.missing]
    rows = {p.row_index for p in holes if p.redo_from is None}
    outputs: dict[str, set[str]] = defaultdict(set)
    for p in holes:
        if p.redo_from is not None:
            outputs[p.token_id].add(p.redo_from)
    return rows, outputs


def _outputs_to_reemit(store: LandscapeStore, run_id: str, batches: dict[str, Any], ended: set[str],
                       redo: dict[str, set[str]]) -> dict[str, list[TokenInfo]]:
    """Outputs of completed flushes to send on again: those that went no further, once, after
    the furthest-downstream aggregation that output it (a passthrough chain repeats token ids);
    and those with a hole past an aggregation (``redo``), after that aggregation."""
    position = {n["node_id"]: n["position"] for n in store.table_rows(s.nodes, run_id)}
    latest: dict[str, tuple[int, str, int, str]] = {}
    holed: set[tuple[str, int, str]] = set()
    for out in store.table_rows(s.batch_outputs, run_id):
        batch = batches[out["batch_id"]]
        if batch["status"] != BatchStatus.COMPLETED.value:
            continue
        node, tid = batch["aggregation_node_id"], out["token_id"]
        if node in redo.get(tid, ()):
            holed.add((out["batch_id"], out["ordinal"], out["token_json"]))
        if tid in ended:
            continue
        candidate = (position.get(node, 0), out["batch_id"], out["ordinal"], out["token_json"])
        if tid not in latest or candidate[0] > latest[tid][0]:
            latest[tid] = candidate
    chosen = holed | {(batch_id, ordinal, token_json) for _, batch_id, ordinal, token_json in latest.values()}
    reemit: dict[str, list[TokenInfo]] = defaultdict(list)
    for batch_id, _, token_json in sorted(chosen):
        reemit[batches[batch_id]["aggregation_node_id"]].append(TokenInfo.from_json_bytes(token_json.encode()))
    return reemit


def _restore_members(batch: dict[str, Any], rows: list[dict[str, Any]],
                     token_json: dict[str, str | None]) -> tuple[TokenInfo, ...]:
    """The members' full tokens from their ``buffered`` checkpoints, in ordinal order. (A member
    may not be in ``tokens`` yet: its own node's audit can commit after the aggregation's.)"""
    restored = []
    for m in sorted(rows, key=lambda m: m["ordinal"]):
        tid = m["token_id"]
        if not token_json.get(tid):
            raise RestoredStateError(
                f"batch {batch['batch_id']} member {tid} has no buffered token in the Landscape, so it cannot be "
                "restored with its lineage; this run cannot be resumed — start a new run"
            )
        token = TokenInfo.from_json_bytes(token_json[tid].encode())  # type: ignore[union-attr]
        if token.token_id != tid:
            raise RestoredStateError(f"batch {batch['batch_id']}: buffered token {token.token_id} recorded as {tid}")
        restored.append(token)
    return tuple(restored)


def _interrupted(run_id: str, batch: dict[str, Any], members: tuple[TokenInfo, ...]) -> list[tuple]:
    """A failed node_state and a failed batch for an attempt the process did not finish."""
    node, attempt = batch["aggregation_node_id"], batch["attempt"]
    state_id = ids.state_id(batch["batch_id"], node, attempt)
    now = utc_now()
    error = {"type": "Interrupted", "message": f"the process stopped while batch {batch['batch_id']} was {batch['status']}; "
             f"retried by resume as attempt {attempt + 1}", "node_id": node, "traceback": []}
    return [
        NodeStateRecord(state_id=state_id, run_id=run_id, batch_id=batch["batch_id"], node_id=node, attempt=attempt,
                        status=NodeStateStatus.FAILED.value, input_hash=rows_hash(m.row for m in members),
                        duration_ms=0.0, error_json=json.dumps(error, sort_keys=True), started_at=now, completed_at=now),
        BatchRecord(batch_id=batch["batch_id"], run_id=run_id, aggregation_node_id=node, key=batch["key"],
                    sequence=batch["sequence"], attempt=attempt, status=BatchStatus.FAILED.value,
                    trigger_type=TriggerType.INTERRUPTED.value, trigger_reason="interrupted",
                    aggregation_state_id=state_id, created_at=now, completed_at=now),
    ]


def resume_run(
    store: LandscapeStore, run_id: str, loaded: LoadedPipeline | None = None, *, beam_args: Sequence[str] = (), **run_kwargs: Any
) -> RunResult:
    loaded = settings_for(store, run_id, loaded)
    catch_up(store, loaded, run_id)  # segments committed but not loaded when the process died
    restore, closing = plan_restore(store, run_id)
    store.reopen_run(run_id)
    load_records(store.engine, tables_of(closing))
    return execute_run(loaded, beam_args=beam_args, run_id=run_id, restore=restore, **run_kwargs)
