//! `policy-path-bench`: what NetworkPolicy costs the data path. One node routes between
//! a client pod and a server pod (veth pairs, the node's `forward` hook, as Twill's pods
//! on one node without br_netfilter and pods on two nodes are). The node carries Twill's
//! own table (`inet twill`, masquerade: connection tracking is on in both states), and
//! in the measured state also the policy table compiled from `--policies` policies that
//! all select the server, over `--pods` pods; only one of them admits the client: the
//! one whose rule the kernel meets last in the server's chain (the worst case).
//!
//! In alternating rounds, both states: one TCP stream's throughput (iperf3), ping RTT
//! (an established flow), and the time to open a new TCP connection (its first packet
//! walks the server's chain of allow rules). Ratios are medians of per-round ratios.
//!
//! Everything runs in namespaces this process creates; they are deleted on exit.

#[allow(dead_code)]
mod overlay_proc;
#[allow(dead_code)]
mod overlay_report;
#[allow(dead_code)]
mod report;

use anyhow::{bail, Context, Result};
use overlay_report::{Row, Target, Unit};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use twill_agent::firewall::policy::{render_policy_table, PolicyRenderOptions};
use twill_agent::firewall::{render_table_script, FirewallRules};
use twill_policy::{compile, Cluster, RuleSet};
use twill_tests::Netns;

const USAGE: &str = "\
usage: policy-path-bench [options]   (as root)

  --policies N   policies selecting the server (default 1000)
  --pods N       other pods in the cluster, peers of those policies (default 5000)
  --rounds N     alternating rounds of both states (default 3)
  --seconds S    iperf3 duration per measurement (default 3)
  --connects N   new TCP connections timed per round (default 500)
";

const NODE: &str = "n1";
const POLICY_TABLE: &str = "twill_policy";
const TWILL_TABLE: &str = "twill";
const CLIENT: &str = "10.244.9.2";
const SERVER: &str = "10.244.1.2";
/// The port of the connection-setup probe (iperf3 has 5201).
const CONNECT_PORT: u16 = 7000;
const MIN_RATIO: f64 = 0.95;

struct Args {
    policies: usize,
    pods: usize,
    rounds: usize,
    secs: u32,
    connects: usize,
}

fn parse_args() -> Result<Option<Args>> {
    let mut a = Args {
        policies: 1000,
        pods: 5000,
        rounds: 3,
        secs: 3,
        connects: 500,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let v = it.next().with_context(|| format!("{flag} needs a value"))?;
        let n: usize = v
            .parse()
            .with_context(|| format!("{flag} {v:?} is not a number"))?;
        match flag.as_str() {
            "--policies" if n >= 1 => a.policies = n,
            "--pods" => a.pods = n,
            "--rounds" if n >= 1 => a.rounds = n,
            "--seconds" if n >= 1 => a.secs = u32::try_from(n).context("--seconds")?,
            "--connects" if n >= 1 => a.connects = n,
            _ => bail!("unknown or out-of-range option {flag} {v}\n{USAGE}"),
        }
    }
    Ok(Some(a))
}

fn pod(name: &str, app: &str, node: &str, ip: &str) -> Value {
    json!({
        "metadata": {"namespace": "bench", "name": name, "labels": {"app": app}},
        "spec": {"nodeName": node},
        "status": {"podIPs": [{"ip": ip}]},
    })
}

