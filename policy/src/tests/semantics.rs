use serde_json::json;

use super::*;
use crate::model::Protocol::{Sctp, Tcp, Udp};
use crate::ruleset::{AllowEntry, Direction, PeerMatch, PolicyRef, PortMatch, PortRange};

#[test]
fn without_policies_everything_is_allowed() {
    let w = world(&[]);
    assert!(tcp(&w, WEB, DB, 1));
    assert!(tcp(&w, EXTERNAL, TOOL, 443));
    assert!(tcp(&w, API, EXTERNAL, 443));
}

#[test]
fn policy_types_default_to_ingress_plus_egress_when_egress_rules_exist() {
    // No policyTypes, no rules: ingress isolated (deny all), egress untouched.
    let w = world(&[policy(
        "deny",
        json!({"podSelector": {"matchLabels": {"app": "db"}}}),
    )]);
    assert!(!tcp(&w, WEB, DB, 5432));
    assert!(tcp(&w, DB, WEB, 80));

    // Egress rules and no policyTypes: egress isolated too.
    let spec = json!({"podSelector": {"matchLabels": {"app": "db"}},
                      "egress": [{"ports": [{"port": 80}]}]});
    let w = world(&[policy("egress", spec)]);
    assert!(tcp(&w, DB, WEB, 80));
    assert!(!tcp(&w, DB, API, 8080));
    assert!(!tcp(&w, WEB, DB, 5432));

    // An empty egress list is not "rules given": egress stays open.
    let spec = json!({"podSelector": {"matchLabels": {"app": "db"}}, "egress": []});
    let w = world(&[policy("empty-egress", spec)]);
    assert!(tcp(&w, DB, API, 8080));

    // Explicit Egress only: ingress stays open, egress denied.
    let spec = json!({"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Egress"]});
    let w = world(&[policy("egress-only", spec)]);
    assert!(tcp(&w, WEB, DB, 5432));
    assert!(!tcp(&w, DB, WEB, 80));
}

#[test]
fn absent_or_empty_from_means_every_peer_but_no_rules_means_none() {
    for rule in [json!({}), json!({"from": []}), json!({"from": null})] {
        let spec = db_ingress(json!([rule]));
        let w = world(&[policy("p", spec)]);
        assert!(tcp(&w, EXTERNAL, DB, 5432));
        assert!(tcp(&w, TOOL, DB, 5432));
    }
    let spec = db_ingress(json!([]));
    let w = world(&[policy("p", spec)]);
    assert!(!tcp(&w, WEB, DB, 5432));
}

#[test]
fn absent_or_empty_ports_mean_every_port_and_protocol() {
    for rule in [
        json!({"to": [{"podSelector": {}}]}),
        json!({"to": [{"podSelector": {}}], "ports": []}),
    ] {
        let spec = json!({"podSelector": {"matchLabels": {"app": "web"}},
                          "policyTypes": ["Egress"], "egress": [rule]});
        let w = world(&[policy("p", spec)]);
        assert!(tcp(&w, WEB, DB, 5432));
        assert!(decide(&w, WEB, API, Udp, 53));
        assert!(!tcp(&w, WEB, TOOL, 80)); // other namespace
    }
}

#[test]
fn pod_and_namespace_selector_in_one_peer_is_and_in_two_peers_is_or() {
    let one_peer = json!([{"podSelector": {"matchLabels": {"app": "web"}},
                           "namespaceSelector": {"matchLabels": {"env": "dev"}}}]);
    let spec = db_ingress(json!([{"from": one_peer}]));
    let w = world(&[policy("and", spec)]);
    assert!(tcp(&w, TOOL, DB, 5432));
    assert!(!tcp(&w, WEB, DB, 5432));
    assert!(!tcp(&w, API, DB, 5432));

    let two_peers = json!([{"podSelector": {"matchLabels": {"app": "web"}}},
                           {"namespaceSelector": {"matchLabels": {"env": "dev"}}}]);
    let spec = db_ingress(json!([{"from": two_peers}]));
    let w = world(&[policy("or", spec)]);
    assert!(tcp(&w, TOOL, DB, 5432));
    assert!(tcp(&w, WEB, DB, 5432));
    assert!(!tcp(&w, API, DB, 5432));
}

