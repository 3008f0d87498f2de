//! The straightforward evaluator, written from the Kubernetes semantics with no
//! precomputation: the oracle the compiler is tested against, not for production use.

use std::net::IpAddr;

use crate::model::{Cluster, Peer, Pod, PolicyPort, PortRef, Rule};
use crate::ruleset::Connection;

/// Whether `connection` is allowed: egress of its source pod (if a scheduled pod) AND
/// ingress of its destination pod (if a scheduled pod).
pub fn allowed(cluster: &Cluster, connection: &Connection) -> bool {
    // A pod reaching itself is never judged.
    connection.src == connection.dst
        || direction_allows(cluster, connection, connection.src, connection.dst, false)
            && direction_allows(cluster, connection, connection.dst, connection.src, true)
}

/// Whether the pod at `own` (if any) lets traffic with `other` pass, in the direction
/// `ingress` says.
fn direction_allows(
    cluster: &Cluster,
    connection: &Connection,
    own: IpAddr,
    other: IpAddr,
    ingress: bool,
) -> bool {
    let Some(pod) = pod_at(cluster, own) else {
        return true;
    };
    let Some(node) = &pod.node_name else {
        return true;
    };
    if cluster
        .node_ips
        .get(node)
        .is_some_and(|ips| ips.contains(&other))
    {
        return true;
    }
    let mut isolated = false;
    let mut allowed = false;
    for policy in &cluster.policies {
        let isolates = if ingress {
            policy.isolates_ingress
        } else {
            policy.isolates_egress
        };
        if policy.namespace != pod.namespace
            || !isolates
            || !policy.pod_selector.matches(&pod.labels)
        {
            continue;
        }
        isolated = true;
        let rules = if ingress {
            &policy.ingress
        } else {
            &policy.egress
        };
        // For ingress a named port is looked up on the selected pod, for egress on the
        // destination.
        let target = if ingress {
            Some(pod)
        } else {
            pod_at(cluster, other)
        };
        allowed |= rules
            .iter()
            .any(|rule| rule_allows(cluster, &policy.namespace, rule, other, connection, target));
    }
    !isolated || allowed
}

fn rule_allows(
    cluster: &Cluster,
    policy_namespace: &str,
    rule: &Rule,
    peer: IpAddr,
    connection: &Connection,
    target: Option<&Pod>,
) -> bool {
    let peer_ok = rule.peers.is_empty()
        || rule
            .peers
            .iter()
            .any(|p| peer_matches(cluster, policy_namespace, p, peer));
    let port_ok = rule.ports.is_empty()
        || rule
            .ports
            .iter()
            .any(|p| port_matches(p, connection, target));
    peer_ok && port_ok
}

fn peer_matches(cluster: &Cluster, policy_namespace: &str, peer: &Peer, ip: IpAddr) -> bool {
    match peer {
        Peer::IpBlock(block) => block.contains(ip),
        Peer::Pods {
            pod_selector,
            namespace_selector,
        } => pod_at(cluster, ip).is_some_and(|pod| {
            let namespace_ok = match namespace_selector {
                None => pod.namespace == policy_namespace,
                Some(selector) => selector.matches(cluster.namespace_labels(&pod.namespace)),
            };
            namespace_ok && pod_selector.as_ref().is_none_or(|s| s.matches(&pod.labels))
        }),
    }
}

fn port_matches(port: &PolicyPort, connection: &Connection, target: Option<&Pod>) -> bool {
    if port.protocol != connection.protocol {
        return false;
    }
    match &port.port {
        None => true,
        Some(PortRef::Number(start)) => {
            let end = port.end_port.unwrap_or(*start);
            (*start..=end).contains(&connection.port)
        }
        Some(PortRef::Named(name)) => target.is_some_and(|pod| {
            pod.named_port(name, port.protocol)
                .any(|number| number == connection.port)
        }),
    }
}

fn pod_at(cluster: &Cluster, ip: IpAddr) -> Option<&Pod> {
    cluster.pods.iter().find(|pod| pod.ips.contains(&ip))
}
