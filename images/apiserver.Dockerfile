# knit-apiserver image: multi-stage, distroless runtime. Build from the repo root:
#   docker build -f images/apiserver.Dockerfile -t knit-apiserver:dev .
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
      protobuf-compiler libprotobuf-dev clang llvm libbpf-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p knit-apiserver --bin knit-apiserver

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/knit-apiserver /usr/local/bin/knit-apiserver
ENTRYPOINT ["/usr/local/bin/knit-apiserver"]
