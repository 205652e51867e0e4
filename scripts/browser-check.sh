#!/usr/bin/env bash
# Drives the demo page in headless Chromium: one tab chats over WebSocket,
# another over SSE + POST; both must see each other's messages and presence.
# Opt-in (needs Debian's chromium and npm's playwright-core, ~300 MB):
#   ./scripts/browser-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }
work=$(mktemp -d)
trap 'kill "${server_pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
(cd "$work" && npm init -y >/dev/null && npm install --silent playwright-core@1 >/dev/null)
cargo build --quiet
./target/debug/switchboard --http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
  addr=$(grep -o 'http_addr=[0-9.:]*' "$work/server.log" | tail -1 | cut -d= -f2) && [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "${addr:-}" ] || { cat "$work/server.log"; exit 1; }
cp tests/browser/demo.js "$work/"
(cd "$work" && SCREENSHOT_DIR="${SCREENSHOT_DIR:-$work}" node demo.js "http://$addr")
