//! The `kubernetes` registry: Node objects are the records. A node's subnets are its
//! `spec.podCIDRs`, assigned by kube-controller-manager (`--allocate-node-cidrs`); the
//! agent adds its tunnel endpoint as annotations on its own Node and watches every Node.
//!
//! The agent also applies a `TwillNode` for its own node when the CRD is installed; with
//! `records: twillnodes` it watches TwillNodes instead of every Node (see `twill_node`).
//!
//! What this registry calls: `nodes` get, list, watch; `nodes/status` patch;
//! `twillnodes` get, list, watch, patch, delete. The
//! ClusterRole also grants get, list, watch on `pods`, `namespaces` and
//! `networking.k8s.io` `networkpolicies`, for the NetworkPolicy source (`crate::policy`),
//! which shares this registry's client; nothing more. Annotations are written through the status subresource (the
//! API server keeps metadata changes there and drops only spec changes), so the agent
//! cannot change any Node's spec or labels.
//!
//! This module is the I/O against the API server; the mapping between Nodes and
//! records is pure, in `node_view`.

mod node_view;
mod peer_watch;
#[cfg(test)]
mod proptests;
mod slim_node;
mod twill_node;

use peer_watch::{NODE_PAGE, TWILL_NODE_PAGE};

pub use node_view::{
    announcement_patch, node_subnets, node_view, NodeView, BACKEND, PUBLIC_IP, PUBLIC_IP_OVERWRITE,
    VTEP_MAC,
};

use node_view::{
    annotation, announced, leave_patch, network_available, network_condition, NETWORK_UNAVAILABLE,
};
pub use slim_node::SlimNode;
use twill_node::{manifest, published_spec, twill_node_view};
pub use twill_node::{TwillNode, TwillNodeSpec};

use super::{Announcement, Registry, RegistryError, Snapshot};
use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Resource;
use serde::de::DeserializeOwned;
use serde_json::json;
use std::fmt::Debug;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use tokio::sync::watch;
use twill_conf::cluster::{KubeRecords, PodNetwork};

fn unavailable(e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Unavailable(e.to_string())
}

/// What `join` published, so `keep_alive` can tell when it is gone.
#[derive(Debug, Clone)]
struct Joined {
    me: Announcement,
    subnets: Vec<IpNet>,
    /// The operator's endpoint override on the Node, as it was.
    overwrite: Option<String>,
    /// The TwillNode's spec, with `records: twillnodes`.
    published: Option<TwillNodeSpec>,
}

pub struct KubeRegistry {
    nodes: Api<Node>,
    node: String,
    networks: Vec<PodNetwork>,
    records: KubeRecords,
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
        records: KubeRecords,
    ) -> Result<Self, RegistryError> {
        let (client, server) = crate::kube_client::connect(kubeconfig)
            .await
            .map_err(|e| RegistryError::Invalid(e.to_string()))?;
        Ok(KubeRegistry {
            nodes: Api::all(client),
            node: node.to_string(),
            networks,
            records,
            joined: Mutex::new(None),
            ready: AtomicBool::new(false),
            server,
        })
    }

    /// Every Node, read as the overlay's slice of it.
    fn slim_nodes(&self) -> Api<SlimNode> {
        Api::all(self.nodes.clone().into_client())
    }

    fn twill_nodes(&self) -> Api<TwillNode> {
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

    /// Applies this node's TwillNode (server-side apply: created or brought back to
    /// what this agent publishes), owned by its Node so that it goes with the Node.
    async fn apply_twill_node(
        &self,
        node: &Node,
        spec: &TwillNodeSpec,
    ) -> Result<(), RegistryError> {
        let uid = node.metadata.uid.as_deref().unwrap_or_default();
        let params = PatchParams::apply(twill_node::FIELD_MANAGER).force();
        match self
            .twill_nodes()
            .patch(
                &self.node,
                &params,
                &Patch::Apply(manifest(&self.node, uid, spec)),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Err(RegistryError::NotAssigned(format!(
                "the TwillNode resource is not served: install the CustomResourceDefinition \
                 twillnodes.twill.io from twill.yaml, or set registry.records to \"nodes\" ({})",
                s.message
            ))),
            Err(e) => Err(unavailable(format!(
                "applying TwillNode {}: {e}",
                self.node
            ))),
        }
    }
}

/// The endpoint peers send to: the operator's `twill.io/public-ip-overwrite`, else the
/// address the agent found.
fn endpoint(node: &SlimNode, me: &Announcement) -> Result<IpAddr, RegistryError> {
    match annotation(node, PUBLIC_IP_OVERWRITE) {
        None => Ok(me.public_ip),
        Some(s) => s.parse().map_err(|_| {
            RegistryError::Invalid(format!(
                "Node {}: annotation {PUBLIC_IP_OVERWRITE}: {s:?} is not an IP address",
                me.node
            ))
        }),
    }
}

