//! Peer validation: a record is programmed only if it cannot hurt the node or other
//! peers. Rejections carry a reason for the log line and the metric.

use crate::record::VtepRecord;
use ipnet::IpNet;
use std::collections::BTreeMap;
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
    /// silently. When two peers claim overlapping subnets neither is programmed: the
    /// agent cannot tell which one is right, and routing to the wrong one is worse than
    /// routing to none.
    pub fn validate(own: &OwnNode, records: &[VtepRecord]) -> (PeerSet, Vec<Rejected>) {
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
        let mut set = PeerSet::default();
        for r in &candidates {
            let clash = candidates.iter().find(|o| {
                o.node != r.node
                    && o.subnets
                        .iter()
                        .any(|a| r.subnets.iter().any(|b| overlaps(a, b)))
            });
            match clash {
                Some(o) => rejected.push(Rejected {
                    node: r.node.clone(),
                    reason: format!("its subnets overlap those of node {}", o.node),
                }),
                None => {
                    set.peers.insert(r.node.clone(), (*r).clone());
                }
            }
        }
        (set, rejected)
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
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
        let (set, rejected) = PeerSet::validate(&own(), &records);
        assert_eq!(set.peers.keys().collect::<Vec<_>>(), vec!["good"]);
        let names: Vec<&str> = rejected.iter().map(|r| r.node.as_str()).collect();
        assert_eq!(
            names,
            vec!["outside", "mine", "badmac", "badip", "dup-a", "dup-b"]
        );
        assert!(rejected[0].reason.contains("outside the cluster network"));
        assert!(rejected[1].reason.contains("overlaps this node's subnet"));
    }
}
