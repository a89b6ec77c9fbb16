#!/usr/bin/env bash
# A whole rtgate system on one machine, without containers: a redis-server
# of its own, three gateway nodes, the publisher (quote feed, simulated
# orders, order service) and haproxy in front, all on 127.0.0.1.
#
#   deploy/local-cluster.sh up       build (release), start whatever is not running
#   deploy/local-cluster.sh down     stop what `up` started, and only that
#   deploy/local-cluster.sh status   each process, its pid and its /readyz
#
# Ports and rates (environment, with defaults):
#   CLUSTER_LB_PORT=8080              haproxy: ws://127.0.0.1:8080/ws, POST /publish
#   CLUSTER_GATEWAY_PORTS="8081 8082 8083"   one gateway node per port
#   CLUSTER_PUBLISHER_PORT=8090       the publisher's HTTP API
#   CLUSTER_REDIS_PORT=6390           the cluster's redis-server
#   CLUSTER_STATS_PORT=8404           haproxy's stats page
#   CLUSTER_QUOTE_RATE=100            quotes per second over 20 symbols
#   CLUSTER_ORDER_RATE=2              simulated orders per second ...
#   CLUSTER_ACCOUNTS=10               ... over accounts acct-1 … acct-10
#   CLUSTER_DRAIN_MS=5000             gateway drain window on SIGTERM
#   CLUSTER_NO_BUILD=1                skip `cargo build --release`
#
# `up` records these settings in .run/cluster.env; `status`, `down` and a
# later `up` use the recorded ones until `down` removes the file.
#
# Pids and logs go to .run/ (<name>.pid, <name>.log). A pid file holds the
# pid and the process's start time; `down` signals a pid only while both
# still match, so it never touches a process it did not start, even if
# the pid was reused.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN="$ROOT/.run"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
# The settings `up` started the cluster with: `status` and `down` (and a
# second `up`) use them, whatever the environment says now.
SAVED="$RUN/cluster.env"
if [[ -f $SAVED ]]; then
    # shellcheck source=/dev/null
    source "$SAVED"
fi

LB_PORT="${CLUSTER_LB_PORT:-8080}"
read -r -a GATEWAY_PORTS <<<"${CLUSTER_GATEWAY_PORTS:-8081 8082 8083}"
PUBLISHER_PORT="${CLUSTER_PUBLISHER_PORT:-8090}"
REDIS_PORT="${CLUSTER_REDIS_PORT:-6390}"
STATS_PORT="${CLUSTER_STATS_PORT:-8404}"
QUOTE_RATE="${CLUSTER_QUOTE_RATE:-100}"
ORDER_RATE="${CLUSTER_ORDER_RATE:-2}"
ACCOUNTS="${CLUSTER_ACCOUNTS:-10}"
DRAIN_MS="${CLUSTER_DRAIN_MS:-5000}"

REDIS_URL="redis://127.0.0.1:$REDIS_PORT"

say() { printf '%s\n' "$*"; }
die() {
    printf 'local-cluster: %s\n' "$*" >&2
    exit 1
}

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

# Names of the processes, in start order.
names() {
    local i
    printf '%s\n' redis
    for i in "${!GATEWAY_PORTS[@]}"; do printf 'gateway-%d\n' "$((i + 1))"; done
    printf '%s\n' publisher haproxy
}

pidfile() { printf '%s/%s.pid' "$RUN" "$1"; }
logfile() { printf '%s/%s.log' "$RUN" "$1"; }

# Start time of process PID (field 22 of /proc/PID/stat, in clock ticks
# since boot): with the pid, it names one process for good.
start_time() {
    local stat rest f
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    rest="${stat##*) }"
    read -r -a f <<<"$rest"
    [[ ${f[0]} != Z ]] || return 1 # exited, not yet reaped
    printf '%s' "${f[19]}"
}

