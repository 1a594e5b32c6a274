# knit-agent image: multi-stage, distroless runtime. Build from the repo root:
#   docker build -f images/agent.Dockerfile -t knit-agent:dev .
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
      protobuf-compiler libprotobuf-dev clang llvm libbpf-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p knit-agent --bin knit-agent \
 && cargo rustc --release --locked -p knit-cni --bin knit-cni -- -C target-feature=+crt-static \
 && cargo build --release --locked -p knit-operator --bin knitctl

# The reference CNI plugins, installed on nodes that lack them by the
# DaemonSet's install-cni init container.
FROM debian:bookworm-slim AS cni
RUN apt-get update && apt-get install -y --no-install-recommends containernetworking-plugins

# The agent runs privileged (it loads eBPF programs), so the image runs as root.
FROM gcr.io/distroless/cc-debian12
COPY --from=build /src/target/release/knit-agent /usr/local/bin/knit-agent
# knit-cni runs on the host: linked statically (static-pie), so it needs no
# glibc or libgcc_s of the node's.
COPY --from=build /src/target/release/knit-cni /usr/local/bin/knit-cni
COPY --from=cni /usr/lib/cni/ptp /usr/lib/cni/host-local /usr/lib/cni/portmap /usr/lib/cni/loopback /usr/lib/cni/
# `kubectl exec ds/knit-agent -- knitctl status` reads the mesh reports with
# the agent's read-only certificate.
COPY --from=build /src/target/release/knitctl /usr/local/bin/knitctl
ENTRYPOINT ["/usr/local/bin/knit-agent"]
