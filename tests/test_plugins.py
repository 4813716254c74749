"""Writing one's own plugins: found by entry point or dotted path, listed with their options,
and the example package under ``examples/`` installed and tested as its author would.

- ``registry.resolve`` finds an installed plugin by its entry-point name (group
  ``elspeth_beam.plugins``); a broken or wrong-kind entry point is a PluginError naming the
  package, and a built-in name cannot be taken over;
- ``elspeth-beam plugins`` lists built-ins and installed plugins with the options of their
  pydantic models (the models settings are validated against);
- ``examples/elspeth-example-plugins`` installs with pip, shows up in ``elspeth-beam plugins``,
  runs in a pipeline by its entry-point name, and its own tests pass;
- ``testing.run_for_test`` writes sinks under the test's folder, never where the YAML says.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from conftest import QUICKSTART, REPO

from elspeth_beam import testing
from elspeth_beam.config.loader import load_settings_dict
from elspeth_beam.core.errors import PluginError, SettingsError
from elspeth_beam.plugins import catalog, registry
from elspeth_beam.plugins.base import SinkPlugin, TransformPlugin
from elspeth_beam.plugins.transforms import FieldMapper

EXAMPLE = REPO / "examples" / "elspeth-example-plugins"
TESTS = Path(__file__).resolve().parent


@pytest.fixture
def entry_points(monkeypatch):
    """Install entry points without a package: ``entry_points(name="module:Class", ...)``."""
    monkeypatch.syspath_prepend(str(TESTS))

    def install(**named: str) -> None:
        table = {name: metadata.EntryPoint(name, value, registry.ENTRY_POINT_GROUP) for name, value in named.items()}
        monkeypatch.setattr(registry, "installed", lambda: table)

    return install


def test_an_entry_point_name_resolves_to_its_class(entry_points):
    entry_points(flaky="plugins_for_tests:Flaky")
    import plugins_for_tests

    assert registry.resolve(TransformPlugin, "flaky") is plugins_for_tests.Flaky


def test_a_builtin_name_cannot_be_taken_over_and_the_listing_says_so(entry_points):
    entry_points(field_mapper="plugins_for_tests:Flaky")
    assert registry.resolve(TransformPlugin, "field_mapper") is FieldMapper
    listed = [i for i in catalog.catalog() if i.name == "field_mapper"]
    assert [i.origin == "built-in" for i in listed] == [True, False]
    assert "shadowed" in listed[1].problem


@pytest.mark.parametrize("value, expected", [
    ("no_such_module_anywhere:Thing", "cannot be loaded: ModuleNotFoundError"),
    ("plugins_for_tests:FlakyError", "is not a plugin class"),
])
def test_a_broken_entry_point_is_a_plugin_error_naming_it(entry_points, value, expected):
    entry_points(broken=value)
    with pytest.raises(PluginError, match=expected) as raised:
        registry.resolve(TransformPlugin, "broken")
    assert f"entry point {value!r}" in str(raised.value)
    listed = next(i for i in catalog.catalog() if i.name == "broken")
    assert listed.kind == "unusable" and expected in listed.problem


def test_a_plugin_of_another_kind_is_refused_in_settings(entry_points, tmp_path):
    entry_points(flaky="plugins_for_tests:Flaky")
    settings = yaml.safe_load(QUICKSTART.read_text())
    settings["sinks"]["standard"]["plugin"] = "flaky"
    with pytest.raises(SettingsError, match="'flaky' .* is not a SinkPlugin subclass"):
        load_settings_dict(settings, landscape_url=testing.landscape_url(tmp_path))


def test_an_unknown_name_lists_built_in_and_installed_plugins(entry_points):
    entry_points(flaky="plugins_for_tests:Flaky")
    with pytest.raises(PluginError, match=r"built-in: csv, jsonl, parquet; installed: flaky .*elspeth-beam plugins"):
        registry.resolve(SinkPlugin, "xlsx")


def test_the_listing_gives_every_builtin_with_its_models_options():
    infos = {(i.kind, i.name): i for i in catalog.catalog()}
    for kind, known in registry.BUILTINS.items():
        for name, cls in known.items():
            info = infos[(registry.kind_name(kind), name)]
            assert info.origin == "built-in" and info.summary
            fields = cls.Options.model_fields
            assert [o.name for o in info.options] == [f.alias or n for n, f in fields.items()]
            assert [o.required for o in info.options] == [f.is_required() for f in fields.values()]
            assert all(o.description for o in info.options), f"{name}: document every option (Field(description=...))"
    csv_source = infos[("source", "csv")]
    assert {o.name: (o.type, o.default) for o in csv_source.options}["schema"] == ("dict[str, str]", {})
    assert {o.name: o.type for o in infos[("transform", "computed")].options} == {"fields": "dict[str, Expression]"}


def _install_example(target: Path) -> dict[str, str]:
    """pip-install the example package into ``target`` (not the environment: other tests must
    not see it); the environment a process needs to find it."""
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--target", str(target), str(EXAMPLE)], check=True, capture_output=True, text=True)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(REPO)])}


def test_the_example_package_installs_lists_runs_and_passes_its_own_tests(tmp_path):
    env = _install_example(tmp_path / "site")
    cli = [sys.executable, "-m", "elspeth_beam.cli"]

    listed = subprocess.run([*cli, "plugins", "--json"], env=env, capture_output=True, text=True, check=True)
    mask = next(p for p in json.loads(listed.stdout) if p["name"] == "mask")
    assert mask["kind"] == "transform" and mask["origin"].startswith("elspeth-example-plugins 0.1.0")
    assert [o["name"] for o in mask["options"]] == ["fields", "keep_last", "char"]
    text = subprocess.run([*cli, "plugins"], env=env, capture_output=True, text=True, check=True).stdout
    assert "  mask  [elspeth-example-plugins 0.1.0 (elspeth_example_plugins.mask:Mask)]" in text

    work = tmp_path / "work"
    subprocess.run(["cp", "-r", str(EXAMPLE), str(work)], check=True)
    ran = subprocess.run([*cli, "run", "pipeline.yaml", "--json"], cwd=work, env=env, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    summary = json.loads(ran.stdout)
    assert summary["status"] == "completed" and summary["verify"] == []  # verify found no problem
    assert summary["rows_per_sink"] == {"masked": 4, "rejects": 1}
    assert "************1111" in (work / "out" / "masked_customers.csv").read_text()

    own = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=work, env=env,
                         capture_output=True, text=True)
    assert own.returncode == 0 and "3 passed" in own.stdout, own.stdout + own.stderr


def test_run_for_test_writes_sinks_under_the_tests_folder(tmp_path, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # where the YAML's relative sink paths would land
    settings = yaml.safe_load(QUICKSTART.read_text())
    settings["source"]["options"]["path"] = str(REPO / settings["source"]["options"]["path"])
    test_folder = tmp_path / "test"
    inside = test_folder / "mine" / "standard.csv"
    settings["sinks"]["standard"]["options"]["path"] = str(inside)
    run = testing.run_for_test(settings, test_folder)
    assert run.sink_path("standard") == inside and inside.is_file()  # already the test's own: kept
    for name in ("large", "review", "rejects"):
        assert run.sink_path(name).parent == test_folder / "sinks" and run.sink_path(name).is_file()
    assert list((tmp_path / "cwd").iterdir()) == []
