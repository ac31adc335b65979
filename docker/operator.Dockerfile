# concord-operator. Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t ghcr.io/concordkv/concord-operator:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p concord-operator --bin concord-operator \
 && mkdir -p /out \
 && cp target/release/concord-operator /out/

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/concord-operator /usr/local/bin/
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/concord-operator"]
