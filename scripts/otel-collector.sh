#!/usr/bin/env bash
# A real OpenTelemetry Collector for the OTLP metrics test (tests/integration/otlp_export.rs): an OTLP/gRPC
# receiver and the contrib file exporter (one JSON line per received batch), nothing else.
# Built once from the Go module proxy with our own minimal main (the collector's builder tool
# is not used: main.go below lists the two factories), cached per collector release.
#
# Usage: scripts/otel-collector.sh COMMAND
#   build                 builds the collector into $CACHE/otelcol-VERSION/otelcol unless it is
#                         there already (Go modules stay in ~/go/pkg/mod, the Go build cache in
#                         ~/.cache/go-build); prints the binary's path
#   path                  prints the binary's path; exit 1 when it is not built
#   config PORT OUTFILE [CERT KEY]
#                         prints a collector configuration: OTLP/gRPC on 127.0.0.1:PORT (TLS with
#                         the PEM certificate chain CERT and key KEY when given), metrics
#                         appended to OUTFILE as JSON lines, the collector's own telemetry off
#   start PORT OUTFILE    starts the built collector in the background with that configuration
#                         (log: OUTFILE.log, pid: OUTFILE.pid), waits until PORT listens, prints
#                         the pid (for trying the proxy by hand; the test starts its own)
#   stop OUTFILE          stops the collector `start` started for OUTFILE
#
# Environment: CAPTURE_PROXY_CACHE (default ~/.cache/capture-proxy), GO (default
# /usr/local/go/bin/go, else go on PATH), GO_BUILD_TIMEOUT_S (default 1200).
set -euo pipefail

# Collector releases, kept at one release (core modules v0.161.0 go with the 1.x modules
# v1.67.0; the contrib file exporter is published at the same v0.161.0). Pinned so CI does not
# change under us; v0.161.0 is the newest release whose contrib file exporter resolves here.
CORE_VERSION=v0.161.0
STABLE_VERSION=v1.67.0
CONTRIB_VERSION=v0.161.0

CACHE=${CAPTURE_PROXY_CACHE:-$HOME/.cache/capture-proxy}
if [[ -z "${GO:-}" ]]; then
  if [[ -x /usr/local/go/bin/go ]]; then GO=/usr/local/go/bin/go; else GO=go; fi
fi

die() { echo "otel-collector.sh: $*" >&2; exit 1; }

write_sources() {
  local src=$1
  mkdir -p "$src"
  cat >"$src/go.mod" <<EOF
module capture-proxy/otelcol

go 1.24

require (
	github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter $CONTRIB_VERSION
	go.opentelemetry.io/collector/component $STABLE_VERSION
	go.opentelemetry.io/collector/confmap $STABLE_VERSION
	go.opentelemetry.io/collector/confmap/provider/fileprovider $STABLE_VERSION
	go.opentelemetry.io/collector/exporter $STABLE_VERSION
	go.opentelemetry.io/collector/otelcol $CORE_VERSION
	go.opentelemetry.io/collector/receiver $STABLE_VERSION
	go.opentelemetry.io/collector/receiver/otlpreceiver $CORE_VERSION
	go.opentelemetry.io/collector/service $CORE_VERSION
)
EOF
  cat >"$src/main.go" <<'EOF'
// A collector with one receiver (OTLP) and one exporter (file), for capture-proxy's tests.
package main

import (
	"fmt"
	"os"

	"github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter"
	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/confmap/provider/fileprovider"
	"go.opentelemetry.io/collector/exporter"
	"go.opentelemetry.io/collector/otelcol"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/collector/receiver/otlpreceiver"
	"go.opentelemetry.io/collector/service/telemetry/otelconftelemetry"
)

func factories() (otelcol.Factories, error) {
	var f otelcol.Factories
	var err error
	if f.Receivers, err = otelcol.MakeFactoryMap[receiver.Factory](otlpreceiver.NewFactory()); err != nil {
		return f, err
	}
	if f.Exporters, err = otelcol.MakeFactoryMap[exporter.Factory](fileexporter.NewFactory()); err != nil {
		return f, err
	}
	f.Telemetry = otelconftelemetry.NewFactory()
	return f, nil
}

func main() {
	settings := otelcol.CollectorSettings{
		BuildInfo: component.BuildInfo{Command: "otelcol", Description: "capture-proxy test collector", Version: "test"},
		Factories: factories,
		ConfigProviderSettings: otelcol.ConfigProviderSettings{
			ResolverSettings: confmap.ResolverSettings{
				ProviderFactories: []confmap.ProviderFactory{fileprovider.NewFactory()},
				DefaultScheme:     "file",
			},
		},
	}
	if err := otelcol.NewCommand(settings).Execute(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
EOF
  cat "$src/go.mod" "$src/main.go" | sha256sum | cut -c1-12
}

# The cache directory is named after the release and a hash of the generated sources, so a
# change to main.go or go.mod below builds anew instead of reusing a stale binary.
SRC_TMP=$(mktemp -d)
SRC_HASH=$(write_sources "$SRC_TMP")
rm -rf "$SRC_TMP"
DIR="$CACHE/otelcol-$CORE_VERSION-$SRC_HASH"
BIN="$DIR/otelcol"

build() {
  if [[ -x "$BIN" ]]; then
    echo "$BIN"
    return
  fi
  command -v "$GO" >/dev/null 2>&1 || [[ -x "$GO" ]] || die "Go not found (set GO=/path/to/go)"
  local src="$DIR/src"
  rm -rf "$src"
  write_sources "$src" >/dev/null
  (
    cd "$src"
    timeout "${GO_BUILD_TIMEOUT_S:-1200}" "$GO" mod tidy >&2
    timeout "${GO_BUILD_TIMEOUT_S:-1200}" "$GO" build -trimpath -o "$BIN.tmp" . >&2
  ) || die "build failed (sources in $src)"
  mv "$BIN.tmp" "$BIN"
  echo "$BIN"
}

config() {
  local port=$1 out=$2 cert=${3:-} key=${4:-}
  cat <<EOF
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:$port
EOF
  if [[ -n "$cert" ]]; then
    cat <<EOF
        tls:
          cert_file: $cert
          key_file: $key
EOF
  fi
  cat <<EOF
exporters:
  file:
    path: $out
    format: json
    flush_interval: 50ms
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    metrics:
      receivers: [otlp]
      exporters: [file]
EOF
}

case "${1:-}" in
  build) build ;;
  path)
    [[ -x "$BIN" ]] || die "not built (run: scripts/otel-collector.sh build)"
    echo "$BIN"
    ;;
  config)
    [[ $# -eq 3 || $# -eq 5 ]] || die "usage: config PORT OUTFILE [CERT KEY]"
    config "${@:2}"
    ;;
  start)
    [[ $# -eq 3 ]] || die "usage: start PORT OUTFILE"
    [[ -x "$BIN" ]] || build >/dev/null
    port=$2 out=$3
    config "$port" "$out" >"$out.yaml"
    "$BIN" --config "file:$out.yaml" >"$out.log" 2>&1 &
    echo $! >"$out.pid"
    for _ in $(seq 1 100); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        cat "$out.pid"
        exit 0
      fi
      kill -0 "$(cat "$out.pid")" 2>/dev/null || die "collector exited; see $out.log"
      sleep 0.1
    done
    die "collector did not listen on 127.0.0.1:$port within 10 s; see $out.log"
    ;;
  stop)
    [[ $# -eq 2 ]] || die "usage: stop OUTFILE"
    if [[ -f "$2.pid" ]]; then
      kill "$(cat "$2.pid")" 2>/dev/null || true
      rm -f "$2.pid"
    fi
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
