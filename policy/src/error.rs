//! Errors of parsing Kubernetes objects; each names the field it is about.

use std::fmt;

use thiserror::Error;

use crate::model::Policy;
use crate::selector::LabelSelector;

/// Where in a Kubernetes object a value sits, as `spec.ingress[0].from[1].ipBlock.cidr`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(String);

impl FieldPath {
    /// The path of `name` inside this object.
    pub fn field(&self, name: &str) -> FieldPath {
        if self.0.is_empty() {
            FieldPath(name.to_string())
        } else {
            FieldPath(format!("{}.{name}", self.0))
        }
    }

    /// The path of element `index` of this list.
    pub fn index(&self, index: usize) -> FieldPath {
        FieldPath(format!("{}[{index}]", self.0))
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("(object)")
        } else {
            f.write_str(&self.0)
        }
    }
}

/// A Kubernetes object Twill cannot use, and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ModelError {
    #[error("{path}: missing")]
    Missing { path: FieldPath },
    #[error("{path}: expected {expected}, found {found}")]
    WrongType {
        path: FieldPath,
        expected: &'static str,
        /// The value found, as JSON.
        found: String,
    },
    #[error("{path}: {value} is not {what}")]
    BadValue {
        path: FieldPath,
        /// The value found, as JSON.
        value: String,
        what: &'static str,
    },
    #[error("{path}: {reason}")]
    Invalid { path: FieldPath, reason: String },
}

/// Which kind of object a rejected one was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Kind {
    NetworkPolicy,
    Pod,
    Namespace,
}

/// An object left out of the compile, reported beside its result.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{kind:?} {namespace}/{name}: {error}{}", isolation_note(.isolating))]
pub struct Rejected {
    pub kind: Kind,
    /// Empty for a namespace, or when the object has no readable metadata.
    pub namespace: String,
    pub name: String,
    pub error: ModelError,
    /// A rejected NetworkPolicy fails closed: this stand-in, which isolates what the
    /// policy selects and allows nothing, is compiled in its place
    /// ([`Policy::isolating_only`]). `None` when not even its namespace can be read.
    pub isolating: Option<Policy>,
}

/// What a rejected policy's stand-in does, for the operator.
fn isolation_note(isolating: &Option<Policy>) -> String {
    let Some(policy) = isolating else {
        return String::new();
    };
    let ways = match (policy.isolates_ingress, policy.isolates_egress) {
        (true, true) => "ingress and egress",
        (true, false) => "ingress",
        (false, true) => "egress",
        (false, false) => return String::new(),
    };
    let pods = if policy.pod_selector == LabelSelector::default() {
        format!("every pod of namespace {}", policy.namespace)
    } else {
        "the pods it selects".to_string()
    };
    format!(" (fails closed: isolates {ways} of {pods}, allows nothing)")
}
