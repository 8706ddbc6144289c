#!/usr/bin/env bash
# Installs capture-proxy as a systemd service on a Debian/Ubuntu or Amazon Linux host:
#   /usr/local/bin/capture-proxy                        the binary
#   /etc/systemd/system/capture-proxy.service           the unit (systemd/capture-proxy.service)
#   /etc/capture-proxy/capture-proxy.env                the configuration (from the example;
#                                                       never overwritten once it exists)
#   /etc/capture-proxy/capture-proxy.env.example        the current example, for comparison
#   /usr/share/doc/capture-proxy/README.md              the README (the unit's Documentation=)
#   /var/lib/capture-proxy/traces                       trace directory, owned by the service user
# and the system user/group `capture-proxy`. Idempotent: re-running upgrades binary and unit.
#
# Usage: scripts/install.sh [--binary PATH] [--root DIR] [--enable] [--start]
#   --binary PATH  binary to install (default: target/release/capture-proxy under
#                  $CARGO_TARGET_DIR or ./target, built with `cargo build --release` if missing)
#   --root DIR     install into DIR instead of / (packaging, CI's `systemd-analyze verify`):
#                  no user is created, nothing is chowned, systemctl is not called
#   --enable       enable the service at boot
#   --start        (re)start the service now (the unit's ExecStartPre checks the config first)
set -euo pipefail
cd "$(dirname "$0")/.."

NAME=capture-proxy
ROOT=/
BINARY=""
ENABLE=0
START=0
while (($#)); do
  case "$1" in
    --binary) BINARY=${2:?--binary needs a path}; shift 2 ;;
    --root) ROOT=${2:?--root needs a directory}; shift 2 ;;
    --enable) ENABLE=1; shift ;;
    --start) START=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

say() { echo "install.sh: $*" >&2; }
die() { say "$*"; exit 1; }

LIVE=0
if [ "$ROOT" = / ]; then
  LIVE=1
  [ "$(id -u)" -eq 0 ] || die "run as root (or use --root DIR to stage the files elsewhere)"
else
  mkdir -p "$ROOT"
  ROOT=$(cd "$ROOT" && pwd)
fi
R=${ROOT%/}

if [ -z "$BINARY" ]; then
  BINARY="${CARGO_TARGET_DIR:-target}/release/$NAME"
  if [ ! -x "$BINARY" ]; then
    command -v cargo >/dev/null || die "no $BINARY and no cargo to build it; pass --binary PATH"
    say "building $BINARY (cargo build --release --locked)"
    cargo build --release --locked --bin "$NAME" >&2
  fi
fi
[ -x "$BINARY" ] || die "$BINARY is not an executable file"
"$BINARY" --version >/dev/null 2>&1 || die "$BINARY does not run on this host (--version failed)"

# The service account: a system user with no login shell and no home of its own beyond the
# state directory.
OWNER=(); CONF_GROUP=()
if ((LIVE)); then
  NOLOGIN=$(command -v nologin || true)
  [ -n "$NOLOGIN" ] || for p in /usr/sbin/nologin /sbin/nologin; do [ -x "$p" ] && NOLOGIN=$p && break; done
  [ -n "$NOLOGIN" ] || NOLOGIN=/bin/false
  if ! getent group "$NAME" >/dev/null; then
    groupadd --system "$NAME"
    say "created group $NAME"
  fi
  if ! getent passwd "$NAME" >/dev/null; then
    useradd --system --gid "$NAME" --home-dir "/var/lib/$NAME" --no-create-home \
      --shell "$NOLOGIN" --comment "capture-proxy service" "$NAME"
    say "created user $NAME"
  fi
  OWNER=(-o "$NAME" -g "$NAME")
  CONF_GROUP=(-o root -g "$NAME")
fi

install -D -m 0755 "$BINARY" "$R/usr/local/bin/$NAME"
install -D -m 0644 "systemd/$NAME.service" "$R/etc/systemd/system/$NAME.service"
install -d -m 0750 "${CONF_GROUP[@]}" "$R/etc/$NAME"
install -m 0644 "systemd/$NAME.env.example" "$R/etc/$NAME/$NAME.env.example"
if [ -e "$R/etc/$NAME/$NAME.env" ]; then
  say "keeping the existing /etc/$NAME/$NAME.env (compare with $NAME.env.example)"
else
  # Readable by the service (it may hold a SCRAM password), not by everyone.
  install -m 0640 "${CONF_GROUP[@]}" "systemd/$NAME.env.example" "$R/etc/$NAME/$NAME.env"
  say "installed /etc/$NAME/$NAME.env from the example: edit it before starting"
fi
install -D -m 0644 README.md "$R/usr/share/doc/$NAME/README.md"
install -d -m 0750 "${OWNER[@]}" "$R/var/lib/$NAME" "$R/var/lib/$NAME/traces"

if ! ((LIVE)); then
  say "staged under $R (no user created, systemctl not called)"
  exit 0
fi

# Host checks: warnings only; the proxy runs either way.
if [ -r /proc/sys/kernel/io_uring_disabled ] && [ "$(cat /proc/sys/kernel/io_uring_disabled)" != 0 ]; then
  say "warning: kernel.io_uring_disabled=$(cat /proc/sys/kernel/io_uring_disabled): the proxy will use epoll"
fi
SYSTEMD_VERSION=$(systemctl --version 2>/dev/null | awk 'NR==1 {print $2}' || true)
if [ -n "$SYSTEMD_VERSION" ] && [ "${SYSTEMD_VERSION%%.*}" -lt 247 ] 2>/dev/null; then
  say "warning: systemd $SYSTEMD_VERSION ignores some of the unit's hardening (needs 247+; Amazon Linux 2 has 219, use Amazon Linux 2023)"
fi

if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  if ((ENABLE)); then systemctl enable "$NAME.service"; fi
  if ((START)); then
    systemctl restart "$NAME.service"
    systemctl --no-pager --lines=5 status "$NAME.service" || true
  fi
  ((START)) || say "start with: systemctl enable --now $NAME (after editing /etc/$NAME/$NAME.env)"
else
  say "systemd is not running here: files installed, service not loaded"
fi
