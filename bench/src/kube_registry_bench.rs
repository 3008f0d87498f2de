//! `kube-registry-bench`: issue 16's table. A real API server holding `--nodes` Node
//! objects of realistic weight (`twill_tests::kube_nodes`), one `twill-agent` with the
//! kubernetes registry started after they exist, then:
//!
//! - start → all peers programmed (the agent's `twill_peers{state="programmed"}`);
//! - the agent's RSS once converged, and its peak (VmHWM);
//! - one new Node → its route in the node, `--adds` times, timed from the create's
//!   return (the API event) and from before it (curl's own round trip included);
//! - the API server's own count of LIST requests on nodes while the agent started
//!   (pages of 500; the controller manager's would be in it too).

mod cli;
#[allow(dead_code)]
mod overlay_agent_probe;
#[allow(dead_code)]
mod overlay_proc;
#[allow(dead_code)]
mod overlay_report;
#[allow(dead_code)]
mod policy_latency_api;
#[allow(dead_code)]
mod report;

use anyhow::{bail, Context, Result};
use overlay_report::{Row, Target, Unit};
use policy_latency_api::Api;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use twill_tests::cluster::Cluster;
use twill_tests::kube::ControlPlane;
use twill_tests::kube_nodes::{create_nodes, heavy_node, one_node_spec, pod_cidr};

const USAGE: &str = "\
usage: kube-registry-bench [options]   (as root; needs `make k8s`)

  --nodes N   Node objects of realistic weight (default 1000)
  --adds N    Nodes added one at a time after convergence (default 50)
";

struct Args {
    nodes: usize,
    adds: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        nodes: 1000,
        adds: 50,
    };
    cli::usize_flags(
        USAGE,
        &mut [("--nodes", &mut a.nodes), ("--adds", &mut a.adds)],
    )?;
    Ok(a)
}

/// The API server's `apiserver_request_total` on nodes for `verb`, summed.
fn node_requests(cp: &ControlPlane, verb: &str) -> Result<f64> {
    let text = cp
        .kubectl_result(&["get", "--raw", "/metrics"], None)
        .map_err(anyhow::Error::msg)?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| l.contains("resource=\"nodes\"") && l.contains(&format!("verb=\"{verb}\"")))
        .filter(|l| l.contains("subresource=\"\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// How long the API server takes to list every Node in pages of `page`, as the agent
/// lists them (curl with the admin certificate, JSON): the floor under start →
/// programmed.
fn list_all(api: &Api, page: usize) -> Result<Duration> {
    let start = Instant::now();
    let mut token = String::new();
    loop {
        let page = api.get(&format!("/api/v1/nodes?limit={page}&continue={token}"))?;
        match page["metadata"]["continue"].as_str() {
            Some(t) if !t.is_empty() => token = t.to_string(),
            _ => return Ok(start.elapsed()),
        }
    }
}

fn programmed(c: &Cluster) -> u64 {
    overlay_agent_probe::metric(&c.nodes[0].ns, "twill_peers{state=\"programmed\"}").unwrap_or(0)
}

fn route_present(c: &Cluster, cidr: &str) -> bool {
    let out = c.nodes[0].ns.run(&["ip", "route", "show", cidr]);
    !out.stdout.is_empty()
}

fn run(args: &Args) -> Result<Vec<Row>> {
    let mut c = Cluster::new(one_node_spec());
    let cp = ControlPlane::for_cluster(&c).map_err(anyhow::Error::msg)?;
    let api = Api::new(&cp, c.underlay.ns.name());
    let started = Instant::now();
    create_nodes(&cp, 0..args.nodes).map_err(anyhow::Error::msg)?;
    let sample = cp
        .kubectl_result(
            &[
                "get",
                "node",
                &twill_tests::kube_nodes::name(0),
                "-o",
                "json",
            ],
            None,
        )
        .map_err(anyhow::Error::msg)?;
    eprintln!(
        "{} Nodes of {:.1} KB (as the API server returns them) written in {:.1} s",
        args.nodes,
        sample.len() as f64 / 1024.0,
        started.elapsed().as_secs_f64()
    );

    // WATCH requests count only when they end: LIST is what a start costs the server.
    let lists = node_requests(&cp, "LIST")?;
    let t0 = Instant::now();
    c.start_all();
    let want = args.nodes as u64;
    while programmed(&c) < want {
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("{} of {want} peers programmed after 120 s", programmed(&c));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let converge = t0.elapsed();
    let agent = c.nodes[0]
        .agent
        .as_ref()
        .map(|a| a.id())
        .context("no agent")?;
    let rss = overlay_agent_probe::status_kib(agent, "VmRSS")?;
    let hwm = overlay_agent_probe::status_kib(agent, "VmHWM")?;
    let lists = node_requests(&cp, "LIST")? - lists;

    let (mut after_event, mut with_write) = (Vec::new(), Vec::new());
    for k in 0..args.adds {
        let i = args.nodes + k;
        let cidr = pod_cidr(i);
        let start = Instant::now();
        api.node(&heavy_node(i))?;
        let written = Instant::now();
        while !route_present(&c, &cidr) {
            if written.elapsed() > Duration::from_secs(10) {
                bail!("no route to {cidr} 10 s after its Node was created");
            }
        }
        after_event.push(written.elapsed());
        with_write.push(start.elapsed());
    }

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    // The table's MB are 10^6 bytes.
    let mb = |kib: u64| kib as f64 * 1024.0 / 1e6;
    let p = |s: &[Duration], q| ms(report::percentile(s, q));
    let floor = list_all(&api, 100)?;
    let mut rows = vec![
        row(
            "start -> all peers programmed",
            ms(converge),
            Target::Below(1000.0),
            Unit::Ms,
        ),
        row(
            "  the API server's paged list alone (curl)",
            ms(floor),
            Target::None,
            Unit::Ms,
        ),
        row(
            "RSS after convergence",
            mb(rss),
            Target::Below(30.0),
            Unit::MB,
        ),
        row("peak RSS (VmHWM)", mb(hwm), Target::Below(40.0), Unit::MB),
        row(
            "new Node -> route, p50 (after the create)",
            p(&after_event, 50.0),
            Target::None,
            Unit::Ms,
        ),
        row(
            "new Node -> route, p99 (after the create)",
            p(&after_event, 99.0),
            Target::Below(100.0),
            Unit::Ms,
        ),
        row(
            "new Node -> route, p99 (create included)",
            p(&with_write, 99.0),
            Target::None,
            Unit::Ms,
        ),
    ];
    rows.push(row(
        "LIST nodes requests while the agent started",
        lists,
        Target::None,
        Unit::Count,
    ));
    Ok(rows)
}

fn row(metric: &str, twill: f64, target: Target, unit: Unit) -> Row {
    Row::alone(metric, twill, unit, target)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(2);
        }
    };
    let title = format!(
        "kubernetes registry, {} Nodes of realistic weight, {} added one at a time",
        args.nodes, args.adds
    );
    overlay_report::finish("kube-registry-bench", &title, run(&args))
}
