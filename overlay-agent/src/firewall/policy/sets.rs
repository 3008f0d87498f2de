//! The named sets of the policy table, each declared once per distinct content: pods
//! and policies that allow the same peers (or ports) share one set, so the element count
//! grows with distinct selectors, not with selector × pod.
//!
//! A pod's entries that admit the same ports become one rule over the union of their
//! peers: a new connection then costs one lookup per distinct port set of the pod, not
//! one per policy (a pod selected by 1,000 policies walked 1,000 rules before).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use twill_policy::ruleset::{AllowEntry, PeerMatch, PortMatch, PortRange};
use twill_policy::Protocol;

use super::elements::{cidr_minus, merge_ranges};
use super::names::PolicyNames;
use super::table::SetDecl;

/// A peer set's identity: the content it is made from, borrowed from the rule set.
/// Sets of equal content under different keys get one name and one declaration.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum PeerKey<'a> {
    Addrs(Shared<'a>),
    Cidr(&'a IpNet, &'a BTreeSet<IpNet>),
    /// Several peers admitted on the same ports, in order, without repeats.
    Union(Vec<PeerKey<'a>>),
}

/// A selector's addresses, told apart by where they are: the rule set shares one set
/// per selector, and comparing contents cost most of a render at 1,000 policies.
#[derive(Debug, Clone, Copy)]
struct Shared<'a>(&'a BTreeSet<IpAddr>);

impl PartialEq for Shared<'_> {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.0, other.0)
    }
}

impl Eq for Shared<'_> {}

impl PartialOrd for Shared<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Shared<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        std::ptr::from_ref(self.0).cmp(&std::ptr::from_ref(other.0))
    }
}

/// The elements of one peer set, per family (an empty family is not declared).
struct PeerSet {
    v4: Vec<String>,
    v6: Vec<String>,
    /// Prefixes (an ipBlock) rather than single addresses.
    interval: bool,
}

/// The sets one render uses, numbered by [`PolicyNames`].
pub(super) struct NamedSets<'a, 'n> {
    names: &'n mut PolicyNames,
    /// Index into `peers` by content.
    peer_ids: BTreeMap<PeerKey<'a>, usize>,
    /// Index into `peers` by name: keys of equal content share one set.
    peer_names: BTreeMap<u64, usize>,
    peers: Vec<(u64, PeerSet)>,
    port_ids: BTreeMap<&'a BTreeSet<PortRange>, u64>,
    ports: Vec<(u64, Vec<String>)>,
}

