#!/usr/bin/env bash
# `make demo`: builds everything, then runs the local two-cluster mesh demo
# (e2e/examples/demo.rs) as root: network namespaces, eBPF and cgroups need
# it. Everything it creates is removed at the end, on failure and on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "==> Building knit (apiserver, agent, knitctl, probe) and the demo"
cargo build -q --workspace --bins --example demo
sudo_cmd=()
[[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
exec "${sudo_cmd[@]}" target/debug/examples/demo
