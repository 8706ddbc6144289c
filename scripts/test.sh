#!/usr/bin/env bash
# The whole test suite: unit tests, integration tests under io_uring, the integration tests
# again under the epoll driver, and (when a broker is available) the Kafka end-to-end tests.
# Installs what it needs first. Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

echo "== unit + integration tests (io_uring driver)"
cargo test --all-targets --locked 2>&1

echo "== integration tests again under the epoll driver (MONOIO_FORCE_LEGACY_DRIVER=1)"
MONOIO_FORCE_LEGACY_DRIVER=1 cargo test --locked --test "*" 2>&1
