"""Portable submission: the Runner API path a Flink or Spark job server receives.

Beam's in-process job service (``--job_endpoint=embed``) translates the pipeline to the Runner
API and runs it with a LOOPBACK worker, so state, timers, tagged outputs and the TokenInfo
coder all cross the portability boundary — and the Landscape must come out the same.
"""

from __future__ import annotations

import pytest
import yaml

from elspeth_beam import testing

from conftest import REPO, retarget

pytestmark = pytest.mark.portable

PORTABLE = ("--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK")


@pytest.mark.parametrize("pipeline", ["quickstart.yaml", "accounts.yaml"])
def test_portable_run_equals_direct_run(tmp_path, pipeline):
    settings = retarget(yaml.safe_load((REPO / "pipelines" / pipeline).read_text()), tmp_path / "out")
    portable = testing.run_for_test(settings, tmp_path, run_id="run-port", beam_args=PORTABLE,
                                    landscape=f"sqlite:///{tmp_path / 'portable.db'}")
    testing.assert_audit_complete(portable)
    assert portable.result.runner == "PortableRunner"
    direct = testing.run_for_test(settings, tmp_path, run_id="run-port", landscape=f"sqlite:///{tmp_path / 'direct.db'}")
    a, b = testing.snapshot(portable.store), testing.snapshot(direct.store)
    assert a["rows"] and a["token_outcomes"]
    if pipeline == "accounts.yaml":
        assert a["batches"] and a["batch_members"]
    for table in a:
        if table != "runs":  # the runs row records each run's own Landscape URL and runner
            assert a[table] == b[table], table
