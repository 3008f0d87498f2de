//! The cluster network configuration (`net-conf.json`, like flannel's): one file shared
//! by every node's agent.
//!
//! ```json
//! {
//!   "network": "10.244.0.0/16",
//!   "subnetLen": 24,
//!   "backend": {"type": "vxlan", "vni": 1, "port": 8472, "mtu": "auto", "directRouting": "auto"},
//!   "ipMasq": true,
//!   "registry": {"kind": "file", "dir": "/run/twill/registry"}
//! }
//! ```
//! `"ipv6Network"` and `"ipv6SubnetLen"` (default 64) add an IPv6 pod network.

use crate::value::{kind, object, Keys};
use crate::ConfError;
use ipnet::IpNet;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

pub const DEFAULT_VNI: u32 = 1;
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
pub const DEFAULT_REGISTRY_DIR: &str = "/run/twill/registry";
pub const DEFAULT_ETCD_PREFIX: &str = "/twill/network";
pub const DEFAULT_LEASE_TTL_SECS: u32 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mtu {
    /// Underlay MTU minus the encapsulation overhead.
    Auto,
    Fixed(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectRouting {
    /// Peers on a directly connected underlay subnet are routed without encapsulation.
    Auto,
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub vni: u32,
    pub port: u16,
    pub mtu: Mtu,
    pub direct_routing: DirectRouting,
    /// Transmit checksum offload on the VXLAN device. On by default (several times
    /// faster); the agent keeps its own VXLAN packets out of NAT, which is what broke
    /// them with the offload on (see the agent's firewall). Off makes the kernel
    /// checksum every packet in software before encapsulation.
    pub checksum_offload: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryConf {
    /// Records as files in a directory shared by the agents of one machine.
    File { dir: PathBuf },
    /// etcd v3: subnet leases with a TTL.
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
        lease_ttl_secs: u32,
    },
    /// Node objects: `spec.podCIDR(s)` and `twill.io/` annotations; or, with
    /// `records: twillnodes`, one small `TwillNode` object per node.
    Kubernetes {
        kubeconfig: Option<PathBuf>,
        records: KubeRecords,
    },
}

/// Which objects the `kubernetes` registry watches for the other nodes' records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KubeRecords {
    /// Every Node: no extra object, but every Node update (kubelet heartbeats, image
    /// lists) reaches every agent, and a start lists whole Nodes.
    #[default]
    Nodes,
    /// `twill.io/v1` `TwillNode`s, written by each agent for its own node: a start
    /// lists records of a few hundred bytes and only record changes reach the agents.
    TwillNodes,
}

impl KubeRecords {
    pub fn as_str(self) -> &'static str {
        match self {
            KubeRecords::Nodes => "nodes",
            KubeRecords::TwillNodes => "twillnodes",
        }
    }
}

/// One pod network and how it is cut into per-node subnets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodNetwork {
    pub network: IpNet,
    pub subnet_len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConf {
    /// At most one per address family; the IPv4 one first.
    pub networks: Vec<PodNetwork>,
    pub backend: Backend,
    pub ip_masq: bool,
    pub registry: RegistryConf,
}

impl ClusterConf {
    pub fn read(path: &Path) -> Result<Self, ConfError> {
        let bytes = std::fs::read(path).map_err(|e| ConfError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::parse(&bytes)
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, ConfError> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| ConfError::Decode(e.to_string()))?;
        let map = v.as_object().ok_or(ConfError::NotAnObject)?;
        let k = Keys::new(map);

        let mut networks = Vec::new();
        let v4: Option<IpNet> = k.parsed("network", "a CIDR")?;
        if let Some(n) = v4 {
            networks.push(pod_network(&k, "network", n, "subnetLen", 24, false)?);
        }
        let v6: Option<IpNet> = k.parsed("ipv6Network", "a CIDR")?;
        if let Some(n) = v6 {
            networks.push(pod_network(
                &k,
                "ipv6Network",
                n,
                "ipv6SubnetLen",
                64,
                true,
            )?);
        }
        if networks.is_empty() {
            return Err(ConfError::Missing { key: "network" });
        }

        let backend = match map.get("backend").filter(|v| !v.is_null()) {
            None => Backend::default(),
            Some(b) => parse_backend(object(b, "backend")?)?,
        };
        let registry = match map.get("registry").filter(|v| !v.is_null()) {
            None => RegistryConf::File {
                dir: DEFAULT_REGISTRY_DIR.into(),
            },
            Some(r) => parse_registry(object(r, "registry")?)?,
        };
        Ok(ClusterConf {
            networks,
            backend,
            ip_masq: k.bool("ipMasq")?.unwrap_or(true),
            registry,
        })
    }

