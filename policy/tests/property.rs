//! Property test: on random clusters and connections, the compiled rule sets of all nodes
//! decide exactly as the reference evaluator. Fixed seeds, so a failure reproduces.

mod generate;

use std::net::IpAddr;

use generate::{case, pick, EXTERNALS, NODES, PORT_NUMBERS};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use twill_policy::{compile, reference, Cluster, Connection, Protocol};

const CLUSTERS: u64 = 2_000;
const CONNECTIONS_PER_CLUSTER: usize = 60;

fn connection(rng: &mut StdRng, cluster: &Cluster) -> Connection {
    let pod_ips: Vec<IpAddr> = cluster
        .pods
        .iter()
        .flat_map(|p| p.ips.iter().copied())
        .collect();
    let node_ips: Vec<IpAddr> = cluster.node_ips.values().flatten().copied().collect();
    let externals: Vec<IpAddr> = EXTERNALS.iter().map(|ip| ip.parse().expect("ip")).collect();
    let pod_ip = |rng: &mut StdRng| *pick(rng, &pod_ips);
    let (src, dst) = match rng.gen_range(0..10) {
        0..=4 => (pod_ip(rng), pod_ip(rng)),
        5 => (pod_ip(rng), *pick(rng, &externals)),
        6 => (*pick(rng, &externals), pod_ip(rng)),
        7 => (*pick(rng, &node_ips), pod_ip(rng)),
        8 => (pod_ip(rng), *pick(rng, &node_ips)),
        _ => (pod_ip(rng), pod_ip(rng)),
    };
    let protocol = *pick(
        rng,
        &[Protocol::Tcp, Protocol::Tcp, Protocol::Udp, Protocol::Sctp],
    );
    let port = if rng.gen_bool(0.8) {
        *pick(rng, &PORT_NUMBERS)
    } else {
        rng.gen_range(1..=9999)
    };
    Connection {
        src,
        dst,
        protocol,
        port,
    }
}

#[test]
fn compiled_rules_decide_as_the_reference() {
    let (mut allowed, mut denied, mut rejected) = (0usize, 0usize, 0usize);
    // Connections a rejected policy's stand-in denies that would pass without it.
    let mut closed_by_stand_ins = 0usize;
    for seed in 0..CLUSTERS {
        let mut rng = StdRng::seed_from_u64(seed);
        let case = case(&mut rng);
        rejected += case.cluster.rejected.len();
        let mut open_cluster = case.cluster.clone();
        open_cluster.policies.retain(|p| {
            !case
                .cluster
                .rejected
                .iter()
                .any(|r| r.isolating.as_ref() == Some(p))
        });
        let rule_sets: Vec<_> = NODES
            .iter()
            .map(|(node, _)| compile(&case.cluster, node))
            .collect();
        for (rules, (node, _)) in rule_sets.iter().zip(NODES) {
            assert_eq!(
                rules,
                &compile(&case.cluster, node),
                "seed {seed}: compile is not deterministic"
            );
        }
        for _ in 0..CONNECTIONS_PER_CLUSTER {
            let connection = connection(&mut rng, &case.cluster);
            let expected = reference::allowed(&case.cluster, &connection);
            let compiled = rule_sets.iter().all(|rules| rules.allows(&connection));
            if compiled != expected {
                panic!(
                    "seed {seed}: {connection:?}: reference says {expected}, compiled says {compiled}\n\
                     policies: {}\npods: {}\nnamespaces: {}\nrule sets: {}",
                    json!(case.policies),
                    json!(case.pods),
                    json!(case.namespaces),
                    serde_json::to_string_pretty(&rule_sets).unwrap_or_default(),
                );
            }
            if !expected && reference::allowed(&open_cluster, &connection) {
                closed_by_stand_ins += 1;
            }
            if expected {
                allowed += 1;
            } else {
                denied += 1;
            }
        }
    }
    let connections = allowed + denied;
    eprintln!(
        "{CLUSTERS} clusters, {connections} connections: {allowed} allowed, {denied} denied; \
         {rejected} bad policies rejected, their stand-ins denied {closed_by_stand_ins}"
    );
    // Guard against a generator that only ever produces one answer.
    assert!(
        allowed > 10_000 && denied > 10_000,
        "allowed {allowed}, denied {denied}"
    );
    assert!(rejected > 0);
    assert!(closed_by_stand_ins > 1_000, "{closed_by_stand_ins}");
}
