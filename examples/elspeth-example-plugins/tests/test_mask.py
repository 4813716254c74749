"""The example plugin, tested the way a plugin author tests theirs: the plugin alone, then the
pipeline that uses it on Beam's TestPipeline with a temporary Landscape (elspeth_beam.testing)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from elspeth_beam import testing
from elspeth_beam.core.errors import RowError
from elspeth_example_plugins.mask import Mask

HERE = Path(__file__).resolve().parent.parent


def test_mask_keeps_the_last_characters():
    mask = Mask(Mask.Options(fields=["card"], keep_last=4))
    assert mask.process({"card": "4111111111111111", "id": 1}) == {"card": "************1111", "id": 1}


def test_mask_refuses_a_missing_value_with_a_reason():
    with pytest.raises(RowError, match="'card' must be non-empty text"):
        Mask(Mask.Options(fields=["card"])).process({"card": None})


def test_the_pipeline_masks_every_card_and_sets_aside_the_row_without_one(tmp_path, monkeypatch):
    monkeypatch.chdir(HERE)  # the YAML's paths are relative to this folder, as for `elspeth-beam run`
    run = testing.run_for_test("pipeline.yaml", tmp_path)
    testing.assert_audit_complete(run)

    with run.sink_path("masked").open(newline="") as handle:
        masked = list(csv.DictReader(handle))
    assert [r["customer_id"] for r in masked] == ["1", "2", "4", "5"]
    assert all(r["card_number"][:-4] == "*" * (len(r["card_number"]) - 4) for r in masked)
    assert run.result.summary["rows_per_sink"] == {"masked": 4, "rejects": 1}
    assert run.sink_path("masked").is_relative_to(tmp_path)  # not over what `elspeth-beam run` wrote