    /// The cluster networks, one per family.
    pub fn cluster_cidrs(&self) -> Vec<IpNet> {
        self.networks.iter().map(|n| n.network).collect()
    }

    /// The file as an operator would write it; `parse(to_json())` gives `self` back.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        for n in &self.networks {
            let (net, len) = if n.network.addr().is_ipv4() {
                ("network", "subnetLen")
            } else {
                ("ipv6Network", "ipv6SubnetLen")
            };
            m.insert(net.into(), json!(n.network.to_string()));
            m.insert(len.into(), json!(n.subnet_len));
        }
        let b = &self.backend;
        m.insert(
            "backend".into(),
            json!({
                "type": "vxlan",
                "vni": b.vni,
                "port": b.port,
                "mtu": match b.mtu { Mtu::Auto => json!("auto"), Mtu::Fixed(n) => json!(n) },
                "directRouting": match b.direct_routing {
                    DirectRouting::Auto => "auto",
                    DirectRouting::Never => "never",
                },
                "checksumOffload": b.checksum_offload,
            }),
        );
        m.insert("ipMasq".into(), json!(self.ip_masq));
        let r = match &self.registry {
            RegistryConf::File { dir } => json!({"kind": "file", "dir": dir}),
            RegistryConf::Etcd {
                endpoints,
                prefix,
                lease_ttl_secs,
            } => json!({"kind": "etcd", "endpoints": endpoints, "prefix": prefix,
                        "leaseTtl": lease_ttl_secs}),
            RegistryConf::Kubernetes {
                kubeconfig,
                records,
            } => {
                let mut r = json!({"kind": "kubernetes", "records": records.as_str()});
                if let Some(p) = kubeconfig {
                    r["kubeconfig"] = json!(p);
                }
                r
            }
        };
        m.insert("registry".into(), r);
        Value::Object(m)
    }
}

impl Default for Backend {
    fn default() -> Self {
        Backend {
            vni: DEFAULT_VNI,
            port: DEFAULT_VXLAN_PORT,
            mtu: Mtu::Auto,
            direct_routing: DirectRouting::Auto,
            checksum_offload: true,
        }
    }
}

fn pod_network(
    k: &Keys,
    net_key: &str,
    network: IpNet,
    len_key: &str,
    default_len: u8,
    v6: bool,
) -> Result<PodNetwork, ConfError> {
    if network.addr().is_ipv6() != v6 {
        let fam = if v6 { "an IPv6" } else { "an IPv4" };
        return Err(ConfError::invalid(
            net_key,
            format!("{network} is not {fam} network"),
        ));
    }
    if network.network() != network.addr() {
        return Err(ConfError::invalid(
            net_key,
            format!(
                "{network} has host bits set (did you mean {})?",
                network.trunc()
            ),
        ));
    }
    let max = network.max_prefix_len() as u32;
    let len = k
        .u32_in(len_key, 1..=max)?
        .map(|n| n as u8)
        .unwrap_or(default_len);
    // Each node subnet needs a network address (VTEP), a gateway and a pod address.
    let usable_max = if v6 { 126 } else { 30 };
    if len <= network.prefix_len() || len > usable_max {
        return Err(ConfError::invalid(
            len_key,
            format!(
                "{len} must be longer than the network's /{} and at most {usable_max}",
                network.prefix_len()
            ),
        ));
    }
    Ok(PodNetwork {
        network,
        subnet_len: len,
    })
}

fn parse_backend(map: &Map<String, Value>) -> Result<Backend, ConfError> {
    let k = Keys::nested(map, "backend.".into());
    if let Some(t) = k.string("type")? {
        if t != "vxlan" {
            return Err(ConfError::invalid(
                k.path("type"),
                format!("{t:?} is not supported; the only backend is \"vxlan\""),
            ));
        }
    }
    let mut b = Backend::default();
    if let Some(vni) = k.u32_in("vni", 1..=0xff_ffff)? {
        b.vni = vni;
    }
    if let Some(port) = k.u32_in("port", 1..=65535)? {
        b.port = port as u16;
    }
    b.mtu = match map.get("mtu").filter(|v| !v.is_null()) {
        None => Mtu::Auto,
        Some(Value::String(s)) if s == "auto" => Mtu::Auto,
        Some(Value::Number(_)) => Mtu::Fixed(k.u32_in("mtu", 576..=65485)?.unwrap_or(1450)),
        Some(other) => {
            return Err(ConfError::invalid(
                k.path("mtu"),
                format!("expected \"auto\" or a number, found {}", kind(other)),
            ))
        }
    };
    b.checksum_offload = k.bool("checksumOffload")?.unwrap_or(true);
    b.direct_routing = match k.string("directRouting")? {
        None | Some("auto") => DirectRouting::Auto,
        Some("never") => DirectRouting::Never,
        Some(other) => {
            return Err(ConfError::invalid(
                k.path("directRouting"),
                format!("{other:?} is neither \"auto\" nor \"never\""),
            ))
        }
    };
    Ok(b)
}

