//! Property tests of the NetworkPolicy, Pod and Namespace parsers (issue 14 §4): the API
//! server's objects are outside input. Nothing panics or takes unbounded time; a changed
//! field of a policy is named by its rejection; a rejected policy with a namespace still
//! fails closed (it has an isolating stand-in).

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use twill_conf::strategies::{bounded, config, json_value, mutate_one_key};

use crate::model::{Namespace, Pod, Policy};

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn spec() -> Map<String, Value> {
    object(json!({
        "podSelector": {"matchLabels": {"app": "db"},
                        "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}]},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [{"podSelector": {}, "namespaceSelector": {"matchLabels": {"env": "prod"}}},
                              {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                     "ports": [{"protocol": "TCP", "port": 80, "endPort": 90}]}],
        "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                    "ports": [{"protocol": "UDP", "port": "dns"}]}],
    }))
}

fn policy(spec: Map<String, Value>) -> Value {
    json!({"metadata": {"namespace": "prod", "name": "p"}, "spec": spec})
}

/// Parses and, on a rejection, checks that the policy still fails closed.
fn parse(doc: &Value) -> Result<Policy, String> {
    bounded("Policy::from_json", || match Policy::from_json(doc) {
        Ok(p) => Ok(p),
        Err(e) => {
            let namespace = doc.pointer("/metadata/namespace").and_then(Value::as_str);
            let stand_in = Policy::isolating_only(doc);
            assert_eq!(
                stand_in.is_some(),
                namespace.is_some_and(|ns| !ns.is_empty()),
                "{e}"
            );
            Err(e.to_string())
        }
    })
}

/// The rejection of a policy whose field at `path` changed names it, or a field inside
/// it; a removed field may be named by its parent (a peer with no selector left); two
/// fields judged together (`port` and `endPort`, `cidr` and `except`) may name each other.
fn assert_names(err: &str, path: &str, removed: bool) -> Result<(), TestCaseError> {
    let named = |p: &str| {
        err.starts_with(&format!("{p}:"))
            || err.starts_with(&format!("{p}."))
            || err.starts_with(&format!("{p}["))
    };
    let parent = path.rsplit_once('.').map_or("", |(parent, _)| parent);
    let partner = match path.rsplit_once('.').map(|(_, last)| last) {
        Some("port") => Some(format!("{parent}.endPort")),
        Some("endPort") => Some(format!("{parent}.port")),
        Some("cidr") => Some(format!("{parent}.except")),
        _ => None,
    };
    let ok = named(path) || (removed && named(parent)) || partner.is_some_and(|p| named(&p));
    prop_assert!(ok, "{path} changed: {err}");
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_json_parses_or_is_rejected(v in json_value()) {
        let _ = parse(&v);
        let _ = bounded("Pod::from_json", || Pod::from_json(&v));
        let _ = bounded("Namespace::from_json", || Namespace::from_json(&v));
    }

    #[test]
    fn one_mutated_spec_field_is_named((spec, key) in mutate_one_key(spec(), &["podSelector", "policyTypes", "ingress", "egress"])) {
        let removed = !spec.contains_key(key);
        if let Err(e) = parse(&policy(spec)) {
            assert_names(&e, &format!("spec.{key}"), removed)?;
        }
    }

    #[test]
    fn one_mutated_port_field_is_named((port, key) in mutate_one_key(
        object(json!({"protocol": "TCP", "port": 80, "endPort": 90})),
        &["protocol", "port", "endPort"],
    )) {
        let removed = !port.contains_key(key);
        let mut s = spec();
        s["ingress"][0]["ports"][0] = Value::Object(port);
        if let Err(e) = parse(&policy(s)) {
            assert_names(&e, &format!("spec.ingress[0].ports[0].{key}"), removed)?;
        }
    }

    #[test]
    fn one_mutated_peer_field_is_named((block, key) in mutate_one_key(
        object(json!({"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]})),
        &["cidr", "except"],
    )) {
        let removed = !block.contains_key(key);
        let mut s = spec();
        s["ingress"][0]["from"][1]["ipBlock"] = Value::Object(block);
        if let Err(e) = parse(&policy(s)) {
            assert_names(&e, &format!("spec.ingress[0].from[1].ipBlock.{key}"), removed)?;
        }
    }

    #[test]
    fn one_mutated_selector_field_is_named((selector, key) in mutate_one_key(
        object(json!({"matchLabels": {"app": "db"},
                      "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}]})),
        &["matchLabels", "matchExpressions"],
    )) {
        let removed = !selector.contains_key(key);
        let mut s = spec();
        s["podSelector"] = Value::Object(selector);
        if let Err(e) = parse(&policy(s)) {
            assert_names(&e, &format!("spec.podSelector.{key}"), removed)?;
        }
    }
}
