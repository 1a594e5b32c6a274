#!/usr/bin/env bash
# The kind suite: installs Knit from config/ on two kind clusters and runs the
# scenarios of the local e2e suite with kubectl. It needs what these build
# machines lack (a Docker engine, kind, images, network), so it checks first.
#
# Prerequisites: docker (engine running), kind >= 0.23, kubectl, and the
# images built with `make images` (OCI archives in target/images/, loaded
# into kind by this script under the names the overlay uses).
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "e2e-kind: $tool is required (see e2e/kind/README.md)" >&2; exit 2; }
done
docker info >/dev/null 2>&1 || { echo "e2e-kind: no Docker engine is running" >&2; exit 2; }

clusters=(knit-a knit-b)
cleanup() { for c in "${clusters[@]}"; do kind delete cluster --name "$c" >/dev/null 2>&1 || true; done; }
trap cleanup EXIT

# The overlay runs knit-<component>:dev (docker.io/library/...).
scripts/build-images.py --bin-dir target/release --cni-bin target/static/release/knit-cni \
  --registry docker.io/library --version dev --out target/images-kind
for i in 0 1; do
  c=${clusters[$i]}
  kind create cluster --name "$c" --config "e2e/kind/$c.yaml"
  for img in operator apiserver agent probe; do kind load image-archive "target/images-kind/knit-$img.tar" --name "$c"; done
done
exec e2e/kind/scenarios.sh "${clusters[@]}"
