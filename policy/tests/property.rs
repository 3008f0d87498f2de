//! Property test: on random clusters and connections, the compiled rule sets of all nodes
//! decide exactly as the reference evaluator. Fixed seeds, so a failure reproduces.

use std::collections::BTreeMap;
use std::net::IpAddr;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use twill_policy::{compile, reference, Cluster, Connection, Protocol};

const CLUSTERS: u64 = 2_000;
const CONNECTIONS_PER_CLUSTER: usize = 60;
const NAMESPACES: [&str; 3] = ["ns0", "ns1", "ns2"];
const NODES: [(&str, &[&str]); 2] = [
    ("n1", &["192.168.0.1", "fd00::1"]),
    ("n2", &["192.168.0.2"]),
];
const PORT_NAMES: [&str; 4] = ["http", "dns", "metrics", "nope"];
const PORT_NUMBERS: [u16; 6] = [53, 80, 443, 5432, 8080, 9090];
const EXTERNALS: [&str; 4] = ["203.0.113.5", "10.0.9.9", "8.8.8.8", "fd00::99"];
const CIDRS: [&str; 10] = [
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
const EXCEPTS: [&str; 8] = [
    "10.0.1.0/24",
    "10.0.0.0/25",
    "10.0.0.128/25",
    "10.0.2.0/26",
    "203.0.113.0/28",
    "192.168.0.2/32",
    "fd00::/64",
    "10.0.9.0/24",
];

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    items.choose(rng).expect("non-empty")
}

fn labels(rng: &mut StdRng, keys: &[(&str, &[&str])]) -> Value {
    let mut map = Map::new();
    for (key, values) in keys {
        if rng.gen_bool(0.6) {
            map.insert(key.to_string(), json!(pick(rng, values)));
        }
    }
    Value::Object(map)
}

/// Keys and values pods and namespaces draw their labels from; selectors use the same.
const POD_LABELS: &[(&str, &[&str])] = &[("app", &["a", "b", "c"]), ("tier", &["x", "y"])];
const NS_LABELS: &[(&str, &[&str])] = &[("team", &["a", "b"]), ("env", &["x", "y"])];

fn selector(rng: &mut StdRng, keys: &[(&str, &[&str])]) -> Value {
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

fn protocol_name(rng: &mut StdRng) -> &'static str {
    ["TCP", "TCP", "UDP", "SCTP"][rng.gen_range(0..4)]
}

fn pod(rng: &mut StdRng, index: usize) -> Value {
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

fn peer(rng: &mut StdRng) -> Value {
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

fn policy_port(rng: &mut StdRng) -> Value {
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
fn maybe_list(rng: &mut StdRng, max: usize, item: fn(&mut StdRng) -> Value) -> Option<Value> {
    match rng.gen_range(0..5) {
        0 => None,
        1 => Some(json!([])),
        _ => Some(Value::Array(
            (0..rng.gen_range(1..=max)).map(|_| item(rng)).collect(),
        )),
    }
}

fn rule(rng: &mut StdRng, peers_key: &str) -> Value {
    let mut rule = Map::new();
    if let Some(peers) = maybe_list(rng, 3, peer) {
        rule.insert(peers_key.into(), peers);
    }
    if let Some(ports) = maybe_list(rng, 3, policy_port) {
        rule.insert("ports".into(), ports);
    }
    Value::Object(rule)
}

fn policy(rng: &mut StdRng, index: usize) -> Value {
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
    if rng.gen_bool(0.03) {
        // A bad policy: it must be rejected by both sides alike, never stop the others.
        spec.insert(
            "ingress".into(),
            json!([{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]),
        );
    }
    let metadata = json!({"namespace": pick(rng, &NAMESPACES), "name": format!("pol{index}")});
    json!({"metadata": metadata, "spec": spec})
}

struct Case {
    policies: Vec<Value>,
    pods: Vec<Value>,
    namespaces: Vec<Value>,
    cluster: Cluster,
}

fn case(rng: &mut StdRng) -> Case {
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

fn connection(rng: &mut StdRng, cluster: &Cluster) -> Connection {
    let pod_ips: Vec<IpAddr> = cluster
        .pods
        .iter()
        .flat_map(|p| p.ips.iter().copied())
        .collect();
    let node_ips: Vec<IpAddr> = cluster.node_ips.values().flatten().copied().collect();
    let externals: Vec<IpAddr> = EXTERNALS.iter().map(|ip| ip.parse().expect("ip")).collect();
    let pod_ip = |rng: &mut StdRng| *pick(rng, &pod_ips);
    let (src, dst) = match rng.gen_range(0..10) {
        0..=4 => (pod_ip(rng), pod_ip(rng)),
        5 => (pod_ip(rng), *pick(rng, &externals)),
        6 => (*pick(rng, &externals), pod_ip(rng)),
        7 => (*pick(rng, &node_ips), pod_ip(rng)),
        8 => (pod_ip(rng), *pick(rng, &node_ips)),
        _ => (pod_ip(rng), pod_ip(rng)),
    };
    let protocol = *pick(
        rng,
        &[Protocol::Tcp, Protocol::Tcp, Protocol::Udp, Protocol::Sctp],
    );
    let port = if rng.gen_bool(0.8) {
        *pick(rng, &PORT_NUMBERS)
    } else {
        rng.gen_range(1..=9999)
    };
    Connection {
        src,
        dst,
        protocol,
        port,
    }
}

#[test]
fn compiled_rules_decide_as_the_reference() {
    let (mut allowed, mut denied, mut rejected) = (0usize, 0usize, 0usize);
    for seed in 0..CLUSTERS {
        let mut rng = StdRng::seed_from_u64(seed);
        let case = case(&mut rng);
        rejected += case.cluster.rejected.len();
        let rule_sets: Vec<_> = NODES
            .iter()
            .map(|(node, _)| compile(&case.cluster, node))
            .collect();
        for (rules, (node, _)) in rule_sets.iter().zip(NODES) {
            assert_eq!(
                rules,
                &compile(&case.cluster, node),
                "seed {seed}: compile is not deterministic"
            );
        }
        for _ in 0..CONNECTIONS_PER_CLUSTER {
            let connection = connection(&mut rng, &case.cluster);
            let expected = reference::allowed(&case.cluster, &connection);
            let compiled = rule_sets.iter().all(|rules| rules.allows(&connection));
            if compiled != expected {
                panic!(
                    "seed {seed}: {connection:?}: reference says {expected}, compiled says {compiled}\n\
                     policies: {}\npods: {}\nnamespaces: {}\nrule sets: {}",
                    json!(case.policies),
                    json!(case.pods),
                    json!(case.namespaces),
                    serde_json::to_string_pretty(&rule_sets).unwrap_or_default(),
                );
            }
            if expected {
                allowed += 1;
            } else {
                denied += 1;
            }
        }
    }
    let connections = allowed + denied;
    eprintln!(
        "{CLUSTERS} clusters, {connections} connections: {allowed} allowed, {denied} denied; \
         {rejected} bad policies rejected"
    );
    // Guard against a generator that only ever produces one answer.
    assert!(
        allowed > 10_000 && denied > 10_000,
        "allowed {allowed}, denied {denied}"
    );
    assert!(rejected > 0);
}
