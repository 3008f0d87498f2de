//! The node's pod interfaces, listed for a rebuild of a lost address store: Twill's host
//! veths on the pod bridge, with their aliases. Only the listing is here; what the
//! aliases mean is `twill_ipam::recovery`'s.

use twill_ipam::recovery::pod_ports;
use twill_ipam::{PodPort, PodPorts};
use twill_netlink::Netlink;

/// Twill's host veths on `bridge` in this process's namespace.
#[derive(Debug)]
pub struct BridgePorts {
    pub bridge: String,
}

impl PodPorts for BridgePorts {
    /// Runs on the store thread, and only when the store is lost.
    fn list(&self) -> Result<Vec<PodPort>, String> {
        let links = Netlink::veth_ports_blocking(&self.bridge)
            .map_err(|e| format!("cannot list the ports of {}: {e}", self.bridge))?;
        Ok(pod_ports(links.into_iter().map(|l| (l.name, l.alias))))
    }
}
