#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs redis-server when it is
# missing, then runs the gates (format, lints) and every test.
#
#   scripts/test.sh            # everything
#   scripts/test.sh pipeline   # extra arguments go to the test runner (a filter)
set -euo pipefail
cd "$(dirname "$0")/.."

need_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "scripts/test.sh: '$*' needs root; run as root or install sudo" >&2; exit 1
  fi
}

if ! command -v redis-server >/dev/null 2>&1; then
  echo "==> redis-server not found: installing it with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  need_root apt-get update -q
  need_root apt-get install -y -q redis-server
fi
# web-push builds OpenSSL bindings (through the ece crate).
if ! pkg-config --exists openssl 2>/dev/null; then
  echo "==> OpenSSL headers not found: installing libssl-dev and pkg-config with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  need_root apt-get update -q
  need_root apt-get install -y -q libssl-dev pkg-config
fi
# The Python producer example runs in the tests, with redis-py from PyPI.
if ! command -v python3 >/dev/null 2>&1; then
  echo "==> python3 not found: installing it with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  need_root apt-get update -q
  need_root apt-get install -y -q python3 python3-pip
fi
# promtool checks deploy/prometheus (config, rules, the alerts' unit tests).
if ! command -v promtool >/dev/null 2>&1; then
  echo "==> promtool not found: installing Debian's prometheus package with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  need_root apt-get update -q
  need_root apt-get install -y -q --no-install-recommends prometheus
  # Only promtool is wanted: the server the package starts is stopped again.
  if command -v systemctl >/dev/null 2>&1; then
    need_root systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi
# The console's tests drive a real headless browser.
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
  echo "==> chromium or chromedriver not found: installing chromium and chromium-driver with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  need_root apt-get update -q
  need_root apt-get install -y -q --no-install-recommends chromium chromium-driver
fi
# README's Node snippet (minting a subscriber token) runs in the tests.
if ! command -v node >/dev/null 2>&1; then
  echo "==> node not found: installing nodejs with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  need_root apt-get update -q
  need_root apt-get install -y -q nodejs
fi
if ! PYTHONPATH=target/pydeps python3 -c 'import redis' 2>/dev/null; then
  echo "==> installing redis-py from PyPI into target/pydeps (for the Python producer example)"
  python3 -m pip install --quiet --disable-pip-version-check --target target/pydeps 'redis>=5,<6'
fi
echo "==> $(redis-server --version)"

echo "==> $(date +%T) cargo fmt --check"
cargo fmt --all -- --check

echo "==> $(date +%T) cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
  echo "==> $(date +%T) cargo nextest run"
  cargo nextest run --locked --no-fail-fast "$@"
else
  echo "==> cargo test (install cargo-nextest for parallel, per-process tests)"
  cargo test --locked --no-fail-fast "$@"
fi

if [ "$#" -eq 0 ]; then
  echo "==> $(date +%T) cargo test --features otel --test otel (the OpenTelemetry export, off by default, builds and exports)"
  cargo test --locked --features otel --test otel
fi
echo "==> $(date +%T) done"
