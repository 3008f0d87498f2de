//! The plugin's network configuration, as the runtime hands it over on stdin.

use crate::strategies::{
    bounded, config, json_value, mutate_one_key, raw_bytes, with_duplicate_key,
};
use crate::{ConfError, PluginConf};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

const KEYS: &[&str] = &[
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    "subnet",
    "gateway",
    "routes",
    "subnetFile",
    "dataDir",
    "storeSocket",
    "bridge",
    "mtu",
    "hairpinMode",
    "isolatePorts",
    "networkPolicy",
    "logFile",
    "logLevel",
    "prevResult",
    "cni.dev/valid-attachments",
    "cni.dev/attachments",
];

/// A config using every key Twill reads.
fn full() -> Map<String, Value> {
    let v = json!({
        "cniVersion": "1.1.0", "cniVersions": ["1.0.0", "1.1.0"], "name": "pods",
        "type": "twill", "subnet": "10.244.1.0/24", "gateway": "10.244.1.1",
        "routes": [{"dst": "10.96.0.0/12"}, {"dst": "10.0.0.0/8", "gw": "10.244.1.1"}],
        "subnetFile": "/run/twill/subnet.json", "dataDir": "/var/lib/twill",
        "storeSocket": "/run/twill/store.sock", "bridge": "twill0", "mtu": 1450,
        "hairpinMode": true, "isolatePorts": false, "networkPolicy": true,
        "logFile": "/var/log/twill.log", "logLevel": "info",
        "prevResult": {"cniVersion": "1.1.0", "ips": []},
        "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}],
        "cni.dev/attachments": [{"containerID": "b", "ifname": "eth0"}],
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!("a literal object"),
    }
}

fn parse_bounded(bytes: &[u8]) -> Result<PluginConf, ConfError> {
    bounded("PluginConf::parse", || PluginConf::parse(bytes))
}

/// The keys Twill owns, as `to_json` writes them: everything else cleared.
fn owned(c: &PluginConf) -> PluginConf {
    PluginConf {
        cni_versions: Vec::new(),
        plugin_type: String::new(),
        prev_result: None,
        valid_attachments: None,
        ..c.clone()
    }
}

/// A config that parsed, written back by `to_json`, parses to the same config.
fn assert_round_trip(c: &PluginConf) -> Result<(), TestCaseError> {
    let mut v = c.to_json();
    v["cniVersion"] = json!(c.cni_version);
    v["name"] = json!(c.name);
    let back = PluginConf::parse(v.to_string().as_bytes())
        .map_err(|e| TestCaseError::fail(format!("{v} does not parse back: {e}")))?;
    prop_assert_eq!(owned(&back), owned(c));
    Ok(())
}

/// Keys judged together: a rejection of either may name the other.
const PAIRS: &[(&str, &str)] = &[("gateway", "subnet")];

fn assert_names(err: &ConfError, mutated: &str) -> Result<(), TestCaseError> {
    super::assert_names(err, mutated, PAIRS)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes_parse_or_fail_typed(bytes in raw_bytes(Value::Object(full()).to_string().into_bytes())) {
        match parse_bounded(&bytes) {
            Ok(c) => assert_round_trip(&c)?,
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn any_json_value_parses_or_fails_typed(v in json_value()) {
        if let Ok(c) = parse_bounded(v.to_string().as_bytes()) {
            assert_round_trip(&c)?;
        }
    }

    #[test]
    fn one_mutated_key_is_named_or_round_trips((map, key) in mutate_one_key(full(), KEYS)) {
        match parse_bounded(Value::Object(map).to_string().as_bytes()) {
            Ok(c) => assert_round_trip(&c)?,
            Err(e) => assert_names(&e, key)?,
        }
    }

    #[test]
    fn one_mutated_route_field_is_named((route, _) in mutate_one_key(
        match json!({"dst": "10.96.0.0/12", "gw": "10.244.1.1"}) {
            Value::Object(m) => m,
            _ => unreachable!("a literal object"),
        },
        &["dst", "gw"],
    )) {
        let mut map = full();
        map.insert("routes".into(), json!([route]));
        match parse_bounded(Value::Object(map).to_string().as_bytes()) {
            Ok(c) => assert_round_trip(&c)?,
            Err(e) => assert_names(&e, "routes[0]")?,
        }
    }

    #[test]
    fn one_mutated_attachment_field_is_named((item, _) in mutate_one_key(
        match json!({"containerID": "a", "ifname": "eth0"}) {
            Value::Object(m) => m,
            _ => unreachable!("a literal object"),
        },
        &["containerID", "ifname"],
    )) {
        let mut map = full();
        map.insert("cni.dev/valid-attachments".into(), json!([item]));
        if let Err(e) = parse_bounded(Value::Object(map).to_string().as_bytes()) {
            assert_names(&e, "cni.dev/valid-attachments[0]")?;
        }
    }

    /// Go's encoding/json, which libcni uses, keeps the last of duplicate keys: so does
    /// the plugin, whatever the values.
    #[test]
    fn duplicate_keys_resolve_to_the_last(key in prop::sample::select(KEYS), second in json_value()) {
        let text = with_duplicate_key(&full(), key, &second);
        let mut last = full();
        last.insert(key.to_string(), second);
        let dup = parse_bounded(text.as_bytes());
        let expected = PluginConf::parse(Value::Object(last).to_string().as_bytes());
        match (dup, expected) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
            (a, b) => prop_assert!(false, "{text}: {a:?} but {b:?}"),
        }
    }
}
