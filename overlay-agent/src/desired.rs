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
use std::collections::BTreeMap;
use std::net::IpAddr;

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
}

impl Plan {
    /// `removals: false` keeps everything `have` holds beyond `want`: used while the
    /// registry has not been listed completely, so a partial view never deletes peers.
    pub fn between(want: &DesiredState, have: &DesiredState, removals: bool) -> Plan {
        let mut plan = Plan {
            routes: diff(&want.routes, &have.routes),
            neighbours: diff(&want.neighbours, &have.neighbours),
            fdb: diff(&want.fdb, &have.fdb),
        };
        if !removals {
            plan.routes.remove.clear();
            plan.neighbours.remove.clear();
            plan.fdb.remove.clear();
        }
        plan
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.neighbours.is_empty() && self.fdb.is_empty()
    }

    pub fn len(&self) -> usize {
        self.routes.len() + self.neighbours.len() + self.fdb.len()
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
}
