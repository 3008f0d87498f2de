//! `twill-lab`: a whole Twill cluster on one machine. Nodes are network namespaces on an
//! underlay (two segments joined by a router, so both direct routing and VXLAN show
//! up), each running `twill-agent`; pods are namespaces wired by the real `twill`
//! plugin, called exactly as a runtime calls it with the conflist the agent wrote.
//! Prints the node table, the pod table and the pod-to-pod ping matrix; exits non-zero
//! if any pair fails.

use anyhow::{bail, Context, Result};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use twill_tests::cluster::{ping_rtt, tail, Cluster, ClusterPod, ClusterSpec, RegistryKind};
use twill_tests::etcd::EtcdServer;
use twill_tests::kube::ControlPlane;
use twill_tests::netns::{run, set_run_prefix};
use twill_tests::{require_root, scenarios};

mod policy_demo;

/// Every lab namespace and directory starts with this; `down` removes them.
const PREFIX: &str = "twlab-";

const USAGE: &str =
    "usage: twill-lab [up] [--nodes N] [--pods-per-node N] [--registry file|etcd|kubernetes]
                 [--segments N] [--direct-routing auto|never] [--keep]
                 [--policy-demo]
       twill-lab down

  up (default)   stand up the cluster, print node and pod tables and the ping matrix,
                 tear it down (unless --keep); exit 1 if any pod pair fails
  --nodes N            nodes (default 3)
  --pods-per-node N    pods per node (default 2), named sleep-1, sleep-2, ...
  --registry KIND      file (default; no outside service), etcd (runs a real etcd) or
                       kubernetes (a real kube-apiserver + controller-manager built by
                       `make k8s`; Node objects registered for the lab's nodes)
  --segments N         underlay segments joined by a router (default 2)
  --direct-routing M   auto (default: same-segment peers without encapsulation) or never
  --keep               leave everything up for exploring; `twill-lab down` removes it
  --no-scenarios       skip the seeds' scenarios after the matrix (pod replaced,
                       ClusterIP service, NodePort from outside, pod to outside)
  --policy-demo        with --registry kubernetes: give the pods Pod objects, apply a
                       deny-all and then an allow-from-sleep-1 NetworkPolicy, and print
                       the ping matrix after each (the agents enforce them)
  down                 remove a lab left up with --keep (or by a killed run)

Run as root. Explore a kept lab with e.g.
  ip netns exec twlab-<n>-n1 ip route
  ip netns exec twlab-<n>-n1 twill-agent status";

struct Options {
    nodes: usize,
    pods: usize,
    etcd: bool,
    kube: bool,
    segments: usize,
    direct: bool,
    keep: bool,
    down: bool,
    scenarios: bool,
    policy_demo: bool,
}

fn parse_args() -> Result<Options> {
    let mut o = Options {
        nodes: 3,
        pods: 2,
        etcd: false,
        kube: false,
        segments: 2,
        direct: true,
        keep: false,
        down: false,
        scenarios: true,
        policy_demo: false,
    };
    let mut args = std::env::args().skip(1);
    let number = |flag: &str, v: Option<String>, max: usize| -> Result<usize> {
        let v = v.with_context(|| format!("{flag} needs a number"))?;
        let n: usize = v
            .parse()
            .with_context(|| format!("{flag} {v:?} is not a number"))?;
        if !(1..=max).contains(&n) {
            bail!("{flag} must be between 1 and {max}");
        }
        Ok(n)
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "up" => {}
            "down" => o.down = true,
            "--nodes" => o.nodes = number("--nodes", args.next(), 50)?,
            "--pods-per-node" | "--pods" => o.pods = number("--pods-per-node", args.next(), 50)?,
            "--segments" => o.segments = number("--segments", args.next(), 8)?,
            "--registry" => match args.next().as_deref() {
                Some("file") => (o.etcd, o.kube) = (false, false),
                Some("etcd") => (o.etcd, o.kube) = (true, false),
                Some("kubernetes") => (o.etcd, o.kube) = (false, true),
                other => bail!("--registry takes file, etcd or kubernetes, not {other:?}"),
            },
            "--direct-routing" => match args.next().as_deref() {
                Some("auto") => o.direct = true,
                Some("never") => o.direct = false,
                other => bail!("--direct-routing takes auto or never, not {other:?}"),
            },
            "--keep" => o.keep = true,
            "--no-scenarios" => o.scenarios = false,
            "--policy-demo" => o.policy_demo = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if o.policy_demo && !o.kube {
        bail!("--policy-demo needs --registry kubernetes (NetworkPolicies are API objects)");
    }
    Ok(o)
}

fn main() -> ExitCode {
    match parse_args().and_then(|o| if o.down { down().map(|_| true) } else { up(o) }) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("twill-lab: {e:#}");
            eprintln!(
                "twill-lab: what this run made is removed on exit; after a kill, `twill-lab down` (or `make lab-down`) removes leftovers"
            );
            ExitCode::FAILURE
        }
    }
}

