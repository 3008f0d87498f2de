//! Which interface and address carry the overlay: flags first, else the interface of
//! the default route, else the first interface with a global address.

use ipnet::IpNet;
use std::net::IpAddr;
use twill_netlink::{Link, Netlink, NetlinkError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub index: u32,
    pub name: String,
    /// The tunnel endpoint address (the record's public IP unless overridden).
    pub ip: IpAddr,
    pub mtu: u32,
    /// The subnets directly connected through this interface: peers inside them are
    /// routed without encapsulation when direct routing is on.
    pub connected: Vec<IpNet>,
}

/// What the kernel shows, for the pure choice.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub link: Link,
    pub addresses: Vec<IpNet>,
}

#[derive(Debug, thiserror::Error)]
pub enum UnderlayError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("{0}")]
    NotFound(String),
}

fn global(a: &IpNet) -> bool {
    match a.addr() {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
        IpAddr::V6(v6) => !v6.is_loopback() && v6.segments()[0] & 0xffc0 != 0xfe80,
    }
}

/// Chooses the underlay. `default_route_oifs` are the interfaces of the default
/// routes, IPv4 first.
pub fn choose(
    candidates: &[Candidate],
    default_route_oifs: &[u32],
    iface: Option<&str>,
    ip: Option<IpAddr>,
) -> Result<Underlay, String> {
    let pick = |c: &Candidate, ip: Option<IpAddr>| -> Result<Underlay, String> {
        let addrs: Vec<&IpNet> = c.addresses.iter().filter(|a| global(a)).collect();
        let chosen = match ip {
            Some(ip) => ip,
            None => addrs
                .iter()
                .find(|a| a.addr().is_ipv4())
                .or_else(|| addrs.first())
                .map(|a| a.addr())
                .ok_or_else(|| format!("interface {} has no global address", c.link.name))?,
        };
        Ok(Underlay {
            index: c.link.index,
            name: c.link.name.clone(),
            ip: chosen,
            mtu: c.link.mtu,
            connected: addrs.iter().map(|a| a.trunc()).collect(),
        })
    };
    if let Some(name) = iface {
        let c = candidates
            .iter()
            .find(|c| c.link.name == name)
            .ok_or_else(|| format!("underlay interface {name:?} does not exist"))?;
        if let Some(ip) = ip {
            if !c.addresses.iter().any(|a| a.addr() == ip) {
                return Err(format!("{ip} is not an address of interface {name}"));
            }
        }
        return pick(c, ip);
    }
    if let Some(ip) = ip {
        let c = candidates
            .iter()
            .find(|c| c.addresses.iter().any(|a| a.addr() == ip))
            .ok_or_else(|| {
                format!("{ip} is not an address of this node; name the interface with --iface")
            })?;
        return pick(c, Some(ip));
    }
    for oif in default_route_oifs {
        if let Some(c) = candidates.iter().find(|c| c.link.index == *oif) {
            if let Ok(u) = pick(c, None) {
                return Ok(u);
            }
        }
    }
    let mut sorted: Vec<&Candidate> = candidates.iter().collect();
    sorted.sort_by_key(|c| c.link.index);
    sorted
        .into_iter()
        .filter(|c| c.link.name != "lo" && c.link.kind.as_deref() != Some("vxlan"))
        .find_map(|c| pick(c, None).ok())
        .ok_or_else(|| "no interface with a global address; set --iface or --public-ip".into())
}

/// Reads the kernel and chooses.
pub async fn detect(
    nl: &Netlink,
    iface: Option<&str>,
    ip: Option<IpAddr>,
) -> Result<Underlay, UnderlayError> {
    let mut candidates = Vec::new();
    for link in nl.links().await? {
        let addresses = nl.addresses(link.index).await?;
        candidates.push(Candidate { link, addresses });
    }
    let mut oifs = Vec::new();
    for v6 in [false, true] {
        for r in nl.routes(v6).await? {
            if r.dst.prefix_len() == 0 && r.table == 254 {
                oifs.extend(r.oif);
            }
        }
    }
    choose(&candidates, &oifs, iface, ip).map_err(UnderlayError::NotFound)
}

/// The VXLAN device's MTU: the underlay's minus the encapsulation (50 bytes over IPv4,
/// 70 over IPv6).
pub fn vxlan_mtu(underlay_mtu: u32, underlay_ip: IpAddr) -> u32 {
    let overhead = if underlay_ip.is_ipv4() { 50 } else { 70 };
    underlay_mtu.saturating_sub(overhead)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(index: u32, name: &str, addrs: &[&str]) -> Candidate {
        Candidate {
            link: Link {
                index,
                name: name.into(),
                mac: None,
                mtu: 1500,
                up: true,
                master: None,
                kind: None,
                peer_index: None,
                alias: None,
                vxlan: None,
            },
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn all() -> Vec<Candidate> {
        vec![
            cand(1, "lo", &["127.0.0.1/8"]),
            cand(2, "eth0", &["fe80::1/64", "10.0.0.5/24"]),
            cand(3, "eth1", &["192.168.7.2/24", "fd00::2/64"]),
        ]
    }

    #[test]
    fn default_route_interface_wins() {
        let u = choose(&all(), &[3], None, None).unwrap();
        assert_eq!(
            (u.name.as_str(), u.ip.to_string()),
            ("eth1", "192.168.7.2".into())
        );
        assert_eq!(u.connected.len(), 2);
        let u = choose(&all(), &[], None, None).unwrap();
        assert_eq!(
            u.name, "eth0",
            "else the first interface with a global address"
        );
    }

    #[test]
    fn flags_override_and_are_checked() {
        let u = choose(&all(), &[3], Some("eth0"), None).unwrap();
        assert_eq!(u.ip.to_string(), "10.0.0.5");
        let u = choose(&all(), &[2], None, Some("fd00::2".parse().unwrap())).unwrap();
        assert_eq!(u.name, "eth1");
        assert!(choose(&all(), &[], Some("eth9"), None).is_err());
        assert!(choose(&all(), &[], None, Some("10.9.9.9".parse().unwrap())).is_err());
        assert!(choose(&all(), &[], Some("eth0"), Some("fd00::2".parse().unwrap())).is_err());
        assert!(choose(&all()[..1], &[], None, None).is_err());
    }

    #[test]
    fn mtu_overhead_depends_on_family() {
        assert_eq!(vxlan_mtu(1500, "10.0.0.1".parse().unwrap()), 1450);
        assert_eq!(vxlan_mtu(1500, "fd00::1".parse().unwrap()), 1430);
    }
}
