#!/usr/bin/env bash
# Installs everything the build, the tests and the demo need on a fresh
# Debian machine. Idempotent: re-running skips what is already there.
# Used by `make test`, `make demo`, `make bench` and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  clang llvm libbpf-dev bpftool   # eBPF programs (agent/build.rs)
  protobuf-compiler libprotobuf-dev  # etcd-client's generated gRPC code (+ descriptor.proto)
  etcd-server etcd-client         # real etcd for kvstore/apiserver tests
  iproute2 iputils-ping           # network namespaces, veth, VXLAN
  iperf3 wrk                      # datapath benchmarks
  iptables                        # kube-proxy-style DNAT baseline (make bench), masquerade
  nftables                        # kube-proxy nftables-mode baseline (make bench): nft
  tcpdump                         # captures on the underlay: encryption leaves no plaintext (e2e/tests/wireguard.rs)
  containernetworking-plugins     # reference CNI plugins (ptp, bridge, host-local, portmap)
  containerd runc                 # a real container runtime for the CNI lifecycle test
  prometheus                      # promtool: checks and unit-tests config/monitoring alert rules
  util-linux                      # prlimit: the peer-front test holds the apiserver to 128 file descriptors
  lua5.1                          # runs config/argocd's health checks (Argo CD embeds Lua 5.1, gopher-lua)
  qemu-system-x86 busybox-static cpio kmod procps  # make test-kernels: Debian's 6.1 and 5.10 kernels under qemu, an initramfs of busybox + the tests
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v kubectl >/dev/null || {
  echo "setup: kubectl (with kustomize) is required to render config/; install it and re-run" >&2
  exit 1
}

# Python tools for manifest validation, in a project-local venv.
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import kubernetes_validate, jsonschema, celpy' 2>/dev/null; then
  echo "setup: installing Python validation tools"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r scripts/requirements.txt
fi
