"""The crash soak: the crash-fuzz harness for a few minutes (``.ci/run`` enables the marker).

Each CI run draws new crash points (the seed is printed; ``ELSPETH_SOAK_SEED`` repeats it),
so the soak keeps exploring; ``python -m tests.crashfuzz`` runs it by hand, as long as wanted.
Crash points are progress (segments committed, source rows, flushes), so every iteration
crashes its run mid-way however fast the machine is — and the test says so of each one.
"""

from __future__ import annotations

import os
import time

import pytest

import crashfuzz

pytestmark = pytest.mark.crashsoak


def test_every_crash_and_resume_ends_equal_to_the_uninterrupted_run(tmp_path, capsys):
    seed = int(os.environ.get("ELSPETH_SOAK_SEED", int(time.time()) % 100_000))
    runs = int(os.environ.get("ELSPETH_SOAK_RUNS", "8"))
    with capsys.disabled():
        print(f"\ncrash soak: {runs} runs, seed {seed} (ELSPETH_SOAK_SEED={seed} repeats the crash points)")
    results = list(crashfuzz.fuzz(runs, 10_000, seed, tmp_path))
    with capsys.disabled():
        for crash, outcome in results:
            print(f"  {crash.describe():<60} kills {outcome.kills} resumes {outcome.resumes} "
                  f"{'equal' if not outcome.differences else outcome.differences}")
    # every iteration crashed its run mid-way: one whose crash landed after the run had ended
    # tested nothing, whatever its comparison says
    assert [(c.describe(), o.differences) for c, o in results if o.kills < 1] == [], f"seed {seed}: not crashed"
    assert [(c.describe(), o.differences) for c, o in results if o.differences] == [], f"seed {seed}"
