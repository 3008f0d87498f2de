//! The agent's life: join the registry, set up the host, then reconcile the kernel
//! against the registry on every change and on a periodic resync.
//!
//! One pass: snapshot → [`PeerSet::validate`] → [`DesiredState::compute`] → [`Plan`]
//! against what the kernel has (a cache of the last successful pass between resyncs; a
//! fresh dump on resync and after any error) → [`Datapath::apply`].

use crate::datapath::{device_name, Datapath, DeviceConf};
use crate::desired::{DesiredState, NextHop, Plan};
use crate::firewall::{Firewall, FirewallRules, VxlanTraffic};
use crate::host::HostPaths;
use crate::peers::{OwnNode, PeerSet};
use crate::record::Mac;
use crate::registry::{Announcement, Registry, RegistryError, Snapshot};
use crate::status::{Board, Mode, PeerStatus};
use crate::underlay::{self, Underlay};
use ipnet::IpNet;
use std::collections::BTreeSet;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use twill_conf::cluster::{DirectRouting, Mtu};
use twill_conf::{ClusterConf, SubnetFile};
use twill_netlink::Netlink;

#[derive(Debug, Clone)]
pub struct AgentConf {
    pub node: String,
    pub cluster: ClusterConf,
    pub iface: Option<String>,
    pub public_ip: Option<IpAddr>,
    pub host: HostPaths,
    pub resync: Duration,
    /// A name for the registry in `status` output.
    pub registry_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("netlink: {0}")]
    Netlink(#[from] twill_netlink::NetlinkError),
    #[error("underlay: {0}")]
    Underlay(#[from] underlay::UnderlayError),
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
}

/// How long to wait before retrying a failed step.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_millis(200))
    }
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(10));
    }
}

/// The node's identity on the underlay.
pub async fn announce(
    nl: &Netlink,
    conf: &AgentConf,
) -> Result<(Underlay, Announcement), AgentError> {
    let underlay = underlay::detect(nl, conf.iface.as_deref(), conf.public_ip).await?;
    let ann = Announcement {
        node: conf.node.clone(),
        public_ip: underlay.ip,
        vtep_mac: Mac::for_node(&conf.node, conf.cluster.backend.vni),
    };
    Ok((underlay, ann))
}

