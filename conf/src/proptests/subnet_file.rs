//! The subnet file the agent writes and the plugin reads.

use crate::json::JsonError;
use crate::strategies::any_net;
use crate::strategies::{bounded, config, json_value, mutate_one_key, raw_bytes};
use crate::SubnetFile;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

const KEYS: &[&str] = &["networks", "subnets", "mtu", "ipMasq"];

fn full() -> Map<String, Value> {
    match json!({"networks": ["10.244.0.0/16", "fd00:10:244::/48"],
                 "subnets": ["10.244.1.0/24", "fd00:10:244:1::/64"],
                 "mtu": 1450, "ipMasq": true})
    {
        Value::Object(m) => m,
        _ => unreachable!("a literal object"),
    }
}

fn any_file() -> impl Strategy<Value = SubnetFile> {
    (
        prop::collection::vec(any_net(), 0..3),
        prop::collection::vec(any_net(), 0..3),
        prop::option::of(any::<u32>()),
        any::<bool>(),
    )
        .prop_map(|(networks, subnets, mtu, ip_masq)| SubnetFile {
            networks,
            subnets,
            mtu,
            ip_masq,
        })
}

/// Parses, and when the file parses judges it too, as `load` does: what it accepts is
/// usable (ranges of one per family, an MTU a link can have).
fn parse_and_judge(bytes: &[u8]) -> Result<SubnetFile, JsonError> {
    bounded("SubnetFile::parse", || {
        let f = SubnetFile::parse(bytes)?;
        if let Ok(network) = f.network() {
            assert!(
                network.mtu.is_none_or(|m| (68..=65535).contains(&m)),
                "{f:?}"
            );
            assert!(
                !network.ranges.is_empty() && network.ranges.len() <= 2,
                "{f:?}"
            );
        }
        Ok(f)
    })
}

proptest! {
    #![proptest_config(config())]

    /// The field-naming decoder accepts exactly what serde_json's does.
    #[test]
    fn any_bytes_decode_as_serde_json_does(bytes in raw_bytes(Value::Object(full()).to_string().into_bytes())) {
        let ours = parse_and_judge(&bytes);
        let plain = serde_json::from_slice::<SubnetFile>(&bytes);
        prop_assert_eq!(ours.ok(), plain.ok());
    }

    #[test]
    fn a_written_file_reads_back(f in any_file()) {
        let body = serde_json::to_vec_pretty(&f).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(parse_and_judge(&body).ok(), Some(f));
    }

    /// A wrong value of a key is rejected naming the key (its element for a list); a
    /// removed or unknown key is named in the reason.
    #[test]
    fn one_mutated_key_is_named((map, key) in mutate_one_key(full(), KEYS)) {
        let removed = !map.contains_key(key);
        if let Err(e) = parse_and_judge(Value::Object(map).to_string().as_bytes()) {
            let named = e.field == key
                || e.field.starts_with(&format!("{key}["))
                || (removed && e.reason.contains(key));
            prop_assert!(named, "{key} changed: {e}");
            prop_assert!(e.to_string().contains(key), "{e}");
        }
    }

    #[test]
    fn unknown_keys_are_named(key in "[a-zA-Z_]{1,12}", v in json_value()) {
        prop_assume!(!KEYS.contains(&key.as_str()));
        let mut map = full();
        map.insert(key.clone(), v);
        let e = parse_and_judge(Value::Object(map).to_string().as_bytes())
            .expect_err("unknown keys are refused");
        prop_assert!(e.to_string().contains(&key), "{e}");
    }
}
