# Builds both binaries; the runtime image holds nothing else. No database and
# no protoc are needed to build: the protos compile in pure Rust, and SQLite
# is compiled in.
FROM rust:1.95-slim-bookworm AS build
# jemalloc, the services' allocator, builds with make.
RUN apt-get update \
 && apt-get install -y --no-install-recommends make=4.3-4.1 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY migrations migrations
COPY src src
RUN cargo build --release --locked --bins && mkdir /data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/number-allocator /src/target/release/invoice-writer /usr/local/bin/
# Without DATABASE_URL each service keeps its SQLite file here: mount a volume.
COPY --from=build --chown=65532:65532 /data /var/lib/numbering
ENV NUMBERING_DATA_DIR=/var/lib/numbering
VOLUME ["/var/lib/numbering"]
# distroless' nonroot user, numerically so Kubernetes can check runAsNonRoot.
USER 65532:65532
EXPOSE 50051 50052
ENTRYPOINT ["/usr/local/bin/number-allocator"]
