//! Property tests of what the etcd registry reads back (issue 14 §4): subnet keys and
//! record values as any writer to etcd may have left them. Nothing panics or takes
//! unbounded time; every key ends up counted (in a record or reported malformed, with
//! the key as its source); a key names one subnet in one spelling only.

use super::{build_snapshot, parse_subnet_key_suffix, subnet_key_suffix, Entries, KeyLayout};
use crate::record::proptests::{any_net, any_record};
use crate::record::VtepRecord;
use proptest::prelude::*;
use twill_conf::strategies::{bounded, config, hostile_string, raw_bytes};

const PREFIX: &str = "/twill/network/subnets/";

/// A key suffix: canonical ones, near-misses of them, anything.
fn any_suffix() -> impl Strategy<Value = String> {
    prop_oneof![
        any_net().prop_map(|n| subnet_key_suffix(&n.trunc())),
        any_net().prop_map(|n| format!("{}-{}", n.addr(), n.prefix_len())),
        any_net().prop_map(|n| n.to_string()),
        hostile_string(),
    ]
}

/// A value: a record (maybe not of the key's subnet), or corrupted bytes.
fn any_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any_record().prop_map(|r| serde_json::to_vec(&r).unwrap_or_default()),
        any_record().prop_flat_map(|r| raw_bytes(serde_json::to_vec(&r).unwrap_or_default())),
    ]
}

/// Entries as a listing returns them, some keys outside the prefix; records of good
/// keys often claim exactly their keys' subnets, so that some become records.
fn any_entries() -> impl Strategy<Value = Entries> {
    let entry = (any_suffix(), any_value(), any::<bool>(), any::<bool>()).prop_map(
        |(suffix, value, own_subnet, outside)| {
            let key = if outside {
                format!("/elsewhere/{suffix}")
            } else {
                format!("{PREFIX}{suffix}")
            };
            let value = match (own_subnet, parse_subnet_key_suffix(&suffix)) {
                (true, Ok(net)) => match VtepRecord::from_json(&value) {
                    Ok(mut r) => {
                        r.subnets = vec![net];
                        serde_json::to_vec(&r).unwrap_or(value)
                    }
                    Err(_) => value,
                },
                _ => value,
            };
            (key.into_bytes(), value)
        },
    );
    prop::collection::vec(entry, 0..6).prop_map(|e| e.into_iter().collect())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn subnet_keys_round_trip(net in any_net()) {
        let net = net.trunc();
        prop_assert_eq!(parse_subnet_key_suffix(&subnet_key_suffix(&net)), Ok(net));
    }

    #[test]
    fn a_key_names_a_subnet_in_its_canonical_spelling_only(suffix in any_suffix()) {
        match bounded("parse_subnet_key_suffix", || parse_subnet_key_suffix(&suffix)) {
            Ok(net) => prop_assert_eq!(subnet_key_suffix(&net), suffix),
            Err(reason) => prop_assert!(reason.contains(&format!("{suffix:?}")), "{reason}"),
        }
    }

    #[test]
    fn every_entry_is_a_record_or_reported(entries in any_entries()) {
        let snap = bounded("build_snapshot", || build_snapshot(PREFIX, &entries));
        prop_assert!(snap.complete);
        for (key, value) in &entries {
            let source = String::from_utf8_lossy(key).into_owned();
            let reported = snap.malformed.iter().any(|m| m.source == source);
            // Recorded: the key names a subnet its record claims, and the record counts.
            let subnet = source.strip_prefix(PREFIX).and_then(|s| parse_subnet_key_suffix(s).ok());
            let recorded = match (subnet, VtepRecord::from_json(value)) {
                (Some(s), Ok(r)) => r.subnets.contains(&s) && snap.records.contains(&r),
                _ => false,
            };
            prop_assert!(reported != recorded, "{source}: reported {reported}, recorded {recorded}");
        }
        // Each record once, each of its subnets under its own key.
        for (i, r) in snap.records.iter().enumerate() {
            prop_assert!(!snap.records[i + 1..].contains(r));
            for s in &r.subnets {
                let key = format!("{PREFIX}{}", subnet_key_suffix(s)).into_bytes();
                let under_key = entries.get(&key).and_then(|v| VtepRecord::from_json(v).ok());
                prop_assert_eq!(under_key.as_ref(), Some(r));
            }
        }
    }

    #[test]
    fn any_listed_key_and_value_are_held_or_not(key in prop_oneof![
        any_suffix().prop_map(|s| format!("{PREFIX}{s}").into_bytes()),
        prop::collection::vec(any::<u8>(), 0..64),
    ], value in any_value()) {
        let held = bounded("KeyLayout::held", || KeyLayout::new("/twill/network").held(&key, &value, 7));
        prop_assert_eq!(held.node, VtepRecord::from_json(&value).ok().map(|r| r.node));
        if let Some(net) = held.subnet {
            prop_assert_eq!(key, format!("{PREFIX}{}", subnet_key_suffix(&net)).into_bytes());
        }
    }
}
