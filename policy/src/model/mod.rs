//! The typed policy, pod and namespace model, parsed from Kubernetes JSON objects keeping
//! only the fields the compiler needs.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value};

use crate::error::{FieldPath, Kind, ModelError, Rejected};
use crate::json;
use crate::selector::{LabelSelector, Labels};

mod policy_json;

/// A transport protocol a policy port names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Parses `protocol` at `path`; absent means TCP, as in Kubernetes.
    pub(crate) fn from_field(
        object: &Map<String, Value>,
        path: &FieldPath,
    ) -> Result<Protocol, ModelError> {
        match json::opt_str(object, "protocol", path)? {
            None | Some("TCP") => Ok(Protocol::Tcp),
            Some("UDP") => Ok(Protocol::Udp),
            Some("SCTP") => Ok(Protocol::Sctp),
            Some(other) => Err(ModelError::BadValue {
                path: path.field("protocol"),
                value: Value::from(other).to_string(),
                what: "one of TCP, UDP, SCTP",
            }),
        }
    }
}

/// `port` of a policy port: a number, or the name of a container port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    Number(u16),
    Named(String),
}

/// One entry of a rule's `ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyPort {
    pub protocol: Protocol,
    /// `None`: every port of `protocol`.
    pub port: Option<PortRef>,
    /// Only with a numeric `port`: the range `port..=end_port`.
    pub end_port: Option<u16>,
}

/// An `ipBlock` peer: `cidr` minus every `except`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpBlock {
    pub cidr: IpNet,
    pub except: Vec<IpNet>,
}

impl IpBlock {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|net| net.contains(&ip))
    }
}

/// One entry of `from` or `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// Pods: by `pod_selector` in the policy's namespace, or in the namespaces
    /// `namespace_selector` matches; both set means both must match.
    Pods {
        pod_selector: Option<LabelSelector>,
        namespace_selector: Option<LabelSelector>,
    },
    IpBlock(IpBlock),
}

/// One ingress or egress rule; an empty `peers` or `ports` means every peer or port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<PolicyPort>,
}

/// A NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: LabelSelector,
    /// `policyTypes` after the API server's defaulting.
    pub isolates_ingress: bool,
    pub isolates_egress: bool,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
}

/// A port of one of a pod's containers; named ones are what named policy ports resolve to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// `None` while unscheduled: no node judges its traffic.
    pub node_name: Option<String>,
    /// Its own addresses. Empty for a host-network pod (its address is the node's, which
    /// policies do not govern) and for a finished one (its address may be reused).
    pub ips: Vec<IpAddr>,
    pub ports: Vec<ContainerPort>,
}

impl Pod {
    /// The numbers `name` resolves to on this pod for `protocol`; empty if it does not.
    pub fn named_port<'a>(
        &'a self,
        name: &'a str,
        protocol: Protocol,
    ) -> impl Iterator<Item = u16> + 'a {
        self.ports
            .iter()
            .filter(move |p| p.protocol == protocol && p.name.as_deref() == Some(name))
            .map(|p| p.port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

/// Everything a compile reads: the cluster's objects and each node's own addresses.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    pub policies: Vec<Policy>,
    pub pods: Vec<Pod>,
    pub namespaces: Vec<Namespace>,
    /// Per node name, the node's own IPs (traffic between them and its pods is allowed).
    pub node_ips: BTreeMap<String, Vec<IpAddr>>,
    /// Objects that could not be parsed; left out, and reported with every compile. A
    /// rejected policy's stand-in ([`Rejected::isolating`]) is also in `policies`.
    pub rejected: Vec<Rejected>,
}

impl Cluster {
    /// Parses the objects; a bad one is left out and recorded in `rejected`, a bad policy
    /// replaced by its isolating-only stand-in.
    pub fn from_json(
        policies: &[Value],
        pods: &[Value],
        namespaces: &[Value],
        node_ips: BTreeMap<String, Vec<IpAddr>>,
    ) -> Cluster {
        let mut rejected = Vec::new();
        let mut policies = parse_all(
            policies,
            Kind::NetworkPolicy,
            Policy::from_json,
            &mut rejected,
        );
        // Rejected policies fail closed: their stand-ins are compiled in their place.
        policies.extend(rejected.iter().filter_map(|r| r.isolating.clone()));
        let pods = parse_all(pods, Kind::Pod, Pod::from_json, &mut rejected);
        let namespaces = parse_all(
            namespaces,
            Kind::Namespace,
            Namespace::from_json,
            &mut rejected,
        );
        Cluster {
            policies,
            pods,
            namespaces,
            node_ips,
            rejected,
        }
    }

    /// The labels of namespace `name`; none if it is unknown (so only `{}` matches it).
    pub fn namespace_labels(&self, name: &str) -> &Labels {
        static NONE: Labels = Labels::new();
        self.namespaces
            .iter()
            .find(|ns| ns.name == name)
            .map_or(&NONE, |ns| &ns.labels)
    }
}

