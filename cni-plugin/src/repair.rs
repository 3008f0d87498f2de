//! A repeated ADD (a runtime retrying one whose answer it lost) finds the pod's veth
//! pair already there. Re-creating it would change the pod's MAC and stall its
//! connections, so the pair is kept and only what differs from the reservation is
//! repaired. This is the pure decision; `add.rs` reads the kernel and applies it.

use crate::cni::Route;
use ipnet::IpNet;
use std::fmt;
use std::net::IpAddr;
use twill_netlink::Link;

/// Whether `host` (our host veth, found by its name) and `pod` (the pod's interface of
/// CNI_IFNAME) are the two ends of one veth pair. Each end names the other's index;
/// checking both ways guards against an equal index in the other namespace.
pub fn is_pair(host: &Link, pod: &Link) -> bool {
    let veth = |l: &Link| l.kind.as_deref() == Some("veth");
    veth(host)
        && veth(pod)
        && host.peer_index == Some(pod.index)
        && pod.peer_index == Some(host.index)
}

/// What the kernel holds for an existing attachment.
#[derive(Debug, Clone)]
pub struct Found {
    pub host_master: Option<u32>,
    pub host_up: bool,
    pub pod_index: u32,
    pub pod_up: bool,
    /// The pod interface's addresses, link-local ones included or not.
    pub pod_addrs: Vec<IpNet>,
    /// The pod's routes: (destination, gateway, output interface).
    pub pod_routes: Vec<(IpNet, Option<IpAddr>, Option<u32>)>,
}

/// What the reservation and the config want.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    pub bridge: u32,
    pub addrs: &'a [IpNet],
    pub routes: &'a [Route],
}

/// One change to an existing attachment, in the order they must be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    JoinBridge,
    HostUp,
    PodUp,
    AddAddress(IpNet),
    /// An address the reservation does not hold (of an older reservation).
    RemoveAddress(IpNet),
    /// Set (replace) a route of the result.
    SetRoute(Route),
}

impl fmt::Display for Repair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Repair::JoinBridge => write!(f, "host veth back on the bridge"),
            Repair::HostUp => write!(f, "host veth up"),
            Repair::PodUp => write!(f, "pod interface up"),
            Repair::AddAddress(a) => write!(f, "add address {a}"),
            Repair::RemoveAddress(a) => write!(f, "remove address {a}"),
            Repair::SetRoute(r) => match r.gw {
                Some(gw) => write!(f, "set route {} via {gw}", r.dst),
                None => write!(f, "set route {}", r.dst),
            },
        }
    }
}

