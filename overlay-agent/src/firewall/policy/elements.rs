//! A pod's allow entries as the elements of interval sets: prefixes and port ranges made
//! disjoint, since interval sets refuse overlapping elements.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use twill_policy::ruleset::{Direction as Isolation, PeerMatch, PortMatch};
use twill_policy::Protocol;

/// `cidr` minus every prefix in `except`, as disjoint prefixes in address order.
pub fn cidr_minus(cidr: IpNet, except: &BTreeSet<IpNet>) -> Vec<IpNet> {
    let mut parts = vec![cidr.trunc()];
    for hole in except.iter().map(IpNet::trunc) {
        let mut next = Vec::new();
        for part in parts {
            if hole.contains(&part) {
                continue;
            }
            if !part.contains(&hole) {
                next.push(part);
                continue;
            }
            // Halve down to the hole, keeping the halves beside it.
            let mut rest = part;
            while rest != hole {
                let Ok(halves) = rest.subnets(rest.prefix_len() + 1) else {
                    break;
                };
                for half in halves {
                    if half.contains(&hole) {
                        rest = half;
                    } else {
                        next.push(half);
                    }
                }
            }
        }
        parts = next;
    }
    parts.sort();
    parts
}

fn same_family(ip: IpAddr, net: &IpNet) -> bool {
    ip.is_ipv4() == matches!(net, IpNet::V4(_))
}

/// The prefixes of `peer` in the family of `pod`.
fn peer_prefixes(pod: IpAddr, peer: &PeerMatch) -> Vec<IpNet> {
    let all = match (peer, pod) {
        (PeerMatch::Any, IpAddr::V4(_)) => vec![IpNet::V4(Default::default())],
        (PeerMatch::Any, IpAddr::V6(_)) => vec![IpNet::V6(Default::default())],
        (PeerMatch::Addrs(addrs), _) => addrs.iter().map(|ip| IpNet::from(*ip)).collect(),
        (PeerMatch::Cidr { cidr, except }, _) => cidr_minus(*cidr, except),
    };
    all.into_iter()
        .filter(|net| same_family(pod, net))
        .collect()
}

/// One element of a `ports` set: peer prefix, protocol, first and last port.
pub(super) type PortsElement = (IpNet, Protocol, u16, u16);

/// A pod's allow elements in one direction, disjoint as interval sets need:
/// (any-port prefixes, port-restricted elements).
pub(super) fn pod_elements(pod: IpAddr, isolation: &Isolation) -> (Vec<IpNet>, Vec<PortsElement>) {
    let Isolation::Isolated { entries, .. } = isolation else {
        return (Vec::new(), Vec::new());
    };
    let mut any = Vec::new();
    let mut ranges: BTreeMap<IpNet, BTreeSet<(Protocol, u16, u16)>> = BTreeMap::new();
    for entry in entries {
        let prefixes = peer_prefixes(pod, &entry.peer);
        match &entry.ports {
            PortMatch::Any => any.extend(prefixes),
            PortMatch::List(list) => {
                for net in prefixes {
                    let set = ranges.entry(net).or_default();
                    set.extend(list.iter().map(|r| (r.protocol, r.start, r.end)));
                }
            }
        }
    }
    // Prefixes nest or are disjoint: each keeps what no smaller one covers, with the
    // ranges of every prefix containing it.
    let mut ports = Vec::new();
    for net in ranges.keys() {
        let inner: BTreeSet<IpNet> = ranges
            .keys()
            .filter(|other| *other != net && net.contains(*other))
            .copied()
            .collect();
        let mut own: BTreeSet<(Protocol, u16, u16)> = BTreeSet::new();
        for (outer, set) in &ranges {
            if outer.contains(net) {
                own.extend(set.iter().copied());
            }
        }
        let merged = merge_ranges(&own);
        for piece in cidr_minus(*net, &inner) {
            ports.extend(merged.iter().map(|&(p, s, e)| (piece, p, s, e)));
        }
    }
    ports.sort();
    (IpNet::aggregate(&any), ports)
}

/// Overlapping or adjacent ranges of one protocol joined.
fn merge_ranges(ranges: &BTreeSet<(Protocol, u16, u16)>) -> Vec<(Protocol, u16, u16)> {
    let mut out: Vec<(Protocol, u16, u16)> = Vec::new();
    for &(protocol, start, end) in ranges {
        match out.last_mut() {
            Some(last) if last.0 == protocol && u32::from(start) <= u32::from(last.2) + 1 => {
                last.2 = last.2.max(end);
            }
            _ => out.push((protocol, start, end)),
        }
    }
    out
}
