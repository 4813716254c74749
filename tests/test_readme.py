"""The README's commands work as written, and print what the README shows.

Every fenced block with ``$ `` prompts is run, in README order, in one fresh copy of the
repository (its git files) — files carry from block to block as for a reader following
along; each block is one shell session (a ``cd`` or variable lasts to its end) — inside a
virtualenv that sees this environment's packages, so that the README's own ``pip install``
commands change nothing outside the copy. Before them, the first of the
README's two setup commands (install + quickstart); the second, the test command, is what
``.ci/run`` runs (checked here), not run again inside itself.

For each command, the lines the README shows after it must appear in what it printed, in
order, once ids, hashes, numbers and times are masked (``…`` or ``...`` in a shown line
stands for anything; a line of only ``…``/``...`` is skipped). A command may exit non-zero
only where the README shows an ``elspeth-beam: …`` message or a ``problem(s)`` line. Paths
under ``/tmp/`` are moved into the test's own folder. Blocks that need PostgreSQL run when
ELSPETH_TEST_POSTGRES_URL names a server (``.ci/run`` runs this module with one), on a fresh
database of it. The Python testing snippet runs with pytest in the copy, as the README says.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import venv
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO, fresh_postgres_database

pytestmark = pytest.mark.readme

README = REPO / "README.md"
SHOWN_PG_URL = re.compile(r"postgresql\+psycopg://postgres:[^@\s]+@127\.0\.0\.1:\d+/demo")
_MASKS = [
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(\+\d\d:\d\d)?"), "<time>"),
    (re.compile(r"(?<![0-9A-Za-z])[0-9a-f]{6,}(?![0-9A-Za-z])"), "<hex>"),  # ids (tok_<hex>), hashes
    (re.compile(r"\d[\d,]*(\.\d+)?"), "<n>"),
    (re.compile(r"\s+"), " "),
]


@dataclass
class Command:
    line: str  # without the "$ " prompt
    shown: list[str] = field(default_factory=list)


def readme_blocks(text: str) -> list[list[Command]]:
    """The fenced blocks holding ``$`` commands, each as its commands with their shown output."""
    blocks = []
    for body in re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.M | re.S):
        commands: list[Command] = []
        for line in body.splitlines():
            if line.startswith("$ "):
                commands.append(Command(line[2:]))
            elif commands:
                commands[-1].shown.append(line)
        if commands:
            blocks.append(commands)
    return blocks


def normalised(line: str) -> str:
    for pattern, mask in _MASKS:
        line = pattern.sub(mask, line)
    return line.strip()


def shown_pattern(line: str) -> re.Pattern[str] | None:
    """A regex for one shown line, or None for an elision line."""
    text = normalised(line)
    if text in ("", "…", "...") or text.startswith("... ") and text.endswith(")"):
        return None
    parts = re.split(r"…|\.\.\.", text)
    return re.compile(".*".join(re.escape(p.strip()) for p in parts))


def check_shown(command: Command, printed: str) -> None:
    """Each shown line matches a printed line, in order."""
    lines = [normalised(line) for line in printed.splitlines()]
    at = 0
    for shown in command.shown:
        pattern = shown_pattern(shown)
        if pattern is None:
            continue
        for i in range(at, len(lines)):
            if pattern.fullmatch(lines[i]):
                at = i + 1
                break
        else:
            raise AssertionError(f"$ {command.line}\nREADME shows: {shown!r}\nnot printed (in order):\n{printed}")


def may_fail(command: Command) -> bool:
    return any(line.startswith("elspeth-beam: ") or "problem(s)" in line for line in command.shown)


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> dict:
    """The repository's files in a fresh folder, a virtualenv over this environment, and the
    README's first setup command run there."""
    root = tmp_path_factory.mktemp("readme")
    work = root / "repo"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for name in files:
        if (REPO / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, work / name)
    venv.create(root / "venv", system_site_packages=True, with_pip=False)
    env = {**os.environ, "PATH": f"{root / 'venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "VIRTUAL_ENV": str(root / "venv"), "PYTHONPATH": ""}
    env.pop("LANDSCAPE_URL", None), env.pop("ELSPETH_FINGERPRINT_KEY", None)
    (root / "tmp").mkdir()
    context = {"root": root, "work": work, "env": env, "tmp": root / "tmp"}
    # the venv's python runs this environment's pip, which installs into the venv
    (proc_rc, printed), = session(context, [setup_commands()[0]])
    assert proc_rc == 0, printed
    return context


def setup_commands() -> list[str]:
    text = README.read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```\n(python -m pip .+)\n```", section, flags=re.M)


def session(context: dict, lines: list[str]) -> list[tuple[int, str]]:
    """Run ``lines`` in one bash session in the copy: each command's exit code and output
    (stdout and stderr together, as a terminal shows them; ``/tmp/`` paths as the README has them)."""
    tmp = f"{context['tmp']}/"
    script = ["exec 2>&1"]
    for i, line in enumerate(lines):
        script += [f"echo '<<<{i}>>>'", line.replace("/tmp/", tmp), f"echo \"<<<{i} $?>>>\""]
    proc = subprocess.run(["bash", "-c", "\n".join(script)], cwd=context["work"], env=context["env"],
                          capture_output=True, text=True, timeout=1800)
    results = []
    for i in range(len(lines)):
        found = re.search(rf"^<<<{i}>>>\n(.*?)^<<<{i} (\d+)>>>$", proc.stdout, flags=re.M | re.S)
        assert found, f"the session stopped at: $ {lines[i]}\n{proc.stdout[-3000:]}"
        results.append((int(found.group(2)), found.group(1).replace(tmp, "/tmp/")))
    return results


def test_the_two_commands_are_the_ones_ci_and_the_copy_use():
    install_and_quickstart, install_and_test = setup_commands()
    assert install_and_quickstart.endswith("elspeth-beam run pipelines/quickstart.yaml")
    assert install_and_test in (REPO / ".ci" / "run").read_text()


def test_every_readme_command_runs_and_prints_what_the_readme_shows(copy):
    blocks = readme_blocks(README.read_text())
    assert len(blocks) >= 8  # the README's walk-throughs; a parse that finds none must not pass
    postgres = os.environ.get("ELSPETH_TEST_POSTGRES_URL")
    skipped = []
    with fresh_postgres_database() if postgres else contextlib.nullcontext("") as pg_url:
        for block in blocks:
            needs_pg = any(SHOWN_PG_URL.search(c.line) for c in block)
            if needs_pg and not pg_url:
                skipped.append(block[0].line)
                continue
            lines = [SHOWN_PG_URL.sub(lambda m: _on_server(m.group(0), pg_url), c.line) if needs_pg else c.line
                     for c in block]
            for command, line, (rc, printed) in zip(block, lines, session(copy, lines)):
                assert rc == 0 or may_fail(command), f"$ {line}\nexit {rc}\n{printed}"
                check_shown(command, printed)
    if skipped:
        pytest.skip(f"ran all but {len(skipped)} block(s) needing PostgreSQL (set ELSPETH_TEST_POSTGRES_URL): {skipped}")


def _on_server(shown: str, server: str) -> str:
    """The README's URL, user and password kept (the server trusts any password), pointed at
    the test's server and fresh database."""
    from sqlalchemy.engine import make_url

    url = make_url(server)
    return f"{shown.split('@')[0]}@{url.host}:{url.port}/{url.database}"


def test_the_testing_snippet_runs_as_written(copy):
    text = README.read_text()
    section = text.split("## Testing your own pipelines", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    (copy["work"] / "test_quickstart.py").write_text(snippet)
    (rc, printed), = session(copy, ["python -m pytest -q -p no:cacheprovider test_quickstart.py"])
    assert rc == 0 and "1 passed" in printed, printed
    assert "def test_" in snippet and "run_for_test(" in snippet
