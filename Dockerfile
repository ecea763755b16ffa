# Builds both binaries; the runtime image holds nothing else. No database and
# no protoc are needed to build: the protos compile in pure Rust.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY migrations migrations
COPY src src
RUN cargo build --release --locked --bins

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/number-allocator /src/target/release/invoice-writer /usr/local/bin/
# distroless' nonroot user, numerically so Kubernetes can check runAsNonRoot.
USER 65532:65532
EXPOSE 50051 50052
ENTRYPOINT ["/usr/local/bin/number-allocator"]
