//! The node's pod interfaces, listed for a rebuild of a lost address store: Twill's host
//! veths on the pod bridge, with their aliases. Only the listing is here; what the
//! aliases mean is `twill_ipam::recovery`'s.

use twill_conf::HOST_VETH_PREFIX;
use twill_ipam::{PodPort, PodPorts};
use twill_netlink::Netlink;

/// Twill's host veths on `bridge` in this process's namespace.
#[derive(Debug)]
pub struct BridgePorts {
    pub bridge: String,
}

impl PodPorts for BridgePorts {
    fn list(&self) -> Result<Vec<PodPort>, String> {
        // Runs on the store thread, and only when the store is lost: a runtime of its
        // own rather than sharing the netlink thread's.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| format!("cannot start a runtime to list links: {e}"))?;
        let links = rt
            .block_on(async { Netlink::connect()?.veth_ports(&self.bridge).await })
            .map_err(|e| format!("cannot list the ports of {}: {e}", self.bridge))?;
        Ok(links
            .into_iter()
            .filter(|l| l.name.starts_with(HOST_VETH_PREFIX))
            .map(|l| PodPort {
                link: l.name,
                alias: l.alias,
            })
            .collect())
    }
}
