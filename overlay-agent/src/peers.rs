//! Peer validation: a record is programmed only if it cannot hurt the node or other
//! peers. Rejections carry a reason for the log line and the metric.

use crate::record::VtepRecord;
use crate::subnets::{overlaps, span};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// What this node is, as far as validation is concerned.
#[derive(Debug, Clone)]
pub struct OwnNode {
    pub name: String,
    pub subnets: Vec<IpNet>,
    pub cluster_networks: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub node: String,
    pub reason: String,
}

/// The valid peers, by node name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerSet {
    pub peers: BTreeMap<String, VtepRecord>,
}

fn usable_ip(ip: &IpAddr) -> bool {
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()))
}

impl PeerSet {
    /// Splits `records` into valid peers and rejected ones. The own record is skipped
    /// silently. When peers claim overlapping subnets, a peer already programmed
    /// (all its subnets in `programmed`) keeps its place and the newcomer is rejected,
    /// so a bogus record cannot take a working node off the network; between peers
    /// equally new (or equally established) neither is programmed: the agent cannot
    /// tell which one is right, and routing to the wrong one is worse than to none.
    pub fn validate(
        own: &OwnNode,
        records: &[VtepRecord],
        programmed: &BTreeSet<IpNet>,
    ) -> (PeerSet, Vec<Rejected>) {
        let mut rejected = Vec::new();
        let mut candidates: Vec<&VtepRecord> = Vec::new();
        for r in records {
            if r.node == own.name {
                continue;
            }
            match check_one(own, r) {
                Ok(()) => candidates.push(r),
                Err(reason) => rejected.push(Rejected {
                    node: r.node.clone(),
                    reason,
                }),
            }
        }
        let clashing = overlapping(&candidates);
        let established = |r: &VtepRecord| r.subnets.iter().all(|s| programmed.contains(s));
        let involved: Vec<&VtepRecord> = candidates
            .iter()
            .copied()
            .filter(|r| clashing.contains_key(r.node.as_str()))
            .collect();
        let mut set = PeerSet::default();
        for r in &candidates {
            // Pairwise only among the few records that clash at all.
            let loser_to = involved.iter().find(|o| {
                o.node != r.node
                    && o.subnets
                        .iter()
                        .any(|a| r.subnets.iter().any(|b| overlaps(a, b)))
                    && (!established(r) || established(o))
            });
            match loser_to {
                Some(other) => rejected.push(Rejected {
                    node: r.node.clone(),
                    reason: if established(other) && !established(r) {
                        format!(
                            "its subnets overlap those of node {}, which is already programmed",
                            other.node
                        )
                    } else {
                        format!("its subnets overlap those of node {}", other.node)
                    },
                }),
                None => {
                    set.peers.insert(r.node.clone(), (*r).clone());
                }
            }
        }
        (set, rejected)
    }
}

