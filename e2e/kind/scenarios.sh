#!/usr/bin/env bash
# Scenarios against two real clusters (contexts kind-knit-a, kind-knit-b).
# Keep this list in step with the local suite (e2e/ and operator tests).
set -euo pipefail
cd "$(dirname "$0")/../.."
A=kind-knit-a B=kind-knit-b
pass() { echo "PASS: $*"; }

for ctx in $A $B; do
  # config/default with this checkout's images; kind's own CNI (kindnet)
  # stays, and the agent's init container chains knit-cni after it.
  kubectl --context "$ctx" apply -k e2e/kind/overlay
done
# Give each cluster its own identity, and expose its mesh apiserver on a
# NodePort of its control-plane node: the kind clusters share one Docker
# network, so that address is what the other cluster reaches. It goes into
# the server certificate and into `knitctl peer export`.
configure() { # context name id pod-cidr
  local ip
  ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "${1#kind-}-control-plane")
  kubectl --context "$1" -n knit-system create configmap knit-operator-config \
    --from-literal=config.yaml="$(sed "s/clusterName: cluster-a/clusterName: $2/; s/clusterID: 1/clusterID: $3/; s#10.1.0.0/16#$4#; s/serviceType: LoadBalancer/serviceType: NodePort\n  nodePort: 32379/; s/externalAddresses: \[\]/externalAddresses: [$ip]/" config/operator/config.yaml)" \
    --dry-run=client -o yaml | kubectl --context "$1" apply -f -
  kubectl --context "$1" -n knit-system rollout restart deployment/knit-operator
}
configure $A cluster-a 1 10.1.0.0/16
configure $B cluster-b 2 10.2.0.0/16
for ctx in $A $B; do
  kubectl --context "$ctx" -n knit-system rollout status deployment/knit-operator --timeout=180s
done

# 1. An invalid ClusterMeshPeer is rejected by the API server, naming each field.
if out=$(kubectl --context $A apply -f tests/manifests/invalid/clustermeshpeer-all-four.yaml 2>&1); then
  echo "FAIL: invalid ClusterMeshPeer accepted"; exit 1
fi
for field in spec.clusterID spec.clusterName 'spec.endpoints\[0\]' spec.caBundle; do
  grep -q "$field" <<<"$out" || { echo "FAIL: rejection does not name $field: $out"; exit 1; }
done
pass "invalid ClusterMeshPeer rejected by field"

# 2. The operator creates the control plane; peers exchange exported manifests.
for ctx in $A $B; do
  kubectl --context "$ctx" -n knit-system wait --for=create secret/knit-ca --timeout=120s
done
kubectl --context $A run knitctl-export --rm -i --restart=Never --image=knit-operator:dev \
  --overrides='{"spec":{"serviceAccountName":"knit-operator"}}' --command -- \
  knitctl peer export > /tmp/knit-peer-a.yaml
grep -q 'https://.*:32379' /tmp/knit-peer-a.yaml || { echo "FAIL: export lacks the NodePort address"; exit 1; }
kubectl --context $B apply -f /tmp/knit-peer-a.yaml
kubectl --context $B wait clustermeshpeer/cluster-a --for=condition=CertificateReady --timeout=120s
kubectl --context $B -n knit-system get secret knit-peer-configs -o jsonpath='{.data.cluster-a\.yaml}' | grep -q .
pass "peer config for cluster-a rendered in cluster-b"

# 3. Deleting the peer removes its config.
kubectl --context $B delete clustermeshpeer cluster-a
sleep 5
if kubectl --context $B -n knit-system get secret knit-peer-configs -o jsonpath='{.data}' | grep -q 'cluster-a.yaml'; then
  echo "FAIL: peer config survived deletion"; exit 1
fi
pass "deleting a ClusterMeshPeer removes its config"

# ---------------------------------------------------------------------------
# Datapath scenarios: the same list as the local suite (docs/e2e.md,
# e2e/tests/datapath.rs and e2e/tests/scenarios.rs). Pods are made by kind's
# own CNI (kindnet: ptp + host-local + portmap); the agent's init container
# chained knit-cni after it, which hands each pod to the agent.
kubectl --context $A apply -f /tmp/knit-peer-a.yaml >/dev/null 2>&1 || true
kubectl --context $A run knitctl-export --rm -i --restart=Never --image=knit-operator:dev \
  --overrides='{"spec":{"serviceAccountName":"knit-operator"}}' --command -- \
  knitctl peer export > /tmp/knit-peer-a.yaml
kubectl --context $B run knitctl-export --rm -i --restart=Never --image=knit-operator:dev \
  --overrides='{"spec":{"serviceAccountName":"knit-operator"}}' --command -- \
  knitctl peer export > /tmp/knit-peer-b.yaml
kubectl --context $B apply -f /tmp/knit-peer-a.yaml
kubectl --context $A apply -f /tmp/knit-peer-b.yaml
for ctx in $A $B; do
  kubectl --context "$ctx" wait cmp --all --for=condition=Synced --timeout=180s
  kubectl --context "$ctx" -n knit-system exec ds/knit-agent -- knitctl status