/// Watches the object `name` of `api` and returns when it is gone, or when `same`
/// says it no longer holds what this agent published.
async fn watch_own<K>(
    api: Api<K>,
    name: &str,
    what: &str,
    same: impl Fn(&K) -> bool,
) -> Result<(), RegistryError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher::watcher(api, cfg)
        .backoff(crate::kube_client::watch_backoff())
        .boxed();
    let mut seen = false;
    while let Some(ev) = events.next().await {
        match ev {
            Ok(Event::Apply(n) | Event::InitApply(n)) => {
                seen = true;
                if !same(&n) {
                    tracing::warn!(node = %name, "this node's {what} changed");
                    return Ok(());
                }
            }
            Ok(Event::Delete(_)) => {
                tracing::warn!(node = %name, "this node's {what} was deleted");
                return Ok(());
            }
            Ok(Event::Init) => seen = false,
            Ok(Event::InitDone) if !seen => {
                tracing::warn!(node = %name, "this node's {what} is not in the API server");
                return Ok(());
            }
            Ok(Event::InitDone) => {}
            Err(e) => tracing::debug!(error = %e, "own {what} watch interrupted; retrying"),
        }
    }
    Err(unavailable(format!("the own-{what} watch ended")))
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
        // Published in either mode, so that every node has one before a cluster switches
        // to watching them; watched (and required) only with `records: twillnodes`.
        let spec = published_spec(me, &subnets, endpoint(&node, me)?);
        let published = match (self.records, self.apply_twill_node(&full, &spec).await) {
            (KubeRecords::TwillNodes, Err(e)) => return Err(e),
            (KubeRecords::TwillNodes, Ok(())) => Some(spec),
            (KubeRecords::Nodes, Err(e)) => {
                tracing::debug!(error = %e, "not publishing a TwillNode");
                None
            }
            (KubeRecords::Nodes, Ok(())) => None,
        };
        if self.ready.load(Ordering::Relaxed) && !network_available(&full) {
            self.set_network_available().await?;
        }
        if let Ok(mut j) = self.joined.lock() {
            *j = Some(Joined {
                me: me.clone(),
                subnets: subnets.clone(),
                overwrite: annotation(&node, PUBLIC_IP_OVERWRITE).map(str::to_string),
                published,
            });
        }
        Ok(subnets)
    }

    /// Watches this node's own Node (and TwillNode) and returns when what `join`
    /// published is gone: the annotations were removed or changed, the podCIDR or the
    /// endpoint override changed, the TwillNode was changed or deleted, or the Node was
    /// deleted (a kubelet re-registering it). The agent then joins again.
    async fn keep_alive(&self) -> Result<(), RegistryError> {
        let joined = self.joined.lock().ok().and_then(|j| j.clone());
        let Some(joined) = joined else {
            return Ok(());
        };
        let node = watch_own(self.slim_nodes(), &self.node, "Node", |n: &SlimNode| {
            announced(n, &joined.me)
                && node_subnets(n, &self.networks).ok().as_ref() == Some(&joined.subnets)
                && annotation(n, PUBLIC_IP_OVERWRITE) == joined.overwrite.as_deref()
        });
        match &joined.published {
            None => node.await,
            Some(spec) => {
                let own = watch_own(
                    self.twill_nodes(),
                    &self.node,
                    "TwillNode",
                    |t: &TwillNode| &t.spec == spec,
                );
                tokio::select! {
                    r = node => r,
                    r = own => r,
                }
            }
        }
    }

    /// Watches every Node, or every TwillNode, as the overlay's records
    /// (`peer_watch`).
    async fn watch(&self, tx: watch::Sender<Snapshot>) -> Result<(), RegistryError> {
        let nets = &self.networks;
        match self.records {
            KubeRecords::Nodes => {
                peer_watch::watch_peers(
                    self.slim_nodes(),
                    "Node",
                    NODE_PAGE,
                    |n| node_view(n, nets),
                    || async { None },
                    tx,
                )
                .await
            }
            KubeRecords::TwillNodes => {
                let guard = twill_node::DeletionGuard::new(self.client());
                peer_watch::watch_peers(
                    self.twill_nodes(),
                    "TwillNode",
                    TWILL_NODE_PAGE,
                    |t| twill_node_view(t, nets),
                    || guard.reason_to_keep(),
                    tx,
                )
                .await
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
        // Deleted whatever `records` says: an agent switched back to Nodes leaves none.
        match self
            .twill_nodes()
            .delete(node, &DeleteParams::default())
            .await
        {
            Ok(_) => tracing::info!(%node, "deleted this node's TwillNode"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) if self.records == KubeRecords::Nodes => {
                tracing::debug!(error = %e, "no TwillNode to delete")
            }
            Err(e) => return Err(unavailable(format!("deleting TwillNode {node}: {e}"))),
        }
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
