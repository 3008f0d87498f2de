//! A policy the parser rejects fails closed: its stand-in isolates what it selects in
//! the directions it declares and allows nothing; other policies still allow.

use serde_json::json;

use super::*;
use crate::error::Kind;

fn db(spec_rest: Value) -> Value {
    let mut spec = json!({"podSelector": {"matchLabels": {"app": "db"}}});
    if let (Some(spec), Some(rest)) = (spec.as_object_mut(), spec_rest.as_object()) {
        spec.extend(rest.clone());
    }
    spec
}

const BAD_CIDR: &str = "10.0.0.0/33";

#[test]
fn a_bad_ip_block_isolates_the_selected_pods_ingress_only() {
    let bad = policy(
        "bad-cidr",
        db(json!({"ingress": [{"from": [{"ipBlock": {"cidr": BAD_CIDR}}]}]})),
    );
    let w = world(&[bad]);
    assert_eq!(w.rejected.len(), 1);
    assert!(!tcp(&w, WEB, DB, 5432), "db must be isolated, not open");
    assert!(!tcp(&w, EXTERNAL, DB, 5432));
    assert!(
        tcp(&w, DB, WEB, 80),
        "egress was not declared: db may still send"
    );
    assert!(tcp(&w, API, WEB, 80), "web is not selected");
    let rules = compile(&w, "n1");
    let by = match &rules.pods[&ip(DB)].ingress {
        crate::ruleset::Direction::Isolated { by, entries } => {
            assert!(entries.is_empty(), "a stand-in allows nothing");
            by.clone()
        }
        other => panic!("db ingress {other:?}"),
    };
    assert_eq!(by.len(), 1);
    assert!(by.iter().all(|p| p.name == "bad-cidr"));
    let message = rules.rejected[0].to_string();
    assert!(
        message.contains("ipBlock.cidr") && message.contains("fails closed: isolates ingress"),
        "{message}"
    );
}

#[test]
fn other_policies_still_allow_pods_a_rejected_policy_isolates() {
    let bad = policy(
        "bad-cidr",
        db(json!({"ingress": [{"from": [{"ipBlock": {"cidr": BAD_CIDR}}]}]})),
    );
    let allow_web = policy(
        "allow-web",
        db(json!({"ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]})),
    );
    let w = world(&[bad, allow_web]);
    assert!(tcp(&w, WEB, DB, 5432));
    assert!(!tcp(&w, API, DB, 5432));
}

#[test]
fn fixing_the_policy_in_place_restores_what_it_allows() {
    let rule = |cidr: &str| db(json!({"ingress": [{"from": [{"ipBlock": {"cidr": cidr}}]}]}));
    let broken = world(&[policy("p", rule(BAD_CIDR))]);
    let fixed = world(&[policy("p", rule("10.0.2.0/24"))]);
    assert!(!tcp(&broken, API, DB, 5432));
    assert!(tcp(&fixed, API, DB, 5432));
    assert!(!tcp(&fixed, WEB, DB, 5432));
    assert!(fixed.rejected.is_empty());
}

#[test]
fn a_bad_egress_rule_without_policy_types_isolates_both_ways() {
    // Egress given (though broken) means the API defaults policyTypes to both.
    let bad = policy(
        "bad-proto",
        db(json!({"egress": [{"ports": [{"protocol": "ICMP", "port": 1}]}]})),
    );
    let w = world(&[bad]);
    assert!(!tcp(&w, WEB, DB, 5432));
    assert!(!tcp(&w, DB, WEB, 80));
    assert!(tcp(&w, WEB, API, 8080));
}

#[test]
fn a_bad_peer_selector_isolates_only_the_declared_direction() {
    let bad = policy(
        "bad-op",
        db(
            json!({"policyTypes": ["Egress"], "egress": [{"to": [{"podSelector":
            {"matchExpressions": [{"key": "app", "operator": "Equals", "values": ["web"]}]}}]}]}),
        ),
    );
    let w = world(&[bad]);
    assert_eq!(w.rejected.len(), 1);
    assert!(!tcp(&w, DB, WEB, 80));
    assert!(tcp(&w, WEB, DB, 5432), "ingress was not declared");
}

#[test]
fn unreadable_policy_types_isolate_both_ways() {
    let bad = policy("bad-types", db(json!({"policyTypes": ["Ingres"]})));
    let w = world(&[bad]);
    assert!(!tcp(&w, WEB, DB, 5432));
    assert!(!tcp(&w, DB, WEB, 80));
    assert!(tcp(&w, WEB, API, 8080));
}

#[test]
fn an_unreadable_pod_selector_isolates_the_whole_namespace_both_ways() {
    let bad = policy(
        "bad-selector",
        json!({"podSelector": {"matchLabels": {"app": 7}}, "policyTypes": ["Ingress"]}),
    );
    let w = world(&[bad]);
    assert!(!tcp(&w, WEB, DB, 5432));
    assert!(!tcp(&w, DB, WEB, 80));
    assert!(!tcp(&w, TOOL, API, 8080), "api is in prod");
    assert!(!tcp(&w, API, TOOL, 80), "api's egress too");
    // dev is another namespace: only prod's pods are isolated.
    assert!(tcp(&w, EXTERNAL, TOOL, 80));
    let message = w.rejected[0].to_string();
    assert!(
        message.contains("isolates ingress and egress of every pod of namespace prod"),
        "{message}"
    );
}

#[test]
fn a_policy_without_a_readable_namespace_isolates_nothing() {
    let bad = json!({"metadata": {"name": "nowhere"}, "spec": {"podSelector": {}}});
    let w = world(&[bad]);
    assert_eq!(w.rejected.len(), 1);
    assert_eq!(
        (w.rejected[0].kind, w.rejected[0].isolating.is_none()),
        (Kind::NetworkPolicy, true)
    );
    assert!(w.policies.is_empty());
    assert!(tcp(&w, WEB, DB, 5432));
}

#[test]
fn a_prefix_length_with_leading_zeros_is_rejected_and_fails_closed() {
    // Go's ParseCIDR (so the API server) takes "/008" as /8; Twill's parser does not:
    // such a policy gets through the API server and must not leave its pods open.
    let bad = policy(
        "zeros",
        db(json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/008"}}]}]})),
    );
    let w = world(&[bad]);
    assert_eq!(w.rejected.len(), 1);
    assert!(!tcp(&w, API, DB, 5432));
}
