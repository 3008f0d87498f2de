//! Many plugin processes at once, and plugin processes killed in the middle of an ADD:
//! the store stays consistent, no address is handed out twice, and DEL or GC bring the
//! node back to empty.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::process::Child;
use std::time::{Duration, Instant};
use twill_tests::fixture::{
    assert_result_json, assert_silent_success, ip_of, reaches, result_address, DEFAULT_BRIDGE,
};
use twill_tests::{CniOutcome, Node, Pod};

fn wait_all(children: Vec<Child>) -> Vec<CniOutcome> {
    children
        .into_iter()
        .map(|c| CniOutcome::from_output(c.wait_with_output().expect("cannot wait for the plugin")))
        .collect()
}

#[test]
fn fifty_parallel_adds_then_fifty_parallel_dels() {
    fifty_parallel_adds_then_fifty_parallel_dels_on(Node::new("par-node"));
}

/// The same with the store served on a socket, as twill-agent does on a node.
#[test]
fn fifty_parallel_adds_then_fifty_parallel_dels_through_the_store_service() {
    let node = Node::new("par-srv");
    node.serve_store();
    fifty_parallel_adds_then_fifty_parallel_dels_on(node);
}

fn fifty_parallel_adds_then_fifty_parallel_dels_on(node: Node) {
    const N: usize = 50;
    let conf = node.conf("1.1.0");
    let pods: Vec<Pod> = (0..N).map(|_| Pod::new("par")).collect();

    let children: Vec<Child> = pods
        .iter()
        .map(|p| node.spawn(&p.call("ADD", &conf)))
        .collect();
    let outs = wait_all(children);

    let mut addrs = BTreeSet::new();
    let mut held = Vec::new();
    for (p, out) in pods.iter().zip(&outs) {
        let r = assert_result_json(out);
        let a = result_address(&r);
        assert!(addrs.insert(a.clone()), "{a} handed out twice");
        assert_eq!(p.ipv4(), vec![a.clone()], "{} does not carry {a}", p.id);
        held.push((p.owner(), ip_of(&a)));
    }
    assert_eq!(addrs.len(), N);

    let res = node.reservation_pairs();
    held.sort();
    assert_eq!(res, held, "the store does not hold exactly the results");
    node.verify_store();
    let mut veths: Vec<String> = pods.iter().map(Pod::host_veth).collect();
    veths.sort();
    assert_eq!(node.host_veths(), veths);

    // The pods are really connected, to the node and to each other.
    let first = ip_of(&result_address(&outs[0].json())).to_string();
    let last = ip_of(&result_address(&outs[N - 1].json())).to_string();
    assert!(reaches(&node.ns, &first));
    assert!(reaches(&node.ns, &last));
    assert!(reaches(&pods[0].ns, &last));

    let children: Vec<Child> = pods
        .iter()
        .map(|p| node.spawn(&p.call("DEL", &conf)))
        .collect();
    for (p, out) in pods.iter().zip(wait_all(children)) {
        assert_silent_success(&out, &format!("DEL of {}", p.id));
    }
    node.assert_empty();
    let mut links = node.ns.links();
    links.sort();
    assert_eq!(
        links,
        vec!["lo", DEFAULT_BRIDGE],
        "only lo and the bridge may remain"
    );
    for p in &pods {
        assert_eq!(p.ns.links(), vec!["lo"], "{} keeps an interface", p.id);
    }
}

#[test]
fn killed_adds_leave_a_consistent_store_and_del_or_gc_recover() {
    killed_adds_leave_a_consistent_store_and_del_or_gc_recover_on(Node::new("kill-node"));
}

/// The same with the store served on a socket: a plugin killed after sending its
/// request leaves a reservation the service completed, which DEL or GC release.
#[test]
fn killed_adds_through_the_store_service_leave_a_consistent_store_and_del_or_gc_recover() {
    let node = Node::new("kill-srv");
    node.serve_store();
    killed_adds_leave_a_consistent_store_and_del_or_gc_recover_on(node);
}

