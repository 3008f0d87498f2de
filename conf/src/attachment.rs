//! The identity of one pod interface: (container ID, interface name). The store keys
//! reservations by it, GC lists it, and the host veth's name is derived from it, so that
//! DEL and GC find the link without any saved state.

use crate::fnv::fnv1a;
use serde::{Deserialize, Serialize};

/// Every host veth of Twill starts with this; GC only touches links with it.
pub const HOST_VETH_PREFIX: &str = "tw";

/// One interface of one container, as the runtime names it (`CNI_CONTAINERID`,
/// `CNI_IFNAME`, or an entry of `cni.dev/valid-attachments`).
///
/// The serde field names are part of the store socket's protocol between twill-agent
/// and the plugin, which may be of different versions during an upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

impl Attachment {
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Self {
        Attachment {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }

    /// The host end of the pod's veth: `tw` + 12 hex digits of the 64-bit FNV-1a hash
    /// of `container ID \0 ifname`; 14 bytes, within IFNAMSIZ.
    pub fn host_veth_name(&self) -> String {
        let bytes = self
            .container_id
            .bytes()
            .chain([0u8])
            .chain(self.ifname.bytes());
        format!("{HOST_VETH_PREFIX}{:012x}", fnv1a(bytes) >> 16)
    }

    /// The host veth's alias: the owner and its addresses, for an operator reading
    /// `ip -d link` and for rebuilding a lost address store (see [`crate::port_alias`]).
    pub fn alias(&self, addrs: &[std::net::IpAddr]) -> String {
        crate::port_alias::encode(self, addrs)
    }

    /// Whom the store holds a reservation rebuilt from a cut alias for (the whole
    /// container ID is lost): named after the host veth, which only the whole
    /// attachment hashes to, so DEL and GC of the real owner can find it.
    pub fn stand_in(&self) -> Attachment {
        Attachment::new(format!("~{}", self.host_veth_name()), self.ifname.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(container_id: &str, ifname: &str) -> String {
        Attachment::new(container_id, ifname).host_veth_name()
    }

    #[test]
    fn host_veth_names_are_stable_distinct_and_short() {
        let a = name("abc", "eth0");
        // Nodes running an older plugin named their veths this way: DEL and GC must
        // still find them.
        assert_eq!(a, "tw540c4ae81be8");
        assert_ne!(a, name("abc", "eth1"));
        assert_ne!(a, name("abce", "th0"));
        assert_eq!(a.len(), 14);
        assert!(crate::valid_ifname(&a).is_ok());
    }

    #[test]
    fn alias_names_container_and_interface() {
        let addr = "10.0.0.2".parse().unwrap();
        assert_eq!(
            Attachment::new("abc", "eth0").alias(&[addr]),
            "twill:abc:eth0:ip=10.0.0.2"
        );
    }
}
