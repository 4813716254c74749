"""A file sink's columns do not depend on how the rows were bundled or in which order they came.

Runners split and order rows differently (a Flink job writes several parts where the direct
runner writes one): the merged CSV or Parquet file must be the same for any split of the same
rows into parts and any order of the parts' rows. Found on Flink with JSON Lines input whose
records list their keys in different orders.
"""

from __future__ import annotations

import csv
from pathlib import Path

import hypothesis.strategies as st
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings

from elspeth_beam.plugins.sinks import CsvSink, ParquetSink

KEYS = ["id", "name", "amount", "region"]

row = st.permutations(KEYS).flatmap(
    lambda order: st.integers(min_value=1, max_value=len(KEYS)).map(
        lambda n: {key: f"{key}-{i}" for i, key in enumerate(order[:n])}))
# the common case, every row with the same keys in the same (non-alphabetical) order
uniform = st.lists(st.just(None), min_size=1, max_size=8).map(
    lambda rs: [{"region": "r", "id": str(i), "amount": "1"} for i, _ in enumerate(rs)])


def merged(plugin, folder: Path, parts: list[list[dict]]) -> Path:
    paths = []
    for i, rows in enumerate(parts):
        paths.append(folder / f"part-{i}.{plugin.extension}")
        plugin.write_part(rows, paths[-1])
    plugin.merge(paths, folder / f"merged.{plugin.extension}")
    return folder / f"merged.{plugin.extension}"


def header(plugin, path: Path) -> list[str]:
    if plugin.extension == "csv":
        with path.open(newline="") as handle:
            return next(csv.reader(handle), [])
    return pq.read_table(path).column_names


def split(rows: list[dict], cuts: list[int], reverse: bool) -> list[list[dict]]:
    bounds = [0, *sorted({c % (len(rows) + 1) for c in cuts}), len(rows)]
    parts = [rows[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
    return [list(reversed(p)) for p in reversed(parts)] if reverse else parts


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.one_of(st.lists(row, min_size=1, max_size=8), uniform),
       cuts=st.lists(st.integers(min_value=0, max_value=8), max_size=3), reverse=st.booleans(),
       plugin=st.sampled_from([CsvSink, ParquetSink]))
def test_the_merged_files_columns_are_the_same_for_any_split_and_order_of_the_rows(tmp_path_factory, rows, cuts,
                                                                                   reverse, plugin):
    sink = plugin(plugin.Options(path="unused"))
    one, many = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("many")
    expected = header(sink, merged(sink, one, [rows]))
    assert header(sink, merged(sink, many, split(rows, cuts, reverse))) == expected
    orders = {tuple(r) for r in rows}
    # the rows' own order when they agree; otherwise the only order no arrival can decide
    assert expected == (list(orders.pop()) if len(orders) == 1 else sorted({k for r in rows for k in r}))
