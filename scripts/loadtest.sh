#!/usr/bin/env bash
# Load test of capture-proxy against direct, nginx and HAProxy, on 127.0.0.1 only.
#
# Follows /work/shared/bench/README.md: an nginx origin (own config, own port) and the load
# generator (wrk; examples/openloop.rs for the fixed-rate small-half) pinned to CPU 0, the proxy
# under test pinned to CPU 1 with one worker; targets rotated each repetition; medians and
# min…max; proxy CPU-µs per request from /proc/PID/stat; foreign CPU checked before and during
# every run; zero-loss checked with `capture-proxy inspect`.
# Everything it starts is stopped at exit. Writes the Markdown table to stdout and to
# target/loadtest/results-<date>.md (raw per-run records next to it), and draws req/s and the
# added p50/p99 as results-<date>.{rps,latency}.png beside it (scripts/load/plot.py; needs
# python3-matplotlib, skipped with a note without it). --publish DIR also copies the run into DIR
# as latest.* (scripts/load/publish.sh; docs/loadtest is what the README shows).
# Scenarios (see --help): closed-loop keep-alive GETs and POSTs, new connection per request, idle
# connections, TLS from the client (tls), a fixed rate at half of nginx's peak (small-half, open
# loop paced to the µs by examples/openloop.rs) and a 50 ms slower Kafka broker (kafka-slow: GET
# and POST; the delay comes from examples/delay_relay.rs).
#
# Usage: scripts/loadtest.sh [--reps N] [--duration S] [--scenarios a,b] [--targets a,b] ...
#        scripts/loadtest.sh --help
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOAD="$ROOT/scripts/load"

# ---------------------------------------------------------------- defaults (all flags override)
REPS=3                 # ≥ 3 repetitions (bench README)
DURATION=""            # measured seconds for every scenario; empty = per-scenario default below
MAIN_DURATION=10       # small GET keep-alive: 10 s measured (bench README)
MAIN_WARMUP=2          # … after 2 s of warm-up
SHORT_DURATION=4       # other scenarios: 4 s measured keeps the default run near 15 minutes
SHORT_WARMUP=1         # … after 1 s of warm-up
WARMUP=""              # warm-up seconds for every scenario; empty = per-scenario default
CONNS=64               # active connections, one wrk thread
SCENARIOS="small,small-half,large,bulk4k,bulk1m,close,idle,tls,kafka-slow"
TARGETS="direct,nginx,haproxy,cp-nocapture,cp-file,cp-kafka"
IDLE_CONNS=10000       # idle connections in the `idle` scenario (capped by the fd limit, see below)
KAFKA_DELAY_MS=50      # extra broker round-trip time in `kafka-slow`
KAFKA_PARTITIONS=3     # partitions per capture topic (scripts/kafka-local.sh's default)
PACE_FRACTION=0.5      # small-half: paced at this fraction of nginx's peak small-GET rate (issue 6:
                       # "at half of nginx's peak rate, added p50 <= 100 us with capture on")
FOREIGN_LIMIT=0.10     # discard runs where foreign processes used more than 10 % of a core
IDLE_WAIT_MAX=30       # seconds to wait for an idle machine before a run, then run anyway (noted)
RETRIES=1              # re-runs of a run whose foreign CPU exceeded the limit
WAIT_BUDGET=240        # seconds, whole run: waiting for idle + re-runs stop once this is spent, so
                       # a machine that stays busy cannot stretch the run without bound
WRK_TIMEOUT=5s         # wrk per-request timeout (1 MiB POSTs through a proxy take ~100 ms at c=64)
PROXY_STOP_TIMEOUT=60  # seconds for capture-proxy to drain and exit after SIGTERM
BIN="${CAPTURE_PROXY_BIN:-}"
BUILD=0
LABEL=""               # free text describing the binary (e.g. the commit it was built from)
KEEP=0
OUT_DIR="$ROOT/target/loadtest"
PUBLISH=""             # --publish DIR: copy the run there as latest.* (scripts/load/publish.sh)
TRACE_BASE=""          # --trace-dir DIR: where cp-file writes its trace files; empty = the run
                       # directory in /tmp, on the machine's disk as a capture directory would be

usage() {
  cat <<EOF
Usage: scripts/loadtest.sh [options]

Load test on 127.0.0.1: wrk (small-half: openloop) → {origin | nginx | HAProxy | capture-proxy}
→ nginx origin.
Load generator, origin (and Kafka broker) on CPU 0; proxy under test on CPU 1, one worker.

Options:
  --reps N              repetitions, target order rotated each one [default: $REPS]
  --duration S          measured seconds for every scenario [default: $MAIN_DURATION for
                        small, $SHORT_DURATION for the others]
  --warmup S            warm-up seconds before each measured run [default: $MAIN_WARMUP for small,
                        $SHORT_WARMUP for the others]
  --connections N       active connections (one wrk thread) [default: $CONNS]
  --scenarios LIST      comma-separated, from: small small-half large bulk4k bulk1m close idle
                        tls kafka-slow (small-half always runs right after small)
                        [default: ${SCENARIOS//,/, }]
  --targets LIST        comma-separated, from: direct nginx haproxy cp-nocapture cp-file cp-kafka
                        [default: ${TARGETS//,/, }]
                        (kafka-slow always runs direct, cp-kafka and cp-kafka-slow when cp-kafka
                        is selected; small-half measures nginx itself when small did not)
  --idle-connections N  idle connections for the idle scenario [default: $IDLE_CONNS]
  --kafka-delay-ms MS   extra broker round trip in kafka-slow [default: $KAFKA_DELAY_MS]
  --kafka-partitions N  partitions of the capture topics [default: $KAFKA_PARTITIONS]
  --pace-fraction F     small-half's rate as a fraction of nginx's peak small rate [default: $PACE_FRACTION]
  --foreign-limit F     max foreign CPU in cores during a kept run [default: $FOREIGN_LIMIT]
  --idle-wait S         max seconds to wait for an idle machine before each run [default: $IDLE_WAIT_MAX]
  --retries N           re-runs of a run with too much foreign CPU [default: $RETRIES]
  --wait-budget S       total seconds spent waiting for idle and re-running noisy runs; once
                        spent, runs start after one 1 s sample and noisy runs are kept (flagged)
                        [default: $WAIT_BUDGET]
  --bin PATH            capture-proxy binary [default: \$CAPTURE_PROXY_BIN, else
                        \${CARGO_TARGET_DIR:-target}/release/capture-proxy, built if missing]
  --label TEXT          describe the binary in the report (e.g. "built from commit abc123")
  --build               run 'cargo build --release --bin capture-proxy' first
  --out DIR             where results-<date>.md goes [default: target/loadtest]; the pictures
                        results-<date>.rps.png and .latency.png go beside it
  --publish DIR         at the end, also write the run to DIR as latest.{md,rps.png,latency.png,
                        raw.tsv,meta} (scripts/load/publish.sh; the README shows docs/loadtest)
  --trace-dir DIR       where cp-file writes its trace files (a fresh subdirectory per run)
                        [default: the run directory under /tmp: the disk's file system, as in
                        production; /dev/shm puts them on tmpfs]
  --keep                keep the run directory (configs, logs, captures) at exit
  -h, --help            this help

Scenarios:
  small      GET /small (~200 B JSON), keep-alive
  small-half GET /small, keep-alive, at a fixed rate: --pace-fraction × nginx's peak small rate
             (median of nginx's small runs of this run; when small is not run, one closed-loop
             nginx run, reported as nginx-peak, measures it first). Open loop: examples/openloop.rs
             (built here) sends request i at t0 + i/rate to the µs on --connections keep-alive
             connections; latency counts from the scheduled time. Reports added p50/p99 over
             direct.
  large      GET /large.json (64 KiB), keep-alive
  bulk4k     POST /_bulk with a 4 KiB body, keep-alive
  bulk1m     POST /_bulk with a 1 MiB body, keep-alive
  close      GET /small with 'Connection: close': a new connection per request
  idle       GET /small, keep-alive, while N idle connections are held open (RSS per connection)
  tls        GET /small, keep-alive, over TLS from wrk to the target: capture-proxy with
             --sslCertChainFile/--sslKeyFile, nginx 'listen ... ssl', HAProxy 'bind ... ssl crt',
             all with one self-signed ECDSA P-256 certificate made per run; direct = the origin
             nginx terminating TLS itself (on CPU 0, next to wrk). Needs the openssl CLI.
  kafka-slow GET /small, then POST 4 KiB /_bulk, against the same proxy instance; cp-kafka-slow
             reaches the broker through examples/delay_relay.rs (built here), which adds
             --kafka-delay-ms to every broker round trip (tc netem is not available here). GETs
             are not held for the broker, POSTs are.
EOF
}

while (($#)); do
  case "$1" in
    --reps) REPS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --scenarios) SCENARIOS=$2; shift 2 ;;
    --targets) TARGETS=$2; shift 2 ;;
    --idle-connections) IDLE_CONNS=$2; shift 2 ;;
    --kafka-delay-ms) KAFKA_DELAY_MS=$2; shift 2 ;;
    --kafka-partitions) KAFKA_PARTITIONS=$2; shift 2 ;;
    --pace-fraction) PACE_FRACTION=$2; shift 2 ;;
    --foreign-limit) FOREIGN_LIMIT=$2; shift 2 ;;
    --idle-wait) IDLE_WAIT_MAX=$2; shift 2 ;;
    --retries) RETRIES=$2; shift 2 ;;
    --wait-budget) WAIT_BUDGET=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    --label) LABEL=$2; shift 2 ;;
    --build) BUILD=1; shift ;;
    --out) OUT_DIR=$2; shift 2 ;;
    --publish) PUBLISH=$2; shift 2 ;;
    --trace-dir) TRACE_BASE=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "loadtest: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

