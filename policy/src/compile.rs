//! The compiler: (policies, pods, namespaces, node) → the [`RuleSet`] of that node's pods.
//! Selectors are evaluated here, once, into address sets; named ports into numbers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::model::{Cluster, Peer, Pod, Policy, PolicyPort, PortRef, Protocol, Rule};
use crate::peers::{peer_addrs, Objects, PeerKey, PeerSets};
use crate::ruleset::{
    AllowEntry, Direction, PeerMatch, PodRules, PolicyRef, PortMatch, PortRange, RuleSet,
};

/// The rules node `node` enforces for its pods (those whose `nodeName` is `node`). An IP
/// that two local pods claim gets the rules of the last of them by namespace/name.
pub fn compile(cluster: &Cluster, node: &str) -> RuleSet {
    let mut local: Vec<&Pod> = cluster
        .pods
        .iter()
        .filter(|pod| is_local(pod, node))
        .collect();
    local.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let objects = Objects::of(cluster);
    let mut peers = PeerSets::new();
    // Only policies that select a pod here need their peers worked out.
    let policies: Vec<Prepared> = cluster
        .policies
        .iter()
        .filter(|policy| local.iter().any(|pod| selects(policy, pod)))
        .map(|policy| Prepared::new(policy, &objects, &mut peers))
        .collect();
    let policies: Vec<&Prepared> = policies.iter().collect();
    let mut pods = BTreeMap::new();
    for pod in local {
        let rules = Arc::new(pod_rules(&policies, pod));
        for ip in &pod.ips {
            pods.insert(*ip, rules.clone());
        }
    }
    RuleSet {
        node: node.to_string(),
        node_ips: node_ips(cluster, node),
        pods,
        rejected: cluster.rejected.clone(),
    }
}

pub(crate) fn is_local(pod: &Pod, node: &str) -> bool {
    pod.node_name.as_deref() == Some(node)
}

pub(crate) fn node_ips(cluster: &Cluster, node: &str) -> BTreeSet<IpAddr> {
    cluster
        .node_ips
        .get(node)
        .into_iter()
        .flatten()
        .copied()
        .collect()
}

