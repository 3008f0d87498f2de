//! The plugin's network configuration: one entry of a conflist with `"type": "twill"`.

use crate::value::{kind, object, Keys};
use crate::{valid_ifname, Attachment, ConfError, PodRange};
use ipnet::IpNet;
use serde_json::{json, Map, Value};
use std::net::IpAddr;
use std::path::PathBuf;

pub const DEFAULT_SUBNET_FILE: &str = "/run/twill/subnet.json";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/twill";
/// Where twill-agent serves the address store; the plugin opens the store itself when
/// nothing answers there.
pub const DEFAULT_STORE_SOCKET: &str = "/run/twill/store.sock";
pub const DEFAULT_BRIDGE: &str = "twill0";
/// The GC key of CNI 1.1, and the older key libcni still sends beside it.
pub const VALID_ATTACHMENTS_KEY: &str = "cni.dev/valid-attachments";
pub const LEGACY_ATTACHMENTS_KEY: &str = "cni.dev/attachments";

/// A route as CNI writes it, `{"dst": "…", "gw": "…"}`. In the plugin's config a route
/// without `gw` goes through the range's gateway; in a result it has no gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
}

impl Route {
    pub fn to_json(&self) -> Value {
        match self.gw {
            Some(gw) => json!({"dst": self.dst.to_string(), "gw": gw.to_string()}),
            None => json!({"dst": self.dst.to_string()}),
        }
    }
}

/// The validated plugin configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConf {
    pub cni_version: String,
    pub cni_versions: Vec<String>,
    pub name: String,
    pub plugin_type: String,
    /// Inline pod range; when absent the ranges come from `subnet_file`.
    pub range: Option<PodRange>,
    pub routes: Vec<Route>,
    pub subnet_file: PathBuf,
    pub data_dir: PathBuf,
    /// The agent's address store socket (`storeSocket`).
    pub store_socket: PathBuf,
    pub bridge: String,
    pub mtu: Option<u32>,
    pub hairpin_mode: bool,
    /// `isolatePorts`: pod ports of the bridge are isolated from each other and pods
    /// reach even their own node's pods through the gateway, so that traffic between
    /// pods of one node is routed by the node and crosses its `forward` hook (where
    /// NetworkPolicy is enforced) instead of being bridged past it.
    pub isolate_ports: bool,
    /// `networkPolicy`: the node's agent enforces NetworkPolicy, so ADD waits until the
    /// new pod's rules are in force (and fails when the agent cannot say they are).
    pub network_policy: bool,
    pub log_file: Option<PathBuf>,
    pub log_level: Option<String>,
    /// The previous result (CHECK, DEL), kept raw: its shape depends on `cni_version`.
    pub prev_result: Option<Value>,
    /// GC: the attachments to keep; `None` when the key is absent.
    pub valid_attachments: Option<Vec<Attachment>>,
}