/// Runs until `shutdown` resolves. The data path is left in place on return: pods keep
/// talking while the agent restarts.
pub async fn run(
    conf: AgentConf,
    registry: Arc<dyn Registry>,
    firewall: Box<dyn Firewall>,
    board: Arc<Board>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    tokio::pin!(shutdown);
    let nl = Netlink::connect()?;
    let (underlay, ann) = announce(&nl, &conf).await?;
    let backend = &conf.cluster.backend;
    let mtu = match backend.mtu {
        Mtu::Fixed(m) => m,
        Mtu::Auto => underlay::vxlan_mtu(underlay.mtu, underlay.ip),
    };
    board.update(|s| {
        s.node = conf.node.clone();
        s.public_ip = Some(underlay.ip);
        s.device = device_name(backend.vni);
        s.vtep_mac = ann.vtep_mac.to_string();
        s.mtu = mtu;
        s.registry = conf.registry_name.clone();
        s.not_ready = vec!["joining the registry".into()];
    });
    tracing::info!(node = %conf.node, underlay = %underlay.name, ip = %underlay.ip, mtu,
        "starting");

    let mut backoff = Backoff::new();
    let subnets = loop {
        tokio::select! {
            r = registry.join(&ann) => match r {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot join the registry yet; retrying");
                    let msg = format!("no subnet yet: {e}");
                    board.update(|s| s.not_ready = vec![msg]);
                    board.beat();
                }
            },
            _ = &mut shutdown => return Ok(()),
        }
        backoff.wait().await;
    };
    tracing::info!(subnets = ?subnets, "joined the registry");
    board.update(|s| s.subnets = subnets.clone());

    use twill_netlink::sysctl::IpFamily;
    let v6 = subnets.iter().any(|s| s.addr().is_ipv6());
    let families = [Some(IpFamily::V4), v6.then_some(IpFamily::V6)];
    for e in twill_netlink::sysctl::enable_forwarding(families.into_iter().flatten()) {
        tracing::warn!(key = e.key, error = %e.source, "cannot enable forwarding");
    }

    let datapath = Datapath::new(
        nl.clone(),
        DeviceConf {
            name: device_name(backend.vni),
            vni: backend.vni,
            port: backend.port,
            local: underlay.ip,
            underlay_index: underlay.index,
            mac: ann.vtep_mac,
            mtu,
            checksum_offload: backend.checksum_offload,
            own_subnets: subnets.clone(),
        },
    );
    let subnet_file = SubnetFile {
        networks: conf.cluster.cluster_cidrs(),
        subnets: subnets.clone(),
        mtu: Some(mtu),
        ip_masq: conf.cluster.ip_masq,
    };
    let firewall_rules = FirewallRules {
        cluster_networks: conf.cluster.cluster_cidrs(),
        ip_masq: conf.cluster.ip_masq,
        vxlan: Some(VxlanTraffic {
            port: backend.port,
            vni: backend.vni,
        }),
    };

    let (tx, mut rx) = watch::channel(Snapshot::default());
    let watcher = registry.clone();
    let watch_task = tokio::spawn(async move {
        let mut backoff = Backoff::new();
        loop {
            match watcher.watch(tx.clone()).await {
                Ok(()) if tx.is_closed() => return,
                Ok(()) => {}
                Err(e) => tracing::warn!(error = %e, "registry watch failed; restarting it"),
            }
            backoff.wait().await;
        }
    });
    let keeper = registry.clone();
    let keep_ann = ann.clone();
    let (lost_tx, mut lost_rx) = watch::channel(None::<String>);
    let keep_task = tokio::spawn(async move {
        let mut backoff = Backoff::new();
        loop {
            match keeper.keep_alive().await {
                Ok(()) => {
                    tracing::warn!("this node's registry entry was lost; publishing it again")
                }
                Err(e) => tracing::warn!(error = %e, "keeping the registry lease failed"),
            }
            match keeper.join(&keep_ann).await {
                Ok(s) if s == subnets => {
                    tracing::info!("joined again with the same subnets");
                }
                Ok(s) => {
                    let _ = lost_tx.send(Some(format!(
                        "the registry gave this node other subnets ({s:?}) after its lease was lost"
                    )));
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "joining again failed; retrying");
                    backoff.wait().await;
                }
            }
        }
    });

    let mut state = LoopState {
        conf: &conf,
        datapath: &datapath,
        firewall: firewall.as_ref(),
        firewall_rules: &firewall_rules,
        subnet_file: &subnet_file,
        underlay: &underlay,
        board: &board,
        cache: None,
        device: None,
        files_ok: false,
        rejected_before: BTreeSet::new(),
    };
    state.host_setup();
    let mut resync = tokio::time::interval(conf.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut ready_task = None;
    let result = loop {
        let full = tokio::select! {
            r = rx.changed() => {
                if r.is_err() {
                    break Ok(());
                }
                false
            }
            _ = resync.tick() => true,
            _ = async { tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)).await }, if retry_at.is_some() => true,
            _ = lost_rx.changed() => {
                let why = lost_rx.borrow().clone().unwrap_or_default();
                tracing::error!("{why}; exiting so that the node starts over");
                break Err(AgentError::Registry(RegistryError::Invalid(why)));
            }
            _ = &mut shutdown => break Ok(()),
        };
        let snapshot = rx.borrow_and_update().clone();
        if full {
            board.metrics.resyncs.inc();
            state.host_setup();
        }
        let ok = state.pass(&snapshot, full).await;
        retry_at = (!ok).then(|| tokio::time::Instant::now() + Duration::from_secs(1));
        board.beat();
        if ready_task.is_none() && board.is_ready() {
            ready_task = Some(tokio::spawn(report_ready(registry.clone())));
        }
    };
    watch_task.abort();
    keep_task.abort();
    if let Some(t) = ready_task {
        t.abort();
    }
    tracing::info!("stopping; the data path stays in place");
    result
}

/// Tells the registry, once, that this node's network is up (retried until it
/// succeeds: the API server may be away).
async fn report_ready(registry: Arc<dyn Registry>) {
    let mut backoff = Backoff::new();
    loop {
        match registry.ready().await {
            Ok(()) => {
                tracing::info!("reported this node's network as ready to the registry");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "cannot report readiness yet; retrying"),
        }
        backoff.wait().await;
    }
}

struct LoopState<'a> {
    conf: &'a AgentConf,
    datapath: &'a Datapath,
    firewall: &'a dyn Firewall,
    firewall_rules: &'a FirewallRules,
    subnet_file: &'a SubnetFile,
    underlay: &'a Underlay,
    board: &'a Board,
    /// What the kernel held after the last successful pass; `None` forces a dump.
    cache: Option<DesiredState>,
    device: Option<u32>,
    files_ok: bool,
    rejected_before: BTreeSet<(String, String)>,
}

