//! Thin wrappers over the kernel interfaces Twill programs: network namespaces,
//! rtnetlink (links, addresses, routes) and `/proc/sys`.
//!
//! rtnetlink's 0.x API breaks every few months; everything else in Twill goes through
//! this crate so that such a break is mended in one place.

pub mod ethtool;
pub mod netns;
mod ops;
mod overlay;
pub mod sysctl;

pub use netns::{NetNs, NetnsError};
pub use ops::{Link, Netlink, NetlinkError, Route, VethSpec};
pub use overlay::{VxlanInfo, VxlanSpec};
pub use rtnetlink;
