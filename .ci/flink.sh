# Sourced by .ci/run: build the Flink job-server jar (flink/jobserver, every dependency from Maven
# Central) once per version of its sources, and start a standalone Flink cluster with a Beam
# worker pool (tools/flink_cluster.py; Flink itself from PyPI). Exports what tests/test_flink.py reads.
flink_up() {
  local cache="${ELSPETH_CACHE:-$HOME/.cache/elspeth_beam}/flink" key jar
  key=$(cat flink/jobserver/pom.xml $(find flink/jobserver/src/main -type f | sort) | sha256sum | cut -c1-16)
  jar="$cache/elspeth-flink-job-server-$key.jar"
  mkdir -p "$cache"
  if [ ! -f "$jar" ]; then
    echo "building the Flink job server (flink/jobserver) with Maven"
    if ! mvn -q -B -f flink/jobserver/pom.xml package >"$cache/mvn.log" 2>&1; then
      tail -40 "$cache/mvn.log"
      return 1
    fi
    cp flink/jobserver/target/elspeth-flink-job-server.jar "$jar.partial" && mv "$jar.partial" "$jar"
  fi
  export ELSPETH_FLINK_JOB_SERVER_JAR="$jar"
  python tools/flink_cluster.py start --taskmanagers 1 --slots 2
}
flink_down() {
  python tools/flink_cluster.py stop || true
}
