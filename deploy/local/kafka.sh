#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft) broker for local development.
# Usage: deploy/local/kafka.sh {start|stop|status}
#
# Broker jars come from Maven Central via Maven (the only reachable source;
# kafka.apache.org tarballs are not), cached under $STATE/kafka/libs.
#
# Version choice (KAFKA_VERSION overrides): tested with aiokafka 0.14.0 doing
# idempotent produce (acks=all), group consume with manual commit, a rebalance
# with 2 consumers and AIOKafkaAdminClient.create_topics:
#   4.4.0 - tried first (newest on Maven Central): all checks pass -> chosen.
#   Older candidates (4.3.1, 4.2.x, 4.1.x, 4.0.x, 3.9.x) were not needed.
# Needs Kafka >= 3.9 (KIP-853 `format --standalone`); 3.9 also logs through
# log4j 1.x/reload4j, not the log4j2 setup below.
set -euo pipefail

KAFKA_VERSION="${KAFKA_VERSION:-4.4.0}"
SCALA_VERSION="${SCALA_VERSION:-2.13}"
# Kafka 4.x logs through slf4j 1.7 -> log4j2; log4j-core comes with kafka-server.
LOG4J_VERSION="${LOG4J_VERSION:-2.25.5}"
KAFKA_PORT="${KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-19093}"
# Fixed id (base64 of "coxswain-local-1"): the cluster is throwaway, no need to
# generate and remember one.
KAFKA_CLUSTER_ID="${KAFKA_CLUSTER_ID:-Y294c3dhaW4tbG9jYWwtMQ}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
# The parallel collector, not G1: on a laptop or a 2-core VM the broker shares the cores with
# every service and the database, and G1's concurrent work and heavier write barriers cost it
# about a tenth more CPU per lead here (docs/benchmarks.md, 5 December). A broker with cores of
# its own keeps Kafka's default (G1).
KAFKA_GC_OPTS="${KAFKA_GC_OPTS:--XX:+UseParallelGC}"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE_DIR="${COXSWAIN_STATE_DIR:-$REPO_ROOT/.local}"
KDIR="$STATE_DIR/kafka"
LIBS="$KDIR/libs"
DATA="$KDIR/data"
PID_FILE="$KDIR/kafka.pid"
LOG_FILE="$KDIR/kafka.log"
CONF="$KDIR/server.properties"

