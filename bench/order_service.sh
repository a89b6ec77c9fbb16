#!/usr/bin/env bash
# The order service alone, without gateways: fills the request stream of
# a private redis-server with N valid requests (as gateways XADD them),
# then starts R publisher replicas (sharing the consumer group, each with
# its own PUBLISHER_REPLICA_ID) and times how fast they drain it: reading,
# validating, replying (PUBLISH on a reply channel nobody listens to),
# acknowledging, and writing every accepted order's lifecycle updates.
# bench/orders_redis.py samples the stream and CPU every 0.25 s; the
# analysis prints requests served per second, CPU per process and Redis
# commands per request. It answers: can the order service keep up with a
# rate, whatever the gateways do?
#
#   bench/order_service.sh [-r REPLICAS] [-n REQUESTS] [-p KEY=VALUE]... [-o OUTDIR] [-T SECS]
#
#   -r REPLICAS  publisher replicas (default 1)
#   -n REQUESTS  requests in the stream before the replicas start (default 100000)
#   -p K=V       extra publisher environment (repeatable)
#   -o OUTDIR    default /tmp/bench/order-service-<time>
#   -T SECS      longest wait for the stream to drain (default 300)
#
# BIN (default target/release) holds the publisher binary; BENCH_NICE as
# in bench/orders.sh. Requests use accounts TRD0..TRD499 and are stamped
# with the fill time, so publishers run with request_max_age_ms = 1 h
# (none is skipped as stale) and quotes and simulated orders off.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=bench/common.sh
. "$ROOT/bench/common.sh"
REPLICAS=1
COUNT=100000
OUT=""
MAXT=300
PUB_ENV=()
while getopts "r:n:p:o:T:" opt; do
  case $opt in
    r) REPLICAS=$OPTARG ;;
    n) COUNT=$OPTARG ;;
    p) PUB_ENV+=("$OPTARG") ;;
    o) OUT=$OPTARG ;;
    T) MAXT=$OPTARG ;;
    *) sed -n '2,/^set -u/p' "$0" | grep '^#'; exit 2 ;;
  esac
done
BIN=${BIN:-$ROOT/target/release}
OUT=${OUT:-/tmp/bench/order-service-$(date +%H%M%S)}
PREFIX=rtbench-service:
STREAM="${PREFIX}orders:requests"
mkdir -p "$OUT/pids"
NICE=(nice -n "${BENCH_NICE:-0}")

PIDS=()
SAMPLER=""
REDIS_OWN=""
stop_all() {
  touch "$OUT/.stop"
  [ -n "$SAMPLER" ] && wait "$SAMPLER" 2>/dev/null
  stop_pids
  [ -n "$REDIS_OWN" ] && kill -TERM "$REDIS_OWN" 2>/dev/null
  REDIS_OWN=""
  wait 2>/dev/null
}
trap stop_all EXIT
trap 'exit 130' INT TERM

wait_idle
machine before >"$OUT/machine.txt"
echo "idle_before=${idle}% waited=${waited}s" >>"$OUT/machine.txt"
start_private_redis
export REDIS
redis-cli -u "$REDIS" info server | tr -d '\r' | awk -F: '/^process_id:/{print $2}' >"$OUT/pids/redis.pid"

python3 "$ROOT/bench/orders_redis.py" prefill "$STREAM" "$COUNT" bench-probe 500 2>>"$OUT/prefill.log"
python3 "$ROOT/bench/orders_redis.py" commandstats "$OUT/commandstats-before.txt"
python3 "$ROOT/bench/orders_redis.py" sample "$OUT" "$STREAM" 0.25 &
SAMPLER=$!
{ printf 'bench/order_service.sh -r %s -n %s' "$REPLICAS" "$COUNT"
  for e in "${PUB_ENV[@]}"; do printf ' -p %q' "$e"; done; echo
  echo "git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet HEAD -- publisher wire service 2>/dev/null || echo '+dirty')"
  sha256sum "$BIN/publisher"
  echo "BENCH_NICE=${BENCH_NICE:-0} redis $REDIS ($(redis-server --version | cut -d' ' -f3))"; } >"$OUT/command.txt"

date +%s%3N >"$OUT/started_ms"
PUB_PORTS=()
for i in $(seq 1 "$REPLICAS"); do
  port=$(free_port)
  env PUBLISHER_LISTEN=127.0.0.1:$port PUBLISHER_REDIS_URL="$REDIS" PUBLISHER_CHANNEL_PREFIX="$PREFIX" \
    PUBLISHER_REPLICA_ID="bench-replica-$i" PUBLISHER_QUOTE_RATE=0 PUBLISHER_ORDER_RATE=0 \
    PUBLISHER_SYMBOLS="AAPL,MSFT" PUBLISHER_REQUEST_MAX_AGE_MS=3600000 "${PUB_ENV[@]}" \
    "${NICE[@]}" "$BIN/publisher" >"$OUT/publisher-$i.log" 2>&1 &
  PIDS+=($!)
  echo $! >"$OUT/pids/publisher-$i.pid"
  PUB_PORTS+=("$port")
done

# Drained: every request read and acknowledged, and every update written.
deadline=$(( $(date +%s) + MAXT ))
while [ "$(date +%s)" -lt "$deadline" ]; do
  info=$(redis-cli -u "$REDIS" xinfo groups "$STREAM" 2>/dev/null | tr -d '\r' | paste -sd' ')
  lag=$(echo "$info" | sed -n 's/.*lag \([0-9]*\).*/\1/p')
  pending=$(echo "$info" | sed -n 's/.*pending \([0-9]*\).*/\1/p')
  buffered=0
  for port in "${PUB_PORTS[@]}"; do
    b=$(curl -s -m 1 "http://127.0.0.1:$port/metrics" | awk '/^publisher_buffered_updates /{print int($2)}')
    buffered=$((buffered + ${b:-1}))
  done
  if [ "${lag:-1}" = 0 ] && [ "${pending:-1}" = 0 ] && [ "$buffered" = 0 ]; then break; fi
  sleep 0.25
done
date +%s%3N >"$OUT/drained_ms"
i=0
for port in "${PUB_PORTS[@]}"; do
  i=$((i + 1))
  curl -s -m 2 "http://127.0.0.1:$port/metrics" >"$OUT/metrics-publisher-$i.txt"
done
python3 "$ROOT/bench/orders_redis.py" commandstats "$OUT/commandstats-after.txt"
machine after >>"$OUT/machine.txt"
stop_all
trap - EXIT
python3 "$ROOT/bench/orders_analyze.py" service "$OUT"
