#!/usr/bin/env bash
# `make demo`. Today: two sites render their mesh control plane with knitctl
# (the operator's own render code), exchange the peer manifests a user would
# commit to git, and show what each side now has. The full demo (two
# clusters in network namespaces, a global service, affinity, failover,
# `knitctl status`) replaces this as the apiserver, agent and e2e work lands.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
work=$(mktemp -d /tmp/knit-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT

step "Building knitctl"
cargo build -q -p knit-operator --bin knitctl
knitctl=target/debug/knitctl

for site in a:1 b:2; do
  name=${site%:*} id=${site#*:}
  mkdir -p "$work/$name/peers"
  cat > "$work/$name/config.yaml" <<YAML
clusterName: cluster-$name
clusterID: $id
podCIDRs: [10.$id.0.0/16]
apiserver:
  serviceType: NodePort
  nodePort: 3237$id
  externalAddresses: [192.168.50.$id]
YAML
  step "cluster-$name: rendering its mesh CA, apiserver certificate and client certificates"
  $knitctl render --config "$work/$name/config.yaml" --peers "$work/$name/peers" --out "$work/$name/out"
done

step "Exchanging peer manifests (what you would commit to each other's git repository)"
$knitctl peer export --config "$work/a/config.yaml" --pki-dir "$work/a/out" > "$work/b/peers/cluster-a.yaml"
$knitctl peer export --config "$work/b/config.yaml" --pki-dir "$work/b/out" > "$work/a/peers/cluster-b.yaml"
sed -n '1,12p' "$work/b/peers/cluster-a.yaml"; echo "    ..."

for name in a b; do
  step "cluster-$name: rendering again with its peer"
  $knitctl render --config "$work/$name/config.yaml" --peers "$work/$name/peers" --out "$work/$name/out"
done

step "What cluster-a now has (one directory per Secret/ConfigMap the operator creates)"
(cd "$work/a/out" && find . -type f | sort | sed 's#^\./#  #')
step "cluster-a's etcd users (bootstrapped by the mesh apiserver)"
sed 's/^/  /' "$work/a/out/knit-etcd-users/users.yaml"
step "cluster-a's client config for reaching cluster-b"
sed 's/^/  /' "$work/a/out/knit-peer-configs/cluster-b.yaml"

cat <<'TXT'

Done. Coming with the next pieces of work, this demo will also:
  - bring up both clusters in network namespaces (etcd, knit-apiserver, agents),
  - deploy a global service and show requests from cluster-a landing in both,
  - switch affinity to local, take cluster-b's control plane down (failover),
  - print `knitctl status`, then tear everything down.
TXT
