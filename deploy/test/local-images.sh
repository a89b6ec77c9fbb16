#!/usr/bin/env bash
# Makes the images the compose test and the k8s check need when no image
# registry can be reached, from what this machine has: the Debian mirror
# apt uses, the host's Rust toolchain and CA bundle, and Debian packages
# installed inside containers.
#
#   deploy/test/local-images.sh base      debian:bookworm-slim (docker pull, else debootstrap)
#   deploy/test/local-images.sh rust      the Rust builder (docker pull rust:1-bookworm, else host toolchain)
#   deploy/test/local-images.sh standins  redis, haproxy, prometheus, OTLP receiver, grafana stand-ins
#   deploy/test/local-images.sh all       all three
#
# The base and the builder are made only when missing; the stand-ins are
# rebuilt from the layer cache every time. Prints nothing on stdout
# but the image names it settled on, as VAR=value lines (sourced by
# compose-test.sh): RUST_IMAGE, BASE_IMAGE and the stand-ins' names.
#
# Stand-ins, and why (the compose file names the official images; only
# the test's override file, deploy/test/compose.local.yml, swaps these in):
#   rtgate-local/redis       Debian's redis-server package (7.0) for redis:7.4-bookworm
#   rtgate-local/haproxy     Debian's haproxy package (2.6) for haproxy:3.0-bookworm
#   rtgate-local/prometheus  Debian's prometheus package (2.42) for prom/prometheus
#   rtgate-local/otlp        a small OTLP receiver (deploy/test/images/otlp_receiver.py)
#                            answering Jaeger's query API, for jaegertracing/jaeger
#   rtgate-local/grafana     an HTTP stand-in that checks the provisioning files, for grafana/grafana
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
IMAGES="$HERE/images"
BASE_IMAGE=debian:bookworm-slim
PULL_TIMEOUT=${LOCAL_IMAGES_PULL_TIMEOUT:-60}

log() { printf 'local-images: %s\n' "$*" >&2; }
die() {
    log "$*"
    exit 1
}
have() { docker image inspect "$1" >/dev/null 2>&1; }

# shellcheck source=docker-build.sh
source "$HERE/docker-build.sh"

try_pull() { timeout "$PULL_TIMEOUT" docker pull -q "$1" >/dev/null 2>&1; }

# The Debian mirror apt uses for bookworm (whatever the sources format).
apt_mirror() {
    local url
    url="$(apt-cache policy 2>/dev/null | awk '$3 ~ /^bookworm\/main/ { print $2; exit }' || true)"
    printf '%s' "${url:-http://deb.debian.org/debian}"
}

make_base() {
    have "$BASE_IMAGE" && return 0
    log "no $BASE_IMAGE: trying docker pull"
    try_pull "$BASE_IMAGE" && return 0
    command -v debootstrap >/dev/null || die "no registry and no debootstrap (apt-get install debootstrap)"
    local mirror dir
    mirror="$(apt_mirror)"
    dir="$(mktemp -d /tmp/rtgate-rootfs.XXXXXX)"
    log "debootstrap --variant=minbase bookworm from $mirror (about a minute)"
    if ! debootstrap --variant=minbase bookworm "$dir" "$mirror" >"$dir.log" 2>&1; then
        tail -n 20 "$dir.log" >&2
        rm -rf "$dir" "$dir.log"
        die "debootstrap failed"
    fi
    # The slim image's apt sources, minus the package cache debootstrap left.
    printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$mirror" "$mirror" >"$dir/etc/apt/sources.list"
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    tar -C "$dir" -c . | docker import -c 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$dir" "$dir.log"
    log "made $BASE_IMAGE"
}

RUST_OFFICIAL=rust:1-bookworm
RUST_LOCAL=rtgate-local/rust:1-bookworm

# Prints the builder image to use.
make_rust() {
    if have "$RUST_OFFICIAL"; then
        printf '%s' "$RUST_OFFICIAL"
        return 0
    fi
    if have "$RUST_LOCAL"; then
        printf '%s' "$RUST_LOCAL"
        return 0
    fi
    log "no $RUST_OFFICIAL: trying docker pull"
    if try_pull "$RUST_OFFICIAL"; then
        printf '%s' "$RUST_OFFICIAL"
        return 0
    fi
    make_base
    local sysroot ctx ca=/etc/ssl/certs/ca-certificates.crt
    sysroot="$(rustc +stable --print sysroot 2>/dev/null || rustc --print sysroot)" ||
        die "no registry and no host Rust toolchain to make a builder from"
    [[ -f $ca ]] || die "no CA bundle at $ca"
    log "making $RUST_LOCAL from $sysroot (this host's toolchain, without its docs)"
    ctx="$(mktemp -d /tmp/rtgate-rust-ctx.XXXXXX)"
    cp "$IMAGES/rust.Dockerfile" "$ctx/Dockerfile"
    cp "$ca" "$ctx/ca-certificates.crt"
    mkdir "$ctx/toolchain"
    tar -C "$sysroot" --exclude=./share/doc -c . | tar -C "$ctx/toolchain" -x
    docker_build -q -t "$RUST_LOCAL" --build-arg "BASE_IMAGE=$BASE_IMAGE" "$ctx" >/dev/null ||
        { rm -rf "$ctx"; die "building $RUST_LOCAL failed"; }
    rm -rf "$ctx"
    printf '%s' "$RUST_LOCAL"
}

# standin NAME: builds rtgate-local/NAME from images/NAME.Dockerfile,
# every time (the layer cache makes an unchanged one a second's work, and
# a changed stand-in script is picked up).
standin() {
    local name=$1 tag="rtgate-local/$1"
    docker_build -q -t "$tag" --build-arg "BASE_IMAGE=$BASE_IMAGE" -f "$IMAGES/$name.Dockerfile" "$IMAGES" >/dev/null ||
        die "building $tag failed"
}

make_standins() {
    make_base
    local name
    for name in redis haproxy prometheus py; do standin "$name"; done
}

case "${1:-all}" in
    base)
        make_base
        printf 'BASE_IMAGE=%s\n' "$BASE_IMAGE"
        ;;
    rust)
        make_base
        printf 'RUST_IMAGE=%s\nBASE_IMAGE=%s\n' "$(make_rust)" "$BASE_IMAGE"
        ;;
    standins)
        make_standins
        ;;
    all)
        make_base
        rust="$(make_rust)"
        make_standins
        printf 'RUST_IMAGE=%s\nBASE_IMAGE=%s\n' "$rust" "$BASE_IMAGE"
        ;;
    *)
        sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
        exit 2
        ;;
esac
