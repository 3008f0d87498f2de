//! `prevResult`: the result of an earlier ADD, in the shape of any supported version.

use crate::cni::error::DECODE_FAILURE;
use crate::cni::result::{CniResult, Interface, IpConfig, Route};
use crate::cni::version::{CniVersion, SUPPORTED};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::net::IpAddr;
use twill_conf::strategies::any_net;
use twill_conf::strategies::{bounded, config, hostile_number, json_value, mutate_one_key};

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::from(std::net::Ipv4Addr::from(a))),
        any::<u128>().prop_map(|a| IpAddr::from(std::net::Ipv6Addr::from(a))),
    ]
}

fn any_result() -> impl Strategy<Value = CniResult> {
    let interface = (
        "[a-z0-9]{1,15}",
        "([0-9a-f]{2}:){5}[0-9a-f]{2}",
        prop::option::of(any::<u32>()),
        prop::option::of("/[a-z/]{1,30}"),
    )
        .prop_map(|(name, mac, mtu, sandbox)| Interface {
            name,
            mac,
            mtu,
            sandbox,
        });
    let ip = (
        any_net(),
        prop::option::of(any_ip()),
        prop::option::of(0usize..4),
    )
        .prop_map(|(address, gateway, interface)| IpConfig {
            address,
            gateway,
            interface,
        });
    let route = (any_net(), prop::option::of(any_ip())).prop_map(|(dst, gw)| Route {
        dst: dst.trunc(),
        gw,
    });
    (
        prop::collection::vec(interface, 0..3),
        prop::collection::vec(ip, 0..3),
        prop::collection::vec(route, 0..3),
    )
        .prop_map(|(interfaces, ips, routes)| CniResult {
            interfaces,
            ips,
            routes,
        })
}

fn decode(v: &Value) -> Result<CniResult, crate::cni::CniError> {
    bounded("CniResult::decode", || CniResult::decode(v))
}

/// A rejection is a decode failure naming a field of the result.
fn assert_named(e: &crate::cni::CniError, field: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(e.code, DECODE_FAILURE);
    prop_assert!(
        e.msg.starts_with(&format!("prevResult: {field}")),
        "{field} changed: {}",
        e.msg
    );
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_result_reads_back_in_every_version(r in any_result()) {
        for v in SUPPORTED {
            let back = decode(&r.encode(v))
                .map_err(|e| TestCaseError::fail(format!("{v}: {e}")))?;
            let mut expected = r.clone();
            if v < CniVersion::V1_1_0 {
                for i in &mut expected.interfaces {
                    i.mtu = None;
                }
            }
            prop_assert_eq!(back, expected);
        }
    }

    #[test]
    fn any_json_decodes_or_names_a_field(v in json_value()) {
        if let Err(e) = decode(&v) {
            let fields = ["interfaces", "ips", "routes"];
            prop_assert!(fields.iter().any(|f| e.msg.starts_with(&format!("prevResult: {f}"))), "{}", e.msg);
        }
    }

    #[test]
    fn one_mutated_list_is_named((map, key) in mutate_one_key(
        match json!({"cniVersion": "1.1.0", "interfaces": [], "ips": [], "routes": [], "dns": {}}) {
            Value::Object(m) => m,
            _ => unreachable!("a literal object"),
        },
        &["cniVersion", "interfaces", "ips", "routes", "dns"],
    )) {
        if let Err(e) = decode(&Value::Object(map)) {
            assert_named(&e, key)?;
        }
    }

    #[test]
    fn one_mutated_interface_field_is_named_or_kept((item, key) in mutate_one_key(
        match json!({"name": "eth0", "mac": "0a:58:0a:f4:01:02", "mtu": 1450, "sandbox": "/run/netns/p"}) {
            Value::Object(m) => m,
            _ => unreachable!("a literal object"),
        },
        &["name", "mac", "mtu", "sandbox"],
    )) {
        let original = item.get(key).cloned();
        match decode(&json!({"interfaces": [item]})) {
            Err(e) => assert_named(&e, &format!("interfaces[0].{key}"))?,
            // A value read is the value given, never a wrapped or truncated one.
            Ok(r) if key == "mtu" => {
                let read = r.interfaces[0].mtu.map(Value::from);
                prop_assert_eq!(read, original.filter(|v| !v.is_null()));
            }
            Ok(_) => {}
        }
    }

    #[test]
    fn one_mutated_ip_field_is_named_or_kept((item, key) in mutate_one_key(
        match json!({"address": "10.244.1.2/24", "gateway": "10.244.1.1", "interface": 1}) {
            Value::Object(m) => m,
            _ => unreachable!("a literal object"),
        },
        &["address", "gateway", "interface"],
    )) {
        let original = item.get(key).cloned();
        match decode(&json!({"ips": [item]})) {
            Err(e) => assert_named(&e, &format!("ips[0].{key}"))?,
            Ok(r) if key == "interface" => {
                let read = r.ips[0].interface.map(Value::from);
                prop_assert_eq!(read, original.filter(|v| !v.is_null()));
            }
            Ok(_) => {}
        }
    }

    #[test]
    fn out_of_range_numbers_are_refused_or_kept(n in hostile_number()) {
        let doc = json!({"interfaces": [{"name": "eth0", "mtu": n.clone()}],
                         "ips": [{"address": "10.0.0.2/24", "interface": n.clone()}]});
        match decode(&doc) {
            Ok(r) => {
                prop_assert_eq!(r.interfaces[0].mtu.map(Value::from), Some(n.clone()).filter(|v| !v.is_null()));
                prop_assert_eq!(r.ips[0].interface.map(Value::from), Some(n).filter(|v| !v.is_null()));
            }
            Err(e) => prop_assert!(e.msg.contains("interfaces[0].mtu") || e.msg.contains("ips[0].interface"), "{}", e.msg),
        }
    }
}
