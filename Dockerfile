# syntax=docker/dockerfile:1
# The Twill image: the node agent `twill-agent` and the CNI plugin `twill`, side by side
# in /usr/local/bin (`twill-agent install-cni` copies the `twill` next to itself to the
# host). Used by conf/kubernetes/twill.yaml.
#
#   docker build -t <registry>/twill:0.1.0 .

# rust:1 is the newest stable 1.x; kube 5 needs Rust 1.89 or later. Bookworm on both
# stages, so the binaries link against the glibc they run with.
FROM rust:1-bookworm AS build
# etcd-client compiles its gRPC definitions with protoc at build time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole workspace: cargo resolves every member (tests, bench, lab, ...) even when
# it builds two. .dockerignore keeps target/ and .git/ out.
COPY . .
# The cache mounts keep downloaded crates and compiled dependencies between builds; they
# are not part of the image, so the binaries are copied out in the same step.
# The plugin is linked statically and not position-independent, as `make plugin` does:
# a runtime starts it for every pod operation, and so it starts ~0.5 ms faster.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p twill-agent \
 && host="$(rustc -vV | sed -n 's/^host: //p')" \
 && RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
    cargo build --release --locked -p twill-cni --target "$host" \
 && mkdir -p /out \
 && cp "target/$host/release/twill" target/release/twill-agent /out/

FROM debian:bookworm-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="twill" \
      org.opencontainers.image.description="Twill pod network for Kubernetes: twill-agent (VXLAN overlay node daemon) and the twill CNI plugin" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"
# nftables: the agent runs `nft` for masquerading and forward rules.
# ca-certificates: TLS to the API server or etcd with public CAs.
# iproute2, ethtool: the README's troubleshooting commands, runnable with
# `kubectl exec` since the agent's pod shares the node's network namespace.
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables ca-certificates iproute2 ethtool \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/twill /out/twill-agent /usr/local/bin/
# Root: the agent needs NET_ADMIN and writes host paths (/opt/cni/bin, /etc/cni/net.d).
ENTRYPOINT ["/usr/local/bin/twill-agent"]
CMD ["run", "--conf", "/etc/twill/net-conf.json"]
