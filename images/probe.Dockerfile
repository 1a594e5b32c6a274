# knit-probe: the test workload of the kind suite (e2e/kind/scenarios.sh).
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
      protobuf-compiler libprotobuf-dev clang llvm libbpf-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p knit-e2e --bin knit-probe

FROM debian:bookworm-slim
COPY --from=build /src/target/release/knit-probe /usr/local/bin/knit-probe
