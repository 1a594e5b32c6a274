# Entry points a newcomer types. Every target installs what it needs first
# (scripts/setup.sh is idempotent).
.PHONY: setup test demo bench fuzz conformance crds mcs-types e2e-kind fmt lint images

CARGO ?= cargo
PYTHON := .venv/bin/python

setup:
	@scripts/setup.sh

## make test: formatting, lints, every Rust test, manifest validation.
test: setup
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace
	$(PYTHON) tests/manifests/validate.py

## make demo: the local demo (see README).
demo: setup
	@scripts/demo.sh

## make bench: benchmarks, printed as a table.
bench: setup
	$(CARGO) run --release -q -p knit-operator --example render_bench
	$(CARGO) build --release -q -p knit-apiserver --bin knit-apiserver --example mesh_bench
	./target/release/examples/mesh_bench
	$(CARGO) build --release -q --workspace --bins --example datapath_bench
	./target/release/examples/datapath_bench
	$(CARGO) build --release -q --workspace --bins --example failover_bench
	./target/release/examples/failover_bench

## make conformance: the upstream Kubernetes NetworkPolicy cases, in one
## cluster and across two, with a summary (make test runs them too).
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

## make images: container images (needs a Docker engine).
images:
	for c in operator apiserver agent probe; do docker build -f images/$$c.Dockerfile -t knit-$$c:dev . || exit 1; done
