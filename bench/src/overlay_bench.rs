//! `overlay-bench`: the agent's data path and control plane on this machine, in one run.
//!
//! 1. Throughput (iperf3, one TCP stream) and latency (ping) over ten paths that exist
//!    side by side, measured in interleaved rounds (medians reported): Twill's VXLAN pod
//!    path against a hand-built VXLAN pod path of the same shape and firewall state, and
//!    Twill's direct-routed pod path against a hand-built one, with the underlay as the
//!    physical anchor (see `overlay_paths`).
//! 2. Convergence against simulated peers on the file registry: agent start → N routes,
//!    one new record → its route, resident memory, idle CPU (see `overlay_converge`).
//!
//! Everything runs in namespaces this process creates (never the root namespace), and
//! they are deleted on exit, on error, on panic, and after SIGINT/SIGTERM (the signal
//! only sets a flag; the run then fails at its next step and unwinds).
//!
//! Exits non-zero when a step fails; a missed target is reported, not fatal.

// Only the percentile helpers of the plugin benchmark's report are used here.
#[allow(dead_code)]
mod report;

mod overlay_converge;
mod overlay_manual;
mod overlay_paths;
mod overlay_proc;
mod overlay_report;
mod overlay_rtnl;

use anyhow::{bail, Context, Result};
use overlay_converge::{ConvResults, ConvSpec};
use overlay_paths::{PathId, PathResults, PathSpec, ALL};
use overlay_report::{median, Row, Target, Unit};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "\
usage: overlay-bench [options]   (as root)

  --quick               smoke run: 2 rounds of 2 s, 1,000 peers only, 1 convergence run,
                        20 single records, 3 s idle window
  --reps N              interleaved rounds per path, throughput and latency (default 7)
  --seconds S           iperf3 duration per measurement (default 3)
  --pings N             pings per latency measurement, 2 ms apart (default 200)
  --peers N[,N...]      simulated peer counts (default 1000,5000)
  --runs R              cold starts per peer count; the median is reported (default 3)
  --adds K              single records added (then removed) one at a time (default 100)
  --idle-secs S         window for the idle CPU figure (default 10)
  --resync S            the agents' --resync, in seconds (default 30, the agent's own
                        default, so that resyncs do not dominate the idle figure)
  --only WHAT           run only `paths` (throughput, latency) or `convergence`
  --hold S              after building the paths, print their namespaces and wait S
                        seconds (to inspect them by hand)
  --bin-dir DIR         where twill-agent and twill are (default: next to this binary,
                        else the workspace's target/release); sets TWILL_BIN_DIR
  --json                print the results as JSON instead of the table
  --json-file PATH      also write the JSON summary to PATH
";

/// Targets from the issue: (b)/(cf) and (d)/(e).
const VXLAN_MIN_RATIO: f64 = 0.98;
const DIRECT_MIN_RATIO: f64 = 0.98;
const CONVERGE_LIMITS_MS: [(usize, f64); 2] = [(1000, 1000.0), (5000, 3000.0)];
const RECORD_P99_LIMIT_MS: f64 = 100.0;
const RSS_LIMIT_MB: f64 = 30.0;

struct Args {
    quick: bool,
    reps: usize,
    secs: u32,
    pings: u32,
    peers: Vec<usize>,
    runs: usize,
    adds: usize,
    idle_secs: f64,
    resync: f64,
    hold: f64,
    paths: bool,
    convergence: bool,
    bin_dir: Option<PathBuf>,
    json: bool,
    json_file: Option<PathBuf>,
}

fn parse_args() -> Result<Option<Args>> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let quick = raw.iter().any(|a| a == "--quick");
    let mut a = Args {
        quick,
        reps: if quick { 2 } else { 7 },
        secs: if quick { 2 } else { 3 },
        pings: if quick { 100 } else { 200 },
        peers: if quick { vec![1000] } else { vec![1000, 5000] },
        runs: if quick { 1 } else { 3 },
        adds: if quick { 20 } else { 100 },
        idle_secs: if quick { 3.0 } else { 10.0 },
        resync: 30.0,
        hold: 0.0,
        paths: true,
        convergence: true,
        bin_dir: None,
        json: false,
        json_file: None,
    };
    let mut it = raw.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .with_context(|| format!("{name} needs a value\n\n{USAGE}"))
        };
        fn num<T: std::str::FromStr + PartialOrd + Default>(name: &str, v: &str) -> Result<T> {
            let n: T = v
                .parse()
                .ok()
                .with_context(|| format!("{name}: not a number: {v:?}"))?;
            if n <= T::default() {
                bail!("{name} must be positive");
            }
            Ok(n)
        }
        match arg.as_str() {
            "--quick" => {}
            "--reps" => a.reps = num(&arg, &value(&arg)?)?,
            "--seconds" => a.secs = num(&arg, &value(&arg)?)?,
            "--pings" => a.pings = num(&arg, &value(&arg)?)?,
            "--peers" => {
                a.peers = value(&arg)?
                    .split(',')
                    .map(|p| num::<usize>(&arg, p.trim()))
                    .collect::<Result<_>>()?;
                if a.peers.iter().any(|p| *p > overlay_converge::MAX_PEERS) {
                    bail!("--peers: at most {}", overlay_converge::MAX_PEERS);
                }
            }
            "--runs" => a.runs = num(&arg, &value(&arg)?)?,
            "--adds" => a.adds = num(&arg, &value(&arg)?)?,
            "--idle-secs" => a.idle_secs = num(&arg, &value(&arg)?)?,
            "--resync" => a.resync = num(&arg, &value(&arg)?)?,
            "--hold" => a.hold = num(&arg, &value(&arg)?)?,
            "--only" => match value(&arg)?.as_str() {
                "paths" => a.convergence = false,
                "convergence" => a.paths = false,
                other => bail!("--only: {other:?} is neither `paths` nor `convergence`"),
            },
            "--bin-dir" => a.bin_dir = Some(PathBuf::from(value(&arg)?)),
            "--json" => a.json = true,
            "--json-file" => a.json_file = Some(PathBuf::from(value(&arg)?)),
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    if a.adds > overlay_converge::MAX_ADDS {
        bail!("--adds: at most {}", overlay_converge::MAX_ADDS);
    }
    if a.resync < 0.1 {
        bail!("--resync must be at least 0.1");
    }
    Ok(Some(a))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overlay-bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    overlay_proc::install_signal_handlers();
    // `run` owns every namespace, agent and directory: they are gone when it returns or
    // unwinds (the topology library panics on a failed setup command).
    let result = std::panic::catch_unwind(|| run(&args));
    match result {
        Ok(Ok(out)) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("overlay-bench: error: {e:#}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("overlay-bench: a setup step panicked (see above); cleaned up");
            ExitCode::FAILURE
        }
    }
}

