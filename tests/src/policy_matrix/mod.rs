//! The NetworkPolicy reachability matrix, in the style of the upstream Kubernetes e2e
//! suite: pods x/a .. z/c over two nodes, and for each step the full matrix of who
//! reaches whom (per probed port and protocol) polled until it equals the expected one
//! or [`BOUND`] passes; on failure both matrices are printed side by side.

mod probe;
mod setup;
mod table;

pub use probe::{probe_all, probe_once, Probe, Proto, UdpEcho, PROBE_TIMEOUT};
pub use setup::{namespace_labels, pod_labels, port_name, MatrixPod, NAMESPACES, POD_NAMES};
pub use table::{side_by_side, Table};

use crate::cluster::{tail, Cluster};
use crate::kube::ControlPlane;
use serde_json::Value;
use std::cell::RefCell;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How long a change may take to show in the whole matrix.
pub const BOUND: Duration = Duration::from_secs(5);

/// The probes of an ordinary step: TCP 80 and 81, UDP 80.
pub const PROBES: [Probe; 3] = [Probe::tcp(80), Probe::tcp(81), Probe::udp(80)];

/// A row: who connects (a pod or a node), from inside which namespace.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: String,
    pub netns: String,
}

/// A column: what is connected to.
#[derive(Debug, Clone)]
pub struct Target {
    pub id: String,
    pub ip: IpAddr,
}

/// The namespace part of a pod id `ns/name`.
pub fn ns_of(id: &str) -> &str {
    id.split('/').next().unwrap_or(id)
}

/// The name part of a pod id `ns/name`.
pub fn name_of(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}

/// How long a step took to show in the matrix, counted from before its API write.
#[derive(Debug, Clone)]
pub struct StepTime {
    pub step: String,
    /// Until the write returned (kubectl: a process, and the API server's answer).
    pub written: Duration,
    /// Until the matrix was seen as expected (the end of the matching round).
    pub took: Duration,
    /// When the matching round of probes started: the change was in force by then, up
    /// to one probe timeout later.
    pub last_round: Duration,
}

/// The suite's cluster, its pods, and the convergence times of the steps so far.
pub struct PolicyMatrix {
    pub pods: Vec<MatrixPod>,
    pub cp: ControlPlane,
    pub cluster: Cluster,
    times: RefCell<Vec<StepTime>>,
    labels_changed: RefCell<bool>,
}

impl PolicyMatrix {
    /// The cluster with the nine pods, pod `i` (x/a, x/b, .. z/c) on node `i % 2`.
    pub fn start() -> Result<PolicyMatrix, String> {
        let (cluster, cp) = setup::start_cluster()?;
        let mut pods = Vec::new();
        for (i, (ns, name)) in NAMESPACES
            .iter()
            .flat_map(|ns| POD_NAMES.iter().map(move |n| (*ns, *n)))
            .enumerate()
        {
            pods.push(setup::start_pod(&cluster, &cp, ns, name, i % 2)?);
        }
        Ok(PolicyMatrix {
            pods,
            cp,
            cluster,
            times: RefCell::new(Vec::new()),
            labels_changed: RefCell::new(false),
        })
    }

    /// Adds pod `namespace/name` on node `node` (servers, Pod object and IP).
    pub fn add_pod(&mut self, namespace: &str, name: &str, node: usize) -> Result<(), String> {
        let pod = setup::start_pod(&self.cluster, &self.cp, namespace, name, node)?;
        self.pods.push(pod);
        Ok(())
    }

    /// Deletes pod `id`'s object and runs the plugin's DEL, as the kubelet would.
    pub fn remove_pod(&mut self, id: &str) -> Result<(), String> {
        let i = self
            .pods
            .iter()
            .position(|p| p.id() == id)
            .ok_or_else(|| format!("no pod {id}"))?;
        let pod = self.pods.remove(i);
        self.kubectl(&[
            "-n",
            &pod.namespace,
            "delete",
            "pod",
            &pod.name,
            "--wait=false",
        ])?;
        self.cluster.del_pod(&pod.pod)
    }

