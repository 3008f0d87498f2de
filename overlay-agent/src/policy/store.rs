//! The pure part of the policy source: watch events applied to stores of slim parsed
//! objects, and the [`Cluster`] built from them. No I/O.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::Value;
use twill_policy::{Cluster, Kind, ModelError, Namespace, Pod, Policy, Rejected};

/// Per node name, that node's own IPs.
pub type NodeIps = BTreeMap<String, Vec<IpAddr>>;

/// An object's namespace (empty for a cluster-scoped one) and name.
pub type Key = (String, String);

/// What a watcher reports about one kind of object; objects come as the API's JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// A (re-)list starts; the objects up to [`WatchEvent::ListDone`] replace the store
    /// then, all at once, so a re-list after an error never shows a half-empty store.
    ListStart,
    Listed(Value),
    ListDone,
    Applied(Value),
    Deleted(Key),
}

/// An object as kept: parsed, or rejected with the reason.
type Entry<T> = Result<T, Rejected>;

/// The objects of one kind, keyed by namespace and name, parsed on arrival; the API
/// object itself is never kept.
#[derive(Debug)]
pub struct ObjectStore<T> {
    kind: Kind,
    parse: fn(&Value) -> Result<T, ModelError>,
    current: BTreeMap<Key, Entry<T>>,
    /// The objects of a list in progress.
    listing: Option<BTreeMap<Key, Entry<T>>>,
    /// A first list has completed.
    listed: bool,
}

impl<T: PartialEq + Clone> ObjectStore<T> {
    pub fn new(kind: Kind, parse: fn(&Value) -> Result<T, ModelError>) -> Self {
        ObjectStore {
            kind,
            parse,
            current: BTreeMap::new(),
            listing: None,
            listed: false,
        }
    }

    /// Applies one event; true when what the store holds changed.
    pub fn apply(&mut self, event: WatchEvent) -> bool {
        match event {
            WatchEvent::ListStart => {
                self.listing = Some(BTreeMap::new());
                false
            }
            WatchEvent::Listed(value) => {
                let Some((key, entry)) = self.parsed(&value) else {
                    return false;
                };
                match self.listing.as_mut() {
                    Some(listing) => {
                        listing.insert(key, entry);
                        false
                    }
                    // Not inside a list: as good as an update.
                    None => self.upsert(key, entry),
                }
            }
            WatchEvent::ListDone => {
                let first = !self.listed;
                self.listed = true;
                match self.listing.take() {
                    Some(listed) => {
                        let changed = first || listed != self.current;
                        self.current = listed;
                        changed
                    }
                    None => first,
                }
            }
            WatchEvent::Applied(value) => match self.parsed(&value) {
                Some((key, entry)) => self.upsert(key, entry),
                None => false,
            },
            WatchEvent::Deleted(key) => self.current.remove(&key).is_some(),
        }
    }

    /// Whether a first list has completed.
    pub fn listed(&self) -> bool {
        self.listed
    }

    pub fn len(&self) -> usize {
        self.current.len()
    }

    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }

    /// The parsed objects, in key order.
    pub fn parsed_objects(&self) -> impl Iterator<Item = &T> {
        self.current
            .values()
            .filter_map(|entry| entry.as_ref().ok())
    }

    /// The rejected objects, in key order.
    pub fn rejected(&self) -> impl Iterator<Item = &Rejected> {
        self.current
            .values()
            .filter_map(|entry| entry.as_ref().err())
    }

    fn upsert(&mut self, key: Key, entry: Entry<T>) -> bool {
        self.current.get(&key) != Some(&entry) && {
            self.current.insert(key, entry);
            true
        }
    }

    /// The object's key and its parse; `None` without `metadata.name` (the API server
    /// never sends such an object, and there is nothing to key it by).
    fn parsed(&self, value: &Value) -> Option<(Key, Entry<T>)> {
        let meta = |field: &str| {
            value
                .pointer(&format!("/metadata/{field}"))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let key = (meta("namespace").unwrap_or_default(), meta("name")?);
        let entry = (self.parse)(value).map_err(|error| Rejected {
            kind: self.kind,
            namespace: key.0.clone(),
            name: key.1.clone(),
            error,
            // A bad policy fails closed: its stand-in is computed now, as the API
            // object is not kept.
            isolating: match self.kind {
                Kind::NetworkPolicy => Policy::isolating_only(value),
                Kind::Pod | Kind::Namespace => None,
            },
        });
        Some((key, entry))
    }
}

/// Everything a [`Cluster`] is built from: policies, pods and namespaces as watched,
/// and the node IPs the caller supplies.
#[derive(Debug)]
pub struct ClusterStore {
    pub policies: ObjectStore<Policy>,
    pub pods: ObjectStore<Pod>,
    pub namespaces: ObjectStore<Namespace>,
    node_ips: NodeIps,
}

impl Default for ClusterStore {
    fn default() -> Self {
        ClusterStore {
            policies: ObjectStore::new(Kind::NetworkPolicy, Policy::from_json),
            pods: ObjectStore::new(Kind::Pod, Pod::from_json),
            namespaces: ObjectStore::new(Kind::Namespace, Namespace::from_json),
            node_ips: NodeIps::new(),
        }
    }
}

impl ClusterStore {
    /// Applies an event of `kind`'s watcher; true when the store changed.
    pub fn apply(&mut self, kind: Kind, event: WatchEvent) -> bool {
        match kind {
            Kind::NetworkPolicy => self.policies.apply(event),
            Kind::Pod => self.pods.apply(event),
            Kind::Namespace => self.namespaces.apply(event),
        }
    }

    /// Replaces the node IPs; true when they changed.
    pub fn set_node_ips(&mut self, node_ips: NodeIps) -> bool {
        node_ips != self.node_ips && {
            self.node_ips = node_ips;
            true
        }
    }

    /// All three kinds have been listed once: until then a cluster would be partial
    /// (policies without the pods they allow, say), so nothing may be enforced from it.
    pub fn synced(&self) -> bool {
        self.policies.listed() && self.pods.listed() && self.namespaces.listed()
    }

    /// The cluster as it stands, deterministic: objects in key order, rejected ones by
    /// kind, then key. A rejected policy is in `policies` as its isolating-only stand-in.
    pub fn cluster(&self) -> Cluster {
        Cluster {
            policies: self
                .policies
                .current
                .values()
                .filter_map(|entry| match entry {
                    Ok(policy) => Some(policy.clone()),
                    Err(rejected) => rejected.isolating.clone(),
                })
                .collect(),
            pods: self.pods.parsed_objects().cloned().collect(),
            namespaces: self.namespaces.parsed_objects().cloned().collect(),
            node_ips: self.node_ips.clone(),
            rejected: self
                .policies
                .rejected()
                .chain(self.pods.rejected())
                .chain(self.namespaces.rejected())
                .cloned()
                .collect(),
        }
    }
}
