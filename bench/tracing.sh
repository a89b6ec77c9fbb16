#!/usr/bin/env bash
# The cost of tracing, measured in one run (bench/tracing.md): fan-out of
# 5,000 subscribers over 100 topics on one node (bench/README.md (b)), at
# a CPU-per-delivery point and a throughput point, for four gateways, runs
# interleaved so every variant sees the same machine:
#
#   base  the gateway before tracing was added (BASE_BIN)
#   off   this gateway, no OTLP endpoint (the default)
#   on    this gateway exporting over OTLP/gRPC to a local receiver
#         (testkit's otlp-receiver), default ratios (1 % of quotes)
#   all   as on, with every message traced (GATEWAY_TRACE_QUOTE_RATIO=1)
#
#   BASE_BIN=/tmp/bench-tel/base BIN=/tmp/bench-tel/branch bench/tracing.sh [REPS] [OUTDIR]
#
# BASE_BIN and BIN each hold gateway and loadgen (use the same loadgen in
# both); BIN also holds otlp-receiver. Then:  bench/median.py OUTDIR/*
set -u
cd "$(dirname "$0")/.."
REPS=${1:-3}
OUT=${2:-/tmp/bench/tracing-$(date +%H%M%S)}
BASE_BIN=${BASE_BIN:?BASE_BIN: the gateway without tracing}
BIN=${BIN:?BIN: this gateway and otlp-receiver}
export IDLE_WAIT=${IDLE_WAIT:-30}
# A prefix of its own: other runs on the same Redis must not mix in.
export PREFIX=${PREFIX:-rtbench-tracing-$$:}
mkdir -p "$OUT"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
GRPC=$(free_port); HTTP=$(free_port); QUERY=$(free_port)
"$BIN/otlp-receiver" --grpc 127.0.0.1:$GRPC --http 127.0.0.1:$HTTP --query 127.0.0.1:$QUERY \
  --max-spans 10000 >"$OUT/receiver.log" 2>&1 &
RECEIVER=$!
trap 'kill $RECEIVER 2>/dev/null' EXIT
ON=(-e OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$GRPC -e OTEL_EXPORTER_OTLP_PROTOCOL=grpc)

LOAD=(-c 5000 --ramp 5000 -k 1 --quote-topics 100 --dist uniform
  --publish-redis redis://127.0.0.1:6379 --redis-seq local --publish-conns 10 -d 10s --workers 2)
for rep in $(seq 1 "$REPS"); do
  for rate in 1000 8000; do
    for variant in base off on all; do
      case $variant in
        base) bin=$BASE_BIN; extra=() ;;
        off) bin=$BIN; extra=() ;;
        on) bin=$BIN; extra=("${ON[@]}") ;;
        all) bin=$BIN; extra=("${ON[@]}" -e GATEWAY_TRACE_QUOTE_RATIO=1) ;;
      esac
      dir="$OUT/r$rate-$variant-$rep"
      echo "== $dir"
      BIN=$bin bench/run.sh -o "$dir" "${extra[@]}" -- "${LOAD[@]}" --publish-rate "$rate"
      if [ "$variant" = on ] || [ "$variant" = all ]; then
        curl -s -m 2 "http://127.0.0.1:$QUERY/spans" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)), "spans held by the receiver")' >"$dir/receiver.txt"
        grep -h '^trace_' "$dir"/metrics-after-*.txt >>"$dir/receiver.txt"
        curl -s -m 2 -X DELETE "http://127.0.0.1:$QUERY/spans"
      fi
    done
  done
done
