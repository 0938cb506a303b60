# syntax=docker/dockerfile:1
# raft-operator, reconciling RaftCluster resources in the cluster it runs in
# (`raft-operator run`). Build from the repository root:
#   docker build -f images/raft-operator.Dockerfile -t raftlane/raft-operator:dev .

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# target/ is a cache mount shared with the raft-node image, so the binary is
# copied out of it in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=raftlane-target,sharing=locked \
    cargo build --release --locked -p raft-operator \
    && install -D target/release/raft-operator /out/raft-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/raft-operator /usr/local/bin/raft-operator
USER 65532:65532
# metrics and probes (/metrics /healthz /readyz)
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/raft-operator"]
CMD ["run"]
