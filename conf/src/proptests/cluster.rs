//! The cluster network config every agent reads (`net-conf.json`).

use crate::cluster::ClusterConf;
use crate::strategies::{bounded, config, hostile_string, json_value, mutate_one_key, raw_bytes};
use crate::ConfError;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

const KEYS: &[&str] = &[
    "network",
    "subnetLen",
    "ipv6Network",
    "ipv6SubnetLen",
    "backend",
    "ipMasq",
    "registry",
];
const BACKEND_KEYS: &[&str] = &[
    "type",
    "vni",
    "port",
    "mtu",
    "directRouting",
    "checksumOffload",
];
const REGISTRY_KEYS: &[&str] = &[
    "kind",
    "dir",
    "endpoints",
    "prefix",
    "leaseTtl",
    "kubeconfig",
];

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn full() -> Map<String, Value> {
    object(json!({
        "network": "10.244.0.0/16", "subnetLen": 24,
        "ipv6Network": "fd00:10:244::/56", "ipv6SubnetLen": 64,
        "backend": {"type": "vxlan", "vni": 1, "port": 8472, "mtu": "auto",
                    "directRouting": "auto", "checksumOffload": true},
        "ipMasq": true,
        "registry": {"kind": "etcd", "endpoints": ["http://10.0.0.1:2379"],
                     "prefix": "/twill/network", "leaseTtl": 60},
    }))
}

fn parse_bounded(bytes: &[u8]) -> Result<ClusterConf, ConfError> {
    bounded("ClusterConf::parse", || ClusterConf::parse(bytes))
}

fn assert_round_trip(c: &ClusterConf) -> Result<(), TestCaseError> {
    let v = c.to_json();
    let back = ClusterConf::parse(v.to_string().as_bytes())
        .map_err(|e| TestCaseError::fail(format!("{v} does not parse back: {e}")))?;
    prop_assert_eq!(&back, c);
    Ok(())
}

/// Keys judged together: a rejection of either may name the other.
const PAIRS: &[(&str, &str)] = &[("network", "subnetLen"), ("ipv6Network", "ipv6SubnetLen")];

fn assert_names(err: &ConfError, mutated: &str) -> Result<(), TestCaseError> {
    super::assert_names(err, mutated, PAIRS)
}

fn registry(kind: &str) -> Map<String, Value> {
    object(json!({"kind": kind, "dir": "/run/twill/registry",
                  "endpoints": ["http://10.0.0.1:2379"], "prefix": "/twill/network",
                  "leaseTtl": 60, "kubeconfig": "/etc/twill/kubeconfig"}))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes_parse_or_fail_typed(bytes in raw_bytes(Value::Object(full()).to_string().into_bytes())) {
        if let Ok(c) = parse_bounded(&bytes) {
            assert_round_trip(&c)?;
        }
    }

    #[test]
    fn one_mutated_key_is_named_or_round_trips((map, key) in mutate_one_key(full(), KEYS)) {
        match parse_bounded(Value::Object(map.clone()).to_string().as_bytes()) {
            Ok(c) => assert_round_trip(&c)?,
            // Without both networks the file has none: "network" is what is missing.
            Err(e) if !map.contains_key("network") && !map.contains_key("ipv6Network") => {
                prop_assert_eq!(e.key(), Some("network"));
            }
            Err(e) => assert_names(&e, key)?,
        }
    }

    #[test]
    fn one_mutated_backend_key_is_named_or_round_trips((backend, key) in mutate_one_key(
        object(json!({"type": "vxlan", "vni": 1, "port": 8472, "mtu": 1450,
                      "directRouting": "never", "checksumOffload": false})),
        BACKEND_KEYS,
    )) {
        let mut map = full();
        map.insert("backend".into(), Value::Object(backend));
        match parse_bounded(Value::Object(map).to_string().as_bytes()) {
            Ok(c) => assert_round_trip(&c)?,
            Err(e) => assert_names(&e, &format!("backend.{key}"))?,
        }
    }

    #[test]
    fn one_mutated_registry_key_is_named_or_round_trips(
        kind in prop::sample::select(vec!["file", "etcd", "kubernetes"]),
        value in prop_oneof![json_value(), hostile_string().prop_map(Value::String)],
        key in prop::sample::select(REGISTRY_KEYS),
    ) {
        let mut reg = registry(kind);
        reg.insert(key.to_string(), value);
        let mut map = full();
        map.insert("registry".into(), Value::Object(reg));
        match parse_bounded(Value::Object(map).to_string().as_bytes()) {
            Ok(c) => assert_round_trip(&c)?,
            Err(e) => assert_names(&e, &format!("registry.{key}"))?,
        }
    }
}
