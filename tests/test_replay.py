"""Replaying audit records, and Beam's bundle retries, leave the same Landscape (DESIGN §4, §7.4)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml
from conftest import QUICKSTART, retarget

from elspeth_beam import testing
from elspeth_beam.landscape.store import LandscapeStore

# runs/nodes/edges (and the digest, record_digests) come from the run lifecycle (begin_run/
# finish_run), not from audit records; so do the "merged" artifacts, which merge_sinks writes
# after the pipeline has finished; audit_segments is the ledger of segments loaded.
LIFECYCLE_TABLES = {"runs", "nodes", "edges", "landscape_schema", "record_digests", "audit_segments"}


def event_tables(store: LandscapeStore) -> dict[str, list[str]]:
    """Every table the audit records fill, all columns (merged artifacts left out)."""
    snap = testing.snapshot(store, ignore=frozenset())  # timestamps too: they travel in the records
    out = {name: rows for name, rows in snap.items() if name not in LIFECYCLE_TABLES}
    out["artifacts"] = [a for a in out["artifacts"] if json.loads(a)["artifact_kind"] != "merged"]
    return out


@pytest.fixture(scope="module")
def journaled_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replay")
    settings = retarget(yaml.safe_load(QUICKSTART.read_text()), tmp / "out")
    run = testing.run_for_test(settings, tmp, journal=True)
    testing.assert_audit_complete(run)
    return run


@pytest.mark.parametrize("seed,chunks", [(1, 3), (2, 7), (3, 1)])
def test_replaying_shuffled_duplicated_records_rebuilds_the_same_landscape(journaled_run, tmp_path, seed, chunks):
    events = journaled_run.records()
    original = event_tables(journaled_run.store)
    # the journal really holds the whole run, not a trivial subset
    assert len(original["rows"]) == 300
    assert len(original["tokens"]) == 300 + 2 * 62
    assert len(events) >= sum(len(rows) for rows in original.values())

    rng = random.Random(seed)
    replay = events + rng.sample(events, k=int(len(events) * 0.3))
    rng.shuffle(replay)
    bounds = sorted(rng.sample(range(1, len(replay)), k=chunks - 1))
    pieces = [replay[a:b] for a, b in zip([0, *bounds], [*bounds, len(replay)])]
    assert sum(map(len, pieces)) == len(replay)

    store = LandscapeStore(testing.landscape_url(tmp_path, "replayed.db"))
    for piece in pieces:
        testing.write_records(store, piece)
    replayed = event_tables(store)
    assert set(replayed) == set(original)
    for table in original:
        assert replayed[table] == original[table], f"table {table} differs after replay"

    # writing every record twice more changes nothing at all (volatile columns included)
    before = testing.snapshot(store, ignore=frozenset())
    testing.write_records(store, events)
    testing.write_records(store, list(reversed(events)))
    assert testing.snapshot(store, ignore=frozenset()) == before
    store.dispose()


def test_replaying_into_the_original_landscape_changes_nothing(journaled_run):
    events = journaled_run.records()
    before = testing.snapshot(journaled_run.store, ignore=frozenset())
    testing.write_records(journaled_run.store, list(reversed(events)))
    assert testing.snapshot(journaled_run.store, ignore=frozenset()) == before


def _sink_files(out_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out_dir.iterdir()) if p.is_file()}


def test_bundle_retries_leave_the_same_landscape_and_sink_files(quickstart_settings, tmp_path, monkeypatch):
    """Same run id, same settings, same output folder; one plain run and one on which the
    FnApiRunner replays every bundle 3 extra times: the Landscapes and sink files match.

    Both runs name their Landscape by the same relative URL from a different working
    directory, so even the recorded settings (which include the Landscape URL) are identical.
    """
    out_dir = Path(quickstart_settings["sinks"]["standard"]["options"]["path"]).parent
    dbs = {}
    journal_sizes = {}
    for name, beam_args in (("plain", ()), ("repeated", ("--direct_runner_bundle_repeat=3",))):
        workdir = tmp_path / name
        workdir.mkdir()
        monkeypatch.chdir(workdir)
        run = testing.run_for_test(
            quickstart_settings,
            tmp_path,
            run_id="run-bundle-retry",
            landscape="sqlite:///landscape.db",
            beam_args=beam_args,
            journal=True,
        )
        testing.assert_audit_complete(run)
        run.store.dispose()
        journal_sizes[name] = len(run.records())
        dbs[name] = LandscapeStore(testing.landscape_url(workdir))  # absolute: independent of cwd
        if name == "plain":
            files_plain = _sink_files(out_dir)

    # the repeat really happened: every bundle's audit was seen several times
    assert journal_sizes["repeated"] >= 2 * journal_sizes["plain"]

    plain, repeated = testing.snapshot(dbs["plain"]), testing.snapshot(dbs["repeated"])
    assert len(plain["rows"]) == 300
    for table in plain:
        assert repeated[table] == plain[table], f"table {table} differs under --direct_runner_bundle_repeat=3"

    files_repeated = _sink_files(out_dir)
    assert sorted(files_plain) == ["large.jsonl", "rejects.csv", "review.parquet", "standard.csv"]
    assert files_repeated == files_plain
    for store in dbs.values():
        store.dispose()


def test_which_runners_replay_identically_and_which_get_stable_input():
    from apache_beam.options.pipeline_options import PipelineOptions

    from elspeth_beam.run import replays_identically

    same = [["--runner=FnApiRunner"], ["--runner=BundleBasedDirectRunner"],
            ["--runner=PortableRunner", "--job_endpoint=embed"]]
    other = [["--runner=FlinkRunner"], ["--runner=DataflowRunner"], ["--runner=PortableRunner", "--job_endpoint=localhost:8099"]]
    assert all(replays_identically(PipelineOptions(args)) for args in same)
    assert not any(replays_identically(PipelineOptions(args)) for args in other)


@pytest.mark.parametrize("args, added", [
    ([], ["--execution_mode_for_batch=BATCH_FORCED"]),
    (["--execution_mode_for_batch=PIPELINED"], []),
    (["--streaming"], []),
    (["--streaming", "--checkpointing_interval=1000"], ["--shutdown_sources_after_idle_ms=0"]),
    (["--streaming", "--checkpointing_interval=1000", "--shutdown_sources_after_idle_ms=5000"], []),
])
def test_flink_gets_what_a_bounded_source_needs_unless_the_user_said_otherwise(quickstart_settings, tmp_path, args, added):
    """Batch: blocking exchanges (stable input). Streaming with checkpoints: sources that end,
    or Beam keeps them idle forever and the job never finishes (README, Flink)."""
    from elspeth_beam.run import pipeline_options

    loaded = testing.load_for_test(quickstart_settings, f"sqlite:///{tmp_path / 'l.db'}")
    options, label = pipeline_options(loaded, ["--runner=FlinkRunner", *args])
    assert label == "FlinkRunner"
    flags = options.get_all_options(retain_unknown_options=True)
    assert {flag: value for flag, value in flags.items()
            if flag in ("execution_mode_for_batch", "shutdown_sources_after_idle_ms") and value is not None} == \
        dict(a.removeprefix("--").split("=") for a in added + [a for a in args if a.startswith(("--exec", "--shut"))])


@pytest.mark.parametrize("pipeline", ["quickstart.yaml", "accounts.yaml"])
def test_stable_input_changes_nothing_but_where_the_writes_wait(tmp_path, monkeypatch, pipeline):
    """The reshuffles a cluster runner gets before audit and sink writes leave the same audit."""
    from conftest import REPO

    from elspeth_beam import run as run_module

    settings = retarget(yaml.safe_load((REPO / "pipelines" / pipeline).read_text()), tmp_path / "out")
    plain = testing.run_for_test(settings, tmp_path, run_id="run-stable", landscape=f"sqlite:///{tmp_path / 'plain.db'}")
    monkeypatch.setattr(run_module, "replays_identically", lambda options: False)
    stable = testing.run_for_test(settings, tmp_path, run_id="run-stable", landscape=f"sqlite:///{tmp_path / 'stable.db'}")
    testing.assert_audit_complete(stable)
    a, b = testing.without_parts(testing.snapshot(stable.store)), testing.without_parts(testing.snapshot(plain.store))
    assert a["node_states"] and a["token_outcomes"]
    for table in a:
        if table not in LIFECYCLE_TABLES:  # the ledger and digest count parts too
            assert a[table] == b[table], table