    pub fn kubectl(&self, args: &[&str]) -> Result<(), String> {
        setup::kubectl(&self.cp, args, None)
    }

    /// `kubectl apply` of one object.
    pub fn apply(&self, doc: &Value) -> Result<(), String> {
        setup::kubectl(&self.cp, &["apply", "-f", "-"], Some(&doc.to_string()))
    }

    /// Sets (`Some`) or removes (`None`) one label of pod `id`.
    pub fn label_pod(&self, id: &str, key: &str, value: Option<&str>) -> Result<(), String> {
        *self.labels_changed.borrow_mut() = true;
        let arg = label_arg(key, value);
        let (ns, name) = (ns_of(id), name_of(id));
        self.kubectl(&["-n", ns, "label", "pod", name, &arg, "--overwrite"])
    }

    /// Sets (`Some`) or removes (`None`) one label of namespace `ns`.
    pub fn label_namespace(&self, ns: &str, key: &str, value: Option<&str>) -> Result<(), String> {
        *self.labels_changed.borrow_mut() = true;
        self.kubectl(&[
            "label",
            "namespace",
            ns,
            &label_arg(key, value),
            "--overwrite",
        ])
    }

    /// Between cases: [`PolicyMatrix::clear`], then the matrix open again.
    pub fn reset(&self, case: &str) {
        let what = format!("{case}: reset");
        self.step(&what, Self::clear, &PROBES, |_, _, _| true);
    }

    /// Every policy deleted, the labels of every pod and namespace as they were at the
    /// start.
    pub fn clear(&self) -> Result<(), String> {
        for ns in NAMESPACES {
            self.kubectl(&["-n", ns, "delete", "networkpolicy", "--all"])?;
        }
        if self.labels_changed.replace(false) {
            for ns in NAMESPACES {
                self.replace_labels("namespace", None, ns, &namespace_labels(ns))?;
            }
            for p in &self.pods {
                let labels = pod_labels(&p.name);
                self.replace_labels("pod", Some(&p.namespace), &p.name, &labels)?;
            }
        }
        Ok(())
    }

    fn replace_labels(
        &self,
        kind: &str,
        ns: Option<&str>,
        name: &str,
        labels: &Value,
    ) -> Result<(), String> {
        let patch = serde_json::json!([
            {"op": "replace", "path": "/metadata/labels", "value": labels}
        ])
        .to_string();
        let mut args = vec!["patch", kind, name, "--type=json", "-p", &patch];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        self.kubectl(&args)
    }

    /// Every pod as a client.
    pub fn pod_clients(&self) -> Vec<Client> {
        self.pods
            .iter()
            .map(|p| Client {
                id: p.id(),
                netns: p.pod.ns.path(),
            })
            .collect()
    }

    /// Every pod as a target, at its pod IP.
    pub fn pod_targets(&self) -> Vec<Target> {
        self.pods
            .iter()
            .map(|p| Target {
                id: p.id(),
                ip: p.ip(),
            })
            .collect()
    }

    /// Every node as a client (rows `node-1`, `node-2`).
    pub fn node_clients(&self) -> Vec<Client> {
        self.cluster
            .nodes
            .iter()
            .map(|n| Client {
                id: n.name.clone(),
                netns: n.ns.path(),
            })
            .collect()
    }

    /// The node a pod runs on, by name (`node-1`).
    pub fn node_of(&self, id: &str) -> Option<&str> {
        let p = self.pods.iter().find(|p| p.id() == id)?;
        Some(self.cluster.nodes[p.pod.node].name.as_str())
    }

