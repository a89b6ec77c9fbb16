#!/usr/bin/env bash
# Reproduces one figure of bench/README.md: starts N gateway nodes on the
# local Redis, samples each node's /metrics every 0.5 s, runs loadgen with
# the given flags (plus one --url per node and --json), reads /metrics
# again, stops every gateway it started (by pid) and prints one summary
# line (bench/analyze.py).
#
#   bench/run.sh [-n NODES] [-e KEY=VALUE]... [-o OUTDIR] [-T MAX_SECONDS] -- LOADGEN_ARGS...
#
#   -n NODES   gateway nodes, on 127.0.0.1:8081 .. 808N (default 1)
#   -e K=V     extra gateway environment (repeatable), e.g.
#              -e GATEWAY_WS_READ_BUFFER_BYTES=512
#   -o OUTDIR  where logs, metric samples and the JSON summary go
#              (default /tmp/bench/run-<time>)
#   -T SECS    hard bound on the whole loadgen run (default 600)
#
# BIN (default target/release) is where gateway and loadgen are taken
# from: other builds share target/, so copy the binaries you measure
# somewhere stable and point BIN at them. Their sha256 and the git
# commit go into OUTDIR/command.txt.
#
# LOADGEN_ARGS go to target/release/loadgen unchanged; if the first one is
# `sweep`, the sweep subcommand runs and writes OUTDIR/sweep.csv.
# Channels and keys use the prefix $PREFIX (default rtbench:) on both
# sides, so other users of the same Redis do not mix with the run.
#
# Needs: target/release/{gateway,loadgen} (cargo build --release -p gateway
# -p loadgen), redis-server on 127.0.0.1:6379, curl, python3.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
NODES=1
OUT=""
MAXT=600
EXTRA_ENV=()
while getopts "n:e:o:T:" opt; do
  case $opt in
    n) NODES=$OPTARG ;;
    e) EXTRA_ENV+=("$OPTARG") ;;
    o) OUT=$OPTARG ;;
    T) MAXT=$OPTARG ;;
    *) sed -n '2,/^set -u/p' "$0" | grep '^#'; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ "${1:-}" = "--" ] && shift
PREFIX=${PREFIX:-rtbench:}
REDIS=${REDIS:-redis://127.0.0.1:6379}
BIN=${BIN:-$ROOT/target/release}
OUT=${OUT:-/tmp/bench/run-$(date +%H%M%S)}
mkdir -p "$OUT"

GW_PIDS=()
SAMPLER_PIDS=()
cleanup() {
  touch "$OUT/.stop"
  for p in "${SAMPLER_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${GW_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for _ in $(seq 1 60); do
    alive=0
    for p in "${GW_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.25
  done
  for p in "${GW_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  GW_PIDS=()
  SAMPLER_PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=bench/common.sh
. "$ROOT/bench/common.sh"
wait_idle
machine before >"$OUT/machine.txt"
echo "idle_before=${idle}% waited=${waited}s" >>"$OUT/machine.txt"

PORTS=()
for i in $(seq 1 "$NODES"); do
  port=$((8080 + i))
  if curl -s -m 1 -o /dev/null "http://127.0.0.1:$port/healthz"; then
    echo "port $port is already in use: not starting over someone else's gateway" >&2
    exit 1
  fi
  PORTS+=("$port")
done

for port in "${PORTS[@]}"; do
  env GATEWAY_LISTEN=127.0.0.1:$port GATEWAY_REDIS_URL="$REDIS" GATEWAY_CHANNEL_PREFIX="$PREFIX" \
    GATEWAY_DRAIN_MS=2000 "${EXTRA_ENV[@]}" \
    "$BIN/gateway" >"$OUT/gateway-$port.log" 2>&1 &
  GW_PIDS+=($!)
  echo $! >"$OUT/gateway-$port.pid"
done
for port in "${PORTS[@]}"; do
  for _ in $(seq 1 40); do
    curl -s -m 1 -o /dev/null -f "http://127.0.0.1:$port/readyz" && break
    sleep 0.25
  done
  curl -s -m 1 -o /dev/null -f "http://127.0.0.1:$port/readyz" || { echo "gateway on $port not ready" >&2; exit 1; }
done
sleep 0.5

# Sampler: "<unix ms> <metric> <value>" lines, every 0.5 s, bounded.
sample() {
  local port=$1 n=0
  while [ ! -e "$OUT/.stop" ] && [ $n -lt $((MAXT * 2 + 200)) ]; do
    t=$(date +%s%3N)
    curl -s -m 1 "http://127.0.0.1:$port/metrics" | awk -v t="$t" '
      /^(process_cpu_seconds_total|process_resident_memory_bytes|gateway_frames_sent_total|gateway_socket_writes_total|gateway_connections|gateway_frames_dropped_total|gateway_frames_conflated_total|gateway_backplane_messages_total|gateway_backplane_reconnects_total) / {print t, $1, $2}'
    n=$((n + 1))
    sleep 0.5
  done
}
for port in "${PORTS[@]}"; do
  curl -s -m 2 "http://127.0.0.1:$port/metrics" >"$OUT/metrics-before-$port.txt"
  sample "$port" >"$OUT/samples-$port.txt" &
  SAMPLER_PIDS+=($!)
done
redis-cli info cpu | tr -d '\r' | grep '^used_cpu_\(sys\|user\):' >"$OUT/redis-cpu-before.txt"

URLS=()
for port in "${PORTS[@]}"; do URLS+=(--url "ws://127.0.0.1:$port/ws"); done
ARGS=("$@")
if [ "${ARGS[0]:-}" = "sweep" ]; then
  CMD=("$BIN/loadgen" sweep "${URLS[@]}" --channel-prefix "$PREFIX" "${ARGS[@]:1}" --csv "$OUT/sweep.csv")
else
  CMD=("$BIN/loadgen" "${URLS[@]}" --channel-prefix "$PREFIX" "${ARGS[@]}" --json "$OUT/summary.json")
fi
printf '%q ' "${CMD[@]}" >"$OUT/command.txt"; echo >>"$OUT/command.txt"
{ echo "git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet HEAD -- gateway wire loadgen 2>/dev/null || echo '+dirty')"
  sha256sum "$BIN/gateway" "$BIN/loadgen"; } >>"$OUT/command.txt"
{ printf 'gateway env: GATEWAY_REDIS_URL=%s GATEWAY_CHANNEL_PREFIX=%s GATEWAY_DRAIN_MS=2000' "$REDIS" "$PREFIX"
  for e in "${EXTRA_ENV[@]}"; do printf ' %s' "$e"; done; printf ' ports %s\n' "${PORTS[*]}"; } >>"$OUT/command.txt"

cpu_ticks >"$OUT/proc-stat-before.txt"
# /usr/bin/time counts loadgen and its worker processes (waited for).
timeout --signal=INT --kill-after=20 "$MAXT" /usr/bin/time -f '%U %S %e' -o "$OUT/loadgen-time.txt" \
  "${CMD[@]}" >"$OUT/loadgen.out" 2>"$OUT/loadgen.err"
echo $? >"$OUT/loadgen.rc"
cpu_ticks >"$OUT/proc-stat-after.txt"

for port in "${PORTS[@]}"; do
  curl -s -m 2 "http://127.0.0.1:$port/metrics" >"$OUT/metrics-after-$port.txt"
done
redis-cli info cpu | tr -d '\r' | grep '^used_cpu_\(sys\|user\):' >"$OUT/redis-cpu-after.txt"
machine after >>"$OUT/machine.txt"
cleanup
trap - EXIT
python3 "$ROOT/bench/analyze.py" "$OUT"
