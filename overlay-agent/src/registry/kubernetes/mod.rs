//! The `kubernetes` registry: Node objects are the records. A node's subnets are its
//! `spec.podCIDRs`, assigned by kube-controller-manager (`--allocate-node-cidrs`); the
//! agent adds its tunnel endpoint as annotations on its own Node and watches every Node.
//!
//! What this registry calls: `nodes` get, list, watch; `nodes/status` patch. The
//! ClusterRole also grants get, list, watch on `pods`, `namespaces` and
//! `networking.k8s.io` `networkpolicies`, for the NetworkPolicy source (`crate::policy`),
//! which shares this registry's client; nothing more. Annotations are written through the status subresource (the
//! API server keeps metadata changes there and drops only spec changes), so the agent
//! cannot change any Node's spec or labels.
//!
//! This module is the I/O against the API server; the mapping between Nodes and
//! records is pure, in `node_view`.

mod node_view;
#[cfg(test)]
mod proptests;
mod slim_node;

pub use node_view::{
    announcement_patch, node_subnets, node_view, NodeView, BACKEND, PUBLIC_IP, PUBLIC_IP_OVERWRITE,
    VTEP_MAC,
};

use node_view::{
    announced, leave_patch, network_available, network_condition, snapshot_of, NETWORK_UNAVAILABLE,
};
pub use slim_node::SlimNode;

use super::{Announcement, Registry, RegistryError, Snapshot};
use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;
use tokio::sync::watch;
use twill_conf::cluster::PodNetwork;

/// Nodes per page of the initial list: a page is parsed whole before its objects are
/// slimmed, so this bounds the list's transient memory (100 kubelet Nodes ≈ 1.7 MB of
/// JSON) at 50 requests for 5,000 Nodes.
const LIST_PAGE: u32 = 100;

/// Says once that the Node watch is back, with how long it was gone.
fn back(lost: &mut Option<Instant>) {
    if let Some(since) = lost.take() {
        let outage_s = format!("{:.1}", since.elapsed().as_secs_f64());
        tracing::info!(%outage_s, "the Node watch is back");
    }
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
        let (client, server) = crate::kube_client::connect(kubeconfig)
            .await
            .map_err(|e| RegistryError::Invalid(e.to_string()))?;
        Ok(KubeRegistry {
            nodes: Api::all(client),
            node: node.to_string(),
            networks,
            joined: Mutex::new(None),
            ready: AtomicBool::new(false),
            server,
        })
    }

    /// Every Node, read as the overlay's slice of it.
    fn slim_nodes(&self) -> Api<SlimNode> {
        Api::all(self.nodes.clone().into_client())
    }

    /// The client, to share with the NetworkPolicy source.
    pub fn client(&self) -> kube::Client {
        self.nodes.clone().into_client()
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
        let patch = json!({"status": {"conditions": [network_condition(true, now)]}});
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
        let full = self.own_node().await?;
        let node = SlimNode::from(&full);
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
        if self.ready.load(Ordering::Relaxed) && !network_available(&full) {
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
        let mut events = watcher::watcher(self.slim_nodes(), cfg)
            .backoff(crate::kube_client::watch_backoff())
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

    /// Watches every Node, as [`SlimNode`]s. A lost connection keeps the last snapshot
    /// in place (the data path stays as it is); the watcher resumes from the last
    /// resource version, or re-lists when the server no longer has it, and Nodes
    /// deleted meanwhile disappear then. A re-list updates the one map of views in
    /// place and drops what it did not see: no second copy of the peer set.
    async fn watch(&self, tx: watch::Sender<Snapshot>) -> Result<(), RegistryError> {
        let cfg = watcher::Config::default().page_size(LIST_PAGE);
        let mut events = watcher::watcher(self.slim_nodes(), cfg)
            .backoff(crate::kube_client::watch_backoff())
            .boxed();
        let mut views: BTreeMap<String, NodeView> = BTreeMap::new();
        // During a (re-)list: the names seen so far, and whether any view changed.
        let mut listing: Option<(BTreeSet<String>, bool)> = None;
        let mut complete = false;
        // Since when the watch has been failing: one warning when lost, one info when back.
        let mut lost: Option<Instant> = None;
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
                    if lost.is_none() {
                        tracing::warn!(error = %e, "lost the Node watch; the data path stays as it is while it reconnects");
                        lost = Some(Instant::now());
                    }
                    continue;
                }
                Ok(Event::Init) => {
                    listing = Some((BTreeSet::new(), false));
                    false
                }
                Ok(Event::InitApply(n)) => {
                    if let (Some((seen, changed)), Some(name)) =
                        (listing.as_mut(), n.metadata.name.clone())
                    {
                        let v = node_view(&n, &self.networks);
                        *changed |= views.get(&name) != Some(&v);
                        seen.insert(name.clone());
                        views.insert(name, v);
                    }
                    false
                }
                Ok(Event::InitDone) => {
                    back(&mut lost);
                    let (seen, mut changed) = listing.take().unwrap_or_default();
                    let before = views.len();
                    views.retain(|name, _| seen.contains(name));
                    changed |= views.len() != before || !complete;
                    complete = true;
                    changed
                }
                Ok(Event::Apply(n)) => {
                    back(&mut lost);
                    match n.metadata.name.clone() {
                        Some(name) => {
                            let v = node_view(&n, &self.networks);
                            views.insert(name, v.clone()) != Some(v)
                        }
                        None => false,
                    }
                }
                Ok(Event::Delete(n)) => {
                    back(&mut lost);
                    n.metadata
                        .name
                        .as_ref()
                        .is_some_and(|name| views.remove(name).is_some())
                }
            };
            if changed && complete && tx.send(snapshot_of(&views)).is_err() {
                return Ok(());
            }
        }
    }

    async fn ready(&self) -> Result<(), RegistryError> {
        self.set_network_available().await?;
        self.ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Removes the annotations (`twill-agent uninstall`; the user's override stays) and
    /// sets `NetworkUnavailable=True` (`TwillIsDown`).
    async fn leave(&self, node: &str) -> Result<(), RegistryError> {
        let patch = leave_patch(Time(k8s_openapi::jiff::Timestamp::now()));
        match self
            .nodes
            .patch_status(node, &PatchParams::default(), &Patch::Strategic(patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(unavailable(format!(
                "removing annotations of Node {node} and marking its network down: {e}"
            ))),
        }
    }
}
