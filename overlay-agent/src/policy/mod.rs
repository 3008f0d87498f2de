//! The agent's view of the cluster for NetworkPolicy: NetworkPolicies
//! (`networking.k8s.io/v1`), Pods and Namespaces, watched on the API server and published
//! as [`twill_policy::Cluster`] snapshots ([`PolicyView`]) for the node's compile.
//!
//! - [`store`] (pure): watch events applied to slim parsed objects
//!   (`twill_policy::{Policy, Pod, Namespace}` keyed by namespace/name, or the reason one
//!   was rejected); the API objects are never kept, since big clusters have 150,000 pods.
//! - [`source`] (I/O): the kube-rs watchers and the publishing loop.
//!
//! Node IPs (`Cluster::node_ips`, whose traffic with their own pods is always allowed)
//! are not watched here: the caller supplies them through a `watch` channel, since the
//! agent knows its own node's addresses.
//!
//! The ClusterRole needs get, list, watch on `pods`, `namespaces` and
//! `networking.k8s.io` `networkpolicies`.

pub mod admit;
pub mod deny_log;
pub mod enforce;
pub mod report;
pub mod source;
pub mod store;

pub use source::{PolicySource, PolicySourceError};
pub use store::{ClusterStore, NodeIps, WatchEvent};

use std::sync::Arc;

use twill_policy::Cluster;

/// What the source publishes. `synced` turns true once policies, pods and namespaces
/// have all been listed; before that `cluster` is empty and must not be enforced.
#[derive(Debug, Clone, Default)]
pub struct PolicyView {
    pub synced: bool,
    pub cluster: Arc<Cluster>,
}

#[cfg(test)]
mod tests;
