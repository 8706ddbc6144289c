#!/usr/bin/env bash
# The whole test suite: unit tests, integration tests under io_uring, the systemd unit checks
# (systemd-analyze verify/security), the integration tests again under the epoll driver, the
# Kafka end-to-end tests against a local tansu broker, the Kafka fault matrix against real
# brokers (Apache Kafka 4.4 from Maven Central and tansu; scripts/kafka-local.sh starts them),
# the framing differential tests against the sources' real Netty (scripts/netty-origins.sh)
# and the fuzz smoke. The OTLP metrics test (tests/integration/otlp_export.rs) runs with the integration
# tests against a real OpenTelemetry Collector (scripts/otel-collector.sh builds it with Go).
# Brokers, Netty origins, the collector and their downloads are cached (~/.m2,
# ~/.cache/capture-proxy, ~/go, ~/.cargo/bin).
# Installs what it needs first. Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# python3-matplotlib: tests/integration/load_script.rs draws scripts/loadtest.sh's pictures (plot.py).
scripts/install-deps.sh python3-matplotlib

echo "== OpenTelemetry Collector for tests/integration/otlp_export.rs (scripts/otel-collector.sh)"
# Built once from the Go module proxy (~3 min cold; a cached binary is reused at once); the
# OTLP tests fail instead of skipping from here on.
scripts/otel-collector.sh build >/dev/null
export CAPTURE_PROXY_REQUIRE_OTEL=1

echo "== unit + integration tests (io_uring driver)"
# The picture tests skip without matplotlib; here, where it was just installed, that fails.
export CAPTURE_PROXY_REQUIRE_PLOTS=1
cargo test --all-targets --locked 2>&1

echo "== systemd unit: systemd-analyze verify + security on the unit as scripts/install.sh installs it"
# Needs no running systemd: the unit is staged into a temporary root with the real binary.
command -v systemd-analyze >/dev/null 2>&1 || scripts/install-deps.sh systemd
(
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  bin="${CARGO_TARGET_DIR:-target}/debug/capture-proxy"
  cargo build --locked --bin capture-proxy 2>&1
  scripts/install.sh --root "$root" --binary "$bin"
  # verify resolves the unit's dependencies (sysinit.target, ...) and checks its commands
  # (ExecReload's /bin/kill) inside the root: give it the host's units and kill(1).
  for units in /usr/lib/systemd/system /lib/systemd/system; do
    if [ -d "$units" ]; then
      mkdir -p "$root$(dirname "$units")" && cp -a "$units" "$root$units" && break
    fi
  done
  mkdir -p "$root/bin" && cp "$(type -P kill)" "$root/bin/kill"
  # verify exits 0 on unknown keys and bad values (it only warns): any output fails.
  out=$(systemd-analyze verify --man=no --generators=no --root="$root" capture-proxy.service 2>&1) \
    && [ -z "$out" ] || { echo "$out"; echo "systemd-analyze verify: the unit has problems" >&2; exit 1; }
  echo "systemd-analyze verify: clean"
  # Exposure 0 (locked down) .. 10 (unprotected); fail above 2.0.
  sec=$(systemd-analyze security --offline=yes --threshold=20 --root="$root" capture-proxy.service 2>&1) \
    || { echo "$sec"; echo "systemd-analyze security: exposure above 2.0" >&2; exit 1; }
  echo "$sec" | tail -n 1
  # The example configuration is valid as shipped.
  env -i PATH="$PATH" bash -c 'set -af; . systemd/capture-proxy.env.example; exec "$0" --check-config $EXTRA_ARGS' \
    "$bin" >/dev/null
  echo "capture-proxy.env.example: --check-config ok"
)

echo "== integration tests again under the epoll driver (MONOIO_FORCE_LEGACY_DRIVER=1)"
MONOIO_FORCE_LEGACY_DRIVER=1 cargo test --locked --test "*" 2>&1

echo "== Kafka end-to-end tests (local tansu broker, scripts/kafka-local.sh)"
# The broker is stopped on exit only if this run started it (a broker someone already runs
# on the port through kafka-local.sh is reused and left running).
KAFKA_PORT=9092
if ! scripts/kafka-local.sh status --port "$KAFKA_PORT" >/dev/null 2>&1; then
  trap 'scripts/kafka-local.sh stop --port "$KAFKA_PORT"' EXIT
fi
KAFKA_BOOTSTRAP=$(scripts/kafka-local.sh start --port "$KAFKA_PORT")
CAPTURE_PROXY_TEST_KAFKA="$KAFKA_BOOTSTRAP" cargo test --locked --test integration kafka_e2e:: -- --ignored 2>&1

echo "== Kafka fault matrix against real brokers: Apache Kafka and tansu (tests/integration/kafka_real_faults.rs)"
# Each row starts its own broker through scripts/kafka-local.sh (Apache Kafka's jars are
# resolved by Maven once and cached), behind a forwarder the test controls. One test at a
# time: the matrix's rows have time bounds, the behind-the-capture test loads the CPU.
CAPTURE_PROXY_TEST_KAFKA_IMPLS=tansu,apache \
  cargo test --locked --test integration kafka_real_faults:: -- --ignored --test-threads=1 2>&1

echo "== framing parity with the sources' Netty (tests/integration/framing_parity.rs)"
# Builds (once, cached) the Netty origins at the versions Elasticsearch 7.10 and OpenSearch
# 1.x-3.x ship, then compares captured with executed requests for every origin.
scripts/netty-origins.sh build >/dev/null
CAPTURE_PROXY_TEST_NETTY=1 cargo test --locked --test integration framing_parity:: 2>&1

echo "== fuzz smoke: every cargo-fuzz target for a few seconds (scripts/fuzz.sh; long runs: fuzz/README.md)"
# FUZZ_SMOKE_SECONDS=0 skips it (e.g. a quick local rerun).
FUZZ_SMOKE_SECONDS=${FUZZ_SMOKE_SECONDS:-10}
if [ "$FUZZ_SMOKE_SECONDS" != 0 ]; then
  scripts/fuzz.sh "$FUZZ_SMOKE_SECONDS" 2>&1
fi