/// Finds twill-agent and twill, and points the topology library at them.
fn bin_dir(args: &Args) -> Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(d) = &args.bin_dir {
        candidates.push(d.clone());
    } else {
        if let Some(d) = std::env::var_os("TWILL_BIN_DIR") {
            candidates.push(PathBuf::from(d));
        }
        if let Some(d) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf))
        {
            candidates.push(d);
        }
        candidates.push(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
                .join("release"),
        );
    }
    let dir = candidates
        .iter()
        .find(|d| d.join("twill-agent").is_file() && d.join("twill").is_file())
        .cloned()
        .with_context(|| {
            format!(
                "no twill-agent and twill in {candidates:?}: build them (`cargo build --release -p twill-agent -p twill-cni`) or pass --bin-dir"
            )
        })?;
    let dir = dir.canonicalize().unwrap_or(dir);
    // Before any thread exists.
    std::env::set_var("TWILL_BIN_DIR", &dir);
    Ok(dir)
}

fn require_tools(args: &Args) -> Result<()> {
    let mut tools = vec!["ip", "bridge", "nft", "timeout"];
    if args.paths {
        tools.extend(["iperf3", "ping", "ss"]);
    }
    if args.convergence {
        tools.push("curl");
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let missing: Vec<&str> = tools
        .into_iter()
        .filter(|t| !path.split(':').any(|d| Path::new(d).join(t).is_file()))
        .collect();
    if !missing.is_empty() {
        bail!("missing tools: {}", missing.join(", "));
    }
    Ok(())
}

fn run(args: &Args) -> Result<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("must run as root: it creates network namespaces");
    }
    let bins = bin_dir(args)?;
    require_tools(args)?;
    let sockperf = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .any(|d| Path::new(d).join("sockperf").is_file());

    let paths = if args.paths {
        Some(overlay_paths::measure(&PathSpec {
            reps: args.reps,
            secs: args.secs,
            pings: args.pings,
            ping_interval: "0.002".into(),
            resync_secs: args.resync,
            hold_secs: args.hold,
        })?)
    } else {
        None
    };
    let conv = if args.convergence {
        Some(overlay_converge::measure(&ConvSpec {
            peers: args.peers.clone(),
            runs: args.runs,
            adds: args.adds,
            idle: Duration::from_secs_f64(args.idle_secs),
            resync_secs: args.resync,
            timeout: Duration::from_secs(60),
        })?)
    } else {
        None
    };
    eprintln!("overlay-bench: cleaned up");

    let mut rows = Vec::new();
    if let Some(p) = &paths {
        rows.extend(path_rows(p));
    }
    if let Some(c) = &conv {
        rows.extend(conv_rows(c));
    }
    let cpus = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(0);
    let summary = json!({
        "bin_dir": bins,
        "cpus": cpus,
        "quick": args.quick,
        "reps": args.reps,
        "iperf3_seconds": args.secs,
        "pings": args.pings,
        "resync_secs": args.resync,
        "latency_tool": if sockperf { "ping (sockperf is installed but not used)" } else { "ping (sockperf is not installed)" },
        "metrics": overlay_report::rows_json(&rows),
        "paths": paths.as_ref().map(paths_json),
        "convergence": conv.as_ref().map(conv_json),
    });
    if let Some(f) = &args.json_file {
        std::fs::write(f, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("writing {}", f.display()))?;
    }
    if args.json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&summary)?));
    }

    let mut out = format!(
        "twill-agent and twill from {}; {cpus} CPUs; agents run with --resync {}s\n\n",
        bins.display(),
        args.resync
    );
    out.push_str(&overlay_report::table(&rows));
    let missed: Vec<String> = rows.iter().filter_map(Row::miss_text).collect();
    if !missed.is_empty() {
        out.push_str("\nmissed:\n");
        for m in missed {
            out.push_str(&format!("  - {m}\n"));
        }
    }
    if let Some(p) = &paths {
        out.push_str(&paths_text(p, args, sockperf));
    }
    if let Some(c) = &conv {
        out.push_str(&conv_text(c));
    }
    Ok(out)
}

