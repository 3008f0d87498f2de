//! The named sets of the policy table, each declared once per distinct content: pods
//! and policies that allow the same peers (or ports) share one set, so the element count
//! grows with distinct selectors, not with selector × pod.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;
use twill_policy::ruleset::{AllowEntry, PeerMatch, PortMatch, PortRange};
use twill_policy::Protocol;

use super::elements::{cidr_minus, merge_ranges};

/// A peer set's identity: the content it is made from, borrowed from the rule set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum PeerKey<'a> {
    Addrs(&'a BTreeSet<IpAddr>),
    Cidr(&'a IpNet, &'a BTreeSet<IpNet>),
}

/// The elements of one peer set, per family (an empty family is not declared).
struct PeerSet {
    v4: Vec<String>,
    v6: Vec<String>,
    /// Prefixes (an ipBlock) rather than single addresses.
    interval: bool,
}

#[derive(Default)]
pub(super) struct NamedSets<'a> {
    peer_ids: BTreeMap<PeerKey<'a>, usize>,
    peers: Vec<PeerSet>,
    port_ids: BTreeMap<&'a BTreeSet<PortRange>, usize>,
    ports: Vec<Vec<String>>,
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

impl<'a> NamedSets<'a> {
    /// The rules (without verdict) that match `entry` from the pod's side: `peer_field`
    /// is `saddr` for ingress, `daddr` for egress. None when the entry admits nothing.
    pub(super) fn entry_matches(&mut self, entry: &'a AllowEntry, peer_field: &str) -> Vec<String> {
        let ports = match &entry.ports {
            PortMatch::Any => String::new(),
            PortMatch::List(list) if list.is_empty() => return Vec::new(),
            PortMatch::List(list) => {
                format!("meta l4proto . th dport @ports_{}", self.ports_id(list))
            }
        };
        let key = match &entry.peer {
            PeerMatch::Any => return vec![ports],
            PeerMatch::Addrs(addrs) if addrs.is_empty() => return Vec::new(),
            PeerMatch::Addrs(addrs) => PeerKey::Addrs(addrs),
            PeerMatch::Cidr { cidr, except } => PeerKey::Cidr(cidr, except),
        };
        let id = self.peer_id(key);
        let set = &self.peers[id];
        let mut out = Vec::new();
        for (family, suffix, elements) in [("ip", "v4", &set.v4), ("ip6", "v6", &set.v6)] {
            if !elements.is_empty() {
                let rule = format!("{family} {peer_field} @peers_{id}_{suffix} {ports}");
                out.push(rule.trim_end().to_string());
            }
        }
        out
    }

    fn peer_id(&mut self, key: PeerKey<'a>) -> usize {
        if let Some(&id) = self.peer_ids.get(&key) {
            return id;
        }
        let set = match key {
            PeerKey::Addrs(addrs) => {
                let (v4, v6) = addrs.iter().partition::<Vec<&IpAddr>, _>(|ip| ip.is_ipv4());
                PeerSet {
                    v4: v4.iter().map(ToString::to_string).collect(),
                    v6: v6.iter().map(ToString::to_string).collect(),
                    interval: false,
                }
            }
            PeerKey::Cidr(cidr, except) => {
                let parts: Vec<String> = cidr_minus(*cidr, except)
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
        let id = self.peers.len();
        self.peers.push(set);
        self.peer_ids.insert(key, id);
        id
    }

    fn ports_id(&mut self, list: &'a BTreeSet<PortRange>) -> usize {
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
            .collect();
        let id = self.ports.len();
        self.ports.push(elements);
        self.port_ids.insert(list, id);
        id
    }

    /// The declarations of every set used so far.
    pub(super) fn render(&self, s: &mut String) {
        for (id, set) in self.peers.iter().enumerate() {
            let flags = if set.interval {
                "\n        flags interval"
            } else {
                ""
            };
            for (suffix, addr, elements) in
                [("v4", "ipv4_addr", &set.v4), ("v6", "ipv6_addr", &set.v6)]
            {
                if !elements.is_empty() {
                    let spec = format!("type {addr}{flags}");
                    render_set(s, &format!("set peers_{id}_{suffix}"), &spec, elements);
                }
            }
        }
        for (id, elements) in self.ports.iter().enumerate() {
            let spec = "type inet_proto . inet_service\n        flags interval";
            render_set(s, &format!("set ports_{id}"), spec, elements);
        }
    }
}

pub(super) fn render_set(s: &mut String, name: &str, spec: &str, elements: &[String]) {
    let _ = writeln!(s, "    {name} {{\n        {spec}");
    if !elements.is_empty() {
        let _ = writeln!(s, "        elements = {{ {} }}", elements.join(", "));
    }
    s.push_str("    }\n");
}
