//! The etcd v3 registry: subnet leases with a TTL, as flannel's etcd backend does.
//!
//! # Key layout (under `prefix`, default `/twill/network`)
//!
//! - `<prefix>/subnets/<address>-<length>`, e.g. `/twill/network/subnets/10.244.1.0-24`
//!   or `/twill/network/subnets/fd00:10:244:1::-64`: the holder's [`VtepRecord`] as JSON,
//!   attached to the holder's TTL lease. Whoever holds the key holds the subnet. A
//!   dual-stack node writes the same record under both of its keys, in one transaction.
//! - `<prefix>/nodes/<node>`: `{"subnets": [...]}`, without a lease: remembers a node's
//!   subnets across restarts and lease expiry, so that it asks for the same ones again.
//!
//! # Semantics
//!
//! - `join` grants a lease (or reuses this instance's lease while it lives), lists the
//!   subnet keys, picks a subnet per network with [`subnets::pick`] (the remembered one
//!   first), and claims them in one transaction that succeeds only if every chosen key
//!   is still absent (`create_revision == 0`) or still the very key this node held when
//!   it listed (`mod_revision` unchanged), so two nodes never hold the same subnet and
//!   a restart within the TTL moves its keys to the new lease. A lost race lists again
//!   and retries, a bounded number of times.
//! - `keep_alive` refreshes the lease every TTL/3 and returns `Ok(())` once the lease is
//!   gone (etcd answers TTL 0) or, while etcd is unreachable, once the lease must have
//!   expired: the agent then joins again.
//! - `watch` lists `<prefix>/subnets/`, sends a complete [`Snapshot`], then watches from
//!   the listing's revision + 1, resuming from the last seen revision + 1 after a broken
//!   stream (and listing again when etcd compacted that revision away).
//! - `leave` deletes the node's subnet keys and its `nodes/` key (uninstall means the
//!   node goes away for good) and revokes the lease.
//!
//! Every request carries a deadline: an unreachable etcd gives
//! [`RegistryError::Unavailable`], never a hang.

use super::{Announcement, Malformed, Registry, RegistryError, Snapshot};
use crate::record::VtepRecord;
use crate::subnets;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, PutOptions, Txn,
    TxnOp, WatchOptions,
};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{sleep, timeout, Instant};
use tracing::{debug, info, warn};
use twill_conf::cluster::PodNetwork;

/// The deadline of one request (and of `connect`).
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// Claims tried by one `join` before giving up; each lost race means another node won,
/// so this bounds the number of nodes joining at the same moment, not the cluster.
const MAX_CLAIMS: u32 = 64;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The registry on an etcd v3 cluster.
pub struct EtcdRegistry {
    client: Client,
    /// `prefix` without its trailing `/`.
    prefix: String,
    lease_ttl_secs: u32,
    networks: Vec<PodNetwork>,
    joined: Mutex<Option<Joined>>,
}

/// What the last successful `join` of this instance holds.
#[derive(Debug, Clone)]
struct Joined {
    node: String,
    lease: i64,
}

/// The value of `<prefix>/nodes/<node>`.
#[derive(Debug, Serialize, Deserialize)]
struct NodeEntry {
    subnets: Vec<IpNet>,
}

/// One subnet key as `join` and `leave` see it.
struct Held {
    key: String,
    /// `None` when the key does not name a subnet: it holds nothing.
    subnet: Option<IpNet>,
    /// The record's node; `None` when the value is not a record (the subnet stays taken).
    node: Option<String>,
    mod_revision: i64,
}

