//! The agent's life: join the registry, set up the host, then reconcile the kernel
//! against the registry on every change and on a periodic resync.
//!
//! One pass (in `pass`): snapshot → [`PeerSet::validate`] → [`DesiredState::compute`]
//! → [`Plan`] against what the kernel has (a cache of the last successful pass between
//! resyncs; a fresh dump on resync and after any error) → [`Datapath::apply`]; the peer
//! table for `/status` is built from its outcome (pure, in `peer_table`). This file is
//! the startup and the loop around the passes.
//!
//! [`PeerSet::validate`]: crate::peers::PeerSet::validate
//! [`DesiredState::compute`]: crate::desired::DesiredState::compute
//! [`Plan`]: crate::desired::Plan

mod pass;
mod peer_table;

use self::pass::LoopState;
use crate::datapath::{device_name, Datapath, DeviceConf};
use crate::firewall::{Firewall, FirewallRules, VxlanTraffic};
use crate::host::HostPaths;
use crate::record::Mac;
use crate::registry::{Announcement, Registry, RegistryError, Snapshot};
use crate::status::Board;
use crate::underlay::{self, Underlay};
use std::collections::BTreeSet;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use twill_conf::cluster::Mtu;
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
        s.set_overlay_reasons(vec!["joining the registry".into()], false);
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
                    board.update(|s| s.set_overlay_reasons(vec![msg], false));
                    board.beat();
                }
            },
            _ = &mut shutdown => return Ok(()),
        }
        backoff.wait().await;
    };
    tracing::info!(subnets = ?subnets, "joined the registry");
    board.update(|s| s.subnets = subnets.clone());

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
        firewall_problem: None,
        files_problem: None,
        forwarding_failure: None,
        device_problem: None,
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
