# Sourced by .ci/run: fetch Beam's Flink job-server jar from Maven Central with Maven.
# Sets ELSPETH_FLINK_JOB_SERVER_JAR when the jar could be had; prints why not otherwise.
flink_fetch() {
  local beam flink="${ELSPETH_FLINK_VERSION:-1.20}" cache="${ELSPETH_CACHE:-$HOME/.cache/elspeth_beam}/flink"
  beam=$(python -c 'import apache_beam; print(apache_beam.__version__)')
  local artifact="org.apache.beam:beam-runners-flink-${flink}-job-server:${beam}"
  local jar="$cache/beam-runners-flink-${flink}-job-server-${beam}.jar"
  mkdir -p "$cache"
  if [ ! -f "$jar" ]; then
    if ! mvn -q -U dependency:copy -Dartifact="$artifact" -DoutputDirectory="$cache" >"$cache/mvn.log" 2>&1; then
      echo "Flink job server unavailable: mvn dependency:copy -Dartifact=$artifact failed:"
      grep -m1 "Could not\|ERROR" "$cache/mvn.log" | sed 's/\x1b\[[0-9;]*m//g'
      return 0
    fi
  fi
  export ELSPETH_FLINK_JOB_SERVER_JAR="$jar"
  echo "Flink job server: $jar"
}
