//! Configuration contracts shared by the Twill CNI plugin and the node agent.
//!
//! - [`plugin::PluginConf`]: one entry of the CNI conflist (`"type": "twill"`), as the
//!   runtime hands it to the plugin on stdin and as the agent writes it.
//! - [`subnet_file::SubnetFile`]: the node's pod subnet(s) and MTU, written by the agent
//!   and read by the plugin.
//! - [`cluster::ClusterConf`]: the cluster network configuration every agent reads.
//! - [`Attachment`]: one pod interface, (container ID, ifname), and the name of its host
//!   veth, which DEL, GC, tests and operators rely on.
//! - [`PodRange`]: a pod subnet of this node and its gateway.
//!
//! Parsing is strict about the keys Twill owns and tolerant of every other key, because a
//! conflist is shared with other plugins and runtimes add their own keys.

pub mod atomic;
pub mod attachment;
pub mod cluster;
pub mod error;
pub mod fnv;
pub mod json;
pub mod plugin;
pub mod port_alias;
pub mod range;
#[cfg(any(test, feature = "strategies"))]
pub mod strategies;
pub mod subnet_file;
mod value;

#[cfg(test)]
mod proptests;

pub use attachment::{Attachment, HOST_VETH_PREFIX};
pub use cluster::{ClusterConf, RegistryConf};
pub use error::ConfError;
pub use plugin::{PluginConf, Route};
pub use port_alias::{AliasOwner, PortAlias};
pub use range::PodRange;
pub use subnet_file::{PodNetwork, SubnetFile};

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// Checks a Linux interface name the way the kernel's `dev_valid_name` does.
pub fn valid_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err(format!(
            "{name:?} is {} bytes long, the limit is {MAX_IFNAME_LEN}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!("{name:?} contains the character {c:?}"));
    }
    Ok(())
}
