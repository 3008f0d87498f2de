//! Parsing a NetworkPolicy: `spec` with its rules, peers and ports.

use ipnet::IpNet;
use serde_json::{Map, Value};

use super::{IpBlock, Object, Peer, Policy, PolicyPort, PortRef, Protocol, Rule};
use crate::error::{FieldPath, ModelError};
use crate::json;
use crate::selector::LabelSelector;

impl Policy {
    pub fn from_json(value: &Value) -> Result<Policy, ModelError> {
        let root = FieldPath::default();
        let read = Object::read(value, true)?;
        let (object, namespace, name) = (read.body, read.namespace, read.name);
        let path = root.field("spec");
        let spec = json::opt_object(object, "spec", &root)?
            .ok_or_else(|| ModelError::Missing { path: path.clone() })?;
        // Absent podSelector is Go's zero value, the empty selector: every pod.
        let pod_selector = match json::field(spec, "podSelector") {
            Some(value) => LabelSelector::from_json(value, &path.field("podSelector"))?,
            None => LabelSelector::default(),
        };
        let ingress = rules(spec, "ingress", "from", &path)?;
        let egress = rules(spec, "egress", "to", &path)?;
        let types = json::str_list(spec, "policyTypes", &path)?;
        let (isolates_ingress, isolates_egress) = if types.is_empty() {
            // The API server's defaulting: Ingress always, Egress when rules are given.
            (true, !egress.is_empty())
        } else {
            let mut both = (false, false);
            for (i, kind) in types.iter().enumerate() {
                match kind.as_str() {
                    "Ingress" => both.0 = true,
                    "Egress" => both.1 = true,
                    other => {
                        return Err(ModelError::BadValue {
                            path: path.field("policyTypes").index(i),
                            value: Value::from(other).to_string(),
                            what: "one of Ingress, Egress",
                        })
                    }
                }
            }
            both
        };
        Ok(Policy {
            namespace,
            name,
            pod_selector,
            isolates_ingress,
            isolates_egress,
            ingress,
            egress,
        })
    }
}

