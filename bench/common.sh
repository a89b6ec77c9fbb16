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
