#!/usr/bin/env bash
# Instructions per message in Hub::ingest (the data path) with tracing
# off, on (default ratio) and on every message, and for the gateway
# before tracing (base): the ingest bench's child process under
# valgrind/callgrind, collecting only inside Hub::ingest and its callees
# (span creation and hand-off to the export queue included; the export
# thread's own work is not on the data path and is not counted).
# Instruction counts do not depend on what else runs on the machine.
#
#   BASE_BIN=/tmp/bench-tel/base BIN=/tmp/bench-tel/branch bench/tracing-instructions.sh [MESSAGES]
#
# BASE_BIN/ingest: the base tree's copy of the bench (bench/tracing.md says
# how); BIN/ingest: this tree's (cargo bench -p gateway --bench ingest
# --no-run prints its path); BIN/otlp-receiver. Needs valgrind.
set -eu
cd "$(dirname "$0")/.."
N=${1:-100000}
OUT=${OUT:-/tmp/bench/tracing-instructions-$(date +%H%M%S)}
mkdir -p "$OUT"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
GRPC=$(free_port); HTTP=$(free_port); QUERY=$(free_port)
"$BIN/otlp-receiver" --grpc 127.0.0.1:$GRPC --http 127.0.0.1:$HTTP --query 127.0.0.1:$QUERY >"$OUT/receiver.log" 2>&1 &
RECEIVER=$!
trap 'kill $RECEIVER 2>/dev/null' EXIT
sleep 0.5
run() { # name binary variant-env...
  local name=$1 bin=$2; shift 2
  env MESSAGES="$N" RUST_LOG=warn "$@" valgrind --tool=callgrind --toggle-collect='*Hub*ingest*' \
    --callgrind-out-file="$OUT/$name.callgrind" "$bin" >"$OUT/$name.out" 2>"$OUT/$name.err"
  local ir
  ir=$(grep -o 'Collected : [0-9]*' "$OUT/$name.err" | grep -o '[0-9]*$')
  echo "$name $(grep RESULT "$OUT/$name.out" | awk '{print $4}') $ir"
}
{
  run base "$BASE_BIN/ingest"
  run off "$BIN/ingest" INGEST_BENCH_VARIANT=off
  run on "$BIN/ingest" INGEST_BENCH_VARIANT=on OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$GRPC OTEL_EXPORTER_OTLP_PROTOCOL=grpc
  run all "$BIN/ingest" INGEST_BENCH_VARIANT=all OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$GRPC OTEL_EXPORTER_OTLP_PROTOCOL=grpc
} | tee "$OUT/counts.txt" | awk -v n="$N" '
  { ir[$1] = $3; spans[$1] = $2; order[NR] = $1 }
  END {
    printf "Hub::ingest, 50 subscribers, %d messages, instructions (callgrind)\n", n
    print "| variant | instructions / message | vs off | spans exported |"
    print "|---|---|---|---|"
    for (i = 1; i <= NR; i++) { v = order[i]
      printf "| %s | %.0f | %+.1f %% | %s |\n", v, ir[v] / n, (ir[v] / ir["off"] - 1) * 100, spans[v] }
  }'
