#!/usr/bin/env bash
# The whole test suite: unit tests, integration tests under io_uring, the integration tests
# again under the epoll driver, then the Kafka end-to-end tests against a local tansu broker
# (started and stopped here; installed on first use by scripts/kafka-local.sh).
# Installs what it needs first. Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

echo "== unit + integration tests (io_uring driver)"
cargo test --all-targets --locked 2>&1

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
CAPTURE_PROXY_TEST_KAFKA="$KAFKA_BOOTSTRAP" cargo test --locked --test kafka_e2e -- --ignored 2>&1