done

deploy() { # context cluster-name affinity export import
  kubectl --context "$1" create namespace shop --dry-run=client -o yaml | kubectl --context "$1" apply -f -
  sed "s/CLUSTER/$2/; s/AFFINITY/$3/; s/EXPORT/$4/; s/IMPORT/$5/" e2e/kind/shop.yaml | kubectl --context "$1" apply -f -
  kubectl --context "$1" -n shop rollout status deploy/web --timeout=120s
}
hits() { # context target count [--udp]
  kubectl --context "$1" -n shop exec deploy/client -- knit-probe hits --to "$2:8080" --count "$3" ${4:-}
}
from() { # json cluster → answers from that cluster
  python3 -c 'import json,sys; h=json.loads(sys.argv[1]); print(sum(n for k,n in h["names"].items() if k.startswith(sys.argv[2]+"/")))' "$1" "$2"
}
vip() { kubectl --context "$1" -n shop get svc web -o jsonpath='{.spec.clusterIP}'; }

deploy $A cluster-a none true true
deploy $B cluster-b none true true
web_b=$(kubectl --context $B -n shop get pod -l app=web -o jsonpath='{.items[0].status.podIP}')
web_a=$(kubectl --context $A -n shop get pod -l app=web -o jsonpath='{.items[0].status.podIP}')
[[ $(from "$(hits $A "$web_b" 20)" cluster-b) == 20 ]] && [[ $(from "$(hits $B "$web_a" 20)" cluster-a) == 20 ]]
pass "cross-cluster pod-to-pod routing, both directions"

h=$(hits $A "$(vip $A)" 200)
[[ $(from "$h" cluster-a) -gt 0 && $(from "$h" cluster-b) -gt 0 ]] || { echo "FAIL: $h"; exit 1; }
h=$(hits $A "$(vip $A)" 100 --udp)
[[ $(from "$h" cluster-a) -gt 0 && $(from "$h" cluster-b) -gt 0 ]] || { echo "FAIL: UDP $h"; exit 1; }
pass "global service: backends from both clusters (TCP and UDP)"

deploy $B cluster-b none false true; sleep 5
[[ $(from "$(hits $A "$(vip $A)" 100)" cluster-b) == 0 ]]
pass "a cluster with export=false is not used"
deploy $B cluster-b none true true; deploy $A cluster-a none true false; sleep 5
[[ $(from "$(hits $A "$(vip $A)" 100)" cluster-b) == 0 ]]
pass "a cluster with import=false uses only its own backends"

deploy $A cluster-a local true true; sleep 5
[[ $(from "$(hits $A "$(vip $A)" 100)" cluster-b) == 0 ]]
kubectl --context $A -n shop scale deploy/web --replicas=0; sleep 10
[[ $(from "$(hits $A "$(vip $A)" 100)" cluster-b) == 100 ]]
kubectl --context $A -n shop scale deploy/web --replicas=2
deploy $A cluster-a remote true true; sleep 5
[[ $(from "$(hits $A "$(vip $A)" 100)" cluster-a) == 0 ]]
deploy $A cluster-a none true true
pass "affinity local (with fallback), remote and none"

# Two mesh apiserver replicas: one pod deleted, the other serves; the
# replacement starts empty and catches up.
[[ $(kubectl --context $B -n knit-system get deploy knit-apiserver -o jsonpath='{.status.readyReplicas}') == 2 ]]
replica=$(kubectl --context $B -n knit-system get pod -l app.kubernetes.io/name=knit-apiserver -o name | head -1)
kubectl --context $B -n knit-system delete "$replica" --wait=false
[[ $(from "$(hits $A "$web_b" 20)" cluster-b) == 20 ]]
kubectl --context $B -n knit-system rollout status deploy/knit-apiserver --timeout=120s
[[ $(from "$(hits $A "$(vip $A)" 100)" cluster-b) -gt 0 ]]
pass "a mesh apiserver replica deleted: the other serves, the new one catches up"

kubectl --context $B -n knit-system scale deploy/knit-apiserver --replicas=0
sleep 40   # the grace period (30 s) and a margin
[[ $(from "$(hits $A "$(vip $A)" 100)" cluster-b) == 0 ]]
kubectl --context $B -n shop delete pod -l app=web --wait=false
kubectl --context $B -n knit-system scale deploy/knit-apiserver --replicas=2
kubectl --context $B -n shop rollout status deploy/web --timeout=120s; sleep 20
h=$(hits $A "$(vip $A)" 200)
[[ $(from "$h" cluster-b) -gt 0 ]] && ! grep -q "$web_b" <<<"$(kubectl --context $A -n knit-system exec ds/knit-agent -- knitctl status)"
pass "peer failure: failover after the grace period, recovery honours deletions"

kubectl --context $A apply -f e2e/kind/policy.yaml; sleep 5
[[ $(from "$(hits $A "$web_a" 10)" cluster-a) == 10 ]]
[[ $(from "$(hits $B "$web_a" 3)" cluster-a) == 0 ]]
pass "policy: app=frontend from cluster-a allowed, from cluster-b dropped"

