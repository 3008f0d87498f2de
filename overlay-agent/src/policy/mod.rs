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

use std::sync::{Arc, Mutex};
use std::time::Instant;

use twill_policy::Cluster;

/// What the source publishes. `synced` turns true once policies, pods and namespaces
/// have all been listed; before that `cluster` is empty and must not be enforced.
#[derive(Debug, Clone, Default)]
pub struct PolicyView {
    pub synced: bool,
    pub cluster: Arc<Cluster>,
}

/// When the oldest watch event not yet in force arrived: the source marks it, the
/// enforcer takes it when it reads a view, so the event-to-applied latency counts from
/// the first of the events that one apply brings in, even when views were coalesced.
#[derive(Debug, Clone, Default)]
pub struct PendingSince(Arc<Mutex<Option<Instant>>>);

impl PendingSince {
    /// Records `at` unless an older pending event is already recorded.
    pub fn mark(&self, at: Instant) {
        if let Ok(mut since) = self.0.lock() {
            since.get_or_insert(at);
        }
    }

    pub fn take(&self) -> Option<Instant> {
        self.0.lock().ok().and_then(|mut since| since.take())
    }
}

#[cfg(test)]
mod tests;
