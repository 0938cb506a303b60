# syntax=docker/dockerfile:1
# raft-node, one member of a RaftCluster; it takes every setting from RAFTLANE_*
# environment variables, which the operator sets. Build from the repository root:
#   docker build -f images/raft-node.Dockerfile -t raftlane/raft-node:dev .

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# target/ is a cache mount shared with the operator's image, so the binary is
# copied out of it in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=raftlane-target,sharing=locked \
    cargo build --release --locked -p raft-node \
    && install -D target/release/raft-node /out/raft-node

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/raft-node /usr/local/bin/raft-node
USER 65532:65532
# peer, client (KV gRPC), admin (gRPC), metrics (/metrics /healthz /readyz)
EXPOSE 7000 7001 7002 7003
ENTRYPOINT ["/usr/local/bin/raft-node"]
