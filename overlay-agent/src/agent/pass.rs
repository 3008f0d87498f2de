//! One reconcile pass and the host setup around it: what the agent's loop runs on
//! every registry change, resync and retry.

use super::peer_table::PeerTable;
use super::AgentConf;
use crate::datapath::Datapath;
use crate::desired::{DesiredState, NextHop, Plan};
use crate::firewall::{Firewall, FirewallError, FirewallRules};
use crate::peers::{OwnNode, PeerSet, Rejected};
use crate::registry::Snapshot;
use crate::status::Board;
use crate::underlay::Underlay;
use ipnet::IpNet;
use std::collections::BTreeSet;
use std::time::Instant;
use twill_conf::cluster::DirectRouting;
use twill_conf::SubnetFile;

pub(super) struct LoopState<'a> {
    pub(super) conf: &'a AgentConf,
    pub(super) datapath: &'a Datapath,
    pub(super) firewall: &'a dyn Firewall,
    pub(super) firewall_rules: &'a FirewallRules,
    pub(super) subnet_file: &'a SubnetFile,
    pub(super) underlay: &'a Underlay,
    pub(super) board: &'a Board,
    /// What the kernel held after the last successful pass; `None` forces a dump.
    pub(super) cache: Option<DesiredState>,
    pub(super) device: Option<u32>,
    /// Why the firewall table is not in place, with what fixes it; `None` when it is.
    pub(super) firewall_problem: Option<String>,
    /// Why the CNI files or the VXLAN device are not in place; same form. The files'
    /// reason is set before the first pass (`host_setup`), so it starts out `None`.
    pub(super) files_problem: Option<String>,
    /// The last failure to turn forwarding on, so that it is logged once.
    pub(super) forwarding_failure: Option<String>,
    pub(super) device_problem: Option<String>,
    pub(super) rejected_before: BTreeSet<(String, String)>,
}