fn killed_adds_leave_a_consistent_store_and_del_or_gc_recover_on(node: Node) {
    const TRIALS: usize = 100;
    let conf = node.conf("1.1.0");

    // How long an ADD takes here (the median of three; the first also creates the
    // bridge), to spread the kills over it.
    let mut live: Vec<(Pod, String)> = Vec::new();
    let mut times = Vec::new();
    for _ in 0..3 {
        let p = Pod::new("kill-live");
        let started = Instant::now();
        let r = node.add_ok(&conf, &p);
        times.push(started.elapsed());
        live.push((p, result_address(&r)));
    }
    times.sort();
    let add_time = times[1];

    let seed = std::env::var("TWILL_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("kill chaos: seed {seed} (TWILL_CHAOS_SEED), one ADD takes {add_time:?}");
    let mut rng = StdRng::seed_from_u64(seed);
    let max_delay_us = (add_time.as_micros() as u64 * 3 / 2).max(1);

    let mut killed: Vec<Pod> = Vec::new();
    let (mut interrupted, mut finished) = (0, 0);
    for trial in 0..TRIALS {
        if trial % 10 == 5 {
            // A normal ADD between the kills must work and get its own address.
            let p = Pod::new("kill-live");
            let r = node.add_ok(&conf, &p);
            live.push((p, result_address(&r)));
        }
        let p = Pod::new("kill");
        let delay = Duration::from_micros(rng.gen_range(0..max_delay_us));
        let mut child = node.spawn(&p.call("ADD", &conf));
        std::thread::sleep(delay);
        let _ = child.kill();
        let status = child.wait().expect("cannot wait for the killed plugin");
        if status.signal() == Some(libc::SIGKILL) {
            interrupted += 1;
        } else {
            assert_eq!(status.code(), Some(0), "an unkilled ADD failed");
            finished += 1;
        }
        killed.push(p);
    }
    eprintln!("kill chaos: {interrupted} ADDs killed midway, {finished} finished first");
    assert!(
        interrupted >= TRIALS / 4,
        "only {interrupted} of {TRIALS} ADDs were interrupted: the kills missed the ADDs"
    );

    // The store is consistent and hands out nothing twice.
    node.verify_store();
    let res = node.reservations();
    let addrs: BTreeSet<_> = res.iter().map(|r| r.address).collect();
    assert_eq!(
        addrs.len(),
        res.len(),
        "an address is reserved twice: {res:?}"
    );
    let owners: BTreeSet<_> = res.iter().map(|r| r.owner.clone()).collect();
    assert_eq!(
        owners.len(),
        res.len(),
        "an owner holds two addresses: {res:?}"
    );
    for (p, a) in &live {
        assert_eq!(
            node.lookup(p),
            vec![ip_of(a)],
            "{} lost its reservation",
            p.id
        );
        assert_eq!(p.ipv4(), vec![a.clone()]);
    }
    // Whatever address a killed ADD left on a pod is reserved for that pod, and no two
    // pods carry the same address.
    let mut carried = BTreeSet::new();
    for p in killed.iter().chain(live.iter().map(|(p, _)| p)) {
        for a in p.ipv4() {
            assert!(carried.insert(a.clone()), "{a} is on two pods");
            assert!(
                res.iter()
                    .any(|r| r.owner == p.owner() && r.address == ip_of(&a)),
                "{} carries {a} without a reservation",
                p.id
            );
        }
    }
    for (_, a) in &live {
        assert!(
            reaches(&node.ns, &ip_of(a).to_string()),
            "live pod {a} unreachable"
        );
    }

    // Recovery, half by DEL ...
    let (by_del, by_gc) = killed.split_at(TRIALS / 2);
    let children: Vec<Child> = by_del
        .iter()
        .map(|p| node.spawn(&p.call("DEL", &conf)))
        .collect();
    for (p, out) in by_del.iter().zip(wait_all(children)) {
        assert_silent_success(&out, &format!("DEL of {}", p.id));
        assert!(node.lookup(p).is_empty(), "DEL left {}'s address", p.id);
    }
    // ... half by GC with only the live pods valid.
    let keep: Vec<&Pod> = live.iter().map(|(p, _)| p).collect();
    assert_silent_success(&node.gc(&conf, &keep), "GC");

    let res = node.reservation_pairs();
    let mut want: Vec<_> = live.iter().map(|(p, a)| (p.owner(), ip_of(a))).collect();
    want.sort();
    assert_eq!(
        res, want,
        "after recovery the store must hold exactly the live pods"
    );
    let mut veths: Vec<String> = keep.iter().map(|p| p.host_veth()).collect();
    veths.sort();
    assert_eq!(
        node.host_veths(),
        veths,
        "after recovery only live pods have veths"
    );
    for p in by_del.iter().chain(by_gc) {
        assert_eq!(p.ns.links(), vec!["lo"], "{} keeps an interface", p.id);
    }
    node.verify_store();
    for (_, a) in &live {
        assert!(
            reaches(&node.ns, &ip_of(a).to_string()),
            "live pod {a} unreachable after GC"
        );
    }

    for (p, _) in &live {
        node.del_ok(&conf, p);
    }
    node.assert_empty();
}
