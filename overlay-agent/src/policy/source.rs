//! The I/O part of the policy source: three kube-rs watchers feeding a [`ClusterStore`],
//! and the snapshots published from it.

use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

use crate::kube_client::Outage;
use futures::stream::{self, BoxStream};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;
use twill_policy::Kind;

use super::store::{ClusterStore, NodeIps, WatchEvent};
use super::{PendingSince, PolicyView};

/// At most this many events that are ready at once go into one snapshot, so a
/// continuous flood still yields snapshots.
const MAX_BATCH: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum PolicySourceError {
    #[error(transparent)]
    Connect(#[from] crate::kube_client::KubeConnectError),
    #[error("the policy watches ended")]
    WatchEnded,
}

/// Watches NetworkPolicies, Pods and Namespaces (get, list, watch on each) and
/// publishes [`PolicyView`]s.
pub struct PolicySource {
    client: kube::Client,
    pending: PendingSince,
}

type Events = BoxStream<'static, (Kind, Result<Option<WatchEvent>, watcher::Error>)>;

impl PolicySource {
    pub fn new(client: kube::Client) -> Self {
        PolicySource {
            client,
            pending: PendingSince::default(),
        }
    }

    /// Marks in `pending` when each change that a view carries arrived.
    pub fn with_pending(self, pending: PendingSince) -> Self {
        PolicySource { pending, ..self }
    }

    /// A client from `kubeconfig`, else `KUBECONFIG`, else the in-cluster service account.
    pub async fn connect(kubeconfig: Option<&Path>) -> Result<Self, PolicySourceError> {
        let (client, _) = crate::kube_client::connect(kubeconfig).await?;
        Ok(PolicySource::new(client))
    }

    /// Runs until every receiver of `views` is gone (`Ok`) or a watch stream ends.
    ///
    /// Events that are ready together are applied together and yield one view; a
    /// single event is published at once, with no delay. Nothing is published before
    /// all three kinds are listed. A lost watch keeps the last view; the watcher backs
    /// off, re-lists, and the store swaps to the new list in one step.
    ///
    /// `node_ips` is the caller's: the agent knows its own node's IPs (and may add other
    /// nodes'); every change of it is published too. When its sender is dropped the last
    /// value stays.
    pub async fn run(
        self,
        mut node_ips: watch::Receiver<NodeIps>,
        views: watch::Sender<PolicyView>,
    ) -> Result<(), PolicySourceError> {
        let mut events = stream::select_all([
            watch_kind(
                Api::<NetworkPolicy>::all(self.client.clone()),
                Kind::NetworkPolicy,
            ),
            watch_kind(Api::<Pod>::all(self.client.clone()), Kind::Pod),
            watch_kind(Api::<Namespace>::all(self.client.clone()), Kind::Namespace),
        ]);
        let mut store = ClusterStore::default();
        store.set_node_ips(node_ips.borrow_and_update().clone());
        let mut node_ips_open = true;
        let mut failing = Failing::default();
        let mut published = false;
        loop {
            let mut changed = tokio::select! {
                next = events.next() => match next {
                    Some((kind, event)) => failing.apply(&mut store, kind, event),
                    None => return Err(PolicySourceError::WatchEnded),
                },
                open = node_ips.changed(), if node_ips_open => {
                    node_ips_open = open.is_ok();
                    store.set_node_ips(node_ips.borrow_and_update().clone())
                }
                _ = views.closed() => return Ok(()),
            };
            let arrived = std::time::Instant::now();
            // Coalesce: whatever else is ready now goes into the same view.
            for _ in 0..MAX_BATCH {
                match events.next().now_or_never() {
                    Some(Some((kind, event))) => changed |= failing.apply(&mut store, kind, event),
                    Some(None) => return Err(PolicySourceError::WatchEnded),
                    None => break,
                }
            }
            if store.synced() && (changed || !published) {
                if !published {
                    tracing::info!(
                        policies = store.policies.len(),
                        pods = store.pods.len(),
                        namespaces = store.namespaces.len(),
                        "NetworkPolicies, Pods and Namespaces are listed"
                    );
                }
                if changed {
                    self.pending.mark(arrived);
                }
                let view = PolicyView {
                    synced: true,
                    cluster: Arc::new(store.cluster()),
                };
                if views.send(view).is_err() {
                    return Ok(());
                }
                published = true;
            }
        }
    }
}

/// Each kind's watch outage, so each failure and recovery is logged once.
#[derive(Default)]
struct Failing(std::collections::BTreeMap<Kind, Outage>);

impl Failing {
    fn apply(
        &mut self,
        store: &mut ClusterStore,
        kind: Kind,
        event: Result<Option<WatchEvent>, watcher::Error>,
    ) -> bool {
        let outage = self.0.entry(kind).or_default();
        match event {
            Err(error) => {
                if outage.lost() {
                    tracing::warn!(?kind, %error, "lost a policy watch; the last view stays while it reconnects");
                }
                false
            }
            Ok(event) => {
                if let Some(outage_s) = outage.back() {
                    tracing::info!(?kind, %outage_s, "the policy watch is back");
                }
                event.is_some_and(|event| store.apply(kind, event))
            }
        }
    }
}

/// The watch of one kind, as [`WatchEvent`]s; each object becomes JSON and is dropped.
fn watch_kind<K>(api: Api<K>, kind: Kind) -> Events
where
    K: Resource + Clone + DeserializeOwned + Debug + Serialize + Send + 'static,
    K::DynamicType: Default,
{
    watcher::watcher(api, watcher::Config::default())
        .backoff(crate::kube_client::watch_backoff())
        .map(move |event| (kind, event.map(|event| watch_event(kind, event))))
        .boxed()
}

fn watch_event<K: Resource + Serialize>(kind: Kind, event: Event<K>) -> Option<WatchEvent> {
    let json = |object: &K| match serde_json::to_value(object) {
        Ok(value) => Some(value),
        Err(error) => {
            tracing::warn!(?kind, name = %object.name_any(), %error, "cannot read an object as JSON; skipped");
            None
        }
    };
    Some(match event {
        Event::Init => WatchEvent::ListStart,
        Event::InitApply(object) => WatchEvent::Listed(json(&object)?),
        Event::InitDone => WatchEvent::ListDone,
        Event::Apply(object) => WatchEvent::Applied(json(&object)?),
        Event::Delete(object) => {
            WatchEvent::Deleted((object.namespace().unwrap_or_default(), object.name_any()))
        }
    })
}
