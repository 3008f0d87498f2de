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

    /// Reads a previous result of any supported version.
    pub fn decode(v: &Value) -> Result<Self, CniError> {
        let bad = |what: String| CniError::new(DECODE_FAILURE, format!("prevResult: {what}"));
        let list = |key: &str| -> Result<Vec<Value>, CniError> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(a)) => Ok(a.clone()),
                Some(_) => Err(bad(format!("{key:?} is not a list"))),
            }
        };
        let str_at = |o: &Value, key: &str| o.get(key).and_then(Value::as_str).map(str::to_string);
        let net_at = |o: &Value, key: &str, path: String| -> Result<IpNet, CniError> {
            str_at(o, key)
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| bad(format!("{path} is not a CIDR")))
        };
        // An optional address: absent is fine, present must parse.
        let ip_at = |o: &Value, key: &str, path: String| -> Result<Option<IpAddr>, CniError> {
            str_at(o, key)
                .map(|g| g.parse().map_err(|_| bad(format!("{path} is not an IP"))))
                .transpose()
        };
        let mut out = CniResult::default();
        for (n, i) in list("interfaces")?.iter().enumerate() {
            out.interfaces.push(Interface {
                name: str_at(i, "name")
                    .ok_or_else(|| bad(format!("interfaces[{n}].name is missing")))?,
                mac: str_at(i, "mac").unwrap_or_default(),
                mtu: i.get("mtu").and_then(Value::as_u64).map(|m| m as u32),
                sandbox: str_at(i, "sandbox").filter(|s| !s.is_empty()),
            });
        }
        for (n, ip) in list("ips")?.iter().enumerate() {
            out.ips.push(IpConfig {
                address: net_at(ip, "address", format!("ips[{n}].address"))?,
                gateway: ip_at(ip, "gateway", format!("ips[{n}].gateway"))?,
                interface: ip
                    .get("interface")
                    .and_then(Value::as_u64)
                    .map(|i| i as usize),
            });
        }
        for (n, r) in list("routes")?.iter().enumerate() {
            out.routes.push(Route {
                dst: net_at(r, "dst", format!("routes[{n}].dst"))?,
                gw: ip_at(r, "gw", format!("routes[{n}].gw"))?,
            });
        }
        Ok(out)
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
}
