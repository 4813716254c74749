"""The documentation's generated references (docs/reference.py) follow the code they are made from."""

from __future__ import annotations

import argparse
import sys

from pydantic import Field
from sqlalchemy import Column, Integer, MetaData, Table

from conftest import REPO
from elspeth_beam.cli import build_parser
from elspeth_beam.config.settings import PipelineSettings, RunSettings
from elspeth_beam.landscape import schema as landscape_schema
from elspeth_beam.plugins.catalog import catalog

sys.path.insert(0, str(REPO / "docs"))
import reference  # noqa: E402  (docs tooling, beside the pages)


def test_the_yaml_reference_has_every_settings_key_with_its_description():
    page = reference.pipeline_page()
    for path, model in reference._models(PipelineSettings):
        section = page.split(f"## `{path}`" if path else "## The file", 1)[1].split("\n## ", 1)[0]
        for name, field in model.model_fields.items():
            assert field.description, f"{path or '(top)'}.{name} has no description"
            row = next(line for line in section.splitlines() if line.startswith(f"| `{name}` |"))
            assert reference._cell(field.description) in row


def test_a_settings_field_added_appears_in_the_reference():
    class Retries(RunSettings):
        retries: int = Field(3, ge=0, description="how many times a failed bundle is retried")

    class Extended(PipelineSettings):
        run: Retries = Field(Retries(), description="how the run is executed")

    page = reference.pipeline_page(Extended)
    assert "| `retries` | integer ≥ 0 | `3` | how many times a failed bundle is retried |" in page
    assert "`retries`" not in reference.pipeline_page()


def test_the_plugin_reference_is_the_catalogs_built_ins():
    page = reference.plugins_page()
    for info in (i for i in catalog() if i.origin == "built-in"):
        assert f"### `{info.name}`" in page
        for option in info.options:
            assert f"| `{option.name}` |" in page


def test_the_cli_reference_has_every_command_and_option_and_follows_the_parser():
    page = reference.cli_page()
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        assert f"## `elspeth-beam {name}`" in page
        for action in sub._actions:
            if action.help not in (None, argparse.SUPPRESS) and action.option_strings and action.dest != "help":
                assert f"| `{', '.join(action.option_strings)}` |" in page, (name, action.option_strings)
    parser_with_more = build_parser()
    more = next(a for a in parser_with_more._actions if isinstance(a, argparse._SubParsersAction))
    more.choices["verify"].add_argument("--since", help="only records since this time")
    assert "| `--since` | only records since this time |" in reference.cli_page(parser_with_more)


def test_the_landscape_reference_has_every_table_and_column():
    page = reference.landscape_page()
    for table in landscape_schema.metadata.tables.values():
        assert f"## `{table.name}`" in page
        for column in table.columns:
            assert f"| `{column.name}` |" in page
    extra = MetaData()
    Table("lineage_cache", extra, Column("token_key", Integer, primary_key=True))
    assert "| `token_key` | INTEGER | primary | no |" in reference.landscape_page(extra)


def test_every_page_is_in_the_sites_navigation():
    import yaml

    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]

    def pages(entries):
        for entry in entries:
            for value in entry.values():
                yield from (pages(value) if isinstance(value, list) else [value])

    listed = set(pages(nav))
    written = {p.relative_to(REPO / "docs").as_posix() for p in (REPO / "docs").rglob("*.md")}
    assert listed == written | set(reference.PAGES)
