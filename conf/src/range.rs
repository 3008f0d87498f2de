//! A pod address range of this node: what the plugin configures on the bridge and what
//! the address store hands addresses out of.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// The subnet and its gateway (the bridge's address). The network address, the gateway
/// and (IPv4) the broadcast address are never handed out.
///
/// The serde field names are part of the store socket's protocol between twill-agent
/// and the plugin, which may be of different versions during an upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRange {
    pub subnet: IpNet,
    pub gateway: IpAddr,
}

impl PodRange {
    /// A range whose gateway is the first host address, as flannel and host-local do.
    pub fn with_first_host_gateway(subnet: IpNet) -> Result<Self, String> {
        check_subnet(&subnet)?;
        let gateway = nth_address(&subnet, 1);
        Ok(PodRange { subnet, gateway })
    }

    pub fn new(subnet: IpNet, gateway: Option<IpAddr>) -> Result<Self, String> {
        check_subnet(&subnet)?;
        match gateway {
            None => Self::with_first_host_gateway(subnet),
            Some(gw) => {
                if !subnet.contains(&gw) {
                    return Err(format!("gateway {gw} is not inside subnet {subnet}"));
                }
                if gw == subnet.network() || (subnet.addr().is_ipv4() && gw == subnet.broadcast()) {
                    return Err(format!(
                        "gateway {gw} is the network or broadcast address of {subnet}"
                    ));
                }
                Ok(PodRange {
                    subnet,
                    gateway: gw,
                })
            }
        }
    }

    /// The gateway with the subnet's prefix length: the address the bridge carries.
    pub fn gateway_net(&self) -> IpNet {
        // The prefix length comes from a valid IpNet of the same family.
        IpNet::new(self.gateway, self.subnet.prefix_len()).unwrap_or(self.subnet)
    }
}

fn check_subnet(subnet: &IpNet) -> Result<(), String> {
    if subnet.network() != subnet.addr() {
        return Err(format!(
            "{subnet} has host bits set; the subnet is {}",
            subnet.trunc()
        ));
    }
    // Room for network, gateway, broadcast and at least one pod.
    let max_prefix = if subnet.addr().is_ipv4() { 30 } else { 126 };
    if subnet.prefix_len() > max_prefix {
        return Err(format!(
            "{subnet} is too small for pods (longest prefix is /{max_prefix})"
        ));
    }
    Ok(())
}

fn nth_address(subnet: &IpNet, n: u128) -> IpAddr {
    match subnet.network() {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a).wrapping_add(n as u32)).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a).wrapping_add(n)).into()),
    }
}
