//! `TwillNode` (`twill.io/v1`, cluster-scoped, named after its Node): one node's record
//! as its own agent publishes it, for `registry.records: twillnodes`. It holds what a
//! peer needs (podCIDRs, tunnel endpoint, VTEP MAC, backend) in a few hundred bytes and
//! changes only when the record does, so a start lists 5,000 of them quickly and a
//! kubelet's heartbeat or image list reaches no agent. Its owner reference is the Node,
//! so the garbage collector deletes it with the Node.
//!
//! The CRD's schema makes the API server reject wrong types; the values (CIDRs,
//! addresses, MAC) are checked here, and a bad one rejects that TwillNode only.

use super::node_view::{parse_subnets, NodeView};
use super::slim_node::slim_meta;
use crate::record::{Mac, VtepRecord};
use crate::registry::{Announcement, Malformed};
use ipnet::IpNet;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_json::json;
use std::borrow::Cow;
use std::net::IpAddr;
use twill_conf::cluster::PodNetwork;

pub const GROUP: &str = "twill.io";
pub const VERSION: &str = "v1";
pub const KIND: &str = "TwillNode";
pub const PLURAL: &str = "twillnodes";
/// The field manager of the agent's server-side apply.
pub const FIELD_MANAGER: &str = "twill-agent";

#[derive(Clone, Debug, Default, Deserialize)]
pub struct TwillNode {
    #[serde(deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: TwillNodeSpec,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct TwillNodeSpec {
    #[serde(rename = "podCIDRs", default)]
    pub pod_cidrs: Vec<String>,
    #[serde(rename = "publicIP", default)]
    pub public_ip: String,
    #[serde(rename = "vtepMAC", default)]
    pub vtep_mac: String,
    #[serde(default)]
    pub backend: String,
}

impl kube::Resource for TwillNode {
    type DynamicType = ();
    type Scope = kube::core::ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        PLURAL.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// What this node publishes: its podCIDRs (as kube-controller-manager assigned them on
/// the Node), the endpoint peers send to (the operator's override when the Node has
/// one), and its VTEP MAC.
pub fn published_spec(me: &Announcement, subnets: &[IpNet], endpoint: IpAddr) -> TwillNodeSpec {
    TwillNodeSpec {
        pod_cidrs: subnets.iter().map(|s| s.to_string()).collect(),
        public_ip: endpoint.to_string(),
        vtep_mac: me.vtep_mac.to_string(),
        backend: "vxlan".into(),
    }
}

/// The object the agent applies for its own node, owned by its Node (`node_uid`).
pub fn manifest(node: &str, node_uid: &str, spec: &TwillNodeSpec) -> serde_json::Value {
    json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": KIND,
        "metadata": {
            "name": node,
            "ownerReferences": [{
                "apiVersion": "v1",
                "kind": "Node",
                "name": node,
                "uid": node_uid,
            }],
        },
        "spec": {
            "podCIDRs": spec.pod_cidrs,
            "publicIP": spec.public_ip,
            "vtepMAC": spec.vtep_mac,
            "backend": spec.backend,
        },
    })
}

/// Maps one TwillNode to a record; a bad value rejects the whole object, naming the
/// field.
pub fn twill_node_view(tn: &TwillNode, networks: &[PodNetwork]) -> NodeView {
    let name = tn.metadata.name.clone().unwrap_or_default();
    let malformed = |reason: String| {
        NodeView::Malformed(Malformed {
            source: format!("{KIND} {name}"),
            reason,
        })
    };
    let s = &tn.spec;
    let subnets = match parse_subnets("spec.podCIDRs", s.pod_cidrs.iter(), networks) {
        Ok(v) => v,
        Err(e) => return malformed(e),
    };
    if subnets.is_empty() {
        return NodeView::Absent("no spec.podCIDRs of a configured family".into());
    }
    let vtep_mac: Mac = match s.vtep_mac.trim().parse() {
        Ok(m) => m,
        Err(e) => return malformed(format!("spec.vtepMAC: {e}")),
    };
    let public_ip: IpAddr = match s.public_ip.trim().parse() {
        Ok(ip) => ip,
        Err(_) => {
            return malformed(format!(
                "spec.publicIP: {:?} is not an IP address",
                s.public_ip
            ))
        }
    };
    let backend = match s.backend.trim() {
        "" => "vxlan".to_string(),
        b => b.to_string(),
    };
    NodeView::Peer(VtepRecord {
        node: name,
        subnets,
        public_ip,
        vtep_mac,
        backend,
    })
}

