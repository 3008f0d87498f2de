//! Random clusters for the property tests: pods, policies and namespaces as API JSON,
//! drawn from small pools of labels, ports and CIDRs so that selectors often match.

// Each test file uses a part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::{json, Map, Value};
use twill_policy::Cluster;

pub const NAMESPACES: [&str; 3] = ["ns0", "ns1", "ns2"];
pub const NODES: [(&str, &[&str]); 2] = [
    ("n1", &["192.168.0.1", "fd00::1"]),
    ("n2", &["192.168.0.2"]),
];
pub const PORT_NAMES: [&str; 4] = ["http", "dns", "metrics", "nope"];
pub const PORT_NUMBERS: [u16; 6] = [53, 80, 443, 5432, 8080, 9090];
pub const EXTERNALS: [&str; 4] = ["203.0.113.5", "10.0.9.9", "8.8.8.8", "fd00::99"];
pub const CIDRS: [&str; 10] = [
    "10.0.0.0/16",
    "10.0.1.0/24",
    "10.0.2.0/24",
    "10.0.0.0/8",
    "0.0.0.0/0",
    "203.0.113.0/24",
    "192.168.0.0/30",
    "fd00::/8",
    "::/0",
    "10.0.0.0/23",
];
pub const EXCEPTS: [&str; 8] = [
    "10.0.1.0/24",
    "10.0.0.0/25",
    "10.0.0.128/25",
    "10.0.2.0/26",
    "203.0.113.0/28",
    "192.168.0.2/32",
    "fd00::/64",
    "10.0.9.0/24",
];

pub fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    items.choose(rng).expect("non-empty")
}

pub fn labels(rng: &mut StdRng, keys: &[(&str, &[&str])]) -> Value {
    let mut map = Map::new();
    for (key, values) in keys {
        if rng.gen_bool(0.6) {
            map.insert(key.to_string(), json!(pick(rng, values)));
        }
    }
    Value::Object(map)
}

/// Keys and values pods and namespaces draw their labels from; selectors use the same.
pub const POD_LABELS: &[(&str, &[&str])] = &[("app", &["a", "b", "c"]), ("tier", &["x", "y"])];
pub const NS_LABELS: &[(&str, &[&str])] = &[("team", &["a", "b"]), ("env", &["x", "y"])];

pub fn selector(rng: &mut StdRng, keys: &[(&str, &[&str])]) -> Value {
    if rng.gen_bool(0.25) {
        return json!({});
    }
    let mut selector = Map::new();
    if rng.gen_bool(0.6) {
        selector.insert("matchLabels".into(), labels(rng, keys));
    }
    if rng.gen_bool(0.5) {
        let expressions: Vec<Value> = (0..rng.gen_range(1..=2))
            .map(|_| {
                let (key, values) = pick(rng, keys);
                let operator = *pick(rng, &["In", "NotIn", "Exists", "DoesNotExist"]);
                let mut chosen: Vec<&str> = values
                    .iter()
                    .copied()
                    .filter(|_| rng.gen_bool(0.5))
                    .collect();
                if chosen.is_empty() {
                    chosen.push(*pick(rng, values));
                }
                match operator {
                    "In" | "NotIn" => json!({"key": key, "operator": operator, "values": chosen}),
                    _ => json!({"key": key, "operator": operator}),
                }
            })
            .collect();
        selector.insert("matchExpressions".into(), json!(expressions));
    }
    Value::Object(selector)
}

pub fn protocol_name(rng: &mut StdRng) -> &'static str {
    ["TCP", "TCP", "UDP", "SCTP"][rng.gen_range(0..4)]
}

pub fn pod(rng: &mut StdRng, index: usize) -> Value {
    let mut ips = vec![json!({"ip": format!("10.0.{}.{}", index % 3, 10 + index)})];
    if rng.gen_bool(0.3) {
        ips.push(json!({"ip": format!("fd00:10::{index:x}")}));
    }
    let ports: Vec<Value> = (0..rng.gen_range(0..=3))
        .map(|_| {
            let mut port =
                json!({"containerPort": pick(rng, &PORT_NUMBERS), "protocol": protocol_name(rng)});
            if rng.gen_bool(0.8) {
                port["name"] = json!(pick(rng, &PORT_NAMES[..3]));
            }
            port
        })
        .collect();
    let mut spec = json!({"containers": [{"name": "c", "ports": ports}]});
    if rng.gen_bool(0.9) {
        spec["nodeName"] = json!(pick(rng, &NODES).0);
    }
    json!({
        "metadata": {
            "namespace": pick(rng, &NAMESPACES),
            "name": format!("pod{index}"),
            "labels": labels(rng, POD_LABELS)
        },
        "spec": spec,
        "status": {"podIPs": ips}
    })
}

pub fn peer(rng: &mut StdRng) -> Value {
    match rng.gen_range(0..4) {
        0 => json!({"podSelector": selector(rng, POD_LABELS)}),
        1 => json!({"namespaceSelector": selector(rng, NS_LABELS)}),
        2 => {
            let pods = selector(rng, POD_LABELS);
            json!({"podSelector": pods, "namespaceSelector": selector(rng, NS_LABELS)})
        }
        _ => {
            let cidr = *pick(rng, &CIDRS);
            let net: ipnet::IpNet = cidr.parse().expect("cidr");
            let except: Vec<&str> = EXCEPTS
                .iter()
                .copied()
                .filter(|e| {
                    let inner: ipnet::IpNet = e.parse().expect("except");
                    net.contains(&inner) && inner != net && rng.gen_bool(0.5)
                })
                .collect();
            json!({"ipBlock": {"cidr": cidr, "except": except}})
        }
    }
}

