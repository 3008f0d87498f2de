//! `twill-lab`: stands up pods as network namespaces on a node namespace, wires them with
//! the real `twill` plugin (called exactly as a runtime calls it), prints the pod table
//! and the pod-to-pod ping matrix, and tears everything down.
//!
//! Today the lab has one node: pods on different nodes need `twill-agent`, which comes
//! with its own issue.

use anyhow::{bail, Context, Result};
use serde_json::json;
use std::process::ExitCode;
use std::time::Instant;
use twill_tests::{require_root, CniCall, Netns, Plugin};

struct Options {
    pods: usize,
}

fn parse_args() -> Result<Options> {
    let mut opts = Options { pods: 2 };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--pods-per-node" | "--pods" => {
                let v = args.next().context("--pods-per-node needs a number")?;
                opts.pods = v
                    .parse()
                    .with_context(|| format!("--pods-per-node {v:?} is not a number"))?;
                if !(1..=200).contains(&opts.pods) {
                    bail!("--pods-per-node must be between 1 and 200");
                }
            }
            "-h" | "--help" => {
                println!("usage: twill-lab [--pods-per-node N]   (run as root)");
                std::process::exit(0);
            }
            other => bail!("unknown option {other:?} (try --help)"),
        }
    }
    Ok(opts)
}

struct Pod {
    name: String,
    ns: Netns,
    ip: String,
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("twill-lab: {e:#}");
            eprintln!("everything the lab made is removed on exit; if it was killed, `make clean-netns` removes leftovers");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool> {
    let opts = parse_args()?;
    require_root();
    let started = Instant::now();
    let data = std::env::temp_dir().join(format!("twill-lab-{}", std::process::id()));
    let _cleanup = RemoveDir(data.clone());

    eprintln!("[lab] node-1: creating the node namespace");
    let node = Netns::new("node-1");
    let plugin = Plugin::new(&node);
    let config = json!({
        "cniVersion": "1.0.0", "name": "twill-lab", "type": "twill",
        "subnet": "10.244.1.0/24", "dataDir": data.to_string_lossy(),
    });

    let mut pods = Vec::new();
    for i in 1..=opts.pods {
        let name = format!("sleep-{i}");
        eprintln!("[lab] {name}: CNI ADD on node-1");
        let ns = Netns::new(&name);
        let out = plugin.call(&CniCall::new("ADD", &config).container(&name, &ns.path(), "eth0"));
        if !out.success() {
            bail!(
                "ADD of {name} failed: {} {}",
                out.stdout.trim(),
                out.stderr.trim()
            );
        }
        let result = out.json();
        let ip = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .context("ADD result has no address")?
            .to_string();
        pods.push(Pod { name, ns, ip });
    }

    println!("\nNODE     SUBNET          BRIDGE");
    println!("node-1   10.244.1.0/24   twill0 (10.244.1.1)");
    println!("\nPOD        NODE     IP");
    for p in &pods {
        println!("{:<10} node-1   {}", p.name, p.ip);
    }

    println!("\nping matrix (from row to column):");
    print!("{:<10}", "");
    for p in &pods {
        print!(" {:<14}", p.name);
    }
    println!();
    let mut failures = 0;
    for from in &pods {
        print!("{:<10}", from.name);
        for to in &pods {
            let out = from.ns.run(&["ping", "-c", "1", "-W", "2", &to.ip]);
            let cell = if out.status.success() {
                rtt(&String::from_utf8_lossy(&out.stdout))
                    .map_or("OK".to_string(), |r| format!("OK {r}ms"))
            } else {
                failures += 1;
                "FAIL".to_string()
            };
            print!(" {cell:<14}");
        }
        println!();
    }

    for p in &pods {
        let out =
            plugin.call(&CniCall::new("DEL", &config).container(&p.name, &p.ns.path(), "eth0"));
        if !out.success() {
            eprintln!("[lab] DEL of {} failed: {}", p.name, out.stdout.trim());
        }
    }
    println!(
        "\n{} of {} pairs answered; {:.1}s",
        pods.len() * pods.len() - failures,
        pods.len() * pods.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(failures == 0)
}

fn rtt(ping_out: &str) -> Option<String> {
    let line = ping_out.lines().find(|l| l.contains("time="))?;
    Some(
        line.split("time=")
            .nth(1)?
            .split_whitespace()
            .next()?
            .to_string(),
    )
}

struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
