#!/usr/bin/env bash
# The compose stack for real, on this machine's Docker engine: makes the
# local base images when missing, builds the three images from the
# Dockerfile, brings docker-compose.yml up under a project name of its own
# with every host port free-picked, runs deploy/test/check_stack.py
# through the balancer (page, quotes, order, scale to 3, metrics, kill a
# gateway, load, traces, dashboard), and removes the containers, networks and volumes it made,
# whatever happens. The images it built stay, as the build cache.
#
#   deploy/test/compose-test.sh
#
# Environment:
#   COMPOSE="docker compose"        the compose to test with (default: v2 if
#                                   installed, else docker-compose v1)
#   COMPOSE_TEST_SKIP=page,traces   checks to skip (each is reported as skipped;
#                                   names in deploy/test/check_stack.py)
#   RTGATE_TEST_PYTHON=python3      a Python with `websockets` and `yaml`
#   RTGATE_TEST_JAEGER_IMAGE=...    the OTLP receiver standing in for Jaeger
#                                   when jaegertracing/jaeger cannot be had
#
# Official images that can be neither found nor pulled (no registry here)
# are replaced by local stand-ins (deploy/test/local-images.sh) through an
# override file made for the run; the run prints each replacement.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/deploy/test"
PY=${RTGATE_TEST_PYTHON:-python3}
TAG=compose-test
STARTED=$SECONDS

log() { printf '\n==> compose-test: %s (%ds)\n' "$*" "$((SECONDS - STARTED))"; }
die() {
    printf 'compose-test: %s\n' "$*" >&2
    exit 1
}

docker info >/dev/null 2>&1 || die "no Docker engine answers (start dockerd first: deploy/test/docker-engine.sh)"
"$PY" -c 'import websockets, yaml' 2>/dev/null || die "$PY lacks websockets or PyYAML (pip install -r deploy/test/requirements.txt)"

if [[ -n ${COMPOSE:-} ]]; then
    read -r -a COMPOSE_CMD <<<"$COMPOSE"
elif docker compose version >/dev/null 2>&1; then
    COMPOSE_CMD=(docker compose)
elif command -v docker-compose >/dev/null; then
    COMPOSE_CMD=(docker-compose)
else
    die "neither \`docker compose\` nor docker-compose is installed"
fi
log "with $("${COMPOSE_CMD[@]}" version | head -n1)"

# shellcheck source=docker-build.sh
source "$HERE/docker-build.sh"

log "base images"
eval "$("$HERE/local-images.sh" all)"
printf '    builder %s, runtime base %s\n' "$RUST_IMAGE" "$BASE_IMAGE"

WORK="$(mktemp -d /tmp/rtgate-compose-test.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

log "building rtgate/{gateway,publisher,loadgen}:$TAG from the Dockerfile"
for target in gateway publisher loadgen; do
    build_started=$SECONDS
    if ! docker_build --target "$target" -t "rtgate/$target:$TAG" \
        --build-arg "RUST_IMAGE=$RUST_IMAGE" --build-arg "BASE_IMAGE=$BASE_IMAGE" "$ROOT" >"$WORK/build-$target.log" 2>&1; then
        tail -n 60 "$WORK/build-$target.log" >&2
        die "docker build --target $target failed"
    fi
    printf '    %-9s %ds\n' "$target" "$((SECONDS - build_started))"
done

PROJECT="rtgate-ct-$$"
export RTGATE_TAG=$TAG RTGATE_IMAGE_PREFIX=rtgate RTGATE_BIND=127.0.0.1
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
RTGATE_PORT="$(free_port)" RTGATE_STATS_PORT="$(free_port)" RTGATE_JAEGER_PORT="$(free_port)"
RTGATE_PROMETHEUS_PORT="$(free_port)" RTGATE_GRAFANA_PORT="$(free_port)"
export RTGATE_PORT RTGATE_STATS_PORT RTGATE_JAEGER_PORT RTGATE_PROMETHEUS_PORT RTGATE_GRAFANA_PORT

