"""User-style plugins for the end-to-end tests, referenced from YAML by dotted path
(``plugins_for_tests.Flaky``); tests put this folder on ``sys.path`` first."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from elspeth_beam.plugins.base import PluginOptions, TransformPlugin


class FlakyError(RuntimeError):
    """Raised by Flaky for the rows it refuses (a type name the audit must record)."""


class FlakyOptions(PluginOptions):
    field: str = "n"
    every: int = 3  # refuse rows whose field is a multiple of this


class Flaky(TransformPlugin):
    """Doubles ``field``, but raises FlakyError when it is a multiple of ``every``."""

    name = "flaky"
    Options = FlakyOptions
    options: FlakyOptions

    def process(self, row: dict[str, Any]) -> dict[str, Any]:
        value = row[self.options.field]
        if value % self.options.every == 0:
            raise FlakyError(f"refusing {self.options.field}={value}")
        return {**row, "doubled": value * 2}


class SecretiveOptions(PluginOptions):
    api_key: str  # secret by its name
    seed_phrase: str = Field("", json_schema_extra={"secret": True})  # secret by the schema mark
    pin: int = Field(0, json_schema_extra={"secret": True})  # a marked secret that is not a string
    endpoint: str = ""  # may hold a URL with a password
    label: str = "tagged"  # not secret: recorded as is


class Secretive(TransformPlugin):
    """Tags each row; holds credentials in its options, as a client of some service would."""

    name = "secretive"
    Options = SecretiveOptions
    options: SecretiveOptions

    def process(self, row: dict[str, Any]) -> dict[str, Any]:
        return {**row, "tag": self.options.label}
