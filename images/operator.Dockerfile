# knit-operator image: multi-stage, distroless runtime. Build from the repo root:
#   docker build -f images/operator.Dockerfile -t knit-operator:dev .
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
      protobuf-compiler libprotobuf-dev clang llvm libbpf-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p knit-operator --bin knit-operator --bin knitctl

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/knit-operator /usr/local/bin/knit-operator
COPY --from=build /src/target/release/knitctl /usr/local/bin/knitctl
ENTRYPOINT ["/usr/local/bin/knit-operator"]