# The stand-ins: service, the stand-in image, its command (empty: the
# image's own). Used only for a service whose official image is missing.
standins() {
    printf '%s\n' \
        "redis rtgate-local/redis" \
        "lb rtgate-local/haproxy" \
        "jaeger ${RTGATE_TEST_JAEGER_IMAGE:-rtgate-local/py}" \
        "prometheus rtgate-local/prometheus" \
        "grafana rtgate-local/py python3 /opt/standins/grafana_standin.py"
}
describe() {
    case $1 in
        redis) echo "Debian's redis-server 7.0" ;;
        lb) echo "Debian's haproxy 2.6" ;;
        jaeger) [[ -n ${RTGATE_TEST_JAEGER_IMAGE:-} ]] && echo "RTGATE_TEST_JAEGER_IMAGE" || echo "OTLP receiver with Jaeger's query API, deploy/test/images/otlp_receiver.py" ;;
        prometheus) echo "Debian's prometheus 2.42" ;;
        grafana) echo "HTTP stand-in, deploy/test/images/grafana_standin.py: no dashboards rendered" ;;
    esac
}
official_image() {
    "${COMPOSE_CMD[@]}" -f "$ROOT/docker-compose.yml" config |
        "$PY" -c 'import sys, yaml; print(yaml.safe_load(sys.stdin)["services"][sys.argv[1]]["image"])' "$1"
}
OVERRIDE="$WORK/compose.standins.yml"
printf '# Made by deploy/test/compose-test.sh for one run: stand-ins for\n# official images this machine cannot get.\nservices:\n' >"$OVERRIDE"
log "images of the other services"
while read -r service standin command; do
    image="$(official_image "$service")"
    if docker image inspect "$image" >/dev/null 2>&1 || timeout 60 docker pull -q "$image" >/dev/null 2>&1; then
        printf '    %-10s %s\n' "$service" "$image"
        continue
    fi
    printf '    %-10s %s cannot be had here: STAND-IN %s (%s)\n' "$service" "$image" "$standin" "$(describe "$service")"
    printf '  %s:\n    image: %s\n' "$service" "$standin" >>"$OVERRIDE"
    if [[ -n $command ]]; then
        printf '    command: [%s]\n' "${command// /, }" >>"$OVERRIDE"
    fi
done < <(standins)

COMPOSE_RUN=("${COMPOSE_CMD[@]}" -p "$PROJECT" --project-directory "$ROOT" -f "$ROOT/docker-compose.yml" -f "$OVERRIDE")
compose() { "${COMPOSE_RUN[@]}" "$@"; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if ((rc != 0)); then
        printf '\ncompose-test: failed (exit %d); the stack as it was:\n' "$rc"
        compose ps 2>&1 || true
        compose logs --no-color --tail 40 2>&1 | tail -n 200 || true
    fi
    log "tearing down project $PROJECT"
    compose --profile load down -v --remove-orphans -t 5 >/dev/null 2>&1 || compose down -v --remove-orphans -t 5 || true
    # Whatever compose left (it should leave nothing): by the project label.
    docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" | xargs -r docker rm -f >/dev/null 2>&1 || true
    docker network ls -q --filter "label=com.docker.compose.project=$PROJECT" | xargs -r docker network rm >/dev/null 2>&1 || true
    docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT" | xargs -r docker volume rm >/dev/null 2>&1 || true
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "up (project $PROJECT, entry port 127.0.0.1:$RTGATE_PORT)"
compose up -d --no-build

log "waiting for the balancer to reach a ready gateway"
ready=0
for _ in $(seq 120); do
    if curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$RTGATE_PORT/readyz" 2>/dev/null; then
        ready=1
        break
    fi
    sleep 1
done
((ready)) || die "no ready gateway behind http://127.0.0.1:$RTGATE_PORT/readyz after 120 s"

log "checks through http://127.0.0.1:$RTGATE_PORT"
compose_json="$("$PY" -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "${COMPOSE_RUN[@]}")"
"$PY" "$HERE/check_stack.py" \
    --url "http://127.0.0.1:$RTGATE_PORT" \
    --stats "http://127.0.0.1:$RTGATE_STATS_PORT" \
    --jaeger "http://127.0.0.1:$RTGATE_JAEGER_PORT" \
    --prometheus "http://127.0.0.1:$RTGATE_PROMETHEUS_PORT" \
    --grafana "http://127.0.0.1:$RTGATE_GRAFANA_PORT" \
    --compose-cmd "$compose_json"
log "done"
