//! A namespace's labels changed (or it came or went): only peer selectors with a
//! namespace selector read them, and only through the pods of that namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use super::{held_by_peer, Key, NodeCompiler};
use crate::model::{Cluster, Pod};
use crate::peers::PeerKey;
use crate::selector::Labels;

/// Namespace labels by name; the first of a name counts, as in a full compile.
pub(super) fn namespaces_of(cluster: &Cluster) -> BTreeMap<String, Labels> {
    let mut map = BTreeMap::new();
    for ns in &cluster.namespaces {
        map.entry(ns.name.clone())
            .or_insert_with(|| ns.labels.clone());
    }
    map
}

/// `(name, Some(labels))` for added or relabelled namespaces, `(name, None)` for gone ones.
pub(super) fn namespace_diff(
    held: &BTreeMap<String, Labels>,
    incoming: BTreeMap<String, Labels>,
) -> Vec<(String, Option<Labels>)> {
    let mut changes: Vec<(String, Option<Labels>)> = held
        .keys()
        .filter(|name| !incoming.contains_key(*name))
        .map(|name| (name.clone(), None))
        .collect();
    for (name, labels) in incoming {
        if held.get(&name) != Some(&labels) {
            changes.push((name, Some(labels)));
        }
    }
    changes
}

impl NodeCompiler {
    /// Applies one namespace's new labels (`None`: it is gone); the IPs whose rules
    /// were redone.
    pub(super) fn change_namespace(
        &mut self,
        name: String,
        labels: Option<Labels>,
    ) -> BTreeSet<IpAddr> {
        let old = match labels {
            Some(labels) => self.namespaces.insert(name.clone(), labels),
            None => self.namespaces.remove(&name),
        };
        let none = Labels::new();
        let old_labels = old.as_ref().unwrap_or(&none);
        let namespaces = &self.namespaces;
        let labels_of = |ns: &str| namespaces.get(ns).unwrap_or(&none);
        let new_labels = labels_of(&name);
        let in_namespace: Vec<(&Key, &Pod)> = self
            .pods
            .range((name.clone(), String::new())..)
            .take_while(|(key, _)| key.0 == name)
            .collect();
        let mut moved: Vec<PeerKey> = Vec::new();
        for (peer, addrs) in self.peers.iter_mut() {
            let Some(selector) = &peer.namespace_selector else {
                continue;
            };
            let is = selector.matches(new_labels);
            if selector.matches(old_labels) == is {
                continue;
            }
            let mut changed = false;
            for (_, pod) in &in_namespace {
                // The pod selector alone decides now that the namespace flipped.
                let labels = if is { new_labels } else { old_labels };
                if !peer.matches(pod, labels) {
                    continue;
                }
                for ip in &pod.ips {
                    if is {
                        if !addrs.contains(ip) {
                            Arc::make_mut(addrs).insert(*ip);
                            changed = true;
                        }
                        continue;
                    }
                    // A pod of another namespace may still hold the address as a peer.
                    let held = held_by_peer(&self.owners, &self.pods, peer, ip, labels_of);
                    if !held && addrs.contains(ip) {
                        Arc::make_mut(addrs).remove(ip);
                        changed = true;
                    }
                }
            }
            if changed {
                moved.push(peer.clone());
            }
        }
        if moved.is_empty() {
            return BTreeSet::new();
        }
        let stale: BTreeSet<Key> = self
            .prepared
            .iter()
            .filter(|(_, p)| p.peer_keys().any(|k| moved.contains(k)))
            .map(|(k, _)| k.clone())
            .collect();
        let redo = self.prepare_again(&stale);
        self.redo_pods(redo)
    }
}
