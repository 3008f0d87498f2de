//! Behaviour tests: every case is decided by the reference evaluator and by the compiled
//! rule sets of all nodes, which must agree.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{json, Value};

use crate::model::{Cluster, Protocol};
use crate::ruleset::Connection;
use crate::{compile, reference};

mod fail_closed;
mod parsing;
mod proptests;
mod semantics;

pub const NODE1_IP: &str = "192.168.0.1";
pub const NODE2_IP: &str = "192.168.0.2";
pub const EXTERNAL: &str = "203.0.113.9";
// The pods of `world()`.
pub const WEB: &str = "10.0.1.1"; // prod, app=web, node n1, http=80/TCP
pub const DB: &str = "10.0.1.2"; // prod, app=db, node n1, no named ports
pub const API: &str = "10.0.2.1"; // prod, app=api, node n2, http=8080/TCP, dns=53/UDP
pub const TOOL: &str = "10.0.2.2"; // dev, app=web, node n2

pub fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IP")
}

pub fn pod(
    namespace: &str,
    name: &str,
    app: &str,
    node: &str,
    pod_ip: &str,
    ports: Value,
) -> Value {
    json!({
        "metadata": {"namespace": namespace, "name": name, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": ports}]},
        "status": {"podIPs": [{"ip": pod_ip}]}
    })
}

pub fn policy(name: &str, spec: Value) -> Value {
    json!({"metadata": {"namespace": "prod", "name": name}, "spec": spec})
}

/// Two namespaces, two nodes, the four pods named above, and `policies`.
pub fn world(policies: &[Value]) -> Cluster {
    let namespaces = [
        json!({"metadata": {"name": "prod", "labels": {"env": "prod"}}}),
        json!({"metadata": {"name": "dev", "labels": {"env": "dev"}}}),
    ];
    let pods = [
        pod(
            "prod",
            "web",
            "web",
            "n1",
            WEB,
            json!([{"name": "http", "containerPort": 80}]),
        ),
        pod(
            "prod",
            "db",
            "db",
            "n1",
            DB,
            json!([{"containerPort": 5432}]),
        ),
        pod(
            "prod",
            "api",
            "api",
            "n2",
            API,
            json!([
                {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                {"name": "dns", "containerPort": 53, "protocol": "UDP"}
            ]),
        ),
        pod("dev", "tool", "web", "n2", TOOL, json!([])),
    ];
    let node_ips = BTreeMap::from([
        ("n1".to_string(), vec![ip(NODE1_IP)]),
        ("n2".to_string(), vec![ip(NODE2_IP)]),
    ]);
    Cluster::from_json(policies, &pods, &namespaces, node_ips)
}

/// The decision for `src → dst:port/protocol`, after checking that the compiled rule sets
/// of every node agree with the reference.
pub fn decide(cluster: &Cluster, src: &str, dst: &str, protocol: Protocol, port: u16) -> bool {
    let connection = Connection {
        src: ip(src),
        dst: ip(dst),
        protocol,
        port,
    };
    let expected = reference::allowed(cluster, &connection);
    let compiled = cluster
        .node_ips
        .keys()
        .all(|node| compile(cluster, node).allows(&connection));
    assert_eq!(
        compiled, expected,
        "compiled and reference disagree on {connection:?}"
    );
    expected
}

pub fn tcp(cluster: &Cluster, src: &str, dst: &str, port: u16) -> bool {
    decide(cluster, src, dst, Protocol::Tcp, port)
}

/// A policy spec selecting the db pod, with these ingress rules.
pub fn db_ingress(rules: Value) -> Value {
    json!({"podSelector": {"matchLabels": {"app": "db"}}, "ingress": rules})
}