log() { printf '[loadtest %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for s in ${SCENARIOS//,/ }; do
  case "$s" in small | small-half | large | bulk4k | bulk1m | close | idle | tls | kafka-slow) ;; *) die "unknown scenario $s" ;; esac
done
for t in ${TARGETS//,/ }; do
  case "$t" in direct | nginx | haproxy | cp-nocapture | cp-file | cp-kafka) ;; *) die "unknown target $t" ;; esac
done
[[ "$KAFKA_PARTITIONS" =~ ^[1-9][0-9]*$ ]] || die "--kafka-partitions needs a number above 0, got '$KAFKA_PARTITIONS'"

# ---------------------------------------------------------------- dependencies and binary
bash "$ROOT/scripts/install-deps.sh" wrk nginx libnginx-mod-http-echo haproxy hey python3-matplotlib >&2 ||
  die "installing dependencies failed"
for tool in wrk nginx haproxy taskset python3; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
WANT_TLS=0
[[ ",$SCENARIOS," == *,tls,* ]] && WANT_TLS=1
((WANT_TLS)) && { command -v openssl >/dev/null || die "openssl not found (needed by the tls scenario)"; }
awk -v f="$PACE_FRACTION" 'BEGIN {exit !(f > 0 && f <= 1)}' || die "--pace-fraction must be in (0, 1]"
# Publishing is for the pictures: find out before the run, not after it.
if [ -n "$PUBLISH" ]; then python3 "$LOAD/plot.py" --check || die "--publish needs the pictures (matplotlib)"; fi
[ -f /usr/lib/nginx/modules/ngx_http_echo_module.so ] || die "nginx echo module missing (libnginx-mod-http-echo)"
TANSU=$(command -v tansu || echo "$HOME/.cargo/bin/tansu")

if [ -z "$BIN" ]; then
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/capture-proxy"
fi
if ((BUILD)) || [ ! -x "$BIN" ]; then
  log "building capture-proxy (release) into ${CARGO_TARGET_DIR:-$ROOT/target}"
  (cd "$ROOT" && cargo build --release --bin capture-proxy >&2) || die "build failed"
fi
[ -x "$BIN" ] || die "capture-proxy binary not found: $BIN"

