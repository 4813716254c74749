"""A standalone Flink 1.19 session cluster on this machine, from the registries only.

    python tools/flink_cluster.py start [--slots 2]   # idempotent
    python tools/flink_cluster.py status | stop | kill-taskmanager N | start-taskmanager N | args

Flink's distribution is not on Maven or PyPI as such, but PyPI's ``apache-flink-libraries``
sdist carries its ``lib/`` (flink-dist and the rest) and ``bin/bash-java-utils.jar``, without the
start scripts. This does what those scripts do: one JobManager JVM
(``StandaloneSessionClusterEntrypoint``) and N TaskManager JVMs (``TaskManagerRunner``), each
started with the JVM flags and ``-D`` memory settings that ``BashJavaUtils`` computes from the
configuration, as ``taskmanager.sh`` does (without them a TaskManager refuses to start:
"taskmanager.cpu.cores ... is not set"). State (config, logs, pid files) is under
``$ELSPETH_CACHE/flink/cluster`` (default ``~/.cache/elspeth_beam``); the REST API is on
``localhost:REST_PORT``; Beam's Python worker pool on ``localhost:POOL_PORT``. A test harness,
not part of a run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

FLINK_VERSION = "1.19.3"
REST_PORT = int(os.environ.get("ELSPETH_FLINK_REST_PORT", "8081"))
POOL_PORT = int(os.environ.get("ELSPETH_FLINK_POOL_PORT", "50000"))
CACHE = Path(os.environ.get("ELSPETH_CACHE", Path.home() / ".cache" / "elspeth_beam")) / "flink"
DIST = CACHE / f"flink-{FLINK_VERSION}"
CLUSTER = CACHE / "cluster"
BUILT_JAR = Path(__file__).resolve().parent.parent / "flink" / "jobserver" / "target" / "elspeth-flink-job-server.jar"

# What Flink's own scripts pass every JVM on Java 17 (its default ``env.java.opts.all``). Without
# them a task's OutOfMemoryError cannot be annotated (Flink sets Throwable.detailMessage by
# reflection): that throws InaccessibleObjectException, the task never reaches a final state
# and the TaskManager exits on "FATAL - exception in resource cleanup" — the real error unseen.
JAVA_17_FLAGS = [
    *(f"--add-exports={m}=ALL-UNNAMED" for m in (
        "java.base/sun.net.util", "java.rmi/sun.rmi.registry", "jdk.compiler/com.sun.tools.javac.api",
        "jdk.compiler/com.sun.tools.javac.file", "jdk.compiler/com.sun.tools.javac.parser",
        "jdk.compiler/com.sun.tools.javac.tree", "jdk.compiler/com.sun.tools.javac.util",
        "java.security.jgss/sun.security.krb5")),
    *(f"--add-opens=java.base/{p}=ALL-UNNAMED" for p in (
        "java.lang", "java.net", "java.io", "java.nio", "sun.nio.ch", "java.lang.reflect", "java.text",
        "java.time", "java.util", "java.util.concurrent", "java.util.concurrent.atomic", "java.util.concurrent.locks")),
]

CONF = """\
jobmanager.rpc.address: localhost
jobmanager.rpc.port: 6123
jobmanager.bind-host: localhost
jobmanager.memory.process.size: 1024m
taskmanager.bind-host: localhost
taskmanager.host: localhost
taskmanager.memory.process.size: 3072m
taskmanager.memory.task.off-heap.size: 512m
taskmanager.memory.network.fraction: 0.25
taskmanager.memory.network.max: 512m
taskmanager.numberOfTaskSlots: {slots}
parallelism.default: 1
classloader.resolve-order: parent-first
rest.port: {rest_port}
rest.address: localhost
rest.bind-address: localhost
restart-strategy.type: fixed-delay
restart-strategy.fixed-delay.attempts: 10
restart-strategy.fixed-delay.delay: 2 s
heartbeat.timeout: 10000
heartbeat.interval: 2000
io.tmp.dirs: {tmp}
"""
LOG4J = """\
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = MainAppender
appender.main.name = MainAppender
appender.main.type = File
appender.main.fileName = ${sys:log.file}
appender.main.layout.type = PatternLayout
appender.main.layout.pattern = %d{yyyy-MM-dd HH:mm:ss,SSS} %-5p %-60c %x - %m%n
"""


class ClusterError(RuntimeError):
    pass


def ensure_dist() -> Path:
    """Flink's lib/ and bin/ from PyPI's apache-flink-libraries sdist, fetched once by pip."""
    if (DIST / "lib" / f"flink-dist-{FLINK_VERSION}.jar").is_file():
        return DIST
    CACHE.mkdir(parents=True, exist_ok=True)
    sdist = CACHE / f"apache-flink-libraries-{FLINK_VERSION}.tar.gz"
    if not sdist.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"apache-flink-libraries=={FLINK_VERSION}", "-d", str(CACHE)], check=True)
    prefix = f"apache-flink-libraries-{FLINK_VERSION}/deps/"
    staging = DIST.with_suffix(".partial")
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix + "lib/") or m.name.startswith(prefix + "bin/")]
        for member in members:
            member.name = member.name[len(prefix):]
        tar.extractall(staging, members=members, filter="data")
    staging.rename(DIST)
    return DIST


def _classpath(runner: bool = False) -> str:
    """Flink's lib; for a TaskManager also Beam's runner (the job server's jar). A session
    cluster unloads each job's classes when the job ends, but the Beam runner's gRPC threads
    outlive the job in the TaskManager and then fail to load a class — seen: a
    NoClassDefFoundError in a vendored Netty class killed the TaskManager after a job, and the
    next job never got its slots. Loaded by Flink's own class loader (parent-first), they stay."""
    jars = sorted((DIST / "lib").glob("*.jar"))
    if runner:
        jars.append(Path(_job_server_jar()))
    return ":".join(str(p) for p in jars)


def _job_server_jar() -> str:
    jar = os.environ.get("ELSPETH_FLINK_JOB_SERVER_JAR") or str(BUILT_JAR)
    if not Path(jar).is_file():
        raise ClusterError(f"no job-server jar at {jar}: build it (mvn -q -f flink/jobserver/pom.xml package) "
                           "or set ELSPETH_FLINK_JOB_SERVER_JAR")
    return jar


def _write_conf(slots: int) -> Path:
    conf = CLUSTER / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    (CLUSTER / "tmp").mkdir(exist_ok=True)
    (CLUSTER / "log").mkdir(exist_ok=True)
    (conf / "flink-conf.yaml").write_text(CONF.format(slots=slots, rest_port=REST_PORT, tmp=CLUSTER / "tmp"))
    (conf / "log4j.properties").write_text(LOG4J)
    return conf


def _resource_params(command: str, conf: Path) -> tuple[list[str], list[str]]:
    """JVM flags and -D settings as Flink's scripts compute them (BashJavaUtils)."""
    out = subprocess.run(
        ["java", "-classpath", f"{DIST / 'bin' / 'bash-java-utils.jar'}:{_classpath()}",
         "org.apache.flink.runtime.util.bash.BashJavaUtils", command, "--configDir", str(conf)],
        capture_output=True, text=True, check=True).stdout.splitlines()
    marker = "BASH_JAVA_UTILS_EXEC_RESULT:"
    result = [line[len(marker):] for line in out if line.startswith(marker)]
    jvm = result[0].split()
    dynamic = result[1].split() if len(result) > 1 else []
    return jvm, dynamic


def _launch(name: str, main: str, jvm: list[str], args: list[str], conf: Path, runner: bool = False) -> int:
    log = CLUSTER / "log" / f"{name}.log"
    cmd = ["java", *JAVA_17_FLAGS, *jvm, f"-Dlog.file={log}", f"-Dlog4j.configurationFile=file:{conf / 'log4j.properties'}",
           "-classpath", _classpath(runner), main, "--configDir", str(conf), *args]
    with (CLUSTER / "log" / f"{name}.out").open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    (CLUSTER / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def _alive(name: str) -> int | None:
    pid_file = CLUSTER / f"{name}.pid"
    if not pid_file.is_file():
        return None
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    stat = Path(f"/proc/{pid}/stat")
    if stat.is_file() and stat.read_text().split()[2] == "Z":
        return None
    return pid


def overview() -> dict | None:
    try:
        with urllib.request.urlopen(f"http://localhost:{REST_PORT}/overview", timeout=2) as response:
            return json.load(response)
    except OSError:
        return None


def _wait(condition, what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}; logs in {CLUSTER / 'log'}")


def start_taskmanager(index: int) -> int:
    conf = CLUSTER / "conf"
    jvm, dynamic = _resource_params("GET_TM_RESOURCE_PARAMS", conf)
    return _launch(f"taskmanager-{index}", "org.apache.flink.runtime.taskexecutor.TaskManagerRunner",
                   jvm, dynamic, conf, runner=True)


def start_pool() -> int:
    """Beam's Python worker pool: the SDK workers the Flink tasks talk to (EXTERNAL environment),
    as Beam on Flink is deployed. One pool serves one TaskManager: the pool knows its workers
    by the ids the TaskManager gives them (1-1, 1-2, ... counted per TaskManager), so two
    TaskManagers sharing one pool stop each other's workers (seen: jobs failing with "client
    cancelled" until the restart attempts ran out). Hence one TaskManager with several slots
    here, and ``--sdk_worker_parallelism`` workers for it."""
    log = CLUSTER / "log" / "worker-pool.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                                 f"--service_port={POOL_PORT}"], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    (CLUSTER / "worker-pool.pid").write_text(str(proc.pid))
    return proc.pid


def pipeline_args(parallelism: int = 2) -> list[str]:
    """Beam options that run a pipeline on this cluster with its worker pool."""
    jar = _job_server_jar()
    return ["--runner=FlinkRunner", "--flink_version=1.19", f"--flink_master=localhost:{REST_PORT}",
            f"--flink_job_server_jar={jar}", "--environment_type=EXTERNAL",
            f"--environment_config=localhost:{POOL_PORT}", f"--parallelism={parallelism}",
            f"--sdk_worker_parallelism={parallelism}"]


def start(taskmanagers: int = 1, slots: int = 2) -> dict:
    """Start the cluster unless it runs; return its REST overview once every slot is there."""
    ensure_dist()
    if (_alive("jobmanager") and _alive("worker-pool") and (view := overview())
            and view["taskmanagers"] == taskmanagers and view["slots-total"] == taskmanagers * slots):
        return view
    stop()
    conf = _write_conf(slots)
    jvm, dynamic = _resource_params("GET_JM_RESOURCE_PARAMS", conf)
    _launch("jobmanager", "org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint", jvm, dynamic, conf)
    _wait(lambda: overview() is not None, "the JobManager's REST API")
    for index in range(taskmanagers):
        start_taskmanager(index)
    start_pool()
    _wait(lambda: (overview() or {}).get("slots-total", 0) >= taskmanagers * slots, f"{taskmanagers} TaskManagers")
    return overview() or {}


def kill(name: str, sig: int = signal.SIGKILL) -> int | None:
    pid = _alive(name)
    if pid is not None:
        os.killpg(pid, sig)
    return pid


def stop() -> None:
    for pid_file in sorted(CLUSTER.glob("*.pid")) if CLUSTER.is_dir() else ():
        kill(pid_file.stem)
        pid_file.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("start", help="start the cluster (no-op if it runs)")
    up.add_argument("--taskmanagers", type=int, default=1, help="more than one needs a worker pool each (see start_pool)")
    up.add_argument("--slots", type=int, default=2, help="task slots per TaskManager")
    sub.add_parser("status", help="print the REST overview")
    sub.add_parser("stop", help="kill every process of the cluster")
    sub.add_parser("args", help="print the Beam options that run a pipeline here")
    for verb in ("kill-taskmanager", "start-taskmanager"):
        sub.add_parser(verb).add_argument("index", type=int)
    args = parser.parse_args(argv)
    if args.command == "start":
        print(json.dumps(start(args.taskmanagers, args.slots)))
    elif args.command == "status":
        print(json.dumps(overview()))
    elif args.command == "stop":
        stop()
    elif args.command == "args":
        print(" ".join(pipeline_args()))
    elif args.command == "kill-taskmanager":
        print(kill(f"taskmanager-{args.index}"))
    else:
        print(start_taskmanager(args.index))
    return 0


if __name__ == "__main__":
    sys.exit(main())
