//! Convergence against simulated peers: one node namespace with an agent on the file
//! registry, and N peer records (records only, no real nodes) written before it starts.
//!
//! - start → all N routes programmed: from just before the agent is spawned to the
//!   route notification that completes the set of N peer routes (`proto 71`, main
//!   table), read from an RTNLGRP_IPV4_ROUTE subscription in the node namespace, then
//!   confirmed with a dump. If the subscription overflows, it falls back to dumping
//!   every 10 ms. The agent applies FDB, then neighbour entries, then routes, so the
//!   last route means everything is in.
//! - reference: the same 3N entries (FDB, neighbour, route) installed by `bridge -batch`
//!   and `ip -batch` into a fresh namespace with the same VXLAN device: the kernel's own
//!   cost plus the thinnest userspace, one request at a time.
//! - record → route: with the N peers programmed, a new record is written (temp file in
//!   the registry directory, then rename, as `twill_conf::atomic` does) and timed from
//!   just before the rename to its route's notification; then it is removed, timed to
//!   the route's removal. 50-150 ms of jitter separate the steps.
//! - resident memory (VmRSS, VmHWM) and CPU while idle (utime+stime from
//!   /proc/<pid>/stat over a window, the agent's own and its reaped children's, i.e. the
//!   `nft` runs of a resync).
//!
//! The peers and their records are in `overlay_sim_peers`; the reference batch in
//! `overlay_converge_floor`.

use crate::overlay_agent_probe::{cpu_ticks, metric, phases, status_kib};
use crate::overlay_converge_floor;
use crate::overlay_proc::{self, check_stop};
use crate::overlay_rtnl::{Prefix, RouteSocket, RT_TABLE_MAIN};
use crate::overlay_sim_peers::{record, subnet, NETWORK, PROTO};
use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use twill_tests::cluster::{tail, Cluster, ClusterSpec, RegistryKind};

/// Subnet indexes of the records added one at a time (far above any peer's).
const ADD_BASE: u32 = 60_000;
/// Most peers and single records (their subnet indexes stay below 65,536).
pub const MAX_PEERS: usize = 50_000;
pub const MAX_ADDS: usize = 5_000;
/// Pause after namespaces were deleted, before the next timing.
const SETTLE: Duration = Duration::from_secs(1);

pub struct ConvSpec {
    pub peers: Vec<usize>,
    pub runs: usize,
    pub adds: usize,
    pub idle: Duration,
    pub resync_secs: f64,
    pub timeout: Duration,
}

pub struct ConvRun {
    pub peers: usize,
    pub elapsed: Duration,
    /// The same entries through `bridge -batch` + `ip -batch`.
    pub floor: Duration,
    pub method: &'static str,
    /// (event, ms after the spawn) from the agent's log.
    pub phases: Vec<(String, f64)>,
    /// `changes=` of the first "programmed" line.
    pub first_changes: Option<u64>,
}

#[derive(Default)]
pub struct Trials {
    pub peers: usize,
    pub add: Vec<Duration>,
    pub del: Vec<Duration>,
    pub timeouts: usize,
    /// The agent's CPU time (user+sys) over the trials, per record change (add or
    /// remove); the registry's 5 s rescans in that time are included.
    pub cpu_per_change: Duration,
}

pub struct Resources {
    pub peers: usize,
    pub rss_kib_converged: u64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub threads: u64,
    pub window: Duration,
    pub cpu_pct: f64,
    pub children_cpu_pct: f64,
    pub resyncs_in_window: Option<u64>,
    pub resync_secs: f64,
}

pub struct ConvResults {
    pub runs: Vec<ConvRun>,
    pub trials: Trials,
    pub resources: Resources,
}

/// A node with its agent, and the route sockets in its namespace. Field order is drop
/// order; the cluster (agent, namespaces, directory) goes last.
struct ConvNode {
    monitor: RouteSocket,
    dump: RouteSocket,
    registry: PathBuf,
    peers: usize,
    cluster: Cluster,
}

impl ConvNode {
    fn pid(&self) -> Result<u32> {
        self.cluster.nodes[0]
            .agent
            .as_ref()
            .map(|c| c.id())
            .context("the agent is not running")
    }

