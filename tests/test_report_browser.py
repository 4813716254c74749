"""The report in a real browser: headless Chromium parses the page into the DOM we expect and
paints the graph (the node-type colours are on screen). `.ci/run` installs Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
import yaml
from conftest import QUICKSTART, retarget
from PIL import Image

from elspeth_beam import testing
from elspeth_beam.inspect.report import build_report, write_report
from elspeth_beam.inspect.report_graph import TYPE_COLOURS

pytestmark = pytest.mark.browser

# What works as root on a machine without network: no sandbox, no GPU, nothing phoned home.
HEADLESS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
]


def _chromium() -> str:
    for name in (os.environ.get("ELSPETH_CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome", "chrome"):
        if name and shutil.which(name):
            return shutil.which(name)  # type: ignore[return-value]
    pytest.skip("no Chromium binary (chromium, chromium-browser, google-chrome or $ELSPETH_CHROMIUM); "
                "install it with `apt-get install -y chromium` (.ci/browser.sh)")


def _run_chromium(*args: str) -> subprocess.CompletedProcess[bytes]:
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([_chromium(), *HEADLESS, f"--user-data-dir={profile}", *args], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done


@pytest.fixture(scope="module")
def report_file(tmp_path_factory):
    _chromium()  # skip before running a pipeline for nothing
    tmp = tmp_path_factory.mktemp("report-browser")
    run = testing.run_for_test(retarget(yaml.safe_load(QUICKSTART.read_text()), tmp / "out"), tmp)
    report = build_report(run.store, run.run_id)
    return write_report(report, tmp / "report.html"), report


def test_chromium_parses_the_page(report_file):
    path, report = report_file
    dom = _run_chromium("--dump-dom", path.resolve().as_uri()).stdout.decode()
    assert "<svg" in dom and "</html>" in dom
    assert dom.count('<g class="node ') == len(report.nodes) == 9
    assert dom.count('<g class="edge') == len(report.edges) == 12
    for node in report.nodes:
        assert f'data-node-id="{node.node_id}"' in dom
    assert "Quarantine and failure reasons" in dom and "ZeroDivisionError" in dom


def test_chromium_paints_the_graph(report_file, tmp_path):
    path, _ = report_file
    shot = tmp_path / "report.png"
    _run_chromium(f"--screenshot={shot}", "--window-size=1400,1000", path.resolve().as_uri())
    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 1000)
    pixels = np.asarray(image).reshape(-1, 3).astype(int)
    not_white = (pixels < 245).any(axis=1).mean()
    assert not_white > 0.04, f"only {not_white:.1%} of the screenshot is not white"
    # every node type of the quickstart is drawn in its colour (the stripe on each box)
    for kind in ("source", "transform", "gate", "sink"):
        rgb = np.array([int(TYPE_COLOURS[kind][i : i + 2], 16) for i in (1, 3, 5)])
        near = (np.abs(pixels - rgb).max(axis=1) <= 6).sum()
        assert near >= 300, f"{kind} colour {TYPE_COLOURS[kind]} covers only {near} pixels"