# Our own measuring tools (cargo examples): openloop paces small-half, delay_relay slows the
# broker in kafka-slow. Built when their scenario is selected (a no-op when up to date).
EXAMPLES_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples"
OPENLOOP="$EXAMPLES_DIR/openloop"
DELAY_RELAY="$EXAMPLES_DIR/delay_relay"
EXAMPLES=()
[[ ",$SCENARIOS," == *,small-half,* ]] && EXAMPLES+=(--example openloop)
[[ ",$SCENARIOS," == *,kafka-slow,* ]] && EXAMPLES+=(--example delay_relay)
if ((${#EXAMPLES[@]})); then
  log "building ${EXAMPLES[*]} (release) into ${CARGO_TARGET_DIR:-$ROOT/target}"
  (cd "$ROOT" && cargo build --release "${EXAMPLES[@]}" >&2) || die "building ${EXAMPLES[*]} failed"
fi

NPROC=$(nproc)
if ((NPROC >= 2)); then
  PIN_LOAD=(taskset -c 0)
  PIN_PROXY=(taskset -c 1)
  CP_CPUS=(--cpu-list 1)
else
  log "only one CPU: no pinning"
  PIN_LOAD=()
  PIN_PROXY=()
  CP_CPUS=()
fi

# ---------------------------------------------------------------- run directory, cleanup
DATE=$(date +%Y-%m-%d-%H%M%S)
RUN_DIR=$(mktemp -d /tmp/loadtest.XXXXXX)
CAP_BASE=${TRACE_BASE:-$RUN_DIR}
[ -d "$CAP_BASE" ] && [ -w "$CAP_BASE" ] || die "--trace-dir $CAP_BASE: not a writable directory"
CAP_DIR=$(mktemp -d "$CAP_BASE/loadtest-capture.XXXXXX")
CAP_FS=$(findmnt -n -o FSTYPE -T "$CAP_DIR" 2>/dev/null || stat -f -c %T "$CAP_DIR" 2>/dev/null || echo unknown)
mkdir -p "$OUT_DIR" "$RUN_DIR/tmp" "$RUN_DIR/www" "$RUN_DIR/logs"
# nginx workers run as an unprivileged user (nobody) and must read www/ and the temp dirs.
chmod 755 "$RUN_DIR" "$RUN_DIR/www"
RAW="$OUT_DIR/results-$DATE.raw.tsv"
META="$OUT_DIR/results-$DATE.meta"  # with RAW, lets scripts/load/report.py redo the report
: >"$RAW"
: >"$META"

# Every process this script started, as "pid:starttime" (starttime from /proc/PID/stat tells a
# process from a later one that got the same pid): stopped at exit, counted as "ours" CPU.
STARTED=()
proc_start() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=${s##*) }; awk '{print $20}' <<<"$s"; }
track() { local st; st=$(proc_start "$1") && STARTED+=("$1:$st"); }
untrack() {
  local e keep=()
  for e in "${STARTED[@]}"; do [ "${e%%:*}" = "$1" ] || keep+=("$e"); done
  STARTED=("${keep[@]}")
}
alive_ours() { [ "$(proc_start "${1%%:*}" 2>/dev/null)" = "${1#*:}" ]; }

kill_pid() { # kill_pid PID [SIGNAL] [TIMEOUT_S]: signal, wait, then SIGKILL
  local pid=$1 sig=${2:-TERM} t=${3:-5} i
  local e rc=1
  for e in "${STARTED[@]}"; do [ "${e%%:*}" = "$pid" ] && alive_ours "$e" && rc=0; done
  if ((rc != 0)); then untrack "$pid"; return 0; fi  # gone already (or not ours)
  kill "-$sig" "$pid" 2>/dev/null
  for ((i = 0; i < t * 10; i++)); do
    if ! kill -0 "$pid" 2>/dev/null || [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ]; then
      wait "$pid" 2>/dev/null; untrack "$pid"; return 0
    fi
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  untrack "$pid"
  return 1
}

cleanup() {
  local pid
  if ((${KAFKA_LOCAL_USED:-0})); then "$KAFKA_LOCAL" stop --port "$KAFKA_PORT" >/dev/null 2>&1; fi
  local e
  for e in "${STARTED[@]}"; do
    alive_ours "$e" && kill_pid "${e%%:*}" TERM 5
  done
  rm -rf "$CAP_DIR"
  if ((KEEP)); then
    log "run directory kept: $RUN_DIR"
  else
    rm -rf "$RUN_DIR"
  fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------- ports (127.0.0.1 only)
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_base_port() {
  local base p ok
  for base in $(seq 18000 20 18980); do
    ok=1
    for ((p = base; p < base + 10; p++)); do port_free "$p" || { ok=0; break; }; done
    ((ok)) && { echo "$base"; return 0; }
  done
  return 1
}
BASE=$(pick_base_port) || die "no free port range found in 18000-18999"
ORIGIN_PORT=$BASE
NGINX_PORT=$((BASE + 1))
HAPROXY_PORT=$((BASE + 2))
CP_PORT=$((BASE + 3))
KAFKA_PORT=$((BASE + 4))
RELAY_PORT=$((BASE + 5))
ORIGIN_TLS_PORT=$((BASE + 6))  # the origin's own TLS listener (direct in the tls scenario)

wait_port() { # wait_port PORT TIMEOUT_S [PID]: until something listens (or PID died)
  local port=$1 t=$2 pid=${3:-} i
  for ((i = 0; i < t * 20; i++)); do
    port_free "$port" || return 0
    [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null && return 1
    sleep 0.05
  done
  return 1
}

# ---------------------------------------------------------------- /proc readers
cpu_ticks() { # utime+stime of PID (whole process, all threads), in clock ticks
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  s=${s##*) }
  # fields after ") ": 1=state … 12=utime 13=stime
  awk '{print $12 + $13}' <<<"$s"
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
busy_ticks() { # machine-wide ticks spent in user+nice+system (irq, softirq, steal excluded)
  awk '/^cpu / {print $2 + $3 + $4}' /proc/stat
}
HZ=$(getconf CLK_TCK)
now_s() { date +%s.%N; }
ours_ticks() { # CPU ticks of everything this script started and their children
  local e pid c total=0
  for e in "${STARTED[@]}"; do
    alive_ours "$e" || continue
    pid=${e%%:*}
    total=$((total + $(cpu_ticks "$pid")))
    for c in $(pgrep -P "$pid" 2>/dev/null); do total=$((total + $(cpu_ticks "$c"))); done
  done
  echo "$total"
}

# Waits until processes not started here use less than FOREIGN_LIMIT of a core (1 s samples),
# at most IDLE_WAIT_MAX seconds and only while WAIT_BUDGET lasts. Sets WAIT_RESULT (the last
# foreign share, in cores).
WAIT_RESULT=0
wait_idle() {
  local start b0 o0 b1 o1 f
  start=$SECONDS
  while :; do
    b0=$(busy_ticks); o0=$(ours_ticks)
    sleep 1
    b1=$(busy_ticks); o1=$(ours_ticks)
    f=$(awk -v b=$((b1 - b0)) -v o=$((o1 - o0)) -v hz="$HZ" 'BEGIN {v = (b - o) / hz; if (v < 0) v = 0; printf "%.3f", v}')
    awk -v f="$f" -v l="$FOREIGN_LIMIT" 'BEGIN {exit !(f < l)}' && break
    if ((SECONDS - start >= IDLE_WAIT_MAX || WAIT_BUDGET <= SECONDS - start)); then
      log "machine not idle (foreign ${f} cores) after $((SECONDS - start)) s; running anyway"
      break
    fi
  done
  # the first second is the sample every run takes; only the waiting beyond it is spent
  WAIT_BUDGET=$((WAIT_BUDGET - (SECONDS - start - 1)))
  ((WAIT_BUDGET < 0)) && WAIT_BUDGET=0
  WAIT_RESULT=$f
}

# ---------------------------------------------------------------- payloads and origin
python3 - "$RUN_DIR" <<'EOF'
import json, sys
d = sys.argv[1]

def fill_items(size, make_item, reserve):
    """Items while they fit in `size` minus `reserve`; returns them and the bytes left."""
    parts, n, i = [], 0, 0
    while True:
        item = make_item(i)
        if n + len(item) + reserve > size:
            return parts, size - n
        parts.append(item)
        n += len(item)
        i += 1

# /large.json: a 64 KiB search response, exactly 65 536 bytes.
head = '{"took":5,"timed_out":false,"hits":{"total":{"value":0},"hits":['
tail = ']}}\n'
hit = lambda i: json.dumps({"_index": "logs", "_id": str(i), "_score": 1.0, "_source": {
    "message": "GET /index.html HTTP/1.1 200 " + "x" * 40, "n": i}}) + ","
parts, left = fill_items(65536 - len(head) - len(tail), hit, 200)
last = '{"_index":"logs","_id":"pad","_source":{"m":""}}'
last = last.replace('"m":""', '"m":"' + "p" * (left - len(last)) + '"')
with open(f"{d}/www/large.json", "w") as f:
    f.write(head + "".join(parts) + last + tail)

# _bulk bodies (ndjson), exactly 4 KiB and 1 MiB.
action = '{"index":{"_index":"logs"}}\n'
pair = lambda i: action + (
    '{"@timestamp":"2026-11-25T12:00:00Z","message":"request %d from client","status":200}\n' % i)
for name, size in (("bulk4k", 4096), ("bulk1m", 1048576)):
    parts, left = fill_items(size, pair, 200)
    fill = left - len(action) - len('{"m":""}\n')
    with open(f"{d}/{name}.ndjson", "w") as f:
        f.write("".join(parts) + action + '{"m":"' + "y" * fill + '"}\n')
EOF
[ "$(stat -c %s "$RUN_DIR/www/large.json")" -eq 65536 ] || log "note: large.json is $(stat -c %s "$RUN_DIR/www/large.json") bytes"

FD_LIMIT=$(ulimit -n)
# nginx/haproxy/origin need a connection slot per client and per upstream socket; stay under
# the per-process fd limit (hard limit here: 20 000).
NOFILE=$((FD_LIMIT - 100))
WORKER_CONNECTIONS=$((FD_LIMIT - 500))
HAPROXY_MAXCONN=$(((FD_LIMIT - 500) / 2))

# ---------------------------------------------------------------- TLS material (tls scenario)
# One self-signed ECDSA P-256 certificate per run, used by every TLS listener (origin, nginx,
# HAProxy, capture-proxy) so that all terminate TLS with the same key type and size. The nginx
# snippets are included by the configs; without the tls scenario they are empty.
TLS_DIR="$RUN_DIR/tls"
mkdir -p "$TLS_DIR"
: >"$TLS_DIR/none.inc"
: >"$TLS_DIR/origin.inc"
if ((WANT_TLS)); then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/cert.pem" >"$RUN_DIR/logs/openssl.log" 2>&1 ||
    { cat "$RUN_DIR/logs/openssl.log" >&2; die "generating the TLS certificate failed"; }
  cat "$TLS_DIR/cert.pem" "$TLS_DIR/key.pem" >"$TLS_DIR/haproxy.pem"  # HAProxy: one PEM, cert + key
  cat >"$TLS_DIR/nginx.inc" <<EOF
ssl_certificate $TLS_DIR/cert.pem;
ssl_certificate_key $TLS_DIR/key.pem;
ssl_protocols TLSv1.2 TLSv1.3;
EOF
  { echo "listen 127.0.0.1:$ORIGIN_TLS_PORT ssl backlog=4096;"; cat "$TLS_DIR/nginx.inc"; } >"$TLS_DIR/origin.inc"
fi

# render TEMPLATE PORT OUT [tls]: substitute @KEY@ placeholders; with "tls", the proxy's client
# listener speaks TLS (nginx: listen ... ssl + the certificate snippet; HAProxy: bind ... ssl crt).
render() {
  local listen_ssl="" tls_inc="$TLS_DIR/none.inc" bind_ssl=""
  if [ "${4:-}" = tls ]; then
    listen_ssl=ssl; tls_inc="$TLS_DIR/nginx.inc"; bind_ssl="ssl crt $TLS_DIR/haproxy.pem"
  fi
  sed -e "s|@DIR@|$RUN_DIR|g" -e "s|@PORT@|$2|g" -e "s|@ORIGIN_PORT@|$ORIGIN_PORT|g" \
    -e "s|@NOFILE@|$NOFILE|g" -e "s|@WORKER_CONNECTIONS@|$WORKER_CONNECTIONS|g" \
    -e "s|@MAXCONN@|$HAPROXY_MAXCONN|g" -e "s|@LISTEN_SSL@|$listen_ssl|g" \
    -e "s|@TLS_INC@|$tls_inc|g" -e "s|@ORIGIN_TLS_INC@|$TLS_DIR/origin.inc|g" \
    -e "s|@BIND_SSL@|$bind_ssl|g" "$1" >"$3"
}

render "$LOAD/origin.nginx.conf" "$ORIGIN_PORT" "$RUN_DIR/origin.conf"
"${PIN_LOAD[@]}" nginx -p "$RUN_DIR" -e "$RUN_DIR/logs/origin-startup.log" -c "$RUN_DIR/origin.conf" \
  >"$RUN_DIR/logs/origin.out" 2>&1 &
ORIGIN_MASTER=$!
track "$ORIGIN_MASTER"
wait_port "$ORIGIN_PORT" 10 "$ORIGIN_MASTER" || { cat "$RUN_DIR/logs/origin.out" >&2; die "origin nginx did not start"; }
sleep 0.2
ORIGIN_WORKER=$(pgrep -P "$ORIGIN_MASTER" | head -1)
[ -n "$ORIGIN_WORKER" ] || die "origin worker not found"
for path in /small /large.json; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ORIGIN_PORT$path")
  [ "$code" = 200 ] || die "origin $path answered $code"
done
code=$(curl -s -o /dev/null -w '%{http_code}' --data-binary "@$RUN_DIR/bulk1m.ndjson" \
  -H 'Content-Type: application/x-ndjson' "http://127.0.0.1:$ORIGIN_PORT/_bulk")
[ "$code" = 200 ] || die "origin /_bulk answered $code"
if ((WANT_TLS)); then
  code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$TLS_DIR/cert.pem" "https://127.0.0.1:$ORIGIN_TLS_PORT/small")
  [ "$code" = 200 ] || die "origin https /small answered $code"
fi
log "origin nginx on 127.0.0.1:$ORIGIN_PORT (worker pid $ORIGIN_WORKER), run dir $RUN_DIR"

# ---------------------------------------------------------------- targets
# start_target NAME RUNID: sets T_PORT, T_PID (process to measure), T_STOP (pids to stop),
# T_SINK (none|file|kafka), T_TRACE, T_TOPIC, T_KAFKA (bootstrap for inspect), T_LOG.
KAFKA_PIDS=()
KAFKA_LOCAL="$ROOT/scripts/kafka-local.sh"
KAFKA_LOCAL_USED=0
# start_kafka DELAYED(0|1) TOPIC: a fresh in-memory tansu on CPU 0 (plus, when DELAYED, the delay
# relay in front of it). The plain broker comes from scripts/kafka-local.sh when it exists; the
# delayed one is started here because it must advertise the relay's port. Sets T_KAFKA.
start_kafka() {
  local delayed=$1 topic=$2 adv=$KAFKA_PORT pid i
  KAFKA_PIDS=()
  if ((!delayed)) && [ -x "$KAFKA_LOCAL" ]; then
    KAFKA_LOCAL_USED=1
    "${PIN_LOAD[@]}" "$KAFKA_LOCAL" start --port "$KAFKA_PORT" --topic "$topic" --partitions "$KAFKA_PARTITIONS" \
      >"$RUN_DIR/logs/tansu-$topic.log" 2>&1 || { tail -5 "$RUN_DIR/logs/tansu-$topic.log" >&2; return 1; }
    pid=$(cat "${XDG_RUNTIME_DIR:-/tmp}/capture-proxy-kafka/tansu-$KAFKA_PORT.pid" 2>/dev/null)
    [ -n "$pid" ] && { track "$pid"; KAFKA_PIDS+=("local:$pid"); }
    T_KAFKA="127.0.0.1:$KAFKA_PORT"
    return 0
  fi
  ((delayed)) && adv=$RELAY_PORT
  "${PIN_LOAD[@]}" "$TANSU" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$adv" --storage-engine memory://tansu/ \
    --cluster-id capture-proxy-local >"$RUN_DIR/logs/tansu-$topic.log" 2>&1 &
  pid=$!
  track "$pid"; KAFKA_PIDS+=("$pid")
  wait_port "$KAFKA_PORT" 20 "$pid" || { tail -5 "$RUN_DIR/logs/tansu-$topic.log" >&2; return 1; }
  if ((delayed)); then
    "${PIN_LOAD[@]}" "$DELAY_RELAY" --listen-port "$RELAY_PORT" \
      --upstream-port "$KAFKA_PORT" --delay-ms "$KAFKA_DELAY_MS" >"$RUN_DIR/logs/relay-$topic.log" 2>&1 &
    pid=$!
    track "$pid"; KAFKA_PIDS+=("$pid")
    wait_port "$RELAY_PORT" 10 "$pid" || return 1
  fi
  for ((i = 0; i < 20; i++)); do
    timeout 10 "$TANSU" topic create "$topic" --broker "tcp://127.0.0.1:$KAFKA_PORT" \
      --partitions "$KAFKA_PARTITIONS" >>"$RUN_DIR/logs/tansu-$topic.log" 2>&1 && break
    sleep 0.2
  done
  ((i < 20)) || { log "creating topic $topic failed"; return 1; }
  T_KAFKA="127.0.0.1:$adv"
}
stop_kafka() {
  local pid
  for pid in "${KAFKA_PIDS[@]}"; do
    case "$pid" in
      local:*) "$KAFKA_LOCAL" stop --port "$KAFKA_PORT" >/dev/null 2>&1; kill_pid "${pid#local:}" TERM 5 ;;
      *) kill_pid "$pid" TERM 5 ;;
    esac
  done
  KAFKA_PIDS=()
}

# With T_TLS=1 (set by the caller) the client side speaks TLS: T_SCHEME is then https.
T_TLS=0
start_target() {
  local name=$1 runid=$2 pid sink=() tls_arg="" tls=()
  T_PORT=""; T_PID=""; T_STOP=(); T_SINK=none; T_TRACE=""; T_TOPIC=""; T_KAFKA=""; T_SCHEME=http
  T_LOG="$RUN_DIR/logs/$runid.log"
  if ((T_TLS)); then
    T_SCHEME=https; tls_arg=tls
    tls=(--sslCertChainFile "$TLS_DIR/cert.pem" --sslKeyFile "$TLS_DIR/key.pem")
  fi
  case "$name" in
    direct)
      T_PORT=$ORIGIN_PORT; ((T_TLS)) && T_PORT=$ORIGIN_TLS_PORT
      T_PID=$ORIGIN_WORKER; return 0 ;;
    nginx)
      render "$LOAD/proxy.nginx.conf" "$NGINX_PORT" "$RUN_DIR/nginx-proxy.conf" $tls_arg
      "${PIN_PROXY[@]}" nginx -p "$RUN_DIR" -e "$T_LOG" -c "$RUN_DIR/nginx-proxy.conf" >>"$T_LOG" 2>&1 &
      pid=$!; track "$pid"; T_STOP=("$pid")
      wait_port "$NGINX_PORT" 10 "$pid" || return 1
      sleep 0.1
      T_PID=$(pgrep -P "$pid" | head -1); T_PORT=$NGINX_PORT
      [ -n "$T_PID" ] || return 1 ;;
    haproxy)
      render "$LOAD/haproxy.cfg" "$HAPROXY_PORT" "$RUN_DIR/haproxy.cfg" $tls_arg
      "${PIN_PROXY[@]}" haproxy -db -f "$RUN_DIR/haproxy.cfg" >>"$T_LOG" 2>&1 &
      pid=$!; track "$pid"; T_STOP=("$pid")
      wait_port "$HAPROXY_PORT" 10 "$pid" || return 1
      T_PID=$pid; T_PORT=$HAPROXY_PORT ;;
    cp-nocapture | cp-file | cp-kafka | cp-kafka-slow)
      case "$name" in
        cp-nocapture) sink=(--noCapture) ;;
        cp-file)
          T_SINK=file; T_TRACE="$CAP_DIR/$runid"; mkdir -p "$T_TRACE"
          sink=(--traceDirectory "$T_TRACE") ;;
        cp-kafka | cp-kafka-slow)
          T_SINK=kafka; T_TOPIC="lt-${runid//[^a-zA-Z0-9-]/-}"
          start_kafka "$([ "$name" = cp-kafka-slow ] && echo 1 || echo 0)" "$T_TOPIC" || return 1
          sink=(--kafkaConnection "$T_KAFKA" --kafkaTopic "$T_TOPIC") ;;
      esac
      "${PIN_PROXY[@]}" "$BIN" --destinationUri "http://127.0.0.1:$ORIGIN_PORT" \
        --listenPort "$CP_PORT" --listen-address 127.0.0.1 --admin-listen off \
        --numThreads 1 "${CP_CPUS[@]}" "${sink[@]}" "${tls[@]}" >>"$T_LOG" 2>&1 &
      pid=$!; track "$pid"; T_STOP=("$pid")
      wait_port "$CP_PORT" 20 "$pid" || return 1
      T_PID=$pid; T_PORT=$CP_PORT ;;
  esac
  return 0
}

