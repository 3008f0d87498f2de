# The README's commands. Everything that touches the network runs as root, inside
# network namespaces the commands create and remove.

CARGO ?= cargo
RUSTC_HOST := rustc

# `sudo make ...` resets PATH to secure_path, which has no rustup toolchain: use the
# invoking user's (its toolchains, read only; crates and target/ are root's then).
ifeq ($(shell command -v $(CARGO)),)
ifneq ($(SUDO_USER),)
SUDO_HOME := $(shell getent passwd $(SUDO_USER) | cut -d: -f6)
ifneq ($(wildcard $(SUDO_HOME)/.cargo/bin/cargo),)
CARGO := $(SUDO_HOME)/.cargo/bin/cargo
export RUSTUP_HOME ?= $(SUDO_HOME)/.rustup
export PATH := $(SUDO_HOME)/.cargo/bin:$(PATH)
RUSTC_HOST := RUSTUP_HOME=$(RUSTUP_HOME) $(SUDO_HOME)/.cargo/bin/rustc
endif
endif
endif

.PHONY: deps deps-lab k8s k8s-node build plugin test fuzz bench bench-overlay bench-policy bench-policy-latency bench-kube-registry bench-churn check clean-netns lab lab-down

# The Debian packages the build and the lab need (deps-lab), or also the tests and
# benchmarks (deps): apt-get installs only what is missing; a no-op when all is there.
deps-lab:
	bash .ci/deps lab
deps:
	bash .ci/deps test

build: deps-lab
	$(CARGO) build --workspace

# The plugin as shipped: release, statically linked, not position-independent (like a Go
# CNI plugin). A runtime starts it for every pod operation: without shared libraries to
# map and bind it starts ~0.4 ms faster, without start-up relocations ~0.1 ms more. Its
# own --target dir, because crt-static cannot build the workspace's proc macros. The
# agent stays dynamic (it resolves host names through glibc's NSS).
HOST_TRIPLE := $(shell $(RUSTC_HOST) -vV 2>/dev/null | sed -n 's/^host: //p')
PLUGIN := $(CURDIR)/target/$(HOST_TRIPLE)/release/twill
plugin: deps-lab
	RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
		$(CARGO) build --release -p twill-cni --target $(HOST_TRIPLE)

# Unit tests, then the end-to-end tests over real namespaces (need root).
test: deps build plugin k8s k8s-node
	$(CARGO) test --workspace --no-fail-fast
	TWILL_PLUGIN=$(PLUGIN) $(CARGO) test -p twill-tests --test plugin_lifecycle --test plugin_errors --test plugin_repeat_add

# The property tests of every parser of outside input (issue 14 §4; `make test` runs them
# with 256 cases each) with FUZZ_CASES cases each: 8 to 15 minutes at 10,000 on 2 shared cores. No root.
FUZZ_CASES ?= 10000
fuzz: deps-lab
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test -p twill-conf -p twill-cni -p twill-ipam -p twill-agent -p twill-policy \
		--lib --bins proptests

# kube-apiserver + kube-controller-manager v1.20.2 for the Kubernetes-mode test, built
# from Debian's source package (~5 min once; a no-op when the binaries exist).
K8S_SCRIPTS ?= $(if $(wildcard ../shared/k8s/prepare.sh),../shared/k8s,tests/k8s)
k8s:
	bash $(K8S_SCRIPTS)/prepare.sh

# A real two-node cluster (containerd + kubelet v1.20.2 per node, a scheduler) in
# /tmp/k8s-node for the DaemonSet test (~5-8 min once, from the same source tree; a no-op
# when built). Its control plane is $(K8S_SCRIPTS) (install.sh takes the sibling ../k8s).
K8S_NODE_SCRIPTS ?= $(if $(wildcard ../shared/k8s-node/install.sh),../shared/k8s-node,tests/k8s-node)
K8S_NODE_BUILT := /tmp/k8s-node/cluster-up.sh /tmp/k8s-node/bin/kubelet /tmp/k8s-node/bin/kube-scheduler \
	/tmp/k8s-node/images/pause-3.2.tar /tmp/k8s-node/images/busybox-local.tar
k8s-node: k8s
	@if ls $(K8S_NODE_BUILT) >/dev/null 2>&1; then echo "k8s-node: built (/tmp/k8s-node)"; \
	else bash $(K8S_NODE_SCRIPTS)/install.sh; fi

# Benchmarks against the references, printed as tables (see BENCHMARKS.md).
bench: deps plugin
	$(CARGO) build --release -p twill-bench
	./target/release/cni-bench --twill $(PLUGIN)

# The overlay: throughput and latency against hand-built VXLAN and direct paths (with and
# without flannel's rules) and the underlay, and convergence with 1,000 and 5,000
# simulated peers (about 9 minutes; BENCH_ARGS=--quick: 2).
bench-overlay: deps
	$(CARGO) build --release -p twill-agent -p twill-cni -p twill-bench
	./target/release/overlay-bench $(BENCH_ARGS)

# NetworkPolicy's control path: 1,000 policies over 5,000 pods compiled, rendered and
# applied with nft in a namespace, then single label changes (about a minute). Then its
# data path: pod-to-pod throughput, RTT and connection setup with 1,000 policies in
# force against none (about a minute).
bench-policy: deps
	$(CARGO) build --release -p twill-bench
	./target/release/policy-bench $(BENCH_ARGS)
	./target/release/policy-path-bench

# NetworkPolicy's 1 s (p99) bound from an API write to the node's kernel: a real API
# server, one agent, 300 pods and 100 policies, 40 changes of each of four kinds
# (about 2 minutes; needs `make k8s`).
bench-policy-latency: deps k8s
	$(CARGO) build --release -p twill-agent -p twill-bench
	./target/release/policy-latency-bench $(BENCH_ARGS)

# The kubernetes registry at scale (issue 16): Nodes of realistic weight in a real API
# server, one agent; BENCH_ARGS="--nodes 5000" (default 1000; about a minute).
bench-kube-registry: deps k8s
	$(CARGO) build --release -p twill-agent -p twill-bench
	./target/release/kube-registry-bench $(BENCH_ARGS)

# Churn without growth (issue 14 §5): 10,000 ADD/DEL pairs on one node whose agent
# serves the store; the agent's RSS and fds, the store's size, reservations left, per
# 1,000 (about 5 minutes).
bench-churn: deps
	$(CARGO) build --release -p twill-agent -p twill-cni -p twill-bench
	./target/release/churn-bench $(BENCH_ARGS)

check:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Removes namespaces a killed test run left behind (names start with twt).
clean-netns:
	ip netns list | awk '/^twt/ {print $$1}' | xargs -r -n1 ip netns del

# The local lab: nodes as namespaces with one twill-agent each, pods wired by the real
# plugin, then the pod-to-pod ping matrix. LAB_ARGS="--nodes 5 --keep" etc.
lab: deps-lab
	$(CARGO) build --workspace
	./target/debug/twill-lab $(LAB_ARGS)

# Removes a lab left up with --keep.
lab-down:
	$(CARGO) build -p twill-lab
	./target/debug/twill-lab down
