//! Worker process for the store's SIGKILL tests: churns allocations and releases in the
//! store at argv[1] until it is killed, or, with `once`, opens the store, allocates one
//! address and exits, as one plugin run does.

use std::path::Path;
use twill_conf::{Attachment, PodRange};
use twill_ipam::{Store, StoreError};

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: chaos_worker STORE_DIR");
        std::process::exit(2);
    };
    let range = PodRange {
        subnet: "10.244.1.0/26".parse().expect("literal subnet"),
        gateway: "10.244.1.1".parse().expect("literal gateway"),
    };
    let once = std::env::args().nth(2).as_deref() == Some("once");
    let pid = std::process::id();
    let mut state = u64::from(pid) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    loop {
        let store = Store::open(Path::new(&dir)).expect("open");
        let owner = Attachment {
            container_id: format!("p{pid}-{}", next() % 16),
            ifname: "eth0".into(),
        };
        if once {
            store
                .allocate(&owner, std::slice::from_ref(&range))
                .expect("allocate");
            return;
        }
        if next() % 3 == 0 {
            store.release(&owner).expect("release");
        } else {
            match store.allocate(&owner, std::slice::from_ref(&range)) {
                Ok(_) | Err(StoreError::Exhausted { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
    }
}