/// Policy `j` selects the server and admits app `a<j>` on TCP 5201, or, when it is the
/// client's, the client on every port (ping and the connection probe included).
fn policy(j: usize, client: bool) -> Value {
    let rule = if client {
        json!({"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]})
    } else {
        json!({"from": [{"podSelector": {"matchLabels": {"app": format!("a{j}")}}}],
               "ports": [{"protocol": "TCP", "port": 5201}]})
    };
    json!({
        "metadata": {"namespace": "bench", "name": format!("p{j}")},
        "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "ingress": [rule]},
    })
}

/// The cluster whose policy `client_policy` admits the client.
fn cluster(a: &Args, client_policy: usize) -> Result<Cluster> {
    let mut pods = vec![
        pod("server", "server", NODE, SERVER),
        pod("client", "client", "n2", CLIENT),
    ];
    for i in 0..a.pods {
        // Below the client's address: sets are numbered in address order.
        let ip = format!("10.243.{}.{}", i / 250, i % 250 + 1);
        let app = format!("a{}", i % a.policies.max(1));
        pods.push(pod(&format!("pod{i}"), &app, "n3", &ip));
    }
    let policies: Vec<Value> = (0..a.policies)
        .map(|j| policy(j, j == client_policy))
        .collect();
    let namespaces = [json!({"metadata": {"name": "bench"}})];
    let node_ips = BTreeMap::from([(NODE.to_string(), vec!["192.168.1.1".parse()?])]);
    let c = Cluster::from_json(&policies, &pods, &namespaces, node_ips);
    if !c.rejected.is_empty() {
        bail!("rejected objects: {:?}", c.rejected);
    }
    Ok(c)
}

fn nft(ns: &Netns, script: &str) -> Result<()> {
    ns.nft_script(script).map_err(anyhow::Error::msg)
}

struct Topology {
    node: Netns,
    client: Netns,
    server: Netns,
}

fn topology() -> Result<Topology> {
    let t = Topology {
        node: Netns::new("pp-node"),
        client: Netns::new("pp-client"),
        server: Netns::new("pp-server"),
    };
    t.node.sh(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    for (pod, host, ip) in [
        (&t.client, "vclient", CLIENT),
        (&t.server, "vserver", SERVER),
    ] {
        let gw = ip.rsplit_once('.').map(|(net, _)| format!("{net}.1"));
        let gw = gw.context("gateway")?;
        t.node
            .ip(&["link", "add", host, "type", "veth", "peer", "name", "eth0"]);
        t.node.ip(&["link", "set", "eth0", "netns", pod.name()]);
        t.node
            .ip(&["addr", "add", &format!("{gw}/24"), "dev", host]);
        t.node.ip(&["link", "set", host, "up"]);
        pod.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        pod.ip(&["link", "set", "eth0", "up"]);
        pod.ip(&["link", "set", "lo", "up"]);
        pod.ip(&["route", "add", "default", "via", &gw]);
    }
    let rules = FirewallRules {
        cluster_networks: vec!["10.244.0.0/16".parse()?],
        ip_masq: true,
        vxlan: None,
    };
    nft(&t.node, &render_table_script(TWILL_TABLE, &rules))?;
    Ok(t)
}

/// Opens `n` new connections from `client` to `to` (a listener in the server pod) one
/// after another; the time each `connect` took.
fn connect_times(client: &Netns, to: SocketAddr, n: usize) -> Result<Vec<Duration>> {
    let path = format!("/run/netns/{}", client.name());
    std::thread::scope(|s| {
        s.spawn(|| -> Result<Vec<Duration>> {
            enter(&path)?;
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                let t0 = Instant::now();
                let conn = TcpStream::connect_timeout(&to, Duration::from_secs(2))
                    .with_context(|| format!("connecting to {to}"))?;
                out.push(t0.elapsed());
                drop(conn);
            }
            Ok(out)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the connect thread panicked"))?
    })
}

/// Moves the calling thread (one this program spawned for that) into a namespace.
fn enter(path: &str) -> Result<()> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns reads the descriptor only; CLONE_NEWNET refuses anything else.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns {path}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A listener in the server pod that accepts and closes, on its own thread.
fn connect_server(server: &Netns) -> Result<()> {
    let path = format!("/run/netns/{}", server.name());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let bound = enter(&path).and_then(|()| {
            TcpListener::bind((SERVER, CONNECT_PORT)).context("binding the connect probe")
        });
        match bound {
            Ok(l) => {
                let _ = tx.send(Ok(()));
                for conn in l.incoming() {
                    drop(conn);
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    });
    rx.recv().context("the listener thread")?
}

/// Where in the server's ingress chain the rule that admits the client is: (1-based
/// position, rules in the chain). Read from the script, as the kernel walks it.
fn client_rule_position(script: &str) -> Option<(usize, usize)> {
    // The set whose elements hold the client's address.
    let mut set = None;
    let mut current = None;
    for line in script.lines() {
        let l = line.trim();
        if let Some(name) = l.strip_prefix("set ") {
            current = name.split_whitespace().next();
        }
        if l.starts_with("elements") && l.contains(CLIENT) {
            set = current;
        }
    }
    let set = format!("@{}", set?);
    // The server's chain: the one a verdict map element for its address jumps to.
    let map_line = script
        .lines()
        .find(|l| l.contains(&format!("{SERVER} : ")))?;
    let chain = map_line
        .split(&format!("{SERVER} : "))
        .nth(1)?
        .split(|c: char| c == ',' || c == '}' || c.is_whitespace())
        .find(|w| !w.is_empty() && *w != "jump" && *w != "goto")?
        .to_string();
    let body: Vec<&str> = script
        .lines()
        .skip_while(|l| l.trim() != format!("chain {chain} {{"))
        .skip(1)
        .take_while(|l| l.trim() != "}")
        .collect();
    let rules: Vec<&&str> = body.iter().filter(|l| l.contains(" return")).collect();
    let at = rules.iter().position(|l| l.contains(&set))?;
    Some((at + 1, rules.len()))
}

#[derive(Default)]
struct Samples {
    gbps: Vec<f64>,
    ping_us: Vec<f64>,
    connect_us: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

fn run(a: &Args) -> Result<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("must run as root: it creates network namespaces");
    }
    // Rules are ordered by the sets they name, not by policy: of a few candidates for the
    // client's policy, take the one whose rule comes last in the server's chain.
    let mut worst: Option<(usize, usize, RuleSet, String)> = None;
    let last = a.policies - 1;
    for j in [last, 9.min(last), 99.min(last), 999.min(last)] {
        let rules = compile(&cluster(a, j)?, NODE);
        let script = render_policy_table(POLICY_TABLE, &rules, &PolicyRenderOptions::default());
        let (position, of) = client_rule_position(&script).context("the client's rule")?;
        if worst.as_ref().is_none_or(|w| position > w.0) {
            worst = Some((position, of, rules, script));
        }
    }
    let (position, of, rules, with) = worst.context("no candidate")?;
    let without = format!("add table inet {POLICY_TABLE}\ndelete table inet {POLICY_TABLE}\n");
    let server_ip: IpAddr = SERVER.parse()?;
    let chain_rules = rules
        .pods
        .get(&server_ip)
        .map(|p| match &p.ingress {
            twill_policy::ruleset::Direction::Isolated { entries, .. } => entries.len(),
            twill_policy::ruleset::Direction::NotIsolated => 0,
        })
        .unwrap_or(0);

    let t = topology()?;
    let _iperf = overlay_proc::iperf3_server(&t.server)?;
    connect_server(&t.server)?;
    let to = SocketAddr::new(server_ip, CONNECT_PORT);
    // Warm-up, and a check that the client is admitted at all.
    nft(&t.node, &with)?;
    connect_times(&t.client, to, 10)?;
    overlay_proc::iperf3(&t.client, SERVER, 1)?;

    let (mut none, mut policed) = (Samples::default(), Samples::default());
    let mut ratios = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..a.rounds {
        eprintln!("policy-path-bench: round {}/{}", round + 1, a.rounds);
        for (script, s) in [(&without, &mut none), (&with, &mut policed)] {
            nft(&t.node, script)?;
            s.gbps
                .push(overlay_proc::iperf3(&t.client, SERVER, a.secs)?);
            s.ping_us
                .push(overlay_proc::ping(&t.client, SERVER, 200, "0.005")?.avg_ms * 1e3);
            let times = connect_times(&t.client, to, a.connects)?;
            s.connect_us
                .push(report::percentile(&times, 50.0).as_secs_f64() * 1e6);
        }
        let last = |v: &Vec<f64>| v.last().copied().unwrap_or(f64::NAN);
        ratios.0.push(last(&policed.gbps) / last(&none.gbps));
        ratios.1.push(last(&none.ping_us) / last(&policed.ping_us));
        ratios
            .2
            .push(last(&none.connect_us) / last(&policed.connect_us));
    }
    let row = |metric: &str, twill: f64, reference: f64, unit, paired: f64, target| Row {
        metric: metric.into(),
        twill,
        reference: Some(reference),
        unit,
        target,
        paired_ratio: Some(paired),
    };
    let rows = vec![
        row(
            "one TCP stream, pod to pod (iperf3)",
            median(&policed.gbps),
            median(&none.gbps),
            Unit::Gbps,
            median(&ratios.0),
            Target::MinRatio(MIN_RATIO),
        ),
        row(
            "ping RTT, avg (ratio: no policy / policy)",
            median(&policed.ping_us),
            median(&none.ping_us),
            Unit::Us,
            median(&ratios.1),
            Target::MinRatio(MIN_RATIO),
        ),
        row(
            "new TCP connection, p50 (ratio: no policy / policy)",
            median(&policed.connect_us),
            median(&none.connect_us),
            Unit::Us,
            median(&ratios.2),
            Target::None,
        ),
    ];
    let mut out = format!(
        "policy-path-bench: {} policies select the server ({} allow entries; the client's new connections match rule {position} of {of} in its chain), {} other pods; reference: the same node without the policy table; {} rounds\n\n",
        a.policies, chain_rules, a.pods, a.rounds
    );
    out.push_str(&overlay_report::table(&rows));
    Ok(out)
}

fn main() -> ExitCode {
    match parse_args() {
        Ok(None) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Some(a)) => match run(&a) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("policy-path-bench: {e:#}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("policy-path-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
