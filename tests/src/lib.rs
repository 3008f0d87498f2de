//! Topology helpers shared by the end-to-end tests, the benchmarks and the lab: network
//! namespaces that clean up after themselves (`netns`), the `twill` plugin invoked
//! exactly as a container runtime invokes it (`cni`), single nodes and pods
//! (`fixture`), whole clusters with their agents (`cluster`) and the scenarios run on
//! them (`scenarios`), the NetworkPolicy reachability matrix (`policy_matrix`), real
//! runtimes and registries (`containerd`, `etcd`, `kube`), the real two-node kubelet
//! cluster, what a test reads off it and a container image of the binaries under test
//! (`kubelet_cluster`, `kubelet_checks`, `kubelet_manifests`, `kubelet_ping`,
//! `test_image`), and
//! private views of the machine's directories for a child process (`private_mounts`).
//!
//! Everything a test creates lives in namespaces whose names carry a per-run prefix, so
//! tests run in parallel and a crashed run's leftovers can be swept.

pub mod cluster;
pub mod cni;
pub mod containerd;
pub mod etcd;
pub mod fixture;
pub mod kube;
pub mod kube_nodes;
pub mod kubelet_checks;
pub mod kubelet_cluster;
pub mod kubelet_manifests;
pub mod kubelet_ping;
pub mod netns;
pub mod policy_matrix;
pub mod private_mounts;
pub mod promtool;
pub mod scenarios;
pub mod test_image;

pub use cni::{CniCall, CniOutcome, Plugin};
pub use fixture::{ConfExt, Node, Pod, TempDir};
pub use netns::{run_prefix, sh, Netns};

use std::path::PathBuf;

/// The workspace's target directory for the profile these tests were built with.
pub fn target_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(dir).join(profile());
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join(profile())
}

fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// A binary of the workspace (`twill`, `twill-agent`), overridable with `TWILL_BIN_DIR`;
/// `TWILL_PLUGIN` names the `twill` binary alone (`make test` runs the plugin tests
/// again against the static build, `make plugin`).
pub fn workspace_bin(name: &str) -> PathBuf {
    if let (PLUGIN_BIN, Ok(path)) = (name, std::env::var("TWILL_PLUGIN")) {
        let path = PathBuf::from(path);
        assert!(path.exists(), "TWILL_PLUGIN={} is missing", path.display());
        return path;
    }
    let dir = std::env::var("TWILL_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| target_dir());
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`, or `make test`)",
        path.display()
    );
    path
}

const PLUGIN_BIN: &str = "twill";

/// Fails the calling test at once unless it runs as root: namespaces need it.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "end-to-end tests create network namespaces and must run as root"
    );
}
