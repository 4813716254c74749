"""The command line documents itself: --version, help on every option, one -l for every
command that touches a Landscape, and an epilog with the exit codes and environment variables
the code really uses."""

from __future__ import annotations

import argparse
import ast
import platform
import re
from importlib.metadata import version

import pytest
from conftest import REPO

from elspeth_beam.cli import (
    DEFAULT_LANDSCAPE, EPILOG, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, build_parser, main,
)
from elspeth_beam.config import secrets
from elspeth_beam import faults

LANDSCAPE_COMMANDS = {"run", "resume", "runs", "explain", "verify", "prove", "show", "export", "report"}
HIDDEN = {("explain", "--run")}  # the old form, kept only to be refused with the new one


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


def test_every_option_of_every_command_has_help():
    missing, hidden = [], set()
    for name, parser in {"(top level)": build_parser(), **_commands()}.items():
        for action in _options(parser):
            flag = action.option_strings[-1] if action.option_strings else action.dest
            if action.help == argparse.SUPPRESS:
                hidden.add((name, flag))
            elif not (action.help or "").strip():
                missing.append(f"{name} {flag}")
    assert missing == [], f"options without help: {missing}"
    assert hidden == HIDDEN


def test_version_names_this_package_beam_and_python(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    setup_version = next(
        kw.value.value for node in ast.walk(ast.parse((REPO / "setup.py").read_text()))
        if isinstance(node, ast.Call) for kw in node.keywords if kw.arg == "version"
    )
    assert capsys.readouterr().out == (
        f"elspeth-beam {setup_version} (apache-beam {version('apache-beam')}, Python {platform.python_version()})\n"
    )
    assert version("elspeth_beam") == setup_version  # the metadata is setup.py's: one source


def test_every_command_touching_a_landscape_takes_the_same_l():
    commands = _commands()
    takes_l = {name for name, p in commands.items() if any("-l" in a.option_strings for a in _options(p))}
    assert takes_l == LANDSCAPE_COMMANDS
    actions = {name: next(a for a in _options(commands[name]) if "-l" in a.option_strings) for name in takes_l}
    assert {tuple(a.option_strings) for a in actions.values()} == {("--landscape-url", "-l")}
    assert {a.default for a in actions.values()} == {None}  # resolved to the one default in one place
    helps = {name: a.help for name, a in actions.items()}
    assert {h for n, h in helps.items() if n != "run"} == {f"the Landscape: a SQLite path or SQLAlchemy URL (default {DEFAULT_LANDSCAPE})"}
    assert helps["run"].endswith(f"(default the settings' landscape.url, else {DEFAULT_LANDSCAPE})")


@pytest.mark.parametrize("command", sorted(LANDSCAPE_COMMANDS - {"run"}))
def test_without_l_every_command_reads_the_default_landscape(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no runs/landscape.db here
    args = {"resume": ["r"], "explain": ["--row", "0"], "prove": ["--row", "0"], "export": ["--out", "x"]}.get(command, [])
    assert main([command, *args]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err == f"elspeth-beam: error: no Landscape database at '{DEFAULT_LANDSCAPE}'; run a pipeline first or pass its path/URL\n"


def _help(*argv: str, capsys) -> str:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize("argv", [(), ("run",), ("resume",)], ids=["top", "run", "resume"])
def test_help_ends_with_the_exit_codes_and_environment(argv, capsys):
    text = _help(*argv, capsys=capsys)
    assert text.endswith(EPILOG)
    codes = {int(m) for m in re.findall(r"^  (\d+) ", EPILOG.split("environment:")[0], re.MULTILINE)}
    assert codes == {EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED}
    for name in (secrets.KEY_ENV, faults.ENV, "${VAR}"):
        assert f"\n  {name}" in EPILOG


def test_the_epilog_names_every_environment_variable_the_package_reads():
    """A new os.environ read must be documented in the epilog (or be one of these non-user ones)."""
    readers = {str(p.relative_to(REPO)) for p in (REPO / "elspeth_beam").rglob("*.py")
               if re.search(r"os\.environ|getenv", p.read_text())}
    assert readers == {
        "elspeth_beam/config/secrets.py",  # ELSPETH_FINGERPRINT_KEY
        "elspeth_beam/faults.py",  # ELSPETH_FAULT
        "elspeth_beam/config/loader.py",  # ${VAR} in settings
        "elspeth_beam/auditlog/writer_process.py",  # hands the environment on to its child, reads none
    }
