"""Flink, for real: a standalone cluster (1 JobManager, 1 TaskManager of 2 slots), Python work in
Beam's worker pool (two SDK workers), parallelism 2, the Landscape in PostgreSQL.

`.ci/run` builds the job server (flink/jobserver, from Maven Central) and starts the cluster
(`.ci/flink.sh`, `tools/flink_cluster.py`). The audit of a Flink run must equal the direct
runner's for the same input (DESIGN §7 invariant 7): exactly for a stateless pipeline, but for
the sinks' part boundaries (the runner's bundles); through aggregations, on what arrival order
cannot change: every record up to the first aggregation, each key's members there, and — with
one batch per key — the results.
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
import hypothesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st
from sqlalchemy import func, select

from elspeth_beam import testing
from elspeth_beam.landscape import schema as s

import test_generated_pipelines as generated
from conftest import REPO, fresh_postgres_database, retarget

pytestmark = pytest.mark.flink

_spec = importlib.util.spec_from_file_location("flink_cluster", REPO / "tools" / "flink_cluster.py")
flink_cluster = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(flink_cluster)  # type: ignore[union-attr]

NO_SHRINK = (Phase.explicit, Phase.generate)  # a cluster job takes seconds: report a failing example as found

DETERMINISTIC = ("rows", "tokens", "token_parents", "node_states", "routing_events", "token_outcomes",
                 "batches", "batch_members", "batch_outputs")


@pytest.fixture(scope="module")
def flink_args() -> list[str]:
    jar = os.environ.get("ELSPETH_FLINK_JOB_SERVER_JAR")
    if not jar or not Path(jar).is_file():
        pytest.fail("no Flink job-server jar: run `source .ci/flink.sh && flink_up` (it builds flink/jobserver)")
    flink_cluster.start(taskmanagers=1, slots=2)
    return flink_cluster.pipeline_args(parallelism=2)


def _settings(pipeline: str, out: Path, *, end_of_source: bool = False, split_bytes: int | None = 4096) -> dict:
    settings = retarget(yaml.safe_load((REPO / "pipelines" / pipeline).read_text()), out)
    if end_of_source:
        for agg in settings.get("aggregations", []):
            agg["trigger"] = {}  # end of source only: batch composition independent of arrival order
    if split_bytes is not None:
        settings["source"]["split_bytes"] = split_bytes  # several splits, read in parallel
    return settings


def _sink_lines(settings: dict) -> dict[str, Counter[str]]:
    """Each sink's rows as a multiset (the order of rows in a merged file is the runner's)."""
    out = {}
    for name, sink in settings["sinks"].items():
        path = Path(sink["options"]["path"])
        if not path.exists():
            lines = []
        elif path.suffix == ".parquet":
            lines = [json.dumps(row, sort_keys=True, default=str) for row in pq.read_table(path).to_pylist()]
        else:
            lines = path.read_text().splitlines()[1 if path.suffix == ".csv" else 0:]  # a CSV header is no row
        out[name] = Counter(lines)
    return out


def _both(tmp_path: Path, settings_of, flink_args: list[str], postgres_url: str, run_id: str):
    on_flink, direct = settings_of(tmp_path / "flink-out"), settings_of(tmp_path / "direct-out")
    flink = testing.run_for_test(on_flink, tmp_path, run_id=run_id, beam_args=tuple(flink_args), landscape=postgres_url)
    assert flink.result.runner == "FlinkRunner"
    testing.assert_audit_complete(flink)
    reference = testing.run_for_test(direct, tmp_path, run_id=run_id, landscape=f"sqlite:///{tmp_path / 'direct.db'}")
    return flink, reference, _sink_lines(on_flink), _sink_lines(direct)


def test_a_stateless_pipeline_on_the_cluster_leaves_the_direct_runners_audit(tmp_path, flink_args, postgres_url):
    flink, direct, flink_sinks, direct_sinks = _both(
        tmp_path, lambda out: _settings("quickstart.yaml", out), flink_args, postgres_url, "run-flink")
    a, b = testing.without_parts(testing.snapshot(flink.store)), testing.without_parts(testing.snapshot(direct.store))
    assert a["rows"] and a["token_outcomes"]
    for table in DETERMINISTIC:
        assert a[table] == b[table], table
    assert flink_sinks == direct_sinks


# Beam's first run imports jedi, which raises the recursion limit; Hypothesis warns about it.
@pytest.mark.filterwarnings("ignore:The recursion limit will not be reset")
@hypothesis.settings(max_examples=3, deadline=None, database=None, phases=NO_SHRINK,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=generated.rows_strategy, on_error=st.sampled_from(["fail", "quarantine", "rejects"]), fork=st.booleans(),
       threshold=st.integers(min_value=-2, max_value=25))
def test_generated_pipelines_on_the_cluster_leave_the_direct_runners_audit(flink_args, data, on_error, fork, threshold):
    """The default suite's generated datasets and pipelines (coerce, gate, fork, every on_error), split in
    parts of 64 bytes so that both workers read: the same records as the direct runner's, exactly."""
    with tempfile.TemporaryDirectory() as tmpdir, fresh_postgres_database() as postgres_url:
        tmp = Path(tmpdir)
        (tmp / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))

        def settings_of(out: Path) -> dict:
            settings = retarget(generated.pipeline(tmp, on_error, fork, threshold), out)
            settings["source"]["split_bytes"] = 64
            return settings

        flink, direct, flink_sinks, direct_sinks = _both(tmp, settings_of, flink_args, postgres_url, "run-generated")
        a, b = testing.without_parts(testing.snapshot(flink.store)), testing.without_parts(testing.snapshot(direct.store))
        assert len(a["rows"]) == len(data)
        for table in DETERMINISTIC:
            assert a[table] == b[table], table
        assert flink_sinks == direct_sinks
        flink.store.dispose()
        direct.store.dispose()


