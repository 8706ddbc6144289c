#!/usr/bin/env bash
# Starts a small origin, the proxy in front of it with capture to a trace directory, sends a
# few requests (GETs, a POST, a chunked PUT, pipelined GETs), stops the proxy (SIGTERM: every
# connection's final record is written) and prints the decoded capture.
# Usage: scripts/demo.sh [trace-dir]   (default: a temporary directory)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh curl
cargo build --release --bin capture-proxy --example demo_origin
trace_dir="${1:-$(mktemp -d)}"
mkdir -p "$trace_dir"
log="$(mktemp)"
origin_port=19200
proxy_port=19201
target/release/examples/demo_origin "127.0.0.1:$origin_port" 2>/dev/null &
origin_pid=$!
target/release/capture-proxy --destinationUri "http://127.0.0.1:$origin_port" \
  --listenPort "$proxy_port" --listen-address 127.0.0.1 --admin-listen 127.0.0.1:0 \
  --traceDirectory "$trace_dir" 2>"$log" &
proxy_pid=$!
trap 'kill $origin_pid 2>/dev/null || true; kill $proxy_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  grep -q "listening" "$log" 2>/dev/null && break
  sleep 0.05
done
base="http://127.0.0.1:$proxy_port"
echo "== requests through the proxy"
curl -s "$base/" "$base/_cluster/health"
curl -s -XPOST "$base/logs/_doc" -H 'content-type: application/json' -d '{"msg":"hello"}'
printf '{"index":{}}\n{"n":1}\n' | curl -s -XPUT "$base/logs/_bulk" -H 'transfer-encoding: chunked' \
  -H 'content-type: application/x-ndjson' --data-binary @-
printf 'GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n' \
  | (exec 3<>"/dev/tcp/127.0.0.1/$proxy_port"; cat >&3; cat <&3) | grep -c "HTTP/1.1 200" \
  | sed 's/^/pipelined responses: /'
kill -TERM "$proxy_pid"
wait "$proxy_pid" || true
echo
echo "== decoded capture in $trace_dir"
target/release/capture-proxy inspect --traceDirectory "$trace_dir"
