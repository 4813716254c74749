"""Settings loading: every problem reported as 'yaml.path: message', all at once."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from elspeth_beam.config.loader import LoadedPipeline, load_settings, load_settings_dict
from elspeth_beam.core.enums import NodeType
from elspeth_beam.core.errors import SettingsError
from elspeth_beam.plugins.base import PluginOptions, SinkPlugin

REPO = Path(__file__).resolve().parent.parent
QUICKSTART_PATH = REPO / "pipelines" / "quickstart.yaml"
BASE: dict[str, Any] = yaml.safe_load(QUICKSTART_PATH.read_text(encoding="utf-8"))


@pytest.fixture(autouse=True)
def _repo_cwd_and_clean_env(monkeypatch):
    monkeypatch.chdir(REPO)
    for var in ("OUT_DIR", "LANDSCAPE_URL"):
        monkeypatch.delenv(var, raising=False)


def base() -> dict[str, Any]:
    return copy.deepcopy(BASE)


def problems_of(raw: Any) -> list[str]:
    with pytest.raises(SettingsError) as info:
        load_settings_dict(raw)
    problems = info.value.problems
    assert isinstance(problems, list) and problems
    # every problem is also in the exception's message
    for p in problems:
        assert p in str(info.value)
    return problems


def one_starting_with(problems: list[str], prefix: str) -> str:
    hits = [p for p in problems if p.startswith(prefix)]
    assert hits, f"no problem starts with {prefix!r}: {problems}"
    return hits[0]


# ---- the baseline ----------------------------------------------------------------------------


def test_quickstart_loads():
    loaded = load_settings_dict(base())
    assert isinstance(loaded, LoadedPipeline)
    s = loaded.settings
    assert s.source.plugin == "csv"
    assert [t.name for t in s.transforms] == ["tidy", "pricing", "label_region"]
    assert s.gates[0].routes["true"] == ["large", "review"]
    assert set(s.sinks) == {"standard", "large", "review", "rejects"}
    # defaults expanded
    assert s.sinks["large"].options["path"] == "out/quickstart/large_orders.jsonl"
    assert s.landscape.url == "sqlite:///runs/landscape.db"
    # graph: source first, sinks last, topological in between
    names = [n.name for n in loaded.graph.nodes]
    assert names[0] == "source"
    assert names.index("tidy") < names.index("pricing") < names.index("size") < names.index("label_region")
    assert [n.node_type for n in loaded.graph.nodes[-4:]] == [NodeType.SINK] * 4


def test_load_settings_from_file_equals_dict():
    from_file = load_settings(QUICKSTART_PATH)
    from_dict = load_settings_dict(base())
    assert from_file.settings == from_dict.settings
    assert from_file.settings_hash == from_dict.settings_hash


def test_landscape_url_override():
    loaded = load_settings_dict(base(), landscape_url="sqlite:////tmp/x.db")
    assert loaded.settings.landscape.url == "sqlite:////tmp/x.db"


def test_settings_are_frozen():
    loaded = load_settings_dict(base())
    with pytest.raises(Exception):
        loaded.settings.source.plugin = "jsonl"  # type: ignore[misc]


# ---- schema problems -------------------------------------------------------------------------


def test_missing_required_plugin_option_reports_full_path():
    raw = base()
    del raw["transforms"][1]["options"]["fields"]
    problems = problems_of(raw)
    assert problems == ["transforms[1].options.fields: field required"]


def test_missing_required_node_key():
    raw = base()
    del raw["transforms"][0]["on_error"]
    assert problems_of(raw) == ["transforms[0].on_error: field required"]


def test_missing_source_reported_at_top_level_key():
    raw = base()
    del raw["source"]
    assert problems_of(raw) == ["source: field required"]


def test_misspelt_key_rejected_naming_path():
    raw = base()
    raw["transforms"][0]["on_sucess"] = "tidied"
    problem = one_starting_with(problems_of(raw), "transforms[0].on_sucess:")
    assert "extra inputs are not permitted" in problem


def test_misspelt_top_level_key_rejected():
    raw = base()
    raw["sink"] = raw["sinks"]
    problem = one_starting_with(problems_of(raw), "sink:")
    assert "not permitted" in problem


def test_misspelt_plugin_option_rejected():
    raw = base()
    raw["transforms"][0]["options"]["renam"] = {"a": "b"}
    problem = one_starting_with(problems_of(raw), "transforms[0].options.renam:")
    assert "not permitted" in problem


def test_wrong_type_reported():
    raw = base()
    raw["transforms"][0]["name"] = "has space"
    one_starting_with(problems_of(raw), "transforms[0].name:")


def test_gate_without_routes():
    raw = base()
    raw["gates"][0]["routes"] = {}
    problem = one_starting_with(problems_of(raw), "gates[0]")
    assert "at least one route" in problem


def test_not_a_mapping():
    for raw in (None, [], "source: x"):
        problems = problems_of(raw)
        assert problems[0].startswith("(top level):")


# ---- plugins ---------------------------------------------------------------------------------


def test_unknown_transform_plugin_lists_known():
    raw = base()
    raw["transforms"][0]["plugin"] = "field_mapperr"
    problem = one_starting_with(problems_of(raw), "transforms[0].plugin:")
    assert "'field_mapperr'" in problem
    for known in ("field_mapper", "computed", "coerce"):
        assert known in problem


def test_unknown_sink_plugin_lists_known():
    raw = base()
    raw["sinks"]["large"]["plugin"] = "xml"
    problem = one_starting_with(problems_of(raw), "sinks.large.plugin:")
    for known in ("csv", "jsonl", "parquet"):
        assert known in problem


def test_unknown_source_plugin():
    raw = base()
    raw["source"]["plugin"] = "excel"
    problem = one_starting_with(problems_of(raw), "source.plugin:")
    assert "csv" in problem and "jsonl" in problem


def test_dotted_plugin_path_that_does_not_import():
    raw = base()
    raw["transforms"][0]["plugin"] = "no_such_pkg_xyz.mod.Thing"
    problem = one_starting_with(problems_of(raw), "transforms[0].plugin:")
    assert "no_such_pkg_xyz.mod" in problem


# ---- graph -----------------------------------------------------------------------------------


def test_unknown_destination():
    raw = base()
    raw["transforms"][2]["on_success"] = "standrad"
    problems = problems_of(raw)
    problem = one_starting_with(problems, "transforms[2].on_success:")
    assert "'standrad'" in problem
    assert "standard" in problem  # lists the sinks it could have meant


def test_unknown_gate_route_destination():
    raw = base()
    raw["gates"][0]["routes"]["true"] = ["large", "reveiw"]
    problem = one_starting_with(problems_of(raw), "gates[0].routes.true:")
    assert "'reveiw'" in problem


def test_unknown_on_error_sink():
    raw = base()
    raw["transforms"][0]["on_error"] = "rejectz"
    problem = one_starting_with(problems_of(raw), "transforms[0].on_error:")
    assert "'rejectz'" in problem and "quarantine" in problem


def test_unknown_on_validation_failure_sink():
    raw = base()
    raw["source"]["on_validation_failure"] = "nowhere"
    one_starting_with(problems_of(raw), "source.on_validation_failure:")


def test_unused_sink():
    raw = base()
    raw["sinks"]["audit_copy"] = {"plugin": "csv", "options": {"path": "out/x.csv"}}
    assert problems_of(raw) == ["sinks.audit_copy: no node sends rows to this sink"]


def test_duplicate_node_names():
    raw = base()
    raw["transforms"][1]["name"] = "tidy"
    problem = one_starting_with(problems_of(raw), "transforms[1].name:")
    assert "'tidy'" in problem and "transforms[0]" in problem


def test_gate_named_like_a_transform():
    raw = base()
    raw["gates"][0]["name"] = "pricing"
    problem = one_starting_with(problems_of(raw), "gates[0].name:")
    assert "transforms[1]" in problem


def test_cycle_between_two_transforms():
    raw = base()
    raw["transforms"] += [
        {"name": "ping", "plugin": "field_mapper", "input": "p1", "on_success": "p2", "on_error": "rejects",
         "options": {"rename": {}}},
        {"name": "pong", "plugin": "field_mapper", "input": "p2", "on_success": "p1", "on_error": "rejects",
         "options": {"rename": {}}},
    ]
    problems = problems_of(raw)
    problem = one_starting_with(problems, "transforms[3].input:")
    assert "cycle" in problem
    assert "ping" in problem and "pong" in problem
    assert not any("tidy" in p for p in problems)


def test_connection_read_by_two_nodes():
    raw = base()
    raw["transforms"].append(
        {"name": "also_raw", "plugin": "field_mapper", "input": "raw", "on_success": "rejects", "on_error": "rejects",
         "options": {"rename": {}}}
    )
    problem = one_starting_with(problems_of(raw), "transforms[3].input:")
    assert "'raw'" in problem
    assert "transforms[0]" in problem and "transforms[3]" in problem
    assert "gate" in problem  # tells the user how to fork instead


def test_node_reading_unproduced_connection():
    raw = base()
    raw["transforms"][2]["input"] = "irregular"
    problems = problems_of(raw)
    problem = one_starting_with(problems, "transforms[2].input:")
    assert "no node sends rows to 'irregular'" in problem


def test_node_reading_from_a_sink():
    raw = base()
    raw["transforms"][2]["input"] = "large"
    problems = problems_of(raw)
    problem = one_starting_with(problems, "transforms[2].input:")
    assert "is a sink" in problem


@pytest.mark.parametrize("reserved", ["quarantine", "fail"])
def test_sink_named_like_an_error_mode_is_reserved(reserved):
    raw = base()
    raw["sinks"][reserved] = {"plugin": "csv", "options": {"path": "out/q.csv"}}
    problems = problems_of(raw)
    problem = one_starting_with(problems, f"sinks.{reserved}:")
    assert "reserved" in problem


def test_bad_gate_condition_reported_at_condition():
    raw = base()
    raw["gates"][0]["condition"] = "row['total'].__class__"
    problem = one_starting_with(problems_of(raw), "gates[0].condition:")
    assert "not allowed" in problem


def test_gate_condition_syntax_error():
    raw = base()
    raw["gates"][0]["condition"] = "row['total'] >="
    problem = one_starting_with(problems_of(raw), "gates[0].condition:")
    assert "invalid expression" in problem


def test_computed_field_expression_checked_at_load():
    raw = base()
    raw["transforms"][1]["options"]["fields"]["total"] = "__import__('os').system('true')"
    problem = one_starting_with(problems_of(raw), "transforms[1].options")
    assert "not allowed" in problem


def test_several_problems_reported_at_once():
    raw = base()
    raw["transforms"][0]["plugin"] = "nope"
    raw["gates"][0]["condition"] = "open('x')"
    raw["sinks"]["spare"] = {"plugin": "csv", "options": {"path": "out/spare.csv"}}
    raw["transforms"][2]["on_success"] = "nowhere"
    problems = problems_of(raw)
    prefixes = [
        "transforms[0].plugin:",
        "gates[0].condition:",
        "sinks.spare: no node sends rows to this sink",
        "transforms[2].on_success:",
    ]
    for prefix in prefixes:
        one_starting_with(problems, prefix)


def test_several_schema_problems_reported_at_once():
    raw = base()
    del raw["transforms"][0]["on_error"]
    raw["transforms"][1]["colour"] = "red"
    raw["gates"][0]["conditon"] = "x"
    problems = problems_of(raw)
    one_starting_with(problems, "transforms[0].on_error: field required")
    one_starting_with(problems, "transforms[1].colour:")
    one_starting_with(problems, "gates[0].conditon:")
    assert len(problems) == 3


# ---- environment variables ---------------------------------------------------------------------


def test_env_var_expansion(monkeypatch, tmp_path):
    monkeypatch.setenv("OUT_DIR", str(tmp_path / "o"))
    monkeypatch.setenv("LANDSCAPE_URL", "sqlite:///" + str(tmp_path / "l.db"))
    loaded = load_settings_dict(base())
    assert loaded.settings.sinks["standard"].options["path"] == f"{tmp_path / 'o'}/standard_orders.csv"
    assert loaded.settings.landscape.url == "sqlite:///" + str(tmp_path / "l.db")


def test_env_var_default_when_unset():
    loaded = load_settings_dict(base())
    assert loaded.settings.sinks["review"].options["path"] == "out/quickstart/review.parquet"


def test_env_var_without_default(monkeypatch):
    raw = base()
    raw["sinks"]["large"]["options"]["path"] = "${MY_OUT}/large.jsonl"
    monkeypatch.setenv("MY_OUT", "/data/out")
    assert load_settings_dict(raw).settings.sinks["large"].options["path"] == "/data/out/large.jsonl"


def test_several_vars_in_one_value(monkeypatch):
    raw = base()
    raw["sinks"]["large"]["options"]["path"] = "${A_DIR}/${B_NAME:-x}-${C_SUF:-v1}.jsonl"
    monkeypatch.setenv("A_DIR", "/d")
    monkeypatch.setenv("B_NAME", "big")
    monkeypatch.delenv("C_SUF", raising=False)
    assert load_settings_dict(raw).settings.sinks["large"].options["path"] == "/d/big-v1.jsonl"


def test_missing_env_var_is_error_naming_path_and_var(monkeypatch):
    monkeypatch.delenv("NO_SUCH_VAR_XYZ", raising=False)
    raw = base()
    raw["sinks"]["large"]["options"]["path"] = "${NO_SUCH_VAR_XYZ}/large.jsonl"
    problem = one_starting_with(problems_of(raw), "sinks.large.options.path:")
    assert "NO_SUCH_VAR_XYZ" in problem and "not set" in problem


def test_missing_env_var_in_list_item(monkeypatch):
    monkeypatch.delenv("NO_SUCH_VAR_XYZ", raising=False)
    raw = base()
    raw["run"] = {"beam_options": ["--a=1", "--b=${NO_SUCH_VAR_XYZ}"]}
    one_starting_with(problems_of(raw), "run.beam_options[1]:")


def test_empty_env_var_uses_default(monkeypatch):
    """``${VAR:-default}`` follows the shell (and docker compose): the default applies when
    VAR is unset *or empty*. An empty OUT_DIR must not turn out/quickstart/x.csv into /x.csv."""
    monkeypatch.setenv("OUT_DIR", "")
    loaded = load_settings_dict(base())
    assert loaded.settings.sinks["standard"].options["path"] == "out/quickstart/standard_orders.csv"


def test_env_expansion_leaves_non_strings_alone(monkeypatch):
    from elspeth_beam.config.loader import expand_env

    monkeypatch.delenv("X_UNSET", raising=False)
    problems: list[str] = []
    value = {"n": 3, "f": 1.5, "b": True, "z": None, "l": ["${X_UNSET:-d}", 4], "s": "$HOME {X}"}
    assert expand_env(value, "", problems) == {"n": 3, "f": 1.5, "b": True, "z": None, "l": ["d", 4], "s": "$HOME {X}"}
    assert problems == []


# ---- files -----------------------------------------------------------------------------------


def test_invalid_yaml_reports_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("source:\n  plugin: csv\n  on_success: raw\n  options: {path: [a, b}\nsinks: {}\n", encoding="utf-8")
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}:4:")
    assert "invalid YAML" in problem


def test_yaml_tab_indentation_reports_line(tmp_path):
    path = tmp_path / "tabs.yaml"
    path.write_text("source:\n  plugin: csv\n\ton_success: raw\n", encoding="utf-8")
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert info.value.problems[0].startswith(f"{path}:3:")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert info.value.problems == [f"{path}: settings file not found"]


def test_directory_is_not_a_settings_file(tmp_path):
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path)


def test_valid_file_with_graph_problem(tmp_path):
    raw = base()
    raw["sinks"]["spare"] = {"plugin": "csv", "options": {"path": "out/spare.csv"}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert info.value.problems == ["sinks.spare: no node sends rows to this sink"]


# ---- redaction ---------------------------------------------------------------------------------


class _SecretSinkOptions(PluginOptions):
    path: str
    password: str = ""
    connection: dict[str, Any] = {}


class SecretSink(SinkPlugin):
    """A sink with credentials in its options (referenced by dotted path)."""

    name = "secret_sink"
    extension = ".txt"
    Options = _SecretSinkOptions


def _with_secrets() -> dict[str, Any]:
    raw = base()
    raw["sinks"]["large"] = {
        "plugin": f"{__name__}.SecretSink",
        "options": {
            "path": "out/large.txt",
            "password": "hunter2-Pa55",
            "connection": {"api_key": "KEY-0123456789", "host": "db.example"},
        },
    }
    raw["landscape"] = {"url": "postgresql://auditor:s3cr3t-pw@db.example:5432/landscape"}
    return raw


def test_settings_json_redacts_url_password_and_secret_options():
    loaded = load_settings_dict(_with_secrets())
    text = loaded.settings_json
    assert "s3cr3t-pw" not in text
    assert "hunter2-Pa55" not in text
    assert "KEY-0123456789" not in text
    data = json.loads(text)
    # what is not secret is still there, so the record stays useful
    assert data["landscape"]["url"] == "postgresql://auditor:***@db.example:5432/landscape"
    assert data["sinks"]["large"]["options"]["password"] == "***"
    assert data["sinks"]["large"]["options"]["connection"]["host"] == "db.example"
    assert data["sinks"]["large"]["options"]["path"] == "out/large.txt"
    # the loaded settings themselves keep the real values (the run needs them)
    assert loaded.settings.sinks["large"].options["password"] == "hunter2-Pa55"
    assert loaded.settings.landscape.url.endswith("s3cr3t-pw@db.example:5432/landscape")


def test_settings_json_redacts_secret_from_env(monkeypatch):
    monkeypatch.setenv("LANDSCAPE_URL", "postgresql://u:from-env-secret@h/db")
    loaded = load_settings_dict(base())
    assert loaded.settings.landscape.url == "postgresql://u:from-env-secret@h/db"
    assert "from-env-secret" not in loaded.settings_json
    assert "postgresql://u:***@h/db" in loaded.settings_json


def test_settings_json_is_canonical_and_hash_stable():
    a = load_settings_dict(base())
    raw = base()
    raw["sinks"] = dict(reversed(list(raw["sinks"].items())))
    b = load_settings_dict(raw)
    assert json.loads(a.settings_json) == json.loads(b.settings_json)
    assert a.settings_json == b.settings_json
    assert a.settings_hash == b.settings_hash
    assert len(a.settings_hash) == 64
    c = base()
    c["gates"][0]["condition"] = "row['total'] >= 2000"
    assert load_settings_dict(c).settings_hash != a.settings_hash


# ---- run.max_quarantined_fraction ----------------------------------------------------------------

def test_max_quarantined_fraction_is_unset_by_default_and_takes_a_fraction():
    assert load_settings_dict(base()).settings.run.max_quarantined_fraction is None
    raw = base()
    raw["run"] = {"max_quarantined_fraction": 0.05}
    assert load_settings_dict(raw).settings.run.max_quarantined_fraction == 0.05


@pytest.mark.parametrize("value", [1.5, -0.1, "some"])
def test_max_quarantined_fraction_outside_zero_to_one_is_an_error(value):
    raw = base()
    raw["run"] = {"max_quarantined_fraction": value}
    one_starting_with(problems_of(raw), "run.max_quarantined_fraction:")


def test_relative_source_and_sink_paths_are_resolved_where_the_command_runs(tmp_path, monkeypatch):
    """A cluster's workers run in another directory, and the driver merges what they wrote."""
    from elspeth_beam.config.loader import load_settings_dict, with_absolute_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text("a\n1\n")
    loaded = load_settings_dict({
        "source": {"plugin": "csv", "on_success": "raw", "options": {"path": "in.csv"}},
        "gates": [{"name": "g", "input": "raw", "condition": "row['a'] == '1'", "on_error": "quarantine",
                   "routes": {"true": "out", "false": "remote"}}],
        "sinks": {"out": {"plugin": "jsonl", "options": {"path": "out/x.jsonl"}},
                  "remote": {"plugin": "jsonl", "options": {"path": "gs://bucket/x.jsonl"}}},
    })
    assert loaded.settings.source.options["path"] == "in.csv"  # as written, for validate and the user
    resolved = with_absolute_paths(loaded).settings
    assert resolved.source.options["path"] == str(tmp_path / "in.csv")
    assert resolved.sinks["out"].options["path"] == str(tmp_path / "out" / "x.jsonl")
    assert resolved.sinks["remote"].options["path"] == "gs://bucket/x.jsonl"
