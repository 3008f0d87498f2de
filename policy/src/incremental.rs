//! [`NodeCompiler`]: [`compile`](crate::compile()) kept up to date change by change.
//!
//! It keeps what a compile works out: the addresses of every peer selector, each policy
//! that selects a local pod with its peers resolved, and the rules of every local pod.
//! A changed pod is tested against each peer selector; only the policies whose peers
//! moved are prepared again, and only the local pods those policies select (plus the
//! changed pod itself) get their rules again. A changed policy redoes the local pods it
//! selects, before and after. A namespace's labels matter only to peer selectors with a
//! namespace selector: a relabelled (added, deleted) namespace moves its pods in or out of
//! those whose verdict on it flipped, and the policies naming them are prepared again.
//! Large batches rebuild from scratch. The result always equals a full compile.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use crate::compile::{is_local, node_ips, pod_rules, selects, Prepared};
use crate::model::{Cluster, Pod, Policy};
use crate::peers::{Objects, PeerKey, PeerSets};
use crate::ruleset::{PodRules, RuleSet};
use crate::selector::Labels;
use namespaces::{namespace_diff, namespaces_of};

mod namespaces;

/// An object's namespace and name.
type Key = (String, String);

/// More changed objects than this in one update: rebuilding is as cheap.
const REBUILD_ABOVE: usize = 256;

/// What one [`NodeCompiler::update`] changed in its [`RuleSet`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changed {
    /// Everything was compiled again; `ips` is then empty.
    pub rebuilt: bool,
    /// Pod IPs whose rules were worked out again (they may have come out the same), or
    /// that left the rule set.
    pub ips: BTreeSet<IpAddr>,
    /// The node IPs or the rejected objects changed.
    pub others: bool,
}

impl Changed {
    /// Whether the rule set is as before the update.
    pub fn is_empty(&self) -> bool {
        !self.rebuilt && !self.others && self.ips.is_empty()
    }
}

pub struct NodeCompiler {
    node: String,
    policies: BTreeMap<Key, Policy>,
    pods: BTreeMap<Key, Pod>,
    namespaces: BTreeMap<String, Labels>,
    /// Per IP, the pods that claim it.
    owners: HashMap<IpAddr, BTreeSet<Key>>,
    peers: PeerSets,
    /// Every policy that selects a local pod (and maybe some that no longer do).
    prepared: BTreeMap<Key, Prepared>,
    /// The rules of every local pod.
    local: BTreeMap<Key, Arc<PodRules>>,
    rules: RuleSet,
}

fn key_of(namespace: &str, name: &str) -> Key {
    (namespace.to_string(), name.to_string())
}

