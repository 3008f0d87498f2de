//! Property tests of the record every registry carries (issue 14 §4): decoding any bytes
//! never panics, takes bounded time and accepts exactly what serde_json accepts; a
//! changed field is named; a record and a MAC read back as written.

use super::{Mac, VtepRecord};
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use std::net::IpAddr;
pub(crate) use twill_conf::strategies::any_net;
use twill_conf::strategies::{bounded, config, hostile_string, mutate_one_key, raw_bytes};

const FIELDS: &[&str] = &["node", "subnets", "publicIP", "vtepMAC", "backend"];

fn sample() -> Map<String, Value> {
    match json!({"node": "n1", "subnets": ["10.244.1.0/24", "fd00:10:244:1::/64"],
                 "publicIP": "192.168.0.2", "vtepMAC": "0a:58:0a:f4:01:00",
                 "backend": "vxlan"})
    {
        Value::Object(m) => m,
        _ => unreachable!("a literal object"),
    }
}

pub(crate) fn any_record() -> impl Strategy<Value = VtepRecord> {
    let ip = prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::from(std::net::Ipv4Addr::from(a))),
        any::<u128>().prop_map(|a| IpAddr::from(std::net::Ipv6Addr::from(a))),
    ];
    (
        hostile_string(),
        prop::collection::vec(any_net(), 0..3),
        ip,
        any::<[u8; 6]>(),
        hostile_string(),
    )
        .prop_map(|(node, subnets, public_ip, mac, backend)| VtepRecord {
            node,
            subnets,
            public_ip,
            vtep_mac: Mac(mac),
            backend,
        })
}

fn decode(bytes: &[u8]) -> Result<VtepRecord, twill_conf::json::JsonError> {
    bounded("VtepRecord::from_json", || VtepRecord::from_json(bytes))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes_decode_as_serde_json_does(bytes in raw_bytes(Value::Object(sample()).to_string().into_bytes())) {
        let ours = decode(&bytes);
        let plain = serde_json::from_slice::<VtepRecord>(&bytes);
        prop_assert_eq!(ours.ok(), plain.ok());
    }

    #[test]
    fn a_record_reads_back(r in any_record()) {
        let bytes = serde_json::to_vec(&r).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(decode(&bytes).ok(), Some(r));
    }

    /// A changed field is named as the error's field (its element for `subnets`), or in
    /// the reason when it was removed.
    #[test]
    fn one_mutated_field_is_named((map, key) in mutate_one_key(sample(), FIELDS)) {
        let removed = !map.contains_key(key);
        if let Err(e) = decode(Value::Object(map).to_string().as_bytes()) {
            let named = e.field == key
                || e.field.starts_with(&format!("{key}["))
                || (removed && e.reason.contains(key));
            prop_assert!(named, "{key} changed: {e}");
        }
    }

    /// A MAC that parses is the one its canonical form names.
    #[test]
    fn macs_parse_to_their_canonical_form(s in prop_oneof![
        hostile_string(),
        "[0-9a-fA-F+-]{2}(:[0-9a-fA-F+-]{2}){4,6}",
    ]) {
        if let Ok(m) = bounded("Mac::from_str", || s.parse::<Mac>()) {
            prop_assert_eq!(m.to_string().parse::<Mac>(), Ok(m));
        }
    }

    #[test]
    fn macs_read_back(mac in any::<[u8; 6]>()) {
        prop_assert_eq!(Mac(mac).to_string().parse::<Mac>(), Ok(Mac(mac)));
    }
}
