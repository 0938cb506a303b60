# raft-operator, reconciling RaftCluster resources in the cluster it runs in
# (`raft-operator run`). Build from the repository root:
#   docker build -f images/raft-operator.Dockerfile -t raftlane/raft-operator:dev .
# (the release path: a release build inside the container.) Needs neither
# BuildKit nor `# syntax=`: the legacy builder (DOCKER_BUILDKIT=0) builds it too.
#
# Prebuilt path (CI, kind e2e): the binary built on the host is copied from the
# build context instead, into the same runtime stage; see raft-node.Dockerfile:
#   cargo build -p raft-operator
#   docker build --build-arg PREBUILT_PROFILE=debug \
#     --build-arg BUILDER_IMAGE=debian:bookworm-slim \
#     -f images/raft-operator.Dockerfile -t raftlane/raft-operator:dev .

ARG BUILDER_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${BUILDER_IMAGE} AS build
LABEL io.raftlane.stage=build
# Empty: cargo build --release here. debug or release: target/<it>/raft-operator
# from the context.
ARG PREBUILT_PROFILE=
WORKDIR /src
COPY . .
RUN if [ -n "$PREBUILT_PROFILE" ]; then \
        install -D target/$PREBUILT_PROFILE/raft-operator /out/raft-operator; \
    else \
        cargo build --release --locked -p raft-operator \
        && install -D target/release/raft-operator /out/raft-operator; \
    fi

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/raft-operator /usr/local/bin/raft-operator
USER 65532:65532
# metrics and probes (/metrics /healthz /readyz)
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/raft-operator"]
CMD ["run"]
