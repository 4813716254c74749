"""The pipeline files' JSON Schema (config/json_schema.py): shipped current, every example valid,
and no alarm in an editor for a pipeline that runs."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from elspeth_beam.config.json_schema import SCHEMA_FILE, pipeline_schema, schema_text
from elspeth_beam.config.loader import load_settings_dict
from elspeth_beam.core.errors import SettingsError

REPO = Path(__file__).resolve().parent.parent
PIPELINES = sorted([*REPO.glob("pipelines/*.yaml"), *REPO.glob("examples/*/*.yaml")])
VALIDATOR = jsonschema.Draft202012Validator(pipeline_schema(installed=False))


def _errors(document: Any) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in VALIDATOR.iter_errors(document)]


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_the_shipped_schema_is_the_generated_one():
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_text(installed=False), (
        "regenerate it: elspeth-beam schema --builtin > elspeth_beam/config/pipeline.schema.json")
    jsonschema.Draft202012Validator.check_schema(pipeline_schema(installed=False))


def test_the_command_prints_the_shipped_schema():
    out = subprocess.run([sys.executable, "-m", "elspeth_beam.cli", "schema", "--builtin"], capture_output=True,
                         text=True, check=True).stdout
    assert out == SCHEMA_FILE.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_example_pipeline_is_valid_and_names_the_schema(path):
    assert path.read_text(encoding="utf-8").startswith("# yaml-language-server: $schema="), "the modeline comes first"
    assert _errors(_load(path)) == []


def _quickstart() -> dict[str, Any]:
    return _load(REPO / "pipelines/quickstart.yaml")


@pytest.mark.parametrize("edit, where", [
    (lambda d: d.update(sink=d.pop("sinks")), "(top)"),  # a misspelt section
    (lambda d: d["transforms"][0].update(on_sucess=d["transforms"][0].pop("on_success")), "transforms.0"),
    (lambda d: d["source"]["options"].update(pth=d["source"]["options"].pop("path")), "source.options"),
    (lambda d: d["sinks"]["large"]["options"].update(compression="zstd"), "sinks.large.options"),
    (lambda d: d["source"].update(split_bytes="big"), "source.split_bytes"),
    (lambda d: d["transforms"][1]["options"].update(fields={}), "transforms.1.options.fields"),
    (lambda d: d.update(aggregations=[{**d["transforms"][0], "plugin": "batch_stats", "output_mode": "all"}]),
     "aggregations.0"),
])
def test_a_mistyped_key_or_value_fails_the_schema_and_the_run_alike(edit, where):
    document = _quickstart()
    edit(document)
    errors = _errors(document)
    assert errors and any(e.startswith(where) for e in errors), errors
    with pytest.raises(SettingsError):
        load_settings_dict(document)


def test_a_placeholder_may_stand_for_a_number():
    document = _quickstart()
    document["source"]["split_bytes"] = "${SPLIT_BYTES:-1048576}"
    document["run"] = {"max_quarantined_fraction": "${MAX_BAD:-0.5}", "allow_empty": "${ALLOW_EMPTY:-true}"}
    assert _errors(document) == []
    settings = load_settings_dict(document).settings
    assert (settings.source.split_bytes, settings.run.max_quarantined_fraction, settings.run.allow_empty) == (1048576, 0.5, True)


def _renamed_keys(document: Any, path: tuple = ()) -> Iterator[tuple[tuple, dict[str, Any]]]:
    """Every copy of ``document`` with one mapping key misspelt (an ``x`` appended)."""
    if isinstance(document, dict):
        for key in document:
            yield (*path, key), _rename(document, key)
            for inner_path, inner in _renamed_keys(document[key], (*path, key)):
                yield inner_path, {**document, key: inner}
    elif isinstance(document, list):
        for i, item in enumerate(document):
            for inner_path, inner in _renamed_keys(item, (*path, i)):
                yield inner_path, [*document[:i], inner, *document[i + 1:]]


def _rename(mapping: dict[str, Any], key: str) -> dict[str, Any]:
    return {(f"{k}x" if k == key else k): copy.deepcopy(v) for k, v in mapping.items()}


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: str(p.relative_to(REPO)))
def test_the_schema_refuses_no_pipeline_a_run_accepts_and_catches_misspelt_settings(path, monkeypatch):
    """Each key of an example misspelt in turn: whatever the schema refuses, loading refuses too
    (an editor never flags a pipeline that runs); a misspelt key of a settings model or of a
    built-in plugin's options is refused by both."""
    monkeypatch.setenv("OUT_DIR", "out")
    refused = 0
    for where, document in _renamed_keys(_load(path)):
        if _errors(document):
            refused += 1
            with pytest.raises(SettingsError):
                load_settings_dict(document)
    assert refused >= 10  # the settings' own keys and the built-in plugins' options