fn parse_all<T>(
    objects: &[Value],
    kind: Kind,
    parse: fn(&Value) -> Result<T, ModelError>,
    rejected: &mut Vec<Rejected>,
) -> Vec<T> {
    let mut parsed = Vec::new();
    for object in objects {
        match parse(object) {
            Ok(item) => parsed.push(item),
            Err(error) => {
                // Best effort: name the object even when its body is bad.
                let meta = |key: &str| {
                    object
                        .pointer(&format!("/metadata/{key}"))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                rejected.push(Rejected {
                    kind,
                    namespace: meta("namespace"),
                    name: meta("name"),
                    error,
                    isolating: match kind {
                        Kind::NetworkPolicy => Policy::isolating_only(object),
                        Kind::Pod | Kind::Namespace => None,
                    },
                });
            }
        }
    }
    parsed
}

/// A Kubernetes object: its `metadata` and the whole object to read the rest from.
pub(crate) struct Object<'a> {
    pub body: &'a Map<String, Value>,
    /// Empty for a cluster-scoped object.
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
}

impl<'a> Object<'a> {
    /// Reads `metadata`; `metadata.namespace` is required when `namespaced`.
    pub(crate) fn read(value: &'a Value, namespaced: bool) -> Result<Object<'a>, ModelError> {
        let root = FieldPath::default();
        let body = json::object(value, &root)?;
        let path = root.field("metadata");
        let meta = json::opt_object(body, "metadata", &root)?
            .ok_or_else(|| ModelError::Missing { path: path.clone() })?;
        let namespace = json::opt_str(meta, "namespace", &path)?.unwrap_or_default();
        if namespaced && namespace.is_empty() {
            return Err(ModelError::Missing {
                path: path.field("namespace"),
            });
        }
        Ok(Object {
            body,
            namespace: namespace.to_string(),
            name: json::req_str(meta, "name", &path)?.to_string(),
            labels: json::labels(meta, "labels", &path)?,
        })
    }
}

impl Namespace {
    pub fn from_json(value: &Value) -> Result<Namespace, ModelError> {
        let Object { name, labels, .. } = Object::read(value, false)?;
        Ok(Namespace { name, labels })
    }
}

impl Pod {
    pub fn from_json(value: &Value) -> Result<Pod, ModelError> {
        let root = FieldPath::default();
        let Object {
            body: object,
            namespace,
            name,
            labels,
        } = Object::read(value, true)?;
        let spec_path = root.field("spec");
        let no_spec = Map::new();
        let spec = json::opt_object(object, "spec", &root)?.unwrap_or(&no_spec);
        let node_name = json::opt_str(spec, "nodeName", &spec_path)?
            .filter(|node| !node.is_empty())
            .map(str::to_string);
        let mut ports = Vec::new();
        for (container, path) in json::list(spec, "containers", &spec_path)? {
            let container = json::object(container, &path)?;
            for (port, path) in json::list(container, "ports", &path)? {
                let port_object = json::object(port, &path)?;
                ports.push(ContainerPort {
                    name: json::opt_str(port_object, "name", &path)?.map(str::to_string),
                    port: json::opt_port(port_object, "containerPort", &path)?.ok_or_else(
                        || ModelError::Missing {
                            path: path.field("containerPort"),
                        },
                    )?,
                    protocol: Protocol::from_field(port_object, &path)?,
                });
            }
        }
        Ok(Pod {
            namespace,
            name,
            labels,
            node_name,
            ips: if own_addresses(object, spec)? {
                pod_ips(object)?
            } else {
                Vec::new()
            },
            ports,
        })
    }
}

/// Whether the pod's IPs are its own and current: not `spec.hostNetwork`, and
/// `status.phase` not `Succeeded` or `Failed`.
fn own_addresses(
    object: &Map<String, Value>,
    spec: &Map<String, Value>,
) -> Result<bool, ModelError> {
    let root = FieldPath::default();
    let host_network = match json::field(spec, "hostNetwork") {
        None => false,
        Some(value) => value.as_bool().ok_or_else(|| ModelError::WrongType {
            path: root.field("spec").field("hostNetwork"),
            expected: "a boolean",
            found: value.to_string(),
        })?,
    };
    let phase = match json::opt_object(object, "status", &root)? {
        Some(status) => json::opt_str(status, "phase", &root.field("status"))?,
        None => None,
    };
    Ok(!host_network && !matches!(phase, Some("Succeeded" | "Failed")))
}

/// `status.podIPs[].ip`, or `status.podIP` from a server that predates dual stack.
fn pod_ips(object: &Map<String, Value>) -> Result<Vec<IpAddr>, ModelError> {
    let path = FieldPath::default().field("status");
    let Some(status) = json::opt_object(object, "status", &FieldPath::default())? else {
        return Ok(Vec::new());
    };
    let parse = |text: &str, path: FieldPath| {
        text.parse::<IpAddr>().map_err(|_| ModelError::BadValue {
            path,
            value: Value::from(text).to_string(),
            what: "an IP address",
        })
    };
    if let Some(list) = json::opt_list(status, "podIPs", &path)? {
        return list
            .into_iter()
            .map(|(item, path)| {
                let item = json::object(item, &path)?;
                parse(json::req_str(item, "ip", &path)?, path.field("ip"))
            })
            .collect();
    }
    json::opt_str(status, "podIP", &path)?
        .into_iter()
        .map(|ip| parse(ip, path.field("podIP")))
        .collect()
}
