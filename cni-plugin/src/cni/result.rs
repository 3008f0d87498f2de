//! The ADD result, encoded in the shape of the requested spec version, and read back
//! from `prevResult` (CHECK) in any of those shapes.

use crate::cni::error::{CniError, DECODE_FAILURE};
use crate::cni::version::CniVersion;
use ipnet::IpNet;
use serde_json::{json, Map, Value};
use std::net::IpAddr;
pub use twill_conf::Route;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub mtu: Option<u32>,
    /// The netns path, for the interface inside the pod.
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
}

impl CniResult {
    pub fn encode(&self, version: CniVersion) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut m = Map::new();
                m.insert("name".into(), json!(i.name));
                m.insert("mac".into(), json!(i.mac));
                // Interface MTU is part of the result from 1.1.0 on.
                if let (Some(mtu), true) = (i.mtu, version >= CniVersion::V1_1_0) {
                    m.insert("mtu".into(), json!(mtu));
                }
                if let Some(s) = &i.sandbox {
                    m.insert("sandbox".into(), json!(s));
                }
                Value::Object(m)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut m = Map::new();
                // 0.x results name the family; 1.x dropped the field.
                if version < CniVersion::V1_0_0 {
                    let v = if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    };
                    m.insert("version".into(), json!(v));
                }
                m.insert("address".into(), json!(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    m.insert("gateway".into(), json!(gw.to_string()));
                }
                if let Some(i) = ip.interface {
                    m.insert("interface".into(), json!(i));
                }
                Value::Object(m)
            })
            .collect();
        let routes: Vec<Value> = self.routes.iter().map(Route::to_json).collect();
        json!({
            "cniVersion": version.as_str(),
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
            "dns": {},
        })
    }

    /// Reads a previous result of any supported version. A field that is present (and not
    /// null) must have its type and range: a value CHECK compares is never guessed.
    pub fn decode(v: &Value) -> Result<Self, CniError> {
        let mut out = CniResult::default();
        for (n, i) in list(v, "interfaces")?.iter().enumerate() {
            let path = |key: &str| format!("interfaces[{n}].{key}");
            out.interfaces.push(Interface {
                name: string(i, "name", path)?
                    .ok_or_else(|| bad(format!("{} is missing", path("name"))))?,
                mac: string(i, "mac", path)?.unwrap_or_default(),
                mtu: number(i, "mtu", path)?,
                sandbox: string(i, "sandbox", path)?.filter(|s| !s.is_empty()),
            });
        }
        for (n, ip) in list(v, "ips")?.iter().enumerate() {
            let path = |key: &str| format!("ips[{n}].{key}");
            out.ips.push(IpConfig {
                address: parsed(ip, "address", "a CIDR", path)?
                    .ok_or_else(|| bad(format!("{} is missing", path("address"))))?,
                gateway: parsed(ip, "gateway", "an IP", path)?,
                interface: number(ip, "interface", path)?,
            });
        }
        for (n, r) in list(v, "routes")?.iter().enumerate() {
            let path = |key: &str| format!("routes[{n}].{key}");
            out.routes.push(Route {
                dst: parsed(r, "dst", "a CIDR", path)?
                    .ok_or_else(|| bad(format!("{} is missing", path("dst"))))?,
                gw: parsed(r, "gw", "an IP", path)?,
            });
        }
        Ok(out)
    }
}

fn bad(what: String) -> CniError {
    CniError::new(DECODE_FAILURE, format!("prevResult: {what}"))
}

/// A field that is present and not null (Go writes null for an empty optional).
fn field<'a>(o: &'a Value, key: &str) -> Option<&'a Value> {
    o.get(key).filter(|v| !v.is_null())
}

fn list<'a>(v: &'a Value, key: &str) -> Result<&'a [Value], CniError> {
    match field(v, key) {
        None => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(bad(format!("{key} is not a list"))),
    }
}

fn string(o: &Value, key: &str, path: impl Fn(&str) -> String) -> Result<Option<String>, CniError> {
    match field(o, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(format!("{} is not a string", path(key)))),
    }
}

fn parsed<T: std::str::FromStr>(
    o: &Value,
    key: &str,
    what: &str,
    path: impl Fn(&str) -> String,
) -> Result<Option<T>, CniError> {
    match field(o, key) {
        None => Ok(None),
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| bad(format!("{} is not {what}", path(key)))),
        Some(_) => Err(bad(format!("{} is not {what}", path(key)))),
    }
}