    fn check_alive(&mut self) -> Result<()> {
        let node = &mut self.cluster.nodes[0];
        if let Some(child) = node.agent.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "the agent exited ({status}); its log:\n{}",
                    tail(&node.log(), 20)
                );
            }
        }
        Ok(())
    }

    /// Makes `change` (a registry file written or removed) and times it to the route to
    /// `dst` appearing (`new`) or going; `None` after `limit`.
    fn time_route(
        &mut self,
        dst: Prefix,
        new: bool,
        limit: Duration,
        change: impl FnOnce() -> std::io::Result<()>,
    ) -> Result<Option<Duration>> {
        self.monitor.drain()?;
        let t0 = Instant::now();
        change()?;
        Ok(self
            .wait_route(dst, new, limit)?
            .map(|at| at.saturating_duration_since(t0)))
    }

    /// Waits for the route to `dst` to appear (`new`) or go; when it happened.
    fn wait_route(&mut self, dst: Prefix, new: bool, limit: Duration) -> Result<Option<Instant>> {
        let deadline = Instant::now() + limit;
        loop {
            check_stop()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let b = self.monitor.wait(left.min(Duration::from_millis(200)))?;
            if b.routes.iter().any(|r| {
                r.dst == dst && r.protocol == PROTO && r.table == RT_TABLE_MAIN && r.new == new
            }) {
                return Ok(Some(b.at));
            }
            if b.overflow {
                let present = self
                    .dump
                    .dump()?
                    .iter()
                    .any(|r| r.dst == dst && r.protocol == PROTO && r.table == RT_TABLE_MAIN);
                if present == new {
                    return Ok(Some(Instant::now()));
                }
            }
            self.check_alive()?;
        }
    }
}

fn spec_for(resync_secs: f64) -> ClusterSpec {
    ClusterSpec {
        nodes: 1,
        segments: 1,
        network: NETWORK.into(),
        subnet_len: 24,
        direct_routing: false,
        registry: RegistryKind::File,
        resync_secs,
        ip_masq: true,
        checksum_offload: None,
        mtu: 1500,
        agents_die_with_parent: true,
    }
}