pub fn policy_port(rng: &mut StdRng) -> Value {
    let mut port = Map::new();
    if rng.gen_bool(0.7) {
        port.insert("protocol".into(), json!(protocol_name(rng)));
    }
    match rng.gen_range(0..4) {
        0 => {}
        1 => {
            port.insert("port".into(), json!(pick(rng, &PORT_NAMES)));
        }
        _ => {
            let start = *pick(rng, &PORT_NUMBERS);
            port.insert("port".into(), json!(start));
            if rng.gen_bool(0.3) {
                port.insert("endPort".into(), json!(start + rng.gen_range(0..100)));
            }
        }
    }
    Value::Object(port)
}

/// Absent, empty or a few items, each meaning something different somewhere.
pub fn maybe_list(rng: &mut StdRng, max: usize, item: fn(&mut StdRng) -> Value) -> Option<Value> {
    match rng.gen_range(0..5) {
        0 => None,
        1 => Some(json!([])),
        _ => Some(Value::Array(
            (0..rng.gen_range(1..=max)).map(|_| item(rng)).collect(),
        )),
    }
}

pub fn rule(rng: &mut StdRng, peers_key: &str) -> Value {
    let mut rule = Map::new();
    if let Some(peers) = maybe_list(rng, 3, peer) {
        rule.insert(peers_key.into(), peers);
    }
    if let Some(ports) = maybe_list(rng, 3, policy_port) {
        rule.insert("ports".into(), ports);
    }
    Value::Object(rule)
}

pub fn policy(rng: &mut StdRng, index: usize) -> Value {
    let mut spec = Map::new();
    spec.insert("podSelector".into(), selector(rng, POD_LABELS));
    if let Some(ingress) = maybe_list(rng, 3, |rng| rule(rng, "from")) {
        spec.insert("ingress".into(), ingress);
    }
    if let Some(egress) = maybe_list(rng, 3, |rng| rule(rng, "to")) {
        spec.insert("egress".into(), egress);
    }
    let types: &[&[&str]] = &[&["Ingress"], &["Egress"], &["Ingress", "Egress"], &[]];
    if rng.gen_bool(0.6) {
        spec.insert("policyTypes".into(), json!(pick(rng, types)));
    }
    if rng.gen_bool(0.08) {
        break_policy(rng, &mut spec);
    }
    let metadata = json!({"namespace": pick(rng, &NAMESPACES), "name": format!("pol{index}")});
    json!({"metadata": metadata, "spec": spec})
}

/// Makes the policy one the parser rejects, in one of the ways that decide how its
/// stand-in fails closed: a bad rule (the declared directions isolate), bad
/// `policyTypes` (both ways), a bad `podSelector` (the whole namespace, both ways).
pub fn break_policy(rng: &mut StdRng, spec: &mut Map<String, Value>) {
    match rng.gen_range(0..6) {
        0 => {
            spec.insert(
                "ingress".into(),
                json!([{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]),
            );
        }
        1 => {
            spec.insert(
                "egress".into(),
                json!([{"ports": [{"protocol": "ICMP", "port": 80}]}]),
            );
        }
        2 => {
            let bad = json!({"matchExpressions": [{"key": "app", "operator": "Equals"}]});
            let (key, peers) = *pick(rng, &[("ingress", "from"), ("egress", "to")]);
            spec.insert(key.into(), json!([{ peers: [{"podSelector": bad}] }]));
        }
        3 => {
            spec.insert("policyTypes".into(), json!(["Ingress", "Egres"]));
        }
        4 => {
            spec.insert("podSelector".into(), json!({"matchLabels": {"app": 7}}));
        }
        _ => {
            spec.insert("podSelector".into(), json!("app=a"));
        }
    }
}

pub struct Case {
    pub policies: Vec<Value>,
    pub pods: Vec<Value>,
    pub namespaces: Vec<Value>,
    pub cluster: Cluster,
}

pub fn case(rng: &mut StdRng) -> Case {
    let namespaces: Vec<Value> = NAMESPACES
        .iter()
        .map(|name| json!({"metadata": {"name": name, "labels": labels(rng, NS_LABELS)}}))
        .collect();
    let pods: Vec<Value> = (0..rng.gen_range(7..=11)).map(|i| pod(rng, i)).collect();
    let policies: Vec<Value> = (0..rng.gen_range(1..=6)).map(|i| policy(rng, i)).collect();
    let node_ips: BTreeMap<String, Vec<IpAddr>> = NODES
        .iter()
        .map(|(name, ips)| {
            (
                name.to_string(),
                ips.iter().map(|ip| ip.parse().expect("ip")).collect(),
            )
        })
        .collect();
    let cluster = Cluster::from_json(&policies, &pods, &namespaces, node_ips);
    Case {
        policies,
        pods,
        namespaces,
        cluster,
    }
}