fn gbps(p: &PathResults, id: PathId) -> f64 {
    median(&p.get(id).gbps)
}

/// Median of the per-round average RTTs, in microseconds.
fn rtt_us(p: &PathResults, id: PathId) -> f64 {
    let v: Vec<f64> = p.get(id).ping.iter().map(|s| s.avg_ms * 1e3).collect();
    median(&v)
}

/// Per-round ratios x/y of a path pair, throughput or average RTT.
fn round_ratios(p: &PathResults, x: PathId, y: PathId, rtt: bool) -> Vec<f64> {
    let v = |id: PathId| -> Vec<f64> {
        if rtt {
            p.get(id).ping.iter().map(|s| s.avg_ms).collect()
        } else {
            p.get(id).gbps.clone()
        }
    };
    v(x).iter().zip(v(y)).map(|(a, b)| a / b).collect()
}

fn path_rows(p: &PathResults) -> Vec<Row> {
    use PathId::*;
    let tp = |metric: &str, s: PathId, r: PathId, target| Row {
        metric: format!("throughput {metric}"),
        twill: gbps(p, s),
        reference: Some(gbps(p, r)),
        unit: Unit::Gbps,
        target,
        paired_ratio: Some(median(&round_ratios(p, s, r, false))),
    };
    let lat = |metric: &str, s: PathId, r: PathId| Row {
        metric: format!("ping RTT avg {metric}"),
        twill: rtt_us(p, s),
        reference: Some(rtt_us(p, r)),
        unit: Unit::Us,
        target: Target::None,
        paired_ratio: Some(median(&round_ratios(p, s, r, true))),
    };
    vec![
        tp(
            "(b) Twill VXLAN pods / (cf) hand-built VXLAN, flannel's rules",
            B,
            Cf,
            Target::MinRatio(VXLAN_MIN_RATIO),
        ),
        tp(
            "(d) Twill direct-routed pods / (e) hand-built direct",
            D,
            E,
            Target::MinRatio(DIRECT_MIN_RATIO),
        ),
        tp(
            "(b) Twill VXLAN pods / (c) hand-built, no nftables",
            B,
            C,
            Target::None,
        ),
        tp(
            "(cf) flannel's rules / (c) no nftables",
            Cf,
            C,
            Target::None,
        ),
        tp(
            "(cr) flannel's rules + vxlan_notrack / (cf)",
            Cr,
            Cf,
            Target::None,
        ),
        tp("(b0) Twill VXLAN, ipMasq false / (c)", B0, C, Target::None),
        tp(
            "(d) Twill direct / (ef) hand-built direct, flannel's rules",
            D,
            Ef,
            Target::None,
        ),
        tp("(d0) Twill direct, ipMasq false / (e)", D0, E, Target::None),
        tp(
            "(ef) flannel's rules / (e) no nftables, direct",
            Ef,
            E,
            Target::None,
        ),
        tp("(d) Twill direct / (a) underlay", D, A, Target::None),
        tp("(e) hand-built direct / (a) underlay", E, A, Target::None),
        tp("(c) hand-built VXLAN / (a) underlay", C, A, Target::None),
        tp(
            "(a') underlay of a Twill node / (a) underlay",
            A2,
            A,
            Target::None,
        ),
        lat(
            "(b) Twill VXLAN / (cf) hand-built VXLAN, flannel's rules",
            B,
            Cf,
        ),
        lat("(b) Twill VXLAN / (c) hand-built VXLAN, no nftables", B, C),
        lat("(d) Twill direct / (e) hand-built direct", D, E),
        lat("(d) Twill direct / (a) underlay", D, A),
        lat("(c) hand-built VXLAN / (a) underlay", C, A),
    ]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn conv_rows(c: &ConvResults) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut sizes: Vec<usize> = c.runs.iter().map(|r| r.peers).collect();
    sizes.sort_unstable();
    sizes.dedup();
    for n in sizes {
        let v: Vec<f64> = c
            .runs
            .iter()
            .filter(|r| r.peers == n)
            .map(|r| ms(r.elapsed))
            .collect();
        let floor: Vec<f64> = c
            .runs
            .iter()
            .filter(|r| r.peers == n)
            .map(|r| ms(r.floor))
            .collect();
        let target = CONVERGE_LIMITS_MS
            .iter()
            .find(|(p, _)| *p == n)
            .map_or(Target::None, |(_, l)| Target::AtMost(*l));
        rows.push(Row {
            metric: format!(
                "agent start -> {n} peer routes (median of {}); ref: bridge/ip -batch",
                v.len()
            ),
            twill: median(&v),
            reference: Some(median(&floor)),
            unit: Unit::Ms,
            target,
            paired_ratio: None,
        });
    }
    let t = &c.trials;
    let pct = |v: &[Duration], p: f64| ms(report::percentile(v, p));
    rows.push(Row {
        metric: format!(
            "new record -> route, p50 ({} at {} peers)",
            t.add.len(),
            t.peers
        ),
        twill: pct(&t.add, 50.0),
        reference: None,
        unit: Unit::Ms,
        target: Target::None,
        paired_ratio: None,
    });
    rows.push(Row {
        metric: format!(
            "new record -> route, p99 ({} at {} peers)",
            t.add.len(),
            t.peers
        ),
        twill: pct(&t.add, 99.0),
        reference: None,
        unit: Unit::Ms,
        target: Target::Below(RECORD_P99_LIMIT_MS),
        paired_ratio: None,
    });
    rows.push(Row {
        metric: format!("record removed -> route gone, p99 ({})", t.del.len()),
        twill: pct(&t.del, 99.0),
        reference: None,
        unit: Unit::Ms,
        target: Target::None,
        paired_ratio: None,
    });
    let r = &c.resources;
    rows.push(Row {
        metric: format!("agent VmRSS at {} peers", r.peers),
        twill: r.rss_kib as f64 * 1024.0 / 1e6,
        reference: None,
        unit: Unit::MB,
        target: Target::Below(RSS_LIMIT_MB),
        paired_ratio: None,
    });
    rows.push(Row {
        metric: format!(
            "agent CPU idle, {} peers ({:.0} s, resync {}s)",
            r.peers,
            r.window.as_secs_f64(),
            r.resync_secs
        ),
        twill: r.cpu_pct,
        reference: None,
        unit: Unit::CpuPct,
        target: Target::None,
        paired_ratio: None,
    });
    rows
}

