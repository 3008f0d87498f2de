//! The `kubernetes` registry: Node objects are the records. A node's subnets are its
//! `spec.podCIDRs`, assigned by kube-controller-manager (`--allocate-node-cidrs`); the
//! agent adds its tunnel endpoint as annotations on its own Node and watches every Node.
//!
//! What the agent calls, and so all its ClusterRole grants: `nodes` get, list, watch;
//! `nodes/status` patch. Annotations are written through the status subresource (the
//! API server keeps metadata changes there and drops only spec changes), so the agent
//! cannot change any Node's spec or labels.

use super::{Announcement, Malformed, Registry, RegistryError, Snapshot};
use crate::record::{Mac, VtepRecord};
use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, NodeCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use tokio::sync::watch;
use twill_conf::cluster::PodNetwork;

/// The tunnel endpoint the agent found on the node.
pub const PUBLIC_IP: &str = "twill.io/public-ip";
/// Set by the operator for a node behind NAT: peers send to this address instead.
pub const PUBLIC_IP_OVERWRITE: &str = "twill.io/public-ip-overwrite";
pub const VTEP_MAC: &str = "twill.io/vtep-mac";
pub const BACKEND: &str = "twill.io/backend-type";

const NETWORK_UNAVAILABLE: &str = "NetworkUnavailable";

/// What a Node object means to the overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeView {
    Peer(VtepRecord),
    /// Not (yet) part of the overlay: no podCIDR, or no agent has annotated it.
    Absent(String),
    Malformed(Malformed),
}

/// The subnets of `node` that belong to a configured address family. A podCIDR of a
/// family the cluster config does not carry (an IPv6 podCIDR on an IPv4-only Twill) is
/// left out; whether the rest lies inside the cluster network is the peer validation's
/// call.
pub fn node_subnets(node: &Node, networks: &[PodNetwork]) -> Result<Vec<IpNet>, String> {
    let spec = node.spec.as_ref();
    let cidrs: Vec<&String> = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
        Some(list) if !list.is_empty() => list.iter().collect(),
        _ => spec.and_then(|s| s.pod_cidr.as_ref()).into_iter().collect(),
    };
    let mut out = Vec::new();
    for c in cidrs {
        let net: IpNet = c
            .parse()
            .map_err(|_| format!("spec.podCIDRs: {c:?} is not a CIDR"))?;
        if net.trunc() != net {
            return Err(format!("spec.podCIDRs: {c:?} has host bits set"));
        }
        if networks
            .iter()
            .any(|n| n.network.addr().is_ipv4() == net.addr().is_ipv4())
        {
            out.push(net);
        }
    }
    Ok(out)
}

fn annotation<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(|s| s.trim())
}

/// Maps one Node to a record. The user's `twill.io/public-ip-overwrite` wins over the
/// address the agent published; a malformed annotation rejects the whole Node rather
/// than guessing an endpoint.
pub fn node_view(node: &Node, networks: &[PodNetwork]) -> NodeView {
    let name = node.metadata.name.clone().unwrap_or_default();
    let malformed = |reason: String| {
        NodeView::Malformed(Malformed {
            source: format!("Node {name}"),
            reason,
        })
    };
    let subnets = match node_subnets(node, networks) {
        Ok(s) => s,
        Err(e) => return malformed(e),
    };
    if subnets.is_empty() {
        return NodeView::Absent("no spec.podCIDR assigned yet".into());
    }
    let Some(mac) = annotation(node, VTEP_MAC) else {
        return NodeView::Absent(format!("no {VTEP_MAC} annotation: Twill has not run there"));
    };
    let vtep_mac: Mac = match mac.parse() {
        Ok(m) => m,
        Err(e) => return malformed(format!("annotation {VTEP_MAC}: {e}")),
    };
    let ip_key = if annotation(node, PUBLIC_IP_OVERWRITE).is_some() {
        PUBLIC_IP_OVERWRITE
    } else {
        PUBLIC_IP
    };
    let public_ip: IpAddr = match annotation(node, ip_key) {
        None => return malformed(format!("annotation {PUBLIC_IP} is missing")),
        Some(s) => match s.parse() {
            Ok(ip) => ip,
            Err(_) => return malformed(format!("annotation {ip_key}: {s:?} is not an IP address")),
        },
    };
    NodeView::Peer(VtepRecord {
        node: name,
        subnets,
        public_ip,
        vtep_mac,
        backend: annotation(node, BACKEND).unwrap_or("vxlan").to_string(),
    })
}

