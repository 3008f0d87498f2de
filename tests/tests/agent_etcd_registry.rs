//! The agent's etcd registry against a real etcd (`/usr/bin/etcd` on loopback): subnet
//! allocation under contention, exhaustion, getting the old subnet back after a
//! restart and after lease expiry, the watch (joins, expiry, malformed entries, an etcd
//! restart), and leave. No namespaces: no root needed.
//!
//! Every wait has a deadline; nothing sleeps for a fixed time.

use etcd_client::{Client, GetOptions};
use ipnet::IpNet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{sleep, timeout, Instant};
use twill_agent::record::{Mac, VtepRecord};
use twill_agent::registry::etcd::EtcdRegistry;
use twill_agent::registry::{Announcement, Registry, RegistryError, Snapshot};
use twill_conf::cluster::PodNetwork;
use twill_tests::etcd::{free_port, EtcdServer};

/// Short, so expiry tests stay quick; etcd's minimum is about 2 s.
const TTL: u32 = 3;
/// Long enough for a lease of [`TTL`] to expire and etcd to notice (it checks every
/// 500 ms), with room for a loaded machine.
const EXPIRY_DEADLINE: Duration = Duration::from_secs(20);
const DEADLINE: Duration = Duration::from_secs(10);

fn net(cidr: &str, len: u8) -> PodNetwork {
    PodNetwork {
        network: cidr.parse().expect("a CIDR"),
        subnet_len: len,
    }
}

fn v4() -> Vec<PodNetwork> {
    vec![net("10.244.0.0/16", 24)]
}

fn subnet(s: &str) -> IpNet {
    s.parse().expect("a CIDR")
}

fn ann(node: &str, i: u8) -> Announcement {
    Announcement {
        node: node.to_string(),
        public_ip: format!("192.168.0.{i}").parse().expect("an IP"),
        vtep_mac: Mac([0x0a, 0x58, 0, 0, 0, i]),
    }
}

async fn registry(server: &EtcdServer, prefix: &str, nets: Vec<PodNetwork>) -> EtcdRegistry {
    EtcdRegistry::connect(&[server.endpoint()], prefix, TTL, nets)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", server.endpoint()))
}

async fn raw_client(server: &EtcdServer) -> Client {
    Client::connect([server.endpoint()], None)
        .await
        .expect("etcd-client connects")
}

/// Starts `reg.watch` on a task; returns the receiver and the task.
fn start_watch(
    reg: Arc<EtcdRegistry>,
) -> (
    watch::Receiver<Snapshot>,
    tokio::task::JoinHandle<Result<(), RegistryError>>,
) {
    let (tx, rx) = watch::channel(Snapshot::default());
    let task = tokio::spawn(async move { reg.watch(tx).await });
    (rx, task)
}

/// Joins `me` and checks that it got exactly `want`.
async fn assert_joins(reg: &EtcdRegistry, me: &Announcement, want: &str) {
    let got = reg
        .join(me)
        .await
        .unwrap_or_else(|e| panic!("{} cannot join: {e}", me.node));
    assert_eq!(got, vec![subnet(want)], "{}'s subnets", me.node);
}

/// Starts `reg.keep_alive` on a task.
fn start_keep_alive(reg: Arc<EtcdRegistry>) -> tokio::task::JoinHandle<Result<(), RegistryError>> {
    tokio::spawn(async move { reg.keep_alive().await })
}

/// Waits until the snapshot satisfies `cond`; panics with the last one at the deadline.
async fn wait_snapshot(
    rx: &mut watch::Receiver<Snapshot>,
    within: Duration,
    what: &str,
    cond: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    let deadline = Instant::now() + within;
    loop {
        {
            let snap = rx.borrow_and_update();
            if cond(&snap) {
                return snap.clone();
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("the watch ended while waiting for {what}"),
            Err(_) => panic!(
                "no {what} within {within:?}; last snapshot: {:#?}",
                *rx.borrow()
            ),
        }
    }
}

/// Polls `cond` every 100 ms until it holds; panics at the deadline.
async fn wait_until<F: Future<Output = bool>>(within: Duration, what: &str, cond: impl Fn() -> F) {
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "no {what} within {within:?}");
        sleep(Duration::from_millis(100)).await;
    }
}

fn has_node(snap: &Snapshot, node: &str) -> bool {
    snap.records.iter().any(|r| r.node == node)
}

