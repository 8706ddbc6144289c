#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each, one after the other, on the stable
# toolchain: coverage-guided libFuzzer without a sanitizer (`--sanitizer none`; ASan needs
# nightly, and the code under test is safe Rust), optimized, with debug assertions and
# overflow checks on. Installs cargo-fuzz first when it is missing (cached in ~/.cargo/bin).
#
# Usage: scripts/fuzz.sh SECONDS [TARGET...]
#   scripts/fuzz.sh 10     # CI smoke (scripts/test.sh)
#   scripts/fuzz.sh 600    # the long local run (issue 7)
# Env: FUZZ_JOBS=N runs N targets at once (default 1; at most 2 on the 2-core machines);
#      CARGO_TARGET_DIR is honored (default fuzz/target).
# Prints each target's executions and exec/s; exits non-zero when a target finds a crash
# (the reproducer is in fuzz/artifacts/<target>/, see fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${1:?usage: scripts/fuzz.sh SECONDS [TARGET...]}
shift
TARGETS=("$@")
if ((${#TARGETS[@]} == 0)); then
  TARGETS=(request_framer head_rewriter capture_builder pipeline)
fi
JOBS=${FUZZ_JOBS:-1}
# cargo-fuzz 0.13.2 is the version this was set up with; --locked keeps its dependencies.
CARGO_FUZZ_VERSION=0.13.2

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION (once; cached in ~/.cargo/bin)" >&2
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/fuzz/target}
# The flags every build and run uses (see fuzz/README.md).
FLAGS=(--sanitizer none --release --debug-assertions --target-dir "$TARGET_DIR")

cd fuzz
echo "== fuzz: building ${TARGETS[*]}"
for t in "${TARGETS[@]}"; do
  cargo fuzz build "${FLAGS[@]}" "$t"
done

LOGS=$(mktemp -d)
trap 'rm -rf "$LOGS"' EXIT

run_one() {
  local t=$1
  mkdir -p "corpus/$t" "artifacts/$t"
  # Seeds: the saved reproducers (they must pass) and the hand-written seeds.
  local seeds=()
  for d in "regressions/$t" "seeds/$t"; do
    [ -d "$d" ] && seeds+=("$d")
  done
  local dict=()
  [ -f "dict/$t.dict" ] && dict=("-dict=dict/$t.dict")
  local rc=0
  cargo fuzz run "${FLAGS[@]}" "$t" "corpus/$t" "${seeds[@]}" -- \
    -max_total_time="$SECONDS_EACH" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 "${dict[@]}" >"$LOGS/$t.log" 2>&1 || rc=$?
  echo "$rc" >"$LOGS/$t.rc"
}

for t in "${TARGETS[@]}"; do
  while (($(jobs -rp | wc -l) >= JOBS)); do
    wait -n || true
  done
  echo "== fuzz: $t for ${SECONDS_EACH}s"
  run_one "$t" &
done
wait

status=0
for t in "${TARGETS[@]}"; do
  rc=$(cat "$LOGS/$t.rc" 2>/dev/null || echo 1)
  if [ "$rc" != 0 ]; then
    status=1
    echo "== fuzz: $t FAILED (exit $rc); last lines of its log:"
    tail -n 60 "$LOGS/$t.log"
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$LOGS/$t.log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$LOGS/$t.log" | tail -n 1)
  cov=$(grep -o 'cov: [0-9]*' "$LOGS/$t.log" | tail -n 1 || true)
  corpus=$(find "corpus/$t" -type f | wc -l)
  echo "fuzz: $t: ${execs:-?} executions in ${SECONDS_EACH}s (${rate:-?} exec/s), ${cov:-cov: ?}, corpus $corpus"
done
exit "$status"