impl EtcdRegistry {
    /// Connects to etcd and checks that it answers, within a deadline.
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        lease_ttl_secs: u32,
        networks: Vec<PodNetwork>,
    ) -> Result<EtcdRegistry, RegistryError> {
        if endpoints.is_empty() {
            return Err(RegistryError::Invalid("no etcd endpoints given".into()));
        }
        if networks.is_empty() {
            return Err(RegistryError::Invalid("no pod network given".into()));
        }
        if lease_ttl_secs < 2 {
            // etcd raises shorter TTLs to its minimum anyway; TTL/3 refreshes need room.
            return Err(RegistryError::Invalid(format!(
                "lease TTL {lease_ttl_secs}s is too short (at least 2s)"
            )));
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(RPC_TIMEOUT)
            .with_timeout(RPC_TIMEOUT)
            // HTTP/2 pings notice a dead peer under a long-lived watch stream.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let client = rpc("connect", Client::connect(endpoints, Some(options))).await?;
        let registry = EtcdRegistry {
            client,
            prefix: prefix.trim_end_matches('/').to_string(),
            lease_ttl_secs,
            networks,
            joined: Mutex::new(None),
        };
        // The client connects lazily: ask something so a dead endpoint fails here.
        let mut kv = registry.client.kv_client();
        rpc(
            "probe",
            kv.get(
                registry.subnets_prefix(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            ),
        )
        .await?;
        Ok(registry)
    }

    fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    fn subnet_key(&self, s: &IpNet) -> String {
        format!("{}{}", self.subnets_prefix(), subnet_key_suffix(s))
    }

    fn node_key(&self, node: &str) -> String {
        format!("{}/nodes/{node}", self.prefix)
    }

    fn joined(&self) -> Option<Joined> {
        // A poisoned lock only means another task panicked mid-assignment of a plain
        // value: the value is still usable.
        self.joined
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_joined(&self, j: Option<Joined>) {
        *self.joined.lock().unwrap_or_else(|p| p.into_inner()) = j;
    }

    /// This instance's lease while it is alive, else a new one.
    async fn lease_for(&self, node: &str) -> Result<i64, RegistryError> {
        let mut lease = self.client.lease_client();
        if let Some(j) = self.joined().filter(|j| j.node == node) {
            let ttl = rpc("lease time-to-live", lease.time_to_live(j.lease, None)).await?;
            if ttl.ttl() > 0 {
                return Ok(j.lease);
            }
        }
        let granted = rpc(
            "lease grant",
            lease.grant(i64::from(self.lease_ttl_secs), None),
        )
        .await?;
        if !granted.error().is_empty() {
            return Err(RegistryError::Unavailable(format!(
                "etcd refused a lease: {}",
                granted.error()
            )));
        }
        Ok(granted.id())
    }

    /// The subnets `<prefix>/nodes/<node>` remembers (none when absent or unreadable).
    async fn remembered(&self, node: &str) -> Result<Vec<IpNet>, RegistryError> {
        let key = self.node_key(node);
        let mut kv = self.client.kv_client();
        let resp = rpc("get", kv.get(key.as_str(), None)).await?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(Vec::new());
        };
        match serde_json::from_slice::<NodeEntry>(kv.value()) {
            Ok(e) => Ok(e.subnets),
            Err(e) => {
                warn!(%key, error = %e, "ignoring an unreadable node entry");
                Ok(Vec::new())
            }
        }
    }

    /// Every key under `<prefix>/subnets/`, with what `join` and `leave` need of it.
    async fn list_held(&self) -> Result<Vec<Held>, RegistryError> {
        let prefix = self.subnets_prefix();
        let mut kv = self.client.kv_client();
        let resp = rpc(
            "list",
            kv.get(prefix.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let subnet = key
                    .strip_prefix(&prefix)
                    .and_then(|s| parse_subnet_key_suffix(s).ok());
                let node = serde_json::from_slice::<VtepRecord>(kv.value())
                    .ok()
                    .map(|r| r.node);
                Held {
                    key,
                    subnet,
                    node,
                    mod_revision: kv.mod_revision(),
                }
            })
            .collect())
    }

    /// One claim attempt: `Ok(None)` when another writer got in between.
    async fn try_claim(
        &self,
        me: &Announcement,
        lease: i64,
        remembered: &[IpNet],
    ) -> Result<Option<Vec<IpNet>>, RegistryError> {
        let held = self.list_held().await?;
        let mut taken: Vec<IpNet> = Vec::new();
        let mut own: Vec<(IpNet, &Held)> = Vec::new();
        for h in &held {
            let Some(s) = h.subnet else { continue };
            if h.node.as_deref() == Some(me.node.as_str()) {
                own.push((s, h));
            } else {
                taken.push(s);
            }
        }

        let mut chosen = Vec::with_capacity(self.networks.len());
        for net in &self.networks {
            // The remembered subnet first, then one this node still holds.
            let candidates = remembered.iter().chain(own.iter().map(|(s, _)| s));
            let pick = candidates
                .copied()
                .find(|c| subnets::pick(net, &taken, Some(*c)) == Some(*c))
                .or_else(|| subnets::pick(net, &taken, None))
                .ok_or(RegistryError::Exhausted {
                    network: net.network,
                    len: net.subnet_len,
                })?;
            taken.push(pick);
            chosen.push(pick);
        }

        let record = me.record(chosen.clone());
        let value = serde_json::to_vec(&record)
            .map_err(|e| RegistryError::Invalid(format!("cannot encode the record: {e}")))?;
        let node_value = serde_json::to_vec(&NodeEntry {
            subnets: chosen.clone(),
        })
        .map_err(|e| RegistryError::Invalid(format!("cannot encode the node entry: {e}")))?;

        let mut compares = Vec::new();
        let mut ops = Vec::new();
        for s in &chosen {
            let key = self.subnet_key(s);
            match own.iter().find(|(o, _)| o == s) {
                // Still ours only if nobody touched it since the listing.
                Some((_, h)) => compares.push(Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    h.mod_revision,
                )),
                None => compares.push(Compare::create_revision(key.as_str(), CompareOp::Equal, 0)),
            }
            ops.push(TxnOp::put(
                key,
                value.clone(),
                Some(PutOptions::new().with_lease(lease)),
            ));
        }
        // Subnets this node held but no longer wants (the network changed): let go.
        for (s, h) in &own {
            if !chosen.contains(s) {
                compares.push(Compare::mod_revision(
                    h.key.as_str(),
                    CompareOp::Equal,
                    h.mod_revision,
                ));
                ops.push(TxnOp::delete(h.key.as_str(), None));
            }
        }
        ops.push(TxnOp::put(self.node_key(&me.node), node_value, None));

        let mut kv = self.client.kv_client();
        let resp = rpc("txn", kv.txn(Txn::new().when(compares).and_then(ops))).await?;
        Ok(resp.succeeded().then_some(chosen))
    }

    /// Reads the full subnet listing: the entries and the revision they are at.
    async fn list_entries(&self) -> Result<(BTreeMap<Vec<u8>, Vec<u8>>, i64), RegistryError> {
        let mut kv = self.client.kv_client();
        let resp = rpc(
            "list",
            kv.get(self.subnets_prefix(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
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
        entries: &mut BTreeMap<Vec<u8>, Vec<u8>>,
        next: &mut Option<i64>,
        tx: &watch::Sender<Snapshot>,
        backoff: &mut Duration,
    ) -> Result<bool, RegistryError> {
        let Some(from) = *next else { return Ok(false) };
        let mut client = self.client.watch_client();
        let (mut watcher, mut stream) = rpc(
            "watch",
            client.watch(
                self.subnets_prefix(),
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
                apply(entries, ev.event_type(), kv);
                *next = Some(next.unwrap_or(0).max(kv.mod_revision() + 1));
            }
            if !publish(tx, build_snapshot(&self.subnets_prefix(), entries)) {
                let _ = watcher.cancel().await;
                return Ok(true);
            }
        }
    }
}

#[async_trait::async_trait]
impl Registry for EtcdRegistry {
    async fn join(&self, me: &Announcement) -> Result<Vec<IpNet>, RegistryError> {
        if me.node.is_empty() || me.node.contains('/') {
            return Err(RegistryError::Invalid(format!(
                "node name {:?} cannot be part of an etcd key",
                me.node
            )));
        }
        let lease = self.lease_for(&me.node).await?;
        let remembered = self.remembered(&me.node).await?;
        for attempt in 0..MAX_CLAIMS {
            match self.try_claim(me, lease, &remembered).await {
                Ok(Some(subnets)) => {
                    info!(node = %me.node, ?subnets, lease, "joined the etcd registry");
                    self.set_joined(Some(Joined {
                        node: me.node.clone(),
                        lease,
                    }));
                    return Ok(subnets);
                }
                Ok(None) => {
                    debug!(node = %me.node, attempt, "lost a subnet race; trying again");
                    // A little randomness so that racing nodes do not stay in lockstep.
                    let jitter = std::collections::hash_map::RandomState::new().hash_one(attempt);
                    sleep(Duration::from_millis(jitter % 20)).await;
                }
                Err(e) => {
                    if matches!(e, RegistryError::Exhausted { .. }) {
                        // Nothing holds the new lease yet; do not leave it to expire.
                        if self.joined().map(|j| j.lease) != Some(lease) {
                            let mut l = self.client.lease_client();
                            let _ = rpc("lease revoke", l.revoke(lease)).await;
                        }
                    }
                    return Err(e);
                }
            }
        }
        Err(RegistryError::Unavailable(format!(
            "no subnet claimed after {MAX_CLAIMS} attempts: too many nodes joining at once"
        )))
    }

    async fn keep_alive(&self) -> Result<(), RegistryError> {
        let Some(joined) = self.joined() else {
            return Err(RegistryError::Invalid(
                "keep_alive called before join".into(),
            ));
        };
        let ttl = Duration::from_secs(u64::from(self.lease_ttl_secs));
        let period = ttl / 3;
        // When the lease expires at the latest, as far as this node can tell.
        let mut expires = Instant::now() + ttl;
        let mut backoff = BACKOFF_MIN;
        let mut lease = self.client.lease_client();
        loop {
            match timeout(RPC_TIMEOUT, lease.keep_alive(joined.lease)).await {
                Ok(Ok((mut keeper, mut stream))) => {
                    // The opening request was a refresh.
                    expires = Instant::now() + ttl;
                    backoff = BACKOFF_MIN;
                    loop {
                        sleep(period).await;
                        if let Err(e) = keeper.keep_alive().await {
                            warn!(error = %e, "lease keep-alive failed");
                            break;
                        }
                        match timeout(RPC_TIMEOUT, stream.message()).await {
                            Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                                expires =
                                    Instant::now() + Duration::from_secs(resp.ttl().unsigned_abs());
                            }
                            Ok(Ok(Some(_))) => {
                                warn!(lease = joined.lease, "etcd lease lost");
                                return Ok(());
                            }
                            Ok(Ok(None)) => {
                                warn!("lease keep-alive stream ended");
                                break;
                            }
                            Ok(Err(e)) => {
                                warn!(error = %e, "lease keep-alive failed");
                                break;
                            }
                            Err(_) => {
                                warn!("etcd did not answer a lease keep-alive");
                                break;
                            }
                        }
                    }
                }
                // etcd answers TTL 0 for an unknown or expired lease; the client turns
                // that into this error.
                Ok(Err(etcd_client::Error::LeaseKeepAliveError(e))) if e.contains("not found") => {
                    warn!(lease = joined.lease, "etcd lease lost");
                    return Ok(());
                }
                Ok(Err(e)) => warn!(error = %e, "cannot keep the etcd lease alive; retrying"),
                Err(_) => warn!("etcd did not answer a lease keep-alive; retrying"),
            }
            let now = Instant::now();
            if now >= expires {
                warn!(
                    lease = joined.lease,
                    "etcd lease expired while etcd was unreachable"
                );
                return Ok(());
            }
            sleep(backoff.min(expires - now)).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn watch(&self, tx: watch::Sender<Snapshot>) -> Result<(), RegistryError> {
        let prefix = self.subnets_prefix();
        let mut entries = BTreeMap::new();
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
                        if !publish(&tx, build_snapshot(&prefix, &entries)) {
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

    async fn leave(&self, node: &str) -> Result<(), RegistryError> {
        let mut kv = self.client.kv_client();
        let mut done = false;
        for _ in 0..MAX_CLAIMS {
            let held = self.list_held().await?;
            let mine: Vec<&Held> = held
                .iter()
                .filter(|h| h.node.as_deref() == Some(node))
                .collect();
            // Delete only keys unchanged since the listing: one that expired and went to
            // another node meanwhile is not ours to delete.
            let compares: Vec<Compare> = mine
                .iter()
                .map(|h| Compare::mod_revision(h.key.as_str(), CompareOp::Equal, h.mod_revision))
                .collect();
            let mut ops: Vec<TxnOp> = mine
                .iter()
                .map(|h| TxnOp::delete(h.key.as_str(), None))
                .collect();
            ops.push(TxnOp::delete(self.node_key(node), None));
            let resp = rpc("txn", kv.txn(Txn::new().when(compares).and_then(ops))).await?;
            if resp.succeeded() {
                done = true;
                break;
            }
        }
        if !done {
            return Err(RegistryError::Unavailable(format!(
                "the keys of node {node} kept changing; cannot remove them"
            )));
        }
        if let Some(j) = self.joined().filter(|j| j.node == node) {
            let mut lease = self.client.lease_client();
            // The lease may be gone already: nothing left to do then.
            if let Err(e) = rpc("lease revoke", lease.revoke(j.lease)).await {
                debug!(error = %e, "lease revoke after leave");
            }
            self.set_joined(None);
        }
        info!(node, "left the etcd registry");
        Ok(())
    }
}

/// Runs one request with a deadline; every failure is `Unavailable` (the caller retries).
async fn rpc<T>(
    what: &str,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, RegistryError> {
    match timeout(RPC_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(RegistryError::Unavailable(format!("etcd {what}: {e}"))),
        Err(_) => Err(RegistryError::Unavailable(format!(
            "etcd {what}: no answer within {RPC_TIMEOUT:?}"
        ))),
    }
}

fn apply(entries: &mut BTreeMap<Vec<u8>, Vec<u8>>, kind: EventType, kv: &KeyValue) {
    match kind {
        EventType::Put => {
            entries.insert(kv.key().to_vec(), kv.value().to_vec());
        }
        EventType::Delete => {
            entries.remove(kv.key());
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

/// `10.244.1.0/24` → `10.244.1.0-24` (a `/` would make a deeper key).
fn subnet_key_suffix(s: &IpNet) -> String {
    format!("{}-{}", s.network(), s.prefix_len())
}

fn parse_subnet_key_suffix(suffix: &str) -> Result<IpNet, String> {
    let bad = || format!("{suffix:?} does not name a subnet (<address>-<length>)");
    let (addr, len) = suffix.rsplit_once('-').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    let net = IpNet::new(addr, len).map_err(|_| bad())?;
    // Only the canonical spelling names a subnet, so one subnet has exactly one key.
    if net.network() != addr || subnet_key_suffix(&net) != suffix {
        return Err(bad());
    }
    Ok(net)
}

/// Turns the entries under `subnets_prefix` into a complete snapshot. A record counts
/// only when every subnet it claims has its key holding that same record; everything
/// else is reported as malformed under its key.
fn build_snapshot(subnets_prefix: &str, entries: &BTreeMap<Vec<u8>, Vec<u8>>) -> Snapshot {
    let mut malformed = Vec::new();
    let mut parsed: BTreeMap<IpNet, (String, VtepRecord)> = BTreeMap::new();
    for (key, value) in entries {
        let source = String::from_utf8_lossy(key).into_owned();
        let mut bad = |reason: String| {
            malformed.push(Malformed {
                source: source.clone(),
                reason,
            })
        };
        let subnet = match source
            .strip_prefix(subnets_prefix)
            .ok_or_else(|| "outside the subnets prefix".to_string())
            .and_then(parse_subnet_key_suffix)
        {
            Ok(s) => s,
            Err(reason) => {
                bad(reason);
                continue;
            }
        };
        let record: VtepRecord = match serde_json::from_slice(value) {
            Ok(r) => r,
            Err(e) => {
                bad(format!("not a record: {e}"));
                continue;
            }
        };
        if !record.subnets.contains(&subnet) {
            bad(format!(
                "the record of node {:?} does not claim the key's subnet {subnet}",
                record.node
            ));
            continue;
        }
        parsed.insert(subnet, (source, record));
    }

    let mut records: Vec<VtepRecord> = Vec::new();
    for (source, record) in parsed.values() {
        let missing = record
            .subnets
            .iter()
            .find(|s| parsed.get(s).map(|(_, r)| r) != Some(record));
        if let Some(s) = missing {
            malformed.push(Malformed {
                source: source.clone(),
                reason: format!(
                    "the record of node {:?} claims {s}, whose key does not hold this record",
                    record.node
                ),
            });
        } else if !records.contains(record) {
            records.push(record.clone());
        }
    }
    records.sort_by(|a, b| a.node.cmp(&b.node).then_with(|| a.subnets.cmp(&b.subnets)));
    malformed.sort_by(|a, b| a.source.cmp(&b.source));
    Snapshot {
        records,
        malformed,
        complete: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Mac;

    const P: &str = "/twill/network/subnets/";

    fn rec(node: &str, subnets: &[&str]) -> VtepRecord {
        VtepRecord {
            node: node.into(),
            subnets: subnets.iter().map(|s| s.parse().unwrap()).collect(),
            public_ip: "192.168.0.2".parse().unwrap(),
            vtep_mac: Mac([0x0a, 0x58, 0, 0, 0, 1]),
            backend: "vxlan".into(),
        }
    }

    fn entry(suffix: &str, value: &[u8]) -> (Vec<u8>, Vec<u8>) {
        (format!("{P}{suffix}").into_bytes(), value.to_vec())
    }

    #[test]
    fn subnet_keys_round_trip_and_are_canonical() {
        for s in ["10.244.1.0/24", "fd00:10:244:1::/64"] {
            let net: IpNet = s.parse().unwrap();
            assert_eq!(parse_subnet_key_suffix(&subnet_key_suffix(&net)), Ok(net));
        }
        for bad in [
            "10.244.1.0",
            "10.244.1.1-24",
            "10.244.1.0-33",
            "010.244.1.0-24",
            "x-24",
            "10.244.1.0-+24",
        ] {
            assert!(parse_subnet_key_suffix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn snapshot_keeps_good_records_once_and_reports_the_rest() {
        let dual = rec("a", &["10.244.1.0/24", "fd00:0:0:1::/64"]);
        let dual_json = serde_json::to_vec(&dual).unwrap();
        let lonely = rec("b", &["10.244.2.0/24", "fd00:0:0:2::/64"]);
        let entries: BTreeMap<_, _> = [
            entry("10.244.1.0-24", &dual_json),
            entry("fd00:0:0:1::-64", &dual_json),
            // Claims a v6 subnet whose key is missing.
            entry("10.244.2.0-24", &serde_json::to_vec(&lonely).unwrap()),
            // Key and record disagree.
            entry(
                "10.244.3.0-24",
                &serde_json::to_vec(&rec("c", &["10.244.4.0/24"])).unwrap(),
            ),
            entry("10.244.5.0-24", b"{not json"),
            entry(
                "junk",
                &serde_json::to_vec(&rec("d", &["10.244.6.0/24"])).unwrap(),
            ),
        ]
        .into_iter()
        .collect();
        let snap = build_snapshot(P, &entries);
        assert!(snap.complete);
        assert_eq!(snap.records, vec![dual]);
        let sources: Vec<&str> = snap.malformed.iter().map(|m| m.source.as_str()).collect();
        assert_eq!(
            sources,
            vec![
                "/twill/network/subnets/10.244.2.0-24",
                "/twill/network/subnets/10.244.3.0-24",
                "/twill/network/subnets/10.244.5.0-24",
                "/twill/network/subnets/junk",
            ]
        );
    }
}
