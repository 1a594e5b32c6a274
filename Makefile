# Entry points a newcomer types. Every target installs what it needs first
# (scripts/setup.sh is idempotent).
.PHONY: setup test test-repeat test-kernels demo bench fuzz conformance crds mcs-types e2e-kind fmt lint images

CARGO ?= cargo
PYTHON := .venv/bin/python

setup:
	@scripts/setup.sh

## make test: formatting, lints, every Rust test, manifest validation, the
## size gate (scripts/check-sizes.py), and the datapath on older kernels.
test: setup
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace
	$(PYTHON) tests/manifests/validate.py
	$(PYTHON) scripts/check-sizes.py
	scripts/test-kernels.sh

## make test-repeat N=5: make test N times in a row (default 5), stopping
## at the first failure: a test that fails by chance shows up here.
test-repeat: setup
	@n=$${N:-5}; for i in $$(seq 1 $$n); do echo "==> make test, run $$i of $$n"; $(MAKE) --no-print-directory test || { echo "==> run $$i of $$n failed"; exit 1; }; done; echo "==> $$n of $$n runs passed"

## make test-kernels: the BPF program tests and a two-cluster datapath test
## inside Debian's own 6.1 kernel under qemu (KVM, else TCG; a few minutes).
test-kernels: setup
	scripts/test-kernels.sh

## make demo: the local demo (see README).
demo: setup
	@scripts/demo.sh

## make bench: benchmarks, printed as a table.
## Release builds show cargo's progress; each phase is announced, and the
## long ones print a line per step with a countdown.
bench: setup
	@echo "==> [1/12] release build (the first one takes several minutes on 2 cores)"
	$(CARGO) build --release --workspace --bins --examples
	@echo "==> [2/12] operator render figures (seconds)"
	./target/release/examples/render_bench
	@echo "==> [3/12] mesh figures: churn at 200 and 1,000 updates/s, initial sync of 100,000 endpoints, memory (a few minutes)"
	./target/release/examples/mesh_bench
	@echo "==> [4/12] datapath figures: 1 to 100,000 services, knit vs direct vs iptables vs nftables, and a chart (about 5 minutes)"
	./target/release/examples/datapath_bench
	@echo "==> [5/12] failover figures (about a minute)"
	./target/release/examples/failover_bench
	@echo "==> [6/12] agent: what one change costs, at 1,000 and 100,000 services (seconds)"
	./target/release/examples/change_bench
	@echo "==> [7/12] end to end: 100,000 endpoints + 10,000 services from cluster-a's source into cluster-b's agent maps, and the agent's memory (under a minute)"
	./target/release/examples/end_to_end_bench
	@echo "==> [8/12] 511 clusters: 509 simulated peers of 1,000 endpoints each into one KVStoreMesh and one agent (a few minutes)"
	./target/release/examples/scale_bench
	@echo "==> [9/12] the peer front under attack: a flooding peer and a slowloris, propagation p99 with and without (about a minute)"
	./target/release/examples/front_soak_bench
	@echo "==> [10/12] encryption: pod to pod across nodes and clusters, plaintext vs WireGuard (userspace), and the underlay host to host (about 2 minutes)"
	./target/release/examples/encryption_bench
	@echo "==> [11/12] routing modes: pod to pod across nodes and clusters in tunnel, native and hybrid routing, and the underlay host to host (about 2 minutes)"
	./target/release/examples/routing_bench
	@echo "==> [12/12] observation: connections per second to a policed service with flow events off and on (about a minute)"
	./target/release/examples/observe_bench

## make conformance: the upstream Kubernetes NetworkPolicy cases in three
## layouts (one cluster, spread over two, every namespace split), to pod IPs
## and through Services, with a summary (make test runs them too).
conformance: setup
	$(CARGO) build -q --workspace --bins
	$(CARGO) test -q -p knit-e2e --test conformance -- --nocapture

## make fuzz: the peer-input properties with many cases (make test runs 256 each).
fuzz: setup
	PROPTEST_CASES=$${PROPTEST_CASES:-100000} $(CARGO) test --release -p knit-kvstore --test peer_input_fuzz
	PROPTEST_CASES=$${PROPTEST_CASES:-100000} $(CARGO) test --release -p knit-apiserver --lib

## make crds: regenerate crds/*.yaml and config/crd/*.yaml from the Rust types.
crds:
	$(CARGO) run -q -p knit-crds --bin crdgen

## make mcs-types: regenerate the MCS API types (crds/src/mcs/service_*.rs)
## from the upstream CRDs with kopium (needs network and `cargo install kopium`).
mcs-types:
	scripts/gen-mcs-types.sh
	$(MAKE) crds

## make e2e-kind: the kind-based suite (needs Docker, kind and network access).
e2e-kind:
	@e2e/kind/run.sh

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## make images: OCI image archives of the operator, apiserver and agent in
## target/images/ from the release binaries, without a container engine
## (scripts/build-images.py); `ctr images import`, `docker load` or
## `skopeo copy oci-archive:...` take them. The Dockerfiles in images/ build
## the same images with Docker.
images: setup
	$(CARGO) build --release -p knit-operator -p knit-apiserver -p knit-agent --bins
	$(CARGO) build --release -p knit-e2e --bin knit-probe
	$(CARGO) rustc --release -p knit-cni --bin knit-cni --target-dir target/static -- -C target-feature=+crt-static
	scripts/build-images.py --bin-dir target/release --cni-bin target/static/release/knit-cni
