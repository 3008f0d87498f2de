//! `policy-bench`: NetworkPolicy's control path at scale, against the targets.
//!
//! A synthetic cluster (`--policies` policies over `--pods` pods in `--namespaces`
//! namespaces, `--local` of the pods on the measured node) goes through the agent's
//! path: the API objects parsed (`Cluster::from_json`), compiled for the node, rendered
//! to one nftables script, applied with `nft -f -` in a namespace this process creates
//! (cold: no table yet). Then `--changes` single pod-label changes, as the agent takes
//! them: compiled by `NodeCompiler::update` (only what the change touches), the table
//! built again and applied as a diff against the applied one (p50/p99). Every stage is
//! timed apart, so the report shows where the time goes.
//!
//! Everything runs in namespaces this process creates; they are deleted on exit.

// Only the table and rows of the overlay benchmark's report, and its percentile helper.
#[allow(dead_code)]
mod overlay_report;
#[allow(dead_code)]
mod report;

use anyhow::{bail, Context, Result};
use overlay_report::{Row, Target, Unit};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use twill_agent::firewall::policy::{render_diff, PolicyNames, PolicyRenderOptions, PolicyTable};
use twill_policy::incremental::NodeCompiler;
use twill_policy::{Cluster, Pod};
use twill_tests::Netns;

const USAGE: &str = "\
usage: policy-bench [options]   (as root)

  --policies N     NetworkPolicies (default 1000)
  --pods N         pods in the cluster (default 5000)
  --local N        of which on the measured node (default 300)
  --namespaces N   namespaces (default 50)
  --changes N      single pod-label changes timed one by one (default 100)
";

const COLD_LIMIT_MS: f64 = 1000.0;
const CHANGE_P99_LIMIT_MS: f64 = 100.0;
const NODE: &str = "n1";
const TABLE: &str = "twill_policy";
/// Apps per namespace: policies select one app and admit another.
const APPS: usize = 20;

struct Args {
    policies: usize,
    pods: usize,
    local: usize,
    namespaces: usize,
    changes: usize,
}

