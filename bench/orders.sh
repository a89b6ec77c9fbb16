#!/usr/bin/env bash
# The request/reply benchmark (issue 16): gateway node(s) and R publisher
# replicas (order services sharing the request stream's consumer group,
# each with its own PUBLISHER_REPLICA_ID) on the local Redis, loadgen's
# order mode against them. While it runs, bench/orders_redis.py samples
# every 0.25 s the CPU of each process (gateway, each publisher,
# redis-server, loadgen with its workers), the request stream (XLEN,
# the group's lag and pending) and a Redis round trip; Redis' command
# counts are read before and after. Then it stops everything it started (by
# pid), deletes the run's Redis keys and prints orders/s, reply p50/p99,
# CPU per process and the stream's backlog (bench/orders_analyze.py).
#
#   bench/orders.sh [-r REPLICAS] [-g NODES] [-e KEY=VALUE]... [-p KEY=VALUE]... [-o OUTDIR] [-T SECS] [-t] -- LOADGEN_ARGS...
#
#   -r REPLICAS  publisher replicas (default 1)
#   -g NODES     gateway nodes (default 1); loadgen spreads its
#                connections over them round-robin
#   -e K=V       extra gateway environment (repeatable)
#   -p K=V       extra publisher environment (repeatable)
#   -o OUTDIR    logs, samples, summary (default /tmp/bench/orders-<time>)
#   -T SECS      hard bound on the loadgen run (default 600)
#   -R           a private redis-server on a free port for this run (no
#                persistence), instead of the shared one: other users'
#                traffic stays out of the figures and INFO commandstats
#                counts this run alone
#   -M SECS      with -R: record Redis MONITOR for SECS, from 3 s after
#                loadgen starts (see orders_analyze.py: each Redis
#                connection's command cycle); MONITOR slows Redis, so
#                such runs show structure, not throughput
#   -t           trace: loadgen writes every order's times (--order-trace)
#                and the request stream is dumped, so the analysis splits
#                reply latency into client→gateway, gateway→XADD,
#                XADD→order service reply, reply→client. Keep such runs
#                under 100,000 orders (the gateway trims the stream there).
#
# Example (the issue's case, 500 connections asking 10,000 orders/s):
#   BIN=/tmp/orders-bench/bin bench/orders.sh -r 1 -- -c 0 --order-conns 500 --order-rate 10000 -d 20s
#
# BIN (default target/release) holds gateway, publisher and loadgen; copy
# the binaries you measure there (other builds share target/). Each run
# uses its own key prefix ($PREFIX, default rtbench-orders-<time>-<pid>:),
# so it shares the Redis with tests and other runs without mixing.
# Publishers run with quotes and simulated orders off (only loadgen's
# orders), fill_delay_ms as configured (50 by default).
#
# BENCH_NICE=-5 (say) runs every process this script starts at that
# niceness, so builds of other users of the machine disturb less; the
# value goes into command.txt. Default 0.
#
# Needs: redis-server on 127.0.0.1:6379 (or $REDIS; or -R), curl, python3.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=bench/common.sh
. "$ROOT/bench/common.sh"
REPLICAS=1
NODES=1
OUT=""
MAXT=600
TRACE=0
PRIVATE_REDIS=0
MONITOR=0
GW_ENV=()
PUB_ENV=()
while getopts "r:g:e:p:o:T:tRM:" opt; do
  case $opt in
    r) REPLICAS=$OPTARG ;;
    g) NODES=$OPTARG ;;
    e) GW_ENV+=("$OPTARG") ;;
    p) PUB_ENV+=("$OPTARG") ;;
    o) OUT=$OPTARG ;;
    T) MAXT=$OPTARG ;;
    t) TRACE=1 ;;
    R) PRIVATE_REDIS=1 ;;
    M) MONITOR=$OPTARG ;;
    *) sed -n '2,/^set -u/p' "$0" | grep '^#'; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
if [ "$MONITOR" != 0 ] && [ $PRIVATE_REDIS = 0 ]; then
  echo "-M needs -R: MONITOR slows Redis for everyone on it" >&2
  exit 2