@pytest.mark.parametrize("triggers", ["end of source", "as shipped"])
def test_aggregations_on_the_cluster_keep_what_order_cannot_change(tmp_path, flink_args, postgres_url, triggers):
    """accounts.yaml: which member arrives first at a key (its ordinal, so the output token's
    id) is the runner's; with its count triggers, so is which batch a member falls in."""
    eos = triggers == "end of source"
    flink, direct, flink_sinks, direct_sinks = _both(
        tmp_path, lambda out: _settings("accounts.yaml", out, end_of_source=eos), flink_args, postgres_url, "run-flink")
    _assert_order_free_equal(flink.store, direct.store, flink_sinks, direct_sinks, end_of_source=eos)


def _assert_order_free_equal(store_a, store_b, sinks_a, sinks_b, *, end_of_source: bool,
                             first_aggregation: str = "aggregation:dedupe_resent") -> None:
    assert _upstream(store_a) == _upstream(store_b)
    assert _members_per_key(store_a, first_aggregation) == _members_per_key(store_b, first_aggregation)
    for sink in ("refunds", "rejects"):  # upstream of every aggregation
        assert sinks_a[sink] == sinks_b[sink], sink
    if end_of_source:  # one batch per key: the same members, so the same totals (float sums to rounding)
        assert _totals(sinks_a["totals"]) == _totals(sinks_b["totals"])


def _totals(lines: Counter[str]) -> dict[str, dict]:
    totals = {}
    for line in lines.elements():
        row = json.loads(line)
        row["amount_sum"], row["amount_mean"] = round(row["amount_sum"], 6), round(row["amount_mean"], 6)
        totals[row["account_id"]] = row
    return totals


def _upstream(store) -> dict[str, list[tuple]]:
    """The records of the source and the gate: one per row, whatever the order."""
    upstream = ("source:source", "gate:split_refunds")
    with store.engine.connect() as conn:
        rows = conn.execute(select(s.rows.c.row_id, s.rows.c.row_index, s.rows.c.source_data_hash, s.rows.c.payload_json)).all()
        states = conn.execute(select(s.node_states.c.state_id, s.node_states.c.status, s.node_states.c.input_hash,
                                     s.node_states.c.output_hash).where(s.node_states.c.node_id.in_(upstream))).all()
        routes = conn.execute(select(s.routing_events.c.routing_id, s.routing_events.c.destination)).all()
    return {"rows": sorted(map(tuple, rows)), "states": sorted(map(tuple, states)), "routes": sorted(map(tuple, routes))}


def _members_per_key(store, node_id: str) -> dict[str, set[str]]:
    b, m = s.batches, s.batch_members
    with store.engine.connect() as conn:
        found = conn.execute(select(b.c.key, m.c.token_id).join(m, m.c.batch_id == b.c.batch_id)
                             .where(b.c.aggregation_node_id == node_id, b.c.status == "completed")).all()
    members: dict[str, set[str]] = {}
    for key, token in found:
        members.setdefault(key, set()).add(token)
    return members


def _rest(path: str) -> dict:
    with urllib.request.urlopen(f"http://localhost:{flink_cluster.REST_PORT}{path}", timeout=5) as response:
        return json.load(response)


