//! The kernel state the agent wants: a pure function of this node and its peers.
//!
//! Per VXLAN peer (flannel's scheme): a route to the peer's subnet via the peer's VTEP
//! address (the subnet's network address) on the VXLAN device, onlink; a permanent
//! neighbour entry VTEP address → VTEP MAC; an FDB entry VTEP MAC → public IP. A peer
//! whose public IP is on a directly connected underlay subnet gets a plain route via
//! that IP instead (no encapsulation), when direct routing is on.

use crate::peers::PeerSet;
use crate::record::Mac;
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// The metric of the agent's route to `dst`: 1 + the low 12 bits of the subnet's
/// number (its network address shifted right by its host bits), so peers' routes carry
/// distinct metrics up to 4,096 subnets of one size. Why not 0 for all, as flannel:
/// the kernel hashes an IPv4 route's shared part (`fib_info`) by device, protocol,
/// scope and metric but not gateway, so 5,000 peers' routes through one device with
/// metric 0 land in one hash chain and each insert walks all of them (5,000 routes:
/// 390 ms by `ip -batch`, 10,000: 1.4 s; with distinct metrics 67 ms and 148 ms).
/// Never 0: the kernel stores an IPv6 route asked for with 0 at 1024.
pub fn route_metric(dst: IpNet) -> u32 {
    let host_bits = u32::from(dst.max_prefix_len() - dst.prefix_len());
    let number = match dst.network() {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
    .checked_shr(host_bits)
    .unwrap_or(0);
    1 + (number & 0xfff) as u32
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NextHop {
    /// Through the VXLAN device, onlink, via the peer's VTEP address.
    Vxlan { via: IpAddr },
    /// Through the underlay, via the peer's public IP.
    Direct { via: IpAddr },
    /// A route with the agent's protocol that has neither shape (hand-edited, or left
    /// from another underlay device): never wanted, so it is replaced or removed.
    Foreign,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub routes: BTreeMap<IpNet, NextHop>,
    /// VTEP address → VTEP MAC, on the VXLAN device.
    pub neighbours: BTreeMap<IpAddr, Mac>,
    /// VTEP MAC → public IP, on the VXLAN device.
    pub fdb: BTreeMap<Mac, IpAddr>,
    /// Routes with the agent's protocol beyond the one per destination in `routes`
    /// (another metric: an older agent's, or a copy): (destination, metric). Only what
    /// the kernel holds has any; never wanted.
    pub stray_routes: BTreeSet<(IpNet, u32)>,
}

impl DesiredState {
    /// `underlay` lists the node's directly connected underlay subnets (used only when
    /// `direct_routing` is on).
    pub fn compute(peers: &PeerSet, underlay: &[IpNet], direct_routing: bool) -> Self {
        let mut d = DesiredState::default();
        for p in peers.peers.values() {
            let direct = direct_routing && underlay.iter().any(|u| u.contains(&p.public_ip));
            for s in &p.subnets {
                if direct {
                    if s.addr().is_ipv4() == p.public_ip.is_ipv4() {
                        d.routes.insert(*s, NextHop::Direct { via: p.public_ip });
                    }
                    continue;
                }
                let vtep = s.network();
                d.routes.insert(*s, NextHop::Vxlan { via: vtep });
                d.neighbours.insert(vtep, p.vtep_mac);
                d.fdb.insert(p.vtep_mac, p.public_ip);
            }
        }
        d
    }

    /// What the kernel holds once `plan`, made against this state, was applied: a
    /// partial view's pass keeps what it did not remove, so its result is not `want`.
    pub fn after(mut self, plan: &Plan) -> DesiredState {
        fn apply<K: Ord + Clone, V: Clone>(table: &mut BTreeMap<K, V>, c: &Changes<K, V>) {
            for k in c.remove.keys() {
                table.remove(k);
            }
            table.extend(c.put.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        apply(&mut self.routes, &plan.routes);
        apply(&mut self.neighbours, &plan.neighbours);
        apply(&mut self.fdb, &plan.fdb);
        self.stray_routes.retain(|r| !plan.stray_routes.contains(r));
        self
    }
}

/// The changes that turn `have` into `want`: what to add or replace, and what to
/// remove (with the value the kernel has, which an FDB delete needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes<K: Ord, V> {
    pub put: BTreeMap<K, V>,
    pub remove: BTreeMap<K, V>,
}

impl<K: Ord, V> Default for Changes<K, V> {
    fn default() -> Self {
        Changes {
            put: BTreeMap::new(),
            remove: BTreeMap::new(),
        }
    }
}

impl<K: Ord, V> Changes<K, V> {
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.remove.is_empty()
    }

    pub fn len(&self) -> usize {
        self.put.len() + self.remove.len()
    }
}

/// Everything one reconcile pass changes in the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub routes: Changes<IpNet, NextHop>,
    pub neighbours: Changes<IpAddr, Mac>,
    pub fdb: Changes<Mac, IpAddr>,
    /// `have`'s stray routes, removed with the other routes.
    pub stray_routes: BTreeSet<(IpNet, u32)>,
}

impl Plan {
    /// `removals: false` keeps everything `have` holds beyond `want`: used while the
    /// registry has not been listed completely, so a partial view never deletes peers.
    pub fn between(want: &DesiredState, have: &DesiredState, removals: bool) -> Plan {
        let mut plan = Plan {
            routes: diff(&want.routes, &have.routes),
            neighbours: diff(&want.neighbours, &have.neighbours),
            fdb: diff(&want.fdb, &have.fdb),
            stray_routes: have.stray_routes.clone(),
        };
        if !removals {
            plan.routes.remove.clear();
            plan.neighbours.remove.clear();
            plan.fdb.remove.clear();
            plan.stray_routes.clear();
        }
        plan
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.routes.len() + self.neighbours.len() + self.fdb.len() + self.stray_routes.len()
    }
}

/// Diffs one table: entries missing or different in `have` are put, entries only in
/// `have` are removed; equal entries are left alone (no flush, no churn).
pub fn diff<K: Ord + Clone, V: PartialEq + Clone>(
    want: &BTreeMap<K, V>,
    have: &BTreeMap<K, V>,
) -> Changes<K, V> {
    Changes {
        put: want
            .iter()
            .filter(|(k, v)| have.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        remove: have
            .iter()
            .filter(|(k, _)| !want.contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::{OwnNode, PeerSet};
    use crate::record::VtepRecord;

    fn peers() -> PeerSet {
        let own = OwnNode {
            name: "n1".into(),
            subnets: vec!["10.244.1.0/24".parse().unwrap()],
            cluster_networks: vec!["10.244.0.0/16".parse().unwrap()],
        };
        let recs = vec![
            VtepRecord {
                node: "n2".into(),
                subnets: vec!["10.244.2.0/24".parse().unwrap()],
                public_ip: "192.168.1.2".parse().unwrap(),
                vtep_mac: "0a:00:00:00:00:02".parse().unwrap(),
                backend: "vxlan".into(),
            },
            VtepRecord {
                node: "n3".into(),
                subnets: vec!["10.244.3.0/24".parse().unwrap()],
                public_ip: "192.168.2.3".parse().unwrap(),
                vtep_mac: "0a:00:00:00:00:03".parse().unwrap(),
                backend: "vxlan".into(),
            },
        ];
        PeerSet::validate(&own, &recs, &Default::default()).0
    }

    #[test]
    fn the_state_after_a_plan_is_what_the_kernel_then_holds() {
        let want = DesiredState::compute(&peers(), &[], false);
        let stale: IpNet = "10.244.9.0/24".parse().unwrap();
        let mut have = DesiredState::default();
        have.routes.insert(
            stale,
            NextHop::Vxlan {
                via: "10.244.9.0".parse().unwrap(),
            },
        );
        // A partial view adds and keeps the rest.
        let partial = Plan::between(&want, &have, false);
        let after = have.clone().after(&partial);
        assert!(after.routes.contains_key(&stale));
        assert_eq!(after.routes.len(), want.routes.len() + 1);
        assert!(Plan::between(&want, &after, false).is_empty());
        // A complete view's plan leaves exactly `want`.
        assert_eq!(
            after.clone().after(&Plan::between(&want, &after, true)),
            want
        );
    }

    #[test]
    fn vxlan_peers_get_route_neighbour_and_fdb() {
        let d = DesiredState::compute(&peers(), &[], true);
        let n2: IpNet = "10.244.2.0/24".parse().unwrap();
        assert_eq!(
            d.routes[&n2],
            NextHop::Vxlan {
                via: "10.244.2.0".parse().unwrap()
            }
        );
        assert_eq!(d.neighbours.len(), 2);
        assert_eq!(
            d.fdb[&"0a:00:00:00:00:03".parse().unwrap()],
            "192.168.2.3".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn same_segment_peers_are_routed_directly() {
        let underlay: Vec<IpNet> = vec!["192.168.1.0/24".parse().unwrap()];
        let d = DesiredState::compute(&peers(), &underlay, true);
        let n2: IpNet = "10.244.2.0/24".parse().unwrap();
        assert_eq!(
            d.routes[&n2],
            NextHop::Direct {
                via: "192.168.1.2".parse().unwrap()
            }
        );
        assert_eq!(
            d.neighbours.len(),
            1,
            "only the peer across segments needs VXLAN"
        );
        let never = DesiredState::compute(&peers(), &underlay, false);
        assert!(matches!(never.routes[&n2], NextHop::Vxlan { .. }));
    }

    #[test]
    fn diff_puts_changed_and_removes_departed_only() {
        let want: BTreeMap<u8, u8> = [(1, 1), (2, 2), (3, 3)].into();
        let have: BTreeMap<u8, u8> = [(1, 1), (2, 9), (4, 4)].into();
        let c = diff(&want, &have);
        assert_eq!(c.put, [(2, 2), (3, 3)].into());
        assert_eq!(c.remove, [(4, 4)].into());
        assert!(diff(&want, &want).is_empty());
    }

    #[test]
    fn plan_without_removals_keeps_what_the_kernel_has() {
        let want = DesiredState::compute(&peers(), &[], true);
        let mut have = want.clone();
        have.routes
            .insert("10.244.9.0/24".parse().unwrap(), NextHop::Foreign);
        have.neighbours
            .remove(&"10.244.2.0".parse::<IpAddr>().unwrap());
        let full = Plan::between(&want, &have, true);
        assert_eq!(full.routes.remove.len(), 1);
        assert_eq!(full.neighbours.put.len(), 1);
        assert_eq!(full.len(), 2);
        let partial = Plan::between(&want, &have, false);
        assert!(partial.routes.remove.is_empty());
        assert_eq!(partial.len(), 1);
        assert!(Plan::between(&want, &want, true).is_empty());
    }

    #[test]
    fn route_metrics_differ_between_neighbouring_subnets_and_are_never_zero() {
        let m = |s: &str| route_metric(s.parse().unwrap());
        assert_eq!(m("10.244.2.0/24"), 1 + 0x402);
        assert_ne!(m("10.244.2.0/24"), m("10.244.3.0/24"));
        assert_ne!(m("10.245.0.0/25"), m("10.245.0.128/25"));
        assert_eq!(m("fd00:244:0:7::/64"), 8);
        assert_eq!(m("0.0.0.0/0"), 1);
        assert_eq!(m("::/0"), 1);
        // 4,096 consecutive /24s, 4,096 distinct metrics.
        let all: BTreeSet<u32> = (0..4096u32)
            .map(|i| {
                route_metric(IpNet::new(IpAddr::V4((0x0a00_0000 + (i << 8)).into()), 24).unwrap())
            })
            .collect();
        assert_eq!(all.len(), 4096);
        assert!(!all.contains(&0));
    }

    #[test]
    fn stray_routes_are_removed_by_a_complete_view_only() {
        let want = DesiredState::compute(&peers(), &[], false);
        let mut have = want.clone();
        let stray = ("10.244.2.0/24".parse().unwrap(), 0);
        have.stray_routes.insert(stray);
        let partial = Plan::between(&want, &have, false);
        assert!(partial.is_empty());
        assert_eq!(have.clone().after(&partial).stray_routes.len(), 1);
        let full = Plan::between(&want, &have, true);
        assert_eq!(full.stray_routes, [stray].into());
        assert_eq!(full.len(), 1);
        assert_eq!(have.after(&full), want);
    }
}
