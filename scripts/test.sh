#!/usr/bin/env bash
# Runs every test of ordersync on a fresh machine: installs and starts what the tests need when it is
# missing (PostgreSQL running on 127.0.0.1:5432, promtool from Debian's `prometheus`, amtool from
# `prometheus-alertmanager`, an SMTP server for tests from `python3-aiosmtpd`,
# systemd-analyze from `systemd`), then runs
# formatting, lints and the whole test suite against real SQLite and PostgreSQL.
#
#   scripts/test.sh            # everything
#   scripts/test.sh reconcile  # only tests whose name contains "reconcile" (passed to cargo test)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  log "installing $* (Debian packages)"
  as_root apt-get update -qq
  # Packages with a daemon must not start it here: policy-rc.d says no for the length of the install.
  local policy=/usr/sbin/policy-rc.d created=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod +x "$policy"
    created=1
  fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  if [ "$created" = 1 ]; then as_root rm -f "$policy"; fi
}

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
/usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1 || missing+=(python3-aiosmtpd)
command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(postgresql)
command -v pg_isready >/dev/null 2>&1 || missing+=(postgresql-client)
# systemd-analyze checks packaging/ordersync.service (no systemd needs to run).
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; fi

if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  log "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
  pg_isready -h 127.0.0.1 -p 5432
fi

# sqlx's name for the server the tests create their databases on; ordersync's own is ORDERSYNC_DATABASE_URL.
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export ORDERSYNC_PROMTOOL="${ORDERSYNC_PROMTOOL:-$(command -v promtool)}"
export ORDERSYNC_AMTOOL="${ORDERSYNC_AMTOOL:-$(command -v amtool)}"
export ORDERSYNC_PROMETHEUS="${ORDERSYNC_PROMETHEUS:-$(command -v prometheus)}"
export ORDERSYNC_SYSTEMD_ANALYZE="${ORDERSYNC_SYSTEMD_ANALYZE:-$(command -v systemd-analyze)}"
export ORDERSYNC_SMTP_PYTHON="${ORDERSYNC_SMTP_PYTHON:-/usr/bin/python3}"

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings
log "cargo test"
# Doc-tests are left out: there are none, and a run must not close on "0 passed".
cargo test --locked --lib --bins --tests "$@"