/// The union of several peers as one set: their prefixes (an address is a host prefix),
/// with those inside another dropped, since interval sets refuse overlaps. Prefixes
/// either nest or are disjoint, so after sorting, each needs comparing with the last
/// kept one only.
fn union_set(parts: &[PeerKey<'_>]) -> PeerSet {
    let mut nets = union_nets(parts);
    nets.sort_by_key(|n| (n.network(), n.prefix_len()));
    let mut kept: Vec<IpNet> = Vec::new();
    for net in nets {
        match kept.last() {
            Some(last) if last.contains(&net) => {}
            _ => kept.push(net),
        }
    }
    let interval = kept.iter().any(|n| n.prefix_len() < n.max_prefix_len());
    let show = |n: &IpNet| {
        if n.prefix_len() == n.max_prefix_len() {
            n.addr().to_string()
        } else {
            n.to_string()
        }
    };
    let (v4, v6): (Vec<IpNet>, Vec<IpNet>) =
        kept.into_iter().partition(|n| matches!(n, IpNet::V4(_)));
    PeerSet {
        v4: v4.iter().map(show).collect(),
        v6: v6.iter().map(show).collect(),
        interval,
    }
}

/// Every prefix of `parts`, overlaps and all.
fn union_nets(parts: &[PeerKey<'_>]) -> Vec<IpNet> {
    let mut nets = Vec::new();
    for part in parts {
        match part {
            PeerKey::Addrs(addrs) => nets.extend(addrs.0.iter().map(|ip| IpNet::from(*ip))),
            PeerKey::Cidr(cidr, except) => nets.extend(cidr_minus(**cidr, except)),
            PeerKey::Union(inner) => nets.extend(union_nets(inner)),
        }
    }
    nets
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

impl<'a, 'n> NamedSets<'a, 'n> {
    pub(super) fn names(&mut self) -> &mut PolicyNames {
        self.names
    }

    pub(super) fn new(names: &'n mut PolicyNames) -> Self {
        NamedSets {
            names,
            peer_ids: BTreeMap::new(),
            peer_names: BTreeMap::new(),
            peers: Vec::new(),
            port_ids: BTreeMap::new(),
            ports: Vec::new(),
        }
    }

    /// The rules (without verdict) that match a pod's allow `entries` from the pod's
    /// side, one per distinct port set (and family): `peer_field` is `saddr` for
    /// ingress, `daddr` for egress. Entries that admit nothing make no rule.
    pub(super) fn pod_matches(
        &mut self,
        entries: &[&'a AllowEntry],
        peer_field: &str,
    ) -> Vec<String> {
        // Per port set (`None`: any port), the peers admitted on it; `None`: anyone.
        let mut groups: BTreeMap<Option<&'a BTreeSet<PortRange>>, Option<BTreeSet<PeerKey<'a>>>> =
            BTreeMap::new();
        for entry in entries {
            let ports = match &entry.ports {
                PortMatch::Any => None,
                PortMatch::List(list) if list.is_empty() => continue,
                PortMatch::List(list) => Some(list),
            };
            let key = match &entry.peer {
                PeerMatch::Any => None,
                PeerMatch::Addrs(addrs) if addrs.is_empty() => continue,
                PeerMatch::Addrs(addrs) => Some(PeerKey::Addrs(Shared(addrs))),
                PeerMatch::Cidr { cidr, except } => Some(PeerKey::Cidr(cidr, except)),
            };
            let group = groups.entry(ports).or_insert_with(|| Some(BTreeSet::new()));
            match (group, key) {
                (Some(peers), Some(key)) => {
                    peers.insert(key);
                }
                (group, None) => *group = None,
                (None, Some(_)) => {}
            }
        }
        let mut out = Vec::new();
        for (ports, peers) in groups {
            let ports = ports
                .map(|list| format!("meta l4proto . th dport @ports_{}", self.ports_id(list)))
                .unwrap_or_default();
            let Some(mut peers) = peers else {
                out.push(ports);
                continue;
            };
            let key = match peers.len() {
                0 => continue,
                1 => peers.pop_first().expect("one peer"),
                _ => PeerKey::Union(peers.into_iter().collect()),
            };
            let index = self.peer_index(key);
            let (id, set) = &self.peers[index];
            for (family, suffix, elements) in [("ip", "v4", &set.v4), ("ip6", "v6", &set.v6)] {
                if !elements.is_empty() {
                    let rule = format!("{family} {peer_field} @peers_{id}_{suffix} {ports}");
                    out.push(rule.trim_end().to_string());
                }
            }
        }
        out
    }

    fn peer_index(&mut self, key: PeerKey<'a>) -> usize {
        if let Some(&index) = self.peer_ids.get(&key) {
            return index;
        }
        let set = match &key {
            PeerKey::Addrs(addrs) => {
                let (v4, v6) = addrs
                    .0
                    .iter()
                    .partition::<Vec<&IpAddr>, _>(|ip| ip.is_ipv4());
                PeerSet {
                    v4: v4.iter().map(ToString::to_string).collect(),
                    v6: v6.iter().map(ToString::to_string).collect(),
                    interval: false,
                }
            }
            PeerKey::Union(parts) => union_set(parts),
            PeerKey::Cidr(cidr, except) => {
                let parts: Vec<String> = cidr_minus(**cidr, except)
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                let (v4, v6) = match cidr {
                    IpNet::V4(_) => (parts, Vec::new()),
                    IpNet::V6(_) => (Vec::new(), parts),
                };
                PeerSet {
                    v4,
                    v6,
                    interval: true,
                }
            }
        };
        let content = format!("{}|{}|{}", set.interval, set.v4.join(","), set.v6.join(","));
        let id = self.names.peers.id(&content);
        let index = match self.peer_names.get(&id) {
            Some(&index) => index,
            None => {
                self.peers.push((id, set));
                self.peer_names.insert(id, self.peers.len() - 1);
                self.peers.len() - 1
            }
        };
        self.peer_ids.insert(key, index);
        index
    }

    fn ports_id(&mut self, list: &'a BTreeSet<PortRange>) -> u64 {
        if let Some(&id) = self.port_ids.get(list) {
            return id;
        }
        let elements = merge_ranges(list)
            .into_iter()
            .map(|(protocol, start, end)| {
                let name = protocol_name(protocol);
                if start == end {
                    format!("{name} . {start}")
                } else {
                    format!("{name} . {start}-{end}")
                }
            })
            .collect::<Vec<String>>();
        let id = self.names.ports.id(&elements.join(","));
        self.ports.push((id, elements));
        self.port_ids.insert(list, id);
        id
    }

    /// The declarations of every set used so far.
    pub(super) fn declarations(self, out: &mut Vec<SetDecl>) {
        for (id, set) in &self.peers {
            for (suffix, addr, elements) in
                [("v4", "ipv4_addr", &set.v4), ("v6", "ipv6_addr", &set.v6)]
            {
                if !elements.is_empty() {
                    let mut spec = vec![format!("type {addr}")];
                    if set.interval {
                        spec.push("flags interval".into());
                    }
                    out.push(SetDecl::set(
                        format!("peers_{id}_{suffix}"),
                        spec,
                        elements.clone(),
                    ));
                }
            }
        }
        for (id, elements) in self.ports {
            let spec = vec![
                "type inet_proto . inet_service".to_string(),
                "flags interval".to_string(),
            ];
            out.push(SetDecl::set(format!("ports_{id}"), spec, elements));
        }
    }
}