/// The etcd lease a key is attached to (`None` when the key does not exist).
async fn key_lease(client: &mut Client, key: &str) -> Option<i64> {
    let resp = client.get(key, None).await.expect("etcd get");
    resp.kvs().first().map(|kv| kv.lease())
}

/// Connects `nodes` registries under `prefix` first, then releases their joins at once
/// so that they race; the results come back in node order (`node-1`, `node-2`, ...).
async fn race_joins(
    server: &EtcdServer,
    prefix: &str,
    network: PodNetwork,
    nodes: u8,
) -> Vec<Result<Vec<IpNet>, RegistryError>> {
    let mut regs = Vec::new();
    for _ in 0..nodes {
        regs.push(registry(server, prefix, vec![network]).await);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(regs.len()));
    let mut tasks = Vec::new();
    for (i, reg) in (1u8..).zip(regs) {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            reg.join(&ann(&format!("node-{i}"), i)).await
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("join task"));
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_joins_get_distinct_subnets() {
    let server = EtcdServer::start();
    // 16 subnets, the first never handed out: 15 for 10 nodes racing for the lowest.
    let network = net("10.244.0.0/20", 24);
    let mut got = Vec::new();
    for r in race_joins(&server, "/twill/contend", network, 10).await {
        let subnets = r.expect("join succeeds");
        assert_eq!(subnets.len(), 1);
        got.push(subnets[0]);
    }
    for s in &got {
        assert!(
            network.network.contains(s),
            "{s} is outside {}",
            network.network
        );
        assert_eq!(s.prefix_len(), 24);
        assert_ne!(
            *s,
            subnet("10.244.0.0/24"),
            "the network's first subnet was handed out"
        );
    }
    let mut distinct = got.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        got.len(),
        "a subnet was handed out twice: {got:?}"
    );

    // What etcd holds agrees: one key per node, each naming its own subnet.
    let mut client = raw_client(&server).await;
    let resp = client
        .get(
            "/twill/contend/subnets/",
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .expect("etcd get");
    assert_eq!(resp.kvs().len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_network_gives_exhausted() {
    let server = EtcdServer::start();
    // Four /24s, the first never handed out: room for three nodes.
    let network = net("10.245.0.0/22", 24);
    let mut ok = Vec::new();
    let mut exhausted = 0;
    for r in race_joins(&server, "/twill/full", network, 4).await {
        match r {
            Ok(s) => ok.extend(s),
            Err(RegistryError::Exhausted { network: n, len }) => {
                assert_eq!((n, len), (network.network, 24));
                exhausted += 1;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    ok.sort();
    assert_eq!(
        ok,
        vec![
            subnet("10.245.1.0/24"),
            subnet("10.245.2.0/24"),
            subnet("10.245.3.0/24")
        ]
    );
    assert_eq!(exhausted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_node_gets_one_subnet_per_family_and_one_record() {
    let server = EtcdServer::start();
    let nets = vec![net("10.244.0.0/16", 24), net("fd00:10:244::/56", 64)];
    let reg = Arc::new(registry(&server, "/twill/dual", nets).await);
    let me = ann("dual", 1);
    let subnets = reg.join(&me).await.expect("join");
    assert_eq!(
        subnets,
        vec![subnet("10.244.1.0/24"), subnet("fd00:10:244:1::/64")]
    );
    let (mut rx, _task) = start_watch(reg.clone());
    let snap = wait_snapshot(&mut rx, DEADLINE, "the dual-stack record", |s| s.complete).await;
    assert_eq!(snap.records, vec![me.record(subnets.clone())]);
    assert!(snap.malformed.is_empty(), "{:?}", snap.malformed);
    // Joining again is idempotent.
    assert_eq!(reg.join(&me).await.expect("second join"), subnets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_gets_its_subnet_back_also_after_its_lease_expired() {
    let server = EtcdServer::start();
    let prefix = "/twill/restart";
    let key_b = format!("{prefix}/subnets/10.244.2.0-24");
    let mut client = raw_client(&server).await;

    let a = registry(&server, prefix, v4()).await;
    assert_joins(&a, &ann("a", 1), "10.244.1.0/24").await;
    let b1 = registry(&server, prefix, v4()).await;
    assert_joins(&b1, &ann("b", 2), "10.244.2.0/24").await;
    let old_lease = key_lease(&mut client, &key_b)
        .await
        .expect("b's key exists");

    // A restart within the TTL: a new instance, the same subnet, on its own new lease.
    drop(b1);
    let b2 = Arc::new(registry(&server, prefix, v4()).await);
    assert_joins(&b2, &ann("b", 2), "10.244.2.0/24").await;
    let new_lease = key_lease(&mut client, &key_b)
        .await
        .expect("b's key exists");
    assert_ne!(
        new_lease, old_lease,
        "the key stays on the dead instance's lease"
    );

    // a goes away, so the lowest free subnet is no longer b's.
    a.leave("a").await.expect("leave");

    // b dies: its lease expires and its key goes.
    drop(b2);
    wait_until(EXPIRY_DEADLINE, "expiry of b's key", || {
        let mut c = client.clone();
        let key = key_b.clone();
        async move { key_lease(&mut c, &key).await.is_none() }
    })
    .await;

    // b comes back: the remembered subnet, not the lowest free one.
    let b3 = registry(&server, prefix, v4()).await;
    assert_joins(&b3, &ann("b", 2), "10.244.2.0/24").await;
    let d = registry(&server, prefix, v4()).await;
    assert_joins(&d, &ann("d", 4), "10.244.1.0/24").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_joins_and_lease_expiry_while_keep_alive_holds() {
    let server = EtcdServer::start();
    let prefix = "/twill/watch";
    let watcher = Arc::new(registry(&server, prefix, v4()).await);
    let (mut rx, watch_task) = start_watch(watcher);
    let first = wait_snapshot(&mut rx, DEADLINE, "the first listing", |s| s.complete).await;
    assert!(first.records.is_empty());

    let stay = Arc::new(registry(&server, prefix, v4()).await);
    let stay_me = ann("stay", 1);
    let stay_subnets = stay.join(&stay_me).await.expect("join");
    let keeper = start_keep_alive(stay.clone());
    let expected = stay_me.record(stay_subnets);
    wait_snapshot(&mut rx, DEADLINE, "stay's record", |s| {
        s.records.contains(&expected)
    })
    .await;

    // `gone` joins but never keeps its lease alive.
    let gone = registry(&server, prefix, v4()).await;
    gone.join(&ann("gone", 2)).await.expect("join");
    wait_snapshot(&mut rx, DEADLINE, "gone's record", |s| has_node(s, "gone")).await;
    let joined_at = Instant::now();
    let snap = wait_snapshot(&mut rx, EXPIRY_DEADLINE, "gone's expiry", |s| {
        !has_node(s, "gone")
    })
    .await;
    // More than a TTL passed: the kept-alive lease survived it.
    assert!(joined_at.elapsed() >= Duration::from_secs(u64::from(TTL) - 1));
    assert_eq!(snap.records, vec![expected]);
    assert!(
        !keeper.is_finished(),
        "keep_alive returned while its lease lives"
    );

    keeper.abort();
    drop(rx);
    // The watch notices that nobody listens any more.
    timeout(DEADLINE, watch_task)
        .await
        .expect("watch returns once its receiver is gone")
        .expect("watch task")
        .expect("watch returns Ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_returns_when_the_lease_is_lost_and_join_recovers() {
    let server = EtcdServer::start();
    let prefix = "/twill/lost";
    let key = format!("{prefix}/subnets/10.244.1.0-24");
    let mut client = raw_client(&server).await;
    let reg = Arc::new(registry(&server, prefix, v4()).await);
    let me = ann("n", 1);
    assert_eq!(reg.join(&me).await.unwrap(), vec![subnet("10.244.1.0/24")]);
    let keeper = start_keep_alive(reg.clone());

    // Someone revokes the lease behind the node's back.
    let lease = key_lease(&mut client, &key).await.expect("the key exists");
    client.lease_revoke(lease).await.expect("revoke");
    timeout(Duration::from_secs(u64::from(TTL) * 2), keeper)
        .await
        .expect("keep_alive returns after the lease is lost")
        .expect("keep_alive task")
        .expect("keep_alive returns Ok");
    assert_eq!(key_lease(&mut client, &key).await, None);

    // The agent joins again: same subnet, new lease.
    assert_eq!(reg.join(&me).await.unwrap(), vec![subnet("10.244.1.0/24")]);
    let again = key_lease(&mut client, &key).await.expect("the key is back");
    assert_ne!(again, lease);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_entries_are_reported_not_listed_as_records() {
    let server = EtcdServer::start();
    let prefix = "/twill/malformed";
    let mut client = raw_client(&server).await;
    let junk_key = format!("{prefix}/subnets/10.244.9.0-24");
    let bad_mac_key = format!("{prefix}/subnets/10.244.8.0-24");
    client
        .put(junk_key.as_str(), "{this is not json", None)
        .await
        .expect("put");
    let bad_mac = serde_json::json!({
        "node": "badmac", "subnets": ["10.244.8.0/24"], "publicIP": "192.168.0.8",
        "vtepMAC": "0a:58:zz:00:00:08", "backend": "vxlan",
    });
    client
        .put(bad_mac_key.as_str(), bad_mac.to_string(), None)
        .await
        .expect("put");

    let reg = Arc::new(registry(&server, prefix, v4()).await);
    let me = ann("good", 1);
    let subnets = reg.join(&me).await.expect("join");
    // The junk holds its subnets: the good node got another one.
    assert_eq!(subnets, vec![subnet("10.244.1.0/24")]);
    let (mut rx, _task) = start_watch(reg.clone());
    let snap = wait_snapshot(&mut rx, DEADLINE, "the listing", |s| s.complete).await;
    assert_eq!(snap.records, vec![me.record(subnets.clone())]);
    let sources: Vec<&str> = snap.malformed.iter().map(|m| m.source.as_str()).collect();
    assert_eq!(sources, vec![bad_mac_key.as_str(), junk_key.as_str()]);

    // Written while watching: a record under a key that is not its subnet.
    let wrong_key = format!("{prefix}/subnets/10.244.7.0-24");
    let record = VtepRecord {
        subnets: vec![subnet("10.244.6.0/24")],
        ..ann("liar", 7).record(vec![])
    };
    client
        .put(
            wrong_key.as_str(),
            serde_json::to_string(&record).expect("json"),
            None,
        )
        .await
        .expect("put");
    let snap = wait_snapshot(&mut rx, DEADLINE, "the misplaced record", |s| {
        s.malformed.iter().any(|m| m.source == wrong_key)
    })
    .await;
    assert_eq!(snap.records, vec![me.record(subnets)]);
    assert_eq!(snap.malformed.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_after_an_etcd_restart() {
    let mut server = EtcdServer::start();
    let prefix = "/twill/resume";
    let watcher = Arc::new(registry(&server, prefix, v4()).await);
    let (mut rx, _task) = start_watch(watcher);

    let a = Arc::new(registry(&server, prefix, v4()).await);
    let a_me = ann("a", 1);
    let a_subnets = a.join(&a_me).await.expect("join");
    let keeper = start_keep_alive(a.clone());
    wait_snapshot(&mut rx, DEADLINE, "a's record", |s| has_node(s, "a")).await;

    tokio::task::block_in_place(|| server.stop());
    // While etcd is away the last snapshot stays in place.
    let during = rx.borrow().clone();
    assert!(during.complete && has_node(&during, "a"));
    tokio::task::block_in_place(|| server.restart());

    // Written after the restart, possibly before the watch reconnected.
    let b = registry(&server, prefix, v4()).await;
    let b_me = ann("b", 2);
    let b_subnets = b.join(&b_me).await.expect("join after the restart");
    let snap = wait_snapshot(&mut rx, DEADLINE, "b's record after the restart", |s| {
        has_node(s, "b")
    })
    .await;
    assert_eq!(
        snap.records,
        vec![a_me.record(a_subnets), b_me.record(b_subnets)]
    );
    assert!(
        !keeper.is_finished(),
        "a's keep_alive gave up over a short outage"
    );
    keeper.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_removes_the_node_and_frees_its_subnet() {
    let server = EtcdServer::start();
    let prefix = "/twill/leave";
    let mut client = raw_client(&server).await;
    let reg = Arc::new(registry(&server, prefix, v4()).await);
    let (mut rx, _task) = start_watch(reg.clone());
    reg.join(&ann("bye", 1)).await.expect("join");
    wait_snapshot(&mut rx, DEADLINE, "bye's record", |s| has_node(s, "bye")).await;

    reg.leave("bye").await.expect("leave");
    wait_snapshot(&mut rx, DEADLINE, "bye's removal", |s| s.records.is_empty()).await;
    let left = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    assert_eq!(left.kvs().len(), 0, "keys left behind after leave");

    let other = registry(&server, prefix, v4()).await;
    assert_joins(&other, &ann("next", 2), "10.244.1.0/24").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_is_unavailable_not_a_hang() {
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let res = timeout(
        Duration::from_secs(15),
        EtcdRegistry::connect(&[endpoint], "/twill", TTL, v4()),
    )
    .await
    .expect("connect gives up by itself");
    assert!(
        matches!(res, Err(RegistryError::Unavailable(_))),
        "expected Unavailable, got {:?}",
        res.err()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}
