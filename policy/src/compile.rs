//! The compiler: (policies, pods, namespaces, node) → the [`RuleSet`] of that node's pods.
//! Selectors are evaluated here, once, into address sets; named ports into numbers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::model::{Cluster, Peer, Pod, Policy, PolicyPort, PortRef, Protocol, Rule};
use crate::ruleset::{
    AllowEntry, Direction, PeerMatch, PodRules, PolicyRef, PortMatch, PortRange, RuleSet,
};

/// The rules node `node` enforces for its pods (those whose `nodeName` is `node`).
pub fn compile(cluster: &Cluster, node: &str) -> RuleSet {
    let local: Vec<&Pod> = cluster
        .pods
        .iter()
        .filter(|pod| pod.node_name.as_deref() == Some(node))
        .collect();
    // Only policies that select a pod here need their peers worked out.
    let policies: Vec<Prepared> = cluster
        .policies
        .iter()
        .filter(|policy| local.iter().any(|pod| selects(policy, pod)))
        .map(|policy| Prepared::new(cluster, policy))
        .collect();
    let mut pods = BTreeMap::new();
    for pod in local {
        let rules = PodRules {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            ingress: direction(&policies, pod, Way::Ingress),
            egress: direction(&policies, pod, Way::Egress),
        };
        for ip in &pod.ips {
            pods.insert(*ip, rules.clone());
        }
    }
    RuleSet {
        node: node.to_string(),
        node_ips: cluster
            .node_ips
            .get(node)
            .into_iter()
            .flatten()
            .copied()
            .collect(),
        pods,
        rejected: cluster.rejected.clone(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    Ingress,
    Egress,
}

/// A policy with what its rules need that does not depend on the pod it selects,
/// worked out once per compile.
struct Prepared<'a> {
    policy: &'a Policy,
    policy_ref: PolicyRef,
    ingress: Vec<PreparedRule<'a>>,
    egress: Vec<PreparedRule<'a>>,
}

struct PreparedRule<'a> {
    rule: &'a Rule,
    /// The peers as addresses; no peers listed is every peer.
    peers: Vec<PeerMatch>,
    /// Egress only: the entries of named ports, which resolve on the destinations.
    named_egress: Vec<AllowEntry>,
}

impl<'a> Prepared<'a> {
    fn new(cluster: &Cluster, policy: &'a Policy) -> Prepared<'a> {
        let policy_ref = PolicyRef {
            namespace: policy.namespace.clone(),
            name: policy.name.clone(),
        };
        let prepare = |rule: &'a Rule, way: Way| {
            let peers: Vec<PeerMatch> = if rule.peers.is_empty() {
                vec![PeerMatch::Any]
            } else {
                rule.peers
                    .iter()
                    .map(|peer| peer_match(cluster, &policy.namespace, peer))
                    .collect()
            };
            let mut named_egress = Vec::new();
            for port in rule.ports.iter().filter(|_| way == Way::Egress) {
                let Some(PortRef::Named(name)) = &port.port else {
                    continue;
                };
                for peer in &peers {
                    for (range, addrs) in named_destinations(cluster, peer, name, port.protocol) {
                        named_egress.push(AllowEntry {
                            peer: PeerMatch::Addrs(addrs),
                            ports: PortMatch::List(BTreeSet::from([range])),
                            policy: policy_ref.clone(),
                        });
                    }
                }
            }
            PreparedRule {
                rule,
                peers,
                named_egress,
            }
        };
        Prepared {
            ingress: policy
                .ingress
                .iter()
                .map(|r| prepare(r, Way::Ingress))
                .collect(),
            egress: policy
                .egress
                .iter()
                .map(|r| prepare(r, Way::Egress))
                .collect(),
            policy,
            policy_ref,
        }
    }
}

fn selects(policy: &Policy, pod: &Pod) -> bool {
    policy.namespace == pod.namespace && policy.pod_selector.matches(&pod.labels)
}

fn direction(policies: &[Prepared], pod: &Pod, way: Way) -> Direction {
    let mut by = BTreeSet::new();
    let mut entries = BTreeSet::new();
    for prepared in policies {
        let policy = prepared.policy;
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
    let rule = prepared.rule;
    if rule.ports.is_empty() {
        return prepared
            .peers
            .iter()
            .map(|peer| entry(peer, PortMatch::Any))
            .collect();
    }
    // Ports the peer does not change: numbers, whole protocols, and for ingress the
    // names, which resolve on the selected pod itself.
    let fixed: BTreeSet<PortRange> = rule
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

/// The addresses a peer stands for.
fn peer_match(cluster: &Cluster, policy_namespace: &str, peer: &Peer) -> PeerMatch {
    match peer {
        Peer::IpBlock(block) => PeerMatch::Cidr {
            cidr: block.cidr,
            except: block.except.iter().copied().collect(),
        },
        Peer::Pods {
            pod_selector,
            namespace_selector,
        } => PeerMatch::Addrs(
            cluster
                .pods
                .iter()
                .filter(|pod| {
                    let in_namespace = match namespace_selector {
                        None => pod.namespace == policy_namespace,
                        Some(selector) => {
                            selector.matches(cluster.namespace_labels(&pod.namespace))
                        }
                    };
                    in_namespace && pod_selector.as_ref().is_none_or(|s| s.matches(&pod.labels))
                })
                .flat_map(|pod| pod.ips.iter().copied())
                .collect(),
        ),
    }
}

/// For an egress named port: the pod IPs within `peer` grouped by what `name` resolves to
/// on each pod, so each group becomes one (addresses, port) entry.
fn named_destinations(
    cluster: &Cluster,
    peer: &PeerMatch,
    name: &str,
    protocol: Protocol,
) -> BTreeMap<PortRange, BTreeSet<IpAddr>> {
    let mut groups: BTreeMap<PortRange, BTreeSet<IpAddr>> = BTreeMap::new();
    for pod in &cluster.pods {
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