# stop_target: SIGTERM and wait (capture-proxy drains and flushes its sink first).
stop_target() {
  local pid rc=0
  for pid in "${T_STOP[@]}"; do
    kill_pid "$pid" TERM "$PROXY_STOP_TIMEOUT" || rc=1
  done
  return $rc
}

# inspect_capture: sets CAP_REQUESTS, CAP_OK (ok|problems|n/a), CAP_DETAIL.
inspect_capture() {
  local out args=()
  CAP_REQUESTS=""; CAP_OK="n/a"; CAP_DETAIL=""
  case "$T_SINK" in
    file) args=(--traceDirectory "$T_TRACE") ;;
    kafka) args=(--kafkaConnection "$T_KAFKA" --kafkaTopic "$T_TOPIC") ;;
    *) return 0 ;;
  esac
  out=$(timeout 300 "$BIN" inspect "${args[@]}" --summary --json 2>>"$T_LOG.inspect")
  CAP_DETAIL=$(python3 -c '
import json, sys
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"):
        continue
    try:
        d = json.loads(line)
    except ValueError:
        continue
    if d.get("type") == "summary":
        print(d.get("requests", ""), "ok" if d.get("ok") else "problems",
              "records=%s conns=%s incomplete=%s errors=%s warnings=%s" % (
                  d.get("records"), d.get("connections"), d.get("incompleteConnections"),
                  d.get("errors"), d.get("warnings")))
        break
' <<<"$out")
  if [ -z "$CAP_DETAIL" ]; then
    CAP_OK="n/a"
    CAP_DETAIL="capture-proxy inspect gave no summary: $(grep -v '^\s*$' "$T_LOG.inspect" 2>/dev/null | tail -1 | tr '\t' ' ')"
    return 0
  fi
  read -r CAP_REQUESTS CAP_OK CAP_DETAIL <<<"$CAP_DETAIL"
}