fn is_link_local(a: &IpNet) -> bool {
    match a.addr() {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// The changes that make `found` what is `wanted`; empty when it already is, and then
/// ADD touches nothing. New addresses go before stale ones are removed (a link left
/// without any address loses its routes), and every route is set again after any
/// change to the link or its addresses, since the kernel drops routes with them.
pub fn plan(found: &Found, wanted: &Wanted) -> Vec<Repair> {
    let mut out = Vec::new();
    if found.host_master != Some(wanted.bridge) {
        out.push(Repair::JoinBridge);
    }
    if !found.host_up {
        out.push(Repair::HostUp);
    }
    if !found.pod_up {
        out.push(Repair::PodUp);
    }
    out.extend(
        wanted
            .addrs
            .iter()
            .filter(|a| !found.pod_addrs.contains(a))
            .map(|a| Repair::AddAddress(*a)),
    );
    out.extend(
        found
            .pod_addrs
            .iter()
            .filter(|a| !is_link_local(a) && !wanted.addrs.contains(a))
            .map(|a| Repair::RemoveAddress(*a)),
    );
    let link_changed = out.iter().any(|r| {
        matches!(
            r,
            Repair::PodUp | Repair::AddAddress(_) | Repair::RemoveAddress(_)
        )
    });
    let present = |r: &Route| {
        found.pod_routes.iter().any(|(dst, gw, oif)| {
            *dst == r.dst && *oif == Some(found.pod_index) && (r.gw.is_none() || *gw == r.gw)
        })
    };
    out.extend(
        wanted
            .routes
            .iter()
            .filter(|r| link_changed || !present(r))
            .map(|r| Repair::SetRoute(r.clone())),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("a CIDR")
    }

    fn default_via(gw: &str) -> Route {
        Route {
            dst: net("0.0.0.0/0"),
            gw: Some(gw.parse().expect("an address")),
        }
    }

    /// A pod exactly as the first ADD left it: bridge 3, pod interface 2.
    fn intact() -> (Found, Vec<IpNet>, Vec<Route>) {
        let addrs = vec![net("10.244.1.5/24")];
        let routes = vec![default_via("10.244.1.1")];
        let found = Found {
            host_master: Some(3),
            host_up: true,
            pod_index: 2,
            pod_up: true,
            pod_addrs: vec![net("10.244.1.5/24"), net("fe80::1/64")],
            pod_routes: vec![
                (net("10.244.1.0/24"), None, Some(2)),
                (net("0.0.0.0/0"), "10.244.1.1".parse().ok(), Some(2)),
            ],
        };
        (found, addrs, routes)
    }

    fn wanted<'a>(addrs: &'a [IpNet], routes: &'a [Route]) -> Wanted<'a> {
        Wanted {
            bridge: 3,
            addrs,
            routes,
        }
    }

    #[test]
    fn an_intact_attachment_needs_nothing() {
        let (found, addrs, routes) = intact();
        assert_eq!(plan(&found, &wanted(&addrs, &routes)), vec![]);
    }

    #[test]
    fn a_host_veth_off_the_bridge_or_down_is_put_back() {
        let (mut found, addrs, routes) = intact();
        found.host_master = None;
        found.host_up = false;
        assert_eq!(
            plan(&found, &wanted(&addrs, &routes)),
            vec![Repair::JoinBridge, Repair::HostUp]
        );
    }

    #[test]
    fn a_lost_address_comes_back_with_every_route() {
        let (mut found, addrs, routes) = intact();
        found.pod_addrs.retain(|a| a.addr().is_ipv6());
        found.pod_routes.clear();
        assert_eq!(
            plan(&found, &wanted(&addrs, &routes)),
            vec![
                Repair::AddAddress(addrs[0]),
                Repair::SetRoute(routes[0].clone())
            ]
        );
    }

    #[test]
    fn a_downed_pod_link_is_raised_and_its_routes_set_again() {
        let (mut found, addrs, routes) = intact();
        found.pod_up = false;
        assert_eq!(
            plan(&found, &wanted(&addrs, &routes)),
            vec![Repair::PodUp, Repair::SetRoute(routes[0].clone())]
        );
    }

    #[test]
    fn a_stale_address_is_removed_after_the_wanted_one_is_added() {
        let (mut found, _, routes) = intact();
        let addrs = vec![net("10.244.1.9/24")];
        found.pod_routes.truncate(1);
        assert_eq!(
            plan(&found, &wanted(&addrs, &routes)),
            vec![
                Repair::AddAddress(addrs[0]),
                Repair::RemoveAddress(net("10.244.1.5/24")),
                Repair::SetRoute(routes[0].clone()),
            ]
        );
    }

    #[test]
    fn a_route_on_another_link_or_gateway_does_not_count() {
        let (mut found, addrs, routes) = intact();
        found.pod_routes[1].2 = Some(7);
        assert_eq!(
            plan(&found, &wanted(&addrs, &routes)),
            vec![Repair::SetRoute(routes[0].clone())]
        );
        found.pod_routes[1] = (net("0.0.0.0/0"), "10.244.1.254".parse().ok(), Some(2));
        assert_eq!(
            plan(&found, &wanted(&addrs, &routes)),
            vec![Repair::SetRoute(routes[0].clone())]
        );
    }

    fn link(index: u32, kind: &str, peer: Option<u32>) -> Link {
        Link {
            index,
            name: String::new(),
            mac: None,
            mtu: 1500,
            up: true,
            master: None,
            kind: Some(kind.to_string()),
            peer_index: peer,
            alias: None,
            vxlan: None,
        }
    }

    #[test]
    fn only_the_two_ends_of_one_veth_pair_are_a_pair() {
        assert!(is_pair(
            &link(10, "veth", Some(2)),
            &link(2, "veth", Some(10))
        ));
        // The pod's eth0 is some other veth, or not a veth at all.
        assert!(!is_pair(
            &link(10, "veth", Some(2)),
            &link(2, "veth", Some(11))
        ));
        assert!(!is_pair(
            &link(10, "veth", Some(2)),
            &link(2, "macvlan", Some(10))
        ));
        assert!(!is_pair(
            &link(10, "veth", Some(5)),
            &link(2, "veth", Some(10))
        ));
    }
}
