# A Rust builder like rust:1-bookworm, made from this host's toolchain
# where that image cannot be pulled (deploy/test/local-images.sh rust).
# The build context holds the toolchain's sysroot and the host's CA
# bundle (crates.io may be reached through a TLS proxy it trusts).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates gcc libc6-dev make pkg-config \
    && rm -rf /var/lib/apt/lists/*
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY toolchain /usr/local/rust
# As in the official image: cargo's home (registry, installed tools) in
# /usr/local/cargo, its bin first on PATH.
ENV CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN mkdir -p /usr/local/cargo/bin && rustc --version && cargo --version