# settle_idle PID PORT N: until PID holds ≥ N fds, the accept queue of PORT is empty and the fd
# count has not changed for 3 samples (0.1 s apart); at most IDLE_SETTLE_MAX seconds.
IDLE_SETTLE_MAX=120
settle_idle() {
  local pid=$1 port=$2 n=$3 i fds q prev=-1 stable=0
  for ((i = 0; i < IDLE_SETTLE_MAX * 10; i++)); do
    fds=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
    q=$(ss -Hltn "sport = :$port" 2>/dev/null | awk '{print $2; exit}')
    if ((fds >= n && ${q:-0} == 0 && fds == prev)); then stable=$((stable + 1)); else stable=0; fi
    ((stable >= 3)) && return 0
    prev=$fds
    sleep 0.1
  done
  return 1
}

# ---------------------------------------------------------------- one run
# load_run OUT DURATION_S URL [NAME=VALUE...]: the load generator, CONNS connections, on CPU 0.
# GEN=wrk: wrk, one thread, closed loop, running scripts/load/wrk.lua with NAME=VALUE in its
# environment (LT_BODY_FILE, LT_CONN_CLOSE). GEN=openloop: examples/openloop.rs, open loop at
# LT_RATE requests/s (LT_BODY_FILE: POST that file). Prints nothing; OUT gets the generator's
# output (one LT_RESULT line), OUT.times the CPU the generator process used.
GEN=wrk
load_run() {
  local out=$1 dur=$2 url=$3 kv
  shift 3
  (
    if [ "$GEN" = openloop ]; then
      local args=()
      for kv in "$@"; do
        case "$kv" in
          LT_RATE=*) args+=(--rate "${kv#*=}") ;;
          LT_BODY_FILE=*) args+=(--body-file "${kv#*=}") ;;
          *) log "load_run: openloop ignores $kv" ;;
        esac
      done
      "${PIN_LOAD[@]}" "$OPENLOOP" --url "$url" --connections "$CONNS" --duration "$dur" \
        --timeout "${WRK_TIMEOUT%s}" "${args[@]}" >"$out" 2>&1
    else
      env "$@" "${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d"${dur}s" --timeout "$WRK_TIMEOUT" --latency \
        -s "$LOAD/wrk.lua" "$url" >"$out" 2>&1
    fi
    times >"$out.times"
  )
}
lt_field() { sed -n 's/.*LT_RESULT.* '"$2"'=\([0-9]*\).*/\1/p' "$1" | head -1; }
children_ticks() { # seconds in the second line of `times` output → ticks
  awk -v hz="$HZ" 'NR == 2 {
    split($1, u, /[ms]/); split($2, s, /[ms]/)
    printf "%d", (u[1] * 60 + u[2] + s[1] * 60 + s[2]) * hz }' "$1"
}

record() { # record key=value ...: one tab-separated line per run into RAW
  local IFS=$'\t'
  printf '%s\n' "$*" >>"$RAW"
}

