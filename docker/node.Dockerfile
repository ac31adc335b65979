# concord-node and concordctl. Build from the repository root:
#   docker build -f docker/node.Dockerfile -t ghcr.io/concordkv/concord-node:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p concord-node --bin concord-node --bin concordctl \
 && mkdir -p /out \
 && cp target/release/concord-node target/release/concordctl /out/

# distroless/cc: glibc and libgcc only; no shell, no package manager; runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/concord-node /out/concordctl /usr/local/bin/
# Without a config file the node keeps its data under ./data/<name>: make that the volume.
WORKDIR /var/lib/concord
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/concord-node"]
