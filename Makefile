# The README's commands. Everything that touches the network runs as root, inside
# network namespaces the commands create and remove.

CARGO ?= cargo

.PHONY: k8s build test bench bench-overlay check clean-netns lab lab-down

build:
	$(CARGO) build --workspace

# Unit tests, then the end-to-end tests over real namespaces (need root).
test: build k8s
	$(CARGO) test --workspace --no-fail-fast

# kube-apiserver + kube-controller-manager v1.20.2 for the Kubernetes-mode test, built
# from Debian's source package (~5 min once; a no-op when the binaries exist).
K8S_SCRIPTS ?= $(if $(wildcard ../shared/k8s/prepare.sh),../shared/k8s,tests/k8s)
k8s:
	bash $(K8S_SCRIPTS)/prepare.sh

# Benchmarks against the references, printed as tables (see BENCHMARKS.md).
bench:
	$(CARGO) build --release -p twill-cni -p twill-bench
	./target/release/cni-bench

# The overlay: throughput and latency against the underlay and a hand-built VXLAN path,
# and convergence with 1,000 and 5,000 simulated peers (about 4 minutes; --quick: 1).
bench-overlay:
	$(CARGO) build --release -p twill-agent -p twill-cni -p twill-bench
	./target/release/overlay-bench $(BENCH_ARGS)

check:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Removes namespaces a killed test run left behind (names start with twt).
clean-netns:
	ip netns list | awk '/^twt/ {print $$1}' | xargs -r -n1 ip netns del

# The local lab: nodes as namespaces with one twill-agent each, pods wired by the real
# plugin, then the pod-to-pod ping matrix. LAB_ARGS="--nodes 5 --keep" etc.
lab:
	$(CARGO) build --workspace
	./target/debug/twill-lab $(LAB_ARGS)

# Removes a lab left up with --keep.
lab-down:
	$(CARGO) build -p twill-lab
	./target/debug/twill-lab down
