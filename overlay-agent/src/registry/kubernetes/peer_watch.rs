//! The watch of every peer object (Nodes or TwillNodes) into snapshots. A lost
//! connection keeps the last snapshot in place (the data path stays as it is); the
//! watcher resumes from the last resource version, or re-lists when the server no
//! longer has it, and objects deleted meanwhile disappear then. A re-list updates the
//! one map of views in place and drops what it did not see: no second copy of the
//! peer set.

use super::node_view::{snapshot_of, NodeView};
use crate::kube_client::Outage;
use crate::registry::{RegistryError, Snapshot};
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Resource;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::future::Future;
use tokio::sync::watch;

/// Objects per page of a (re-)list. A page is parsed whole before its objects are
/// slimmed, so this bounds the list's transient memory: 100 kubelet Nodes are about
/// 1.7 MB of JSON (50 requests for 5,000 Nodes), 500 TwillNodes about 250 KB.
pub(super) const NODE_PAGE: u32 = 100;
pub(super) const TWILL_NODE_PAGE: u32 = 500;

/// During the first list, a partial snapshot goes out every this many objects, so the
/// agent programs the first peers while the rest are still being listed (it removes
/// nothing on a partial view).
const PARTIAL_EVERY: usize = 500;

/// Watches every object of `api` (`what` names them in logs) and sends a complete
/// snapshot of their views whenever one changes, until `tx` has no receiver.
///
/// Before a deletion is acted on, `hold` is asked why it should not be: `Some(reason)`
/// keeps that peer, and every later one until the next list (see
/// `twill_node::DeletionGuard`).
pub(super) async fn watch_peers<K, H, F>(
    api: Api<K>,
    what: &'static str,
    page: u32,
    view: impl Fn(&K) -> NodeView,
    hold: H,
    tx: watch::Sender<Snapshot>,
) -> Result<(), RegistryError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
    H: Fn() -> F,
    F: Future<Output = Option<String>>,
{
    let cfg = watcher::Config::default().page_size(page);
    let mut events = watcher::watcher(api, cfg)
        .backoff(crate::kube_client::watch_backoff())
        .boxed();
    let mut views: BTreeMap<String, NodeView> = BTreeMap::new();
    // During a (re-)list: the names seen so far, and whether any view changed.
    let mut listing: Option<(BTreeSet<String>, bool)> = None;
    let mut complete = false;
    let mut outage = Outage::default();
    // Deletions are ignored until the next list: why.
    let mut held: Option<String> = None;
    let started = std::time::Instant::now();
    loop {
        let ev = tokio::select! {
            ev = events.next() => ev,
            _ = tx.closed() => return Ok(()),
        };
        let Some(ev) = ev else {
            return Err(RegistryError::Unavailable(format!(
                "the {what} watch ended"
            )));
        };
        // Init comes before the list is even asked for: it proves nothing.
        if matches!(ev, Ok(Event::InitDone | Event::Apply(_) | Event::Delete(_))) {
            if let Some(outage_s) = outage.back() {
                tracing::info!(%outage_s, "the {what} watch is back");
            }
        }
        let changed = match ev {
            Err(e) => {
                if outage.lost() {
                    tracing::warn!(error = %e, "lost the {what} watch; the data path stays as it is while it reconnects");
                }
                continue;
            }
            Ok(Event::Init) => {
                listing = Some((BTreeSet::new(), false));
                held = None;
                false
            }
            Ok(Event::InitApply(n)) => {
                if let (Some((seen, changed)), Some(name)) =
                    (listing.as_mut(), n.meta().name.clone())
                {
                    let v = view(&n);
                    *changed |= views.get(&name) != Some(&v);
                    seen.insert(name.clone());
                    views.insert(name, v);
                    if !complete && seen.len() % PARTIAL_EVERY == 0 {
                        let partial = Snapshot {
                            complete: false,
                            ..snapshot_of(&views)
                        };
                        if tx.send(partial).is_err() {
                            return Ok(());
                        }
                    }
                }
                false
            }
            Ok(Event::InitDone) => {
                let (seen, mut changed) = listing.take().unwrap_or_default();
                let before = views.len();
                views.retain(|name, _| seen.contains(name));
                changed |= views.len() != before || !complete;
                if !complete {
                    let elapsed_ms = started.elapsed().as_millis() as u64;
                    tracing::info!(count = views.len(), elapsed_ms, "listed every {what}");
                }
                complete = true;
                changed
            }
            Ok(Event::Apply(n)) => match n.meta().name.clone() {
                Some(name) => {
                    let v = view(&n);
                    views.insert(name, v.clone()) != Some(v)
                }
                None => false,
            },
            Ok(Event::Delete(n)) => {
                let Some(name) = n.meta().name.as_ref().filter(|n| views.contains_key(*n)) else {
                    continue;
                };
                if held.is_none() {
                    held = hold().await;
                    if let Some(reason) = &held {
                        tracing::error!(%reason, "{what} deletions are ignored: every peer keeps its routes");
                    }
                }
                held.is_none() && views.remove(name).is_some()
            }
        };
        if changed && complete && tx.send(snapshot_of(&views)).is_err() {
            return Ok(());
        }
    }
}
