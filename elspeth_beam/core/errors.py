"""Specific exceptions, each telling the user what to fix."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Self

from elspeth_beam.core.reasons import PLACEHOLDER


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


class DataError(ElspethError):
    """An error about one row's data. Its message names the offending values; ``reason`` is
    the message with them taken out and ``values`` are their reprs, recorded apart so that
    reports count the rows of one cause together (``core/reasons.py``)."""

    def __init__(self, message: str, *, reason: str | None = None, values: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.reason = reason
        self.values = tuple(values)

    @classmethod
    def about(cls, phrase: Callable[..., str], *values: Any, detail: str | None = None) -> Self:
        """The error ``phrase(*reprs of values)`` says (then ``: detail``); its reason is the
        phrase with ``PLACEHOLDER`` for each value (the detail left out: it restates the value)."""
        shown = [repr(v) for v in values]
        message = phrase(*shown) + (f": {detail}" if detail else "")
        return cls(message, reason=phrase(*[PLACEHOLDER] * len(values)), values=shown)


class ExpressionError(DataError, ValueError):
    """A gate or computed-field expression is not allowed or cannot be evaluated."""


class RowError(DataError):
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