fn parse_registry(map: &Map<String, Value>) -> Result<RegistryConf, ConfError> {
    let k = Keys::nested(map, "registry.".into());
    match k.string("kind")? {
        None => Err(ConfError::invalid(
            k.path("kind"),
            "missing; one of \"file\", \"etcd\", \"kubernetes\"",
        )),
        Some("file") => Ok(RegistryConf::File {
            dir: k.string("dir")?.unwrap_or(DEFAULT_REGISTRY_DIR).into(),
        }),
        Some("etcd") => {
            let endpoints =
                match k.array("endpoints")? {
                    None => vec!["http://127.0.0.1:2379".to_string()],
                    Some(list) => {
                        let mut out = Vec::new();
                        for (i, e) in list.iter().enumerate() {
                            match e.as_str() {
                                Some(s) if !s.is_empty() => out.push(s.to_string()),
                                _ => return Err(ConfError::invalid(
                                    format!("registry.endpoints[{i}]"),
                                    "expected a non-empty string such as \"http://10.0.0.1:2379\"",
                                )),
                            }
                        }
                        if out.is_empty() {
                            return Err(ConfError::invalid(k.path("endpoints"), "is empty"));
                        }
                        out
                    }
                };
            let prefix = k.string("prefix")?.unwrap_or(DEFAULT_ETCD_PREFIX);
            if !prefix.starts_with('/') {
                return Err(ConfError::invalid(
                    k.path("prefix"),
                    format!("{prefix:?} must start with '/'"),
                ));
            }
            // The root ("/", "//") stays "/": an empty prefix would not read back.
            let prefix = match prefix.trim_end_matches('/') {
                "" => "/",
                trimmed => trimmed,
            };
            Ok(RegistryConf::Etcd {
                endpoints,
                prefix: prefix.to_string(),
                lease_ttl_secs: k
                    .u32_in("leaseTtl", 5..=86_400)?
                    .unwrap_or(DEFAULT_LEASE_TTL_SECS),
            })
        }
        Some("kubernetes") => Ok(RegistryConf::Kubernetes {
            kubeconfig: k.string("kubeconfig")?.map(PathBuf::from),
            records: match k.string("records")? {
                None | Some("nodes") => KubeRecords::Nodes,
                Some("twillnodes") => KubeRecords::TwillNodes,
                Some(other) => {
                    return Err(ConfError::invalid(
                        k.path("records"),
                        format!("{other:?} is neither \"nodes\" nor \"twillnodes\""),
                    ))
                }
            },
        }),
        Some(other) => Err(ConfError::invalid(
            k.path("kind"),
            format!("{other:?} is not one of \"file\", \"etcd\", \"kubernetes\""),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_a_minimal_file() {
        let c = ClusterConf::parse(br#"{"network": "10.244.0.0/16"}"#).unwrap();
        assert_eq!(c.networks[0].subnet_len, 24);
        assert_eq!(c.backend, Backend::default());
        assert!(
            c.backend.checksum_offload,
            "the offload is on unless turned off"
        );
        assert!(c.ip_masq);
        assert_eq!(
            c.registry,
            RegistryConf::File {
                dir: DEFAULT_REGISTRY_DIR.into()
            }
        );
        assert_eq!(
            ClusterConf::parse(c.to_json().to_string().as_bytes()).unwrap(),
            c
        );
    }

    #[test]
    fn full_file_round_trips() {
        let c = ClusterConf::parse(
            br#"{"network": "10.50.0.0/16", "subnetLen": 26, "ipv6Network": "fd00:50::/56",
                 "backend": {"type": "vxlan", "vni": 42, "port": 4789, "mtu": 1400,
                             "directRouting": "never", "checksumOffload": false},
                 "ipMasq": false,
                 "registry": {"kind": "etcd", "endpoints": ["http://10.0.0.1:2379"],
                              "prefix": "/x/", "leaseTtl": 20}}"#,
        )
        .unwrap();
        assert_eq!(c.networks.len(), 2);
        assert_eq!(c.networks[1].subnet_len, 64);
        assert_eq!(c.backend.mtu, Mtu::Fixed(1400));
        assert_eq!(c.backend.direct_routing, DirectRouting::Never);
        assert!(!c.backend.checksum_offload);
        assert!(matches!(&c.registry, RegistryConf::Etcd { prefix, .. } if prefix == "/x"));
        assert_eq!(
            ClusterConf::parse(c.to_json().to_string().as_bytes()).unwrap(),
            c
        );
    }

    /// Found by the property tests: prefix "/" was kept as "", which to_json wrote and
    /// parse then refused ("must start with '/'").
    #[test]
    fn etcd_prefix_of_the_root_round_trips() {
        for prefix in ["/", "//"] {
            let doc = json!({"network": "10.244.0.0/16",
                             "registry": {"kind": "etcd", "prefix": prefix}});
            let c = ClusterConf::parse(doc.to_string().as_bytes()).unwrap();
            assert!(matches!(&c.registry, RegistryConf::Etcd { prefix, .. } if prefix == "/"));
            assert_eq!(
                ClusterConf::parse(c.to_json().to_string().as_bytes()).unwrap(),
                c
            );
        }
    }

    #[test]
    fn kubernetes_records_default_to_nodes_and_round_trip() {
        let plain = ClusterConf::parse(
            br#"{"network": "10.244.0.0/16", "registry": {"kind": "kubernetes"}}"#,
        )
        .unwrap();
        let twill = ClusterConf::parse(
            br#"{"network": "10.244.0.0/16",
                 "registry": {"kind": "kubernetes", "records": "twillnodes", "kubeconfig": "/k"}}"#,
        )
        .unwrap();
        assert_eq!(
            plain.registry,
            RegistryConf::Kubernetes {
                kubeconfig: None,
                records: KubeRecords::Nodes
            }
        );
        assert_eq!(
            twill.registry,
            RegistryConf::Kubernetes {
                kubeconfig: Some("/k".into()),
                records: KubeRecords::TwillNodes
            }
        );
        for c in [plain, twill] {
            assert_eq!(
                ClusterConf::parse(c.to_json().to_string().as_bytes()).unwrap(),
                c
            );
        }
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&str, &str)] = &[
            (r#"{}"#, "network"),
            (r#"{"network": "10.244.0.1/16"}"#, "network"),
            (r#"{"network": "fd00::/48"}"#, "network"),
            (
                r#"{"network": "10.244.0.0/16", "subnetLen": 16}"#,
                "subnetLen",
            ),
            (
                r#"{"network": "10.244.0.0/16", "subnetLen": 31}"#,
                "subnetLen",
            ),
            (
                r#"{"network": "10.244.0.0/16", "subnetLen": "24"}"#,
                "subnetLen",
            ),
            (r#"{"network": "10.244.0.0/16", "ipMasq": "yes"}"#, "ipMasq"),
            (
                r#"{"network": "10.244.0.0/16", "registry": {"kind": "kubernetes", "records": "pods"}}"#,
                "registry.records",
            ),
            (
                r#"{"network": "10.244.0.0/16", "backend": {"type": "udp"}}"#,
                "backend.type",
            ),
            (
                r#"{"network": "10.244.0.0/16", "backend": {"vni": 0}}"#,
                "backend.vni",
            ),
            (
                r#"{"network": "10.244.0.0/16", "backend": {"port": 70000}}"#,
                "backend.port",
            ),
            (
                r#"{"network": "10.244.0.0/16", "backend": {"mtu": "big"}}"#,
                "backend.mtu",
            ),
            (
                r#"{"network": "10.244.0.0/16", "backend": {"mtu": 100}}"#,
                "backend.mtu",
            ),
            (
                r#"{"network": "10.244.0.0/16", "backend": {"directRouting": "yes"}}"#,
                "backend.directRouting",
            ),
            (
                r#"{"network": "10.244.0.0/16", "registry": {}}"#,
                "registry.kind",
            ),
            (
                r#"{"network": "10.244.0.0/16", "registry": {"kind": "consul"}}"#,
                "registry.kind",
            ),
            (
                r#"{"network": "10.244.0.0/16", "registry": {"kind": "etcd", "endpoints": [1]}}"#,
                "registry.endpoints[0]",
            ),
            (
                r#"{"network": "10.244.0.0/16", "registry": {"kind": "etcd", "prefix": "x"}}"#,
                "registry.prefix",
            ),
            (r#"{"network": "10.244.0.0/16", "registry": 3}"#, "registry"),
        ];
        for (json, key) in cases {
            let e = ClusterConf::parse(json.as_bytes()).unwrap_err();
            assert_eq!(e.key(), Some(*key), "{json}: {e}");
        }
    }
}
