//! The cluster objects of the policy test, as the API server would send them.

use std::net::IpAddr;

use serde_json::{json, Value};

pub fn pod(name: &str, app: &str, namespace: &str, v4: IpAddr, v6: IpAddr) -> Value {
    json!({
        "metadata": {"namespace": namespace, "name": name, "labels": {"app": app}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
        "status": {"podIPs": [{"ip": v4.to_string()}, {"ip": v6.to_string()}]}
    })
}

pub fn policy(namespace: &str, name: &str, spec: Value) -> Value {
    json!({"metadata": {"namespace": namespace, "name": name}, "spec": spec})
}

/// Default-deny ingress in prod; db admits web on TCP 5432 and anyone on UDP 53; web
/// admits 10.0.0.0/16 (and fd00::/16) except db's subnet on TCP 8000-8010; tool (dev)
/// may only send to web's subnet on TCP 8000-8005, and UDP 53 anywhere.
pub fn policies() -> Vec<Value> {
    vec![
        policy("prod", "default-deny", json!({"podSelector": {}})),
        policy(
            "prod",
            "db-from-web",
            json!({
                "podSelector": {"matchLabels": {"app": "db"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                             "ports": [{"port": 5432}]},
                            {"ports": [{"protocol": "UDP", "port": 53}]}]
            }),
        ),
        policy(
            "prod",
            "web-from-block",
            json!({
                "podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.2.0/24"]}},
                                      {"ipBlock": {"cidr": "fd00::/16", "except": ["fd00:2::/64"]}}],
                             "ports": [{"port": 8000, "endPort": 8010}]}]
            }),
        ),
        policy(
            "dev",
            "tool-egress",
            json!({
                "podSelector": {"matchLabels": {"app": "tool"}},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": "10.0.1.0/24"}},
                                   {"ipBlock": {"cidr": "fd00:1::/64"}}],
                            "ports": [{"port": 8000, "endPort": 8005}]},
                           {"ports": [{"protocol": "UDP", "port": 53}]}]
            }),
        ),
    ]
}

/// A spec for db whose peers nest: 10/8 but tool's subnet on 8000, web's subnet on
/// 7000-8008 (overlapping), tool's subnet and tool's address on every port.
pub fn nested_peers() -> Value {
    let block = |cidr: &str, except: &[&str]| json!({"ipBlock": {"cidr": cidr, "except": except}});
    json!({
        "podSelector": {"matchLabels": {"app": "db"}},
        "ingress": [
            {"from": [block("10.0.0.0/8", &["10.0.3.0/24"]), block("fd00::/8", &["fd00:3::/64"])],
             "ports": [{"port": 8000}]},
            {"from": [block("10.0.1.0/24", &[]), block("fd00:1::/64", &[])],
             "ports": [{"port": 7000, "endPort": 8008}]},
            {"from": [block("10.0.3.0/24", &[]), block("fd00:3::/64", &[])]},
            {"from": [block("10.0.3.2/32", &[]), block("fd00:3::2/128", &[])]}
        ]
    })
}