fn parse_args() -> Result<Option<Args>> {
    let mut a = Args {
        policies: 1000,
        pods: 5000,
        local: 300,
        namespaces: 50,
        changes: 100,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            print!("{USAGE}");
            return Ok(None);
        }
        let v: usize = it
            .next()
            .with_context(|| format!("{arg} needs a value\n\n{USAGE}"))?
            .parse()
            .with_context(|| format!("{arg}: not a number"))?;
        match arg.as_str() {
            "--policies" => a.policies = v,
            "--pods" => a.pods = v,
            "--local" => a.local = v,
            "--namespaces" => a.namespaces = v.max(1),
            "--changes" => a.changes = v,
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    if a.local > a.pods {
        bail!("--local must not exceed --pods");
    }
    Ok(Some(a))
}

/// Pod i: namespace i % namespaces, app by i, on the node for the first `local`, an
/// address that is unique (10.x.y.z from i), a named port `http`.
fn pod_json(i: usize, a: &Args) -> Value {
    let ns = i % a.namespaces;
    let node = if i < a.local {
        NODE.to_string()
    } else {
        format!("n{}", 2 + i % 40)
    };
    let ip = format!(
        "10.{}.{}.{}",
        64 + (i >> 16) % 64,
        (i >> 8) & 0xff,
        i & 0xff
    );
    json!({
        "metadata": {"namespace": format!("ns{ns}"), "name": format!("pod{i}"),
                     "labels": {"app": format!("a{}", (i / a.namespaces) % APPS),
                                "tier": if i.is_multiple_of(3) { "front" } else { "back" }}},
        "spec": {"nodeName": node, "containers": [{"name": "c",
                 "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
        "status": {"phase": "Running", "podIPs": [{"ip": ip}]}
    })
}

/// Policy j: in namespace j % namespaces, selects one app, admits another app of the
/// same namespace and a team of namespaces on a named port, plus (every 4th) an
/// ipBlock with an except on 443, and (every 5th) an egress restriction.
fn policy_json(j: usize, a: &Args) -> Value {
    let ns = j % a.namespaces;
    let app = |k: usize| format!("a{}", k % APPS);
    let mut ingress = vec![json!({
        "from": [{"podSelector": {"matchLabels": {"app": app(j + 1)}}},
                 {"namespaceSelector": {"matchLabels": {"team": format!("t{}", j % 5)}},
                  "podSelector": {"matchExpressions": [
                      {"key": "tier", "operator": "In", "values": ["front"]}]}}],
        "ports": [{"port": "http"}, {"port": 9000, "endPort": 9010}]
    })];
    if j.is_multiple_of(4) {
        ingress.push(json!({
            "from": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.7.0/24"]}}],
            "ports": [{"port": 443}]
        }));
    }
    let mut spec = json!({
        "podSelector": {"matchLabels": {"app": app(j)}},
        "ingress": ingress,
    });
    if j.is_multiple_of(5) {
        spec["egress"] = json!([{"to": [{"namespaceSelector": {}}],
                                 "ports": [{"port": 53, "protocol": "UDP"}]}]);
        spec["policyTypes"] = json!(["Ingress", "Egress"]);
    }
    json!({"metadata": {"namespace": format!("ns{ns}"), "name": format!("pol{j}")},
           "spec": spec})
}

fn namespace_json(n: usize) -> Value {
    json!({"metadata": {"name": format!("ns{n}"), "labels": {"team": format!("t{}", n % 5)}}})
}

/// Runs `script` through `nft -f -` inside `ns`.
fn nft_apply(ns: &Netns, script: &str) -> Result<()> {
    ns.nft_script(script).map_err(anyhow::Error::msg)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// What one programming pass produced: allow entries, and the script's size and set
/// elements (an element per line of a set's `elements = { … }`, comma-separated).
struct Programmed {
    entries: usize,
    script_bytes: usize,
    elements: usize,
}

/// What the agent keeps from one change to the next.
#[derive(Default)]
struct Agent {
    compiler: Option<NodeCompiler>,
    names: PolicyNames,
    applied: Option<PolicyTable>,
}

/// compile (in full the first time, then by [`NodeCompiler::update`]) → render (the whole
/// table the first time, then a diff against the applied one) → apply for the node; the
/// three durations, and what was made.
fn program(
    ns: &Netns,
    agent: &mut Agent,
    cluster: &Cluster,
) -> Result<([Duration; 3], Programmed)> {
    let compiler = &mut agent.compiler;
    let t0 = Instant::now();
    let rules = match compiler {
        Some(c) => {
            c.update(cluster);
            c.rules()
        }
        None => compiler.insert(NodeCompiler::new(cluster, NODE)).rules(),
    };
    let t1 = Instant::now();
    let table = PolicyTable::build(rules, &PolicyRenderOptions::default(), &mut agent.names);
    let script = match agent
        .applied
        .as_ref()
        .and_then(|old| render_diff(TABLE, old, &table))
    {
        Some(diff) => diff.script,
        None => table.render_full(TABLE),
    };
    let t2 = Instant::now();
    nft_apply(ns, &script)?;
    let t3 = Instant::now();
    agent.applied = Some(table);
    let entries = rules
        .pods
        .values()
        .flat_map(|p| [&p.ingress, &p.egress])
        .map(|d| match d {
            twill_policy::ruleset::Direction::Isolated { entries, .. } => entries.len(),
            twill_policy::ruleset::Direction::NotIsolated => 0,
        })
        .sum();
    let elements = script
        .lines()
        .filter_map(|l| l.trim().strip_prefix("elements = {"))
        .map(|l| l.matches(',').count() + 1)
        .sum();
    let made = Programmed {
        entries,
        script_bytes: script.len(),
        elements,
    };
    Ok(([t1 - t0, t2 - t1, t3 - t2], made))
}

fn run(a: &Args) -> Result<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("must run as root: it creates a network namespace");
    }
    let policies: Vec<Value> = (0..a.policies).map(|j| policy_json(j, a)).collect();
    let pods: Vec<Value> = (0..a.pods).map(|i| pod_json(i, a)).collect();
    let namespaces: Vec<Value> = (0..a.namespaces).map(namespace_json).collect();
    let node_ips: BTreeMap<String, Vec<IpAddr>> =
        [(NODE.to_string(), vec!["192.168.1.1".parse()?])].into();
    let ns = Netns::new("polbench");

    let t0 = Instant::now();
    let mut cluster = Cluster::from_json(&policies, &pods, &namespaces, node_ips);
    let parse = t0.elapsed();
    if !cluster.rejected.is_empty() {
        bail!(
            "the synthetic cluster has rejected objects: {:?}",
            cluster.rejected
        );
    }
    let mut agent = Agent::default();
    let ([compile_t, render_t, apply_t], made) = program(&ns, &mut agent, &cluster)?;
    let cold = parse + compile_t + render_t + apply_t;

    // Single label changes on local pods, each programmed in full.
    let mut change = Vec::with_capacity(a.changes);
    let mut stages = [Vec::new(), Vec::new(), Vec::new()];
    // The agent takes a copy of the cluster per change (its watch channel's snapshot).
    let mut copies = Vec::with_capacity(a.changes);
    let mut diff_bytes = Vec::with_capacity(a.changes);
    for k in 0..a.changes {
        let i = k % a.local.max(1);
        let pod: &mut Pod = cluster
            .pods
            .iter_mut()
            .find(|p| p.name == format!("pod{i}"))
            .context("a local pod")?;
        // Changes that matter: the pod into the app its namespace's first policy
        // selects, into the app that policy admits (a peer set changes), or into the
        // app a second policy there selects.
        let n = i % a.namespaces;
        let app = format!("a{}", (n + [0, 1, 10][k % 3]) % APPS);
        pod.labels.insert("app".into(), app);
        let t0 = Instant::now();
        let snapshot = cluster.clone();
        copies.push(t0.elapsed());
        let (t, change_made) = program(&ns, &mut agent, &snapshot)?;
        diff_bytes.push(change_made.script_bytes);
        change.push(t.iter().sum::<Duration>());
        for (s, d) in stages.iter_mut().zip(t) {
            s.push(d);
        }
    }

    let p = |v: &[Duration], q: f64| ms(report::percentile(v, q));
    let row = |metric: String, twill: f64, target| Row {
        metric,
        twill,
        reference: None,
        unit: Unit::Ms,
        target,
        paired_ratio: None,
    };
    let scale = format!(
        "{} policies, {} pods ({} on the node)",
        a.policies, a.pods, a.local
    );
    let rows = vec![
        row(
            format!("cold: parse + compile + render + nft apply, {scale}"),
            ms(cold),
            Target::AtMost(COLD_LIMIT_MS),
        ),
        row(
            format!("one pod label change -> rules applied, p50 ({})", a.changes),
            p(&change, 50.0),
            Target::None,
        ),
        row(
            format!("one pod label change -> rules applied, p99 ({})", a.changes),
            p(&change, 99.0),
            Target::AtMost(CHANGE_P99_LIMIT_MS),
        ),
    ];
    let mut out = overlay_report::table(&rows);
    out.push_str(&format!(
        "\ncold, where the time goes: parse {:.1} ms, compile {:.1} ms, render {:.1} ms, nft apply {:.1} ms; {} allow entries on the node, rendered as {} set elements ({:.1} MB of script)\n",
        ms(parse),
        ms(compile_t),
        ms(render_t),
        ms(apply_t),
        made.entries,
        made.elements,
        made.script_bytes as f64 / 1e6,
    ));
    out.push_str(&format!(
        "per change, p50: cluster copy {:.1} ms (not in the totals), compile {:.1} ms, render {:.1} ms, nft apply {:.1} ms (applied as a diff, median {} bytes of script; {} of {} changes altered the table)\n",
        p(&copies, 50.0),
        p(&stages[0], 50.0),
        p(&stages[1], 50.0),
        p(&stages[2], 50.0),
        {
            diff_bytes.sort_unstable();
            diff_bytes.get(diff_bytes.len() / 2).copied().unwrap_or_default()
        },
        diff_bytes.iter().filter(|b| **b > 0).count(),
        diff_bytes.len(),
    ));
    Ok(out)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("policy-bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("policy-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
