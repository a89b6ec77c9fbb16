#!/usr/bin/env bash
# Makes sure a Docker engine answers: when none does, starts dockerd in
# the background (no systemd needed; its log in /tmp/rtgate-dockerd.log)
# and waits up to 60 s for `docker info`. Exit 0: an engine answers;
# 1: none could be started, the reason on stderr.
set -uo pipefail
docker info >/dev/null 2>&1 && exit 0
command -v dockerd >/dev/null 2>&1 || { echo "docker-engine: no dockerd installed (apt-get install docker.io)" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || { echo "docker-engine: no engine answers and starting dockerd needs root" >&2; exit 1; }
log=/tmp/rtgate-dockerd.log
echo "docker-engine: starting dockerd (log: $log)" >&2
nohup dockerd >>"$log" 2>&1 </dev/null &
pid=$!
for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && exit 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
done
echo "docker-engine: dockerd did not come up; its log ends:" >&2
tail -n 20 "$log" >&2
exit 1