impl PluginConf {
    /// Parses and validates a network configuration as the runtime passes it on stdin.
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| ConfError::Decode(e.to_string()))?;
        let map = value.as_object().ok_or(ConfError::NotAnObject)?;
        Self::from_map(map)
    }

    fn from_map(map: &Map<String, Value>) -> Result<Self, ConfError> {
        let k = Keys::new(map);
        let cni_version = k
            .string("cniVersion")?
            .ok_or(ConfError::Missing { key: "cniVersion" })?
            .to_string();
        let cni_versions = match k.array("cniVersions")? {
            None => Vec::new(),
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str().map(str::to_string).ok_or_else(|| {
                        ConfError::invalid(
                            format!("cniVersions[{i}]"),
                            format!("expected a string, found {}", kind(v)),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let name = k
            .string("name")?
            .ok_or(ConfError::Missing { key: "name" })?
            .to_string();
        // The name becomes a directory under dataDir.
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return Err(ConfError::invalid(
                "name",
                format!("{name:?} is not a valid network name"),
            ));
        }
        let plugin_type = k.string("type")?.unwrap_or_default().to_string();

        let subnet: Option<IpNet> = k.parsed("subnet", "a CIDR such as 10.244.1.0/24")?;
        let gateway: Option<IpAddr> = k.parsed("gateway", "an IP address")?;
        let range =
            match subnet {
                Some(subnet) => Some(
                    PodRange::new(subnet, gateway).map_err(|r| ConfError::invalid("subnet", r))?,
                ),
                None if gateway.is_some() => return Err(ConfError::invalid(
                    "gateway",
                    "is set without \"subnet\"; the gateway of a subnet file is its first address",
                )),
                None => None,
            };
        let routes = match k.array("routes")? {
            None => Vec::new(),
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(i, v)| parse_route(v, i))
                .collect::<Result<_, _>>()?,
        };

        let bridge = k.string("bridge")?.unwrap_or(DEFAULT_BRIDGE).to_string();
        valid_ifname(&bridge).map_err(|r| ConfError::invalid("bridge", r))?;

        let path = |key: &str, default: &str| -> Result<PathBuf, ConfError> {
            match k.string(key)? {
                Some("") => Err(ConfError::invalid(key, "must not be empty")),
                Some(p) => Ok(PathBuf::from(p)),
                None => Ok(PathBuf::from(default)),
            }
        };
        let subnet_file = path("subnetFile", DEFAULT_SUBNET_FILE)?;
        let data_dir = path("dataDir", DEFAULT_DATA_DIR)?;
        let store_socket = path("storeSocket", DEFAULT_STORE_SOCKET)?;
        let log_file = k
            .string("logFile")?
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let log_level = match k.string("logLevel")? {
            None => None,
            Some(l @ ("error" | "warn" | "info" | "debug" | "trace")) => Some(l.to_string()),
            Some(other) => {
                return Err(ConfError::invalid(
                    "logLevel",
                    format!("{other:?} is not one of error, warn, info, debug, trace"),
                ))
            }
        };

        let valid_attachments = match map
            .get(VALID_ATTACHMENTS_KEY)
            .map(|v| (VALID_ATTACHMENTS_KEY, v))
            .or_else(|| {
                map.get(LEGACY_ATTACHMENTS_KEY)
                    .map(|v| (LEGACY_ATTACHMENTS_KEY, v))
            }) {
            None | Some((_, Value::Null)) => None,
            Some((key, v)) => Some(parse_attachments(key, v)?),
        };

        let prev_result = map.get("prevResult").filter(|v| !v.is_null()).cloned();
        if let Some(prev) = &prev_result {
            object(prev, "prevResult")?;
        }

        Ok(PluginConf {
            cni_version,
            cni_versions,
            name,
            plugin_type,
            range,
            routes,
            subnet_file,
            data_dir,
            store_socket,
            bridge,
            mtu: k.u32_in("mtu", 68..=65535)?,
            hairpin_mode: k.bool("hairpinMode")?.unwrap_or(true),
            isolate_ports: k.bool("isolatePorts")?.unwrap_or(false),
            network_policy: k.bool("networkPolicy")?.unwrap_or(false),
            log_file,
            log_level,
            prev_result,
            valid_attachments,
        })
    }

    /// The directory of this network's address store.
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join(&self.name)
    }

    /// The conflist entry the agent writes for a node; the inverse of [`PluginConf::parse`]
    /// for the keys Twill owns.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), json!("twill"));
        if let Some(r) = &self.range {
            m.insert("subnet".into(), json!(r.subnet.to_string()));
            m.insert("gateway".into(), json!(r.gateway.to_string()));
        }
        if !self.routes.is_empty() {
            let routes = self.routes.iter().map(Route::to_json).collect();
            m.insert("routes".into(), Value::Array(routes));
        }
        m.insert("subnetFile".into(), json!(self.subnet_file));
        m.insert("dataDir".into(), json!(self.data_dir));
        m.insert("storeSocket".into(), json!(self.store_socket));
        m.insert("bridge".into(), json!(self.bridge));
        if let Some(mtu) = self.mtu {
            m.insert("mtu".into(), json!(mtu));
        }
        m.insert("hairpinMode".into(), json!(self.hairpin_mode));
        if self.isolate_ports {
            m.insert("isolatePorts".into(), json!(true));
        }
        if self.network_policy {
            m.insert("networkPolicy".into(), json!(true));
        }
        if let Some(f) = &self.log_file {
            m.insert("logFile".into(), json!(f));
        }
        if let Some(l) = &self.log_level {
            m.insert("logLevel".into(), json!(l));
        }
        Value::Object(m)
    }
}

fn parse_route(v: &Value, i: usize) -> Result<Route, ConfError> {
    let path = format!("routes[{i}]");
    let map = object(v, &path)?;
    let k = Keys::nested(map, format!("{path}."));
    let dst: IpNet = k
        .parsed("dst", "a CIDR")?
        .ok_or_else(|| ConfError::invalid(k.path("dst"), "is required"))?;
    let gw: Option<IpAddr> = k.parsed("gw", "an IP address")?;
    if let Some(gw) = gw {
        if gw.is_ipv4() != dst.addr().is_ipv4() {
            return Err(ConfError::invalid(
                k.path("gw"),
                format!("{gw} is not of the same address family as {dst}"),
            ));
        }
    }
    Ok(Route {
        dst: dst.trunc(),
        gw,
    })
}