# The pid of NAME if the process `up` started for it still runs (same pid
# and same start time as recorded), else nothing.
our_pid() {
    local file pid started now
    file="$(pidfile "$1")"
    [[ -f $file ]] || return 1
    read -r pid started <"$file" || true
    [[ $pid =~ ^[0-9]+$ && -n $started ]] || return 1
    now="$(start_time "$pid")" || return 1
    [[ $now == "$started" ]] || return 1
    printf '%s' "$pid"
}

port_busy() { (: <>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Installs a Debian package when its command is missing.
need() {
    local cmd=$1 pkg=$2
    command -v "$cmd" >/dev/null 2>&1 && return 0
    [[ -x /usr/sbin/$cmd ]] && return 0
    [[ $(id -u) -eq 0 ]] || die "$cmd is missing: apt-get install $pkg (as root)"
    say "==> installing $pkg (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "$pkg" >/dev/null
}

haproxy_bin() { command -v haproxy 2>/dev/null || printf '/usr/sbin/haproxy'; }

# start NAME PORT COMMAND...: runs COMMAND in the background with its
# output in .run/NAME.log, unless NAME already runs.
start() {
    local name=$1 port=$2 pid
    shift 2
    if pid="$(our_pid "$name")"; then
        say "    $name already running (pid $pid)"
        return 0
    fi
    port_busy "$port" && die "port $port (for $name) is taken by a process this script did not start" \
        "(\`down\` stops what \`up\` started so far)"
    nohup "$@" >>"$(logfile "$name")" 2>&1 </dev/null &
    pid=$!
    printf '%s %s\n' "$pid" "$(start_time "$pid")" >"$(pidfile "$name")"
    say "    $name started (pid $pid) on 127.0.0.1:$port"
}

# wait_until NAME WHAT COMMAND...: polls COMMAND for up to 30 s; fails
# (showing the log) if NAME dies meanwhile.
wait_until() {
    local name=$1 what=$2 _
    shift 2
    for _ in $(seq 300); do
        "$@" >/dev/null 2>&1 && return 0
        our_pid "$name" >/dev/null || {
            tail -n 20 "$(logfile "$name")" >&2 || true
            die "$name exited before $what (log: $(logfile "$name"))"
        }
        sleep 0.1
    done
    tail -n 20 "$(logfile "$name")" >&2 || true
    die "$name: no $what after 30 s (log: $(logfile "$name"))"
}

http_ok() { curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$1$2"; }

haproxy_config() {
    local i
    cat <<EOF
# Generated by deploy/local-cluster.sh; rewritten on every \`up\`.
global
    maxconn 4000
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog
    option dontlognull
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    # An upgraded WebSocket is a tunnel: idle quotes topics must not be cut.
    timeout tunnel 1h
    timeout client-fin 5s
    timeout server-fin 5s
    # A refused connect (a node just killed) is retried on another node.
    retries 3
    option redispatch 1

frontend public
    bind 127.0.0.1:$LB_PORT
    acl is_publish path /publish
    use_backend publisher if is_publish
    default_backend gateways

backend gateways
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 1s fastinter 250ms downinter 1s fall 2 rise 2
EOF
    for i in "${!GATEWAY_PORTS[@]}"; do
        printf '    server node-%d 127.0.0.1:%s check\n' "$((i + 1))" "${GATEWAY_PORTS[$i]}"
    done
    cat <<EOF

backend publisher
    option httpchk GET /readyz
    http-check expect status 200
    server publisher 127.0.0.1:$PUBLISHER_PORT check inter 1s

listen stats
    bind 127.0.0.1:$STATS_PORT
    stats enable
    stats uri /
    stats refresh 2s
EOF
}

cmd_up() {
    need redis-server redis-server
    need redis-cli redis-tools
    need curl curl
    need haproxy haproxy
    mkdir -p "$RUN/redis"
    if [[ ! -f $SAVED ]]; then
        {
            printf 'CLUSTER_LB_PORT=%q\n' "$LB_PORT"
            printf 'CLUSTER_GATEWAY_PORTS=%q\n' "${GATEWAY_PORTS[*]}"
            printf 'CLUSTER_PUBLISHER_PORT=%q\n' "$PUBLISHER_PORT"
            printf 'CLUSTER_REDIS_PORT=%q\n' "$REDIS_PORT"
            printf 'CLUSTER_STATS_PORT=%q\n' "$STATS_PORT"
            printf 'CLUSTER_QUOTE_RATE=%q\n' "$QUOTE_RATE"
            printf 'CLUSTER_ORDER_RATE=%q\n' "$ORDER_RATE"
            printf 'CLUSTER_ACCOUNTS=%q\n' "$ACCOUNTS"
            printf 'CLUSTER_DRAIN_MS=%q\n' "$DRAIN_MS"
        } >"$SAVED"
    fi
    if [[ ${CLUSTER_NO_BUILD:-} != 1 ]]; then
        say "==> cargo build --release -p gateway -p publisher"
        (cd "$ROOT" && cargo build --release -p gateway -p publisher)
    fi
    [[ -x $BIN/gateway && -x $BIN/publisher ]] || die "no release binaries in $BIN (build them, or unset CLUSTER_NO_BUILD)"

    say "==> redis-server"
    start redis "$REDIS_PORT" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
        --save "" --appendonly no --dir "$RUN/redis" --daemonize no --logfile ""
    wait_until redis "PING" redis-cli -p "$REDIS_PORT" ping

    # Everything here listens on 127.0.0.1 only, so POST /publish may go
    # without a key (publish_insecure); never do that on a public address.
    say "==> gateway nodes"
    local i
    for i in "${!GATEWAY_PORTS[@]}"; do
        local n=$((i + 1)) port=${GATEWAY_PORTS[$i]}
        start "gateway-$n" "$port" env \
            GATEWAY_LISTEN="127.0.0.1:$port" \
            GATEWAY_NODE_ID="node-$n" \
            GATEWAY_REDIS_URL="$REDIS_URL" \
            GATEWAY_DRAIN_MS="$DRAIN_MS" \
            GATEWAY_PUBLISH_INSECURE=true \
            RUST_LOG="${RUST_LOG:-info,redis=error}" NO_COLOR=1 \
            "$BIN/gateway"
    done
    for i in "${!GATEWAY_PORTS[@]}"; do
        wait_until "gateway-$((i + 1))" "/readyz 200" http_ok "${GATEWAY_PORTS[$i]}" /readyz
    done

    say "==> publisher"
    start publisher "$PUBLISHER_PORT" env \
        PUBLISHER_LISTEN="127.0.0.1:$PUBLISHER_PORT" \
        PUBLISHER_REDIS_URL="$REDIS_URL" \
        PUBLISHER_SYMBOL_COUNT=20 \
        PUBLISHER_QUOTE_RATE="$QUOTE_RATE" \
        PUBLISHER_ACCOUNTS="$ACCOUNTS" \
        PUBLISHER_ORDER_RATE="$ORDER_RATE" \
        PUBLISHER_PUBLISH_INSECURE=true \
        RUST_LOG="${RUST_LOG:-info,redis=error}" NO_COLOR=1 \
        "$BIN/publisher"
    wait_until publisher "/readyz 200" http_ok "$PUBLISHER_PORT" /readyz

    say "==> haproxy"
    haproxy_config >"$RUN/haproxy.cfg"
    "$(haproxy_bin)" -c -q -f "$RUN/haproxy.cfg" || die "haproxy refused $RUN/haproxy.cfg"
    start haproxy "$LB_PORT" "$(haproxy_bin)" -db -f "$RUN/haproxy.cfg"
    wait_until haproxy "a ready gateway behind it" http_ok "$LB_PORT" /readyz

    say ""
    say "up: ws://127.0.0.1:$LB_PORT/ws (haproxy, leastconn over ${#GATEWAY_PORTS[@]} nodes)"
    say "    POST http://127.0.0.1:$LB_PORT/publish (routed to the publisher)"
    say "    haproxy stats: http://127.0.0.1:$STATS_PORT/   logs: $RUN/*.log"
    say "    deploy/local-cluster.sh status | down"
}

# stop NAME SECONDS: SIGTERM (unless already sent), then SIGKILL if it
# still runs after SECONDS.
stop() {
    local name=$1 grace=$2 pid _
    if ! pid="$(our_pid "$name")"; then
        if [[ -f $(pidfile "$name") && ${3:-} == already-signalled ]]; then
            rm -f "$(pidfile "$name")"
            say "    $name stopped"
        elif [[ -f $(pidfile "$name") ]]; then
            rm -f "$(pidfile "$name")"
            say "    $name not running (stale pid file removed)"
        else
            say "    $name not running"
        fi
        return 0
    fi
    [[ ${3:-} == already-signalled ]] || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq "$((grace * 10))"); do
        our_pid "$name" >/dev/null || break
        sleep 0.1
    done
    if our_pid "$name" >/dev/null; then
        say "    $name still running after ${grace}s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$(pidfile "$name")"
    say "    $name stopped (pid $pid)"
}

cmd_down() {
    local drain_s=$(((DRAIN_MS + 999) / 1000 + 3)) name pid
    say "==> stopping what up started"
    # The nodes first, all at once: each closes its clients with 1012 over
    # its drain window while the balancer and the backplane still run.
    while read -r name; do
        if [[ $name == gateway-* ]] && pid="$(our_pid "$name")"; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done < <(names)
    while read -r name; do
        if [[ $name == gateway-* ]]; then
            stop "$name" "$drain_s" already-signalled
        fi
    done < <(names)
    stop haproxy 5
    stop publisher 10
    stop redis 5
    rm -f "$SAVED"
}

cmd_status() {
    local name pid port detail all_ok=0 i=0
    mkdir -p "$RUN"
    while read -r name; do
        case $name in
            redis) port=$REDIS_PORT ;;
            gateway-*)
                port=${GATEWAY_PORTS[$i]}
                i=$((i + 1))
                ;;
            publisher) port=$PUBLISHER_PORT ;;
            haproxy) port=$LB_PORT ;;
        esac
        if ! pid="$(our_pid "$name")"; then
            if [[ -f $(pidfile "$name") ]]; then
                printf '%-10s %-8s %-14s %s\n' "$name" "DEAD" "" "pid file left; \`up\` restarts it"
            else
                printf '%-10s %-8s\n' "$name" "stopped"
            fi
            all_ok=1
            continue
        fi
        case $name in
            redis) detail="$(redis-cli -p "$port" ping 2>&1 || true)" ;;
            *)
                detail="$(curl -sS -m 2 -w ' (%{http_code})' "http://127.0.0.1:$port/readyz" 2>&1 || true)"
                [[ $detail == *"(200)" ]] || all_ok=1
                ;;
        esac
        printf '%-10s %-8s %-14s %-16s %s\n' "$name" "running" "pid $pid" "127.0.0.1:$port" "$detail"
    done < <(names)
    if our_pid haproxy >/dev/null; then
        say ""
        say "haproxy's view (http://127.0.0.1:$STATS_PORT/):"
        # Columns 1, 2, 5 and 18 of the CSV: proxy, server, current sessions, status.
        curl -sS -m 2 "http://127.0.0.1:$STATS_PORT/;csv" 2>/dev/null |
            awk -F, '$1 != "# pxname" && $2 != "FRONTEND" && $1 != "stats" && $1 != "public" {
                printf "  %-10s %-10s sessions %-5s %s\n", $1, $2, $5, $18 }' || true
    fi
    return "$all_ok"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) usage ;;
esac
