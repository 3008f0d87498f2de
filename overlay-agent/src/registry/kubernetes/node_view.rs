//! What a Node object means to the overlay: the pure mapping between Nodes and
//! records (annotations, podCIDRs, the readiness condition), no API calls.

use super::slim_node::SlimNode;
use crate::record::{Mac, VtepRecord};
use crate::registry::{Announcement, Malformed, Snapshot};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, NodeCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::IpAddr;
use twill_conf::cluster::PodNetwork;

/// The tunnel endpoint the agent found on the node.
pub const PUBLIC_IP: &str = "twill.io/public-ip";
/// Set by the operator for a node behind NAT: peers send to this address instead.
pub const PUBLIC_IP_OVERWRITE: &str = "twill.io/public-ip-overwrite";
pub const VTEP_MAC: &str = "twill.io/vtep-mac";
pub const BACKEND: &str = "twill.io/backend-type";

pub(super) const NETWORK_UNAVAILABLE: &str = "NetworkUnavailable";

/// What a Node object means to the overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeView {
    Peer(VtepRecord),
    /// Not (yet) part of the overlay: no podCIDR, or no agent has annotated it.
    Absent(String),
    Malformed(Malformed),
}

/// The subnets of `node` that belong to a configured address family. A podCIDR of a
/// family the cluster config does not carry (an IPv6 podCIDR on an IPv4-only Twill) is
/// left out; whether the rest lies inside the cluster network is the peer validation's
/// call.
pub fn node_subnets(node: &SlimNode, networks: &[PodNetwork]) -> Result<Vec<IpNet>, String> {
    let spec = node.spec.as_ref();
    // The error names the field the value came from: an older API server sets only podCIDR.
    let (field, cidrs): (&str, Vec<&String>) = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
        Some(list) if !list.is_empty() => ("spec.podCIDRs", list.iter().collect()),
        _ => (
            "spec.podCIDR",
            spec.and_then(|s| s.pod_cidr.as_ref()).into_iter().collect(),
        ),
    };
    parse_subnets(field, cidrs, networks)
}

/// `cidrs` (the value of `field`) as subnets, those of an unconfigured family left out.
pub(super) fn parse_subnets<'a>(
    field: &str,
    cidrs: impl IntoIterator<Item = &'a String>,
    networks: &[PodNetwork],
) -> Result<Vec<IpNet>, String> {
    let mut out = Vec::new();
    for c in cidrs {
        let net: IpNet = c
            .parse()
            .map_err(|_| format!("{field}: {c:?} is not a CIDR"))?;
        if net.trunc() != net {
            return Err(format!("{field}: {c:?} has host bits set"));
        }
        if networks
            .iter()
            .any(|n| n.network.addr().is_ipv4() == net.addr().is_ipv4())
        {
            out.push(net);
        }
    }
    Ok(out)
}

pub(super) fn annotation<'a>(node: &'a SlimNode, key: &str) -> Option<&'a str> {
    node.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(|s| s.trim())
}

/// Maps one Node to a record. The user's `twill.io/public-ip-overwrite` wins over the
/// address the agent published; a malformed annotation rejects the whole Node rather
/// than guessing an endpoint.
pub fn node_view(node: &SlimNode, networks: &[PodNetwork]) -> NodeView {
    let name = node.metadata.name.clone().unwrap_or_default();
    let malformed = |reason: String| {
        NodeView::Malformed(Malformed {
            source: format!("Node {name}"),
            reason,
        })
    };
    let subnets = match node_subnets(node, networks) {
        Ok(s) => s,
        Err(e) => return malformed(e),
    };
    if subnets.is_empty() {
        return NodeView::Absent("no spec.podCIDR assigned yet".into());
    }
    let Some(mac) = annotation(node, VTEP_MAC) else {
        return NodeView::Absent(format!("no {VTEP_MAC} annotation: Twill has not run there"));
    };
    let vtep_mac: Mac = match mac.parse() {
        Ok(m) => m,
        Err(e) => return malformed(format!("annotation {VTEP_MAC}: {e}")),
    };
    let ip_key = if annotation(node, PUBLIC_IP_OVERWRITE).is_some() {
        PUBLIC_IP_OVERWRITE
    } else {
        PUBLIC_IP
    };
    let public_ip: IpAddr = match annotation(node, ip_key) {
        None => return malformed(format!("annotation {PUBLIC_IP} is missing")),
        Some(s) => match s.parse() {
            Ok(ip) => ip,
            Err(_) => return malformed(format!("annotation {ip_key}: {s:?} is not an IP address")),
        },
    };
    NodeView::Peer(VtepRecord {
        node: name,
        subnets,
        public_ip,
        vtep_mac,
        backend: annotation(node, BACKEND).unwrap_or("vxlan").to_string(),
    })
}

/// The annotations this node publishes (a JSON merge patch of its metadata).
pub fn announcement_patch(me: &Announcement) -> serde_json::Value {
    json!({"metadata": {"annotations": {
        PUBLIC_IP: me.public_ip.to_string(),
        VTEP_MAC: me.vtep_mac.to_string(),
        BACKEND: "vxlan",
    }}})
}