die() { echo "kafka: ERROR: $*" >&2; exit 1; }
log() { echo "kafka: $*"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Alive = pid file points at a live kafka.Kafka JVM (guards against pid reuse).
running() {
  [[ -f $PID_FILE ]] || return 1
  local pid
  pid="$(<"$PID_FILE")"
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null \
    && grep -qa 'kafka.Kafka' "/proc/$pid/cmdline" 2>/dev/null
}

check_tools() {
  command -v java >/dev/null \
    || die "java not found; install Java 17+: apt-get install openjdk-17-jre-headless"
  command -v mvn >/dev/null \
    || die "mvn not found (needed to fetch Kafka jars): apt-get install maven"
  # 'version "17.0.15"' -> 17, 'version "1.8.0_x"' -> 1 (i.e. too old).
  local major
  major="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)"
  [[ ${major:-0} -ge 17 ]] \
    || die "Java ${major:-?} found, Kafka $KAFKA_VERSION needs Java 17+: apt-get install openjdk-17-jre-headless"
}

# Download broker jars once per version; the marker is written only after a
# complete copy, so an interrupted download is retried next time.
fetch_jars() {
  local marker="$LIBS/.complete-$KAFKA_VERSION"
  [[ -f $marker ]] && return 0
  log "fetching Kafka $KAFKA_VERSION jars from Maven Central (first run only)..."
  rm -rf "$LIBS" && mkdir -p "$LIBS"
  cat >"$KDIR/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.coxswain</groupId>
  <artifactId>kafka-broker-libs</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_$SCALA_VERSION</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <!-- slf4j binding so the broker actually logs (to our log file) -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
  # Output goes to a file (Maven prints errors on stdout, plus stray ANSI codes).
  mvn -q -B -f "$KDIR/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$LIBS" >"$KDIR/mvn.log" 2>&1 \
    || { cat "$KDIR/mvn.log" >&2; die "maven could not fetch kafka_$SCALA_VERSION:$KAFKA_VERSION"; }
  echo "$KAFKA_VERSION" >"$marker"
}

write_config() {
  # Rewritten on every start so port overrides take effect; data stays put.
  cat >"$CONF" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DATA
num.partitions=3
# Topics are created by the app; typos must fail loudly, not create topics.
auto.create.topics.enable=false
# One node: internal topics cannot have more than one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests start consumers all the time; don't wait 3s before each first rebalance.
group.initial.rebalance.delay.ms=0
# Consumers here run with a 1.5 s session (COXSWAIN_KAFKA_SESSION_TIMEOUT_MS): a killed consumer's
# partitions are served again within about 2 s instead of 10 (docs/event-path.md).
group.min.session.timeout.ms=1000
log.retention.hours=24
log.segment.bytes=104857600
EOF
  cat >"$KDIR/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
EOF
}

start() {
  if running && port_open "$KAFKA_PORT"; then
    log "already running (pid $(<"$PID_FILE")) on 127.0.0.1:$KAFKA_PORT"
    return 0
  fi
  running && die "pid $(<"$PID_FILE") alive but port $KAFKA_PORT closed; try: $0 stop"
  local p
  for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    port_open "$p" && die "port $p is used by another process"
  done
  check_tools
  mkdir -p "$KDIR"
  fetch_jars
  write_config
  local heap gc java_cmd
  read -ra heap <<<"$KAFKA_HEAP_OPTS"
  read -ra gc <<<"$KAFKA_GC_OPTS"
  java_cmd=(java "${heap[@]}" "${gc[@]}"
    "-Dlog4j2.configurationFile=$KDIR/log4j2.properties"
    -cp "$LIBS/*")
  # Format once; meta.properties marks a formatted log dir.
  if [[ ! -f $DATA/meta.properties ]]; then
    log "formatting storage in $DATA"
    "${java_cmd[@]}" kafka.tools.StorageTool format --standalone \
      -t "$KAFKA_CLUSTER_ID" -c "$CONF" >"$KDIR/format.log" 2>&1 \
      || { cat "$KDIR/format.log" >&2; die "storage format failed"; }
  fi
  # setsid: the broker must outlive the calling shell/terminal. The child
  # writes its own pid, then execs java, so the pid file is the JVM's pid.
  # shellcheck disable=SC2016 # $$ / $@ are meant for the inner shell
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PID_FILE" \
    "${java_cmd[@]}" kafka.Kafka "$CONF" >"$LOG_FILE" 2>&1 </dev/null &
  log "starting (log: $LOG_FILE)..."
  local waited=0
  # Port open is not enough: the listener binds before the broker is fully up.
  until port_open "$KAFKA_PORT" && grep -q 'Kafka Server started' "$LOG_FILE"; do
    if ((waited >= START_TIMEOUT * 5)) || { ((waited > 10)) && ! running; }; then
      # The root cause is usually the first ERROR, far above the log's tail.
      { grep -m 5 -E ' (ERROR|FATAL) ' "$LOG_FILE"; echo ...; tail -n 15 "$LOG_FILE"; } >&2 || true
      die "broker not ready after $((waited / 5))s (see $LOG_FILE)"
    fi
    sleep 0.2
    waited=$((waited + 1))
  done
  log "ready on 127.0.0.1:$KAFKA_PORT (pid $(<"$PID_FILE"), ${KAFKA_VERSION})"
}

stop() {
  if ! running; then
    rm -f "$PID_FILE"
    log "not running"
    return 0
  fi
  local pid i
  pid="$(<"$PID_FILE")"
  kill -TERM "$pid"
  # Controlled shutdown flushes logs; give it time before forcing.
  for ((i = 0; i < STOP_TIMEOUT * 5; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "still alive after ${STOP_TIMEOUT}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PID_FILE"
  log "stopped"
}

status() {
  if running && port_open "$KAFKA_PORT"; then
    log "running (pid $(<"$PID_FILE")) on 127.0.0.1:$KAFKA_PORT"
  else
    log "not running"
    return 1
  fi
}

case "${1:-}" in
  start | stop | status) "$1" ;;
  *) echo "usage: $0 {start|stop|status}" >&2; exit 2 ;;
esac