fn parse_attachments(key: &str, v: &Value) -> Result<Vec<Attachment>, ConfError> {
    let list = v
        .as_array()
        .ok_or_else(|| ConfError::invalid(key, format!("expected a list, found {}", kind(v))))?;
    list.iter()
        .enumerate()
        .map(|(i, item)| {
            let path = format!("{key}[{i}]");
            let k = Keys::nested(object(item, &path)?, format!("{path}."));
            let container_id = k
                .string("containerID")?
                .ok_or_else(|| ConfError::invalid(k.path("containerID"), "is required"))?;
            let ifname = k
                .string("ifname")?
                .ok_or_else(|| ConfError::invalid(k.path("ifname"), "is required"))?;
            Ok(Attachment::new(container_id, ifname))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<PluginConf, ConfError> {
        PluginConf::parse(v.to_string().as_bytes())
    }

    #[test]
    fn minimal_inline_config_gets_defaults() {
        let c = parse(
            json!({"cniVersion": "1.0.0", "name": "pods", "type": "twill",
                             "subnet": "10.244.1.0/24"}),
        )
        .unwrap();
        let r = c.range.clone().unwrap();
        assert_eq!(r.gateway.to_string(), "10.244.1.1");
        assert_eq!(c.bridge, "twill0");
        assert!(c.hairpin_mode);
        assert!(!c.isolate_ports, "off unless asked for");
        assert!(!c.network_policy, "off unless asked for");
        assert_eq!(c.store_dir(), PathBuf::from("/var/lib/twill/pods"));
        assert_eq!(c.subnet_file, PathBuf::from(DEFAULT_SUBNET_FILE));
        assert_eq!(c.store_socket, PathBuf::from(DEFAULT_STORE_SOCKET));
    }

    #[test]
    fn unknown_keys_are_tolerated() {
        let c = parse(json!({"cniVersion": "0.3.1", "name": "n", "type": "twill",
                             "somethingElse": {"x": 1}, "runtimeConfig": {}}));
        assert!(c.is_ok());
    }

    #[test]
    fn wrong_types_name_the_key() {
        for (v, key) in [
            (
                json!({"cniVersion": "1.0.0", "name": "n", "mtu": "1500"}),
                "mtu",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "mtu": 20}),
                "mtu",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "hairpinMode": "yes"}),
                "hairpinMode",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "subnet": "10.1.0.0/33"}),
                "subnet",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "subnet": "10.1.0.5/24"}),
                "subnet",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "subnet": "10.1.0.0/24",
                    "gateway": "10.2.0.1"}),
                "subnet",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "bridge": "a-very-long-bridge-name"}),
                "bridge",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "routes": [{"dst": "x"}]}),
                "routes[0].dst",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "dataDir": ""}),
                "dataDir",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "storeSocket": 7}),
                "storeSocket",
            ),
            (json!({"cniVersion": 1, "name": "n"}), "cniVersion"),
            (json!({"cniVersion": "1.0.0"}), "name"),
            (json!({"cniVersion": "1.0.0", "name": "a/b"}), "name"),
            (
                json!({"cniVersion": "1.1.0", "name": "n",
                    "cni.dev/valid-attachments": [{"ifname": "eth0"}]}),
                "cni.dev/valid-attachments[0].containerID",
            ),
        ] {
            let err = parse(v.clone()).expect_err(&v.to_string());
            assert_eq!(err.key(), Some(key), "{v} gave {err}");
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn round_trips_through_to_json() {
        let c = parse(
            json!({"cniVersion": "1.1.0", "name": "pods", "type": "twill",
            "subnet": "10.244.1.0/24", "routes": [{"dst": "10.96.0.0/12"}],
            "dataDir": "/tmp/x", "storeSocket": "/tmp/s.sock", "mtu": 1450, "hairpinMode": false,
            "isolatePorts": true, "networkPolicy": true}),
        )
        .unwrap();
        assert!(c.isolate_ports);
        assert!(c.network_policy);
        let mut v = c.to_json();
        v["cniVersion"] = json!("1.1.0");
        v["name"] = json!("pods");
        assert_eq!(parse(v).unwrap(), c);
    }

    #[test]
    fn gc_attachments_accept_both_keys() {
        let c = parse(json!({"cniVersion": "1.1.0", "name": "n",
            "cni.dev/attachments": [{"containerID": "a", "ifname": "eth0"}]}))
        .unwrap();
        assert_eq!(c.valid_attachments.unwrap().len(), 1);
    }
}
