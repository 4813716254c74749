"""Pipeline settings as frozen pydantic models (``extra="forbid"``: a misspelt key is an error)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, StringConstraints, model_validator

from elspeth_beam.landscape.store import DEFAULT_URL
from elspeth_beam.plugins.splits import DEFAULT_SPLIT_BYTES

NodeName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*$")]
ON_ERROR_HELP = "a sink name, 'quarantine' (record and set aside) or 'fail' (record as failed)"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SourceSettings(_Model):
    name: NodeName = "source"
    plugin: str
    on_success: str
    on_validation_failure: str = "quarantine"
    options: dict[str, Any] = {}
    split_bytes: int = Field(DEFAULT_SPLIT_BYTES, ge=1, description=(
        "read the source in parts of about this many bytes, in parallel where the runner has "
        "workers; rows keep their indexes however it is split"))


class TransformSettings(_Model):
    name: NodeName
    plugin: str
    input: str
    on_success: str
    on_error: str = Field(description=ON_ERROR_HELP)
    options: dict[str, Any] = {}


class GateSettings(_Model):
    """``condition`` is a safe expression; its value (true/false or a string) picks a route.
    A route's destination is a connection (continue), a sink (route) or a list (fork)."""

    name: NodeName
    input: str
    condition: str
    routes: dict[str, str | list[str]]
    on_error: str = Field(description=ON_ERROR_HELP)

    @model_validator(mode="after")
    def _routes_present(self) -> "GateSettings":
        if not self.routes:
            raise ValueError("a gate needs at least one route")
        return self


class TriggerSettings(_Model):
    count: PositiveInt | None = None
    timeout_seconds: PositiveFloat | None = None


class AggregationSettings(_Model):
    name: NodeName
    plugin: str
    input: str
    on_success: str
    on_error: str = Field(description=ON_ERROR_HELP)
    group_by: list[str] = []
    trigger: TriggerSettings = TriggerSettings()
    output_mode: Literal["single", "passthrough", "transform"] = "single"
    expected_output_count: PositiveInt | None = None
    options: dict[str, Any] = {}


class SinkSettings(_Model):
    plugin: str
    options: dict[str, Any] = {}


class LandscapeSettings(_Model):
    url: str = DEFAULT_URL
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
    runner: str = "DirectRunner"
    beam_options: list[str] = []
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
    source: SourceSettings
    transforms: list[TransformSettings] = []
    gates: list[GateSettings] = []
    aggregations: list[AggregationSettings] = []
    sinks: dict[str, SinkSettings]
    landscape: LandscapeSettings = LandscapeSettings()
    run: RunSettings = RunSettings()
