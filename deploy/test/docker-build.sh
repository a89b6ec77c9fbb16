# shellcheck shell=bash
# Sourced: docker_build ARGS... builds with BuildKit where this machine
# has it: buildx when installed, else a 20.10 client (Debian's docker.io,
# BuildKit built in) at /usr/bin/docker, else the classic builder. The
# Dockerfiles need nothing BuildKit-only, so all three give the same image.
docker_build() {
    if docker buildx version >/dev/null 2>&1; then
        docker buildx build --load "$@"
    elif [[ -x /usr/bin/docker ]] && /usr/bin/docker version --format '{{.Client.Version}}' 2>/dev/null | grep -q '^20\.'; then
        DOCKER_BUILDKIT=1 /usr/bin/docker build "$@"
    else
        DOCKER_BUILDKIT=0 docker build "$@"
    fi
}
