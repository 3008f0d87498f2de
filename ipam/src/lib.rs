//! Per-node, crash-safe pod address store for Twill.
//!
//! The CNI plugin runs as one short-lived process per pod operation, and many
//! may run at once on a node. Each network has one [`Store`] in a directory
//! of its own; [`Store::open`] waits for a file lock, so concurrent plugin
//! processes take turns. Every mutation is one sled transaction over all
//! indexes and is flushed to disk before the call returns, so a SIGKILL at
//! any point leaves either the old or the new state, never a mix.
//!
//! Opening sled costs milliseconds (recovery, a snapshot, fsyncs), which a plugin
//! process pays on every call. So the node agent holds the store open and serves
//! it on a unix socket ([`StoreService`]); [`StoreClient`] uses that socket when
//! it answers and opens the store itself when it does not.
//!
//! # On-disk layout
//!
//! `<dir>/lock` is the flock file; `<dir>/served` is locked by a store service
//! while it runs; `<dir>/db.damaged-<unix time>/` is a database found unreadable or
//! inconsistent and replaced by one rebuilt from the pod interfaces ([`recovery`]);
//! `<dir>/db/` is the sled database, with
//! these trees (address key = family byte 4 or 6 ++ big-endian address
//! bytes, so keys sort numerically within a family):
//!
//! * `by_addr`: address key → owner key.
//! * `by_owner`: owner key (`u32 BE len(container ID) ++ container ID ++
//!   ifname`) → the owner's address keys, concatenated.
//! * `free`: one entry per maximal interval of free usable addresses:
//!   start address key → end address key (inclusive).
//! * `meta`: `ranges` → the configured ranges; `cursor` ++ family byte →
//!   address key of the address last handed out in that family's range;
//!   `gen` → u64 BE, bumped by every transaction (lets a transaction detect
//!   that what it planned from has changed).

mod codec;
mod error;
mod lock;
pub mod recovery;
pub mod service;
mod span;
mod store;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use twill_conf::Attachment;

pub use error::StoreError;
pub use recovery::{PodPort, PodPorts};
pub use service::{StoreClient, StoreService};
pub use store::{Rebuilt, Store};

/// One address held by one owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub owner: Attachment,
    pub address: IpAddr,
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod rebuild_tests;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;
