#!/usr/bin/env bash
# A local Kafka-compatible broker for the end-to-end tests and demos: tansu (Rust, Apache
# Kafka wire protocol) with in-memory storage, listening and advertised on 127.0.0.1 only.
#
# Usage: scripts/kafka-local.sh start|stop|status [--port N] [--topic NAME]...
#
#   start   installs tansu if absent (cargo install, cached in ~/.cargo/bin), starts the broker
#           in the background, waits until it answers Kafka requests, creates the topics
#           (tansu does not auto-create topics on produce: the default `logging-traffic-topic`
#           plus every --topic) and prints the bootstrap address (127.0.0.1:PORT) on stdout,
#           so `BOOT=$(scripts/kafka-local.sh start)` works. Already running: prints it again.
#   stop    stops the broker started by `start` on that port (SIGTERM, then SIGKILL).
#   status  prints whether it runs; exit 0 when it does, 1 when it does not.
#
# State (pid file and log) lives in ${XDG_RUNTIME_DIR:-/tmp}/capture-proxy-kafka/, one pair
# per port. Everything is in memory: stopping the broker discards every topic.
set -euo pipefail

# tansu release the project is tested with (pinned so CI does not change under us).
TANSU_VERSION=0.6.0
# Default Kafka port.
DEFAULT_PORT=9092
# Most seconds `start` waits for the broker to accept connections and answer a metadata
# request: tansu is ready in milliseconds; 30 s leaves room for a loaded CI machine.
READY_TIMEOUT_S=30
# Most seconds one metadata probe (`tansu topic list`) may take: a refused connection makes
# it retry for about 28 s, so it only runs once the port accepts, and is bounded anyway.
PROBE_TIMEOUT_S=10
# Most seconds `stop` waits after SIGTERM before SIGKILL (tansu exits at once on SIGTERM).
STOP_TIMEOUT_S=10
# Partitions of the topics created here (tansu's default; exercises key partitioning).
PARTITIONS=3
# The proxy's default --kafkaTopic, created on start so a plain demo run captures.
DEFAULT_TOPIC=logging-traffic-topic

die() {
    echo "kafka-local: $*" >&2
    exit 1
}
say() { echo "kafka-local: $*" >&2; }

usage() {
    echo "usage: $0 start|stop|status [--port N] [--topic NAME]..." >&2
    exit 2
}

cmd=${1:-}
[ -n "$cmd" ] || usage
shift
port=$DEFAULT_PORT
topics=("$DEFAULT_TOPIC")
while [ $# -gt 0 ]; do
    case "$1" in
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
        *) usage ;;
    esac
done
case "$port" in
    '' | *[!0-9]*) die "--port needs a number, got '$port'" ;;
esac
[ "$port" -ge 1 ] && [ "$port" -le 65535 ] || die "--port out of range: $port"

state_dir="${XDG_RUNTIME_DIR:-/tmp}/capture-proxy-kafka"
pid_file="$state_dir/tansu-$port.pid"
log_file="$state_dir/tansu-$port.log"
bootstrap="127.0.0.1:$port"
broker_url="tcp://127.0.0.1:$port"
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"

find_tansu() {
    if [ -x "$cargo_bin/tansu" ]; then
        echo "$cargo_bin/tansu"
    elif command -v tansu >/dev/null 2>&1; then
        command -v tansu
    else
        return 1
    fi
}

ensure_tansu() {
    if tansu=$(find_tansu); then
        return 0
    fi
    say "installing tansu $TANSU_VERSION (cargo install, once; cached in $cargo_bin)"
    cargo install tansu --version "$TANSU_VERSION" --locked --no-default-features \
        --features dynostore >&2
    tansu=$(find_tansu) || die "tansu not found after cargo install"
}

# The pid of our running broker on this port, or nothing (stale pid files are removed).
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
    # Alive and still tansu (not a recycled pid).
    if alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = tansu ]; then
        echo "$pid"
        return 0
    fi
    rm -f "$pid_file"
    return 1
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
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null
}

# True when the broker answers a Kafka metadata request.
metadata_ok() {
    timeout "$PROBE_TIMEOUT_S" "$tansu" topic list --broker "$broker_url" >/dev/null 2>&1
}

create_topics() {
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

start() {
    ensure_tansu
    mkdir -p "$state_dir"
    local pid
    if pid=$(running_pid); then
        say "already running (pid $pid) on $bootstrap"
        create_topics
        echo "$bootstrap"
        return 0
    fi
    if port_open; then
        die "port $port is already in use by another process"
    fi
    # Flags override tansu's environment variables (LISTENER_URL, STORAGE_ENGINE, ...).
    nohup "$tansu" broker \
        --listener-url "$broker_url" \
        --advertised-listener-url "$broker_url" \
        --storage-engine memory://tansu/ \
        --cluster-id capture-proxy-local \
        >"$log_file" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$pid_file"
    local t0=$SECONDS
    while :; do
        if ! alive "$pid"; then
            rm -f "$pid_file"
            cat "$log_file" >&2 || true
            die "tansu exited during start-up (log: $log_file)"
        fi
        if port_open && metadata_ok; then
            break
        fi
        if [ $((SECONDS - t0)) -ge "$READY_TIMEOUT_S" ]; then
            kill "$pid" 2>/dev/null || true
            rm -f "$pid_file"
            cat "$log_file" >&2 || true
            die "broker not ready after ${READY_TIMEOUT_S}s (log: $log_file)"
        fi
        sleep 0.2
    done
    create_topics
    say "tansu $("$tansu" --version | awk '{print $2}') running (pid $pid, in-memory) on $bootstrap; log $log_file"
    echo "$bootstrap"
}

stop() {
    local pid
    if ! pid=$(running_pid); then
        say "not running on port $port"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    local t0=$SECONDS
    while alive "$pid"; do
        if [ $((SECONDS - t0)) -ge "$STOP_TIMEOUT_S" ]; then
            say "pid $pid ignored SIGTERM for ${STOP_TIMEOUT_S}s; SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
    rm -f "$pid_file"
    say "stopped (pid $pid) on port $port"
}

status() {
    local pid
    if pid=$(running_pid); then
        say "running (pid $pid) on $bootstrap; log $log_file"
        echo "$bootstrap"
        return 0
    fi
    say "not running on port $port"
    return 1
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) usage ;;
esac