fi
[ "${1:-}" = "--" ] && shift
REDIS=${REDIS:-redis://127.0.0.1:6379}
BIN=${BIN:-$ROOT/target/release}
OUT=${OUT:-/tmp/bench/orders-$(date +%H%M%S)}
PREFIX=${PREFIX:-rtbench-orders-$(date +%s)-$$:}
SECRET=bench-orders-secret
STREAM="${PREFIX}orders:requests"
mkdir -p "$OUT/pids"
NICE=(nice -n "${BENCH_NICE:-0}")

PIDS=()
SAMPLER=""
stop_all() {
  touch "$OUT/.stop"
  [ -n "$SAMPLER" ] && wait "$SAMPLER" 2>/dev/null
  stop_pids
  if [ -n "${REDIS_OWN:-}" ]; then
    kill -TERM "$REDIS_OWN" 2>/dev/null
    REDIS_OWN=""
  else
    python3 "$ROOT/bench/orders_redis.py" cleanup "$PREFIX"
  fi
  wait 2>/dev/null
}
trap stop_all EXIT
trap 'exit 130' INT TERM

wait_idle
machine before >"$OUT/machine.txt"
echo "idle_before=${idle}% waited=${waited}s" >>"$OUT/machine.txt"

REDIS_OWN=""
[ $PRIVATE_REDIS = 1 ] && start_private_redis
export REDIS
REDIS_PID=$(redis-cli -u "$REDIS" info server | tr -d '\r' | awk -F: '/^process_id:/{print $2}')
[ -n "$REDIS_PID" ] && echo "$REDIS_PID" >"$OUT/pids/redis.pid"

PUB_PORTS=()
for i in $(seq 1 "$REPLICAS"); do
  port=$(free_port)
  env PUBLISHER_LISTEN=127.0.0.1:$port PUBLISHER_REDIS_URL="$REDIS" PUBLISHER_CHANNEL_PREFIX="$PREFIX" \
    PUBLISHER_REPLICA_ID="bench-replica-$i" PUBLISHER_QUOTE_RATE=0 PUBLISHER_ORDER_RATE=0 \
    PUBLISHER_SYMBOLS="AAPL,MSFT,GOOG,AMZN" "${PUB_ENV[@]}" \
    "${NICE[@]}" "$BIN/publisher" >"$OUT/publisher-$i.log" 2>&1 &
  PIDS+=($!)
  echo $! >"$OUT/pids/publisher-$i.pid"
  PUB_PORTS+=("$port")
done
GW_PORTS=()
URLS=()
for g in $(seq 1 "$NODES"); do
  name=gateway; [ "$NODES" -gt 1 ] && name=gateway-$g
  port=$(free_port)
  env GATEWAY_LISTEN=127.0.0.1:$port GATEWAY_REDIS_URL="$REDIS" GATEWAY_CHANNEL_PREFIX="$PREFIX" \
    GATEWAY_JWT_SECRET="$SECRET" GATEWAY_NODE_ID=bench-gw-$g GATEWAY_DRAIN_MS=2000 "${GW_ENV[@]}" \
    "${NICE[@]}" "$BIN/gateway" >"$OUT/$name.log" 2>&1 &
  PIDS+=($!)
  echo $! >"$OUT/pids/$name.pid"
  GW_PORTS+=("$port")
  URLS+=(--url "ws://127.0.0.1:$port/ws")
done
i=0
for port in "${PUB_PORTS[@]}"; do i=$((i + 1)); wait_ready "$port" "publisher-$i"; done
g=0
for port in "${GW_PORTS[@]}"; do
  g=$((g + 1)); name=gateway; [ "$NODES" -gt 1 ] && name=gateway-$g
  wait_ready "$port" "$name"
done

python3 "$ROOT/bench/orders_redis.py" commandstats "$OUT/commandstats-before.txt"
python3 "$ROOT/bench/orders_redis.py" sample "$OUT" "$STREAM" 0.25 &
SAMPLER=$!

ARGS=("$@")
CMD=("$BIN/loadgen" "${URLS[@]}" --jwt-secret "$SECRET" --channel-prefix "$PREFIX"
     "${ARGS[@]}" --json "$OUT/summary.json")
[ $TRACE = 1 ] && CMD+=(--order-trace "$OUT/trace.csv")
{ printf 'bench/orders.sh -r %s -g %s' "$REPLICAS" "$NODES"
  for e in "${GW_ENV[@]}"; do printf ' -e %q' "$e"; done
  for e in "${PUB_ENV[@]}"; do printf ' -p %q' "$e"; done
  [ $TRACE = 1 ] && printf ' -t'
  [ $PRIVATE_REDIS = 1 ] && printf ' -R'
  [ "$MONITOR" != 0 ] && printf ' -M %s' "$MONITOR"
  printf ' --'; printf ' %q' "${ARGS[@]}"; echo
  printf '%q ' "${CMD[@]}"; echo
  echo "git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet HEAD -- gateway publisher wire loadgen service 2>/dev/null || echo '+dirty')"
  sha256sum "$BIN/gateway" "$BIN/publisher" "$BIN/loadgen"
  echo "BENCH_NICE=${BENCH_NICE:-0} redis $REDIS ($(redis-server --version | cut -d' ' -f3))"
  echo "replicas $REPLICAS, gateways $NODES, prefix $PREFIX, gateway ports ${GW_PORTS[*]}, publisher ports ${PUB_PORTS[*]}"; } >"$OUT/command.txt"

"${NICE[@]}" "${CMD[@]}" >"$OUT/loadgen.out" 2>"$OUT/loadgen.err" &
LG=$!
echo $LG >"$OUT/pids/loadgen.pid"
if [ "$MONITOR" != 0 ]; then
  python3 "$ROOT/bench/orders_redis.py" monitor "$OUT" 3 "$MONITOR" &
fi
# Its output goes nowhere: a pipe reading this script's output must not
# stay open for the watchdog's sleep after the run.
( sleep "$MAXT"; kill -INT $LG 2>/dev/null; sleep 20; kill -KILL $LG 2>/dev/null ) >/dev/null 2>&1 &
WATCHDOG=$!
wait $LG
echo $? >"$OUT/loadgen.rc"
pkill -P $WATCHDOG 2>/dev/null
kill $WATCHDOG 2>/dev/null
rm -f "$OUT/pids/loadgen.pid"

python3 "$ROOT/bench/orders_redis.py" commandstats "$OUT/commandstats-after.txt"
for i in $(seq 1 "$REPLICAS"); do
  curl -s -m 2 "http://127.0.0.1:${PUB_PORTS[$((i - 1))]}/metrics" >"$OUT/metrics-publisher-$i.txt"
done
g=0
for port in "${GW_PORTS[@]}"; do g=$((g + 1)); curl -s -m 2 "http://127.0.0.1:$port/metrics" >"$OUT/metrics-gateway-$g.txt"; done
[ $TRACE = 1 ] && python3 "$ROOT/bench/orders_redis.py" dump "$OUT" "$STREAM"
machine after >>"$OUT/machine.txt"
stop_all
trap - EXIT
python3 "$ROOT/bench/orders_analyze.py" "$OUT"