fn lab_namespaces() -> Vec<String> {
    let out = run(&["ip", "netns", "list"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_string)
        .collect()
}

/// Kills every process in the lab's namespaces (agents, etcd), deletes the namespaces
/// and the lab's directories.
fn down() -> Result<()> {
    require_root();
    let names = lab_namespaces();
    for ns in &names {
        let pids = run(&["ip", "netns", "pids", ns]);
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: plain kill(2) of a process in a lab namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    for ns in &names {
        let _ = run(&["ip", "netns", "del", ns]);
    }
    let mut dirs = 0;
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(PREFIX) {
                let _ = std::fs::remove_dir_all(e.path());
                dirs += 1;
            }
        }
    }
    println!("removed {} namespaces and {dirs} directories", names.len());
    Ok(())
}

fn step(n: usize, total: usize, what: &str) {
    eprintln!("[{n}/{total}] {what}");
}

fn up(o: Options) -> Result<bool> {
    require_root();
    if !lab_namespaces().is_empty() {
        bail!("a lab is already up (namespaces {PREFIX}*); run `twill-lab down` first");
    }
    set_run_prefix(PREFIX);
    let started = Instant::now();
    let total = 4 + usize::from(o.scenarios) + usize::from(o.policy_demo);
    eprintln!(
        "twill-lab: {} nodes on {} underlay segment(s), {} pods per node, {} registry, direct routing {}",
        o.nodes,
        o.segments,
        o.pods,
        if o.etcd {
            "etcd"
        } else if o.kube {
            "kubernetes"
        } else {
            "file"
        },
        if o.direct { "auto" } else { "never" }
    );

    step(1, total, "underlay, router and node namespaces");
    let router = "192.168.1.254";
    let mut c = Cluster::new(ClusterSpec {
        nodes: o.nodes,
        segments: o.segments,
        direct_routing: o.direct,
        registry: if o.etcd {
            RegistryKind::Etcd {
                endpoint: format!("http://{router}:2379"),
            }
        } else if o.kube {
            // What twill.yaml ships: agents watch TwillNodes.
            RegistryKind::KubernetesTwillNodes
        } else {
            RegistryKind::File
        },
        resync_secs: 30.0,
        agents_die_with_parent: !o.keep,
        ..ClusterSpec::default()
    });
    let etcd = if o.etcd {
        eprintln!("      starting etcd at {router}:2379 in the underlay namespace");
        Some(EtcdServer::start_in(c.underlay.ns.name(), router))
    } else {
        None
    };
    let control_plane = if o.kube {
        eprintln!("      starting kube-apiserver at https://{router}:6443 in the underlay namespace; registering a Node per node");
        let cp = ControlPlane::for_cluster(&c).map_err(anyhow::Error::msg)?;
        eprintln!(
            "      admin kubeconfig: {}",
            cp.admin_kubeconfig().display()
        );
        Some(cp)
    } else {
        None
    };

    step(
        2,
        total,
        "one twill-agent per node; waiting until every agent is ready",
    );
    c.start_all();
    if let Err(e) = c.wait_ready(Duration::from_secs(30)) {
        bail!("{e}");
    }
    eprintln!("      ready after {:.1}s", started.elapsed().as_secs_f64());

    step(3, total, "pods: CNI ADD through the real twill plugin");
    let mut pods: Vec<ClusterPod> = Vec::new();
    for i in 0..o.nodes {
        for _ in 0..o.pods {
            let name = format!("sleep-{}", pods.len() + 1);
            let pod = c
                .add_pod(i, &name)
                .map_err(anyhow::Error::msg)
                .with_context(|| {
                    format!(
                        "agent log of {}:\n{}",
                        c.nodes[i].name,
                        tail(&c.nodes[i].log(), 10)
                    )
                })?;
            pods.push(pod);
        }
    }

    print_nodes(&c);
    print_pods(&c, &pods);

    step(4, total, "ping matrix (from row to column)");
    let failures = print_matrix(&pods);
    let pairs = pods.len() * pods.len().saturating_sub(1);
    println!(
        "\n{} of {pairs} pairs answered; {:.1}s",
        pairs - failures,
        started.elapsed().as_secs_f64()
    );

    let mut scenario_failures = 0;
    if o.scenarios {
        step(5, total, "the seeds' scenarios");
        scenario_failures = run_scenarios(&c, &mut pods);
    }
    let mut demo_ok = true;
    if let (true, Some(cp)) = (o.policy_demo, &control_plane) {
        step(total, total, "NetworkPolicy demo (ping matrices)");
        demo_ok = policy_demo::run(&c, cp, &pods, o.keep)?;
    }

    if o.keep {
        println!("\nleft up (--keep). Try:");
        println!("  ip netns list | grep {PREFIX}");
        println!(
            "  ip netns exec {} {} status",
            c.nodes[0].ns.name(),
            Cluster::agent_bin().display()
        );
        println!(
            "  ip netns exec {} ping {}",
            pods[0].ns.name(),
            pods.last().map(|p| p.ip.as_str()).unwrap_or("")
        );
        println!("remove it with: twill-lab down");
        std::mem::forget(pods);
        std::mem::forget(etcd);
        std::mem::forget(control_plane);
        std::mem::forget(c);
    } else {
        for p in &pods {
            if let Err(e) = c.del_pod(p) {
                eprintln!("twill-lab: {e}");
            }
        }
    }
    Ok(failures == 0 && scenario_failures == 0 && demo_ok)
}