impl LoopState<'_> {
    /// Subnet file before conflist: a runtime that sees the conflist may call the
    /// plugin at once. Firewall rules ride along.
    pub(super) fn host_setup(&mut self) {
        let host = &self.conf.host;
        let files = host
            .write_subnet_file(self.subnet_file)
            .and_then(|a| host.write_conflist().map(|b| a || b));
        self.files_problem = match files {
            Ok(written) => {
                if written {
                    tracing::info!(subnet_file = %host.subnet_file.display(),
                        conflist = %host.conflist_path().display(), "wrote the CNI files");
                }
                (!host.files_current(self.subnet_file))
                    .then(|| "the subnet file or the CNI conflist is not written".to_string())
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot write the CNI files");
                self.board.metrics.reconcile_errors.inc();
                Some(format!(
                    "the CNI files are not written ({e}); the agent needs write access there \
                     (the DaemonSet's hostPath mounts)"
                ))
            }
        };
        self.ensure_forwarding();
        let metrics = &self.board.metrics;
        match self.firewall.apply(self.firewall_rules) {
            Ok(applied) => {
                if applied.repaired.is_some() {
                    metrics.firewall_repairs.inc();
                }
                self.firewall_problem = None;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot apply the firewall rules");
                metrics.reconcile_errors.inc();
                self.firewall_problem = Some(firewall_problem(&e));
            }
        }
        metrics
            .firewall_ok
            .set(i64::from(self.firewall_problem.is_none()));
    }

    /// Forwarding on for the node's families: pods on other nodes are reached through
    /// it. Something on the node turning it off (a sysctl reload, a restarted
    /// container engine) is put right here, at every resync. Not a readiness reason:
    /// in the DaemonSet `/proc/sys` is read-only (an unprivileged container), and the
    /// plugin, which runs on the host, turns forwarding on at every ADD and fails the
    /// ADD if it cannot. Logged once per distinct failure.
    fn ensure_forwarding(&mut self) {
        use twill_netlink::sysctl::{enable_forwarding, IpFamily};
        let subnets = &self.datapath.conf().own_subnets;
        let v6 = subnets.iter().any(|s| s.addr().is_ipv6());
        let families = [Some(IpFamily::V4), v6.then_some(IpFamily::V6)];
        let errors: Vec<String> = enable_forwarding(families.into_iter().flatten())
            .iter()
            .map(ToString::to_string)
            .collect();
        let failure = (!errors.is_empty()).then(|| errors.join("; "));
        if failure.is_some() && failure != self.forwarding_failure {
            tracing::warn!(
                error = failure.as_deref().unwrap_or_default(),
                "forwarding stays as it is; the plugin turns it on at each ADD"
            );
        }
        self.forwarding_failure = failure;
    }

    /// One reconcile pass; false when something failed (retried soon).
    pub(super) async fn pass(&mut self, snap: &Snapshot, full: bool) -> bool {
        let started = Instant::now();
        let mut ok = true;
        if full || self.device.is_none() || self.cache.is_none() {
            ok &= self.ensure_device().await;
        }
        let cached = if full { None } else { self.cache.take() };
        let have = match (self.device, cached) {
            (None, _) => None,
            (Some(_), Some(c)) => Some(c),
            (Some(dev), None) => match self.datapath.observe(dev).await {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the kernel state");
                    self.board.metrics.reconcile_errors.inc();
                    None
                }
            },
        };

        let own = OwnNode {
            name: self.conf.node.clone(),
            subnets: self.datapath.conf().own_subnets.clone(),
            cluster_networks: self.conf.cluster.cluster_cidrs(),
        };
        let programmed_subnets: BTreeSet<IpNet> = have
            .iter()
            .flat_map(|h| h.routes.iter())
            .filter(|(_, hop)| **hop != NextHop::Foreign)
            .map(|(dst, _)| *dst)
            .collect();
        let (peers, rejected) = PeerSet::validate(&own, &snap.records, &programmed_subnets);
        self.report_rejections(snap, &rejected);
        let direct = self.conf.cluster.backend.direct_routing == DirectRouting::Auto;
        let want = DesiredState::compute(&peers, &self.underlay.connected, direct);

        // What the kernel holds after this pass: known from the plan when it applied,
        // read back when it did not.
        let mut after = None;
        let mut observed = None;
        match (self.device, have) {
            (Some(dev), Some(have)) => {
                let plan = Plan::between(&want, &have, snap.complete);
                let mut applied_ok = true;
                if !plan.is_empty() {
                    let applied = self.datapath.apply(dev, &plan).await;
                    self.count(&plan);
                    if applied.errors.is_empty() {
                        tracing::info!(changes = applied.changes, full, "programmed");
                    } else {
                        applied_ok = false;
                        self.board
                            .metrics
                            .reconcile_errors
                            .inc_by(applied.errors.len() as u64);
                        for e in applied.errors.iter().take(5) {
                            tracing::error!(error = %e, "kernel change failed");
                        }
                    }
                    self.board
                        .metrics
                        .programming_latency
                        .observe(started.elapsed().as_secs_f64());
                }
                self.cache = None;
                if applied_ok {
                    // `want` for a complete view; for a partial one (a first list still
                    // arriving) also what it did not remove.
                    after = Some(have.after(&plan));
                } else {
                    observed = self.datapath.observe(dev).await.ok();
                }
                ok &= applied_ok;
            }
            _ => {
                ok = false;
                self.cache = None;
            }
        }
        let cache_ok = ok && self.device.is_some() && after.is_some();
        self.publish(
            snap,
            &peers,
            &rejected,
            &want,
            after.as_ref().or(observed.as_ref()),
        );
        if cache_ok {
            // What the kernel now holds: the next pass diffs against it.
            self.cache = after;
        }
        ok
    }

    async fn ensure_device(&mut self) -> bool {
        match self.datapath.ensure_device().await {
            Ok((index, created)) => {
                if created {
                    let name = &self.datapath.conf().name;
                    if self.device.is_some() {
                        tracing::warn!(device = %name, "the VXLAN device was gone or changed; recreated it");
                    } else {
                        tracing::info!(device = %name, "created the VXLAN device");
                    }
                    self.cache = None;
                }
                self.device = Some(index);
                self.device_problem = None;
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot set up the VXLAN device");
                self.board.metrics.reconcile_errors.inc();
                self.device = None;
                let text = e.to_string();
                let fix = if e.is_unsupported() {
                    "; the kernel has no VXLAN driver loaded (modprobe vxlan)"
                } else {
                    ""
                };
                self.device_problem = Some(format!(
                    "VXLAN device {} cannot be set up ({text}){fix}",
                    self.datapath.conf().name
                ));
                false
            }
        }
    }

    fn count(&self, plan: &Plan) {
        let m = &self.board.metrics;
        m.count_changes("route", plan.routes.put.len(), plan.routes.remove.len());
        m.count_changes(
            "neighbour",
            plan.neighbours.put.len(),
            plan.neighbours.remove.len(),
        );
        m.count_changes("fdb", plan.fdb.put.len(), plan.fdb.remove.len());
    }

    fn report_rejections(&mut self, snap: &Snapshot, rejected: &[Rejected]) {
        let now: BTreeSet<(String, String)> = rejected
            .iter()
            .map(|r| (r.node.clone(), r.reason.clone()))
            .chain(
                snap.malformed
                    .iter()
                    .map(|m| (m.source.clone(), m.reason.clone())),
            )
            .collect();
        for (who, why) in now.difference(&self.rejected_before) {
            tracing::warn!(record = %who, reason = %why, "rejected a registry record; it is not programmed");
            self.board.metrics.rejected_records.inc();
        }
        self.rejected_before = now;
    }

    fn publish(
        &self,
        snap: &Snapshot,
        peers: &PeerSet,
        rejected: &[Rejected],
        want: &DesiredState,
        programmed: Option<&DesiredState>,
    ) {
        let table = PeerTable::build(snap, peers, rejected, want, programmed);
        self.board
            .metrics
            .set_peers(table.programmed, table.pending, table.rejected);

        // What breaks a new pod's network here, then what only delays its peers.
        let mut pod_network = Vec::new();
        match (&self.device_problem, self.device) {
            (Some(p), _) => pod_network.push(p.clone()),
            (None, None) => pod_network.push(format!(
                "VXLAN device {} is not up",
                self.datapath.conf().name
            )),
            (None, Some(_)) => {}
        }
        pod_network.extend(self.files_problem.clone());
        pod_network.extend(self.firewall_problem.clone());
        let mut not_ready = pod_network.clone();
        if !snap.complete {
            not_ready.push("the registry has not been listed yet".into());
        }
        if table.pending > 0 {
            not_ready.push(format!("{} peer(s) not programmed", table.pending));
        }
        self.board.update(|s| {
            s.peers = table.rows;
            s.set_overlay_reasons(not_ready, true);
            s.set_pod_network_problems(pod_network);
        });
    }
}

/// A not-ready reason for a firewall that could not be put in place: what failed and
/// what usually fixes it. Without the table, pods lose their egress (no masquerade)
/// and, behind a FORWARD drop policy, each other.
fn firewall_problem(e: &FirewallError) -> String {
    let fix = match e {
        FirewallError::Spawn { .. } => "install the nftables package (apt-get install nftables)",
        FirewallError::Nft { stderr, .. } if stderr.contains("Operation not permitted") => {
            "run the agent with CAP_NET_ADMIN (the DaemonSet's securityContext)"
        }
        FirewallError::Nft { .. } => {
            "check that the kernel has nf_tables with NAT (modprobe nf_tables nft_chain_nat)"
        }
        FirewallError::Output { .. } | FirewallError::TableName(_) => "see the agent's log",
    };
    format!("firewall table not in place ({e}); {fix}")
}
