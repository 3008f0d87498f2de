use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use twill_conf::{Attachment, PodRange};

use crate::testing::{owner, range};
use crate::{Reservation, Store, StoreError};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn net(s: &str) -> IpNet {
    s.parse().expect("test net")
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn open(dir: &Path) -> Store {
    Store::open(dir).expect("open store")
}

/// A store in a directory of its own, removed with the returned guard.
fn fresh() -> (tempfile::TempDir, Store) {
    let dir = tmp();
    let store = open(dir.path());
    (dir, store)
}

/// The pod range most tests allocate from.
fn node_range() -> PodRange {
    range("10.244.1.0/24", "10.244.1.1")
}

/// Allocates one IPv4 address and returns it without the prefix.
fn alloc(store: &Store, id: &str, r: &PodRange) -> IpAddr {
    let got = store
        .allocate(&owner(id), std::slice::from_ref(r))
        .expect("allocate");
    assert_eq!(got.len(), 1);
    got[0].addr()
}

#[test]
fn allocate_is_idempotent() {
    let (_dir, store) = fresh();
    let r = node_range();
    let first = store
        .allocate(&owner("a"), std::slice::from_ref(&r))
        .expect("allocate");
    assert_eq!(first, vec![net("10.244.1.2/24")]);
    let again = store
        .allocate(&owner("a"), std::slice::from_ref(&r))
        .expect("allocate");
    assert_eq!(again, first);
    // Another interface of the same container is another owner.
    let eth1 = Attachment::new("a", "eth1");
    assert_eq!(
        store.allocate(&eth1, &[r]).expect("allocate"),
        vec![net("10.244.1.3/24")]
    );
    assert_eq!(
        store.lookup(&owner("a")).expect("lookup"),
        vec![ip("10.244.1.2")]
    );
    assert_eq!(store.reservations().expect("reservations").len(), 2);
    store.verify().expect("verify");
}

#[test]
fn many_owners_get_distinct_usable_addresses() {
    let (_dir, store) = fresh();
    let r = node_range();
    let mut seen = HashSet::new();
    for i in 0..253 {
        let a = alloc(&store, &format!("c{i}"), &r);
        assert!(seen.insert(a), "{a} handed out twice");
    }
    for forbidden in ["10.244.1.0", "10.244.1.1", "10.244.1.255"] {
        assert!(!seen.contains(&ip(forbidden)), "{forbidden} handed out");
    }
    let err = store
        .allocate(&owner("one-too-many"), &[r])
        .expect_err("range is full");
    assert!(matches!(
        err,
        StoreError::Exhausted {
            in_use: 253,
            usable: 253,
            ..
        }
    ));
    store.verify().expect("verify");
}

#[test]
fn released_address_is_not_reused_at_once() {
    let (_dir, store) = fresh();
    let r = node_range();
    assert_eq!(alloc(&store, "a", &r), ip("10.244.1.2"));
    assert_eq!(alloc(&store, "b", &r), ip("10.244.1.3"));
    assert_eq!(
        store.release(&owner("a")).expect("release"),
        vec![ip("10.244.1.2")]
    );
    // The replacement pod gets the next address, not the one just freed.
    assert_eq!(alloc(&store, "a", &r), ip("10.244.1.4"));
    assert_eq!(
        store.release(&owner("b")).expect("release"),
        vec![ip("10.244.1.3")]
    );
    assert_eq!(alloc(&store, "c", &r), ip("10.244.1.5"));
    store.verify().expect("verify");
}

#[test]
fn round_robin_wraps_around_to_freed_low_addresses() {
    let (_dir, store) = fresh();
    // /29 with gateway .1: usable .2 ..= .6.
    let r = range("10.244.1.0/29", "10.244.1.1");
    for (i, want) in ["10.244.1.2", "10.244.1.3", "10.244.1.4", "10.244.1.5"]
        .iter()
        .enumerate()
    {
        assert_eq!(alloc(&store, &format!("c{i}"), &r), ip(want));
    }
    store.release(&owner("c0")).expect("release");
    store.release(&owner("c2")).expect("release");
    // .6 is still free above the cursor: it comes first.
    assert_eq!(alloc(&store, "d0", &r), ip("10.244.1.6"));
    // Then wrap to the lowest free address, then the next one up.
    assert_eq!(alloc(&store, "d1", &r), ip("10.244.1.2"));
    assert_eq!(alloc(&store, "d2", &r), ip("10.244.1.4"));
    assert!(matches!(
        store.allocate(&owner("d3"), &[r]),
        Err(StoreError::Exhausted { .. })
    ));
    store.verify().expect("verify");
}

#[test]
fn never_hands_out_network_gateway_or_broadcast() {
    let (_dir, store) = fresh();
    // Gateway in the middle of the range.
    let r = range("10.244.1.0/29", "10.244.1.4");
    let mut got = BTreeSet::new();
    for i in 0..5 {
        got.insert(alloc(&store, &format!("c{i}"), &r));
    }
    let want: BTreeSet<IpAddr> = [
        "10.244.1.1",
        "10.244.1.2",
        "10.244.1.3",
        "10.244.1.5",
        "10.244.1.6",
    ]
    .iter()
    .map(|s| ip(s))
    .collect();
    assert_eq!(got, want);
    assert!(store
        .allocate(&owner("x"), std::slice::from_ref(&r))
        .is_err());

    // Churn through the gateway's neighbours: merging free intervals must
    // never swallow the gateway.
    for round in 0..20 {
        for victim in ["c2", "c3"] {
            store.release(&owner(victim)).expect("release");
        }
        for victim in ["c2", "c3"] {
            let a = alloc(&store, victim, &r);
            assert_ne!(a, ip("10.244.1.4"), "gateway handed out in round {round}");
        }
        store.verify().expect("verify");
    }
}

#[test]
fn exhaustion_error_names_subnet_and_count() {
    let (_dir, store) = fresh();
    let r = range("10.244.1.0/30", "10.244.1.1");
    assert_eq!(alloc(&store, "a", &r), ip("10.244.1.2"));
    let err = store.allocate(&owner("b"), &[r]).expect_err("full");
    assert_eq!(
        err.to_string(),
        "no free address in 10.244.1.0/30: 1 of 1 in use"
    );
    // The failed attempt left nothing behind.
    assert!(store.lookup(&owner("b")).expect("lookup").is_empty());
    store.verify().expect("verify");
}

#[test]
fn release_is_idempotent() {
    let (_dir, store) = fresh();
    let r = node_range();
    let a = alloc(&store, "a", &r);
    assert_eq!(store.release(&owner("a")).expect("release"), vec![a]);
    assert_eq!(
        store.release(&owner("a")).expect("release"),
        Vec::<IpAddr>::new()
    );
    assert_eq!(
        store.release(&owner("never")).expect("release"),
        Vec::<IpAddr>::new()
    );
    assert!(store.lookup(&owner("a")).expect("lookup").is_empty());
    assert!(store.reservations().expect("reservations").is_empty());
    store.verify().expect("verify");
}

#[test]
fn retain_releases_owners_not_kept() {
    let (_dir, store) = fresh();
    let r = node_range();
    for id in ["live1", "dead1", "live2", "dead2"] {
        alloc(&store, id, &r);
    }
    let mut released = store
        .retain(|o| o.container_id.starts_with("live"))
        .expect("retain");
    released.sort_by(|a, b| a.owner.cmp(&b.owner));
    assert_eq!(
        released,
        vec![
            Reservation {
                owner: owner("dead1"),
                address: ip("10.244.1.3"),
            },
            Reservation {
                owner: owner("dead2"),
                address: ip("10.244.1.5"),
            },
        ]
    );
    let left: Vec<Attachment> = store
        .reservations()
        .expect("reservations")
        .into_iter()
        .map(|r| r.owner)
        .collect();
    assert_eq!(left, vec![owner("live1"), owner("live2")]);
    assert!(store.retain(|_| true).expect("retain").is_empty());
    store.verify().expect("verify");
}

#[test]
fn changed_ranges_drop_out_of_range_reservations() {
    let (_dir, store) = fresh();
    let old = node_range();
    let a = alloc(&store, "a", &old);
    alloc(&store, "b", &old);
    assert_eq!(a, ip("10.244.1.2"));

    // Node re-provisioned with another subnet: the old address is never
    // served again, the owner gets one from the new range.
    let new = range("10.244.7.0/24", "10.244.7.1");
    assert_eq!(alloc(&store, "a", &new), ip("10.244.7.2"));
    assert!(store.lookup(&owner("b")).expect("lookup").is_empty());
    assert_eq!(store.reservations().expect("reservations").len(), 1);
    store.verify().expect("verify");

    // Going back does not resurrect the dropped reservation either.
    assert_eq!(alloc(&store, "b", &old), ip("10.244.1.2"));
    assert!(store.lookup(&owner("a")).expect("lookup").is_empty());
    store.verify().expect("verify");
}

#[test]
fn overlapping_range_change_keeps_reservations_still_usable() {
    let (_dir, store) = fresh();
    let small = range("10.244.0.0/24", "10.244.0.1");
    for id in ["a", "b", "c"] {
        alloc(&store, id, &small);
    }
    // Widen the subnet, gateway moves onto b's address: b loses it.
    let wide = range("10.244.0.0/23", "10.244.0.3");
    assert_eq!(alloc(&store, "a", &wide), ip("10.244.0.2"));
    assert!(store.lookup(&owner("b")).expect("lookup").is_empty());
    assert_eq!(
        store.lookup(&owner("c")).expect("lookup"),
        vec![ip("10.244.0.4")]
    );
    // The old gateway became usable.
    assert_eq!(alloc(&store, "d", &wide), ip("10.244.0.1"));
    assert_eq!(alloc(&store, "e", &wide), ip("10.244.0.5"));
    store.verify().expect("verify");
}

#[test]
fn shrinking_a_large_range_keeps_what_still_fits() {
    let (_dir, store) = fresh();
    let wide = range("10.244.0.0/23", "10.244.0.1");
    for i in 0..400 {
        alloc(&store, &format!("c{i}"), &wide);
    }
    // Free some holes to rebuild around.
    for i in (0..400).step_by(7) {
        store.release(&owner(&format!("c{i}"))).expect("release");
    }
    let kept_before: Vec<Reservation> = store
        .reservations()
        .expect("reservations")
        .into_iter()
        .filter(|r| net("10.244.0.0/24").contains(&r.address) && r.address != ip("10.244.0.255"))
        .collect();

    let narrow = range("10.244.0.0/24", "10.244.0.1");
    let fresh = alloc(&store, "new", &narrow);
    let after = store.reservations().expect("reservations");
    assert_eq!(after.len(), kept_before.len() + 1);
    for r in &kept_before {
        assert!(after.contains(r), "{r:?} dropped");
    }
    assert!(!kept_before.iter().any(|r| r.address == fresh));
    store.verify().expect("verify");
}

#[test]
fn ipv6_range_allocation() {
    let (_dir, store) = fresh();
    let r = range("fd00:10:244:1::/120", "fd00:10:244:1::1");
    let got = store
        .allocate(&owner("a"), std::slice::from_ref(&r))
        .expect("allocate");
    // Not ::0 (subnet-router anycast), not ::1 (gateway).
    assert_eq!(got, vec![net("fd00:10:244:1::2/120")]);
    let mut seen = HashSet::new();
    seen.insert(got[0].addr());
    for i in 0..253 {
        let a = alloc(&store, &format!("c{i}"), &r);
        assert!(seen.insert(a), "{a} handed out twice");
    }
    // IPv6 has no broadcast: the all-ones host is usable.
    assert!(seen.contains(&ip("fd00:10:244:1::ff")));
    assert!(!seen.contains(&ip("fd00:10:244:1::")));
    assert!(!seen.contains(&ip("fd00:10:244:1::1")));
    let err = store.allocate(&owner("full"), &[r]).expect_err("full");
    assert_eq!(
        err.to_string(),
        "no free address in fd00:10:244:1::/120: 254 of 254 in use"
    );
    store.verify().expect("verify");
}

#[test]
fn dual_stack_gets_one_address_per_range_in_order() {
    let (_dir, store) = fresh();
    let v4 = node_range();
    let v6 = range("fd00::/120", "fd00::1");
    let got = store
        .allocate(&owner("a"), &[v6.clone(), v4.clone()])
        .expect("allocate");
    assert_eq!(got, vec![net("fd00::2/120"), net("10.244.1.2/24")]);
    // Same set of ranges in the other order: no range change, same answer.
    let again = store
        .allocate(&owner("a"), &[v4.clone(), v6.clone()])
        .expect("allocate");
    assert_eq!(again, vec![net("10.244.1.2/24"), net("fd00::2/120")]);

    // Single-stack before, dual-stack now: the IPv4 address stays, an IPv6
    // one is added.
    let dir2 = tmp();
    let store2 = open(dir2.path());
    assert_eq!(alloc(&store2, "b", &v4), ip("10.244.1.2"));
    let got = store2
        .allocate(&owner("b"), &[v4.clone(), v6.clone()])
        .expect("allocate");
    assert_eq!(got, vec![net("10.244.1.2/24"), net("fd00::2/120")]);
    assert_eq!(store2.release(&owner("b")).expect("release").len(), 2);
    store.verify().expect("verify");
    store2.verify().expect("verify");
}

#[test]
fn invalid_ranges_are_rejected_without_writing() {
    let (_dir, store) = fresh();
    let bad = [
        vec![],
        vec![range("10.244.1.0/24", "10.244.2.1")],
        vec![range("10.244.1.0/31", "10.244.1.0")],
        vec![node_range(), range("10.244.2.0/24", "10.244.2.1")],
    ];
    for ranges in bad {
        let err = store.allocate(&owner("a"), &ranges).expect_err("invalid");
        assert!(matches!(err, StoreError::InvalidRange(_)), "{err}");
    }
    assert!(store.reservations().expect("reservations").is_empty());
    store.verify().expect("verify");
}

#[test]
fn owner_keys_are_unambiguous() {
    let (_dir, store) = fresh();
    let r = node_range();
    let a = Attachment::new("ab", "c");
    let b = Attachment::new("a", "bc");
    let odd = Attachment::new("x", "e\u{e9}th\t0 \u{1}");
    let ia = store
        .allocate(&a, std::slice::from_ref(&r))
        .expect("allocate");
    let ib = store
        .allocate(&b, std::slice::from_ref(&r))
        .expect("allocate");
    let io = store.allocate(&odd, &[r]).expect("allocate");
    assert_ne!(ia, ib);
    assert_eq!(store.lookup(&odd).expect("lookup"), vec![io[0].addr()]);
    let owners: Vec<Attachment> = store
        .reservations()
        .expect("reservations")
        .into_iter()
        .map(|r| r.owner)
        .collect();
    assert_eq!(owners, vec![a, b, odd]);
    store.verify().expect("verify");
}

#[test]
fn data_survives_reopen() {
    let dir = tmp();
    let r = node_range();
    {
        let store = open(dir.path());
        alloc(&store, "a", &r);
        alloc(&store, "b", &r);
        store.release(&owner("a")).expect("release");
    }
    let store = open(dir.path());
    assert_eq!(
        store.lookup(&owner("b")).expect("lookup"),
        vec![ip("10.244.1.3")]
    );
    assert!(store.lookup(&owner("a")).expect("lookup").is_empty());
    // The cursor survived too: round-robin continues after .3.
    assert_eq!(alloc(&store, "c", &r), ip("10.244.1.4"));
    store.verify().expect("verify");
}

#[test]
fn concurrent_openers_get_distinct_addresses() {
    let dir = tmp();
    let r = range("10.244.0.0/22", "10.244.0.1");
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let dir = dir.path().to_owned();
            let r = r.clone();
            thread::spawn(move || {
                let mut got = Vec::new();
                for i in 0..12 {
                    // A fresh Store per operation, like one CNI process each.
                    let store = Store::open(&dir).expect("open");
                    let id = format!("t{t}-{i}");
                    got.push(alloc(&store, &id, &r));
                    if i % 3 == 0 {
                        store.release(&owner(&id)).expect("release");
                        got.pop();
                    }
                }
                got
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for h in handles {
        for a in h.join().expect("thread") {
            assert!(seen.insert(a), "{a} handed out twice");
        }
    }
    let store = open(dir.path());
    assert_eq!(
        store.reservations().expect("reservations").len(),
        seen.len()
    );
    store.verify().expect("verify");
}

#[test]
fn threads_sharing_one_store_get_distinct_addresses() {
    let dir = tmp();
    let store = Arc::new(open(dir.path()));
    let r = range("10.244.0.0/24", "10.244.0.1");
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let store = Arc::clone(&store);
            let r = r.clone();
            thread::spawn(move || {
                (0..20)
                    .map(|i| alloc(&store, &format!("t{t}-{i}"), &r))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for h in handles {
        for a in h.join().expect("thread") {
            assert!(seen.insert(a), "{a} handed out twice");
        }
    }
    assert_eq!(seen.len(), 80);
    store.verify().expect("verify");
}

/// Tiny deterministic PRNG so the churn test needs no extra dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_churn_keeps_store_consistent() {
    let (_dir, store) = fresh();
    // Small ranges so that exhaustion, wrap-around and merging all happen.
    let v4 = range("10.244.1.0/28", "10.244.1.7");
    let v6 = range("fd00::/124", "fd00::9");
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut live: BTreeSet<u64> = BTreeSet::new();
    for step in 0..600 {
        let id = rng.next() % 24;
        let o = owner(&format!("c{id}"));
        if rng.below(2) == 0 {
            match store.allocate(&o, &[v4.clone(), v6.clone()]) {
                Ok(got) => {
                    assert_eq!(got.len(), 2);
                    live.insert(id);
                }
                Err(StoreError::Exhausted { .. }) => assert!(live.len() >= 13),
                Err(e) => panic!("step {step}: {e}"),
            }
        } else {
            let released = store.release(&o).expect("release");
            assert_eq!(released.len(), if live.remove(&id) { 2 } else { 0 });
        }
        if step % 25 == 0 {
            store
                .verify()
                .unwrap_or_else(|e| panic!("step {step}: {e}"));
        }
    }
    let all = store.reservations().expect("reservations");
    assert_eq!(all.len(), live.len() * 2);
    let distinct: HashSet<IpAddr> = all.iter().map(|r| r.address).collect();
    assert_eq!(distinct.len(), all.len());
    store.verify().expect("verify");
}

#[test]
fn verify_reports_tampered_indexes() {
    let dir = tmp();
    let r = node_range();
    {
        let store = open(dir.path());
        alloc(&store, "a", &r);
        store.verify().expect("verify");
    }
    {
        // Tamper behind the store's back: an address reserved in by_addr
        // only (and still free). Opened the way the store opens it, which waits
        // for sled's I/O threads of the dropped store to let go of the file.
        let db = crate::store::open_db(&dir.path().join("db")).expect("raw open");
        let by_addr = db.open_tree("by_addr").expect("tree");
        let mut key = vec![4];
        key.extend_from_slice(&[10, 244, 1, 9]);
        by_addr
            .insert(key, crate::codec::owner_key(&owner("ghost")))
            .expect("insert");
        db.flush().expect("flush");
    }
    let store = open(dir.path());
    let err = store.verify().expect_err("tampered");
    assert!(matches!(err, StoreError::Inconsistent(_)), "{err}");
}

/// A process killed while sled writes a snapshot leaves `snap.<lsn>.generating`; sled
/// 0.34.7 would read it as the newest snapshot and report corruption.
#[test]
fn an_incomplete_snapshot_left_by_a_kill_is_ignored() {
    let dir = tmp();
    let r = node_range();
    let first = {
        let store = open(dir.path());
        alloc(&store, "a", &r)
    };
    for body in [&b""[..], &b"half a snapshot, no checksum"[..]] {
        std::fs::write(
            dir.path()
                .join("db")
                .join("snap.FFFFFFFFFFFFFFFF.generating"),
            body,
        )
        .expect("plant an incomplete snapshot");
        let store = open(dir.path());
        store.verify().expect("verify");
        assert_eq!(store.lookup(&owner("a")).expect("lookup"), vec![first]);
    }
    assert!(!dir
        .path()
        .join("db")
        .join("snap.FFFFFFFFFFFFFFFF.generating")
        .exists());
}

#[test]
fn damaged_store_is_an_error_not_a_panic() {
    let dir = tmp();
    {
        let store = open(dir.path());
        alloc(&store, "a", &node_range());
    }
    std::fs::write(
        dir.path().join("db").join("conf"),
        b"garbage, not a sled config",
    )
    .expect("damage");
    match Store::open(dir.path()) {
        Err(StoreError::Corrupt { .. }) => {}
        Err(e) => panic!("unexpected error kind: {e}"),
        Ok(_) => panic!("opened a damaged store"),
    }
    // Nothing was deleted.
    assert!(dir.path().join("db").join("db").exists());
}

#[test]
fn damaged_log_is_reported_not_silently_rolled_back() {
    // sled recovers a damaged log by dropping everything after the first bad
    // record; the store must notice that reservations went missing.
    for damage in ["truncate", "overwrite"] {
        let dir = tmp();
        {
            let store = open(dir.path());
            for i in 0..50 {
                alloc(&store, &format!("c{i}"), &node_range());
            }
        }
        let file = dir.path().join("db").join("db");
        let mut bytes = std::fs::read(&file).expect("read log");
        let half = bytes.len() / 2;
        match damage {
            "truncate" => bytes.truncate(half),
            _ => bytes[100..half].fill(0xab),
        }
        std::fs::write(&file, &bytes).expect("damage");
        match Store::open(dir.path()) {
            Err(StoreError::Corrupt { .. }) => {}
            Err(e) => panic!("{damage}: unexpected error kind: {e}"),
            Ok(_) => panic!("{damage}: opened a store that lost reservations"),
        }
    }
}

#[test]
fn removing_the_database_starts_afresh() {
    let dir = tmp();
    let r = node_range();
    {
        let store = open(dir.path());
        alloc(&store, "a", &r);
        alloc(&store, "b", &r);
    }
    // An operator resetting the store on purpose is not a rollback.
    std::fs::remove_dir_all(dir.path().join("db")).expect("remove db");
    let store = open(dir.path());
    assert!(store.reservations().expect("reservations").is_empty());
    assert_eq!(alloc(&store, "c", &r), ip("10.244.1.2"));
    drop(store);
    let store = open(dir.path());
    assert_eq!(
        store.lookup(&owner("c")).expect("lookup"),
        vec![ip("10.244.1.2")]
    );
}

/// The worker is the `chaos_worker` example, which `cargo test` builds next to the
/// test binary's directory.
fn chaos_worker_exe() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in <target>/<profile>/deps");
    let worker = profile_dir.join("examples").join("chaos_worker");
    assert!(
        worker.exists(),
        "{} is missing: run the tests with `cargo test` (it builds examples)",
        worker.display()
    );
    worker
}

/// One process, one store operation, killed at a random instant of it: kills land in
/// sled's open (snapshot writing) far more often than with long-running workers.
#[test]
fn sigkill_during_a_single_operation_never_breaks_the_next_open() {
    let dir = tmp();
    let exe = chaos_worker_exe();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    // Spread the kills over 1.5x one worker's whole run, measured here (debug and
    // release builds differ tenfold).
    let started = Instant::now();
    let mut alone = Command::new(&exe)
        .arg(dir.path())
        .arg("once")
        .spawn()
        .expect("run worker");
    let status = loop {
        if let Some(status) = alone.try_wait().expect("poll worker") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = alone.kill();
            panic!("one store operation did not finish within 30 s (sled open hung?)");
        }
        thread::sleep(Duration::from_millis(1));
    };
    assert!(status.success(), "a worker left alone failed: {status}");
    let window_us = (started.elapsed().as_micros() as u64 * 3 / 2).max(1);
    let mut killed = 0;
    for trial in 0..200 {
        let mut w = Command::new(&exe)
            .arg(dir.path())
            .arg("once")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn worker");
        thread::sleep(Duration::from_micros(rng.next() % window_us));
        if w.try_wait().expect("poll worker").is_none() {
            killed += 1;
        }
        w.kill().expect("SIGKILL worker");
        w.wait().expect("reap worker");
        let store = Store::open(dir.path())
            .unwrap_or_else(|e| panic!("trial {trial}: open after a kill failed: {e}"));
        store
            .verify()
            .unwrap_or_else(|e| panic!("trial {trial}: {e}"));
    }
    assert!(killed > 30, "only {killed} workers were killed midway");
}

#[test]
fn sigkill_at_any_point_leaves_a_consistent_store() {
    let dir = tmp();
    let exe = chaos_worker_exe();
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let mut kills = 0;
    while Instant::now() < deadline {
        let mut workers: Vec<_> = (0..3)
            .map(|_| {
                Command::new(&exe)
                    .arg(dir.path())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn worker")
            })
            .collect();
        thread::sleep(Duration::from_millis(20 + rng.next() % 150));
        for w in &mut workers {
            // A worker that already exited has failed (it loops forever).
            if let Some(status) = w.try_wait().expect("poll worker") {
                panic!("chaos worker exited on its own: {status}");
            }
            w.kill().expect("SIGKILL worker");
            w.wait().expect("reap worker");
            kills += 1;
        }
        let store = open(dir.path());
        store
            .verify()
            .unwrap_or_else(|e| panic!("after {kills} kills: {e}"));
        let all = store.reservations().expect("reservations");
        let distinct: HashSet<IpAddr> = all.iter().map(|r| r.address).collect();
        assert_eq!(distinct.len(), all.len());
    }
    assert!(kills > 0);
}
