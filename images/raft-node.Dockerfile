# syntax=docker/dockerfile:1
# raft-node, one member of a RaftCluster; it takes every setting from RAFTLANE_*
# environment variables, which the operator sets. raftctl is in the image too, so
# a backup Job runs `/usr/local/bin/raftctl backup` from the same image (distroless
# has no shell or package manager to add it later). Build from the repository root:
#   docker build -f images/raft-node.Dockerfile -t raftlane/raft-node:dev .

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# target/ is a cache mount shared with the operator's image, so the binaries are
# copied out of it in the same step. The raft-node package builds both.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=raftlane-target,sharing=locked \
    cargo build --release --locked -p raft-node \
    && install -D -t /out target/release/raft-node target/release/raftctl

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/raft-node /out/raftctl /usr/local/bin/
USER 65532:65532
# peer, client (KV gRPC), admin (gRPC), metrics (/metrics /healthz /readyz)
EXPOSE 7000 7001 7002 7003
ENTRYPOINT ["/usr/local/bin/raft-node"]
