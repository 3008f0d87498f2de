use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use super::*;
use crate::testing::{owner, range};

fn serve(dir: &Path, socket: &Path) {
    let service = StoreService::start(dir, socket).expect("service starts");
    std::thread::spawn(move || service.serve());
}

/// A store served on a socket beside it, both in a fresh directory, and its client.
fn served_store() -> (tempfile::TempDir, StoreClient) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir, socket) = (tmp.path().join("store"), tmp.path().join("s.sock"));
    serve(&dir, &socket);
    (tmp, StoreClient::new(dir, Some(socket)))
}

#[test]
fn the_service_answers_every_operation() {
    let (_tmp, client) = served_store();
    let r = [range("10.9.0.0/24", "10.9.0.1")];

    let a = client.allocate(&owner("a"), &r).expect("allocate a");
    assert_eq!(a, vec!["10.9.0.2/24".parse::<IpNet>().expect("literal")]);
    assert_eq!(client.allocate(&owner("a"), &r).expect("again"), a);
    let b = client.allocate(&owner("b"), &r).expect("allocate b");
    assert_ne!(a, b);
    assert_eq!(
        client.lookup(&owner("b")).expect("lookup"),
        vec![b[0].addr()]
    );
    assert_eq!(client.reservations().expect("list").len(), 2);
    client.verify().expect("verify");
    let released = client.retain(vec![owner("a")]).expect("retain");
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].owner, owner("b"));
    assert_eq!(
        client.release(&owner("a")).expect("release"),
        vec![a[0].addr()]
    );
    assert!(client.reservations().expect("list").is_empty());
    // The service holds the store: a process opening it itself gives up at once.
    let start = Instant::now();
    assert!(matches!(
        Store::open_unless_served(client.dir()),
        Err(StoreError::Served { .. })
    ));
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[test]
fn errors_cross_the_socket_typed() {
    let (_tmp, client) = served_store();
    let r = [range("10.9.0.0/30", "10.9.0.1")];
    client
        .allocate(&owner("a"), &r)
        .expect("the one usable address");
    match client.allocate(&owner("b"), &r) {
        Err(StoreError::Exhausted {
            subnet,
            in_use,
            usable,
        }) => {
            assert_eq!(subnet.to_string(), "10.9.0.0/30");
            assert_eq!((in_use, usable), (1, 1));
        }
        other => panic!("expected Exhausted, got {other:?}"),
    }
    let bad = [range("10.9.0.0/24", "10.8.0.1")];
    assert!(matches!(
        client.allocate(&owner("c"), &bad),
        Err(StoreError::InvalidRange(_))
    ));
}

#[test]
fn without_a_service_the_client_opens_the_store_itself() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("store");
    let r = [range("10.9.0.0/24", "10.9.0.1")];
    // No socket file at all.
    let none = StoreClient::new(&dir, Some(tmp.path().join("missing.sock")));
    none.allocate(&owner("a"), &r).expect("local allocate");
    // A stale socket file: nobody listens on it.
    let stale = tmp.path().join("stale.sock");
    drop(UnixListener::bind(&stale).expect("bind"));
    let client = StoreClient::new(&dir, Some(stale));
    assert_eq!(client.reservations().expect("local list").len(), 1);
}

#[test]
fn a_service_for_another_directory_is_not_used() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let socket = tmp.path().join("s.sock");
    serve(&tmp.path().join("served"), &socket);
    let other = tmp.path().join("other");
    let client = StoreClient::new(&other, Some(socket.clone()));
    let r = [range("10.9.0.0/24", "10.9.0.1")];
    client.allocate(&owner("a"), &r).expect("local allocate");
    // It went to `other`, not to the served store.
    let served = StoreClient::new(tmp.path().join("served"), Some(socket));
    assert!(served.reservations().expect("served list").is_empty());
    drop(client);
    let local = Store::open(&other).expect("open other");
    assert_eq!(local.reservations().expect("list").len(), 1);
}

/// A plugin waiting for the store lock while the agent starts up: whichever
/// gets the lock first, the plugin's request is served once, never lost and
/// never stuck behind a lock the service keeps.
#[test]
fn a_client_waiting_for_the_lock_moves_to_a_service_that_starts_meanwhile() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir, socket) = (tmp.path().join("store"), tmp.path().join("s.sock"));
    let held = Store::open(&dir).expect("hold the store");

    let (tx, rx) = mpsc::channel();
    let client = StoreClient::new(&dir, Some(socket.clone()));
    std::thread::spawn(move || {
        let r = [range("10.9.0.0/24", "10.9.0.1")];
        let _ = tx.send(client.allocate(&owner("waiter"), &r));
    });
    let (dir2, socket2) = (dir.clone(), socket.clone());
    let service = std::thread::spawn(move || {
        StoreService::start(&dir2, &socket2)
            .expect("service starts")
            .serve()
    });
    // Both wait for the lock now; let them race for it.
    std::thread::sleep(Duration::from_millis(100));
    assert!(rx.try_recv().is_err(), "the client must wait for the lock");
    drop(held);

    let got = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the waiting client finishes")
        .expect("and gets an address");
    assert_eq!(got.len(), 1);
    let via_service = StoreClient::new(&dir, Some(socket));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !crate::lock::is_served(&dir) {
        assert!(Instant::now() < deadline, "the service never started");
        assert!(!service.is_finished(), "the service thread ended");
        std::thread::sleep(Duration::from_millis(10));
    }
    let all = via_service.reservations().expect("list via the service");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].owner, owner("waiter"));
    assert_eq!(all[0].address, got[0].addr());
}

/// The agent and the plugin on a node may be of different versions during an upgrade:
/// the request on the socket keeps its shape.
#[test]
fn the_request_keeps_its_wire_format() {
    let req = Request {
        dir: PathBuf::from("/var/lib/twill/twill"),
        op: Op::Allocate {
            owner: owner("a"),
            ranges: vec![range("10.9.0.0/24", "10.9.0.1")],
        },
    };
    let json = serde_json::to_value(&req).expect("encodes");
    assert_eq!(
        json,
        serde_json::json!({
            "dir": "/var/lib/twill/twill",
            "op": "allocate",
            "owner": {"container_id": "a", "ifname": "eth0"},
            "ranges": [{"subnet": "10.9.0.0/24", "gateway": "10.9.0.1"}],
        })
    );
}

/// A node whose health can be flipped.
struct Flag(std::sync::Mutex<Option<String>>);

impl NodeHealth for Flag {
    fn not_ready(&self) -> Option<String> {
        self.0.lock().ok()?.clone()
    }
}

#[test]
fn verify_reports_what_the_node_health_hook_says() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir, socket) = (tmp.path().join("store"), tmp.path().join("s.sock"));
    let flag = std::sync::Arc::new(Flag(std::sync::Mutex::new(Some(
        "firewall table not in place".into(),
    ))));
    let service = StoreService::start(&dir, &socket)
        .expect("service starts")
        .with_health(flag.clone());
    std::thread::spawn(move || service.serve());
    let client = StoreClient::new(dir, Some(socket));
    let err = client.verify().expect_err("an unhealthy node fails Verify");
    assert!(
        err.to_string().contains("firewall table not in place"),
        "{err}"
    );
    // Only Verify asks: addresses are still served.
    client
        .allocate(&owner("a"), &[range("10.9.0.0/24", "10.9.0.1")])
        .expect("allocate");
    *flag.0.lock().expect("lock") = None;
    client.verify().expect("a healthy node verifies");
}
