//! NetworkPolicy enforcement on this node: the [`PolicySource`]'s snapshots are compiled
//! for this node (by a `NodeCompiler`, which redoes only what a change touches),
//! rendered as table `inet <firewall table>_policy` and applied in one `nft -f -`
//! transaction each (all or nothing: a failed apply leaves the previous table whole).
//! A change is applied as a diff against the table in the kernel; the first apply and
//! the apply after a failure replace the table whole. A resync renders the table and
//! replaces it only if it differs from the applied one or the kernel's listing drifted
//! since the last whole apply (a diff since then counts as drift); every tenth resync
//! also compiles afresh. An event that
//! leaves this node's rules as they were renders nothing. A failure is logged and
//! retried on the next snapshot or resync.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apply::{ApplyState, Resync, FRESH_EVERY};
use tokio::sync::{mpsc, watch};
use twill_conf::RegistryConf;

use super::admit::{Admissions, AdmitEvent};
use super::{NodeIps, PendingSince, PolicySource, PolicyView};
use crate::firewall::policy::PolicyRenderOptions;
use crate::firewall::Nft;
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
    let mut resyncs: u64 = 0;
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
        // An admission's deadline, or a view that brought nothing new: already in force.
        if !resync && state.in_force(&view, admissions.revision()) {
            admissions.answer_due(true, Instant::now());
            continue;
        }
        let overlaid = admissions.overlay(&view, &conf.node);
        let pass = match (resync, resyncs % FRESH_EVERY) {
            (false, _) => Resync::No,
            (true, 0) => Resync::Fresh,
            (true, _) => Resync::Check,
        };
        resyncs += u64::from(resync);
        let nft_ran = state.apply(&conf, &nft, &board, &overlaid.view, pass).await;
        state.source = (nft_ran != Some(false) && state.applied.is_some())
            .then(|| (view.cluster.clone(), admissions.revision()));
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

mod apply;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_the_registry_and_on_needs_kubernetes() {
        let kube = RegistryConf::Kubernetes {
            kubeconfig: None,
            records: Default::default(),
        };
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
