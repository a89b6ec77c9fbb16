# Images of the three binaries, built from source. One file, one build
# stage, three runtime targets: the workspace compiles once and each image
# takes its own binary.
#
#   docker build --target gateway   -t rtgate/gateway .
#   docker build --target publisher -t rtgate/publisher .
#   docker build --target loadgen   -t rtgate/loadgen .
#
# Works with BuildKit and with the classic builder (no cache mounts, no
# `# syntax=` line: nothing is fetched but the two base images and the
# crates). Dependencies are compiled in a layer of their own (cargo-chef),
# rebuilt only when a Cargo.toml or Cargo.lock changes; a source change
# recompiles the workspace crates alone.
#
# Where no registry is reachable, pass local base images:
#   --build-arg RUST_IMAGE=... --build-arg BASE_IMAGE=...
# (deploy/test/local-images.sh makes both).

ARG RUST_IMAGE=rust:1-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS chef
# Pinned, so the dependency layer's recipe format does not change under
# us; a debug build, as its speed does not matter and it compiles in a
# fraction of the release build's time.
RUN cargo install cargo-chef --locked --version 0.1.78 --debug
WORKDIR /src

# The recipe is the workspace's manifests and lockfile only: this stage
# reruns on any change, but its output changes only with the manifests.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json -p gateway -p publisher -p loadgen
COPY . .
RUN cargo build --release --locked -p gateway -p publisher -p loadgen \
    && mkdir -p /out \
    && cp target/release/gateway target/release/publisher target/release/loadgen /out/

# What the three images share: CA roots (rediss://, an OTLP endpoint over
# TLS), an unprivileged user, and the health probe script.
FROM ${BASE_IMAGE} AS runtime
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 65532 rtgate \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin rtgate
COPY deploy/docker/http-probe /usr/local/bin/http-probe
USER 65532:65532
# Config comes from the environment only (GATEWAY_<KEY>, PUBLISHER_<KEY>,
# as in the example files); logs as JSON lines for a log collector.
ENV LOG_FORMAT=json RUST_LOG=info

FROM runtime AS gateway
COPY --from=build /out/gateway /usr/local/bin/gateway
ENV GATEWAY_LISTEN=0.0.0.0:8080
EXPOSE 8080
# /readyz: 503 while the backplane is down or the node drains, so
# `docker compose` (depends_on: service_healthy) waits for a usable node.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD ["http-probe", "GATEWAY_LISTEN", "/readyz"]
# The drain (GATEWAY_DRAIN_MS, 10 s) needs the stop timeout above it:
# docker stop -t 15, compose stop_grace_period, k8s terminationGracePeriodSeconds.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/gateway"]

FROM runtime AS publisher
COPY --from=build /out/publisher /usr/local/bin/publisher
ENV PUBLISHER_LISTEN=0.0.0.0:8090
EXPOSE 8090
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD ["http-probe", "PUBLISHER_LISTEN", "/readyz"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/publisher"]

FROM runtime AS loadgen
COPY --from=build /out/loadgen /usr/local/bin/loadgen
# A run-to-completion client with no port of its own: its exit status is
# its health (0 ok, 1 failed, 2 bad flags, 3 loss above --max-loss).
HEALTHCHECK NONE
ENTRYPOINT ["/usr/local/bin/loadgen"]
CMD ["--help"]