# tls_probe: protocol and cipher suite the target negotiates with an OpenSSL client (one extra
# connection without a request). Sets TLS_NEGOTIATED ("TLSv1.3 TLS_AES_256_GCM_SHA384").
tls_probe() {
  local out
  out=$(timeout 5 openssl s_client -connect "127.0.0.1:$T_PORT" -brief </dev/null 2>&1)
  TLS_NEGOTIATED="$(sed -n 's/^Protocol version: *//p' <<<"$out" | head -1) $(sed -n 's/^Ciphersuite: *//p' <<<"$out" | head -1)"
  TLS_NEGOTIATED=${TLS_NEGOTIATED# }
  [ -n "${TLS_NEGOTIATED// /}" ] || TLS_NEGOTIATED="unknown"
}

# measure_phase TAG PATH [env...]: a warm-up then the measured window against the started target
# (T_*), durations RUN_WARM / RUN_DUR. Sets PH_OK (0: no result), PH_FIELDS (record
# fields), PH_CLIENT (requests the client completed, warm-up included), PH_NOISY, PH_LINE (log).
measure_phase() {
  local tag=$1 path=$2
  shift 2
  local url="$T_SCHEME://127.0.0.1:$T_PORT$path" f="$RUN_DIR/logs/$tag.wrk"
  PH_OK=0; PH_FIELDS=(); PH_CLIENT=0; PH_NOISY=0; PH_LINE=""
  # warm-up (its requests count for the zero-loss check), then the measured window
  load_run "$RUN_DIR/logs/$tag.warm" "$RUN_WARM" "$url" "$@"
  local warm_req c0 b0 o0 t0 c1 b1 o1 t1
  warm_req=$(lt_field "$RUN_DIR/logs/$tag.warm" requests)
  c0=$(cpu_ticks "$T_PID"); b0=$(busy_ticks); o0=$(ours_ticks); t0=$(now_s)
  load_run "$f" "$RUN_DUR" "$url" "$@"
  c1=$(cpu_ticks "$T_PID"); b1=$(busy_ticks); o1=$(ours_ticks); t1=$(now_s)
  local rss wrk_ticks
  rss=$(rss_kib "$T_PID")
  wrk_ticks=$(children_ticks "$f.times")

  local req p50 p99 dur_us rps cpu_us foreign
  req=$(lt_field "$f" requests); dur_us=$(lt_field "$f" duration_us)
  p50=$(lt_field "$f" p50_us); p99=$(lt_field "$f" p99_us)
  PH_CLIENT=$(( ${warm_req:-0} + ${req:-0} ))
  if [ -z "$req" ] || [ -z "$dur_us" ]; then
    log "$tag: $GEN produced no result:"; tail -5 "$f" >&2
    return 0
  fi
  rps=$(awk -v r="$req" -v d="$dur_us" 'BEGIN {printf "%.1f", r / (d / 1e6)}')
  cpu_us=$(awk -v c=$((c1 - c0)) -v hz="$HZ" -v r="$req" 'BEGIN {if (r > 0) printf "%.2f", c / hz * 1e6 / r; else print "na"}')
  # foreign = machine busy (user+nice+system) − our processes − wrk, in cores over the window
  foreign=$(awk -v b=$((b1 - b0)) -v o=$((o1 - o0)) -v w="$wrk_ticks" -v hz="$HZ" -v t0="$t0" -v t1="$t1" \
    'BEGIN {v = (b - o - w) / hz / (t1 - t0); if (v < 0) v = 0; printf "%.3f", v}')
  awk -v f="$foreign" -v l="$FOREIGN_LIMIT" 'BEGIN {exit !(f > l)}' && PH_NOISY=1
  local e_c e_r e_w e_s e_t
  e_c=$(lt_field "$f" err_connect); e_r=$(lt_field "$f" err_read); e_w=$(lt_field "$f" err_write)
  e_s=$(lt_field "$f" err_status); e_t=$(lt_field "$f" err_timeout)
  PH_OK=1
  PH_FIELDS=(noisy="$PH_NOISY" warm_req="${warm_req:-0}" req="$req" dur_us="$dur_us" rps="$rps"
    p50_us="$p50" p99_us="$p99" err_connect="$e_c" err_read="$e_r" err_write="$e_w"
    err_status="$e_s" err_timeout="$e_t" cpu_ticks=$((c1 - c0)) cpu_us_per_req="$cpu_us"
    rss_kib="$rss" foreign_cores="$foreign")
  if [ "$GEN" = openloop ]; then
    PH_FIELDS+=(paced_rate="$(lt_field "$f" rate)" paced_late="$(lt_field "$f" late)"
      lag_p50_us="$(lt_field "$f" lag_p50_us)" lag_p99_us="$(lt_field "$f" lag_p99_us)"
      svc_p50_us="$(lt_field "$f" svc_p50_us)" svc_p99_us="$(lt_field "$f" svc_p99_us)")
  fi
  PH_LINE=$(printf '%9s req/s p50 %6s µs p99 %7s µs cpu %6s µs/req rss %6s KiB foreign %s' \
    "$rps" "$p50" "$p99" "$cpu_us" "$rss" "$foreign")
}

# run_one SCENARIO REP TARGET ATTEMPT: one target start, one or more measured phases (kafka-slow:
# GET /small then POST /_bulk 4 KiB, on the same proxy instance), one record per phase; the
# zero-loss check covers all phases. Returns 3 if a phase was noisy (the whole run is repeated).
run_one() {
  local scn=$1 rep=$2 tgt=$3 attempt=$4
  local runid="$scn-r$rep-$tgt-a$attempt"
  local wait_foreign idle_n=0 idle_alive="" rss_before="" rss_idle="" holder=""
  # phases: "KIND PATH [ENV...]" (KIND "-" = the scenario has a single phase)
  local phases=()
  GEN=wrk; T_TLS=0; TLS_NEGOTIATED=""
  case "$scn" in
    small | idle | nginx-peak) phases=("- /small") ;;
    small-half) phases=("- /small LT_RATE=$PACED_RATE"); GEN=openloop ;;
    tls) phases=("- /small"); T_TLS=1 ;;
    large) phases=("- /large.json") ;;
    bulk4k) phases=("- /_bulk LT_BODY_FILE=$RUN_DIR/bulk4k.ndjson") ;;
    bulk1m) phases=("- /_bulk LT_BODY_FILE=$RUN_DIR/bulk1m.ndjson") ;;
    close) phases=("- /small LT_CONN_CLOSE=1") ;;
    kafka-slow) phases=("GET /small" "POST /_bulk LT_BODY_FILE=$RUN_DIR/bulk4k.ndjson") ;;
  esac
  if [ "$scn" = small ]; then RUN_DUR=$MAIN_DURATION; RUN_WARM=$MAIN_WARMUP; else RUN_DUR=$SHORT_DURATION; RUN_WARM=$SHORT_WARMUP; fi
  [ -n "$DURATION" ] && RUN_DUR=$DURATION
  [ -n "$WARMUP" ] && RUN_WARM=$WARMUP

  wait_idle
  wait_foreign=$WAIT_RESULT
  if ! start_target "$tgt" "$runid"; then
    log "$runid: target did not start; log tail:"; tail -5 "$T_LOG" >&2 2>/dev/null
    stop_target; stop_kafka
    record scenario="$scn" rep="$rep" target="$tgt" attempt="$attempt" kept=1 status=failed \
      reason="target did not start"
    return 0
  fi
  ((T_TLS)) && tls_probe

  if [ "$scn" = idle ]; then
    rss_before=$(rss_kib "$T_PID")
    rm -f "$RUN_DIR/idle.ready"
    "${PIN_LOAD[@]}" python3 "$LOAD/idle_holder.py" --port "$T_PORT" --count "$IDLE_EFFECTIVE" \
      --ready-file "$RUN_DIR/idle.ready" >"$RUN_DIR/logs/$runid.idle" 2>&1 &
    holder=$!; track "$holder"
    local i
    for ((i = 0; i < 1200; i++)); do
      [ -f "$RUN_DIR/idle.ready" ] && break
      kill -0 "$holder" 2>/dev/null || break
      sleep 0.1
    done
    idle_n=$(awk '{print $2}' "$RUN_DIR/idle.ready" 2>/dev/null || echo 0)
    [ "${idle_n:-0}" -lt "$IDLE_EFFECTIVE" ] &&
      log "$runid: only ${idle_n:-0} of $IDLE_EFFECTIVE idle connections opened: $(cat "$RUN_DIR/idle.ready" 2>/dev/null)"
    # The kernel completes handshakes before the proxy accepts: wait until the proxy really
    # holds them (its accept queue empty, its socket count stable), else wrk's connections
    # queue behind thousands of pending accepts.
    local t_settle=$SECONDS
    settle_idle "$T_PID" "$T_PORT" "${idle_n:-0}" ||
      log "$runid: proxy did not settle with ${idle_n:-0} idle connections within ${IDLE_SETTLE_MAX}s"
    log "$runid: ${idle_n:-0} idle connections opened; proxy settled after $((SECONDS - t_settle)) s"
    rss_idle=$(rss_kib "$T_PID")
  fi

  local ph kind path env_args recs=() kinds=() lines=() client=0 noisy=0 failed="" IFS_SAVE=$IFS
  for ph in "${phases[@]}"; do
    read -r kind path env_args <<<"$ph"
    local tag=$runid
    [ "$kind" != - ] && tag="$runid-$kind"
    # shellcheck disable=SC2086  # env_args: space-separated NAME=VALUE words (no spaces inside)
    measure_phase "$tag" "$path" $env_args
    client=$((client + PH_CLIENT))
    if ((!PH_OK)); then failed=$kind; break; fi
    ((PH_NOISY)) && noisy=1
    IFS=$'\t'; recs+=("${PH_FIELDS[*]}"); IFS=$IFS_SAVE
    kinds+=("$kind"); lines+=("$PH_LINE")
  done

  if [ -n "$holder" ]; then
    kill_pid "$holder" TERM 30
    idle_alive=$(sed -n 's/.*IDLE_RESULT opened=[0-9]* alive=\([0-9]*\).*/\1/p' "$RUN_DIR/logs/$runid.idle")
  fi
  if [ -n "$failed" ]; then
    stop_target; stop_kafka
    [ -n "$T_TRACE" ] && rm -rf "$T_TRACE"
    record scenario="$scn" rep="$rep" target="$tgt" attempt="$attempt" kept=1 status=failed \
      kind="${failed#-}" reason="$GEN produced no result"
    return 0
  fi

  # stop (graceful: drains and flushes the capture), then check the capture
  local stop_ok=1 zl="n/a"
  stop_target || { stop_ok=0; log "$runid: proxy did not exit within ${PROXY_STOP_TIMEOUT}s of SIGTERM"; }
  inspect_capture
  if [ "$T_SINK" != none ]; then
    local inflight=$((2 * CONNS * ${#phases[@]}))  # at most CONNS unanswered per generator run
    if [ -z "$CAP_REQUESTS" ]; then
      zl="n/a"
    elif [ "$CAP_OK" != ok ]; then
      zl="inspect: $CAP_DETAIL"
    elif ((CAP_REQUESTS < client)); then
      zl="LOSS −$((client - CAP_REQUESTS))"
    elif ((CAP_REQUESTS > client + inflight)); then
      zl="EXTRA +$((CAP_REQUESTS - client))"
    elif ((CAP_REQUESTS == client)); then
      zl="ok"
    else
      zl="ok +$((CAP_REQUESTS - client))"
    fi
    ((stop_ok)) || zl="$zl (no clean exit)"
  fi
  stop_kafka
  [ -n "$T_TRACE" ] && rm -rf "$T_TRACE"

  local kept=1 k
  ((noisy && attempt <= RETRIES && WAIT_BUDGET > 0)) && kept=0
  for k in "${!recs[@]}"; do
    record scenario="$scn" rep="$rep" target="$tgt" attempt="$attempt" kept="$kept" status=ok \
      kind="${kinds[$k]#-}" "${recs[$k]}" rss_before_kib="$rss_before" rss_idle_kib="$rss_idle" \
      idle_n="$idle_n" idle_alive="$idle_alive" tls="$TLS_NEGOTIATED" cap_requests="$CAP_REQUESTS" \
      cap_ok="$CAP_OK" cap_detail="$CAP_DETAIL" zero_loss="$zl" wait_foreign_cores="$wait_foreign"
    log "$(printf '%-10s rep %s %-13s%s %s%s zero-loss: %s' "$scn" "$rep" "$tgt" \
      "$([ "${kinds[$k]}" != - ] && echo " ${kinds[$k]}")" "${lines[$k]}" \
      "$([ $kept = 0 ] && echo ' (noisy: repeat)')" "$zl")"
  done
  ((kept == 0)) && return 3
  return 0
}

# ---------------------------------------------------------------- plan and run
# Idle scenario: capture-proxy opens its destination connection when it accepts, so it holds two
# sockets per idle client connection; keep 2 × (idle + active) + headroom under the fd limit.
IDLE_EFFECTIVE=$IDLE_CONNS
idle_cap=$(((FD_LIMIT - 2 * CONNS - 400) / 2))
if ((IDLE_EFFECTIVE > idle_cap)); then
  IDLE_EFFECTIVE=$idle_cap
  [[ ",$SCENARIOS," == *,idle,* ]] && echo "skip.idle=idle: $IDLE_CONNS idle connections asked, $IDLE_EFFECTIVE held: capture-proxy opens a destination socket per accepted connection (2 fds each) and the per-process open-files hard limit is $FD_LIMIT." >>"$META"
fi

targets_for() { # targets_for SCENARIO → the target list of that scenario
  case "$1" in
    kafka-slow) if [[ ",$TARGETS," == *,cp-kafka,* ]]; then echo "direct cp-kafka cp-kafka-slow"; fi ;;
    nginx-peak) echo nginx ;;
    *) echo "${TARGETS//,/ }" ;;
  esac
}

