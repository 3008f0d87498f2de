//! Kubernetes NetworkPolicy (`networking.k8s.io/v1`) for Twill: the pure part.
//!
//! - [`model`]: policies, pods and namespaces parsed from the API's JSON, keeping only
//!   what decisions need; a bad object is left out and reported ([`Rejected`]) with an
//!   error naming its field, and never stops the others.
//! - [`selector`]: label selectors.
//! - [`compile()`]: (cluster, node) → [`RuleSet`], per pod IP of that node its ingress
//!   and egress as allow entries (address sets or CIDRs × port ranges), each tagged with
//!   its policy; deterministic, so a change is a cheap diff. [`RuleSet::allows`] decides a
//!   connection from that form alone.
//! - [`reference::allowed`]: the straightforward evaluator the compiler is tested against.
//!
//! Nothing here does I/O. What comes next lives in the agent: watching policies, pods and
//! namespaces, rendering a [`RuleSet`] to nftables sets and maps, applying the diff.

pub mod compile;
pub mod error;
pub mod incremental;
mod json;
pub mod model;
mod peers;
pub mod reference;
pub mod ruleset;
pub mod selector;

pub use compile::compile;
pub use error::{Kind, ModelError, Rejected};
pub use model::{Cluster, Namespace, Pod, Policy, Protocol};
pub use ruleset::{Connection, RuleSet};
pub use selector::LabelSelector;

#[cfg(test)]
mod tests;