/// The annotations this node publishes (a JSON merge patch of its metadata).
pub fn announcement_patch(me: &Announcement) -> serde_json::Value {
    json!({"metadata": {"annotations": {
        PUBLIC_IP: me.public_ip.to_string(),
        VTEP_MAC: me.vtep_mac.to_string(),
        BACKEND: "vxlan",
    }}})
}

/// True when `node` carries exactly what `me` publishes.
fn announced(node: &Node, me: &Announcement) -> bool {
    annotation(node, PUBLIC_IP) == Some(me.public_ip.to_string().as_str())
        && annotation(node, VTEP_MAC) == Some(me.vtep_mac.to_string().as_str())
        && annotation(node, BACKEND) == Some("vxlan")
}

fn network_available(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == NETWORK_UNAVAILABLE && c.status == "False")
        })
}

fn unavailable(e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Unavailable(e.to_string())
}

/// What `join` published, so `keep_alive` can tell when it is gone.
#[derive(Debug, Clone)]
struct Joined {
    me: Announcement,
    subnets: Vec<IpNet>,
}

pub struct KubeRegistry {
    nodes: Api<Node>,
    node: String,
    networks: Vec<PodNetwork>,
    joined: Mutex<Option<Joined>>,
    /// Set once the agent was ready; a recreated Node gets the condition again.
    ready: AtomicBool,
    /// The API server, for status output.
    pub server: String,
}

