"""Pipeline settings as frozen pydantic models (``extra="forbid"``: a misspelt key is an error)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, StringConstraints, model_validator

from elspeth_beam.landscape.store import DEFAULT_URL
from elspeth_beam.plugins.splits import DEFAULT_SPLIT_BYTES

NodeName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*$")]
ON_ERROR_HELP = "a sink name, 'quarantine' (record and set aside) or 'fail' (record as failed)"
NAME_HELP = "the node's name (letters, digits, _ and -), unique in the pipeline: ids, reports and explain use it"
INPUT_HELP = "the connection the node reads: another node's on_success (or a gate route) of the same name"
ON_SUCCESS_HELP = "the connection its rows go on to: a later node's input, or a sink name"
OPTIONS_HELP = "the plugin's options (the plugin reference lists each plugin's)"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SourceSettings(_Model):
    name: NodeName = Field("source", description=NAME_HELP)
    plugin: str = Field(description="the source plugin: csv, jsonl, parquet or an installed one")
    on_success: str = Field(description=ON_SUCCESS_HELP)
    on_validation_failure: str = Field("quarantine", description=(
        "where a record that does not parse, or fails its schema, goes: a sink name or 'quarantine'"))
    options: dict[str, Any] = Field({}, description=OPTIONS_HELP)
    split_bytes: int = Field(DEFAULT_SPLIT_BYTES, ge=1, description=(
        "read the source in parts of about this many bytes, in parallel where the runner has "
        "workers; rows keep their indexes however it is split"))


class TransformSettings(_Model):
    name: NodeName = Field(description=NAME_HELP)
    plugin: str = Field(description="the transform plugin: field_mapper, coerce, computed, an installed one or a dotted path")
    input: str = Field(description=INPUT_HELP)
    on_success: str = Field(description=ON_SUCCESS_HELP)
    on_error: str = Field(description=ON_ERROR_HELP)
    options: dict[str, Any] = Field({}, description=OPTIONS_HELP)


class GateSettings(_Model):
    """``condition`` is a safe expression; its value (true/false or a string) picks a route.
    A route's destination is a connection (continue), a sink (route) or a list (fork)."""

    name: NodeName = Field(description=NAME_HELP)
    input: str = Field(description=INPUT_HELP)
    condition: str = Field(description="a safe expression over `row` (e.g. row['total'] >= 1000); no eval")
    routes: dict[str, str | list[str]] = Field(description=(
        "the condition's value ('true', 'false' or any string) → a connection (continue), a sink (route) "
        "or a list of them (fork)"))
    on_error: str = Field(description=ON_ERROR_HELP)

    @model_validator(mode="after")
    def _routes_present(self) -> "GateSettings":
        if not self.routes:
            raise ValueError("a gate needs at least one route")
        return self


class TriggerSettings(_Model):
    """When a batch is flushed; the end of the source always flushes what is left."""

    count: PositiveInt | None = Field(None, description="flush a batch once it holds this many rows")
    timeout_seconds: PositiveFloat | None = Field(None, description=(
        "flush a batch this long after its first row arrived, even if no other row comes (streaming)"))


class AggregationSettings(_Model):
    name: NodeName = Field(description=NAME_HELP)
    plugin: str = Field(description="the batch plugin: batch_stats, dedupe, an installed one or a dotted path")
    input: str = Field(description=INPUT_HELP)
    on_success: str = Field(description=ON_SUCCESS_HELP)
    on_error: str = Field(description=ON_ERROR_HELP + "; a failed flush sends every member there")
    group_by: list[str] = Field([], description="the fields whose values key the batches (none: one batch stream)")
    trigger: TriggerSettings = Field(TriggerSettings(), description="when a batch is flushed")
    output_mode: Literal["single", "passthrough", "transform"] = Field("single", description=(
        "single: one new row per batch; transform: new rows (expected_output_count of them, if set); "
        "passthrough: each member goes on with the plugin's row for it"))
    expected_output_count: PositiveInt | None = Field(None, description="with transform: the rows each flush must emit")
    options: dict[str, Any] = Field({}, description=OPTIONS_HELP)


class SinkSettings(_Model):
    plugin: str = Field(description="the sink plugin: csv, jsonl, parquet or an installed one")
    options: dict[str, Any] = Field({}, description=OPTIONS_HELP + "; every built-in sink takes path")


class LandscapeSettings(_Model):
    url: str = Field(DEFAULT_URL, description="the Landscape: a SQLAlchemy URL (SQLite, PostgreSQL) or a SQLite file's path")
    audit_log: str | None = Field(
        None,
        description="folder of the audit log's segment files, one subfolder per run (default: beside a SQLite "
                    "Landscape, <file>.audit; otherwise runs/audit)",
    )
    segment_records: int | None = Field(
        None, ge=1,
        description="audit records per segment at most, within a bundle (default 20000): smaller segments commit "
                    "sooner and hold less memory, larger ones cost fewer files",
    )


class RunSettings(_Model):
    runner: str = Field("DirectRunner", description="the Beam runner: DirectRunner, FlinkRunner, DataflowRunner, …")
    beam_options: list[str] = Field([], description="Beam pipeline options as on a command line (--flink_master=…)")
    allow_empty: bool = Field(
        True,
        description="a source that yields no rows (an empty file, a header only, a pattern matching no file) "
                    "completes the run with a warning; false: the run ends failed",
    )
    max_quarantined_fraction: float | None = Field(
        None, ge=0.0, le=1.0,
        description="the run ends failed when more than this fraction of its source rows were quarantined or "
                    "failed (0: any such row; 1: never); unset, only a run in which every row was",
    )


class PipelineSettings(_Model):
    source: SourceSettings = Field(description="where the rows come from")
    transforms: list[TransformSettings] = Field([], description="row by row steps")
    gates: list[GateSettings] = Field([], description="routing decisions: continue, route to a sink, or fork")
    aggregations: list[AggregationSettings] = Field([], description="batches of rows, flushed by trigger")
    sinks: dict[str, SinkSettings] = Field(description="name → where rows are written")
    landscape: LandscapeSettings = Field(LandscapeSettings(), description="where the audit goes")
    run: RunSettings = Field(RunSettings(), description="how the run is executed and when it counts as failed")
