//! `kube-registry-bench`: issue 16's table. A real API server holding `--nodes` Node
//! objects of realistic weight (`twill_tests::kube_nodes`) and their TwillNodes, one
//! `twill-agent` with the kubernetes registry started after they exist, once with
//! `records: nodes` and once with `records: twillnodes` (uninstalled in between), then:
//!
//! - start → all peers programmed (the agent's `twill_peers{state="programmed"}`);
//! - the agent's RSS once converged, and its peak (VmHWM);
//! - one new peer → its route in the node, `--adds` times, timed from the create's
//!   return (the API event) and from before it (curl's own round trip included);
//! - the API server's own count of LIST requests on the watched resource while the
//!   agent started (pages of 100; the controller manager's would be in it too).

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
use twill_tests::kube_nodes::{
    create_nodes, create_twill_nodes, heavy_node, one_node_spec, pod_cidr, twill_node,
};

const USAGE: &str = "\
usage: kube-registry-bench [options]   (as root; needs `make k8s`)

  --nodes N   Node objects of realistic weight (default 1000)
  --adds N    Nodes added one at a time after convergence (default 50)
  --starts K  agent starts per setting, uninstalled in between; the start figure is
              their median, and the slowest is shown too (default 3)
";

struct Args {
    nodes: usize,
    adds: usize,
    starts: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        nodes: 1000,
        adds: 50,
        starts: 3,
    };
    cli::usize_flags(
        USAGE,
        &mut [
            ("--nodes", &mut a.nodes),
            ("--adds", &mut a.adds),
            ("--starts", &mut a.starts),
        ],
    )?;
    if a.starts == 0 {
        bail!("--starts: at least 1");
    }
    Ok(a)
}

/// The API server's `apiserver_request_total` of LISTs on `resource`, summed.
fn list_requests(cp: &ControlPlane, resource: &str) -> Result<f64> {
    let text = cp
        .kubectl_result(&["get", "--raw", "/metrics"], None)
        .map_err(anyhow::Error::msg)?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| l.contains(&format!("resource=\"{resource}\"")) && l.contains("verb=\"LIST\""))
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

/// The agent's figures with one `registry.records` setting.
struct Measured {
    /// Start → all programmed, one per start.
    converge: Vec<Duration>,
    rss_kib: u64,
    hwm_kib: u64,
    /// The part of the RSS that is not the binary's own pages: heap and stacks.
    anon_kib: u64,
    lists: f64,
    /// New peer → route, from the create's return (the API event) and from before it.
    after_event: Vec<Duration>,
    with_write: Vec<Duration>,
}