/// The ingress and egress of `pod` under `policies` (those that do not select it are
/// skipped).
pub(crate) fn pod_rules(policies: &[&Prepared], pod: &Pod) -> PodRules {
    PodRules {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        ingress: direction(policies, pod, Way::Ingress),
        egress: direction(policies, pod, Way::Egress),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    Ingress,
    Egress,
}

/// A policy with what its rules need that does not depend on the pod it selects.
pub(crate) struct Prepared {
    pub policy: Policy,
    policy_ref: PolicyRef,
    ingress: Vec<PreparedRule>,
    egress: Vec<PreparedRule>,
}

struct PreparedRule {
    ports: Vec<PolicyPort>,
    /// The peers as addresses; no peers listed is every peer.
    peers: Vec<PeerMatch>,
    /// The selector peers among them, by key.
    keys: Vec<PeerKey>,
    /// Egress only: the entries of named ports, which resolve on the destinations.
    named_egress: Vec<AllowEntry>,
}

impl Prepared {
    pub fn new(policy: &Policy, objects: &Objects, sets: &mut PeerSets) -> Prepared {
        let policy_ref = PolicyRef {
            namespace: policy.namespace.clone(),
            name: policy.name.clone(),
        };
        let mut prepare = |rule: &Rule, way: Way| {
            let mut keys = Vec::new();
            let peers: Vec<PeerMatch> = if rule.peers.is_empty() {
                vec![PeerMatch::Any]
            } else {
                rule.peers
                    .iter()
                    .map(|peer| match peer {
                        Peer::IpBlock(block) => PeerMatch::Cidr {
                            cidr: block.cidr,
                            except: block.except.iter().copied().collect(),
                        },
                        Peer::Pods {
                            pod_selector,
                            namespace_selector,
                        } => {
                            let key =
                                PeerKey::new(&policy.namespace, pod_selector, namespace_selector);
                            let addrs = peer_addrs(sets, &key, objects).clone();
                            keys.push(key);
                            PeerMatch::Addrs(addrs)
                        }
                    })
                    .collect()
            };
            let mut named_egress = Vec::new();
            for port in rule.ports.iter().filter(|_| way == Way::Egress) {
                let Some(PortRef::Named(name)) = &port.port else {
                    continue;
                };
                for peer in &peers {
                    for (range, addrs) in named_destinations(objects, peer, name, port.protocol) {
                        named_egress.push(AllowEntry {
                            peer: PeerMatch::Addrs(addrs.into()),
                            ports: PortMatch::List(BTreeSet::from([range])),
                            policy: policy_ref.clone(),
                        });
                    }
                }
            }
            PreparedRule {
                ports: rule.ports.clone(),
                peers,
                keys,
                named_egress,
            }
        };
        let ingress = policy
            .ingress
            .iter()
            .map(|r| prepare(r, Way::Ingress))
            .collect();
        let egress = policy
            .egress
            .iter()
            .map(|r| prepare(r, Way::Egress))
            .collect();
        Prepared {
            policy: policy.clone(),
            policy_ref,
            ingress,
            egress,
        }
    }

    fn rules(&self) -> impl Iterator<Item = &PreparedRule> {
        self.ingress.iter().chain(&self.egress)
    }

    /// The selector peers of its rules.
    pub fn peer_keys(&self) -> impl Iterator<Item = &PeerKey> {
        self.rules().flat_map(|rule| &rule.keys)
    }

    /// Whether an egress rule names a port, which then resolves on every peer pod.
    pub fn has_named_egress(&self) -> bool {
        self.egress.iter().any(|rule| {
            rule.ports
                .iter()
                .any(|p| matches!(p.port, Some(PortRef::Named(_))))
        })
    }

    /// Whether `ip` is among the peers of one of its rules.
    pub fn has_peer(&self, ip: IpAddr) -> bool {
        self.rules()
            .flat_map(|rule| &rule.peers)
            .any(|peer| peer.matches(ip))
    }
}

pub(crate) fn selects(policy: &Policy, pod: &Pod) -> bool {
    policy.namespace == pod.namespace && policy.pod_selector.matches(&pod.labels)
}

fn direction(policies: &[&Prepared], pod: &Pod, way: Way) -> Direction {
    let mut by = BTreeSet::new();
    let mut entries = BTreeSet::new();
    for prepared in policies {
        let policy = &prepared.policy;
        let (isolates, rules) = match way {
            Way::Ingress => (policy.isolates_ingress, &prepared.ingress),
            Way::Egress => (policy.isolates_egress, &prepared.egress),
        };
        if !isolates || !selects(policy, pod) {
            continue;
        }
        by.insert(prepared.policy_ref.clone());
        for rule in rules {
            entries.extend(rule_entries(&prepared.policy_ref, rule, pod, way));
        }
    }
    if !by.is_empty() {
        Direction::Isolated { by, entries }
    } else {
        Direction::NotIsolated
    }
}

/// The entries one rule contributes to `pod`'s ingress or egress.
fn rule_entries(
    policy: &PolicyRef,
    prepared: &PreparedRule,
    pod: &Pod,
    way: Way,
) -> Vec<AllowEntry> {
    let entry = |peer: &PeerMatch, ports: PortMatch| AllowEntry {
        peer: peer.clone(),
        ports,
        policy: policy.clone(),
    };
    if prepared.ports.is_empty() {
        return prepared
            .peers
            .iter()
            .map(|peer| entry(peer, PortMatch::Any))
            .collect();
    }
    // Ports the peer does not change: numbers, whole protocols, and for ingress the
    // names, which resolve on the selected pod itself.
    let fixed: BTreeSet<PortRange> = prepared
        .ports
        .iter()
        .flat_map(|port| match (&port.port, way) {
            (Some(PortRef::Named(name)), Way::Ingress) => resolve(pod, name, port.protocol),
            (Some(PortRef::Named(_)), Way::Egress) => Vec::new(),
            _ => vec![numeric_range(port)],
        })
        .collect();
    let mut entries = prepared.named_egress.clone();
    // An unresolvable name matches nothing: no entry rather than an empty one.
    if !fixed.is_empty() {
        entries.extend(
            prepared
                .peers
                .iter()
                .map(|peer| entry(peer, PortMatch::List(fixed.clone()))),
        );
    }
    entries
}

/// For an egress named port: the pod IPs within `peer` grouped by what `name` resolves to
/// on each pod, so each group becomes one (addresses, port) entry.
fn named_destinations(
    objects: &Objects,
    peer: &PeerMatch,
    name: &str,
    protocol: Protocol,
) -> BTreeMap<PortRange, BTreeSet<IpAddr>> {
    let mut groups: BTreeMap<PortRange, BTreeSet<IpAddr>> = BTreeMap::new();
    for pod in &objects.pods {
        let ips: Vec<IpAddr> = pod
            .ips
            .iter()
            .copied()
            .filter(|ip| peer.matches(*ip))
            .collect();
        if ips.is_empty() {
            continue;
        }
        for range in resolve(pod, name, protocol) {
            groups.entry(range).or_default().extend(ips.iter().copied());
        }
    }
    groups
}

/// What port name `name` resolves to on `pod`, as single-port ranges.
fn resolve(pod: &Pod, name: &str, protocol: Protocol) -> Vec<PortRange> {
    pod.named_port(name, protocol)
        .map(|port| PortRange {
            protocol,
            start: port,
            end: port,
        })
        .collect()
}

/// A policy port that is not a name: one number, a range, or the whole protocol.
fn numeric_range(port: &PolicyPort) -> PortRange {
    match port.port {
        Some(PortRef::Number(start)) => PortRange {
            protocol: port.protocol,
            start,
            end: port.end_port.unwrap_or(start),
        },
        _ => PortRange::all(port.protocol),
    }
}