/// Tells a TwillNode deleted because its CRD is being deleted (`kubectl delete -f
/// twill.yaml`: the API server deletes every TwillNode before the CRD, while the agents
/// still run) from one whose node left. Acting on the first would remove every peer's
/// routes on every node, and a reinstall would find the pod network down; so while the
/// CRD is terminating or gone, deletions are ignored and the data path stays, as it does
/// for an unreachable API server.
pub struct DeletionGuard {
    crds: kube::Api<CustomResourceDefinition>,
}

impl DeletionGuard {
    pub fn new(client: kube::Client) -> Self {
        DeletionGuard {
            crds: kube::Api::all(client),
        }
    }

    /// Why a TwillNode deletion must not remove its peer now; `None` to go ahead (also
    /// when the CRD cannot be read: without `get` on it, as before this check).
    pub async fn reason_to_keep(&self) -> Option<String> {
        let name = format!("{PLURAL}.{GROUP}");
        match self.crds.get_metadata_opt(&name).await {
            Ok(None) => Some(format!("the CustomResourceDefinition {name} was deleted")),
            Ok(Some(crd)) if crd.metadata.deletion_timestamp.is_some() => Some(format!(
                "the CustomResourceDefinition {name} is being deleted"
            )),
            Ok(Some(_)) => None,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the CustomResourceDefinition {name}");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::fixtures::{dual_stack, v4};

    fn tn(spec: serde_json::Value) -> TwillNode {
        serde_json::from_value(json!({
            "apiVersion": "twill.io/v1", "kind": "TwillNode",
            "metadata": {"name": "n1", "resourceVersion": "7",
                         "managedFields": [{"manager": "twill-agent"}]},
            "spec": spec,
        }))
        .expect("a TwillNode")
    }

    #[test]
    fn a_published_spec_reads_back_as_the_same_record() {
        let me = Announcement {
            node: "n1".into(),
            public_ip: "192.168.1.5".parse().unwrap(),
            vtep_mac: "0e:00:00:00:00:01".parse().unwrap(),
        };
        let subnets: Vec<IpNet> = vec!["10.244.3.0/24".parse().unwrap()];
        let spec = published_spec(&me, &subnets, me.public_ip);
        let doc = manifest("n1", "uid-1", &spec);
        assert_eq!(doc["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        let read = tn(doc["spec"].clone());
        assert_eq!(read.spec, spec);
        assert!(
            read.metadata.managed_fields.is_none(),
            "dropped while parsing"
        );
        assert_eq!(
            twill_node_view(&read, &v4()),
            NodeView::Peer(me.record(subnets))
        );
    }

    #[test]
    fn a_bad_value_rejects_the_object_and_names_the_field() {
        let good = json!({"podCIDRs": ["10.244.3.0/24"], "publicIP": "192.168.1.5",
                          "vtepMAC": "0e:00:00:00:00:01", "backend": "vxlan"});
        for (field, bad) in [
            ("podCIDRs", json!(["10.244.3.1/24"])),
            ("podCIDRs", json!(["banana"])),
            ("publicIP", json!("192.168.1")),
            ("vtepMAC", json!("0e:00")),
        ] {
            let mut spec = good.clone();
            spec[field] = bad;
            match twill_node_view(&tn(spec), &v4()) {
                NodeView::Malformed(m) => {
                    assert_eq!(m.source, "TwillNode n1");
                    assert!(m.reason.starts_with(&format!("spec.{field}")), "{m:?}");
                }
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn subnets_of_an_unconfigured_family_are_left_out() {
        let spec = json!({"podCIDRs": ["fd00:1::/64"], "publicIP": "192.168.1.5",
                          "vtepMAC": "0e:00:00:00:00:01"});
        assert!(matches!(
            twill_node_view(&tn(spec.clone()), &v4()),
            NodeView::Absent(_)
        ));
        assert!(matches!(
            twill_node_view(&tn(spec), &dual_stack()),
            NodeView::Peer(_)
        ));
    }
}