kubectl --context $A -n knit-system exec ds/knit-agent -- knitctl status
pass "security scenarios: see apiserver/tests/security.rs and e2e/tests/scenarios.rs (need etcd access from outside)"

# ---------------------------------------------------------------------------
# What operators see, graceful affinity and the Multi-Cluster Services API
# (the same list as e2e/tests/agents_report.rs, affinity.rs and mcs.rs).
nodes=$(kubectl --context $A get nodes -o name | wc -l)
[[ $(kubectl --context $A get cmp cluster-b -o jsonpath='{.status.connected}') == "$nodes/$nodes" ]]
pass "CONNECTED shows $nodes/$nodes agents reaching cluster-b"

# Threshold: a's 2 local backends are fewer than 3, so b's are added.
kubectl --context $A -n shop patch gsp web --type=merge -p '{"spec":{"affinity":"local","failover":{"minReadyBackends":3}}}'; sleep 5
h=$(hits $A "$(vip $A)" 200)
[[ $(from "$h" cluster-a) -gt 0 && $(from "$h" cluster-b) -gt 0 ]] || { echo "FAIL: threshold $h"; exit 1; }
# Preference: with no affinity, cluster-b is preferred while it has a ready backend.
kubectl --context $A -n shop patch gsp web --type=json -p '[{"op":"remove","path":"/spec/failover"},{"op":"replace","path":"/spec/affinity","value":"none"},{"op":"add","path":"/spec/preferredClusters","value":["cluster-b"]}]'; sleep 5
[[ $(from "$(hits $A "$(vip $A)" 100)" cluster-b) == 100 ]]
kubectl --context $A -n shop patch gsp web --type=json -p '[{"op":"remove","path":"/spec/preferredClusters"}]'
pass "affinity threshold and cluster preference"

# MCS: a exports shop/api with a ServiceExport; b has no Service api.
kubectl --context $A -n shop create service clusterip api --tcp=8080:8080 --dry-run=client -o yaml \
  | sed 's/app: api/app: web/' | kubectl --context $A apply -f -
kubectl --context $A apply -f config/samples/cluster-a/serviceexport.yaml
kubectl --context $B -n shop wait serviceimport/api --for=jsonpath='{.spec.ips[0]}' --timeout=120s
clusterset_ip=$(kubectl --context $B -n shop get serviceimport api -o jsonpath='{.spec.ips[0]}')
[[ $(from "$(hits $B "$clusterset_ip" 50)" cluster-a) == 50 ]]
kubectl --context $A -n shop wait serviceexport/api --for=condition=Ready --timeout=60s
pass "a cluster without the Service reaches it by the clusterset VIP"

# DNS: CoreDNS (>= 1.12.2, multicluster plugin) answers api.shop.svc.clusterset.local.
kubectl --context $B apply -k config/coredns
kubectl --context $B -n kube-system get configmap coredns -o jsonpath='{.data.Corefile}' \
  | config/coredns/clusterset-corefile.py > /tmp/knit-corefile
kubectl --context $B -n kube-system create configmap coredns --from-file=Corefile=/tmp/knit-corefile \
  --dry-run=client -o yaml | kubectl --context $B apply -f -
kubectl --context $B -n kube-system set image deploy/coredns coredns=registry.k8s.io/coredns/coredns:v1.12.2
kubectl --context $B -n kube-system rollout status deploy/coredns --timeout=120s
resolved=$(kubectl --context $B -n shop run dns-check --rm -i --restart=Never --image=busybox:1.36 -- \
  nslookup api.shop.svc.clusterset.local | awk '/^Address: / {print $2}' | tail -1)
[[ "$resolved" == "$clusterset_ip" ]] || { echo "FAIL: resolved $resolved, want $clusterset_ip"; exit 1; }
pass "api.shop.svc.clusterset.local resolves to the clusterset VIP"

# The operator's toolbox against real API servers.
# knitctl connectivity test: test pods in both clusters (knit-probe:dev),
# probes through the pod proxy, a pass/fail table, the namespace removed.
target/release/knitctl connectivity test --context $A --context $B --image knit-probe:dev
for ctx in $A $B; do
  if kubectl --context "$ctx" get namespace knit-connectivity >/dev/null 2>&1; then
    echo "FAIL: knit-connectivity left in $ctx"; exit 1
  fi
done
pass "knitctl connectivity test: every check passes, nothing left behind"
# knitctl observe --all-nodes: the flows of every agent of cluster-a (via
# pods/exec); a request to a VIP shows as a translation.
hits $A "$(vip $A)" 5 >/dev/null
target/release/knitctl observe --all-nodes --context $A --verdict translated --last 50 -o json \
  | grep -q '"verdict":"translated"' || { echo "FAIL: no translation in observe --all-nodes"; exit 1; }
pass "knitctl observe --all-nodes merges every agent's flows"
