//! The node's pod interfaces, listed when the address store the agent serves is lost or
//! damaged (Twill's host veths on the pod bridge, with the aliases that record their
//! pods' addresses), and the aliases of older plugins completed from the store. Only the
//! netlink work is here; what the aliases mean is `twill_ipam::recovery`'s.

use std::collections::HashMap;
use twill_ipam::recovery::{completed_aliases, pod_ports};
use twill_ipam::{PodPort, PodPorts, Reservation};
use twill_netlink::Netlink;

/// Twill's host veths on `bridge` in the agent's namespace.
#[derive(Debug)]
pub struct BridgePorts {
    pub bridge: String,
}

impl PodPorts for BridgePorts {
    fn list(&self) -> Result<Vec<PodPort>, String> {
        let links = Netlink::veth_ports_blocking(&self.bridge)
            .map_err(|e| format!("cannot list the ports of {}: {e}", self.bridge))?;
        Ok(pod_ports(links.into_iter().map(|l| (l.name, l.alias))))
    }
}

impl BridgePorts {
    /// Writes the addresses `held` records into the aliases of pod veths made by plugins
    /// that did not record them, so a store lost later still protects those pods.
    /// Returns how many aliases were completed.
    pub fn complete_aliases(&self, held: &[Reservation]) -> Result<usize, String> {
        runtime()?
            .block_on(async {
                let nl = Netlink::connect()?;
                let links = nl.veth_ports(&self.bridge).await?;
                let index: HashMap<String, u32> =
                    links.iter().map(|l| (l.name.clone(), l.index)).collect();
                let ports = pod_ports(links.into_iter().map(|l| (l.name, l.alias)));
                let todo = completed_aliases(&ports, held);
                for (link, alias) in &todo {
                    if let Some(i) = index.get(link) {
                        nl.set_alias(*i, alias).await?;
                        tracing::info!(link = %link, alias = %alias, "recorded the pod's addresses in its host veth's alias");
                    }
                }
                Ok::<_, twill_netlink::NetlinkError>(todo.len())
            })
            .map_err(|e| format!("cannot complete the aliases on {}: {e}", self.bridge))
    }
}

/// Called on the store service's own thread, before it serves: a runtime of its own for
/// a few requests.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| format!("cannot start a runtime for netlink: {e}"))
}
