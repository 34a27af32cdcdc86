# syntax=docker/dockerfile:1
# The one coscale image (K8S-CONTRACT.md): ghcr.io/coscale/coscale:<version>, entrypoint
# `coscale`. The control plane (`coscale up --provisioner kubernetes`), the operator
# (`coscale operator`) and the agents of Server pods (`coscale agent`) all run it.
#
#   docker build -t ghcr.io/coscale/coscale:0.1.0 .
#
# deploy/check.sh lints this file (hadolint) and checks its package, binary and paths
# against the workspace; Docker itself cannot run on the development machine.

FROM rust:1-bookworm AS build
WORKDIR /src
# Only what the release build reads: the workspace manifest, the lock file and the crates
# (protoc comes from the protoc-bin-vendored crate, so the builder needs no extra packages).
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p coscale-cli \
    && install -D -m 0755 target/release/coscale /out/coscale

FROM debian:bookworm-slim
# A fixed non-root user; the manifests in deploy/ run as uid/gid 10001 with
# runAsNonRoot and a read-only root filesystem.
RUN groupadd --system --gid 10001 coscale \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
       --home-dir /var/lib/coscale --shell /usr/sbin/nologin coscale \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/coscale \
    && install -d -o 10001 -g 10001 -m 0755 /mnt/models
COPY --from=build /out/coscale /usr/local/bin/coscale
USER 10001:10001
WORKDIR /var/lib/coscale
# V2 REST 9000, V2 gRPC 9500, REST API 9004, agent gRPC 9005, KEDA scaler 9006,
# custom metrics (TLS) 6443; agents: V2 REST 9100, V2 gRPC 9101.
EXPOSE 9000 9500 9004 9005 9006 6443 9100 9101
ENTRYPOINT ["coscale"]
CMD ["--help"]
