# raft-node, one member of a RaftCluster; it takes every setting from RAFTLANE_*
# environment variables, which the operator sets. raftctl is in the image too, so
# a backup Job runs `/usr/local/bin/raftctl backup` from the same image (distroless
# has no shell or package manager to add it later). Build from the repository root:
#   docker build -f images/raft-node.Dockerfile -t raftlane/raft-node:dev .
# (the release path: a release build inside the container.) Needs neither
# BuildKit nor `# syntax=`: the legacy builder (DOCKER_BUILDKIT=0) builds it too.
#
# Prebuilt path (CI, kind e2e): binaries built on the host are copied from the
# build context instead, into the same runtime stage. Build them on a glibc no
# newer than the runtime's (Debian 12), then:
#   cargo build -p raft-node     # or --release, with PREBUILT_PROFILE=release
#   docker build --build-arg PREBUILT_PROFILE=debug \
#     --build-arg BUILDER_IMAGE=debian:bookworm-slim \
#     -f images/raft-node.Dockerfile -t raftlane/raft-node:dev .
# (any image with sh and install serves as BUILDER_IMAGE there; .dockerignore
# lets exactly target/{debug,release}/{raft-node,raftctl,raft-operator} in).
# scripts/kind.sh images does this, with a local Debian base for both images
# where no registry is reachable.

ARG BUILDER_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${BUILDER_IMAGE} AS build
LABEL io.raftlane.stage=build
# Empty: cargo build --release here. debug or release: target/<it>/ binaries
# from the context.
ARG PREBUILT_PROFILE=
WORKDIR /src
COPY . .
RUN if [ -n "$PREBUILT_PROFILE" ]; then \
        install -D -t /out target/$PREBUILT_PROFILE/raft-node target/$PREBUILT_PROFILE/raftctl; \
    else \
        cargo build --release --locked -p raft-node \
        && install -D -t /out target/release/raft-node target/release/raftctl; \
    fi

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/raft-node /out/raftctl /usr/local/bin/
USER 65532:65532
# peer, client (KV gRPC), admin (gRPC), metrics (/metrics /healthz /readyz)
EXPOSE 7000 7001 7002 7003
ENTRYPOINT ["/usr/local/bin/raft-node"]
