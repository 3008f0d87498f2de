//! Pod peers by selector: the addresses each distinct (namespace selector × pod
//! selector) stands for, worked out once and shared by every policy that names it.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use crate::model::{Cluster, Pod};
use crate::selector::{LabelSelector, Labels};

/// What the compiler reads of the cluster: its pods, and namespace labels by name.
pub(crate) struct Objects<'a> {
    pub pods: Vec<&'a Pod>,
    namespaces: HashMap<&'a str, &'a Labels>,
}

impl<'a> Objects<'a> {
    pub fn new(
        pods: impl Iterator<Item = &'a Pod>,
        namespaces: impl Iterator<Item = (&'a str, &'a Labels)>,
    ) -> Objects<'a> {
        let mut by_name = HashMap::new();
        for (name, labels) in namespaces {
            // As `Cluster::namespace_labels`: the first of a name counts.
            by_name.entry(name).or_insert(labels);
        }
        Objects {
            pods: pods.collect(),
            namespaces: by_name,
        }
    }

    pub fn of(cluster: &'a Cluster) -> Objects<'a> {
        Objects::new(
            cluster.pods.iter(),
            cluster
                .namespaces
                .iter()
                .map(|ns| (ns.name.as_str(), &ns.labels)),
        )
    }

    /// The labels of namespace `name`; none if it is unknown (so only `{}` matches it).
    pub fn namespace_labels(&self, name: &str) -> &Labels {
        static NONE: Labels = Labels::new();
        self.namespaces.get(name).copied().unwrap_or(&NONE)
    }
}

/// A `Pods` peer as what decides membership: with a namespace selector the policy's
/// own namespace does not matter, so peers of many policies share one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PeerKey {
    /// The policy's namespace, only without a namespace selector.
    pub namespace: Option<String>,
    pub pod_selector: Option<LabelSelector>,
    pub namespace_selector: Option<LabelSelector>,
}

impl PeerKey {
    pub fn new(
        policy_namespace: &str,
        pod_selector: &Option<LabelSelector>,
        namespace_selector: &Option<LabelSelector>,
    ) -> PeerKey {
        PeerKey {
            namespace: namespace_selector
                .is_none()
                .then(|| policy_namespace.to_string()),
            pod_selector: pod_selector.clone(),
            namespace_selector: namespace_selector.clone(),
        }
    }

    /// Whether `pod`, in a namespace labelled `namespace_labels`, is such a peer.
    pub fn matches(&self, pod: &Pod, namespace_labels: &Labels) -> bool {
        let in_namespace = match (&self.namespace_selector, &self.namespace) {
            (Some(selector), _) => selector.matches(namespace_labels),
            (None, Some(namespace)) => &pod.namespace == namespace,
            (None, None) => false,
        };
        in_namespace
            && self
                .pod_selector
                .as_ref()
                .is_none_or(|s| s.matches(&pod.labels))
    }
}

/// The pod addresses of each peer key asked for so far.
pub(crate) type PeerSets = HashMap<PeerKey, Arc<BTreeSet<IpAddr>>>;

/// The addresses of `key`, worked out from `objects` the first time.
pub(crate) fn peer_addrs<'s>(
    sets: &'s mut PeerSets,
    key: &PeerKey,
    objects: &Objects,
) -> &'s Arc<BTreeSet<IpAddr>> {
    sets.entry(key.clone()).or_insert_with(|| {
        Arc::new(
            objects
                .pods
                .iter()
                .filter(|pod| key.matches(pod, objects.namespace_labels(&pod.namespace)))
                .flat_map(|pod| pod.ips.iter().copied())
                .collect(),
        )
    })
}
