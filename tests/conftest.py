"""Shared fixtures: the quickstart settings pointed at a temp folder."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "pipelines" / "quickstart.yaml"

warnings.filterwarnings("ignore", category=pytest.PytestCollectionWarning)


def retarget(settings: dict, out_dir: Path) -> dict:
    """A copy of settings whose source path is absolute and whose sinks write under out_dir."""
    settings = copy.deepcopy(settings)
    src = settings["source"]["options"]
    src["path"] = str((REPO / src["path"]).resolve()) if not Path(src["path"]).is_absolute() else src["path"]
    for name, sink in settings["sinks"].items():
        suffix = Path(sink["options"]["path"]).suffix
        sink["options"]["path"] = str(out_dir / f"{name}{suffix}")
    settings.pop("landscape", None)
    return settings


@pytest.fixture
def quickstart_settings(tmp_path: Path) -> dict:
    raw = yaml.safe_load(QUICKSTART.read_text())
    return retarget(raw, tmp_path / "out")