/// Runs each scenario of the seeds on the lab's pods; prints OK or FAIL with what was
/// shown; returns how many failed.
fn run_scenarios(c: &Cluster, pods: &mut [ClusterPod]) -> usize {
    let mut failed = 0;
    let mut report = |name: &str, r: Result<String, String>| match r {
        Ok(summary) => println!("  OK    {name}: {summary}"),
        Err(why) => {
            failed += 1;
            println!("  FAIL  {name}: {why}");
        }
    };
    // Pods on other nodes than the first pod's, for clients and backends.
    let first_node = pods[0].node;
    let remote = pods.iter().position(|p| p.node != first_node);
    let Some(remote) = remote else {
        println!("  (scenarios need two nodes)");
        return 0;
    };
    {
        let (head, tail) = pods.split_at_mut(1);
        let clients: Vec<&ClusterPod> = tail.iter().filter(|p| p.node != first_node).collect();
        report(
            "pod replaced",
            scenarios::pod_replaced(c, &mut head[0], &clients),
        );
    }
    let backends: Vec<&ClusterPod> = pods.iter().skip(1).collect();
    report(
        "ClusterIP service",
        scenarios::cluster_ip_service(c, &pods[0], &backends),
    );
    match scenarios::outside_client(c, 0, 200) {
        Ok(outside) => report(
            "NodePort from outside",
            scenarios::node_port(c, &outside, 0, &pods[remote]),
        ),
        Err(e) => report("NodePort from outside", Err(e)),
    }
    report(
        "pod to outside",
        scenarios::pod_egress(c, &pods[0], &pods[remote]),
    );
    failed
}

fn print_nodes(c: &Cluster) {
    println!("\nNODE      SUBNET           UNDERLAY IP     MODE TO EACH PEER");
    for n in &c.nodes {
        let peers: Vec<String> = n
            .peer_rows()
            .iter()
            .map(|p| {
                format!(
                    "{} {}",
                    p["node"].as_str().unwrap_or("?"),
                    p["mode"].as_str().unwrap_or("?")
                )
            })
            .collect();
        println!(
            "{:<9} {:<16} {:<15} {}",
            n.name,
            n.subnet().unwrap_or_else(|| "-".into()),
            n.ip,
            peers.join(", ")
        );
    }
}

fn print_pods(c: &Cluster, pods: &[ClusterPod]) {
    println!("\nPOD        NODE      IP");
    for p in pods {
        println!("{:<10} {:<9} {}", p.name, c.nodes[p.node].name, p.ip);
    }
    println!();
}

fn print_matrix(pods: &[ClusterPod]) -> usize {
    print!("{:<10}", "");
    for p in pods {
        print!(" {:<12}", p.name);
    }
    println!();
    let mut failures = 0;
    for from in pods {
        print!("{:<10}", from.name);
        for to in pods {
            let cell = if std::ptr::eq(from, to) {
                "-".to_string()
            } else {
                match ping_rtt(&from.ns, &to.ip) {
                    Some(rtt) => format!("OK {rtt:.3}ms"),
                    None => {
                        failures += 1;
                        "FAIL".to_string()
                    }
                }
            };
            print!(" {cell:<12}");
        }
        println!();
    }
    failures
}
