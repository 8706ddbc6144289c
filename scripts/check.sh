#!/usr/bin/env bash
# Everything a change must pass before it is committed: formatting, clippy with warnings as
# errors, and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
scripts/test.sh