/// True when `node` carries exactly what `me` publishes.
pub(super) fn announced(node: &SlimNode, me: &Announcement) -> bool {
    annotation(node, PUBLIC_IP) == Some(me.public_ip.to_string().as_str())
        && annotation(node, VTEP_MAC) == Some(me.vtep_mac.to_string().as_str())
        && annotation(node, BACKEND) == Some("vxlan")
}

pub(super) fn network_available(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == NETWORK_UNAVAILABLE && c.status == "False")
        })
}

/// Twill's `NetworkUnavailable` condition: `False` (`TwillIsUp`) once this node's pod
/// network is programmed, `True` (`TwillIsDown`) after `uninstall`, so that a node without
/// a pod network does not claim one.
pub(super) fn network_condition(up: bool, now: Time) -> NodeCondition {
    let (status, reason, message) = if up {
        (
            "False",
            "TwillIsUp",
            "Twill programmed this node's pod network",
        )
    } else {
        (
            "True",
            "TwillIsDown",
            "Twill was uninstalled from this node",
        )
    };
    NodeCondition {
        type_: NETWORK_UNAVAILABLE.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_transition_time: Some(now.clone()),
        last_heartbeat_time: Some(now),
    }
}

/// `uninstall`'s strategic-merge patch of its own Node's status: Twill's annotations go
/// (the operator's `twill.io/public-ip-overwrite` stays) and the network is marked down.
pub(super) fn leave_patch(now: Time) -> serde_json::Value {
    json!({
        "metadata": {"annotations": {PUBLIC_IP: null, VTEP_MAC: null, BACKEND: null}},
        "status": {"conditions": [network_condition(false, now)]},
    })
}