def test_a_taskmanager_killed_mid_job_leaves_the_same_audit_and_sinks(tmp_path, flink_args, postgres_url):
    """SIGKILL the TaskManager while the job runs, and start a new one (as a supervisor would):
    Flink's fixed-delay restart strategy re-runs the lost tasks there; their bundles are
    replayed, and the audit absorbs the replay. The accounts pipeline
    without its dedupe step (whose transform mode makes every output a child of every member:
    quadratic in one end-of-source batch per key), on 20 000 rows."""
    data = tmp_path / "big.csv"
    _write_transactions(data, 20_000)

    def settings_of(out: Path) -> dict:
        settings = _settings("accounts.yaml", out, end_of_source=True, split_bytes=64 * 1024)
        settings["source"]["options"]["path"] = str(data)
        settings["aggregations"] = [agg for agg in settings["aggregations"] if agg["name"] == "account_totals"]
        settings["aggregations"][0]["input"] = "charges"
        return settings

    before = {job["jid"] for job in _rest("/jobs/overview")["jobs"]}
    killed: dict = {}

    def kill_the_taskmanager_mid_job() -> None:  # the run itself needs the main thread (signal handlers)
        killed["job"] = _wait_for_running_job(before)
        time.sleep(3)  # into the job: splits read, bundles committed
        killed["pid"] = flink_cluster.kill("taskmanager-0")
        time.sleep(1)
        flink_cluster.start_taskmanager(0)

    killer = threading.Thread(target=kill_the_taskmanager_mid_job, daemon=True)
    killer.start()
    flink = testing.run_for_test(settings_of(tmp_path / "flink-out"), tmp_path, run_id="run-kill",
                                 beam_args=tuple(flink_args), landscape=postgres_url)
    killer.join(timeout=30)
    assert killed.get("pid"), "the TaskManager was not killed while the job ran"
    testing.assert_audit_complete(flink)
    assert _rest(f"/jobs/{killed['job']}")["state"] == "FINISHED"
    assert _restarts(killed["job"]) >= 1, "Flink restarted no task: the kill came too late to test anything"
    direct = testing.run_for_test(settings_of(tmp_path / "direct-out"), tmp_path, run_id="run-kill",
                                  landscape=f"sqlite:///{tmp_path / 'direct.db'}")
    _assert_order_free_equal(flink.store, direct.store, _sink_lines(settings_of(tmp_path / "flink-out")),
                             _sink_lines(settings_of(tmp_path / "direct-out")), end_of_source=True,
                             first_aggregation="aggregation:account_totals")


def test_a_streaming_job_with_checkpoints_flushes_by_timeout_and_loses_nothing(tmp_path, flink_args, postgres_url):
    """Streaming, checkpoints every 500 ms: the rows arrive in the source's bundles over seconds,
    so quiet keys are flushed by their 0.5 s timeout mid-stream and the rest at end of source;
    each key's members are the direct (batch) run's and its counts add up to them. (Flink's
    operator waits forever at end of input for a pending processing-time timer: the flush
    clears it — README, Flink.)"""
    data = tmp_path / "big.csv"
    _write_transactions(data, 20_000)

    def settings_of(out: Path) -> dict:
        settings = _settings("accounts.yaml", out, split_bytes=64 * 1024)
        settings["source"]["options"]["path"] = str(data)
        settings["aggregations"] = [agg for agg in settings["aggregations"] if agg["name"] == "account_totals"]
        settings["aggregations"][0].update(input="charges", trigger={"timeout_seconds": 0.5})
        return settings

    before = {job["jid"] for job in _rest("/jobs/overview")["jobs"]}
    flink = testing.run_for_test(settings_of(tmp_path / "flink-out"), tmp_path, run_id="run-stream", landscape=postgres_url,
                                 beam_args=(*flink_args, "--streaming", "--checkpointing_interval=500"))
    testing.assert_audit_complete(flink)
    (job,) = [j["jid"] for j in _rest("/jobs/overview")["jobs"] if j["jid"] not in before]
    assert _rest(f"/jobs/{job}")["state"] == "FINISHED"
    assert _rest(f"/jobs/{job}/checkpoints")["counts"]["completed"] >= 1
    with flink.store.engine.connect() as conn:
        triggers = Counter(dict(conn.execute(select(s.batches.c.trigger_type, func.count())
                                             .where(s.batches.c.status == "completed").group_by(s.batches.c.trigger_type)).all()))
    assert triggers["timeout"] >= 1 and set(triggers) <= {"timeout", "end_of_source"}, triggers

    direct = testing.run_for_test(settings_of(tmp_path / "direct-out"), tmp_path, run_id="run-stream",
                                  landscape=f"sqlite:///{tmp_path / 'direct.db'}")
    flink_sinks, direct_sinks = _sink_lines(settings_of(tmp_path / "flink-out")), _sink_lines(settings_of(tmp_path / "direct-out"))
    _assert_order_free_equal(flink.store, direct.store, flink_sinks, direct_sinks, end_of_source=False,
                             first_aggregation="aggregation:account_totals")
    assert _counts_per_key(flink_sinks["totals"]) == _counts_per_key(direct_sinks["totals"])


def _counts_per_key(lines: Counter[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in lines.elements():
        row = json.loads(line)
        counts[row["account_id"]] += row["amount_count"]
    return counts


def _wait_for_running_job(before: set[str], timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job in _rest("/jobs/overview")["jobs"]:
            if job["jid"] not in before and job["state"] == "RUNNING":
                return job["jid"]
        time.sleep(0.2)
    raise AssertionError("no job started on the cluster")


def _restarts(job: str) -> int:
    """How often the job's tasks were restarted (the exception history names each failure)."""
    history = _rest(f"/jobs/{job}/exceptions").get("exceptionHistory", {}).get("entries", [])
    return len(history)


def _write_transactions(path: Path, rows: int) -> None:
    """The accounts pipeline's input, larger: the generator the repository's sample came from."""
    spec = importlib.util.spec_from_file_location("make_transactions", REPO / "pipelines" / "data" / "make_transactions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    module.main(rows, out=path)
