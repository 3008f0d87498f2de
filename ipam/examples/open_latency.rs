//! Measures what one CNI invocation pays for the address store:
//! open (lock + sled) + allocate (+ flush) + drop, with 200 reservations
//! present.
//!
//! `cargo run --release -p twill-ipam --example open_latency` measures in one
//! process; `... -- once DIR ID` does a single allocate (for timing fresh
//! processes from a shell loop, after `... -- populate DIR`).

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use twill_conf::{Attachment, PodRange};
use twill_ipam::{Store, StoreError};

const PRESENT: usize = 200;
const ROUNDS: usize = 100;

fn range() -> PodRange {
    PodRange {
        subnet: "10.244.0.0/22".parse().expect("literal subnet"),
        gateway: IpAddr::from([10, 244, 0, 1]),
    }
}

fn owner(id: &str) -> Attachment {
    Attachment::new(id, "eth0")
}

fn populate(dir: &Path) -> Result<(), StoreError> {
    let store = Store::open(dir)?;
    for i in 0..PRESENT {
        store.allocate(&owner(&format!("present-{i}")), &[range()])?;
    }
    Ok(())
}

fn one_allocate(dir: &Path, id: &str) -> Result<Duration, StoreError> {
    let start = Instant::now();
    let store = Store::open(dir)?;
    store.allocate(&owner(id), &[range()])?;
    drop(store);
    Ok(start.elapsed())
}

fn one_release(dir: &Path, id: &str) -> Result<Duration, StoreError> {
    let start = Instant::now();
    let store = Store::open(dir)?;
    store.release(&owner(id))?;
    drop(store);
    Ok(start.elapsed())
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pct = |p: usize| samples[(samples.len() - 1) * p / 100];
    println!(
        "{what}: median {:?}, p90 {:?}, max {:?} ({} rounds, {PRESENT} reservations present)",
        pct(50),
        pct(90),
        pct(100),
        samples.len()
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd, dir] if cmd == "populate" => populate(Path::new(dir))?,
        [cmd, dir, id] if cmd == "once" => {
            let took = one_allocate(Path::new(dir), id)?;
            println!("{}", took.as_micros());
        }
        [] => {
            let dir = tempfile::tempdir()?;
            populate(dir.path())?;
            let mut alloc = Vec::new();
            let mut release = Vec::new();
            for i in 0..ROUNDS {
                let id = format!("new-{i}");
                alloc.push(one_allocate(dir.path(), &id)?);
                release.push(one_release(dir.path(), &id)?);
            }
            report("open+allocate+flush+drop", alloc);
            report("open+release+flush+drop", release);
            let store = Store::open(dir.path())?;
            store.verify()?;
        }
        _ => return Err("usage: open_latency [populate DIR | once DIR ID]".into()),
    }
    Ok(())
}