/// The complete snapshot of the Nodes' views, by Node name.
pub(super) fn snapshot_of(views: &BTreeMap<String, NodeView>) -> Snapshot {
    let mut snap = Snapshot {
        complete: true,
        ..Snapshot::default()
    };
    for v in views.values() {
        match v {
            NodeView::Peer(r) => snap.records.push(r.clone()),
            NodeView::Malformed(m) => snap.malformed.push(m.clone()),
            NodeView::Absent(_) => {}
        }
    }
    snap
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::fixtures::{dual_stack, v4};

    fn node(doc: &str) -> SlimNode {
        serde_json::from_str(doc).expect("test document is a Node")
    }

    fn with_annotations(doc: &str, ann: &[(&str, &str)]) -> SlimNode {
        let mut n = node(doc);
        let a = n.metadata.annotations.get_or_insert_with(Default::default);
        for (k, v) in ann {
            a.insert(k.to_string(), v.to_string());
        }
        n
    }

    // Documents from a v1.20.2 API server (`kubectl get node -o json`); the dual-stack
    // one has an IPv6 podCIDR added by hand (the test server runs single-stack).
    const JOINED: &str = include_str!("testdata/node-joined.json");
    const NO_CIDR: &str = include_str!("testdata/node-no-podcidr.json");
    const DUAL: &str = include_str!("testdata/node-dual-stack.json");

    #[test]
    fn annotated_node_with_pod_cidr_is_a_peer() {
        let NodeView::Peer(r) = node_view(&node(JOINED), &v4()) else {
            panic!("expected a peer");
        };
        assert_eq!(r.node, "twk-n1");
        assert_eq!(r.subnets, vec!["10.244.0.0/24".parse::<IpNet>().unwrap()]);
        assert_eq!(r.public_ip.to_string(), "192.168.1.2");
        assert_eq!(r.vtep_mac.to_string(), "ba:81:31:7e:0c:42");
        assert_eq!(r.backend, "vxlan");
    }

    #[test]
    fn node_without_pod_cidr_or_annotations_is_absent_not_malformed() {
        assert!(matches!(
            node_view(&node(NO_CIDR), &v4()),
            NodeView::Absent(_)
        ));
        let mut n = node(JOINED);
        n.metadata.annotations = None;
        let NodeView::Absent(why) = node_view(&n, &v4()) else {
            panic!("expected absent");
        };
        assert!(why.contains(VTEP_MAC), "{why}");
    }

    #[test]
    fn dual_pod_cidrs_map_to_one_subnet_per_configured_family() {
        let n = node(DUAL);
        let NodeView::Peer(r) = node_view(&n, &dual_stack()) else {
            panic!("expected a peer");
        };
        assert_eq!(
            r.subnets,
            vec![
                "10.244.2.0/24".parse::<IpNet>().unwrap(),
                "fd00:10:244:3::/64".parse().unwrap()
            ]
        );
        // An IPv4-only Twill ignores the IPv6 podCIDR instead of rejecting the node.
        let NodeView::Peer(r) = node_view(&n, &v4()) else {
            panic!("expected a peer");
        };
        assert_eq!(r.subnets, vec!["10.244.2.0/24".parse::<IpNet>().unwrap()]);
    }

    #[test]
    fn pod_cidr_alone_is_used_when_pod_cidrs_is_missing() {
        let mut n = node(JOINED);
        if let Some(s) = n.spec.as_mut() {
            s.pod_cidrs = None;
        }
        let NodeView::Peer(r) = node_view(&n, &v4()) else {
            panic!("expected a peer");
        };
        assert_eq!(r.subnets, vec!["10.244.0.0/24".parse::<IpNet>().unwrap()]);
    }

    #[test]
    fn override_wins_over_the_published_public_ip() {
        let n = with_annotations(JOINED, &[(PUBLIC_IP_OVERWRITE, "203.0.113.7")]);
        let NodeView::Peer(r) = node_view(&n, &v4()) else {
            panic!("expected a peer");
        };
        assert_eq!(r.public_ip.to_string(), "203.0.113.7");
    }

    #[test]
    fn malformed_annotations_reject_the_node_and_name_the_annotation() {
        for (key, value) in [
            (VTEP_MAC, "not-a-mac"),
            (VTEP_MAC, "ba:81:31:7e:0c"),
            (PUBLIC_IP, "192.168.1"),
            (PUBLIC_IP_OVERWRITE, "nat.example.com"),
        ] {
            let n = with_annotations(JOINED, &[(key, value)]);
            let NodeView::Malformed(m) = node_view(&n, &v4()) else {
                panic!("{key}={value} must be rejected");
            };
            assert_eq!(m.source, "Node twk-n1");
            assert!(m.reason.contains(key), "{key}: {}", m.reason);
        }
        let mut n = node(JOINED);
        if let Some(a) = n.metadata.annotations.as_mut() {
            a.remove(PUBLIC_IP);
        }
        let NodeView::Malformed(m) = node_view(&n, &v4()) else {
            panic!("a MAC without an address must be rejected");
        };
        assert!(m.reason.contains(PUBLIC_IP), "{}", m.reason);
    }

    #[test]
    fn malformed_pod_cidr_is_rejected_with_the_field() {
        let mut n = node(JOINED);
        if let Some(s) = n.spec.as_mut() {
            s.pod_cidrs = Some(vec!["10.244.1.7/24".into()]);
        }
        let NodeView::Malformed(m) = node_view(&n, &v4()) else {
            panic!("expected malformed");
        };
        assert!(m.reason.contains("spec.podCIDRs"), "{}", m.reason);
        if let Some(s) = n.spec.as_mut() {
            s.pod_cidrs = Some(vec!["banana".into()]);
        }
        assert!(matches!(node_view(&n, &v4()), NodeView::Malformed(_)));
    }

    /// Found by the property tests: a bad lone podCIDR was reported as spec.podCIDRs.
    #[test]
    fn malformed_lone_pod_cidr_names_pod_cidr() {
        let mut n = node(JOINED);
        if let Some(s) = n.spec.as_mut() {
            s.pod_cidrs = None;
            s.pod_cidr = Some("0.0.0.1/0".into());
        }
        let NodeView::Malformed(m) = node_view(&n, &v4()) else {
            panic!("expected malformed");
        };
        assert!(m.reason.starts_with("spec.podCIDR: "), "{}", m.reason);
    }

    #[test]
    fn leave_patch_removes_the_annotations_and_marks_the_network_down() {
        let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let patch = leave_patch(now);
        let anns = patch["metadata"]["annotations"].as_object().unwrap();
        assert!(anns.values().all(|v| v.is_null()));
        assert!(anns.contains_key(PUBLIC_IP) && anns.contains_key(VTEP_MAC));
        assert!(
            !anns.contains_key(PUBLIC_IP_OVERWRITE),
            "the operator's override stays"
        );
        let cond = &patch["status"]["conditions"][0];
        assert_eq!(cond["type"], NETWORK_UNAVAILABLE);
        assert_eq!(cond["status"], "True");
        assert_eq!(cond["reason"], "TwillIsDown");
    }

    #[test]
    fn announcement_round_trips_through_the_mapping() {
        let me = Announcement {
            node: "twk-n3".into(),
            public_ip: "192.168.1.9".parse().unwrap(),
            vtep_mac: Mac::for_node("twk-n3", 1),
        };
        let mut n = node(NO_CIDR);
        if let Some(s) = n.spec.as_mut() {
            s.pod_cidr = Some("10.244.9.0/24".into());
        }
        let patch = announcement_patch(&me);
        let anns = patch["metadata"]["annotations"].as_object().unwrap();
        let a = n.metadata.annotations.get_or_insert_with(Default::default);
        for (k, v) in anns {
            a.insert(k.clone(), v.as_str().unwrap().to_string());
        }
        assert!(announced(&n, &me));
        assert_eq!(
            node_view(&n, &v4()),
            NodeView::Peer(me.record(vec!["10.244.9.0/24".parse().unwrap()]))
        );
    }
}
