//! The address store served on a unix socket by a long-lived process (the node
//! agent), and the client the plugin uses.
//!
//! A plugin process that opens sled itself pays its recovery on every call:
//! a log scan, a snapshot write and several fsyncs, milliseconds per pod. The
//! service opens the store once and keeps it, with its lock, for as long as it
//! runs. Each connection carries one request line and one reply line (JSON).
//!
//! The client falls back to opening the store itself when no service answers:
//! nodes without an agent, the agent restarting. Every operation is idempotent
//! per owner, so a request cut off by a dying service is simply repeated
//! locally. A service holds `<dir>/served` locked; a local open that finds it
//! held gives up instead of waiting for a lock that is never released.

mod admission;
mod client;
mod server;

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use twill_conf::{Attachment, PodRange};

use crate::{Reservation, Store, StoreError};

pub use admission::{Admission, AdmissionHook, NodeHealth};
pub use client::{Pending, StoreClient};
pub use server::StoreService;

/// The longest request line the service reads (GC lists every attachment).
const MAX_REQUEST: u64 = 16 << 20;

/// How long a client waits for the service's reply. Operations take well under
/// a millisecond plus one fsync; this only bounds a service that hangs.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// One operation on the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Op {
    Allocate {
        owner: Attachment,
        ranges: Vec<PodRange>,
    },
    Release {
        owner: Attachment,
    },
    Lookup {
        owner: Attachment,
    },
    Reservations,
    /// Releases every owner not in `keep`.
    Retain {
        keep: Vec<Attachment>,
    },
    Verify,
    /// Asks the agent to put a new pod's NetworkPolicy rules in force; see [`Admission`].
    Admit(Admission),
}

/// What an operation returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    Allocated(Vec<IpNet>),
    Addresses(Vec<IpAddr>),
    Reservations(Vec<Reservation>),
    Verified,
    /// `enforced`: the pod's rules are in force; false where nobody enforces policy
    /// (no admission hook, or the store opened by the plugin itself).
    Admitted {
        enforced: bool,
    },
}

impl Outcome {
    /// The addresses of an `Allocate`.
    pub fn allocated(self) -> Result<Vec<IpNet>, StoreError> {
        match self {
            Outcome::Allocated(a) => Ok(a),
            other => Err(other.unexpected()),
        }
    }

    /// The addresses of a `Release` or `Lookup`.
    pub fn addresses(self) -> Result<Vec<IpAddr>, StoreError> {
        match self {
            Outcome::Addresses(a) => Ok(a),
            other => Err(other.unexpected()),
        }
    }

    /// The reservations of `Reservations` or `Retain`.
    pub fn reservations(self) -> Result<Vec<Reservation>, StoreError> {
        match self {
            Outcome::Reservations(r) => Ok(r),
            other => Err(other.unexpected()),
        }
    }

    fn unexpected(self) -> StoreError {
        StoreError::Service(format!("unexpected reply {self:?}"))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    dir: PathBuf,
    #[serde(flatten)]
    op: Op,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Reply {
    Ok(Outcome),
    /// The service serves another directory: the client opens its own.
    NotServed {
        served: PathBuf,
    },
    Exhausted {
        subnet: IpNet,
        in_use: u128,
        usable: u128,
    },
    InvalidRange(String),
    Failed(String),
}

impl Store {
    /// Runs one operation.
    pub fn apply(&self, op: &Op) -> Result<Outcome, StoreError> {
        Ok(match op {
            Op::Allocate { owner, ranges } => Outcome::Allocated(self.allocate(owner, ranges)?),
            Op::Release { owner } => Outcome::Addresses(self.release(owner)?),
            Op::Lookup { owner } => Outcome::Addresses(self.lookup(owner)?),
            Op::Reservations => Outcome::Reservations(self.reservations()?),
            Op::Retain { keep } => {
                let keep: HashSet<&Attachment> = keep.iter().collect();
                Outcome::Reservations(self.retain(|o| keep.contains(o))?)
            }
            Op::Verify => {
                self.verify()?;
                Outcome::Verified
            }
            // A store alone enforces nothing; the service's hook answers this op.
            Op::Admit(_) => Outcome::Admitted { enforced: false },
        })
    }
}

#[cfg(test)]
mod tests;
