//! The store rebuilt from the pod interfaces when it is missing, unreadable or
//! inconsistent.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;

use twill_conf::Attachment;

use crate::testing::{owner, range};
use crate::{PodPort, PodPorts, Rebuilt, Store, StoreError};

/// What a node's pod interfaces would list.
#[derive(Debug)]
struct Listed(Result<Vec<PodPort>, String>);

impl PodPorts for Listed {
    fn list(&self) -> Result<Vec<PodPort>, String> {
        self.0.clone()
    }
}

/// The host veths of the pods the store holds, as the plugin labels them.
fn ports_of(store: &Store) -> Listed {
    let ports = store
        .reservations()
        .expect("reservations")
        .into_iter()
        .map(|r| PodPort {
            link: r.owner.host_veth_name(),
            alias: Some(r.owner.alias(&[r.address])),
        })
        .collect();
    Listed(Ok(ports))
}

/// 20 pods in a store in `dir`; returns what their interfaces record.
fn twenty_pods(dir: &Path) -> Listed {
    let store = Store::open(dir).expect("open");
    for i in 0..20 {
        store
            .allocate(
                &owner(&format!("p{i}")),
                &[range("10.1.0.0/24", "10.1.0.1")],
            )
            .expect("allocate");
    }
    ports_of(&store)
}

fn addrs(store: &Store) -> HashSet<IpAddr> {
    let all = store.reservations().expect("reservations");
    all.into_iter().map(|r| r.address).collect()
}

/// The store rebuilt by `open_or_rebuild` keeps every running pod's address and hands
/// 20 new pods 20 others.
fn assert_rebuilt_keeps_addresses(dir: &Path, ports: &Listed, rebuilt: &Rebuilt) {
    let (store, again) = Store::open_or_rebuild(dir, ports).expect("open rebuilt");
    assert_eq!(again, None, "a rebuilt store is sound");
    assert_eq!(rebuilt.restored, 20, "{rebuilt:?}");
    let running = addrs(&store);
    assert_eq!(running.len(), 20);
    for i in 0..20 {
        let got = store
            .allocate(
                &owner(&format!("new{i}")),
                &[range("10.1.0.0/24", "10.1.0.1")],
            )
            .expect("allocate");
        assert!(
            !running.contains(&got[0].addr()),
            "{} handed out twice",
            got[0]
        );
    }
    store.verify().expect("verify");
    assert_eq!(addrs(&store).len(), 40);
    // Running pods are still their addresses' owners.
    assert_eq!(store.lookup(&owner("p3")).expect("lookup").len(), 1);
}

#[test]
fn a_missing_store_is_rebuilt_from_the_pod_interfaces() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = twenty_pods(dir.path());
    std::fs::remove_dir_all(dir.path()).expect("rm -rf");
    let (store, rebuilt) = Store::open_or_rebuild(dir.path(), &ports).expect("rebuild");
    drop(store);
    let rebuilt = rebuilt.expect("rebuilt");
    assert_eq!(rebuilt.moved_aside, None);
    assert_rebuilt_keeps_addresses(dir.path(), &ports, &rebuilt);
}

#[test]
fn a_damaged_store_is_moved_aside_and_rebuilt() {
    for damage in ["truncate", "garbage"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = twenty_pods(dir.path());
        let file = dir.path().join("db").join("db");
        let mut bytes = std::fs::read(&file).expect("read");
        match damage {
            "truncate" => bytes.truncate(bytes.len() / 2),
            _ => bytes.iter_mut().for_each(|b| *b = 0x5a),
        }
        std::fs::write(&file, &bytes).expect("damage");

        let (store, rebuilt) = Store::open_or_rebuild(dir.path(), &ports).expect("rebuild");
        drop(store);
        let rebuilt = rebuilt.expect("rebuilt");
        let aside = rebuilt.moved_aside.clone().expect("moved aside");
        let name = aside.file_name().unwrap_or_default().to_string_lossy();
        assert!(name.starts_with("db.damaged-"), "{damage}: {aside:?}");
        // Kept, not deleted (sled's recovery at open may have rewritten its tail).
        assert!(aside.join("db").is_file(), "{damage}: {aside:?}");
        assert_rebuilt_keeps_addresses(dir.path(), &ports, &rebuilt);
    }
}

#[test]
fn an_inconsistent_store_is_rebuilt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = twenty_pods(dir.path());
    {
        // An address in by_addr that no owner lists: verify fails.
        let db = crate::store::open_db(&dir.path().join("db")).expect("sled");
        let by_addr = db.open_tree("by_addr").expect("tree");
        by_addr
            .insert([4u8, 10, 1, 0, 200], &b"\0\0\0\x01xeth0"[..])
            .expect("insert");
        db.flush().expect("flush");
    }
    let (store, rebuilt) = Store::open_or_rebuild(dir.path(), &ports).expect("rebuild");
    drop(store);
    let rebuilt = rebuilt.expect("rebuilt");
    assert!(rebuilt.why.contains("inconsistent"), "{rebuilt:?}");
    assert_rebuilt_keeps_addresses(dir.path(), &ports, &rebuilt);
}

#[test]
fn a_damaged_store_stays_put_when_the_kernel_cannot_be_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    twenty_pods(dir.path());
    let file = dir.path().join("db").join("db");
    std::fs::write(&file, vec![0x5a; 4096]).expect("damage");
    let blind = Listed(Err("netlink: permission denied".into()));
    match Store::open_or_rebuild(dir.path(), &blind) {
        Err(StoreError::Unrebuildable { reason, .. }) => assert!(reason.contains("netlink")),
        other => panic!("expected Unrebuildable, got {other:?}"),
    }
    assert!(
        file.is_file(),
        "the damaged store was moved although nothing replaced it"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .flatten()
        .collect();
    assert!(
        left.iter()
            .all(|e| !e.file_name().to_string_lossy().starts_with("db.damaged")),
        "moved aside without a rebuild"
    );
}

#[test]
fn a_fresh_node_opens_a_fresh_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, rebuilt) = Store::open_or_rebuild(dir.path(), &Listed(Ok(vec![]))).expect("open");
    assert_eq!(rebuilt, None);
    assert!(store.reservations().expect("reservations").is_empty());
}

#[test]
fn a_pod_with_a_cut_container_id_keeps_its_address_under_a_stand_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = Attachment::new(format!("k8s.io-{}", "f".repeat(300)), "eth0");
    let addr: IpAddr = "10.1.0.77".parse().expect("addr");
    let ports = Listed(Ok(vec![PodPort {
        link: pod.host_veth_name(),
        alias: Some(pod.alias(&[addr])),
    }]));
    let (store, _) = Store::open_or_rebuild(dir.path(), &ports).expect("rebuild");
    assert_eq!(store.lookup(&pod.stand_in()).expect("lookup"), vec![addr]);
    assert_eq!(store.release(&pod.stand_in()).expect("release"), vec![addr]);
}
