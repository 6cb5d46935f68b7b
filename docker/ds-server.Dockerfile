# A Durable Streams server for docker/compose.yaml: the `durable-streams-server` crate's own
# binary, installed from crates.io (there is no official image of it that we know of).
#
#   docker build -f docker/ds-server.Dockerfile -t durable-streams-server docker

ARG BUILDER_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${BUILDER_IMAGE} AS build
ARG DS_SERVER_VERSION=0.3.0
RUN cargo install durable-streams-server --version "${DS_SERVER_VERSION}" --locked --root /out

FROM ${RUNTIME_IMAGE}
# curl for the healthcheck; a system user that owns the data directory.
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --create-home ds
COPY --from=build /out/bin/durable-streams-server /usr/local/bin/durable-streams-server
# An explicit bind address, streams kept on disk, and limits far above the defaults
# (100 MiB in total, 10 MiB per stream), which a capture of a real table outgrows at once.
ENV DS_SERVER__BIND_ADDRESS=0.0.0.0:4437 \
    DS_STORAGE__MODE=file-durable \
    DS_STORAGE__DATA_DIR=/data/streams \
    DS_LIMITS__MAX_MEMORY_BYTES=4294967296 \
    DS_LIMITS__MAX_STREAM_BYTES=1073741824
USER ds
VOLUME /data
EXPOSE 4437
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=5 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:4437/healthz"]
ENTRYPOINT ["/usr/local/bin/durable-streams-server"]
