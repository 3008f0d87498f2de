//! NetworkPolicy enforcement on this node: the [`PolicySource`]'s snapshots are compiled
//! for this node (by a [`NodeCompiler`], which redoes only what a change touches),
//! rendered as table `inet <firewall table>_policy` and applied in one `nft -f -`
//! transaction each (all or nothing: a failed apply leaves the previous table whole).
//! A change is applied as a diff against the table in the kernel; the first apply, each
//! resync and the apply after a failure replace the table whole. A failure is logged and
//! retried on the next snapshot or resync.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use twill_conf::RegistryConf;
use twill_policy::incremental::NodeCompiler;

use super::admit::{Admissions, AdmitEvent};
use super::report::{pod_rows, rule_count};
use super::{NodeIps, PendingSince, PolicySource, PolicyView};
use crate::firewall::policy::{render_diff, PolicyNames, PolicyRenderOptions, PolicyTable};
use crate::firewall::Nft;
use crate::metrics::DenyLabel;
use crate::status::policy::PolicyStatus;
use crate::status::Board;

/// `--network-policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyMode {
    /// On with the kubernetes registry, else off.
    Auto,
    On,
    Off,
}

impl PolicyMode {
    /// Whether to enforce with `registry`; `Err` for `on` without the kubernetes registry.
    pub fn enabled(self, registry: &RegistryConf) -> Result<bool, String> {
        let kube = matches!(registry, RegistryConf::Kubernetes { .. });
        match self {
            PolicyMode::Auto => Ok(kube),
            PolicyMode::Off => Ok(false),
            PolicyMode::On if kube => Ok(true),
            PolicyMode::On => Err(
                "--network-policy on needs the kubernetes registry (NetworkPolicies are API objects)"
                    .into(),
            ),
        }
    }
}

/// The policy table's name for the agent's firewall table.
pub fn policy_table(firewall_table: &str) -> String {
    format!("{firewall_table}_policy")
}

pub struct PolicyEnforcement {
    pub node: String,
    /// `inet <table>`.
    pub table: String,
    pub resync: Duration,
    pub render: PolicyRenderOptions,
}

/// Marks the agent not ready until the first table is applied, and starts the task
/// that runs the source, follows this node's IPs, compiles and applies.
/// `admits`: new pods to admit (see `admit.rs`).
pub fn start(
    conf: PolicyEnforcement,
    client: kube::Client,
    board: Arc<Board>,
    admits: mpsc::UnboundedReceiver<AdmitEvent>,
) -> tokio::task::JoinHandle<()> {
    board.update(|s| {
        s.network_policy = Some(PolicyStatus {
            table: conf.table.clone(),
            ..PolicyStatus::default()
        });
        s.set_policy_reason(Some(
            "NetworkPolicies, Pods and Namespaces not listed yet".into(),
        ));
    });
    tokio::spawn(run(conf, client, board, admits))
}