/// Starts node-1's agent with `records` `starts` times from a bare node (uninstalled
/// in between), waiting for every peer each time; after the last start, measures its
/// memory and adds `adds` peers from index `next` one at a time (a Node, and with
/// TwillNodes its TwillNode; the clock starts at the object the agent watches). The
/// agent is uninstalled after, so the next mode starts from a bare node.
#[allow(clippy::too_many_arguments)]
fn measure(
    c: &mut Cluster,
    cp: &ControlPlane,
    api: &Api,
    records: &str,
    want: u64,
    next: usize,
    adds: usize,
    starts: usize,
) -> Result<Measured> {
    let mut conf: serde_json::Value = serde_json::from_slice(&std::fs::read(&c.conf_path)?)?;
    conf["registry"]["records"] = serde_json::json!(records);
    std::fs::write(&c.conf_path, conf.to_string())?;
    // WATCH requests count only when they end: LIST is what a start costs the server.
    let resource = if records == "twillnodes" {
        "twillnodes"
    } else {
        "nodes"
    };
    let mut converge = Vec::new();
    let mut lists = 0.0;
    for n in 1..=starts {
        if n > 1 {
            uninstall(c)?;
        }
        let lists_before = list_requests(cp, resource)?;
        let t0 = Instant::now();
        c.start_agent(0);
        // node-1 itself is a peer of none: `want` counts the others.
        while programmed(c) < want {
            if t0.elapsed() > Duration::from_secs(120) {
                bail!(
                    "{records}: {} of {want} peers programmed after 120 s",
                    programmed(c)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        converge.push(t0.elapsed());
        lists = list_requests(cp, resource)? - lists_before;
    }
    let agent = c.nodes[0]
        .agent
        .as_ref()
        .map(|a| a.id())
        .context("no agent")?;
    let rss_kib = overlay_agent_probe::status_kib(agent, "VmRSS")?;
    let hwm_kib = overlay_agent_probe::status_kib(agent, "VmHWM")?;
    let anon_kib = anonymous_kib(agent)?;

    let (mut after_event, mut with_write) = (Vec::new(), Vec::new());
    for i in next..next + adds {
        let cidr = pod_cidr(i);
        let start = Instant::now();
        api.node(&heavy_node(i))?;
        if records == "twillnodes" {
            api.twill_node(&twill_node(i))?;
        }
        let written = Instant::now();
        while !route_present(c, &cidr) {
            if written.elapsed() > Duration::from_secs(10) {
                bail!("{records}: no route to {cidr} 10 s after it was created");
            }
        }
        after_event.push(written.elapsed());
        with_write.push(start.elapsed());
    }
    uninstall(c)?;
    Ok(Measured {
        converge,
        rss_kib,
        hwm_kib,
        anon_kib,
        lists,
        after_event,
        with_write,
    })
}

/// Stops node-1's agent and removes what it installed: the next start is from a bare
/// node.
fn uninstall(c: &mut Cluster) -> Result<()> {
    c.nodes[0].stop_agent(libc::SIGTERM);
    let out = c.agent_command(0, Some("uninstall")).output()?;
    if !out.status.success() {
        bail!("uninstall: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// `Anonymous` of `/proc/<pid>/smaps_rollup`, in KiB.
fn anonymous_kib(pid: u32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("Anonymous:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no Anonymous line in smaps_rollup")
}

fn run(args: &Args) -> Result<Vec<Row>> {
    let mut c = Cluster::new(one_node_spec());
    let cp = ControlPlane::for_cluster(&c).map_err(anyhow::Error::msg)?;
    let api = Api::new(&cp, c.underlay.ns.name());
    let started = Instant::now();
    create_nodes(&cp, 0..args.nodes).map_err(anyhow::Error::msg)?;
    create_twill_nodes(&cp, 0..args.nodes).map_err(anyhow::Error::msg)?;
    let size = |kind: &str| -> Result<f64> {
        let doc = cp
            .kubectl_result(
                &["get", kind, &twill_tests::kube_nodes::name(0), "-o", "json"],
                None,
            )
            .map_err(anyhow::Error::msg)?;
        Ok(doc.len() as f64 / 1024.0)
    };
    eprintln!(
        "{} Nodes of {:.1} KB and TwillNodes of {:.1} KB (as the API server returns them) \
         written in {:.1} s",
        args.nodes,
        size("node")?,
        size("twillnode")?,
        started.elapsed().as_secs_f64()
    );

    let want = args.nodes as u64;
    let nodes = measure(
        &mut c,
        &cp,
        &api,
        "nodes",
        want,
        args.nodes,
        args.adds,
        args.starts,
    )?;
    // The first run's new peers have no TwillNode: the second sees the same peers.
    let twill = measure(
        &mut c,
        &cp,
        &api,
        "twillnodes",
        want,
        args.nodes + args.adds,
        args.adds,
        args.starts,
    )?;

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    // The table's MB are 10^6 bytes.
    let mb = |kib: u64| kib as f64 * 1024.0 / 1e6;
    let p = |s: &[Duration], q| ms(report::percentile(s, q));
    let floor = list_all(&api, 100)?;
    let mut rows = vec![row(
        "the API server's paged list of Nodes alone (curl)",
        ms(floor),
        Target::None,
        Unit::Ms,
    )];
    for (mode, m) in [("Nodes", &nodes), ("TwillNodes", &twill)] {
        let starts = format!(
            "start -> all peers programmed (median of {})",
            m.converge.len()
        );
        let figures = [
            (
                starts.as_str(),
                p(&m.converge, 50.0),
                Target::Below(1000.0),
                Unit::Ms,
            ),
            (
                "start -> all peers programmed, slowest start",
                p(&m.converge, 100.0),
                Target::None,
                Unit::Ms,
            ),
            (
                "RSS after convergence",
                mb(m.rss_kib),
                Target::Below(30.0),
                Unit::MB,
            ),
            (
                "  of which heap and stacks (anonymous)",
                mb(m.anon_kib),
                Target::None,
                Unit::MB,
            ),
            (
                "peak RSS (VmHWM)",
                mb(m.hwm_kib),
                Target::Below(40.0),
                Unit::MB,
            ),
            (
                "new peer -> route, p50 (after the create)",
                p(&m.after_event, 50.0),
                Target::None,
                Unit::Ms,
            ),
            (
                "new peer -> route, p99 (after the create)",
                p(&m.after_event, 99.0),
                Target::Below(100.0),
                Unit::Ms,
            ),
            (
                "new peer -> route, p99 (creates included)",
                p(&m.with_write, 99.0),
                Target::None,
                Unit::Ms,
            ),
            (
                "LIST requests while the agent last started",
                m.lists,
                Target::None,
                Unit::Count,
            ),
        ];
        rows.extend(
            figures
                .into_iter()
                .map(|(what, v, target, unit)| row(&format!("{mode}: {what}"), v, target, unit)),
        );
    }
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
