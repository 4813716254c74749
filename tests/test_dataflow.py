"""Dataflow, offline: the pipeline translates into a Dataflow job without being submitted.

There is no Google Cloud access here, so this builds the job with Beam's own
``--dry_run=True --no_auth`` path (what Beam's DataflowRunner tests use): the Runner API
pipeline and the Dataflow job description are produced, nothing is sent. Needs
``apache-beam[gcp]``; `.ci/run` installs it for this suite.
"""

from __future__ import annotations

import apache_beam as beam
import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_runner_api_pb2

from elspeth_beam import testing
from elspeth_beam.pipeline.builder import apply_graph

from conftest import REPO, retarget

pytestmark = pytest.mark.dataflow

DATAFLOW = [
    "--runner=DataflowRunner", "--project=elspeth-test", "--region=europe-west1", "--job_name=elspeth-accounts",
    "--temp_location=gs://elspeth-test/tmp", "--staging_location=gs://elspeth-test/staging",
    "--no_auth", "--dry_run=True", "--sdk_location=container",
]


def test_aggregation_pipeline_translates_for_dataflow(tmp_path):
    pytest.importorskip("apache_beam.runners.dataflow.internal.apiclient", reason="needs apache-beam[gcp]")
    settings = retarget(yaml.safe_load((REPO / "pipelines" / "accounts.yaml").read_text()), tmp_path / "out")
    loaded = testing.load_for_test(settings, "postgresql+psycopg://elspeth@cloudsql-proxy:5432/landscape")
    pipeline = beam.Pipeline(options=PipelineOptions(DATAFLOW))
    apply_graph(pipeline, loaded, "run-dataflow")
    result = pipeline.run()  # dry run: translated, not submitted

    job = result.job
    assert job.proto.name == "elspeth-accounts"
    transforms = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
    for node in ("source source", "gate split_refunds", "aggregation dedupe_resent", "aggregation account_totals",
                 "sink totals", "sink rejects"):
        assert any(name.startswith(node) for name in transforms), node
    # the aggregation's state and timers survive translation
    stateful = [
        t for t in job.proto_pipeline.components.transforms.values()
        if t.spec.urn == "beam:transform:pardo:v1" and "/Aggregate" in t.unique_name
    ]
    assert len(stateful) == 2
    for t in stateful:
        payload = beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload)
        assert set(payload.state_specs) == {"tokens", "position", "deadline"}
        assert set(payload.timer_family_specs) == {"ts-end_of_source", "ts-timeout"}  # Beam prefixes timer ids
