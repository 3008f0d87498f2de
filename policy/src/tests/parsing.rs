use serde_json::{json, Value};

use super::*;
use crate::error::Kind;
use crate::model::{Namespace, Pod, Policy};

fn policy_error(spec: Value) -> String {
    Policy::from_json(&policy("bad", spec))
        .expect_err("must be rejected")
        .to_string()
}

#[test]
fn a_bad_policy_is_rejected_naming_the_field_while_the_good_ones_compile() {
    let bad = policy(
        "bad",
        json!({"podSelector": {}, "ingress": [{"from": [
            {"podSelector": {}},
            {"ipBlock": {"cidr": "10.0.0.0/33"}}
        ]}]}),
    );
    let good = policy(
        "deny-db",
        json!({"podSelector": {"matchLabels": {"app": "db"}}}),
    );
    let w = world(&[bad, good]);
    // The good one, and the bad one's isolating-only stand-in.
    assert_eq!(w.policies.len(), 2);
    assert_eq!(w.rejected.len(), 1);
    let rejected = &w.rejected[0];
    assert_eq!(
        (rejected.kind, rejected.name.as_str()),
        (Kind::NetworkPolicy, "bad")
    );
    assert_eq!(
        rejected.error.to_string(),
        "spec.ingress[0].from[1].ipBlock.cidr: \"10.0.0.0/33\" is not a CIDR"
    );
    // The good policy still isolates db; the bad one fails closed: its podSelector `{}`
    // isolates the ingress of every pod of prod (egress was not declared).
    assert!(!tcp(&w, WEB, DB, 5432));
    assert!(!tcp(&w, DB, WEB, 80));
    assert!(tcp(&w, WEB, TOOL, 80));
    assert_eq!(compile(&w, "n1").rejected, w.rejected);
}

#[test]
fn policy_errors_name_their_field() {
    let cases = [
        (
            json!({"ingress": [{"ports": [{"port": "http", "endPort": 90}]}]}),
            "spec.ingress[0].ports[0].endPort: needs a numeric port",
        ),
        (
            json!({"ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}),
            "spec.ingress[0].ports[0].endPort: 80 is below port 90",
        ),
        (
            json!({"egress": [{"ports": [{"port": 70000}]}]}),
            "spec.egress[0].ports[0].port: 70000 is not a port number (1-65535)",
        ),
        (
            json!({"egress": [{"ports": [{"protocol": "ICMP"}]}]}),
            "spec.egress[0].ports[0].protocol: \"ICMP\" is not one of TCP, UDP, SCTP",
        ),
        (
            json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}),
            "spec.egress[0].to[0].ipBlock: cannot be combined with podSelector or namespaceSelector",
        ),
        (
            json!({"egress": [{"to": [{}]}]}),
            "spec.egress[0].to[0]: must set podSelector, namespaceSelector or ipBlock",
        ),
        (
            json!({"ingress": [{"from": [
                {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/24"]}}
            ]}]}),
            "spec.ingress[0].from[0].ipBlock.except[0]: 11.0.0.0/24 is not strictly inside 10.0.0.0/8",
        ),
        (
            json!({"policyTypes": ["Ingress", "Both"]}),
            "spec.policyTypes[1]: \"Both\" is not one of Ingress, Egress",
        ),
        (
            json!({"podSelector": {"matchLabels": {"app": 3}}}),
            "spec.podSelector.matchLabels.app: expected a string, found 3",
        ),
        (
            json!({"ingress": {"from": []}}),
            "spec.ingress: expected a list, found {\"from\":[]}",
        ),
    ];
    for (spec, message) in cases {
        assert_eq!(policy_error(spec), message);
    }
    let no_spec = json!({"metadata": {"namespace": "prod", "name": "x"}});
    assert_eq!(
        Policy::from_json(&no_spec)
            .expect_err("no spec")
            .to_string(),
        "spec: missing"
    );
}

#[test]
fn pod_and_namespace_errors_name_their_field() {
    let mut bad_ip = pod("prod", "p", "x", "n1", "10.0.0.300", json!([]));
    assert_eq!(
        Pod::from_json(&bad_ip).expect_err("bad ip").to_string(),
        "status.podIPs[0].ip: \"10.0.0.300\" is not an IP address"
    );
    bad_ip["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("namespace");
    assert_eq!(
        Pod::from_json(&bad_ip)
            .expect_err("no namespace")
            .to_string(),
        "metadata.namespace: missing"
    );
    let no_port = pod(
        "prod",
        "p",
        "x",
        "n1",
        "10.0.0.3",
        json!([{"name": "http"}]),
    );
    assert_eq!(
        Pod::from_json(&no_port).expect_err("no port").to_string(),
        "spec.containers[0].ports[0].containerPort: missing"
    );
    assert_eq!(
        Namespace::from_json(&json!({"metadata": {}}))
            .expect_err("no name")
            .to_string(),
        "metadata.name: missing"
    );
}

#[test]
fn pod_fields_are_read_with_defaults() {
    let value = json!({
        "metadata": {"namespace": "prod", "name": "old"},
        "spec": {"containers": [{"ports": [
            {"name": "dns", "containerPort": 53, "protocol": "UDP"}
        ]}]},
        "status": {"podIP": "10.0.9.9"}
    });
    let pod = Pod::from_json(&value).expect("pod");
    assert_eq!(pod.node_name, None);
    assert_eq!(pod.ips, vec![ip("10.0.9.9")]);
    assert_eq!(
        pod.named_port("dns", Protocol::Udp).collect::<Vec<_>>(),
        vec![53]
    );
    assert_eq!(pod.named_port("dns", Protocol::Tcp).count(), 0);
}

#[test]
fn host_network_and_finished_pods_have_no_addresses_of_their_own() {
    let mut host = pod("prod", "h", "x", "n1", NODE1_IP, json!([]));
    host["spec"]["hostNetwork"] = json!(true);
    assert!(Pod::from_json(&host).expect("pod").ips.is_empty());
    let mut done = pod("prod", "d", "x", "n1", "10.0.1.50", json!([]));
    done["status"]["phase"] = json!("Succeeded");
    assert!(Pod::from_json(&done).expect("pod").ips.is_empty());
    done["status"]["phase"] = json!("Running");
    assert_eq!(
        Pod::from_json(&done).expect("pod").ips,
        vec![ip("10.0.1.50")]
    );
    host["spec"]["hostNetwork"] = json!("yes");
    assert_eq!(
        Pod::from_json(&host).expect_err("bad bool").to_string(),
        "spec.hostNetwork: expected a boolean, found \"yes\""
    );
}
