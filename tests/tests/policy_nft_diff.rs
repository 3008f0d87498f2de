//! The policy table applied as diffs ([`render_diff`]) ends in exactly the kernel state a
//! full replacement gives. Random clusters change step by step (pods relabelled, moved,
//! added, deleted; policies replaced; node addresses changed; every policy removed and
//! back); namespace `diffed` takes each step as a diff, namespace `full` as a
//! replacement with the same names, and `nft -j list table` must agree after each step
//! (handles and counter values aside). Counters a diff keeps must keep their counts:
//! `diffed` starts them at 7 packets, and a kept counter must still say 7.

use std::collections::BTreeMap;
use std::net::IpAddr;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use twill_agent::firewall::policy::{render_diff, PolicyNames, PolicyRenderOptions, PolicyTable};
use twill_policy::incremental::NodeCompiler;
use twill_policy::Cluster;
use twill_tests::{require_root, Netns};

const TABLE: &str = "twill-policy";
const SEEDS: u64 = 3;
const STEPS: usize = 40;
const APPS: [&str; 4] = ["web", "db", "api", "tool"];
const NAMESPACES: [&str; 2] = ["prod", "dev"];

fn nft(ns: &Netns, script: &str) {
    ns.nft_script(script)
        .unwrap_or_else(|e| panic!("{e}\n{script}"));
}

/// The table as sorted JSON objects without handles; counters as (name → packets).
fn listing(ns: &Netns) -> (Vec<String>, BTreeMap<String, u64>) {
    let out = ns.run(&["nft", "-j", "list", "table", "inet", TABLE]);
    if !out.status.success() {
        return (Vec::new(), BTreeMap::new());
    }
    let value: Value = serde_json::from_slice(&out.stdout).expect("nft JSON");
    let mut objects = Vec::new();
    let mut counters = BTreeMap::new();
    let mut rule_index: BTreeMap<String, usize> = BTreeMap::new();
    for item in value["nftables"].as_array().expect("nftables array") {
        let Some((kind, body)) = item.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        let mut body = body.clone();
        let Some(fields) = body.as_object_mut() else {
            continue;
        };
        fields.remove("handle");
        match kind.as_str() {
            "metainfo" => continue,
            "counter" => {
                let name = fields["name"].as_str().unwrap_or_default().to_string();
                counters.insert(name, fields["packets"].as_u64().unwrap_or_default());
                fields.remove("packets");
                fields.remove("bytes");
            }
            "set" | "map" => {
                if let Some(elements) = fields.get_mut("elem").and_then(Value::as_array_mut) {
                    elements.sort_by_key(|e| e.to_string());
                }
            }
            "rule" => {
                let chain = fields["chain"].as_str().unwrap_or_default().to_string();
                let n = rule_index.entry(chain).or_default();
                fields.insert("index".into(), json!(*n));
                *n += 1;
            }
            _ => {}
        }
        objects.push(format!("{kind} {body}"));
    }
    objects.sort();
    (objects, counters)
}

fn pod(rng: &mut StdRng, i: usize) -> Value {
    let mut ips = vec![json!({"ip": format!("10.0.{}.{}", i % 4, 10 + i)})];
    if rng.gen_bool(0.3) {
        ips.push(json!({"ip": format!("fd00::{:x}", 0x100 + i)}));
    }
    let node = if rng.gen_bool(0.6) { "n1" } else { "n2" };
    json!({
        "metadata": {"namespace": NAMESPACES.choose(rng), "name": format!("pod{i}"),
                     "labels": {"app": APPS.choose(rng)}},
        "spec": {"nodeName": node, "containers": [{"name": "c",
                 "ports": [{"name": "http", "containerPort": 80 + (i % 3) as u16}]}]},
        "status": {"podIPs": ips}
    })
}

fn policy(rng: &mut StdRng, j: usize) -> Value {
    let app = |rng: &mut StdRng| json!({"matchLabels": {"app": APPS.choose(rng)}});
    let peer = match rng.gen_range(0..3) {
        0 => json!({"podSelector": app(rng)}),
        1 => json!({"namespaceSelector": {"matchLabels": {"env": NAMESPACES.choose(rng)}},
                    "podSelector": app(rng)}),
        _ => json!({"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.3.0/24"]}}),
    };
    let port = match rng.gen_range(0..3) {
        0 => json!({"port": "http"}),
        1 => json!({"port": 5432}),
        _ => json!({"protocol": "UDP", "port": 53, "endPort": 60}),
    };
    let mut spec = json!({"podSelector": app(rng), "ingress": [{"from": [peer], "ports": [port]}]});
    if rng.gen_bool(0.3) {
        spec["egress"] = json!([{"to": [{"podSelector": app(rng)}], "ports": [{"port": "http"}]}]);
    }
    json!({"metadata": {"namespace": NAMESPACES.choose(rng), "name": format!("pol{j}")},
           "spec": spec})
}