impl Policy {
    /// The stand-in for a policy [`Policy::from_json`] rejects, so that a typo fails
    /// closed: it selects what `spec.podSelector` selects and isolates the directions
    /// the policy declares (`policyTypes`, or the API's defaults: Ingress always, Egress
    /// when `egress` is given), allowing nothing; other policies still add their allows.
    /// An unreadable `podSelector` (or `spec`) selects every pod of the namespace, and
    /// unreadable `policyTypes` isolate both ways. `None` without `metadata.namespace`:
    /// nothing can be chosen to isolate.
    pub fn isolating_only(value: &Value) -> Option<Policy> {
        let meta = |key: &str| {
            value
                .pointer(&format!("/metadata/{key}"))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let namespace = meta("namespace").filter(|ns| !ns.is_empty())?;
        let every_pod_both_ways = Policy {
            namespace,
            name: meta("name").unwrap_or_default(),
            pod_selector: LabelSelector::default(),
            isolates_ingress: true,
            isolates_egress: true,
            ingress: Vec::new(),
            egress: Vec::new(),
        };
        let path = FieldPath::default().field("spec");
        let Some(spec) = value.get("spec").and_then(Value::as_object) else {
            return Some(every_pod_both_ways);
        };
        let pod_selector = match json::field(spec, "podSelector") {
            None => LabelSelector::default(),
            Some(value) => match LabelSelector::from_json(value, &path.field("podSelector")) {
                Ok(selector) => selector,
                Err(_) => return Some(every_pod_both_ways),
            },
        };
        let (isolates_ingress, isolates_egress) = match json::str_list(spec, "policyTypes", &path) {
            Err(_) => (true, true),
            // Present in any form but an empty list: the policy meant egress rules.
            Ok(types) if types.is_empty() => (
                true,
                json::field(spec, "egress")
                    .is_some_and(|egress| egress.as_array().is_none_or(|list| !list.is_empty())),
            ),
            Ok(types) if types.iter().all(|t| t == "Ingress" || t == "Egress") => (
                types.iter().any(|t| t == "Ingress"),
                types.iter().any(|t| t == "Egress"),
            ),
            Ok(_) => (true, true),
        };
        Some(Policy {
            pod_selector,
            isolates_ingress,
            isolates_egress,
            ..every_pod_both_ways
        })
    }
}

fn rules(
    spec: &Map<String, Value>,
    name: &str,
    peers_name: &str,
    path: &FieldPath,
) -> Result<Vec<Rule>, ModelError> {
    json::list(spec, name, path)?
        .into_iter()
        .map(|(rule, path)| {
            let rule = json::object(rule, &path)?;
            let peers = json::list(rule, peers_name, &path)?
                .into_iter()
                .map(|(peer, path)| peer_from_json(peer, &path))
                .collect::<Result<_, _>>()?;
            let ports = json::list(rule, "ports", &path)?
                .into_iter()
                .map(|(port, path)| port_from_json(port, &path))
                .collect::<Result<_, _>>()?;
            Ok(Rule { peers, ports })
        })
        .collect()
}

fn peer_from_json(value: &Value, path: &FieldPath) -> Result<Peer, ModelError> {
    let object = json::object(value, path)?;
    let selector = |name: &str| {
        json::field(object, name)
            .map(|value| LabelSelector::from_json(value, &path.field(name)))
            .transpose()
    };
    let pod_selector = selector("podSelector")?;
    let namespace_selector = selector("namespaceSelector")?;
    let Some(block) = json::opt_object(object, "ipBlock", path)? else {
        if pod_selector.is_none() && namespace_selector.is_none() {
            return Err(ModelError::Invalid {
                path: path.clone(),
                reason: "must set podSelector, namespaceSelector or ipBlock".into(),
            });
        }
        return Ok(Peer::Pods {
            pod_selector,
            namespace_selector,
        });
    };
    if pod_selector.is_some() || namespace_selector.is_some() {
        return Err(ModelError::Invalid {
            path: path.field("ipBlock"),
            reason: "cannot be combined with podSelector or namespaceSelector".into(),
        });
    }
    let block_path = path.field("ipBlock");
    let cidr_path = block_path.field("cidr");
    let cidr = cidr(json::req_str(block, "cidr", &block_path)?, &cidr_path)?;
    let mut except = Vec::new();
    for (item, path) in json::list(block, "except", &block_path)? {
        let text = item.as_str().ok_or_else(|| ModelError::WrongType {
            path: path.clone(),
            expected: "a string",
            found: item.to_string(),
        })?;
        let net = self::cidr(text, &path)?;
        if !cidr.contains(&net) || net == cidr {
            return Err(ModelError::Invalid {
                path,
                reason: format!("{net} is not strictly inside {cidr}"),
            });
        }
        except.push(net);
    }
    Ok(Peer::IpBlock(IpBlock { cidr, except }))
}

/// A CIDR; host bits are cleared (`10.0.0.5/24` is `10.0.0.0/24`).
fn cidr(text: &str, path: &FieldPath) -> Result<IpNet, ModelError> {
    text.parse::<IpNet>()
        .map(|net| net.trunc())
        .map_err(|_| ModelError::BadValue {
            path: path.clone(),
            value: Value::from(text).to_string(),
            what: "a CIDR",
        })
}

fn port_from_json(value: &Value, path: &FieldPath) -> Result<PolicyPort, ModelError> {
    let object = json::object(value, path)?;
    let protocol = Protocol::from_field(object, path)?;
    let port = match json::field(object, "port") {
        None => None,
        Some(Value::String(name)) if !name.is_empty() => Some(PortRef::Named(name.clone())),
        Some(number) => Some(PortRef::Number(json::port_number(
            number,
            &path.field("port"),
        )?)),
    };
    let end_port = json::opt_port(object, "endPort", path)?;
    if let Some(end) = end_port {
        let invalid = |reason: String| ModelError::Invalid {
            path: path.field("endPort"),
            reason,
        };
        match &port {
            Some(PortRef::Number(start)) if *start <= end => {}
            Some(PortRef::Number(start)) => Err(invalid(format!("{end} is below port {start}")))?,
            _ => Err(invalid("needs a numeric port".into()))?,
        }
    }
    Ok(PolicyPort {
        protocol,
        port,
        end_port,
    })
}
