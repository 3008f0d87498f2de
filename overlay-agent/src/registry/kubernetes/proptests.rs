//! Property tests of what the kubernetes registry reads of a Node (issue 14 §4): the
//! slim decoding of any document, and the record a Node's podCIDRs and `twill.io/`
//! annotations map to. Nothing panics or takes unbounded time; the slim Node accepts
//! what the API's own type accepts for the fields it keeps; a rejected Node names the
//! field or annotation at fault; what an agent announces reads back as its record.

use super::node_view::{
    announced, announcement_patch, node_view, NodeView, BACKEND, PUBLIC_IP, PUBLIC_IP_OVERWRITE,
    VTEP_MAC,
};
use super::slim_node::SlimNode;
use crate::record::{Mac, VtepRecord};
use crate::registry::fixtures::{dual_stack, v4};
use crate::registry::Announcement;
use k8s_openapi::api::core::v1::Node;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::net::IpAddr;
use twill_conf::strategies::{bounded, config, hostile_string, json_value, raw_bytes};

const JOINED: &str = include_str!("testdata/node-joined.json");

fn joined() -> Value {
    serde_json::from_str(JOINED).unwrap_or(Value::Null)
}

fn slim(bytes: &[u8]) -> Option<SlimNode> {
    bounded("SlimNode decode", || {
        serde_json::from_slice::<SlimNode>(bytes).ok()
    })
}

fn view(node: &SlimNode) -> NodeView {
    bounded("node_view", || {
        let _ = node_view(node, &dual_stack());
        node_view(node, &v4())
    })
}

/// A JOINED node with `podCIDRs` or `podCIDR` (then without `podCIDRs`) replaced.
fn with_cidrs(cidrs: Vec<String>, plural: bool) -> SlimNode {
    let mut doc = joined();
    if plural {
        doc["spec"]["podCIDRs"] = json!(cidrs);
    } else {
        doc["spec"]["podCIDR"] = json!(cidrs.first());
        if let Some(spec) = doc["spec"].as_object_mut() {
            spec.remove("podCIDRs");
        }
    }
    serde_json::from_value(doc).unwrap_or_default()
}

