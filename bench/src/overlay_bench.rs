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

mod overlay_agent_probe;
mod overlay_converge;
mod overlay_converge_floor;
mod overlay_converge_report;
mod overlay_manual;
mod overlay_paths;
mod overlay_paths_report;
mod overlay_proc;
mod overlay_report;
mod overlay_rtnl;
mod overlay_sim_peers;

use anyhow::{bail, Context, Result};
use overlay_converge::ConvSpec;
use overlay_converge_report::{conv_json, conv_rows, conv_text};
use overlay_paths::PathSpec;
use overlay_paths_report::{path_rows, paths_json, paths_text};
use overlay_report::Row;
use serde_json::json;
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

    let path_spec = PathSpec {
        reps: args.reps,
        secs: args.secs,
        pings: args.pings,
        ping_interval: "0.002".into(),
        resync_secs: args.resync,
        hold_secs: args.hold,
    };
    let paths = if args.paths {
        Some(overlay_paths::measure(&path_spec)?)
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
        out.push_str(&paths_text(p, &path_spec, sockperf));
    }
    if let Some(c) = &conv {
        out.push_str(&conv_text(c));
    }
    Ok(out)
}
