"""Shared fixtures: the quickstart settings pointed at a temp folder."""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from elspeth_beam import testing

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "pipelines" / "quickstart.yaml"

warnings.filterwarnings("ignore", category=pytest.PytestCollectionWarning)


def retarget(settings: dict, out_dir: Path) -> dict:
    """A copy of settings whose source path is absolute and whose sinks write under out_dir."""
    settings = copy.deepcopy(settings)
    src = settings["source"]["options"]
    src["path"] = str((REPO / src["path"]).resolve()) if not Path(src["path"]).is_absolute() else src["path"]
    settings.pop("landscape", None)
    return testing.sinks_in(settings, out_dir)


@pytest.fixture
def quickstart_settings(tmp_path: Path) -> dict:
    raw = yaml.safe_load(QUICKSTART.read_text())
    return retarget(raw, tmp_path / "out")


@contextlib.contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database's URL, dropped on exit; skips without a server."""
    import os
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = os.environ.get("ELSPETH_TEST_POSTGRES_URL")
    if not admin:
        pytest.skip("set ELSPETH_TEST_POSTGRES_URL to a PostgreSQL server (.ci/run starts one)")
    name = f"t_{uuid.uuid4().hex[:16]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


@pytest.fixture
def postgres_url():
    """A fresh, empty PostgreSQL database (dropped afterwards); skips without a server."""
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def landscape_url(request, tmp_path):
    """The Landscape under test: SQLite always; PostgreSQL in the `postgres` suite."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'landscape.db'}"
    return request.getfixturevalue("postgres_url")
