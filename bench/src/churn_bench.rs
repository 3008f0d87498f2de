//! `churn-bench`: issue 14 §5, churn without growth. One node whose `twill-agent` serves
//! the address store; `--cycles` ADD/DEL pairs of one pod (a new container ID each
//! time) through the plugin as a runtime calls it. Every `--every` cycles: the agent's
//! RSS and open file descriptors, the store's size on disk and its reservations. Passes
//! when no reservation is left and, after the first sample, RSS stays within 10 %, the
//! store ends no larger than it was in the first half (sled's log grows until it
//! reclaims segments) and the descriptors stay equal.

mod cli;
#[allow(dead_code)]
mod overlay_agent_probe;
#[allow(dead_code)]
mod overlay_proc;

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use twill_ipam::service::StoreClient;
use twill_tests::cluster::{Cluster, ClusterSpec};
use twill_tests::{CniCall, Netns, Plugin};

const USAGE: &str = "\
usage: churn-bench [options]   (as root; TWILL_PLUGIN=<plugin> to use another build)

  --cycles N   ADD/DEL pairs (default 10000)
  --every N    cycles between samples (default 1000)
";

struct Sample {
    cycles: usize,
    rss_kib: u64,
    fds: usize,
    store_bytes: u64,
    reservations: usize,
    veths: usize,
    elapsed: Duration,
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn sample(
    c: &Cluster,
    store: &StoreClient,
    agent: u32,
    cycles: usize,
    started: Instant,
) -> Result<Sample> {
    let rss_kib = overlay_agent_probe::status_kib(agent, "VmRSS")?;
    let fds = std::fs::read_dir(format!("/proc/{agent}/fd"))
        .context("the agent's fds")?
        .count();
    let host_veths = c.nodes[0]
        .ns
        .run(&["ip", "-o", "link", "show", "master", "twill0"]);
    Ok(Sample {
        cycles,
        rss_kib,
        fds,
        store_bytes: dir_bytes(&c.nodes[0].files.data_dir),
        // Through the agent's store service, as the plugin asks it.
        reservations: store
            .reservations()
            .context("the store's reservations")?
            .len(),
        veths: String::from_utf8_lossy(&host_veths.stdout).lines().count(),
        elapsed: started.elapsed(),
    })
}

fn run(cycles: usize, every: usize) -> Result<Vec<Sample>> {
    let mut c = Cluster::new(ClusterSpec {
        resync_secs: 30.0,
        ..ClusterSpec::with_nodes(1)
    });
    c.start_all();
    c.wait_ready(Duration::from_secs(30))
        .map_err(anyhow::Error::msg)?;
    let agent = c.nodes[0]
        .agent
        .as_ref()
        .map(|a| a.id())
        .context("no agent")?;
    let conf = c.plugin_conf(0).map_err(anyhow::Error::msg)?;
    let text = |key: &str| {
        conf[key]
            .as_str()
            .map(str::to_string)
            .context(key.to_string())
    };
    let store = StoreClient::new(
        Path::new(&text("dataDir")?).join(text("name")?),
        Some(text("storeSocket")?.into()),
    );
    let pod = Netns::new("churn");
    let plugin = Plugin::new(&c.nodes[0].ns);
    let started = Instant::now();
    let mut samples = vec![sample(&c, &store, agent, 0, started)?];
    for i in 0..cycles {
        let id = format!("churn-{i}");
        for command in ["ADD", "DEL"] {
            let out =
                plugin.call(&CniCall::new(command, &conf).container(&id, &pod.path(), "eth0"));
            if !out.success() {
                bail!("{command} of {id}: {} {}", out.stdout, out.stderr);
            }
        }
        if (i + 1) % every == 0 {
            let s = sample(&c, &store, agent, i + 1, started)?;
            eprintln!(
                "{:>6} cycles  RSS {:>6} KiB  fds {:>3}  store {:>8} B  reservations {}  veths {}  {:.0} s",
                s.cycles,
                s.rss_kib,
                s.fds,
                s.store_bytes,
                s.reservations,
                s.veths,
                s.elapsed.as_secs_f64()
            );
            samples.push(s);
        }
    }
    Ok(samples)
}

fn main() -> ExitCode {
    let (mut cycles, mut every) = (10_000, 1_000);
    if let Err(e) = cli::usize_flags(
        USAGE,
        &mut [("--cycles", &mut cycles), ("--every", &mut every)],
    ) {
        eprintln!("{e:#}");
        return ExitCode::from(2);
    }
    let samples = match run(cycles, every.max(1)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("churn-bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "| cycles | agent RSS | agent fds | store on disk | reservations | pod veths | elapsed |"
    );
    println!("|---|---|---|---|---|---|---|");
    for s in &samples {
        println!(
            "| {} | {:.1} MB | {} | {:.2} MB | {} | {} | {:.0} s |",
            s.cycles,
            s.rss_kib as f64 * 1024.0 / 1e6,
            s.fds,
            s.store_bytes as f64 / 1e6,
            s.reservations,
            s.veths,
            s.elapsed.as_secs_f64()
        );
    }
    // Flat after the first sample past zero: the first cycles warm caches and files up.
    let Some(first) = samples.get(1) else {
        return ExitCode::SUCCESS;
    };
    let last = samples.last().unwrap_or(first);
    let within = |a: u64, b: u64| b * 10 <= a * 11;
    // sled's log grows until its segments are reclaimed, then stays: no larger at the
    // end than the largest it was in the first half.
    let half = &samples[..samples.len().div_ceil(2)];
    let store_cap = half.iter().map(|s| s.store_bytes).max().unwrap_or(0);
    let checks = [
        ("no reservation left", last.reservations == 0),
        ("no pod interface left", last.veths == 0),
        (
            "RSS within 10 % of the first sample",
            within(first.rss_kib, last.rss_kib),
        ),
        (
            "store no larger than in the first half (+10 %)",
            within(store_cap, last.store_bytes),
        ),
        ("fds equal", first.fds == last.fds),
    ];
    let mut ok = true;
    for (what, pass) in checks {
        println!("{what}: {}", if pass { "ok" } else { "MISSED" });
        ok &= pass;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
