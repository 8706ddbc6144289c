#!/usr/bin/env bash
# What the sink thread pays when the workers take every CPU (issue 15, item 5).
#
# On a 2-vCPU instance the default CPU plan (--numThreads 0) puts a worker on each vCPU and
# lets the sink thread float: it then runs only when a worker's CPU lets it. This script
# measures that against the plan with a spare CPU (one worker on CPU 1, the sink thread on
# CPU 0), at the same fixed request rate, for each capture sink:
#
#   shared  --numThreads 0            2 workers pinned to CPUs 0 and 1, sink thread floating
#   spare   --numThreads 1 --cpu-list 1   1 worker on CPU 1, sink thread on spare CPU 0
#
# Load: examples/openloop.rs, 4 KiB `_bulk` POSTs (held until their record is committed) at
# --rate req/s over 64 keep-alive connections, against an nginx origin; the generator, the
# origin and the broker float over both CPUs in both layouts (they are the same work in both).
# Per run it prints the client's p50/p99 (from the scheduled send time), the proxy's
# blockedDuration (how long a POST was held for its record: hand-off, sink, commit, ack;
# mean and bucket upper bound of p50/p99), and from /proc/<pid>/task/<tid>/schedstat of the
# sink thread: CPU time, time spent runnable but waiting for a CPU, and that wait per run.
# Layouts alternate for --reps rounds; the summary gives medians. A benchmark, not a test.
#
# Usage: scripts/load/sink_share.sh [--bin PATH] [--rate R] [--duration S] [--reps N]
#                                   [--sinks file,kafka] [--trace-dir DIR] [--out DIR]
# --trace-dir: where the file sink writes (emptied before each run); default /dev/shm, as
# loadtest.sh's captures (on this VM's disk, writeback added 100+ ms to the client's p99).
# Needs: nginx with the echo module (scripts/loadtest.sh installs it), tansu through
# scripts/kafka-local.sh for the kafka sink, a release build (built here if --bin is not given).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN="" RATE=8000 DURATION=10 WARMUP=2 REPS=3 SINKS=file,kafka OUT="" TRACE_PARENT=/dev/shm
# Ports: far from loadtest.sh's 18000 range so both may be installed side by side.
ORIGIN_PORT=19300 PROXY_PORT=19301 ADMIN_PORT=19302 KAFKA_PORT=19392

die() { echo "sink_share: $*" >&2; exit 1; }
while (($#)); do
  case "$1" in
    --bin) BIN=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --sinks) SINKS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --trace-dir) TRACE_PARENT=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    *) die "unknown option $1" ;;
  esac
