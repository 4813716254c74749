"""Specific exceptions, each telling the user what to fix."""

from __future__ import annotations


class ElspethError(Exception):
    """Base class of every error elspeth_beam raises on purpose."""


class CanonicalizationError(ElspethError, ValueError):
    """A value has no canonical JSON form (NaN, ±Infinity, an unsupported type)."""


class SettingsError(ElspethError):
    """The pipeline settings are invalid; ``problems`` are 'yaml.path: message' lines."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid settings:\n" + "\n".join(f"  {p}" for p in problems))


class PluginError(ElspethError):
    """A plugin cannot be found or configured."""


class ExpressionError(ElspethError, ValueError):
    """A gate or computed-field expression is not allowed or cannot be evaluated."""


class RowError(ElspethError):
    """A row cannot be processed by a plugin (bad value, missing field); it is quarantined."""


class LandscapeError(ElspethError):
    """The audit database is missing, unreachable or inconsistent."""


class RunNotFoundError(LandscapeError):
    """No run with the requested id exists in the Landscape."""


class PipelineFailedError(ElspethError):
    """The Beam pipeline raised; the run is recorded as failed."""


class RunExistsError(LandscapeError):
    """A new run was asked for under a run id the Landscape already holds."""


class AuditLogExistsError(LandscapeError):
    """A new run's folder in the audit log already holds segments (another run of that id)."""


class RunInterruptedError(ElspethError):
    """The run was stopped by Ctrl-C (SIGINT); it is recorded as interrupted."""

    def __init__(self, run_id: str, landscape: str | None = None) -> None:
        self.run_id = run_id
        where = f" -l {landscape}" if landscape else ""
        super().__init__(f"interrupted; finish it with: elspeth-beam resume {run_id}{where}")


class UsageError(ElspethError):
    """The command line asks in a form the command does not take (exit 2, the message says the form it does)."""


class PreflightError(ElspethError):
    """A check before the run starts failed (an output that cannot be written)."""
