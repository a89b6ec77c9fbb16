# Shared by bench/run.sh and bench/orders.sh (sourced, not run): what the
# machine is, and waiting until other users of it are quiet.

# One line: cores, CPU model, a label, the load average and the time.
machine() {
  echo "nproc=$(nproc) cpu=\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')\" $1 loadavg=\"$(cut -d' ' -f1-3 /proc/loadavg)\" at $(date -u +%FT%TZ)"
}

# "<all ticks> <idle+iowait ticks>" from /proc/stat.
cpu_ticks() { awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6}' /proc/stat; }

# Other users of the machine (builds, tests) skew every figure: waits (at
# most IDLE_WAIT s, default 180) until the CPUs were at least IDLE_MIN %
# idle (default 70) over 2 s; sets $idle and $waited for the record.
wait_idle() {
  local t0 i0 t1 i1
  IDLE_WAIT=${IDLE_WAIT:-180}
  IDLE_MIN=${IDLE_MIN:-70}
  waited=0
  while :; do
    read -r t0 i0 < <(cpu_ticks); sleep 2; read -r t1 i1 < <(cpu_ticks)
    idle=$(( (i1 - i0) * 100 / (t1 - t0 + 1) ))
    waited=$((waited + 2))
    [ "$idle" -ge "$IDLE_MIN" ] || [ "$waited" -ge "$IDLE_WAIT" ] && break
  done
}

# A free TCP port on 127.0.0.1 (the kernel's pick).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Waits until http://127.0.0.1:$1/readyz answers 200; else prints the
# tail of $OUT/$2.log and exits.
wait_ready() {
  for _ in $(seq 1 80); do
    curl -s -m 1 -o /dev/null -f "http://127.0.0.1:$1/readyz" && return 0
    sleep 0.25
  done
  echo "$2 on port $1 not ready; its log:" >&2
  tail -20 "$OUT/$2.log" >&2
  exit 1
}

# Starts a private redis-server (no persistence) on a free port with its
# log in $OUT; sets REDIS_OWN (its pid) and REDIS (its URL). $NICE
# (an array, possibly empty) prefixes the command.
start_private_redis() {
  local rport
  rport=$(free_port)
  "${NICE[@]}" redis-server --bind 127.0.0.1 --port "$rport" --save "" --appendonly no \
    --dir "$OUT" >"$OUT/redis.log" 2>&1 &
  REDIS_OWN=$!
  REDIS=redis://127.0.0.1:$rport
  for _ in $(seq 1 40); do redis-cli -p "$rport" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "private redis-server on $rport did not start" >&2
  exit 1
}

# Stops the pids in PIDS: SIGTERM (they drain), then SIGKILL after 20 s.
stop_pids() {
  local p alive
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for _ in $(seq 1 80); do
    alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.25
  done
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
  PIDS=()
}