done
[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPUs"
cd "$ROOT"
if [ -z "$BIN" ]; then
  cargo build --release --quiet
  BIN=$ROOT/target/release/capture-proxy
fi
cargo build --release --quiet --example openloop
OPENLOOP=$ROOT/target/release/examples/openloop
OUT=${OUT:-$ROOT/target/sink_share/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
RUN=$(mktemp -d /tmp/sink_share.XXXXXX)
TRACE=$(mktemp -d "$TRACE_PARENT/sink_share-trace.XXXXXX")
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  "$ROOT/scripts/kafka-local.sh" stop --port "$KAFKA_PORT" >/dev/null 2>&1 || true
  rm -rf "$RUN" "$TRACE"
}
trap cleanup EXIT

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # PORT PID: until something listens on PORT (fails if PID died or after 20 s)
  local i
  for ((i = 0; i < 400; i++)); do
    port_open "$1" && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

# Origin: the loadtest's nginx configuration, without TLS.
mkdir -p "$RUN/tmp" "$RUN/logs"
: >"$RUN/none.inc"
sed -e "s|@DIR@|$RUN|g" -e "s|@PORT@|$ORIGIN_PORT|g" -e "s|@NOFILE@|4096|g" \
  -e "s|@WORKER_CONNECTIONS@|2048|g" -e "s|@ORIGIN_TLS_INC@|$RUN/none.inc|g" \
  -e "s|@TLS_INC@|$RUN/none.inc|g" -e "s|@LISTEN_SSL@||g" \
  scripts/load/origin.nginx.conf >"$RUN/origin.conf"
nginx -p "$RUN" -e "$RUN/logs/origin.err" -c "$RUN/origin.conf" >"$RUN/logs/origin.out" 2>&1 &
ORIGIN=$!
PIDS+=("$ORIGIN")
wait_port "$ORIGIN_PORT" "$ORIGIN" || die "origin nginx did not start ($(tail -2 "$RUN/logs/origin.err" 2>/dev/null))"

python3 - "$RUN/bulk4k.ndjson" <<'PY'
import sys
line_a = '{"index":{"_index":"logs","_id":"%06d"}}\n'
line_b = '{"ts":"2026-12-07T00:00:00Z","level":"info","msg":"%s"}\n'
out, i = [], 0
while sum(map(len, out)) < 4096 - 120:
    out.append(line_a % i); out.append(line_b % ("x" * 40)); i += 1
open(sys.argv[1], "w").write("".join(out))
PY

if [[ ",$SINKS," == *,kafka,* ]]; then
  scripts/kafka-local.sh start --port "$KAFKA_PORT" --topic sink-share >"$RUN/logs/kafka.log" 2>&1 ||
    die "broker did not start: $(tail -3 "$RUN/logs/kafka.log")"
fi

# schedstat of the sink thread: "run_ns wait_ns timeslices".
sink_schedstat() {
  local t
  for t in /proc/"$1"/task/*; do
    if [ "$(cat "$t/comm" 2>/dev/null)" = cp-sink ]; then cat "$t/schedstat"; return 0; fi
  done
  echo "0 0 0"
}
# metric NAME: the admin endpoint's histogram NAME as "mean_ms p50_le p99_le".
hist() {
  curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | python3 -c '
import sys
name = sys.argv[1] + "_milliseconds"
buckets, total, count = [], 0.0, 0.0
for line in sys.stdin:
    if line.startswith(name + "_bucket{le=\""):
        le = line.split("\"")[1]
        buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
    elif line.startswith(name + "_sum "):
        total = float(line.split()[-1])
    elif line.startswith(name + "_count "):
        count = float(line.split()[-1])
def q(p):
    for le, c in buckets:
        if count and c >= p * count:
            return le
    return float("nan")
print("%.3f %s %s" % (total / count if count else float("nan"), q(0.5), q(0.99)))
' "$1"
}

run_one() { # LAYOUT SINK REP
  local layout=$1 sink=$2 rep=$3 plan=() sinkargs=() pid before after res h
  case "$layout" in
    shared) plan=(--numThreads 0) ;;
    spare) plan=(--numThreads 1 --cpu-list 1) ;;
  esac
  case "$sink" in
    file) rm -rf "$TRACE"; mkdir -p "$TRACE"; sinkargs=(--traceDirectory "$TRACE") ;;
    kafka) sinkargs=(--kafkaConnection "127.0.0.1:$KAFKA_PORT" --kafkaTopic sink-share) ;;
  esac
  "$BIN" --destinationUri "http://127.0.0.1:$ORIGIN_PORT" --listenPort "$PROXY_PORT" \
    --listen-address 127.0.0.1 --admin-listen "127.0.0.1:$ADMIN_PORT" "${plan[@]}" \
    "${sinkargs[@]}" >"$RUN/logs/proxy-$layout-$sink-$rep.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_port "$PROXY_PORT" "$pid" || die "proxy did not start: $(tail -3 "$RUN/logs/proxy-$layout-$sink-$rep.log")"
  until curl -sf "http://127.0.0.1:$ADMIN_PORT/ready" >/dev/null; do
    kill -0 "$pid" 2>/dev/null || die "proxy exited"
    sleep 0.05
  done
  # blockedDuration counts the warm-up's requests too (the client's figures do not); both
  # layouts run the same warm-up.
  read -r -a before < <(sink_schedstat "$pid")
  res=$("$OPENLOOP" --url "http://127.0.0.1:$PROXY_PORT/_bulk" --rate "$RATE" --connections 64 \
    --duration "$DURATION" --warmup "$WARMUP" --body-file "$RUN/bulk4k.ndjson" | grep '^LT_RESULT')
  read -r -a after < <(sink_schedstat "$pid")
  h=$(hist blockedDuration)
  sed -n '/cpu plan/{s/^.*cpu plan/cpu plan/p;q}' "$RUN/logs/proxy-$layout-$sink-$rep.log" >"$OUT/plan-$layout.txt"
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  python3 - "$layout" "$sink" "$rep" "$res" "$h" "${before[*]}" "${after[*]}" <<'PY' | tee -a "$OUT/raw.tsv"
import sys
layout, sink, rep, res, h, b, a = sys.argv[1:8]
kv = dict(x.split("=", 1) for x in res.split()[1:])
b = [int(x) for x in b.split()]; a = [int(x) for x in a.split()]
run_ms = (a[0] - b[0]) / 1e6; wait_ms = (a[1] - b[1]) / 1e6; slices = max(a[2] - b[2], 1)
mean, p50, p99 = h.split()
rps = int(kv["requests"]) / (int(kv["duration_us"]) / 1e6)
errs = sum(int(kv[k]) for k in kv if k.startswith("err_"))
print("\t".join(map(str, [layout, sink, rep, "%.0f" % rps, errs, kv["p50_us"], kv["p99_us"],
    mean, p50, p99, "%.1f" % run_ms, "%.1f" % wait_ms, "%.1f" % (1000 * wait_ms / slices),
    slices])))
PY
}

printf 'layout\tsink\trep\treq_s\terrors\tclient_p50_us\tclient_p99_us\tblocked_mean_ms\tblocked_p50_le_ms\tblocked_p99_le_ms\tsink_cpu_ms\tsink_runqueue_wait_ms\tsink_wait_per_run_us\tsink_runs\n' >"$OUT/raw.tsv"
IFS=, read -r -a sink_list <<<"$SINKS"
for ((r = 1; r <= REPS; r++)); do
  for sink in "${sink_list[@]}"; do
    for layout in shared spare; do
      run_one "$layout" "$sink" "$r"
    done
  done
done

python3 - "$OUT/raw.tsv" "$RATE" "$DURATION" <<'PY' | tee "$OUT/summary.md"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
cols = ["req_s", "errors", "client_p50_us", "client_p99_us", "blocked_mean_ms",
        "blocked_p50_le_ms", "blocked_p99_le_ms", "sink_cpu_ms", "sink_runqueue_wait_ms",
        "sink_wait_per_run_us"]
print("4 KiB _bulk POSTs at %s req/s for %s s, medians of %d rounds\n" % (
    sys.argv[2], sys.argv[3], len({r["rep"] for r in rows})))
print("| sink | layout | " + " | ".join(cols) + " |")
print("|---|---|" + "---:|" * len(cols))
for sink in dict.fromkeys(r["sink"] for r in rows):
    for layout in ("shared", "spare"):
        sel = [r for r in rows if r["sink"] == sink and r["layout"] == layout]
        if sel:
            med = [statistics.median(float(r[c]) for r in sel) for c in cols]
            print("| %s | %s | " % (sink, layout) + " | ".join("%g" % v for v in med) + " |")
PY
echo "raw: $OUT/raw.tsv"
