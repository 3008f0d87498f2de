//! Where nodes find each other. A backend gives the node its subnets, publishes its
//! record, and streams every node's record; the rest of the agent never knows which
//! backend it runs on.

pub mod etcd;
pub mod file;
#[cfg(test)]
mod fixtures;
pub mod kubernetes;

use crate::record::{Mac, VtepRecord};
use ipnet::IpNet;
use std::net::IpAddr;
use tokio::sync::watch;

/// What this node announces; the backend adds the subnets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub node: String,
    pub public_ip: IpAddr,
    pub vtep_mac: Mac,
}

impl Announcement {
    pub fn record(&self, subnets: Vec<IpNet>) -> VtepRecord {
        VtepRecord {
            node: self.node.clone(),
            subnets,
            public_ip: self.public_ip,
            vtep_mac: self.vtep_mac,
            backend: "vxlan".into(),
        }
    }
}

/// An entry the backend could not turn into a record (bad JSON, bad MAC, ...): it is
/// reported and counted, never programmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// File name, etcd key or Node name.
    pub source: String,
    pub reason: String,
}

/// Every node's record, as the backend sees it now (this node's own included).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub records: Vec<VtepRecord>,
    pub malformed: Vec<Malformed>,
    /// False until the backend has listed everything once; the agent does not remove
    /// kernel entries on the strength of a partial view.
    pub complete: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry I/O on {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("no free subnet of length /{len} is left in {network}")]
    Exhausted { network: IpNet, len: u8 },
    /// The backend is unreachable or answered with an error; the caller retries.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// The node's subnet is assigned by someone else (Kubernetes) and not yet known.
    #[error("{0}")]
    NotAssigned(String),
    #[error("{0}")]
    Invalid(String),
}

/// A registry backend. `join` first; then `watch` and `keep_alive` run side by side
/// for the agent's lifetime.
#[async_trait::async_trait]
pub trait Registry: Send + Sync {
    /// Obtains this node's subnets (its previous ones when it restarts) and publishes
    /// its record with them. Idempotent: the agent calls it again after `keep_alive`
    /// returns (a lost lease).
    async fn join(&self, me: &Announcement) -> Result<Vec<IpNet>, RegistryError>;

    /// Keeps what `join` published alive. Returns when it is lost (the caller joins
    /// again); backends without leases never return.
    async fn keep_alive(&self) -> Result<(), RegistryError>;

    /// Sends a full [`Snapshot`] into `tx` at start and after every change. Retries
    /// transient failures itself (the last snapshot stays in place meanwhile) and
    /// returns only when `tx` is closed or on an error it cannot recover from.
    async fn watch(&self, tx: watch::Sender<Snapshot>) -> Result<(), RegistryError>;

    /// Called once the node's data path is ready (Kubernetes: the Node condition
    /// `NetworkUnavailable=False`). Retried until it succeeds.
    async fn ready(&self) -> Result<(), RegistryError> {
        Ok(())
    }

    /// Removes this node's record (`twill-agent uninstall`).
    async fn leave(&self, node: &str) -> Result<(), RegistryError>;
}