async fn run(
    conf: PolicyEnforcement,
    client: kube::Client,
    board: Arc<Board>,
    mut admits: mpsc::UnboundedReceiver<AdmitEvent>,
) {
    let nft = Arc::new(Nft::with_table(&conf.table));
    let (ips_tx, ips_rx) = watch::channel(NodeIps::new());
    let (views_tx, mut views) = watch::channel(PolicyView::default());
    let pending = PendingSince::default();
    let marks = pending.clone();
    tokio::spawn(async move {
        // The watchers back off and re-list by themselves; `run` ends only when its
        // streams do, and then it starts over.
        loop {
            let source = PolicySource::new(client.clone()).with_pending(marks.clone());
            match source.run(ips_rx.clone(), views_tx.clone()).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, "the policy source stopped; restarting it"),
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    let nl = match twill_netlink::Netlink::connect() {
        Ok(nl) => Some(nl),
        Err(e) => {
            tracing::error!(error = %e, "no netlink: node IPs for NetworkPolicy are unknown");
            None
        }
    };
    let mut tick = tokio::time::interval(conf.resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut state = ApplyState::default();
    let mut admissions = Admissions::default();
    loop {
        let deadline = admissions.next_deadline(Instant::now());
        let resync = tokio::select! {
            r = views.changed() => {
                if r.is_err() {
                    return;
                }
                false
            }
            _ = tick.tick() => true,
            Some(event) = admits.recv() => {
                admissions.take(event, Instant::now());
                false
            }
            _ = sleep_until(deadline) => false,
        };
        if resync {
            if let Some(nl) = &nl {
                refresh_node_ips(nl, &conf.node, &ips_tx).await;
            }
            state.read_counters(&nft, &board).await;
        }
        let view = views.borrow_and_update().clone();
        let since = pending.take();
        if !view.synced {
            admissions.refuse_unsynced(Instant::now());
            continue;
        }
        let overlaid = admissions.overlay(&view, &conf.node);
        let nft_ran = state
            .apply(&conf, &nft, &board, &overlaid.view, resync)
            .await;
        if let Some(since) = since {
            match nft_ran {
                // Only changes that altered the table: the others needed nothing in force.
                Some(true) => board
                    .metrics
                    .policy_enforce_latency
                    .observe(since.elapsed().as_secs_f64()),
                // Not in force yet: it counts until the retry applies.
                Some(false) => pending.mark(since),
                None => {}
            }
        }
        admissions.answer(&overlaid, state.applied.is_some(), Instant::now());
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Publishes this node's addresses (underlay, bridge gateways, VXLAN device: all it
/// holds, without loopback and link-local ones) when they changed.
async fn refresh_node_ips(nl: &twill_netlink::Netlink, node: &str, tx: &watch::Sender<NodeIps>) {
    let addrs = match nl.all_addresses().await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list this node's addresses");
            return;
        }
    };
    let mut ips: Vec<IpAddr> = addrs
        .iter()
        .map(|n| n.addr())
        .filter(|ip| !ip.is_loopback() && !is_link_local(ip))
        .collect();
    ips.sort();
    ips.dedup();
    tx.send_if_modified(|map| {
        if map.get(node) == Some(&ips) {
            return false;
        }
        map.insert(node.to_string(), ips);
        true
    });
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

#[derive(Default)]
struct ApplyState {
    /// Rebuilt at each resync, updated per change in between.
    compiler: Option<NodeCompiler>,
    names: PolicyNames,
    /// The table in the kernel; `None` when unknown (then it is replaced whole).
    applied: Option<PolicyTable>,
    ever_applied: bool,
    /// The applied table's counters: name → (metric labels, packets already counted).
    counters: HashMap<String, (DenyLabel, u64)>,
}

impl ApplyState {
    /// Whether nft ran: `Some(ok)`, or `None` when the table was already in force.
    async fn apply(
        &mut self,
        conf: &PolicyEnforcement,
        nft: &Arc<Nft>,
        board: &Board,
        view: &PolicyView,
        resync: bool,
    ) -> Option<bool> {
        let started = Instant::now();
        // A resync compiles afresh: a bug in the incremental path cannot last.
        let compiler = match self.compiler.take() {
            Some(mut c) if !resync => {
                c.update(&view.cluster);
                c
            }
            _ => NodeCompiler::new(&view.cluster, &conf.node),
        };
        let rules = compiler.rules();
        let table = PolicyTable::build(rules, &conf.render, &mut self.names);
        let metrics = &board.metrics;
        metrics
            .policy_compile_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.policies.set(view.cluster.policies.len() as i64);
        metrics.policy_rules.set(rule_count(rules) as i64);
        metrics
            .policy_rejected_objects
            .set(rules.rejected.len() as i64);
        // A resync applies again even when unchanged: someone may have removed the table.
        let (error, nft_ran) = if !resync && self.applied.as_ref() == Some(&table) {
            (None, None)
        } else {
            let error = self.apply_table(conf, nft, board, table, resync).await;
            let ok = error.is_none();
            (error, Some(ok))
        };
        let reason = match (&error, self.ever_applied) {
            (Some(e), false) => Some(format!("the policy table is not applied: {e}")),
            _ => None,
        };
        let rows = pod_rows(rules);
        let rejected = rules.rejected.iter().map(ToString::to_string).collect();
        board.update(|s| {
            s.network_policy = Some(PolicyStatus {
                table: conf.table.clone(),
                synced: true,
                applied: error.is_none(),
                policies: view.cluster.policies.len(),
                rules: rule_count(rules),
                rejected,
                last_error: error.clone(),
                pods: rows,
            });
            s.set_policy_reason(reason);
        });
        self.compiler = Some(compiler);
        nft_ran
    }

    /// Applies `table`: as a diff from the applied one when that is known and this is
    /// no resync, else whole. The error, if it failed.
    async fn apply_table(
        &mut self,
        conf: &PolicyEnforcement,
        nft: &Arc<Nft>,
        board: &Board,
        table: PolicyTable,
        resync: bool,
    ) -> Option<String> {
        let diff = self
            .applied
            .as_ref()
            .filter(|_| !resync)
            .and_then(|old| render_diff(&conf.table, old, &table));
        let whole = diff.is_none();
        // A replacement zeroes every counter and a diff may delete some: read them first.
        if diff.as_ref().is_none_or(|d| d.deletes_counters) {
            self.read_counters(nft, board).await;
        }
        let script = match diff {
            Some(d) => d.script,
            None => table.render_full(&conf.table),
        };
        let runner = nft.clone();
        let result = tokio::task::spawn_blocking(move || runner.run_script(&script)).await;
        let result = match result {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(format!("the nft task failed: {e}")),
        };
        board.metrics.count_policy_apply(result.is_ok());
        if let Err(e) = result {
            tracing::error!(table = %conf.table, error = %e, "applying the NetworkPolicy table failed; retrying on the next change or resync");
            self.applied = None;
            return Some(e);
        }
        if !self.ever_applied || whole {
            tracing::info!(table = %conf.table, chains = table.chains.len(),
                counters = table.counters.len(), "NetworkPolicy table applied whole");
        }
        self.ever_applied = true;
        // Counters a diff kept go on counting from what was read; new ones start at 0.
        let mut counters = HashMap::new();
        for c in &table.counters {
            let kept = self.counters.remove(&c.name).filter(|_| !whole);
            let entry = kept.unwrap_or_else(|| {
                let (namespace, policy) = c
                    .policy
                    .clone()
                    .map(|p| (p.namespace, p.name))
                    .unwrap_or_default();
                let label = DenyLabel {
                    namespace,
                    policy,
                    direction: c.direction.name().into(),
                };
                (label, 0)
            });
            counters.insert(c.name.clone(), entry);
        }
        self.counters = counters;
        self.applied = Some(table);
        None
    }

    /// Adds what the deny counters counted since the last read to the metrics.
    async fn read_counters(&mut self, nft: &Arc<Nft>, board: &Board) {
        if self.counters.is_empty() || self.applied.is_none() {
            return;
        }
        let runner = nft.clone();
        let read = match tokio::task::spawn_blocking(move || runner.counters()).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "the nft task failed");
                return;
            }
        };
        let read = match read {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the NetworkPolicy deny counters");
                return;
            }
        };
        for (name, packets) in read {
            if let Some((label, seen)) = self.counters.get_mut(&name) {
                let new = packets.saturating_sub(*seen);
                if new > 0 {
                    board.metrics.policy_denied.get_or_create(label).inc_by(new);
                }
                *seen = packets.max(*seen);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_the_registry_and_on_needs_kubernetes() {
        let kube = RegistryConf::Kubernetes { kubeconfig: None };
        let file = RegistryConf::File {
            dir: "/tmp/r".into(),
        };
        assert_eq!(PolicyMode::Auto.enabled(&kube), Ok(true));
        assert_eq!(PolicyMode::Auto.enabled(&file), Ok(false));
        assert_eq!(PolicyMode::Off.enabled(&kube), Ok(false));
        assert_eq!(PolicyMode::On.enabled(&kube), Ok(true));
        let e = PolicyMode::On.enabled(&file).unwrap_err();
        assert!(e.contains("--network-policy"), "{e}");
    }
}