/// One cold start against `n` peers.
fn converge(n: usize, spec: &ConvSpec) -> Result<(ConvNode, ConvRun)> {
    let mut cluster = Cluster::new(spec_for(spec.resync_secs));
    let registry = cluster.dir.path().join("registry");
    std::fs::create_dir_all(&registry)?;
    for i in 1..=n as u32 {
        let name = format!("peer-{i:05}");
        std::fs::write(registry.join(format!("{name}.json")), record(&name, i, i))
            .context("writing a peer record")?;
    }
    let ns_path = PathBuf::from(cluster.nodes[0].ns.path());
    let monitor = RouteSocket::monitor_in(&ns_path)?;
    let dump = RouteSocket::dump_in(&ns_path)?;
    check_stop()?;

    let wall0 = SystemTime::now();
    let t0 = Instant::now();
    cluster.start_agent(0);
    let mut node = ConvNode {
        monitor,
        dump,
        registry,
        peers: n,
        cluster,
    };
    let mut seen: HashSet<Prefix> = HashSet::new();
    let mut method = "route notifications";
    let deadline = t0 + spec.timeout;
    let done = loop {
        check_stop()?;
        if method == "route notifications" {
            let b = node.monitor.wait(Duration::from_millis(10))?;
            for r in &b.routes {
                if r.protocol == PROTO && r.table == RT_TABLE_MAIN {
                    if r.new {
                        seen.insert(r.dst);
                    } else {
                        seen.remove(&r.dst);
                    }
                }
            }
            if seen.len() >= n {
                break b.at;
            }
            if b.overflow {
                method = "10 ms dump poll (notifications overflowed)";
            }
        } else {
            let count = node.dump.count_protocol(PROTO)?;
            let at = Instant::now();
            if count >= n {
                break at;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        node.check_alive()?;
        if Instant::now() > deadline {
            let have = node.dump.count_protocol(PROTO)?;
            bail!(
                "{have} of {n} routes after {:?}; agent log:\n{}",
                spec.timeout,
                tail(&node.cluster.nodes[0].log(), 20)
            );
        }
    };
    let elapsed = done - t0;
    let have = node.dump.count_protocol(PROTO)?;
    if have != n {
        bail!("notifications said {n} routes, a dump finds {have}");
    }
    // The agent logs "programmed" once its pass returns, just after the last route.
    let log_deadline = Instant::now() + Duration::from_secs(2);
    while !node.cluster.nodes[0]
        .log()
        .contains(": programmed changes=")
        && Instant::now() < log_deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (phases, first_changes) = phases(&node.cluster.nodes[0].log(), wall0);
    Ok((
        node,
        ConvRun {
            peers: n,
            elapsed,
            floor: Duration::ZERO,
            method,
            phases,
            first_changes,
        },
    ))
}

/// xorshift, for jitter between trials.
struct Jitter(u64);

impl Jitter {
    fn next(&mut self, lo_ms: u64, hi_ms: u64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(lo_ms + self.0 % (hi_ms - lo_ms + 1))
    }
}

fn trials(node: &mut ConvNode, count: usize, limit: Duration) -> Result<Trials> {
    let mut t = Trials {
        peers: node.peers,
        ..Trials::default()
    };
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64 | 1);
    let mut jitter = Jitter(seed);
    overlay_proc::sleep(Duration::from_millis(500))?;
    let pid = node.pid()?;
    let (cpu0, _) = cpu_ticks(pid)?;
    for k in 0..count as u32 {
        let name = format!("add-{k:04}");
        let idx = ADD_BASE + k;
        let dst = subnet(idx);
        let path = node.registry.join(format!("{name}.json"));
        let tmp = node.registry.join(format!(".{name}.json.tmp"));
        std::fs::write(&tmp, record(&name, idx, 1_000_000 + k))?;
        let added = node.time_route(dst, true, limit, || std::fs::rename(&tmp, &path))?;
        t.add.push(added.unwrap_or(limit));
        overlay_proc::sleep(jitter.next(50, 150))?;
        let removed = node.time_route(dst, false, limit, || std::fs::remove_file(&path))?;
        t.del.push(removed.unwrap_or(limit));
        t.timeouts += usize::from(added.is_none()) + usize::from(removed.is_none());
        overlay_proc::sleep(jitter.next(50, 150))?;
    }
    let (cpu1, _) = cpu_ticks(pid)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let changes = (2 * count).max(1) as f64;
    t.cpu_per_change = Duration::from_secs_f64((cpu1 - cpu0) as f64 / hz / changes);
    Ok(t)
}

fn resources(
    node: &ConvNode,
    rss_converged: u64,
    idle: Duration,
    resync_secs: f64,
) -> Result<Resources> {
    let pid = node.pid()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "twill-agent" {
        bail!("pid {pid} is {:?}, not the agent", comm.trim());
    }
    overlay_proc::sleep(Duration::from_secs(1))?;
    let resyncs0 = metric(&node.cluster.nodes[0].ns, "twill_resyncs_total");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let (s0, c0) = cpu_ticks(pid)?;
    let t0 = Instant::now();
    overlay_proc::sleep(idle)?;
    let (s1, c1) = cpu_ticks(pid)?;
    let window = t0.elapsed();
    let resyncs1 = metric(&node.cluster.nodes[0].ns, "twill_resyncs_total");
    let pct = |ticks: u64| ticks as f64 / hz / window.as_secs_f64() * 100.0;
    Ok(Resources {
        peers: node.peers,
        rss_kib_converged: rss_converged,
        rss_kib: status_kib(pid, "VmRSS")?,
        hwm_kib: status_kib(pid, "VmHWM")?,
        threads: status_kib(pid, "Threads").unwrap_or(0),
        window,
        cpu_pct: pct(s1 - s0),
        children_cpu_pct: pct(c1 - c0),
        resyncs_in_window: resyncs0.zip(resyncs1).map(|(a, b)| b.saturating_sub(a)),
        resync_secs,
    })
}

pub fn measure(spec: &ConvSpec) -> Result<ConvResults> {
    let mut peers = spec.peers.clone();
    peers.sort_unstable();
    let mut runs = Vec::new();
    let mut kept: Option<ConvNode> = None;
    // Sizes interleaved run by run; the last run of the largest size stays up for the
    // per-record trials and the resource figures.
    for r in 0..spec.runs {
        for &n in &peers {
            eprintln!(
                "overlay-bench: convergence, {n} peers, run {}/{}...",
                r + 1,
                spec.runs
            );
            drop(kept.take());
            // The kernel tears deleted namespaces (the previous run's, the paths') down
            // in a worker thread: let it finish before the next timing.
            overlay_proc::sleep(SETTLE)?;
            let (node, mut run) = converge(n, spec)?;
            run.floor = overlay_converge_floor::kernel_floor(n, node.cluster.dir.path())?;
            eprintln!(
                "overlay-bench:   {n} routes after {:.1} ms ({}); bridge/ip -batch: {:.1} ms",
                run.elapsed.as_secs_f64() * 1e3,
                run.method,
                run.floor.as_secs_f64() * 1e3
            );
            runs.push(run);
            kept = Some(node);
        }
    }
    let mut node = kept.context("no convergence run")?;
    let rss_converged = status_kib(node.pid()?, "VmRSS")?;
    eprintln!(
        "overlay-bench: {} single records added and removed at {} peers...",
        spec.adds, node.peers
    );
    let trials = trials(&mut node, spec.adds, Duration::from_secs(5))?;
    eprintln!(
        "overlay-bench: memory, and CPU over {:.0} s idle...",
        spec.idle.as_secs_f64()
    );
    let resources = resources(&node, rss_converged, spec.idle, spec.resync_secs)?;
    drop(node);
    Ok(ConvResults {
        runs,
        trials,
        resources,
    })
}
