//! Property test: a [`NodeCompiler`] fed random sequences of changes (pods relabelled,
//! moved, re-addressed onto another pod's IP, added, deleted; policies replaced, added,
//! deleted; namespaces relabelled, deleted, added back: a third of the changes) holds after every step exactly what a full `compile`
//! of the same cluster gives, and names every IP whose rules changed.

mod generate;

use std::collections::BTreeSet;
use std::net::IpAddr;

use generate::{case, labels, pick, pod, policy, NAMESPACES, NODES, NS_LABELS, POD_LABELS};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use twill_policy::incremental::NodeCompiler;
use twill_policy::{compile, Cluster, RuleSet};

const SEQUENCES: u64 = 300;
const STEPS: usize = 25;

/// One random change to the objects; a short description for the failure message.
fn mutate(
    rng: &mut StdRng,
    pods: &mut Vec<Value>,
    policies: &mut Vec<Value>,
    namespaces: &mut Vec<Value>,
    next: &mut usize,
) -> String {
    let any = |rng: &mut StdRng, n: usize| rng.gen_range(0..n.max(1));
    // 9..=13: namespace changes, a third of all, so they meet every other kind often.
    match rng.gen_range(0..14) {
        0 | 1 if !pods.is_empty() => {
            let i = any(rng, pods.len());
            pods[i]["metadata"]["labels"] = labels(rng, POD_LABELS);
            format!("relabel pod {i}")
        }
        2 if !pods.is_empty() => {
            let i = any(rng, pods.len());
            pods[i]["spec"]["nodeName"] = json!(pick(rng, &NODES).0);
            format!("move pod {i}")
        }
        3 if pods.len() > 1 => {
            let (i, j) = (any(rng, pods.len()), any(rng, pods.len()));
            pods[i]["status"] = pods[j]["status"].clone();
            format!("pod {i} takes the IPs of pod {j}")
        }
        4 if !pods.is_empty() => {
            let i = any(rng, pods.len());
            let name = pods[i]["metadata"]["name"].clone();
            let index = name
                .as_str()
                .and_then(|n| n.strip_prefix("pod"))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            // Same name, maybe another namespace: a new pod, or a changed one.
            pods[i] = pod(rng, index);
            format!("replace pod {i}")
        }
        5 if !pods.is_empty() => {
            let i = any(rng, pods.len());
            pods.remove(i);
            format!("delete pod {i}")
        }
        6 => {
            *next += 1;
            pods.push(pod(rng, *next));
            format!("add pod {next}")
        }
        7 if !policies.is_empty() => {
            let i = any(rng, policies.len());
            let name = policies[i]["metadata"]["name"].clone();
            policies[i] = policy(rng, 0);
            policies[i]["metadata"]["name"] = name;
            format!("replace policy {i}")
        }
        8 => {
            if policies.is_empty() || rng.gen_bool(0.5) {
                *next += 1;
                policies.push(policy(rng, *next));
                format!("add policy {next}")
            } else {
                let i = any(rng, policies.len());
                policies.remove(i);
                format!("delete policy {i}")
            }
        }
        9 if namespaces.len() > 1 && rng.gen_bool(0.5) => {
            // Its pods stay, as they do until the namespace controller deletes them.
            let i = any(rng, namespaces.len());
            let gone = namespaces.remove(i);
            format!("delete namespace {}", gone["metadata"]["name"])
        }
        9 => {
            let missing = NAMESPACES.iter().find(|name| {
                !namespaces
                    .iter()
                    .any(|ns| ns["metadata"]["name"] == json!(name))
            });
            match missing {
                Some(name) => {
                    namespaces.push(
                        json!({"metadata": {"name": name, "labels": labels(rng, NS_LABELS)}}),
                    );
                    format!("add namespace {name}")
                }
                None => "nothing".into(),
            }
        }
        _ if namespaces.is_empty() => "nothing".into(),
        _ => {
            let i = any(rng, namespaces.len());
            namespaces[i]["metadata"]["labels"] = labels(rng, NS_LABELS);
            format!("relabel namespace {i}")
        }
    }
}

/// IPs whose rules differ between `before` and `after`.
fn differing(before: &RuleSet, after: &RuleSet) -> BTreeSet<IpAddr> {
    let ips: BTreeSet<IpAddr> = before
        .pods
        .keys()
        .chain(after.pods.keys())
        .copied()
        .collect();
    ips.into_iter()
        .filter(|ip| before.pods.get(ip) != after.pods.get(ip))
        .collect()
}

#[test]
fn incremental_compile_equals_full_compile_after_every_change() {
    let (mut steps, mut rebuilt, mut redone) = (0usize, 0usize, 0usize);
    for seed in 0..SEQUENCES {
        let mut rng = StdRng::seed_from_u64(seed);
        let generate::Case {
            mut policies,
            mut pods,
            mut namespaces,
            cluster,
        } = case(&mut rng);
        let node_ips = cluster.node_ips.clone();
        let mut compilers: Vec<NodeCompiler> = NODES
            .iter()
            .map(|(node, _)| NodeCompiler::new(&cluster, node))
            .collect();
        let mut next = 100;
        let mut history = Vec::new();
        for _ in 0..STEPS {
            history.push(mutate(
                &mut rng,
                &mut pods,
                &mut policies,
                &mut namespaces,
                &mut next,
            ));
            let cluster = Cluster::from_json(&policies, &pods, &namespaces, node_ips.clone());
            for (compiler, (node, _)) in compilers.iter_mut().zip(NODES) {
                let before = compiler.rules().clone();
                let changed = compiler.update(&cluster);
                let full = compile(&cluster, node);
                assert_eq!(
                    compiler.rules(),
                    &full,
                    "seed {seed}, node {node}, after {history:?}\npods: {}\npolicies: {}\nnamespaces: {}",
                    json!(pods),
                    json!(policies),
                    json!(namespaces),
                );
                let missed: Vec<IpAddr> = differing(&before, &full)
                    .into_iter()
                    .filter(|ip| !changed.rebuilt && !changed.ips.contains(ip))
                    .collect();
                assert!(
                    missed.is_empty(),
                    "seed {seed}, node {node}, after {history:?}: changed IPs not reported: {missed:?}"
                );
                steps += 1;
                rebuilt += usize::from(changed.rebuilt);
                redone += changed.ips.len();
            }
        }
    }
    eprintln!("{steps} incremental updates: {rebuilt} rebuilt, {redone} pod IPs redone");
    // Guard against a generator, or a compiler, that only rebuilds.
    assert!(rebuilt == 0, "{rebuilt} of {steps} rebuilt");
}
