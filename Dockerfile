# syntax=docker/dockerfile:1.7
# Multi-stage build: compile with the pinned Rust toolchain, run on a slim Debian as a non-root user.
# Pin the base images by digest when you build for production
# (`docker buildx imagetools inspect rust:1.95-bookworm` prints it); the build machines of this
# project have no registry access to resolve digests, so the tags are pinned to a release line here.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY connectors/Cargo.toml connectors/Cargo.toml
COPY src src
COPY connectors/src connectors/src
COPY config config
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked && cp target/release/crmsync /usr/local/bin/crmsync

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/crmsync --shell /usr/sbin/nologin crmsync \
 && mkdir -p /var/lib/crmsync /etc/crmsync && chown crmsync /var/lib/crmsync
COPY --from=build /usr/local/bin/crmsync /usr/local/bin/crmsync
COPY config/example.toml /etc/crmsync/crmsync.toml
RUN crmsync --version
USER crmsync
ENV CRMSYNC__DAEMON__DATA_DIR=/var/lib/crmsync \
    CRMSYNC__DAEMON__LISTEN=0.0.0.0:8080 \
    CRMSYNC__DAEMON__ADMIN_LISTEN=0.0.0.0:9090 \
    CRMSYNC__DAEMON__LOG_FORMAT=json
VOLUME ["/var/lib/crmsync"]
EXPOSE 8080 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD curl -fsS http://127.0.0.1:9090/healthz || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["crmsync"]
CMD ["run", "--config", "/etc/crmsync/crmsync.toml"]