/// Nodes whose subnets overlap another node's, each with one node it clashes with.
/// Sorted by start address, two CIDRs overlap only if one contains the other, so a
/// sweep that remembers the furthest-reaching subnet so far finds every clash in
/// O(n log n) (thousands of peers are re-validated on every registry change).
fn overlapping<'a>(records: &[&'a VtepRecord]) -> BTreeMap<&'a str, &'a str> {
    let mut spans: Vec<((bool, u128, u128), &'a str)> = records
        .iter()
        .flat_map(|r| r.subnets.iter().map(move |s| (span(s), r.node.as_str())))
        .collect();
    spans.sort();
    let mut clashes = BTreeMap::new();
    let mut reach: Option<((bool, u128, u128), &'a str)> = None;
    for (span, node) in spans {
        if let Some((far, far_node)) = reach {
            if far.0 == span.0 && span.1 <= far.2 && far_node != node {
                clashes.entry(node).or_insert(far_node);
                clashes.entry(far_node).or_insert(node);
            }
            if far.0 == span.0 && far.2 >= span.2 {
                continue;
            }
        }
        reach = Some((span, node));
    }
    clashes
}

fn check_one(own: &OwnNode, r: &VtepRecord) -> Result<(), String> {
    if r.node.is_empty() {
        return Err("empty node name".into());
    }
    if r.backend != "vxlan" {
        return Err(format!("backend {:?} is not vxlan", r.backend));
    }
    if !r.vtep_mac.is_valid_unicast() {
        return Err(format!("VTEP MAC {} is not a unicast address", r.vtep_mac));
    }
    if !usable_ip(&r.public_ip) {
        return Err(format!(
            "public IP {} cannot be a tunnel endpoint",
            r.public_ip
        ));
    }
    if r.subnets.is_empty() {
        return Err("no subnet".into());
    }
    for s in &r.subnets {
        if s.network() != s.addr() {
            return Err(format!("subnet {s} has host bits set"));
        }
        if !own.cluster_networks.iter().any(|n| n.contains(s)) {
            return Err(format!("subnet {s} lies outside the cluster network"));
        }
        if let Some(mine) = own.subnets.iter().find(|m| overlaps(m, s)) {
            return Err(format!("subnet {s} overlaps this node's subnet {mine}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> OwnNode {
        OwnNode {
            name: "n1".into(),
            subnets: vec!["10.244.1.0/24".parse().unwrap()],
            cluster_networks: vec!["10.244.0.0/16".parse().unwrap()],
        }
    }

    fn rec(node: &str, subnet: &str, ip: &str, mac: &str) -> VtepRecord {
        VtepRecord {
            node: node.into(),
            subnets: vec![subnet.parse().unwrap()],
            public_ip: ip.parse().unwrap(),
            vtep_mac: mac.parse().unwrap(),
            backend: "vxlan".into(),
        }
    }

    #[test]
    fn bogus_records_are_rejected_with_a_reason() {
        let records = vec![
            rec("n1", "10.244.1.0/24", "192.168.0.1", "0a:00:00:00:00:01"),
            rec("good", "10.244.2.0/24", "192.168.0.2", "0a:00:00:00:00:02"),
            rec(
                "outside",
                "10.99.3.0/24",
                "192.168.0.3",
                "0a:00:00:00:00:03",
            ),
            rec("mine", "10.244.1.0/25", "192.168.0.4", "0a:00:00:00:00:04"),
            rec(
                "badmac",
                "10.244.5.0/24",
                "192.168.0.5",
                "01:00:5e:00:00:01",
            ),
            rec("badip", "10.244.6.0/24", "0.0.0.0", "0a:00:00:00:00:06"),
            rec("dup-a", "10.244.7.0/24", "192.168.0.7", "0a:00:00:00:00:07"),
            rec(
                "dup-b",
                "10.244.7.128/25",
                "192.168.0.8",
                "0a:00:00:00:00:08",
            ),
        ];
        let (set, rejected) = PeerSet::validate(&own(), &records, &BTreeSet::new());
        assert_eq!(set.peers.keys().collect::<Vec<_>>(), vec!["good"]);
        let names: Vec<&str> = rejected.iter().map(|r| r.node.as_str()).collect();
        assert_eq!(
            names,
            vec!["outside", "mine", "badmac", "badip", "dup-a", "dup-b"]
        );
        assert!(rejected[0].reason.contains("outside the cluster network"));
        assert!(rejected[1].reason.contains("overlaps this node's subnet"));
    }

    #[test]
    fn an_established_peer_keeps_its_place_against_a_newcomer() {
        let records = vec![
            rec("old", "10.244.7.0/24", "192.168.0.7", "0a:00:00:00:00:07"),
            rec("new", "10.244.7.128/25", "192.168.0.8", "0a:00:00:00:00:08"),
        ];
        let programmed: BTreeSet<IpNet> = ["10.244.7.0/24".parse().unwrap()].into();
        let (set, rejected) = PeerSet::validate(&own(), &records, &programmed);
        assert_eq!(set.peers.keys().collect::<Vec<_>>(), vec!["old"]);
        assert_eq!(rejected.len(), 1);
        assert!(
            rejected[0].reason.contains("already programmed"),
            "{rejected:?}"
        );
    }

    #[test]
    fn overlap_sweep_finds_nested_and_distant_clashes() {
        let recs = [
            rec("big", "10.244.0.0/22", "192.168.0.2", "0a:00:00:00:00:02"),
            rec("a", "10.244.2.0/24", "192.168.0.3", "0a:00:00:00:00:03"),
            rec("b", "10.244.4.0/24", "192.168.0.4", "0a:00:00:00:00:04"),
            rec("c", "10.244.5.0/24", "192.168.0.5", "0a:00:00:00:00:05"),
            rec("c2", "10.244.5.128/25", "192.168.0.6", "0a:00:00:00:00:06"),
        ];
        let refs: Vec<&VtepRecord> = recs.iter().collect();
        let clashes = overlapping(&refs);
        let names: Vec<&str> = clashes.keys().copied().collect();
        assert_eq!(names, vec!["a", "big", "c", "c2"]);
        let many: Vec<VtepRecord> = (0..5000u32)
            .map(|i| {
                rec(
                    &format!("n{i}"),
                    &format!("10.{}.{}.0/24", i / 256, i % 256),
                    "192.168.0.9",
                    "0a:00:00:00:00:09",
                )
            })
            .collect();
        let refs: Vec<&VtepRecord> = many.iter().collect();
        assert!(overlapping(&refs).is_empty());
    }
}
