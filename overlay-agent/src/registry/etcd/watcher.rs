//! The etcd registry's watch: list the subnet keys, publish a snapshot, follow the
//! changes, resume after a broken stream.

use super::layout::{self, Entries};
use super::{rpc, EtcdRegistry, BACKOFF_MAX, BACKOFF_MIN};
use crate::registry::{Malformed, RegistryError, Snapshot};
use etcd_client::WatchOptions;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::sleep;
use tracing::{debug, warn};

impl EtcdRegistry {
    /// Reads the full subnet listing: the entries and the revision they are at.
    async fn list_entries(&self) -> Result<(Entries, i64), RegistryError> {
        let resp = self.list_subnets().await?;
        let revision = resp
            .header()
            .map(|h| h.revision())
            .ok_or_else(|| RegistryError::Unavailable("etcd answered without a header".into()))?;
        let entries = resp
            .kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
            .collect();
        Ok((entries, revision))
    }

    /// Watches from `from` until the stream breaks; keeps `entries` and `next` (the
    /// revision to resume from) up to date and publishes every change. Returns
    /// `Ok(true)` when `tx` is closed, `Ok(false)` on a broken stream (resume), and
    /// `Err` on a failure to start it.
    async fn watch_from(
        &self,
        entries: &mut Entries,
        next: &mut Option<i64>,
        tx: &watch::Sender<Snapshot>,
        backoff: &mut Duration,
    ) -> Result<bool, RegistryError> {
        let Some(from) = *next else { return Ok(false) };
        let mut client = self.client.watch_client();
        let (mut watcher, mut stream) = rpc(
            "watch",
            client.watch(
                self.keys.subnets_prefix(),
                Some(WatchOptions::new().with_prefix().with_start_revision(from)),
            ),
        )
        .await?;
        debug!(revision = from, "watching the etcd registry");
        *backoff = BACKOFF_MIN;
        loop {
            let msg = tokio::select! {
                _ = tx.closed() => {
                    let _ = watcher.cancel().await;
                    return Ok(true);
                }
                msg = stream.message() => msg,
            };
            let resp = match msg {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    warn!("the etcd watch stream ended; resuming");
                    return Ok(false);
                }
                Err(e) => {
                    warn!(error = %e, "the etcd watch broke; resuming");
                    return Ok(false);
                }
            };
            if resp.compact_revision() > 0 {
                warn!(
                    compacted = resp.compact_revision(),
                    "etcd compacted the watched revision away; listing again"
                );
                *next = None;
                return Ok(false);
            }
            if resp.canceled() {
                warn!(
                    reason = resp.cancel_reason(),
                    "etcd cancelled the watch; resuming"
                );
                return Ok(false);
            }
            if resp.events().is_empty() {
                continue;
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                layout::apply(entries, ev.event_type(), kv);
                *next = Some(next.unwrap_or(0).max(kv.mod_revision() + 1));
            }
            if !publish(tx, self.keys.snapshot(entries)) {
                let _ = watcher.cancel().await;
                return Ok(true);
            }
        }
    }

    /// The body of [`Registry::watch`]: list, publish, watch, resume.
    pub(super) async fn watch_subnets(
        &self,
        tx: watch::Sender<Snapshot>,
    ) -> Result<(), RegistryError> {
        let mut entries = Entries::new();
        // The revision to watch from; `None` until listed (or after a compaction).
        let mut next: Option<i64> = None;
        let mut backoff = BACKOFF_MIN;
        loop {
            if tx.is_closed() {
                return Ok(());
            }
            if next.is_none() {
                match self.list_entries().await {
                    Ok((listed, revision)) => {
                        entries = listed;
                        next = Some(revision + 1);
                        if !publish(&tx, self.keys.snapshot(&entries)) {
                            return Ok(());
                        }
                    }
                    Err(e) => warn!(error = %e, "cannot list the etcd registry; retrying"),
                }
            }
            match self
                .watch_from(&mut entries, &mut next, &tx, &mut backoff)
                .await
            {
                Ok(true) => return Ok(()),
                // A broken stream resumes at once (the backoff was reset when it opened,
                // and grows if it keeps breaking before opening).
                Ok(false) => {}
                Err(e) => warn!(error = %e, "cannot watch the etcd registry; retrying"),
            }
            tokio::select! {
                _ = tx.closed() => return Ok(()),
                _ = sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// Sends `snap` unless it equals what `tx` holds; warns about entries that just became
/// malformed. False when nobody listens any more.
fn publish(tx: &watch::Sender<Snapshot>, snap: Snapshot) -> bool {
    let (changed, new_malformed): (bool, Vec<Malformed>) = {
        let cur = tx.borrow();
        (
            *cur != snap,
            snap.malformed
                .iter()
                .filter(|m| !cur.malformed.contains(m))
                .cloned()
                .collect(),
        )
    };
    for m in &new_malformed {
        warn!(key = %m.source, reason = %m.reason, "malformed registry entry");
    }
    if !changed {
        return !tx.is_closed();
    }
    tx.send(snap).is_ok()
}