/// `(key, Some(new))` for added or changed objects, `(key, None)` for removed ones.
fn diff<'c, T: Clone + PartialEq + 'c>(
    held: &BTreeMap<Key, T>,
    incoming: impl Iterator<Item = ((&'c str, &'c str), &'c T)>,
) -> Vec<(Key, Option<T>)> {
    let incoming: BTreeMap<(&str, &str), &T> = incoming.collect();
    let mut changes = Vec::new();
    for (key, item) in &incoming {
        let held_item = held.get(&key_of(key.0, key.1));
        if held_item != Some(*item) {
            changes.push((key_of(key.0, key.1), Some((*item).clone())));
        }
    }
    for key in held.keys() {
        if !incoming.contains_key(&(key.0.as_str(), key.1.as_str())) {
            changes.push((key.clone(), None));
        }
    }
    changes
}

impl NodeCompiler {
    /// Compiles `cluster` for `node` in full.
    pub fn new(cluster: &Cluster, node: &str) -> NodeCompiler {
        let mut compiler = NodeCompiler {
            policies: cluster
                .policies
                .iter()
                .map(|p| (key_of(&p.namespace, &p.name), p.clone()))
                .collect(),
            pods: cluster
                .pods
                .iter()
                .map(|p| (key_of(&p.namespace, &p.name), p.clone()))
                .collect(),
            namespaces: namespaces_of(cluster),
            rules: RuleSet {
                node: node.to_string(),
                node_ips: node_ips(cluster, node),
                pods: BTreeMap::new(),
                rejected: cluster.rejected.clone(),
            },
            ..NodeCompiler::empty(node)
        };
        for (key, pod) in &compiler.pods {
            for ip in &pod.ips {
                compiler.owners.entry(*ip).or_default().insert(key.clone());
            }
        }
        let objects = objects(&compiler.pods, &compiler.namespaces);
        for (key, policy) in &compiler.policies {
            let selects_here = compiler
                .pods
                .values()
                .any(|pod| is_local(pod, node) && selects(policy, pod));
            if selects_here {
                let prepared = Prepared::new(policy, &objects, &mut compiler.peers);
                compiler.prepared.insert(key.clone(), prepared);
            }
        }
        let all: Vec<Key> = compiler.pods.keys().cloned().collect();
        compiler.redo_pods(all);
        compiler
    }

    /// A compiler of an empty cluster.
    fn empty(node: &str) -> NodeCompiler {
        NodeCompiler {
            node: node.to_string(),
            policies: BTreeMap::new(),
            pods: BTreeMap::new(),
            namespaces: BTreeMap::new(),
            owners: HashMap::new(),
            peers: PeerSets::new(),
            prepared: BTreeMap::new(),
            local: BTreeMap::new(),
            rules: RuleSet {
                node: node.to_string(),
                node_ips: BTreeSet::new(),
                pods: BTreeMap::new(),
                rejected: Vec::new(),
            },
        }
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Brings the rules to those of `cluster` (what `compile(cluster, node)` returns) by
    /// applying only what changed since the last call.
    pub fn update(&mut self, cluster: &Cluster) -> Changed {
        let namespace_changes = namespace_diff(&self.namespaces, namespaces_of(cluster));
        let pod_changes = diff(
            &self.pods,
            cluster
                .pods
                .iter()
                .map(|p| ((p.namespace.as_str(), p.name.as_str()), p)),
        );
        let policy_changes = diff(
            &self.policies,
            cluster
                .policies
                .iter()
                .map(|p| ((p.namespace.as_str(), p.name.as_str()), p)),
        );
        let count = namespace_changes.len() + pod_changes.len() + policy_changes.len();
        if count > REBUILD_ABOVE {
            // Free the old state first: both at once would double the peak.
            let node = std::mem::take(&mut self.node);
            *self = NodeCompiler::empty(&node);
            *self = NodeCompiler::new(cluster, &node);
            *self = NodeCompiler::new(cluster, &self.node);
            return Changed {
                rebuilt: true,
                ..Changed::default()
            };
        }
        let node_ips = node_ips(cluster, &self.node);
        let others = self.rules.node_ips != node_ips || self.rules.rejected != cluster.rejected;
        if others {
            self.rules.node_ips = node_ips;
            self.rules.rejected = cluster.rejected.clone();
        }
        let mut ips = BTreeSet::new();
        // Namespaces first: the pod changes then test peers against the new labels.
        for (name, labels) in namespace_changes {
            ips.extend(self.change_namespace(name, labels));
        }
        for (key, pod) in pod_changes {
            ips.extend(self.change_pod(key, pod));
        }
        for (key, policy) in policy_changes {
            ips.extend(self.change_policy(key, policy));
        }
        if !ips.is_empty() {
            self.forget_unused_peers();
        }
        Changed {
            rebuilt: false,
            ips,
            others,
        }
    }

    /// Applies one pod's change; the IPs whose rules were redone.
    fn change_pod(&mut self, key: Key, new: Option<Pod>) -> BTreeSet<IpAddr> {
        let old = match new {
            Some(pod) => self.pods.insert(key.clone(), pod),
            None => self.pods.remove(&key),
        };
        let new = self.pods.get(&key);
        let old_ips: Vec<IpAddr> = old.iter().flat_map(|p| p.ips.iter().copied()).collect();
        let new_ips: Vec<IpAddr> = new.iter().flat_map(|p| p.ips.iter().copied()).collect();
        for ip in &old_ips {
            if let Some(owners) = self.owners.get_mut(ip) {
                owners.remove(&key);
                if owners.is_empty() {
                    self.owners.remove(ip);
                }
            }
        }
        for ip in &new_ips {
            self.owners.entry(*ip).or_default().insert(key.clone());
        }
        // Peer selectors the pod entered or left.
        let none = Labels::new();
        let labels_of = |ns: &str| self.namespaces.get(ns).unwrap_or(&none);
        let ns_labels = labels_of(&key.0);
        let mut moved: Vec<PeerKey> = Vec::new();
        for (peer, addrs) in self.peers.iter_mut() {
            let was = old.as_ref().is_some_and(|p| peer.matches(p, ns_labels));
            let is = new.is_some_and(|p| peer.matches(p, ns_labels));
            let mut changed = false;
            if was {
                for ip in &old_ips {
                    // Another matching pod may still hold the address.
                    let held = held_by_peer(&self.owners, &self.pods, peer, ip, labels_of);
                    if !held && addrs.contains(ip) {
                        Arc::make_mut(addrs).remove(ip);
                        changed = true;
                    }
                }
            }
            if is {
                for ip in &new_ips {
                    if !addrs.contains(ip) {
                        Arc::make_mut(addrs).insert(*ip);
                        changed = true;
                    }
                }
            }
            if changed {
                moved.push(peer.clone());
            }
        }
        let touched: Vec<IpAddr> = old_ips.iter().chain(&new_ips).copied().collect();
        let mut stale: BTreeSet<Key> = self
            .prepared
            .iter()
            .filter(|(_, p)| {
                p.peer_keys().any(|k| moved.contains(k))
                    || (p.has_named_egress() && touched.iter().any(|ip| p.has_peer(*ip)))
            })
            .map(|(k, _)| k.clone())
            .collect();
        if let Some(pod) = new.filter(|p| is_local(p, &self.node)) {
            stale.extend(
                self.policies
                    .iter()
                    .filter(|(k, p)| selects(p, pod) && !self.prepared.contains_key(*k))
                    .map(|(k, _)| k.clone()),
            );
        }
        let mut redo = self.prepare_again(&stale);
        redo.insert(key);
        let mut ips = self.redo_pods(redo);
        // Its old addresses too: they may now belong to nobody, or to another pod.
        for ip in touched {
            set_ip_rules(&mut self.rules, &self.owners, &self.local, ip);
            ips.insert(ip);
        }
        ips
    }

    /// Applies one policy's change; the IPs whose rules were redone.
    fn change_policy(&mut self, key: Key, new: Option<Policy>) -> BTreeSet<IpAddr> {
        let old = match new {
            Some(policy) => self.policies.insert(key.clone(), policy),
            None => self.policies.remove(&key),
        };
        self.prepared.remove(&key);
        let mut redo = BTreeSet::new();
        for policy in old.iter().chain(self.policies.get(&key)) {
            redo.extend(self.local_selected_by(policy));
        }
        if let Some(policy) = self.policies.get(&key) {
            if !self.local_selected_by(policy).is_empty() {
                let objects = objects(&self.pods, &self.namespaces);
                let prepared = Prepared::new(policy, &objects, &mut self.peers);
                self.prepared.insert(key, prepared);
            }
        }
        self.redo_pods(redo)
    }

    /// The local pods `policy` selects.
    fn local_selected_by(&self, policy: &Policy) -> BTreeSet<Key> {
        self.local
            .keys()
            .filter(|k| self.pods.get(*k).is_some_and(|pod| selects(policy, pod)))
            .cloned()
            .collect()
    }

    /// Prepares `policies` again from the current peers; the local pods they select.
    fn prepare_again(&mut self, policies: &BTreeSet<Key>) -> BTreeSet<Key> {
        let mut redo = BTreeSet::new();
        if policies.is_empty() {
            return redo;
        }
        let objects = objects(&self.pods, &self.namespaces);
        for key in policies {
            let Some(policy) = self.policies.get(key) else {
                continue;
            };
            let prepared = Prepared::new(policy, &objects, &mut self.peers);
            self.prepared.insert(key.clone(), prepared);
            redo.extend(
                self.local
                    .keys()
                    .filter(|k| self.pods.get(*k).is_some_and(|pod| selects(policy, pod)))
                    .cloned(),
            );
        }
        redo
    }

    /// Works out the rules of the pods `keys` again (dropping those no longer local)
    /// and puts them under their IPs; the IPs.
    fn redo_pods(&mut self, keys: impl IntoIterator<Item = Key>) -> BTreeSet<IpAddr> {
        let policies: Vec<&Prepared> = self.prepared.values().collect();
        let mut ips = BTreeSet::new();
        for key in keys {
            match self.pods.get(&key).filter(|p| is_local(p, &self.node)) {
                Some(pod) => {
                    self.local.insert(key, Arc::new(pod_rules(&policies, pod)));
                    ips.extend(pod.ips.iter().copied());
                }
                None => {
                    self.local.remove(&key);
                }
            }
        }
        for ip in &ips {
            set_ip_rules(&mut self.rules, &self.owners, &self.local, *ip);
        }
        ips
    }

    /// Drops the addresses of peer selectors no prepared policy names any more.
    fn forget_unused_peers(&mut self) {
        if self.peers.len() <= 2 * self.prepared.len().max(16) {
            return;
        }
        let used: std::collections::HashSet<&PeerKey> =
            self.prepared.values().flat_map(|p| p.peer_keys()).collect();
        self.peers.retain(|k, _| used.contains(k));
    }
}

/// The rules under `ip`: those of the last local pod by namespace/name that claims it.
fn set_ip_rules(
    rules: &mut RuleSet,
    owners: &HashMap<IpAddr, BTreeSet<Key>>,
    local: &BTreeMap<Key, Arc<PodRules>>,
    ip: IpAddr,
) {
    let owner = owners
        .get(&ip)
        .and_then(|keys| keys.iter().rev().find_map(|k| local.get(k)));
    match owner {
        Some(pod) => {
            rules.pods.insert(ip, pod.clone());
        }
        None => {
            rules.pods.remove(&ip);
        }
    }
}

/// Whether a pod `peer` selects still claims `ip` (several pods may claim one address
/// while one of them is going away).
fn held_by_peer<'a>(
    owners: &HashMap<IpAddr, BTreeSet<Key>>,
    pods: &BTreeMap<Key, Pod>,
    peer: &PeerKey,
    ip: &IpAddr,
    labels_of: impl Fn(&str) -> &'a Labels,
) -> bool {
    owners.get(ip).is_some_and(|keys| {
        keys.iter().any(|k| {
            pods.get(k)
                .is_some_and(|p| peer.matches(p, labels_of(&k.0)))
        })
    })
}

fn objects<'a>(
    pods: &'a BTreeMap<Key, Pod>,
    namespaces: &'a BTreeMap<String, Labels>,
) -> Objects<'a> {
    Objects::new(
        pods.values(),
        namespaces
            .iter()
            .map(|(name, labels)| (name.as_str(), labels)),
    )
}