/// A whole number that fits `T` (an MTU, an interface index), never a wrapped one.
fn number<T: TryFrom<u64>>(
    o: &Value,
    key: &str,
    path: impl Fn(&str) -> String,
) -> Result<Option<T>, CniError> {
    match field(o, key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| T::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| bad(format!("{} is not a number in range: {v}", path(key)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "tw0123".into(),
                    mac: "aa:bb:cc:dd:ee:ff".into(),
                    mtu: Some(1450),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: "0a:58:0a:f4:01:02".into(),
                    mtu: Some(1450),
                    sandbox: Some("/run/netns/p".into()),
                },
            ],
            ips: vec![IpConfig {
                address: "10.244.1.2/24".parse().unwrap(),
                gateway: Some("10.244.1.1".parse().unwrap()),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.244.1.1".parse().unwrap()),
            }],
        }
    }

    #[test]
    fn zero_x_results_carry_the_ip_version() {
        for v in [CniVersion::V0_3_0, CniVersion::V0_3_1, CniVersion::V0_4_0] {
            let j = sample().encode(v);
            assert_eq!(j["cniVersion"], v.as_str());
            assert_eq!(j["ips"][0]["version"], "4");
            assert!(j["interfaces"][1].get("mtu").is_none());
        }
    }

    #[test]
    fn one_x_results_drop_it_and_1_1_adds_mtu() {
        let j = sample().encode(CniVersion::V1_0_0);
        assert!(j["ips"][0].get("version").is_none());
        assert!(j["interfaces"][1].get("mtu").is_none());
        let j = sample().encode(CniVersion::V1_1_0);
        assert_eq!(j["interfaces"][1]["mtu"], 1450);
        assert_eq!(j["interfaces"][1]["sandbox"], "/run/netns/p");
    }

    #[test]
    fn decode_reads_every_shape_back() {
        for v in crate::cni::version::SUPPORTED {
            let back = CniResult::decode(&sample().encode(v)).unwrap();
            assert_eq!(back.ips, sample().ips);
            assert_eq!(back.routes, sample().routes);
            assert_eq!(back.interfaces[1].sandbox.as_deref(), Some("/run/netns/p"));
        }
    }

    #[test]
    fn decode_names_the_broken_field() {
        let err = CniResult::decode(&json!({"ips": [{"address": "nope"}]})).unwrap_err();
        assert!(err.msg.contains("ips[0].address"), "{}", err.msg);
    }

    /// Found by the property tests: an MTU of 2^32 + 1450 read back as 1450.
    #[test]
    fn decode_refuses_an_mtu_that_would_wrap() {
        for mtu in [
            json!(4_294_967_296u64 + 1450),
            json!(u64::MAX),
            json!(-1),
            json!(1.5),
        ] {
            let doc = json!({"interfaces": [{"name": "eth0", "mtu": mtu}]});
            let err = CniResult::decode(&doc).unwrap_err();
            assert_eq!(err.code, DECODE_FAILURE);
            assert!(err.msg.contains("interfaces[0].mtu"), "{}", err.msg);
        }
        let doc = json!({"interfaces": [{"name": "eth0", "mtu": u32::MAX}]});
        assert_eq!(
            CniResult::decode(&doc).unwrap().interfaces[0].mtu,
            Some(u32::MAX)
        );
    }

    /// Found by the property tests: a field of the wrong type was read as absent.
    #[test]
    fn decode_refuses_wrong_types_naming_the_field() {
        for (doc, field) in [
            (
                json!({"interfaces": [{"name": "eth0", "mtu": "1450"}]}),
                "interfaces[0].mtu",
            ),
            (
                json!({"interfaces": [{"name": "eth0", "mac": 7}]}),
                "interfaces[0].mac",
            ),
            (json!({"interfaces": [{"name": 7}]}), "interfaces[0].name"),
            (
                json!({"interfaces": [{"name": "e", "sandbox": []}]}),
                "interfaces[0].sandbox",
            ),
            (
                json!({"ips": [{"address": "10.0.0.2/24", "interface": false}]}),
                "ips[0].interface",
            ),
            (
                json!({"ips": [{"address": "10.0.0.2/24", "gateway": 5}]}),
                "ips[0].gateway",
            ),
            (
                json!({"routes": [{"dst": "0.0.0.0/0", "gw": {}}]}),
                "routes[0].gw",
            ),
            (json!({"routes": [{}]}), "routes[0].dst"),
            (json!({"interfaces": {}}), "interfaces"),
        ] {
            let err = CniResult::decode(&doc).unwrap_err();
            assert_eq!(err.code, DECODE_FAILURE);
            assert!(
                err.msg.starts_with(&format!("prevResult: {field} ")),
                "{doc}: {}",
                err.msg
            );
        }
        // Null is absent, as Go writes an empty optional.
        let doc = json!({"interfaces": [{"name": "e", "mtu": null, "mac": null}], "ips": null});
        assert_eq!(CniResult::decode(&doc).unwrap().interfaces[0].mtu, None);
    }
}