fn cidr() -> impl Strategy<Value = String> {
    prop_oneof![
        crate::record::proptests::any_net().prop_map(|n| n.to_string()),
        hostile_string(),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes_decode_or_not_and_map_to_a_view(bytes in raw_bytes(JOINED.as_bytes().to_vec())) {
        if let Some(node) = slim(&bytes) {
            let _ = view(&node);
        }
    }

    /// The fields the slim Node keeps, set to anything: it accepts what `Node` does.
    #[test]
    fn kept_fields_decode_as_the_api_type_does(
        (section, key) in prop::sample::select(vec![
            ("metadata", "name"),
            ("metadata", "resourceVersion"),
            ("metadata", "uid"),
            ("spec", "podCIDR"),
            ("spec", "podCIDRs"),
        ]),
        value in prop_oneof![json_value(), prop::collection::vec(cidr(), 0..3).prop_map(|l| json!(l))],
    ) {
        let mut doc = joined();
        doc[section][key] = value;
        let bytes = doc.to_string().into_bytes();
        let full = serde_json::from_slice::<Node>(&bytes).ok();
        let ours = slim(&bytes);
        prop_assert_eq!(ours.is_some(), full.is_some());
        if let (Some(ours), Some(full)) = (ours, full) {
            let from_full = SlimNode::from(&full);
            prop_assert_eq!(ours.metadata.name, from_full.metadata.name);
            prop_assert_eq!(ours.metadata.resource_version, from_full.metadata.resource_version);
            let cidrs = |s: Option<super::slim_node::SlimSpec>| s.map(|s| (s.pod_cidr, s.pod_cidrs));
            prop_assert_eq!(cidrs(ours.spec), cidrs(from_full.spec));
        }
    }

    /// Twill's annotations of any value: a rejected Node names the annotation.
    #[test]
    fn a_bad_annotation_is_named(
        key in prop::sample::select(vec![VTEP_MAC, PUBLIC_IP, PUBLIC_IP_OVERWRITE, BACKEND]),
        value in hostile_string(),
    ) {
        let mut doc = joined();
        doc["metadata"]["annotations"][key] = json!(value);
        let node = slim(doc.to_string().as_bytes())
            .ok_or_else(|| TestCaseError::fail("a Node with string annotations decodes"))?;
        match view(&node) {
            NodeView::Malformed(m) => prop_assert!(m.reason.contains(key), "{key}={value:?}: {}", m.reason),
            NodeView::Peer(r) if key == BACKEND => prop_assert_eq!(r.backend, value.trim()),
            NodeView::Peer(_) => {}
            NodeView::Absent(why) => prop_assert!(false, "{key}={value:?}: absent: {why}"),
        }
    }

    /// Any podCIDRs (or a lone podCIDR): a rejected Node names the field it came from.
    #[test]
    fn a_bad_pod_cidr_is_named(cidrs in prop::collection::vec(cidr(), 1..3), plural in any::<bool>()) {
        let node = with_cidrs(cidrs.clone(), plural);
        let field = if plural { "spec.podCIDRs:" } else { "spec.podCIDR:" };
        match view(&node) {
            NodeView::Malformed(m) => prop_assert!(m.reason.starts_with(field), "{cidrs:?}: {}", m.reason),
            NodeView::Peer(r) => {
                for s in &r.subnets {
                    prop_assert_eq!(s.trunc(), *s);
                    prop_assert!(s.addr().is_ipv4(), "an IPv4-only config keeps IPv4 subnets only");
                }
            }
            NodeView::Absent(_) => {}
        }
    }

    /// What an agent announces, on a Node with a podCIDR, is read back as its record.
    #[test]
    fn an_announcement_reads_back(ip in any::<[u8; 4]>(), mac in any::<[u8; 6]>(), name in "[a-z0-9-]{1,20}") {
        let me = Announcement { node: name.clone(), public_ip: IpAddr::from(ip), vtep_mac: Mac(mac) };
        let mut doc = joined();
        doc["metadata"]["name"] = json!(name);
        for (k, v) in announcement_patch(&me)["metadata"]["annotations"].as_object().into_iter().flatten() {
            doc["metadata"]["annotations"][k] = v.clone();
        }
        let node = slim(doc.to_string().as_bytes())
            .ok_or_else(|| TestCaseError::fail("an announced Node decodes"))?;
        prop_assert!(announced(&node, &me));
        let expected = me.record(vec!["10.244.0.0/24".parse().map_err(|_| TestCaseError::fail("a CIDR"))?]);
        prop_assert_eq!(view(&node), NodeView::Peer(VtepRecord { ..expected }));
    }

    /// A TwillNode of any values maps to a record, an absence or a rejection that names
    /// its `spec.` field; never a panic.
    #[test]
    fn any_twill_node_is_read_or_rejected_naming_the_field(
        cidrs in prop::collection::vec(cidr(), 0..3),
        ip in hostile_string(),
        mac in hostile_string(),
        backend in hostile_string(),
    ) {
        let doc = json!({"apiVersion": "twill.io/v1", "kind": "TwillNode",
            "metadata": {"name": "n"},
            "spec": {"podCIDRs": cidrs, "publicIP": ip, "vtepMAC": mac, "backend": backend}});
        let tn: super::TwillNode = serde_json::from_value(doc)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        match bounded("twill_node_view", || super::twill_node::twill_node_view(&tn, &v4())) {
            NodeView::Malformed(m) => {
                prop_assert_eq!(m.source, "TwillNode n");
                prop_assert!(m.reason.starts_with("spec."), "{}", m.reason);
            }
            NodeView::Peer(_) | NodeView::Absent(_) => {}
        }
    }
}
