# knit-agent image: multi-stage, distroless runtime. Build from the repo root:
#   docker build -f images/agent.Dockerfile -t knit-agent:dev .
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
      protobuf-compiler clang llvm libbpf-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p knit-agent --bin knit-agent \
 && cargo build --release --locked -p knit-operator --bin knitctl

# The agent runs privileged (it loads eBPF programs), so the image runs as root.
FROM gcr.io/distroless/cc-debian12
COPY --from=build /src/target/release/knit-agent /usr/local/bin/knit-agent
# `kubectl exec ds/knit-agent -- knitctl status` reads the mesh reports with
# the agent's read-only certificate.
COPY --from=build /src/target/release/knitctl /usr/local/bin/knitctl
ENTRYPOINT ["/usr/local/bin/knit-agent"]