impl LoopState<'_> {
    /// Subnet file before conflist: a runtime that sees the conflist may call the
    /// plugin at once. Firewall rules ride along.
    fn host_setup(&mut self) {
        let host = &self.conf.host;
        let files = host
            .write_subnet_file(self.subnet_file)
            .and_then(|a| host.write_conflist().map(|b| a || b));
        match files {
            Ok(true) => tracing::info!(subnet_file = %host.subnet_file.display(),
                conflist = %host.conflist_path().display(), "wrote the CNI files"),
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot write the CNI files");
                self.board.metrics.reconcile_errors.inc();
            }
        }
        self.files_ok = host.files_current(self.subnet_file);
        if let Err(e) = self.firewall.apply(self.firewall_rules) {
            tracing::error!(error = %e, "cannot apply the firewall rules");
            self.board.metrics.reconcile_errors.inc();
        }
    }

    /// One reconcile pass; false when something failed (retried soon).
    async fn pass(&mut self, snap: &Snapshot, full: bool) -> bool {
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

        let mut programmed = None;
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
                if !(applied_ok && snap.complete) {
                    programmed = self.datapath.observe(dev).await.ok();
                }
                ok &= applied_ok;
            }
            _ => {
                ok = false;
                self.cache = None;
            }
        }
        let cache_ok = ok && snap.complete && self.device.is_some() && programmed.is_none();
        self.publish(
            snap,
            &peers,
            &rejected,
            &want,
            if cache_ok {
                Some(&want)
            } else {
                programmed.as_ref()
            },
        );
        if cache_ok {
            // What the kernel now holds is exactly `want`: the next pass diffs against it.
            self.cache = Some(want);
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
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot set up the VXLAN device");
                self.board.metrics.reconcile_errors.inc();
                self.device = None;
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

    fn report_rejections(&mut self, snap: &Snapshot, rejected: &[crate::peers::Rejected]) {
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
        rejected: &[crate::peers::Rejected],
        want: &DesiredState,
        programmed: Option<&DesiredState>,
    ) {
        let mut rows = Vec::new();
        let (mut n_ok, mut n_pending) = (0, 0);
        for p in peers.peers.values() {
            let direct = p
                .subnets
                .iter()
                .all(|s| matches!(want.routes.get(s), Some(NextHop::Direct { .. })));
            let done = programmed.is_some_and(|have| {
                p.subnets.iter().all(|s| {
                    let r = want.routes.get(s);
                    r.is_some() && have.routes.get(s) == r && {
                        let vtep = s.network();
                        match want.neighbours.get(&vtep) {
                            None => true,
                            Some(mac) => {
                                have.neighbours.get(&vtep) == Some(mac)
                                    && have.fdb.get(mac) == want.fdb.get(mac)
                            }
                        }
                    }
                })
            });
            if done {
                n_ok += 1;
            } else {
                n_pending += 1;
            }
            rows.push(PeerStatus {
                node: p.node.clone(),
                subnets: p.subnets.clone(),
                public_ip: Some(p.public_ip),
                mode: if direct { Mode::Direct } else { Mode::Vxlan },
                programmed: done,
                reason: None,
            });
        }
        for r in rejected {
            let rec = snap.records.iter().find(|x| x.node == r.node);
            rows.push(PeerStatus {
                node: r.node.clone(),
                subnets: rec.map(|x| x.subnets.clone()).unwrap_or_default(),
                public_ip: rec.map(|x| x.public_ip),
                mode: Mode::Rejected,
                programmed: false,
                reason: Some(r.reason.clone()),
            });
        }
        for m in &snap.malformed {
            rows.push(PeerStatus {
                node: m.source.clone(),
                subnets: Vec::new(),
                public_ip: None,
                mode: Mode::Rejected,
                programmed: false,
                reason: Some(m.reason.clone()),
            });
        }
        let n_rejected = rejected.len() + snap.malformed.len();
        self.board.metrics.set_peers(n_ok, n_pending, n_rejected);

        let mut not_ready = Vec::new();
        if self.device.is_none() {
            not_ready.push(format!(
                "VXLAN device {} is not up",
                self.datapath.conf().name
            ));
        }
        if !snap.complete {
            not_ready.push("the registry has not been listed yet".into());
        }
        if n_pending > 0 {
            not_ready.push(format!("{n_pending} peer(s) not programmed"));
        }
        if !self.files_ok {
            not_ready.push("the subnet file or the CNI conflist is not written".into());
        }
        self.board.update(|s| {
            s.peers = rows;
            s.ready = not_ready.is_empty();
            s.not_ready = not_ready;
        });
    }
}
