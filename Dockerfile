# sluice: the build stage compiles the release binary from the repo and the
# crates Cargo.lock pins (fetched in their own layer, then built with
# --offline); the runtime stage is slim Debian with the binary, the example
# schemas and a non-root user. scripts/docker-build-stage runs the build
# stage's commands without a Docker engine.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
COPY examples examples
RUN cargo fetch --locked
RUN cargo build --release --locked --offline --bin sluice

FROM debian:bookworm-slim
# libssl3: librdkafka's TLS and SASL use the system's OpenSSL, so its
# security updates come with the base image (DESIGN.md, Kafka security).
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home sluice
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
COPY schemas /etc/sluice/schemas
USER 10001
# Prometheus /metrics, /healthz and /readyz (metrics.listen; bind 0.0.0.0
# in a container).
EXPOSE 9464
ENV SLUICE_METRICS__LISTEN=0.0.0.0:9464
# The allocator hands freed memory back to the system at once and commits
# its arenas as they are used: peak RSS stays within memory.max_buffer_bytes
# + 64 MiB, for ~10 % more CPU per record at full load (DESIGN.md, Memory
# budget). Unset both to trade memory for that CPU.
ENV MIMALLOC_PURGE_DELAY=0 MIMALLOC_ARENA_EAGER_COMMIT=0
HEALTHCHECK --interval=15s --timeout=6s --start-period=30s \
    CMD ["/usr/local/bin/sluice", "health", "--url", "http://127.0.0.1:9464/healthz"]
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["run", "--config", "/etc/sluice/sink.toml"]