fn list(v: &[f64], prec: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.prec$}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn paths_text(p: &PathResults, args: &Args, sockperf: bool) -> String {
    let mut out = format!(
        "\npaths: iperf3 -t {} (one TCP stream), {} interleaved rounds (ratios in the table: median of the per-round ratios); latency: ping -c {} -i 0.002{}; every VXLAN device: tx checksum offload {}, outer UDP checksum {}\n",
        args.secs,
        args.reps,
        args.pings,
        if sockperf {
            " (sockperf is installed; ping used for every path alike)"
        } else {
            " (sockperf is not installed)"
        },
        on_off(p.vxlan_settings.0),
        on_off(p.vxlan_settings.1),
    );
    for id in ALL {
        let s = p.get(id);
        let avg: Vec<f64> = s.ping.iter().map(|x| x.avg_ms * 1e3).collect();
        let mdev: Vec<f64> = s.ping.iter().map(|x| x.mdev_ms * 1e3).collect();
        let min: Vec<f64> = s.ping.iter().map(|x| x.min_ms * 1e3).collect();
        out.push_str(&format!(
            "  {:<48} Gbit/s [{}] median {:.2}; RTT avg us [{}] median {:.1}, mdev median {:.1}, min median {:.1}\n",
            id.describe(),
            list(&s.gbps, 2),
            median(&s.gbps),
            list(&avg, 1),
            median(&avg),
            median(&mdev),
            median(&min),
        ));
    }
    // Each round measured a subject and its reference within seconds of each other.
    for (x, y) in [
        (PathId::B, PathId::Cf),
        (PathId::B, PathId::C),
        (PathId::Cf, PathId::C),
        (PathId::Cr, PathId::Cf),
        (PathId::B0, PathId::C),
        (PathId::D, PathId::E),
        (PathId::D, PathId::Ef),
        (PathId::D0, PathId::E),
        (PathId::Ef, PathId::E),
        (PathId::D, PathId::A),
        (PathId::E, PathId::A),
        (PathId::A2, PathId::A),
    ] {
        let r = round_ratios(p, x, y, false);
        let l = round_ratios(p, x, y, true);
        out.push_str(&format!(
            "  per-round ratio {}/{}: throughput [{}] median {:.3} (ratio of medians {:.3}); RTT [{}] median {:.3}\n",
            x.key(),
            y.key(),
            list(&r, 3),
            median(&r),
            gbps(p, x) / gbps(p, y),
            list(&l, 2),
            median(&l)
        ));
    }
    out
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

fn conv_text(c: &ConvResults) -> String {
    let mut out = format!("\nconvergence: {}\n", overlay_converge::describe_records());
    for r in &c.runs {
        let phases: Vec<String> = r
            .phases
            .iter()
            .map(|(what, at)| format!("{what} @{at:.0}"))
            .collect();
        out.push_str(&format!(
            "  {:>5} peers: {:.1} ms ({}), reference bridge/ip -batch {:.1} ms; agent log, ms after spawn: {}{}\n",
            r.peers,
            ms(r.elapsed),
            r.method,
            ms(r.floor),
            phases.join(", "),
            r.first_changes.map_or(String::new(), |n| format!(
                " (first pass: {n} kernel changes)"
            ))
        ));
    }
    let t = &c.trials;
    let pct = |v: &[Duration], p: f64| ms(report::percentile(v, p));
    out.push_str(&format!(
        "  record -> route at {} peers ({} adds): p50 {:.1} ms, p90 {:.1}, p99 {:.1}, max {:.1}; removal -> route gone: p50 {:.1}, p99 {:.1}, max {:.1}; timeouts (5 s): {}; agent CPU per record change: {:.1} ms\n",
        t.peers,
        t.add.len(),
        pct(&t.add, 50.0),
        pct(&t.add, 90.0),
        pct(&t.add, 99.0),
        pct(&t.add, 100.0),
        pct(&t.del, 50.0),
        pct(&t.del, 99.0),
        pct(&t.del, 100.0),
        t.timeouts,
        ms(t.cpu_per_change)
    ));
    let r = &c.resources;
    out.push_str(&format!(
        "  agent at {} peers: VmRSS {:.1} MB right after convergence, {:.1} MB after the single-record trials, peak (VmHWM) {:.1} MB, {} threads; idle CPU over {:.1} s: {:.2} % of one core (agent), {:.2} % (its reaped children, e.g. nft), resyncs in the window: {} (--resync {}s; the file registry also rescans its directory every 5 s)\n",
        r.peers,
        r.rss_kib_converged as f64 * 1024.0 / 1e6,
        r.rss_kib as f64 * 1024.0 / 1e6,
        r.hwm_kib as f64 * 1024.0 / 1e6,
        r.threads,
        r.window.as_secs_f64(),
        r.cpu_pct,
        r.children_cpu_pct,
        r.resyncs_in_window.map_or("unknown".into(), |n| n.to_string()),
        r.resync_secs,
    ));
    out
}

fn paths_json(p: &PathResults) -> Value {
    let mut m = serde_json::Map::new();
    for id in ALL {
        let s = p.get(id);
        m.insert(
            id.key().to_string(),
            json!({
                "path": id.describe(),
                "gbps": s.gbps,
                "rtt_avg_us": s.ping.iter().map(|x| x.avg_ms * 1e3).collect::<Vec<_>>(),
                "rtt_mdev_us": s.ping.iter().map(|x| x.mdev_ms * 1e3).collect::<Vec<_>>(),
                "rtt_min_us": s.ping.iter().map(|x| x.min_ms * 1e3).collect::<Vec<_>>(),
            }),
        );
    }
    json!({
        "samples": m,
        "vxlan_tx_checksum_offload": p.vxlan_settings.0,
        "vxlan_udp_checksum": p.vxlan_settings.1,
        "twill_node_nft_ruleset": p.twill_nft,
        "twill_node_nft_ruleset_ipmasq_false": p.twill_nft_nomasq,
    })
}

fn conv_json(c: &ConvResults) -> Value {
    let r = &c.resources;
    json!({
        "records": overlay_converge::describe_records(),
        "runs": c.runs.iter().map(|r| json!({
            "peers": r.peers,
            "ms": ms(r.elapsed),
            "reference_batch_ms": ms(r.floor),
            "method": r.method,
            "phases_ms": r.phases.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "first_pass_changes": r.first_changes,
        })).collect::<Vec<_>>(),
        "record_to_route": {
            "peers": c.trials.peers,
            "add_ms": report::samples_ms(&c.trials.add),
            "del_ms": report::samples_ms(&c.trials.del),
            "timeouts": c.trials.timeouts,
            "agent_cpu_ms_per_change": ms(c.trials.cpu_per_change),
        },
        "resources": {
            "peers": r.peers,
            "rss_kib_converged": r.rss_kib_converged,
            "rss_kib": r.rss_kib,
            "hwm_kib": r.hwm_kib,
            "threads": r.threads,
            "idle_window_s": r.window.as_secs_f64(),
            "idle_cpu_pct": r.cpu_pct,
            "idle_children_cpu_pct": r.children_cpu_pct,
            "resyncs_in_window": r.resyncs_in_window,
            "resync_secs": r.resync_secs,
        },
    })
}
