#!/usr/bin/env bash
# Installs the Debian packages the build and the tests need, when missing.
# Idempotent; safe to run on every CI start. Needs root (or sudo) only when something is missing.
set -euo pipefail

need=()
for pkg in build-essential pkg-config libssl-dev zlib1g-dev cmake curl python3 "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
  echo "install-deps: installing ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Java 17+ and Maven run the real peers the tests compare against (Apache Kafka, the Netty
# origins). The machine image ships them; a fresh Debian gets them from its packages.
if ! command -v java >/dev/null 2>&1 || ! command -v mvn >/dev/null 2>&1; then
  echo "install-deps: installing openjdk-17-jdk-headless maven" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openjdk-17-jdk-headless maven >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo not found; install a Rust toolchain (1.85+) first" >&2
  exit 1
fi
