//! The admission of a new pod: the one op of the store service that is not about
//! addresses. The plugin sends it during ADD, after the address is reserved and before
//! the pod's interface has it, so that the node's NetworkPolicy rules for the pod are in
//! force before it can carry traffic. The agent answers it through an [`AdmissionHook`];
//! this crate knows nothing of policies.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use twill_conf::Attachment;

/// A pod about to get `ips`, as the runtime named it in CNI_ARGS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Admission {
    pub owner: Attachment,
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
}

/// What the service calls for admissions and for attachments it released. Both run on
/// the connection's thread; `admit` may block until the rules are in force.
pub trait AdmissionHook: Send + Sync {
    /// `Ok` once the pod's rules are in force; `Err` says why they are not.
    fn admit(&self, admission: &Admission) -> Result<(), String>;
    /// `owner`'s addresses were released (DEL, GC): its admission no longer holds.
    fn released(&self, owner: &Attachment);
}

/// What the service asks before it answers `Verify` (the plugin's STATUS): whether the
/// node can give a new pod a working network. The agent answers from its readiness: a
/// missing firewall table or VXLAN device makes STATUS fail with the reason.
pub trait NodeHealth: Send + Sync {
    /// `Some(why)` when a pod added now would not get a working network.
    fn not_ready(&self) -> Option<String>;
}
