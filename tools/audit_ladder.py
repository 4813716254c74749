"""Where the pipeline phase's audit cost goes: the bench's audited run with parts switched off.

    python tools/audit_ladder.py ROWS MODE     MODE: plain | full | no-send | no-record

no-send: segments are built but not handed to the writer (nothing committed or loaded; the run
then fails verify, which is fine here); no-record: records are not even buffered. Run each mode
on a quiet machine and compare their pipeline seconds. A measuring tool, not part of a run.
"""
import sys, tempfile, time
from pathlib import Path
from elspeth_beam import bench
rows, mode = int(sys.argv[1]), sys.argv[2]
if mode in ("no-send", "no-record"):
    from elspeth_beam.pipeline import audit_sink
    audit_sink.WriteAuditFn.process = lambda self, segment: None
if mode == "no-record":
    from elspeth_beam.pipeline import audit
    audit.AuditedDoFn.record = lambda self, record: None
work = Path(tempfile.mkdtemp(prefix="ladder-"))
data = work / "in.csv"; bench.generate(data, rows)
t0 = time.perf_counter()
if mode == "plain":
    bench.run_plain(data, work / "out"); print(mode, "wall", round(time.perf_counter() - t0, 2)); sys.exit()
from elspeth_beam.config.loader import load_settings_dict
from elspeth_beam.run import execute_run
r = execute_run(load_settings_dict(bench.settings(data, work / "out", f"sqlite:///{work}/l.db")))
print(mode, "wall", round(time.perf_counter() - t0, 2), {k: round(v, 2) for k, v in r.phases.items()}, r.status.value)
