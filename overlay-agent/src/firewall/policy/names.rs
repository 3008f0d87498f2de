//! Names of the policy table's objects that stay the same from one render to the next:
//! a pod's chain keeps its number while the pod is isolated, a set its number while some
//! rule uses that content, a counter its number while its policy isolates a pod. So two
//! renders differ only where the rules do, and a change can be applied as a diff.
//! Numbers are never handed out twice, so a name never means two things in one diff.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use twill_policy::ruleset::PolicyRef;

use super::PolicyDirection;

/// Numbers for keys, in the order keys are first asked for.
#[derive(Debug)]
pub(super) struct Registry<K> {
    ids: HashMap<K, u64>,
    next: u64,
    /// Keys asked for since [`Registry::begin`].
    used: HashSet<K>,
}

impl<K> Default for Registry<K> {
    fn default() -> Self {
        Registry {
            ids: HashMap::new(),
            next: 0,
            used: HashSet::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> Registry<K> {
    pub(super) fn id(&mut self, key: &K) -> u64 {
        if !self.used.contains(key) {
            self.used.insert(key.clone());
        }
        if let Some(id) = self.ids.get(key) {
            return *id;
        }
        let id = self.next;
        self.next += 1;
        self.ids.insert(key.clone(), id);
        id
    }

    fn begin(&mut self) {
        self.used.clear();
    }

    /// Forgets keys not asked for since [`Registry::begin`].
    fn end(&mut self) {
        let used = std::mem::take(&mut self.used);
        self.ids.retain(|k, _| used.contains(k));
    }
}

/// The numbering of one table across renders; a fresh one numbers from 0 in render
/// order.
#[derive(Debug, Default)]
pub struct PolicyNames {
    /// Per direction (ingress, egress): pods by namespace/name.
    pub(super) pods: [Registry<(String, String)>; 2],
    /// Per direction: counters by policy.
    pub(super) counters: [Registry<PolicyRef>; 2],
    /// Peer and port sets by content.
    pub(super) peers: Registry<String>,
    pub(super) ports: Registry<String>,
}

impl PolicyNames {
    pub(super) fn begin(&mut self) {
        self.pods.iter_mut().for_each(Registry::begin);
        self.counters.iter_mut().for_each(Registry::begin);
        self.peers.begin();
        self.ports.begin();
    }

    pub(super) fn end(&mut self) {
        self.pods.iter_mut().for_each(Registry::end);
        self.counters.iter_mut().for_each(Registry::end);
        self.peers.end();
        self.ports.end();
    }
}

pub(super) fn index(direction: PolicyDirection) -> usize {
    match direction {
        PolicyDirection::Ingress => 0,
        PolicyDirection::Egress => 1,
    }
}
