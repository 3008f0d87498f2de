//! The node bridge the pods' host veths are ports of; its addresses are the gateways.

use crate::cni::error::{CniError, INVALID_CONFIG};
use ipnet::IpNet;
use std::net::IpAddr;
use twill_conf::PodRange;
use twill_netlink::{Link, Netlink};

/// A MAC derived from the gateway: stable across restarts and re-creations of the bridge,
/// locally administered (0a:58 as other CNI plugins use).
fn bridge_mac(gateway: IpAddr) -> [u8; 6] {
    let tail = match gateway {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(a) => {
            let o = a.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    [0x0a, 0x58, tail[0], tail[1], tail[2], tail[3]]
}

/// Creates the bridge or reuses it, and makes its addresses exactly the gateways of the
/// current ranges: after a node's subnet changed, the old gateway address goes, rather
/// than ADD failing on a bridge "that already has a different IP address".
pub async fn ensure(
    nl: &Netlink,
    name: &str,
    ranges: &[PodRange],
    mtu: u32,
) -> Result<Link, CniError> {
    let first = ranges
        .first()
        .ok_or_else(|| CniError::new(INVALID_CONFIG, "no pod range configured"))?;
    let link = nl
        .ensure_bridge(name, bridge_mac(first.gateway), mtu)
        .await?;
    if link.kind.as_deref() != Some("bridge") {
        return Err(CniError::new(
            INVALID_CONFIG,
            format!(
                "bridge: a link named {name:?} exists but is a {}, not a bridge",
                link.kind.as_deref().unwrap_or("device without a kind")
            ),
        ));
    }
    if !link.up {
        nl.set_up(link.index).await?;
    }
    let have = nl.addresses(link.index).await?;
    let want: Vec<IpNet> = ranges.iter().map(PodRange::gateway_net).collect();
    for w in &want {
        if !have.contains(w) {
            nl.add_address(link.index, *w).await?;
        }
    }
    for h in &have {
        let same_family = want
            .iter()
            .any(|w| w.addr().is_ipv4() == h.addr().is_ipv4());
        if same_family && !want.contains(h) && !is_link_local(h.addr()) {
            tracing::info!(bridge = name, address = %h, "removing a stale gateway address (the node's subnet changed)");
            nl.del_address(link.index, *h).await?;
        }
    }
    Ok(link)
}

fn is_link_local(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// The MTU of the interface that carries the default route, 1500 when there is none.
pub async fn uplink_mtu(nl: &Netlink) -> Result<u32, CniError> {
    let routes = nl.routes(false).await?;
    let oif = routes
        .iter()
        .find(|r| r.dst.prefix_len() == 0 && r.table == 254)
        .and_then(|r| r.oif);
    match oif {
        Some(i) => Ok(nl.link_by_index(i).await?.map(|l| l.mtu).unwrap_or(1500)),
        None => Ok(1500),
    }
}