fn namespaces() -> Vec<Value> {
    NAMESPACES
        .iter()
        .map(|n| json!({"metadata": {"name": n, "labels": {"env": n}}}))
        .collect()
}

/// Gives every counter of the full script `packets 7`.
fn with_counts(script: &str) -> String {
    // Counters are the only blocks rendered empty.
    script.replace(" {\n    }\n", " {\n        packets 7 bytes 700\n    }\n")
}

#[test]
fn a_diff_leaves_the_kernel_as_a_full_apply_does_and_keeps_counters() {
    require_root();
    let diffed = Netns::new("poldiff");
    let full = Netns::new("polfull");
    let opts = PolicyRenderOptions::default();
    let (mut diffs, mut replacements, mut kept_counters) = (0, 0, 0);
    for seed in 0..SEEDS {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut pods: Vec<Value> = (0..30).map(|i| pod(&mut rng, i)).collect();
        let mut policies: Vec<Value> = (0..8).map(|j| policy(&mut rng, j)).collect();
        let mut node_ips: BTreeMap<String, Vec<IpAddr>> =
            [("n1".to_string(), vec!["192.168.0.1".parse().expect("ip")])].into();
        let cluster = Cluster::from_json(&policies, &pods, &namespaces(), node_ips.clone());
        let mut compiler = NodeCompiler::new(&cluster, "n1");
        let mut names = PolicyNames::default();
        let mut applied: Option<PolicyTable> = None;
        let mut parked = Vec::new();
        for step in 0..STEPS {
            // Policies parked one step ago come back.
            let change = if parked.is_empty() {
                rng.gen_range(0..10)
            } else {
                9
            };
            match change {
                0..=3 => {
                    let i = rng.gen_range(0..pods.len());
                    pods[i]["metadata"]["labels"]["app"] = json!(APPS.choose(&mut rng));
                }
                4 => {
                    let i = rng.gen_range(0..pods.len());
                    pods[i] = pod(&mut rng, 100 + step);
                }
                5 => {
                    let i = rng.gen_range(0..pods.len());
                    pods.remove(i);
                }
                6 | 7 => {
                    let j = rng.gen_range(0..policies.len().max(1));
                    if j < policies.len() {
                        policies[j] = policy(&mut rng, j);
                    }
                }
                8 => {
                    let last = rng.gen_range(1..=4);
                    node_ips.insert(
                        "n1".into(),
                        vec![format!("192.168.0.{last}").parse().expect("ip")],
                    );
                }
                // Every policy away (no table) for one step.
                _ => std::mem::swap(&mut policies, &mut parked),
            }

            let cluster = Cluster::from_json(&policies, &pods, &namespaces(), node_ips.clone());
            compiler.update(&cluster);
            let table = PolicyTable::build(compiler.rules(), &opts, &mut names);
            nft(&full, &table.render_full(TABLE));
            let diff = applied
                .as_ref()
                .and_then(|old| render_diff(TABLE, old, &table));
            let (before_counts, kept): (BTreeMap<String, u64>, Vec<String>) = match &diff {
                Some(diff) => {
                    let (_, counts) = listing(&diffed);
                    nft(&diffed, &diff.script);
                    diffs += 1;
                    let kept = counts
                        .keys()
                        .filter(|name| table.counters.iter().any(|c| &c.name == *name))
                        .cloned()
                        .collect();
                    (counts, kept)
                }
                None => {
                    nft(&diffed, &with_counts(&table.render_full(TABLE)));
                    replacements += 1;
                    (BTreeMap::new(), Vec::new())
                }
            };
            let (want, _) = listing(&full);
            let (got, counts) = listing(&diffed);
            assert_eq!(
                got,
                want,
                "seed {seed}, step {step}: the diff left another table\n{}",
                diff.map(|d| d.script).unwrap_or_default()
            );
            for name in kept {
                assert_eq!(
                    counts.get(&name),
                    before_counts.get(&name),
                    "seed {seed}, step {step}: counter {name} was reset by the diff"
                );
                kept_counters += 1;
            }
            applied = Some(table);
        }
    }
    eprintln!("{diffs} diffs, {replacements} replacements, {kept_counters} counters kept");
    assert!(diffs > 60, "only {diffs} diffs");
    assert!(kept_counters > 100, "only {kept_counters} counters checked");
}