impl KubeRegistry {
    /// In-cluster config when `kubeconfig` is `None` and `KUBECONFIG` is unset.
    pub async fn connect(
        kubeconfig: Option<&Path>,
        node: &str,
        networks: Vec<PodNetwork>,
    ) -> Result<Self, RegistryError> {
        let mut config = match kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                    RegistryError::Invalid(format!("kubeconfig {}: {e}", path.display()))
                })?;
                kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .map_err(|e| {
                        RegistryError::Invalid(format!("kubeconfig {}: {e}", path.display()))
                    })?
            }
            None => kube::Config::infer().await.map_err(|e| {
                RegistryError::Invalid(format!(
                    "no in-cluster service account and no kubeconfig: {e}"
                ))
            })?,
        };
        // A partitioned API server must not stall a patch for long; watches carry
        // their own server-side timeout below the read timeout.
        config.connect_timeout = Some(std::time::Duration::from_secs(5));
        let server = config.cluster_url.to_string();
        let client = kube::Client::try_from(config)
            .map_err(|e| RegistryError::Invalid(format!("Kubernetes client: {e}")))?;
        Ok(KubeRegistry {
            nodes: Api::all(client),
            node: node.to_string(),
            networks,
            joined: Mutex::new(None),
            ready: AtomicBool::new(false),
            server,
        })
    }

    async fn own_node(&self) -> Result<Node, RegistryError> {
        match self.nodes.get_opt(&self.node).await {
            Ok(Some(n)) => Ok(n),
            Ok(None) => Err(RegistryError::NotAssigned(format!(
                "Node {} does not exist in the API server (is --node-name the Node's name?)",
                self.node
            ))),
            Err(e) => Err(unavailable(format!("getting Node {}: {e}", self.node))),
        }
    }

    async fn set_network_available(&self) -> Result<(), RegistryError> {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let cond = NodeCondition {
            type_: NETWORK_UNAVAILABLE.into(),
            status: "False".into(),
            reason: Some("TwillIsUp".into()),
            message: Some("Twill programmed this node's pod network".into()),
            last_transition_time: Some(now.clone()),
            last_heartbeat_time: Some(now),
        };
        let patch = json!({"status": {"conditions": [cond]}});
        self.nodes
            .patch_status(
                &self.node,
                &PatchParams::default(),
                &Patch::Strategic(patch),
            )
            .await
            .map_err(|e| unavailable(format!("setting {NETWORK_UNAVAILABLE}=False: {e}")))?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Registry for KubeRegistry {
    async fn join(&self, me: &Announcement) -> Result<Vec<IpNet>, RegistryError> {
        let node = self.own_node().await?;
        let subnets = node_subnets(&node, &self.networks)
            .map_err(|e| RegistryError::Invalid(format!("Node {}: {e}", self.node)))?;
        if subnets.is_empty() {
            return Err(RegistryError::NotAssigned(format!(
                "Node {} has no spec.podCIDR yet; kube-controller-manager assigns it when run \
                 with --allocate-node-cidrs and a --cluster-cidr matching net-conf.json",
                self.node
            )));
        }
        for s in &subnets {
            if !self.networks.iter().any(|n| n.network.contains(s)) {
                return Err(RegistryError::Invalid(format!(
                    "Node {}: podCIDR {s} lies outside the cluster network in net-conf.json \
                     ({}); kube-controller-manager's --cluster-cidr must match",
                    self.node,
                    self.networks
                        .iter()
                        .map(|n| n.network.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        if !announced(&node, me) {
            self.nodes
                .patch_status(
                    &self.node,
                    &PatchParams::default(),
                    &Patch::Merge(announcement_patch(me)),
                )
                .await
                .map_err(|e| unavailable(format!("annotating Node {}: {e}", self.node)))?;
        }
        if self.ready.load(Ordering::Relaxed) && !network_available(&node) {
            self.set_network_available().await?;
        }
        if let Ok(mut j) = self.joined.lock() {
            *j = Some(Joined {
                me: me.clone(),
                subnets: subnets.clone(),
            });
        }
        Ok(subnets)
    }

    /// Watches this node's own Node and returns when what `join` published is gone: the
    /// annotations were removed or changed, the podCIDR changed, or the Node was deleted
    /// (a kubelet re-registering it). The agent then joins again.
    async fn keep_alive(&self) -> Result<(), RegistryError> {
        let joined = self.joined.lock().ok().and_then(|j| j.clone());
        let Some(joined) = joined else {
            return Ok(());
        };
        let cfg = watcher::Config::default().fields(&format!("metadata.name={}", self.node));
        let mut events = watcher::watcher(self.nodes.clone(), cfg)
            .default_backoff()
            .boxed();
        let mut seen = false;
        while let Some(ev) = events.next().await {
            match ev {
                Ok(Event::Apply(n) | Event::InitApply(n)) => {
                    seen = true;
                    let same = announced(&n, &joined.me)
                        && node_subnets(&n, &self.networks).ok().as_ref() == Some(&joined.subnets);
                    if !same {
                        tracing::warn!(node = %self.node, "this Node's podCIDR or Twill annotations changed");
                        return Ok(());
                    }
                }
                Ok(Event::Delete(_)) => {
                    tracing::warn!(node = %self.node, "this Node was deleted from the API server");
                    return Ok(());
                }
                Ok(Event::Init) => seen = false,
                Ok(Event::InitDone) if !seen => {
                    tracing::warn!(node = %self.node, "this Node is not in the API server");
                    return Ok(());
                }
                Ok(Event::InitDone) => {}
                Err(e) => tracing::debug!(error = %e, "own Node watch interrupted; retrying"),
            }
        }
        Err(unavailable("the own-Node watch ended"))
    }

    /// Watches every Node. A lost connection keeps the last snapshot in place (the data
    /// path stays as it is); the watcher re-lists when it is back, so Nodes deleted
    /// meanwhile disappear then.
    async fn watch(&self, tx: watch::Sender<Snapshot>) -> Result<(), RegistryError> {
        let mut events = watcher::watcher(self.nodes.clone(), watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut views: BTreeMap<String, NodeView> = BTreeMap::new();
        let mut listing: Option<BTreeMap<String, NodeView>> = None;
        let mut complete = false;
        let mut failing = false;
        loop {
            let ev = tokio::select! {
                ev = events.next() => ev,
                _ = tx.closed() => return Ok(()),
            };
            let Some(ev) = ev else {
                return Err(unavailable("the Node watch ended"));
            };
            let changed = match ev {
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "lost the Node watch; the data path stays as it is while it reconnects");
                    }
                    failing = true;
                    continue;
                }
                Ok(Event::Init) => {
                    listing = Some(BTreeMap::new());
                    false
                }
                Ok(Event::InitApply(n)) => {
                    if let (Some(l), Some(name)) = (listing.as_mut(), n.metadata.name.clone()) {
                        l.insert(name, node_view(&n, &self.networks));
                    }
                    false
                }
                Ok(Event::InitDone) => {
                    if failing {
                        tracing::info!("the Node watch is back");
                        failing = false;
                    }
                    let listed = listing.take().unwrap_or_default();
                    let changed = !complete || listed != views;
                    views = listed;
                    complete = true;
                    changed
                }
                Ok(Event::Apply(n)) => {
                    failing = false;
                    match n.metadata.name.clone() {
                        Some(name) => {
                            let v = node_view(&n, &self.networks);
                            views.insert(name, v.clone()) != Some(v)
                        }
                        None => false,
                    }
                }
                Ok(Event::Delete(n)) => {
                    failing = false;
                    n.metadata
                        .name
                        .as_ref()
                        .is_some_and(|name| views.remove(name).is_some())
                }
            };
            if changed && complete {
                let mut snap = Snapshot {
                    complete: true,
                    ..Snapshot::default()
                };
                for v in views.values() {
                    match v {
                        NodeView::Peer(r) => snap.records.push(r.clone()),
                        NodeView::Malformed(m) => snap.malformed.push(m.clone()),
                        NodeView::Absent(_) => {}
                    }
                }
                if tx.send(snap).is_err() {
                    return Ok(());
                }
            }
        }
    }

    async fn ready(&self) -> Result<(), RegistryError> {
        self.set_network_available().await?;
        self.ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Removes the annotations (`twill-agent uninstall`); the user's override stays.
    async fn leave(&self, node: &str) -> Result<(), RegistryError> {
        let patch = json!({"metadata": {"annotations": {
            PUBLIC_IP: null, VTEP_MAC: null, BACKEND: null,
        }}});
        match self
            .nodes
            .patch_status(node, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(unavailable(format!(
                "removing annotations of Node {node}: {e}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets() -> Vec<PodNetwork> {
        vec![PodNetwork {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet_len: 24,
        }]
    }

    fn dual() -> Vec<PodNetwork> {
        let mut n = nets();
        n.push(PodNetwork {
            network: "fd00:10:244::/56".parse().unwrap(),
            subnet_len: 64,
        });
        n
    }

    fn node(doc: &str) -> Node {
        serde_json::from_str(doc).expect("test document is a Node")
    }

    fn with_annotations(doc: &str, ann: &[(&str, &str)]) -> Node {
        let mut n = node(doc);
        let a = n.metadata.annotations.get_or_insert_with(Default::default);
        for (k, v) in ann {
            a.insert(k.to_string(), v.to_string());
        }
        n
    }

    // Documents from a v1.20.2 API server (`kubectl get node -o json`); the dual-stack
    // one has an IPv6 podCIDR added by hand (the test server runs single-stack).
    const JOINED: &str = include_str!("testdata/node-joined.json");
    const NO_CIDR: &str = include_str!("testdata/node-no-podcidr.json");
    const DUAL: &str = include_str!("testdata/node-dual-stack.json");

    #[test]
    fn annotated_node_with_pod_cidr_is_a_peer() {
        let NodeView::Peer(r) = node_view(&node(JOINED), &nets()) else {
            panic!("expected a peer");
        };
        assert_eq!(r.node, "twk-n1");
        assert_eq!(r.subnets, vec!["10.244.0.0/24".parse::<IpNet>().unwrap()]);
        assert_eq!(r.public_ip.to_string(), "192.168.1.2");
        assert_eq!(r.vtep_mac.to_string(), "ba:81:31:7e:0c:42");
        assert_eq!(r.backend, "vxlan");
    }

    #[test]
    fn node_without_pod_cidr_or_annotations_is_absent_not_malformed() {
        assert!(matches!(
            node_view(&node(NO_CIDR), &nets()),
            NodeView::Absent(_)
        ));
        let mut n = node(JOINED);
        n.metadata.annotations = None;
        let NodeView::Absent(why) = node_view(&n, &nets()) else {
            panic!("expected absent");
        };
        assert!(why.contains(VTEP_MAC), "{why}");
    }

    #[test]
    fn dual_pod_cidrs_map_to_one_subnet_per_configured_family() {
        let n = node(DUAL);
        let NodeView::Peer(r) = node_view(&n, &dual()) else {
            panic!("expected a peer");
        };
        assert_eq!(
            r.subnets,
            vec![
                "10.244.2.0/24".parse::<IpNet>().unwrap(),
                "fd00:10:244:3::/64".parse().unwrap()
            ]
        );
        // An IPv4-only Twill ignores the IPv6 podCIDR instead of rejecting the node.
        let NodeView::Peer(r) = node_view(&n, &nets()) else {
            panic!("expected a peer");
        };
        assert_eq!(r.subnets, vec!["10.244.2.0/24".parse::<IpNet>().unwrap()]);
    }

    #[test]
    fn pod_cidr_alone_is_used_when_pod_cidrs_is_missing() {
        let mut n = node(JOINED);
        if let Some(s) = n.spec.as_mut() {
            s.pod_cidrs = None;
        }
        let NodeView::Peer(r) = node_view(&n, &nets()) else {
            panic!("expected a peer");
        };
        assert_eq!(r.subnets, vec!["10.244.0.0/24".parse::<IpNet>().unwrap()]);
    }

    #[test]
    fn override_wins_over_the_published_public_ip() {
        let n = with_annotations(JOINED, &[(PUBLIC_IP_OVERWRITE, "203.0.113.7")]);
        let NodeView::Peer(r) = node_view(&n, &nets()) else {
            panic!("expected a peer");
        };
        assert_eq!(r.public_ip.to_string(), "203.0.113.7");
    }

    #[test]
    fn malformed_annotations_reject_the_node_and_name_the_annotation() {
        for (key, value) in [
            (VTEP_MAC, "not-a-mac"),
            (VTEP_MAC, "ba:81:31:7e:0c"),
            (PUBLIC_IP, "192.168.1"),
            (PUBLIC_IP_OVERWRITE, "nat.example.com"),
        ] {
            let n = with_annotations(JOINED, &[(key, value)]);
            let NodeView::Malformed(m) = node_view(&n, &nets()) else {
                panic!("{key}={value} must be rejected");
            };
            assert_eq!(m.source, "Node twk-n1");
            assert!(m.reason.contains(key), "{key}: {}", m.reason);
        }
        let mut n = node(JOINED);
        if let Some(a) = n.metadata.annotations.as_mut() {
            a.remove(PUBLIC_IP);
        }
        let NodeView::Malformed(m) = node_view(&n, &nets()) else {
            panic!("a MAC without an address must be rejected");
        };
        assert!(m.reason.contains(PUBLIC_IP), "{}", m.reason);
    }

    #[test]
    fn malformed_pod_cidr_is_rejected_with_the_field() {
        let mut n = node(JOINED);
        if let Some(s) = n.spec.as_mut() {
            s.pod_cidrs = Some(vec!["10.244.1.7/24".into()]);
        }
        let NodeView::Malformed(m) = node_view(&n, &nets()) else {
            panic!("expected malformed");
        };
        assert!(m.reason.contains("spec.podCIDRs"), "{}", m.reason);
        if let Some(s) = n.spec.as_mut() {
            s.pod_cidrs = Some(vec!["banana".into()]);
        }
        assert!(matches!(node_view(&n, &nets()), NodeView::Malformed(_)));
    }

    #[test]
    fn announcement_round_trips_through_the_mapping() {
        let me = Announcement {
            node: "twk-n3".into(),
            public_ip: "192.168.1.9".parse().unwrap(),
            vtep_mac: Mac::for_node("twk-n3", 1),
        };
        let mut n = node(NO_CIDR);
        if let Some(s) = n.spec.as_mut() {
            s.pod_cidr = Some("10.244.9.0/24".into());
        }
        let patch = announcement_patch(&me);
        let anns = patch["metadata"]["annotations"].as_object().unwrap();
        let a = n.metadata.annotations.get_or_insert_with(Default::default);
        for (k, v) in anns {
            a.insert(k.clone(), v.as_str().unwrap().to_string());
        }
        assert!(announced(&n, &me));
        assert_eq!(
            node_view(&n, &nets()),
            NodeView::Peer(me.record(vec!["10.244.9.0/24".parse().unwrap()]))
        );
    }
}
