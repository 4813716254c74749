"""Run lifecycle: record the run, build and run the Beam pipeline, merge sinks, verify.

runs/nodes/edges are written before the pipeline starts, so even a run that dies at once
leaves a record. After the pipeline, sinks' parts are merged, ``verify`` checks the audit
invariants, the run is marked completed (all invariants hold) or failed, and a completed
run's parts are removed (``retention.py``).
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions, StandardOptions
from sqlalchemy import update

from elspeth_beam.config.loader import LoadedPipeline, with_absolute_paths
from elspeth_beam.config.preflight import sink_problems
from elspeth_beam.config.secrets import Fingerprinter, protect_node, warn_if_unkeyed
from elspeth_beam.core.canonical import canonical_json, stable_hash
from elspeth_beam.core.enums import NodeType, RunStatus
from elspeth_beam.core.errors import AuditLogExistsError, ElspethError, PipelineFailedError, PreflightError, RunInterruptedError
from elspeth_beam.core.timestamps import utc_now
from elspeth_beam.landscape import schema as s
from elspeth_beam.auditlog import segments
from elspeth_beam.auditlog.digest import DIGESTED_IN_PIPELINE_PROCESS, EVENT_TABLES, digest_tables_apart, finish_run
from elspeth_beam.landscape.store import DEFAULT_URL, LandscapeStore, absolute_url, normalize_url
from elspeth_beam.auditlog.loader import load_committed, load_records
from elspeth_beam.auditlog.records import tables_of
from elspeth_beam.auditlog.writer_process import AuditWriter, AuditWriterError
from elspeth_beam.inspect.summary import display_url, render_text, summarize
from elspeth_beam.inspect.verify import VerifyReport, verify_run
from elspeth_beam.pipeline.builder import BuiltPipeline, apply_graph
from elspeth_beam.pipeline.restore import PipelineRestore
from elspeth_beam.pipeline.sink import merge_sink
from elspeth_beam.plugins import registry
from elspeth_beam.plugins.base import BatchPlugin, SinkPlugin, SourcePlugin, TransformPlugin
from elspeth_beam.retention import parts_rule, remove_parts

# The DirectRunner would first try to download Beam's Prism binary; its own pure-Python
# fallbacks run offline, so "DirectRunner" resolves to them directly: the FnApiRunner (fast),
# or the BundleBasedDirectRunner for streaming.
_DIRECT_ALIASES = {"directrunner", "direct"}
_PLUGIN_KINDS = {NodeType.SOURCE: SourcePlugin, NodeType.TRANSFORM: TransformPlugin,
                 NodeType.AGGREGATION: BatchPlugin, NodeType.SINK: SinkPlugin}


@dataclass
class RunResult:
    run_id: str
    status: RunStatus
    landscape_url: str
    runner: str
    duration_s: float
    summary: dict[str, Any]
    report: VerifyReport
    reason: str | None = None  # why the run is failed, when it is
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase of the run (``Phases``)

    def text(self) -> str:
        """The end-of-run summary table ``run`` and ``resume`` print."""
        return render_text(run_id=self.run_id, status=self.status.value, runner=self.runner, duration_s=self.duration_s,
                           landscape_url=self.landscape_url, summary=self.summary, problems=self.report.problems,
                           reason=self.reason)

    def as_json(self) -> dict[str, Any]:
        """The same facts for scripts (``--json``); the Landscape URL without its password."""
        return {"run_id": self.run_id, "status": self.status.value, "status_reason": self.reason, "runner": self.runner,
                "landscape": display_url(self.landscape_url), "duration_s": round(self.duration_s, 3),
                **self.summary, "verify": self.report.problems}


def new_run_id() -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"run-{stamp}-{secrets.token_hex(3)}"


def pipeline_options(loaded: LoadedPipeline, beam_args: Sequence[str] = ()) -> tuple[PipelineOptions, str]:
    """Beam options from settings then command line (command line wins); the runner name."""
    run = loaded.settings.run
    args = [*run.beam_options, *beam_args]
    options = PipelineOptions(args)
    standard = options.view_as(StandardOptions)
    requested = standard.runner or run.runner
    runner = requested
    if requested.lower() in _DIRECT_ALIASES:
        runner = "BundleBasedDirectRunner" if standard.streaming else "FnApiRunner"
    if runner == "FlinkRunner" and (extra := _flink_defaults(args, standard.streaming)):
        options = PipelineOptions([*args, *extra])
        standard = options.view_as(StandardOptions)
    standard.runner = runner
    label = f"{requested} ({runner})" if runner != requested else runner
    return options, label


def _flink_defaults(args: Sequence[str], streaming: bool) -> list[str]:
    """The Flink options our bounded sources need, unless the user set them.

    Batch: every exchange blocking, so a task consumes only what finished upstream (stable
    input). Streaming with checkpoints: Beam keeps idle sources alive forever then (so that
    checkpoints go on), and a bounded source's job would never finish; Flink 1.15+ checkpoints
    past finished tasks, so the sources may end when their input does."""
    given = lambda name: any(a.startswith(f"--{name}") for a in args)  # noqa: E731
    if not streaming:
        return [] if given("execution_mode_for_batch") else ["--execution_mode_for_batch=BATCH_FORCED"]
    if given("checkpointing_interval") and not given("shutdown_sources_after_idle_ms"):
        return ["--shutdown_sources_after_idle_ms=0"]
    return []


def replays_identically(options: PipelineOptions) -> bool:
    """Whether the runner re-runs a failed bundle with the same elements in the same order (the
    direct runners, Beam's embedded job service). A cluster runner may re-run a failed task
    with its input in another order or other bundles, so its audit and sink writes need stable
    input (``pipeline/builder.py``)."""
    runner = (options.view_as(StandardOptions).runner or "").rsplit(".", 1)[-1]
    if runner == "PortableRunner":
        return options.view_as(PortableOptions).job_endpoint == "embed"
    return runner in ("FnApiRunner", "BundleBasedDirectRunner", "DirectRunner", "SwitchingDirectRunner")


def _node_rows(loaded: LoadedPipeline) -> list[dict[str, Any]]:
    out = []
    fp = Fingerprinter.from_env()
    for position, node in enumerate(loaded.graph.nodes):
        config = protect_node(node.settings.model_dump(mode="json"), _PLUGIN_KINDS.get(node.node_type), fp)
        out.append(
            {
                "node_id": node.node_id,
                "name": node.name,
                "plugin_name": node.plugin_name,
                "node_type": node.node_type.value,
                "config_json": canonical_json(config).decode(),
                "config_hash": stable_hash(config),
                "position": position,
            }
        )
    return out


def preflight(loaded: LoadedPipeline, run_id: str) -> None:
    """Catch user mistakes (a missing input file, a sink folder that is a file) before Beam
    would bury them in a traceback."""
    source = loaded.settings.source
    plugin = registry.build(SourcePlugin, source.plugin, source.options)
    getattr(plugin, "preflight", lambda: None)()
    problems = sink_problems(loaded, run_id)
    if problems:
        raise PreflightError("; ".join(problems))


def merge_sinks(store: LandscapeStore, loaded: LoadedPipeline, run_id: str) -> None:
    artifacts = store.table_rows(s.artifacts, run_id)
    merged = []
    for node in loaded.graph.nodes:
        if node.node_type is not NodeType.SINK:
            continue
        plugin = registry.build(SinkPlugin, node.settings.plugin, node.settings.options)  # type: ignore[attr-defined]
        parts = [a for a in artifacts if a["sink_node_id"] == node.node_id and a["artifact_kind"] == "part"]
        merged.append(merge_sink(plugin, parts, run_id, node.node_id))
    load_records(store.engine, tables_of(merged))


def _refuse_used_audit_log(store: LandscapeStore, loaded: LoadedPipeline, run_id: str) -> None:
    """A new run must start with an empty folder in the audit log: segments there belong to
    another run of the same id (another Landscape, or one deleted), and the catch-up would load
    them into this one."""
    directory = segments.run_dir(segments.audit_log_dir(store.url, loaded.settings.landscape.audit_log), run_id)
    if segments.committed(directory) and not store.has_run(run_id):  # if it has, begin_run says so
        store.dispose()
        raise AuditLogExistsError(
            f"the audit log folder {directory} already holds segments of a run {run_id}; a run id names one run: "
            "choose another --run-id, or point landscape.audit_log elsewhere (move the folder away if that run is gone)"
        )


def catch_up(store: LandscapeStore, loaded: LoadedPipeline, run_id: str) -> int:
    """Load the run's committed segments the Landscape lacks (a writer that died between a
    segment's commit and its load), then drop losing attempts' files; records loaded."""
    directory = segments.run_dir(segments.audit_log_dir(store.url, loaded.settings.landscape.audit_log), run_id)
    loaded_records = load_committed(store.engine, directory)
    segments.remove_orphans(directory)
    return loaded_records


def execute_run(
    loaded: LoadedPipeline,
    *,
    beam_args: Sequence[str] = (),
    run_id: str | None = None,
    make_pipeline: Callable[[PipelineOptions], beam.Pipeline] | None = None,
    tap: Callable[[BuiltPipeline], None] | None = None,
    restore: PipelineRestore | None = None,
    progress: Callable[[str, str], AbstractContextManager[Any]] | None = None,
    keep_parts: bool = False,
) -> RunResult:
    """Run a loaded pipeline end to end and return its verified result.

    ``make_pipeline`` lets tests supply a TestPipeline; ``tap`` lets them observe the audit
    stream (e.g. to replay its events). ``restore`` comes from ``resume``. ``progress`` is
    called with the Landscape URL and run id and entered while the pipeline runs (the CLI's
    progress display, see ``elspeth_beam.progress``). ``keep_parts`` keeps the sinks' part
    files of a completed run, which are otherwise removed (``elspeth_beam.retention``).
    """
    run_id = run_id or new_run_id()
    loaded = with_absolute_paths(loaded)  # workers may run in another directory
    options, runner_label = pipeline_options(loaded, beam_args)
    preflight(loaded, run_id)
    pipeline = _make(make_pipeline, options)
    store = LandscapeStore(loaded.settings.landscape.url)
    if restore is None:
        _refuse_used_audit_log(store, loaded, run_id)
    warn_if_unkeyed(loaded.settings_json)
    store.begin_run(
        run_id=run_id,
        settings_json=loaded.settings_json,
        settings_hash=loaded.settings_hash,
        settings_path=loaded.path,
        runner=runner_label,
        beam_options=Fingerprinter.from_env().protect(options.get_all_options(drop_default=True)),
        nodes=_node_rows(loaded),
        edges=loaded.graph.edges(),
        resuming=restore is not None,
    )
    started = time.perf_counter()
    phases = Phases()
    try:
        with fewer_gc_passes():
            result = _run_recorded(loaded, store, run_id, pipeline, options, restore, tap, progress, phases, keep_parts)
    except BaseException as exc:
        if not _is_interrupt(exc):
            raise
        _mark_interrupted(store, run_id)
        raise RunInterruptedError(run_id, _resume_landscape(store.url)) from None
    finally:
        store.dispose()
    report, summary, reason = result
    return RunResult(
        phases=phases.seconds,
        run_id=run_id,
        status=RunStatus.COMPLETED if reason is None else RunStatus.FAILED,
        landscape_url=store.url,
        runner=runner_label,
        duration_s=time.perf_counter() - started,
        summary=summary,
        report=report,
        reason=reason,
    )


def _run_recorded(
    loaded: LoadedPipeline,
    store: LandscapeStore,
    run_id: str,
    pipeline: beam.Pipeline,
    options: PipelineOptions,
    restore: PipelineRestore | None,
    tap: Callable[[BuiltPipeline], None] | None,
    progress: Callable[[str, str], AbstractContextManager[Any]] | None,
    phases: Phases,
    keep_parts: bool,
) -> tuple[VerifyReport, dict[str, Any], str | None]:
    """Run the recorded run's pipeline, merge its sinks, verify, digest, mark it finished and
    apply the parts' retention rule; its verify report, summary and the reason it failed
    (None: completed)."""
    built = apply_graph(pipeline, loaded, run_id, restore, streaming=options.view_as(StandardOptions).streaming,
                        stable_input=not replays_identically(options))
    if tap is not None:
        tap(built)
    try:
        with progress(store.url, run_id) if progress is not None else nullcontext():
            with phases("pipeline"):
                pipeline.run().wait_until_finish()
            with phases("load backlog"):
                AuditWriter.drain_shared(absolute_url(store.url))  # the loads still behind the commits
    except Exception as exc:
        if _is_interrupt(exc):
            raise
        finish_run(store, run_id, RunStatus.FAILED.value, {"error": _root_message(exc)})
        raise PipelineFailedError(f"run {run_id} failed: {_root_message(exc)}") from exc
    with phases("catch-up"):
        catch_up(store, loaded, run_id)
    with phases("merge sinks"):
        merge_sinks(store, loaded, run_id)
    digesting = _digest_event_tables(store.url, run_id)
    with phases("verify"):
        report = verify_run(store, run_id)
    with phases("summary"):
        summary = summarize(store, run_id)
        summary["warnings"] = input_warnings(loaded, summary)
    reason = failure_reason(report, summary, loaded.settings.run.max_quarantined_fraction,
                            allow_empty=loaded.settings.run.allow_empty)
    with phases("digest"):
        digested = {**digest_tables_apart(store.engine, run_id, DIGESTED_IN_PIPELINE_PROCESS), **digesting()}
    status = RunStatus.COMPLETED if reason is None else RunStatus.FAILED
    parts = parts_rule(status, keep_parts)
    with phases("finish"):
        finish_run(store, run_id, status.value, {**summary, "verify_problems": report.problems, "status_reason": reason,
                                                "sink_parts": parts}, digested)
    with phases("remove parts"):
        remove_parts(store, loaded, run_id, parts)
    return report, summary, reason


class Phases:
    """Wall seconds per phase of a run, in order (the benchmark reports them)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


def input_warnings(loaded: LoadedPipeline, summary: dict[str, Any]) -> list[str]:
    """What the summary says out loud about the input: a source that yielded nothing."""
    if summary["rows_read"]:
        return []
    path = loaded.settings.source.options.get("path")
    return [f"the source yielded no rows{f' ({path})' if path else ''}: an empty file, a header only or a pattern "
            "matching no file (run.allow_empty: false makes this a failed run)"]


def failure_reason(report: VerifyReport, summary: dict[str, Any], max_fraction: float | None, *,
                   allow_empty: bool = True) -> str | None:
    """Why a run whose pipeline finished is not ``completed``: its audit failed verification,
    its source yielded nothing and ``run.allow_empty`` is false, or too many of its source rows
    were set aside (quarantined or failed): more than ``run.max_quarantined_fraction`` or, when
    that is unset, every one — a run that gets no row through has not done its job, whatever
    its audit says."""
    if not report.ok:
        return f"the audit failed verification ({len(report.problems)} problem(s))"
    rows, set_aside = summary["rows_read"], summary["rows_set_aside"]
    if not rows and not allow_empty:
        return "the source yielded no rows and run.allow_empty is false"
    if rows and set_aside == rows and max_fraction is None:
        return (f"every source row ({set_aside} of {rows}) was quarantined or failed: none got through "
                "(run.max_quarantined_fraction: 1 accepts that)")
    if rows and max_fraction is not None and set_aside / rows > max_fraction:
        return (f"{set_aside} of {rows} source rows ({set_aside / rows:.1%}) were quarantined or failed, more than "
                f"run.max_quarantined_fraction {max_fraction:g} allows")
    return None


def _is_interrupt(exc: BaseException) -> bool:
    """Ctrl-C: a KeyboardInterrupt, or what Beam wrapped one in (it re-raises a DoFn's
    KeyboardInterrupt as a RuntimeError naming the step)."""
    return any(isinstance(seen, KeyboardInterrupt) for seen in _chain(exc))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it was raised from or during, outermost first (how Beam wraps a DoFn's)."""
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def _mark_interrupted(store: LandscapeStore, run_id: str) -> None:
    """The run as Ctrl-C left it: ``interrupted`` (not digested: resume finishes it). Only a
    run still ``running`` moves — an interrupt after the finish must not unseal the run."""
    with store.engine.begin() as conn:
        conn.execute(
            update(s.runs)
            .where(s.runs.c.run_id == run_id, s.runs.c.status == RunStatus.RUNNING.value)
            .values(status=RunStatus.INTERRUPTED.value, completed_at=utc_now(),
                    summary_json=json.dumps({"error": "interrupted (Ctrl-C)"}))
        )


def _resume_landscape(url: str) -> str | None:
    """The ``-l`` that ``resume`` needs to find this Landscape, None for the default one."""
    return None if url == normalize_url(DEFAULT_URL) else display_url(url)


def _digest_event_tables(url: str, run_id: str) -> Callable[[], dict[str, Any]]:
    """Start digesting the writer process's share of the event tables, while this one verifies
    and digests the rest; the returned call waits for their manifest entries. Should the
    writer fail, ``finish_run`` digests them itself (the entries come back empty)."""
    theirs = [t for t in EVENT_TABLES if t not in DIGESTED_IN_PIPELINE_PROCESS]
    try:
        writer = AuditWriter.shared()
        ticket = writer.submit_digest(absolute_url(url), run_id, theirs)
    except AuditWriterError as exc:  # gone already: the request itself fails
        fallback = _in_this_process(exc)
        return lambda: fallback

    def entries() -> dict[str, Any]:
        try:
            return writer.result(ticket)
        except AuditWriterError as exc:
            return _in_this_process(exc)

    return entries


def _in_this_process(exc: AuditWriterError) -> dict[str, Any]:
    logging.getLogger(__name__).warning("digesting in this process instead: %s", exc)
    return {}


@contextmanager
def fewer_gc_passes() -> Iterator[None]:
    """Python's cyclic GC, collected less often while a run executes in this process.

    An audited run keeps many small containers alive (tokens in aggregation state, audit
    buffers, events), and with the default thresholds (700, 10, 10) the collector re-walks
    them again and again: 100k rows took 49.0 s with them, 39.1 s with these (the plain
    pipeline: no difference). Garbage cycles are still collected, a little later.
    """
    before = gc.get_threshold()
    gc.set_threshold(50_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*before)


class RunnerError(ElspethError):
    """Beam cannot create the requested runner."""


def _make(make_pipeline: Callable[[PipelineOptions], beam.Pipeline] | None, options: PipelineOptions) -> beam.Pipeline:
    """The Beam pipeline — built before the run is recorded, so a bad runner records nothing."""
    try:
        return make_pipeline(options) if make_pipeline else beam.Pipeline(options=options)
    except ValueError as exc:
        raise RunnerError(str(exc)) from None


def _root_message(exc: BaseException) -> str:
    """What a Beam-wrapped exception says to the user: the message of our own error in it
    (it says what to fix), else the innermost one's."""
    ours = own_error(exc)
    if ours is not None:
        return str(ours).strip().splitlines()[0]
    *_, seen = _chain(exc)
    message = str(seen).strip().splitlines()
    return f"{type(seen).__name__}: {message[-1] if message else ''}"


def own_error(exc: BaseException) -> ElspethError | None:
    """The outermost ElspethError in ``exc``'s chain (Beam wraps a DoFn's exception), if any."""
    return next((seen for seen in _chain(exc) if isinstance(seen, ElspethError)), None)
