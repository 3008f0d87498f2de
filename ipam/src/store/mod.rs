//! The address store of one network: its public operations.
//!
//! Split by concern: [`open`](self::open) opens and recovers sled, [`trees`] reads the
//! indexes and commits planned changes in one transaction, [`plan`] is the allocation
//! policy (round-robin, interval cutting and merging, range changes) and turns a request
//! into changes, [`verify`](self::verify) checks the indexes against each other,
//! [`rebuild`] replaces a lost or damaged store with what the pod interfaces record.

mod open;
mod plan;
mod rebuild;
mod trees;
mod verify;

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;

use ipnet::IpNet;
use sled::{Db, Tree};
use twill_conf::{Attachment, PodRange};

use crate::codec::{decode_owner, owner_key, Addr};
use crate::lock::DirLock;
use crate::span::Span;
use crate::{Reservation, StoreError};

pub use rebuild::Rebuilt;

#[cfg(test)]
pub(crate) use open::open_db;

/// The address store of one network on this node.
///
/// Holds an exclusive lock on the store directory from [`Store::open`] until
/// dropped: open it for the critical section only.
pub struct Store {
    // Field order matters: fields drop in declaration order, and the sled
    // handles must be gone before the directory lock is released.
    db: Db,
    by_addr: Tree,
    by_owner: Tree,
    free: Tree,
    meta: Tree,
    path: PathBuf,
    /// Serialises the threads of this process that share one `Store`; other
    /// processes and other `Store`s are kept out by `lock`.
    serial: Mutex<()>,
    lock: DirLock,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// One address per range for `owner` (in the order of `ranges`), each as
    /// IpNet with the range's prefix length. Idempotent per owner.
    ///
    /// When `ranges` differ from those of the previous call, reservations
    /// that are not usable in the new ranges are dropped first.
    pub fn allocate(
        &self,
        owner: &Attachment,
        ranges: &[PodRange],
    ) -> Result<Vec<IpNet>, StoreError> {
        let spans = Span::from_ranges(ranges)?;
        let _serial = self.serialize();

        let mut wanted = spans.clone();
        wanted.sort_by_key(|s| s.family);
        let mut wrote = false;
        if self.stored_spans()? != wanted {
            wrote = self.mutate(|s| s.plan_set_ranges(&wanted))?.1;
        }
        let allocated = self.mutate(|s| s.plan_allocate(owner, &spans));
        // Flush even when allocating failed: the range change stands.
        if wrote || matches!(allocated, Ok((_, true))) {
            self.flush()?;
        }
        let (addrs, _) = allocated?;

        spans
            .iter()
            .zip(addrs)
            .map(|(span, addr)| {
                IpNet::new(addr.ip(), span.subnet.prefix_len())
                    .map_err(|e| StoreError::InvalidRange(e.to_string()))
            })
            .collect()
    }

    /// Releases every address of `owner`; Ok(vec![]) when it had none.
    /// Idempotent.
    pub fn release(&self, owner: &Attachment) -> Result<Vec<IpAddr>, StoreError> {
        let _serial = self.serialize();
        let released = self.release_locked(&owner_key(owner))?;
        if !released.is_empty() {
            self.flush()?;
        }
        Ok(released.into_iter().map(Addr::ip).collect())
    }

    /// The addresses held by `owner` (empty when none).
    pub fn lookup(&self, owner: &Attachment) -> Result<Vec<IpAddr>, StoreError> {
        let _serial = self.serialize();
        let addrs = self.owner_addrs(&owner_key(owner))?;
        Ok(addrs.into_iter().map(Addr::ip).collect())
    }

    /// Every reservation, in address order (for GC, CHECK and tests; O(n)).
    pub fn reservations(&self) -> Result<Vec<Reservation>, StoreError> {
        let _serial = self.serialize();
        let mut out = Vec::new();
        for entry in self.by_addr.iter() {
            let (key, value) = entry?;
            let addr =
                Addr::from_key(&key).ok_or_else(|| self.corrupt("undecodable address key"))?;
            let owner = decode_owner(&value).ok_or_else(|| self.corrupt("undecodable owner"))?;
            out.push(Reservation {
                owner,
                address: addr.ip(),
            });
        }
        Ok(out)
    }

    /// GC: releases every owner for which `keep` returns false; returns the
    /// released reservations.
    pub fn retain(
        &self,
        keep: impl Fn(&Attachment) -> bool,
    ) -> Result<Vec<Reservation>, StoreError> {
        let _serial = self.serialize();
        let mut doomed = Vec::new();
        for key in self.by_owner.iter().keys() {
            let key = key?;
            let owner = decode_owner(&key).ok_or_else(|| self.corrupt("undecodable owner key"))?;
            if !keep(&owner) {
                doomed.push((owner, key.to_vec()));
            }
        }

        let mut released = Vec::new();
        for (owner, key) in doomed {
            for addr in self.release_locked(&key)? {
                released.push(Reservation {
                    owner: owner.clone(),
                    address: addr.ip(),
                });
            }
        }
        if !released.is_empty() {
            self.flush()?;
        }
        Ok(released)
    }

    /// Releases the owner's addresses one transaction each: returning an
    /// address merges it with its neighbours, which is planned from range
    /// reads, so one plan may touch only one spot of the free tree. A crash
    /// in between leaves the owner with fewer addresses, which a retried
    /// release finishes.
    fn release_locked(&self, okey: &[u8]) -> Result<Vec<Addr>, StoreError> {
        let mut released = Vec::new();
        // Each commit shortens the owner's list, so this ends.
        while let (Some(addr), _) = self.mutate(|s| s.plan_release_first(okey))? {
            released.push(addr);
        }
        Ok(released)
    }
}