    /// Runs `write` (a change through the API), then [`PolicyMatrix::expect`]s the
    /// matrix between every pod, a pod always reaching itself (its own address never
    /// leaves its namespace). The time is counted from before `write`.
    pub fn step(
        &self,
        what: &str,
        write: impl FnOnce(&Self) -> Result<(), String>,
        probes: &[Probe],
        want: impl Fn(&str, &str, Probe) -> bool,
    ) {
        let (clients, targets) = (self.pod_clients(), self.pod_targets());
        self.step_between(
            what,
            &clients,
            &targets,
            write,
            probes,
            |from, to, probe| from == to || want(from, to, probe),
        );
    }

    /// Runs `write`, then polls the matrix `clients` × `targets` for every probe until
    /// it is `want`; records and prints how long that took since before `write`; panics
    /// with the expected and observed matrices, the agents' logs and policy tables when
    /// it is not so within [`BOUND`].
    pub fn step_between(
        &self,
        what: &str,
        clients: &[Client],
        targets: &[Target],
        write: impl FnOnce(&Self) -> Result<(), String>,
        probes: &[Probe],
        want: impl Fn(&str, &str, Probe) -> bool,
    ) {
        let start = Instant::now();
        if let Err(e) = write(self) {
            panic!("{what}: {e}");
        }
        let written = start.elapsed();
        let rows: Vec<String> = clients.iter().map(|c| c.id.clone()).collect();
        let cols: Vec<String> = targets.iter().map(|t| t.id.clone()).collect();
        let expected: Vec<Table> = probes
            .iter()
            .map(|p| Table::from_fn(&rows, &cols, |r, c| want(r, c, *p)))
            .collect();
        let jobs: Vec<(String, IpAddr, Probe)> = probes
            .iter()
            .flat_map(|p| {
                clients
                    .iter()
                    .flat_map(move |c| targets.iter().map(move |t| (c.netns.clone(), t.ip, *p)))
            })
            .collect();
        let mut rounds = 0;
        loop {
            rounds += 1;
            let round = start.elapsed();
            let verdicts = probe_all(&jobs);
            let cells = rows.len() * cols.len();
            let observed: Vec<Table> = verdicts
                .chunks(cells.max(1))
                .map(|chunk| Table {
                    rows: rows.clone(),
                    cols: cols.clone(),
                    cells: chunk.to_vec(),
                })
                .collect();
            if observed == expected {
                let took = start.elapsed();
                println!(
                    "{what}: matrix as expected after {took:?} ({rounds} rounds, the last \
                     started at {round:?})"
                );
                self.times.borrow_mut().push(StepTime {
                    step: what.to_string(),
                    written,
                    took,
                    last_round: round,
                });
                return;
            }
            if start.elapsed() >= BOUND {
                let mut msg = format!(
                    "{what}: matrix not as expected after {:?}\n",
                    start.elapsed()
                );
                for ((probe, want), got) in probes.iter().zip(&expected).zip(&observed) {
                    if want != got {
                        msg.push_str(&side_by_side(&probe.to_string(), want, got));
                    }
                }
                panic!("{msg}{}", self.diagnostics());
            }
        }
    }

    /// The agents' log tails and policy tables, for a failure message.
    pub fn diagnostics(&self) -> String {
        let mut s = String::new();
        for n in &self.cluster.nodes {
            let table = n.ns.run(&["nft", "list", "table", "inet", "twill_policy"]);
            s.push_str(&format!(
                "--- {} log ---\n{}\n--- {} table inet twill_policy ---\n{}\n",
                n.name,
                tail(&n.log(), 15),
                n.name,
                tail(&String::from_utf8_lossy(&table.stdout), 80)
            ));
        }
        s
    }

    /// The convergence time of every step so far, in order.
    pub fn times(&self) -> Vec<StepTime> {
        self.times.borrow().clone()
    }
}

fn label_arg(key: &str, value: Option<&str>) -> String {
    match value {
        Some(v) => format!("{key}={v}"),
        None => format!("{key}-"),
    }
}