#[test]
fn pod_selector_alone_stays_in_the_policy_namespace_and_selectors_never_match_outsiders() {
    let spec = db_ingress(json!([{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]));
    let w = world(&[policy("p", spec)]);
    assert!(tcp(&w, WEB, DB, 5432));
    assert!(!tcp(&w, TOOL, DB, 5432)); // app=web, but in dev

    let spec = db_ingress(json!([{"from": [{"namespaceSelector": {}}]}]));
    let w = world(&[policy("p", spec)]);
    assert!(tcp(&w, TOOL, DB, 5432));
    assert!(!tcp(&w, EXTERNAL, DB, 5432));
}

#[test]
fn ip_block_with_except_matches_addresses_of_pods_and_outsiders() {
    let spec = db_ingress(
        json!([{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.2.0/24"]}}]}]),
    );
    let w = world(&[policy("p", spec)]);
    assert!(tcp(&w, WEB, DB, 5432));
    assert!(!tcp(&w, API, DB, 5432));
    assert!(!tcp(&w, EXTERNAL, DB, 5432));

    let spec = json!({"podSelector": {}, "policyTypes": ["Egress"],
                      "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]});
    let w = world(&[policy("p", spec)]);
    assert!(tcp(&w, WEB, EXTERNAL, 443));
    assert!(tcp(&w, WEB, API, 1));
}

#[test]
fn named_ports_resolve_on_the_selected_pod_for_ingress() {
    // web's http is 80, api's http is 8080.
    let web_or_api = json!({"key": "app", "operator": "In", "values": ["web", "api"]});
    let spec = json!({"podSelector": {"matchExpressions": [web_or_api]},
                      "ingress": [{"ports": [{"port": "http"}]}]});
    let w = world(&[policy("p", spec)]);
    assert!(tcp(&w, EXTERNAL, WEB, 80));
    assert!(!tcp(&w, EXTERNAL, WEB, 8080));
    assert!(tcp(&w, EXTERNAL, API, 8080));
    assert!(!tcp(&w, EXTERNAL, API, 80));
    // An unresolvable name matches nothing.
    let spec = db_ingress(json!([{"ports": [{"port": "http"}]}]));
    let w = world(&[policy("p", spec)]);
    assert!(!tcp(&w, WEB, DB, 80));
}

#[test]
fn named_ports_resolve_on_the_destination_pod_for_egress() {
    let tool_policy = json!({
        "metadata": {"namespace": "dev", "name": "tool-out"},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"],
                 "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"port": "http"}]},
                            {"ports": [{"port": "dns", "protocol": "UDP"}]}]}
    });
    let w = world(&[tool_policy]);
    assert!(tcp(&w, TOOL, WEB, 80));
    assert!(!tcp(&w, TOOL, WEB, 8080));
    assert!(tcp(&w, TOOL, API, 8080));
    assert!(!tcp(&w, TOOL, API, 80));
    assert!(!tcp(&w, TOOL, DB, 80)); // db has no http
    assert!(decide(&w, TOOL, API, Udp, 53));
    assert!(!decide(&w, TOOL, EXTERNAL, Udp, 53)); // a name only ever matches pods
    assert!(!decide(&w, TOOL, API, Tcp, 53)); // dns is UDP on api
}

#[test]
fn end_port_makes_a_range() {
    let spec = db_ingress(json!([{"ports": [{"port": 8000, "endPort": 8100}]}]));
    let w = world(&[policy("p", spec)]);
    assert!(!tcp(&w, WEB, DB, 7999));
    assert!(tcp(&w, WEB, DB, 8000));
    assert!(tcp(&w, WEB, DB, 8080));
    assert!(tcp(&w, WEB, DB, 8100));
    assert!(!tcp(&w, WEB, DB, 8101));
}

#[test]
fn protocols_udp_and_sctp() {
    let spec =
        db_ingress(json!([{"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "SCTP"}]}]));
    let w = world(&[policy("p", spec)]);
    assert!(decide(&w, WEB, DB, Udp, 53));
    assert!(!decide(&w, WEB, DB, Udp, 54));
    assert!(!decide(&w, WEB, DB, Tcp, 53));
    assert!(decide(&w, WEB, DB, Sctp, 9999));
}

#[test]
fn policies_add_up() {
    let from_web = db_ingress(
        json!([{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                "ports": [{"port": 5432}]}]),
    );
    let has_app = json!({"key": "app", "operator": "Exists"});
    let from_api = json!({
        "podSelector": {"matchExpressions": [has_app]},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}]}]
    });
    let w = world(&[policy("from-web", from_web), policy("from-api", from_api)]);
    assert!(tcp(&w, WEB, DB, 5432));
    assert!(!tcp(&w, WEB, DB, 80));
    assert!(tcp(&w, API, DB, 80));
    // web is selected by from-api only.
    assert!(tcp(&w, API, WEB, 80));
    assert!(!tcp(&w, DB, WEB, 80));
}

#[test]
fn egress_of_the_source_and_ingress_of_the_destination_must_both_allow() {
    let deny_out =
        json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"]});
    let w = world(&[policy("deny-out", deny_out)]);
    assert!(!tcp(&w, WEB, DB, 5432));
    assert!(tcp(&w, DB, WEB, 80));
}

#[test]
fn a_pods_own_node_is_always_allowed_other_nodes_are_not() {
    let deny_all = json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]});
    let w = world(&[policy("deny-all", deny_all)]);
    assert!(tcp(&w, NODE1_IP, WEB, 80));
    assert!(tcp(&w, WEB, NODE1_IP, 10250));
    assert!(!tcp(&w, NODE2_IP, WEB, 80));
    assert!(!tcp(&w, WEB, NODE2_IP, 10250));
    assert!(tcp(&w, NODE2_IP, API, 80));
}

#[test]
fn compiled_entries_carry_addresses_ports_and_their_policy() {
    let spec = db_ingress(
        json!([{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                "ports": [{"port": 5432}]}]),
    );
    let w = world(&[policy("db-in", spec)]);
    let rules = compile(&w, "n1");
    assert_eq!(rules.pods.len(), 2);
    let db = &rules.pods[&ip(DB)];
    assert_eq!(db.egress, Direction::NotIsolated);
    let expected = AllowEntry {
        peer: PeerMatch::Addrs(std::collections::BTreeSet::from([ip(WEB)]).into()),
        ports: PortMatch::List(
            [PortRange {
                protocol: Tcp,
                start: 5432,
                end: 5432,
            }]
            .into(),
        ),
        policy: PolicyRef {
            namespace: "prod".into(),
            name: "db-in".into(),
        },
    };
    let by = [expected.policy.clone()].into();
    assert_eq!(
        db.ingress,
        Direction::Isolated {
            by,
            entries: [expected].into()
        }
    );
    assert_eq!(rules.pods[&ip(WEB)].ingress, Direction::NotIsolated);
}

#[test]
fn compiles_are_deterministic_whatever_the_input_order() {
    let a = policy(
        "a",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}),
    );
    let b = policy(
        "b",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]}),
    );
    let forward = world(&[a.clone(), b.clone()]);
    let backward = world(&[b, a]);
    assert_eq!(compile(&forward, "n1"), compile(&forward, "n1"));
    assert_eq!(compile(&forward, "n1"), compile(&backward, "n1"));
}

#[test]
fn an_isolated_direction_names_every_policy_that_isolates_it_allowing_or_not() {
    let deny_all = json!({"podSelector": {}, "policyTypes": ["Ingress"]});
    let db_in = db_ingress(json!([{"from": [{"podSelector": {}}]}]));
    let w = world(&[policy("deny-all", deny_all), policy("db-in", db_in)]);
    let rules = compile(&w, "n1");
    let by = |ip_: &str| match &rules.pods[&ip(ip_)].ingress {
        Direction::Isolated { by, .. } => by.iter().map(|p| p.name.clone()).collect(),
        Direction::NotIsolated => Vec::new(),
    };
    assert_eq!(by(DB), ["db-in", "deny-all"]);
    // The default deny alone: isolated, no entry, but still told which policy.
    assert_eq!(by(WEB), ["deny-all"]);
    assert!(matches!(
        &rules.pods[&ip(WEB)].ingress,
        Direction::Isolated { entries, .. } if entries.is_empty()
    ));
}
