//! Thin wrappers over the kernel interfaces Twill programs: network namespaces,
//! rtnetlink (links, addresses, routes, neighbours) and `/proc/sys`.
//!
//! rtnetlink's 0.x API breaks every few months; everything else in Twill goes through
//! this crate so that such a break is mended in one place. One file per kernel object,
//! each an `impl Netlink` block over the two calls of `connection.rs`.

mod addr;
mod connection;
mod error;
pub mod ethtool;
mod link;
pub mod mac;
mod neigh;
pub mod netns;
mod route;
pub mod sysctl;
mod vxlan;

pub use connection::Netlink;
pub use error::NetlinkError;
pub use link::{Link, VethSpec, VxlanInfo};
pub use netns::{NetNs, NetnsError};
pub use route::Route;
pub use rtnetlink;
pub use vxlan::VxlanSpec;