# small-half needs nginx's peak from small: when both are asked for, small-half runs right after
# small whatever their order in --scenarios.
ordered_scenarios() {
  local s out=() has_small=0 has_half=0
  for s in ${SCENARIOS//,/ }; do
    [ "$s" = small ] && has_small=1
    [ "$s" = small-half ] && has_half=1
  done
  for s in ${SCENARIOS//,/ }; do
    [ "$s" = small-half ] && ((has_small)) && continue
    out+=("$s")
    [ "$s" = small ] && ((has_half)) && out+=(small-half)
  done
  echo "${out[*]}"
}

median_rps() { # median_rps SCENARIO TARGET: median req/s of its kept, successful runs so far
  awk -F'\t' -v s="$1" -v t="$2" '{
      split("", r)
      for (i = 1; i <= NF; i++) { p = index($i, "="); r[substr($i, 1, p - 1)] = substr($i, p + 1) }
      if (r["scenario"] == s && r["target"] == t && r["kept"] == 1 && r["status"] == "ok" && r["rps"] != "") print r["rps"]
    }' "$RAW" | sort -g |
    awk '{v[NR] = $1} END {if (NR) printf "%.0f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}

run_scenario() { # run_scenario SCENARIO TARGET...: REPS repetitions, target order rotated
  local scn=$1 rep n k tgt attempt t_run
  shift
  local tlist=("$@")
  n=${#tlist[@]}
  for ((rep = 1; rep <= REPS; rep++)); do
    for ((k = 0; k < n; k++)); do
      tgt=${tlist[$(((k + rep - 1) % n))]}
      for ((attempt = 1; attempt <= RETRIES + 1; attempt++)); do
        t_run=$SECONDS
        run_one "$scn" "$rep" "$tgt" "$attempt"
        [ $? -eq 3 ] || break
        WAIT_BUDGET=$((WAIT_BUDGET - (SECONDS - t_run)))  # the discarded run was waiting too
        ((WAIT_BUDGET < 0)) && WAIT_BUDGET=0
      done
    done
  done
}

# set_paced_rate: PACED_RATE = PACE_FRACTION × nginx's median small req/s of this run; without
# small runs of nginx, one closed-loop nginx run (scenario nginx-peak) measures it first.
# Returns 1 when no rate could be measured.
PACED_RATE=""
set_paced_rate() {
  local peak source
  peak=$(median_rps small nginx)
  source="the median of nginx's small runs above"
  if [ -z "$peak" ]; then
    log "small-half: no small run of nginx in this run; measuring nginx's peak first (nginx-peak)"
    local reps_saved=$REPS
    REPS=1
    run_scenario nginx-peak nginx
    REPS=$reps_saved
    peak=$(median_rps nginx-peak nginx)
    source="one closed-loop nginx run, section nginx-peak, as small was not run"
  fi
  [ -n "$peak" ] && ((peak > 0)) || return 1
  PACED_RATE=$(awk -v p="$peak" -v f="$PACE_FRACTION" 'BEGIN {r = int(p * f); if (r < 1) r = 1; print r}')
  {
    echo "paced_rate=$PACED_RATE"
    echo "paced_peak=$peak"
    echo "desc.small-half=GET /small, keep-alive, c=$CONNS, open loop at $PACED_RATE req/s (examples/openloop.rs) = $PACE_FRACTION × nginx's peak small-GET rate, $peak req/s: $source"
  } >>"$META"
  log "small-half: nginx peak $peak req/s ($source) → paced at $PACED_RATE req/s"
}

# vm_memory: whether this VM hands freed memory back to its host (virtio-balloon free page
# reporting). Where it does, a page the guest takes from free memory that was handed back costs a
# host fault on first touch: writing new tmpfs pages ran at ~350 MB/s instead of 2-2.6 GB/s on
# the test VM (README, Performance), which is what any capture that grows the page cache pays.
vm_memory() {
  local pr=/sys/module/page_reporting/parameters r
  r=$(cat "$pr/reported_kib" 2>/dev/null)  # KiB handed back so far
  if [ -z "$r" ]; then
    echo "vm_memory=this kernel hands no freed memory back to a host (no free page reporting)"
  else
    echo "vm_memory=virtio-balloon free page reporting is on: freed guest memory (blocks of order $(cat "$pr/page_reporting_order" 2>/dev/null)) is handed back to the host, $((r / 1048576)) GiB so far; the host faults such a page in again when the guest next touches it"
  fi
}

START_TIME=0  # $SECONDS counts from the script start
vm_memory >>"$META"
{
  echo "date=$DATE"
  echo "label=$LABEL"
  echo "commit=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)"
  echo "nproc=$NPROC"
  echo "cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "kernel=$(uname -sr)"
  echo "memory=$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
  echo "fd_limit=$(ulimit -Sn)/$(ulimit -Hn)"
  echo "versions=$(wrk -v 2>&1 | head -1 | awk '{print "wrk " $2}'), $(nginx -v 2>&1 | sed 's/.*version: //'), HAProxy $(haproxy -v | head -1 | awk '{print $3}'), $("$TANSU" --version 2>/dev/null || echo tansu)"
  echo "git=$("$BIN" --version 2>&1 | head -1), binary $BIN (built $(date -r "$BIN" '+%Y-%m-%d %H:%M'))${LABEL:+, $LABEL}; $ROOT at commit $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)$(cd "$ROOT" && git diff --quiet HEAD -- src 2>/dev/null || echo ' with uncommitted src changes')"
  echo "settings=reps $REPS, wrk -t1 -c$CONNS (small-half: openloop --connections $CONNS), small: ${DURATION:-$MAIN_DURATION} s measured after ${WARMUP:-$MAIN_WARMUP} s warm-up, other scenarios: ${DURATION:-$SHORT_DURATION} s after ${WARMUP:-$SHORT_WARMUP} s; foreign-CPU limit $FOREIGN_LIMIT core, $RETRIES retry, wait budget $WAIT_BUDGET s"
  echo "layout=load generator (wrk; openloop in small-half), nginx origin (1 worker), tansu broker and the delay relay (examples/delay_relay.rs) on CPU 0; proxy under test on CPU 1 (nginx 1 worker, HAProxy nbthread 1, capture-proxy --numThreads 1 --cpu-list 1 with its producer thread also on CPU 1); trace files on $CAP_BASE ($CAP_FS); Kafka = tansu with memory:// storage, fresh per run (scripts/kafka-local.sh when present), topics of $KAFKA_PARTITIONS partitions"
  echo "foreign_limit=$FOREIGN_LIMIT"
  echo "desc.small=GET /small (~200 B), keep-alive, c=$CONNS"
  echo "desc.large=GET /large.json (64 KiB), keep-alive, c=$CONNS"
  echo "desc.bulk4k=POST /_bulk 4 KiB body, keep-alive, c=$CONNS"
  echo "desc.bulk1m=POST /_bulk 1 MiB body, keep-alive, c=$CONNS"
  echo "desc.close=GET /small, new connection per request (Connection: close), c=$CONNS"
  echo "desc.idle=GET /small, keep-alive, c=$CONNS, with $IDLE_EFFECTIVE idle connections held open"
  echo "desc.tls=GET /small (~200 B), keep-alive, c=$CONNS, TLS between wrk and the target (self-signed ECDSA P-256 certificate, the same for every target)"
  echo "desc.nginx-peak=GET /small, keep-alive, c=$CONNS, closed loop, nginx only: its median req/s sets small-half's rate"
  echo "desc.kafka-slow=GET /small, then POST /_bulk 4 KiB, c=$CONNS, against the same proxy instance; cp-kafka-slow's broker answers ${KAFKA_DELAY_MS} ms later"
  echo "pace_fraction=$PACE_FRACTION"
  echo "note.close=wrk sends 'Connection: close'; the origin (direct) or the proxy closes after each response and wrk reconnects. nginx and HAProxy keep their upstream connections; capture-proxy opens one destination connection per client connection. For direct, the origin accepts every connection on CPU 0 next to wrk, so direct can be slower than a proxy here (×direct > 1)."
  echo "note.kafka-slow=tc netem is not available in this kernel (no sch_netem/prio), so the delay comes from a relay between capture-proxy and tansu (examples/delay_relay.rs: native, thread per direction, blocking sockets, on CPU 0) that forwards every broker→proxy byte ${KAFKA_DELAY_MS} ms after reading it (chunks scheduled by deadline, not serialised; a round trip grows by ${KAFKA_DELAY_MS} ms + ≈0.6 ms of wake-ups on the test VM). capture-proxy holds the last bytes of a captured mutating request (POST) until its record is acknowledged, so POSTs see the broker round trip; GETs are not held and should not."
  echo "note.tls=Client-side TLS only (the proxies reach the origin over plain HTTP). nginx 'listen ... ssl' (ssl_protocols TLSv1.2 TLSv1.3), HAProxy 'bind ... ssl crt', capture-proxy --sslCertChainFile/--sslKeyFile (rustls), one self-signed ECDSA P-256 certificate made per run with openssl; 'negotiated' below is what an OpenSSL client (openssl s_client, as wrk uses) agreed with each target. direct = the origin nginx terminating TLS itself on CPU 0, next to wrk (its TLS work competes with wrk's), so ×direct and +p50/+p99 compare a proxy terminating TLS on its own CPU against an origin doing it on the load generator's CPU. wrk's measured window opens $CONNS new connections, so $CONNS handshakes fall inside it."
  echo "note.small-half=Open loop with examples/openloop.rs (one thread, epoll, a timerfd armed at absolute CLOCK_MONOTONIC times, no busy spinning): request i is due at t0 + i/rate and goes out on the keep-alive connection free longest; latency counts from the scheduled time to the end of the response (coordinated-omission corrected), so the generator's own wake-up lag (lag_p50_us/lag_p99_us in the raw records, tens of µs, the same for every target) is inside every latency and cancels in +p50/+p99. A request due when all $CONNS connections are busy waits in a FIFO and is counted as late. req/s is the rate achieved (responses ÷ the measured window, extended to the last response). CPU µs/req at this rate is higher than in the closed-loop small scenario (one request per wake-up)."
} >>"$META"

SCENARIO_ORDER=$(ordered_scenarios)
log "targets: $TARGETS; scenarios: ${SCENARIO_ORDER// /,}; reps: $REPS; ports from $BASE; capture on $CAP_BASE"
for scn in $SCENARIO_ORDER; do
  read -r -a tlist <<<"$(targets_for "$scn")"
  if ((${#tlist[@]} == 0)); then
    echo "skip.$scn=$scn skipped: needs target cp-kafka" >>"$META"
    continue
  fi
  if [ "$scn" = small-half ] && ! set_paced_rate; then
    echo "skip.$scn=$scn skipped: nginx's peak small-GET rate could not be measured" >>"$META"
    continue
  fi
  run_scenario "$scn" "${tlist[@]}"
done

echo "elapsed=$(((SECONDS - START_TIME) / 60)) min $(((SECONDS - START_TIME) % 60)) s; wait budget left $WAIT_BUDGET s" >>"$META"
REPORT="$OUT_DIR/results-$DATE.md"
# The pictures first, so that the report can embed them; the report is written either way.
CHARTS=()
python3 "$LOAD/plot.py" --raw "$RAW" --meta "$META" --out-prefix "$OUT_DIR/results-$DATE"
case $? in
  0) CHARTS=("results-$DATE.rps.png" "results-$DATE.latency.png") ;;
  3) ;;  # matplotlib missing: plot.py said so and how to install it, in one line
  *) log "ERROR: drawing the pictures failed (above); the report is written without them" ;;
esac
python3 "$LOAD/report.py" --raw "$RAW" --meta "$META" --charts "${CHARTS[@]}" >"$REPORT" || die "report failed"
cat "$REPORT"
log "report: $REPORT (raw records: $RAW; redo with: python3 scripts/load/report.py --raw $RAW --meta $META)"
if [ -n "$PUBLISH" ]; then
  bash "$LOAD/publish.sh" "$OUT_DIR/results-$DATE" "$PUBLISH" || die "publishing to $PUBLISH failed"
fi
