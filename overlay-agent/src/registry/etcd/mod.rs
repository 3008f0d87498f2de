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
//!
//! This module is the I/O against etcd (connect, lease, join, leave; the watch loop is
//! in `watcher`); the key layout, the subnet choice and the snapshot building are
//! pure, in `layout`.
//!
//! [`VtepRecord`]: crate::record::VtepRecord
//! [`subnets::pick`]: crate::subnets::pick

mod layout;
mod watcher;

use super::{Announcement, Registry, RegistryError, Snapshot};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, GetResponse, PutOptions, Txn, TxnOp,
};
use ipnet::IpNet;
use layout::{Held, KeyLayout, NodeEntry};
use std::future::Future;
use std::hash::BuildHasher;
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
    keys: KeyLayout,
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
            keys: KeyLayout::new(prefix),
            lease_ttl_secs,
            networks,
            joined: Mutex::new(None),
        };
        // The client connects lazily: ask something so a dead endpoint fails here.
        let mut kv = registry.client.kv_client();
        rpc(
            "probe",
            kv.get(
                registry.keys.subnets_prefix(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            ),
        )
        .await?;
        Ok(registry)
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
        let key = self.keys.node_key(node);
        let mut kv = self.client.kv_client();
        let resp = rpc("get", kv.get(key.as_str(), None)).await?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(Vec::new());
        };
        match twill_conf::json::decode::<NodeEntry>(kv.value()) {
            Ok(e) => Ok(e.subnets),
            Err(e) => {
                warn!(%key, error = %e, "ignoring an unreadable node entry");
                Ok(Vec::new())
            }
        }
    }

    /// Every key under `<prefix>/subnets/`, as etcd answers.
    async fn list_subnets(&self) -> Result<GetResponse, RegistryError> {
        let mut kv = self.client.kv_client();
        rpc(
            "list",
            kv.get(
                self.keys.subnets_prefix(),
                Some(GetOptions::new().with_prefix()),
            ),
        )
        .await
    }

    /// Every key under `<prefix>/subnets/`, with what `join` and `leave` need of it.
    async fn list_held(&self) -> Result<Vec<Held>, RegistryError> {
        Ok(self
            .list_subnets()
            .await?
            .kvs()
            .iter()
            .map(|kv| self.keys.held(kv.key(), kv.value(), kv.mod_revision()))
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
        let claim = layout::choose(&self.networks, &me.node, &held, remembered)?;
        let value = layout::encode_record(&me.record(claim.chosen.clone()))?;
        let node_value = NodeEntry {
            subnets: claim.chosen.clone(),
        }
        .encode()?;

        let mut compares = Vec::new();
        let mut ops = Vec::new();
        for (s, kept) in claim.chosen.iter().zip(&claim.kept) {
            let key = self.keys.subnet_key(s);
            match kept {
                // Still ours only if nobody touched it since the listing.
                Some(h) => compares.push(Compare::mod_revision(
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
        for h in &claim.released {
            compares.push(Compare::mod_revision(
                h.key.as_str(),
                CompareOp::Equal,
                h.mod_revision,
            ));
            ops.push(TxnOp::delete(h.key.as_str(), None));
        }
        ops.push(TxnOp::put(self.keys.node_key(&me.node), node_value, None));

        let mut kv = self.client.kv_client();
        let resp = rpc("txn", kv.txn(Txn::new().when(compares).and_then(ops))).await?;
        Ok(resp.succeeded().then_some(claim.chosen))
    }
}

#[async_trait::async_trait]
impl Registry for EtcdRegistry {
    async fn join(&self, me: &Announcement) -> Result<Vec<IpNet>, RegistryError> {
        KeyLayout::check_node(&me.node)?;
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
        self.watch_subnets(tx).await
    }

    async fn leave(&self, node: &str) -> Result<(), RegistryError> {
        let mut kv = self.client.kv_client();
        let mut done = false;
        for _ in 0..MAX_CLAIMS {
            let held = self.list_held().await?;
            let mine: Vec<&Held> = layout::held_by(&held, node);
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
            ops.push(TxnOp::delete(self.keys.node_key(node), None));
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
