//! The CNI protocol: environment, versions, results and errors, as the spec defines them.
//! Nothing here touches the kernel.

pub mod env;
pub mod error;
pub mod result;
pub mod version;

#[cfg(test)]
mod proptests;

pub use env::{Command, Env};
pub use error::CniError;
pub use result::{CniResult, Interface, IpConfig, Route};
pub use version::CniVersion;
