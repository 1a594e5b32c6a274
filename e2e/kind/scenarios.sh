#!/usr/bin/env bash
# Scenarios against two real clusters (contexts kind-knit-a, kind-knit-b).
# Keep this list in step with the local suite (e2e/ and operator tests).
set -euo pipefail
cd "$(dirname "$0")/../.."
A=kind-knit-a B=kind-knit-b
pass() { echo "PASS: $*"; }

for ctx in $A $B; do
  kubectl --context "$ctx" apply -k config/default
done
# Give each cluster its own identity.
kubectl --context $B -n knit-system create configmap knit-operator-config \
  --from-literal=config.yaml="$(sed 's/clusterName: cluster-a/clusterName: cluster-b/; s/clusterID: 1/clusterID: 2/; s#10.1.0.0/16#10.2.0.0/16#' config/operator/config.yaml)" \
  --dry-run=client -o yaml | kubectl --context $B apply -f -
for ctx in $A $B; do
  kubectl --context "$ctx" -n knit-system set image deployment/knit-operator operator=knit-operator:dev
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
  knitctl peer export --endpoint https://knit-apiserver.knit-system.svc:2379 > /tmp/knit-peer-a.yaml
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
