//! The sled trees as the store uses them: typed reads of the indexes, and plans
//! committed in one transaction, guarded by the store's generation.

use std::collections::BTreeMap;
use std::sync::{MutexGuard, PoisonError};

use sled::transaction::{abort, TransactionError};
use sled::Transactional;
use tracing::{debug, warn};

use super::Store;
use crate::codec::{decode_addrs, decode_interval, decode_u64, encode_u64, Addr, Family};
use crate::span::{decode_spans, Span};
use crate::StoreError;

pub(super) const META_RANGES: &[u8] = b"ranges";
const META_GEN: &[u8] = b"gen";
const META_CURSOR: &[u8] = b"cursor";

/// Retries when a transaction finds the store changed since it was planned.
/// With the locks held nothing else writes, so one attempt is the norm.
const MAX_ATTEMPTS: usize = 8;

/// Which tree a pending write goes to.
#[derive(Clone, Copy)]
pub(super) enum T {
    ByAddr = 0,
    ByOwner = 1,
    Free = 2,
    Meta = 3,
}

/// Writes planned outside a transaction (sled transactions cannot do range
/// reads) and applied atomically by [`Store::commit`]. The last write to a
/// key wins.
#[derive(Default)]
pub(super) struct Changes {
    trees: [BTreeMap<Vec<u8>, Option<Vec<u8>>>; 4],
}

impl Changes {
    pub(super) fn put(&mut self, tree: T, key: Vec<u8>, value: Vec<u8>) {
        self.trees[tree as usize].insert(key, Some(value));
    }

    pub(super) fn del(&mut self, tree: T, key: Vec<u8>) {
        self.trees[tree as usize].insert(key, None);
    }

    fn is_empty(&self) -> bool {
        self.trees.iter().all(BTreeMap::is_empty)
    }
}

pub(super) fn cursor_key(family: Family) -> Vec<u8> {
    [META_CURSOR, &[family.byte()]].concat()
}

impl Store {
    // ---- transactions ----

    /// Plans from the current state, then commits the plan atomically unless
    /// the store changed in between (then plans again). Returns the plan's
    /// output and whether anything was written.
    pub(super) fn mutate<R>(
        &self,
        plan: impl Fn(&Self) -> Result<(Changes, R), StoreError>,
    ) -> Result<(R, bool), StoreError> {
        for _ in 0..MAX_ATTEMPTS {
            let gen = self.gen()?;
            let (changes, out) = plan(self)?;
            if changes.is_empty() {
                return Ok((out, false));
            }
            if self.commit(gen, &changes)? {
                return Ok((out, true));
            }
            debug!("address store changed while planning; planning again");
        }
        Err(StoreError::Conflict)
    }

    /// Applies `changes` to all trees in one transaction if the generation
    /// is still `gen`. Returns false when it was not (nothing written).
    fn commit(&self, gen: u64, changes: &Changes) -> Result<bool, StoreError> {
        let trees = (&self.by_addr, &self.by_owner, &self.free, &self.meta);
        let result = trees.transaction(|(by_addr, by_owner, free, meta)| {
            let current = meta.get(META_GEN)?;
            if current.as_deref().map_or(Some(0), decode_u64) != Some(gen) {
                return abort(());
            }
            for (tree, writes) in [by_addr, by_owner, free, meta]
                .into_iter()
                .zip(&changes.trees)
            {
                for (key, value) in writes {
                    match value {
                        Some(v) => tree.insert(key.as_slice(), v.as_slice())?,
                        None => tree.remove(key.as_slice())?,
                    };
                }
            }
            meta.insert(META_GEN, &encode_u64(gen.wrapping_add(1))[..])?;
            Ok(())
        });
        match result {
            Ok(()) => Ok(true),
            Err(TransactionError::Abort(())) => Ok(false),
            Err(TransactionError::Storage(e)) => Err(e.into()),
        }
    }

    /// Makes every committed transaction durable, then records how far the
    /// store got (see [`Store::check_not_rolled_back`]).
    pub(super) fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        if let Err(e) = self.lock.set_watermark(self.gen()?) {
            warn!(error = %e, "cannot record the store generation in the lock file");
        }
        Ok(())
    }

    pub(super) fn serialize(&self) -> MutexGuard<'_, ()> {
        // The guarded state lives in sled; a panicked holder leaves nothing
        // half-done in memory.
        self.serial.lock().unwrap_or_else(PoisonError::into_inner)
    }

    // ---- reads ----

    pub(super) fn gen(&self) -> Result<u64, StoreError> {
        match self.meta.get(META_GEN)? {
            None => Ok(0),
            Some(v) => decode_u64(&v).ok_or_else(|| self.corrupt("undecodable generation")),
        }
    }

    /// The configured ranges, sorted by family (empty before the first
    /// allocation).
    pub(super) fn stored_spans(&self) -> Result<Vec<Span>, StoreError> {
        match self.meta.get(META_RANGES)? {
            None => Ok(Vec::new()),
            Some(v) => decode_spans(&v).ok_or_else(|| self.corrupt("undecodable ranges")),
        }
    }

    pub(super) fn cursor(&self, family: Family) -> Result<Option<Addr>, StoreError> {
        match self.meta.get(cursor_key(family))? {
            None => Ok(None),
            Some(v) => match Addr::from_key(&v) {
                Some(a) if a.family == family => Ok(Some(a)),
                _ => Err(self.corrupt("undecodable cursor")),
            },
        }
    }

    pub(super) fn owner_addrs(&self, okey: &[u8]) -> Result<Vec<Addr>, StoreError> {
        match self.by_owner.get(okey)? {
            None => Ok(Vec::new()),
            Some(v) => decode_addrs(&v).ok_or_else(|| self.corrupt("undecodable address list")),
        }
    }

    /// The free intervals whose start lies in `[lo, hi]`, in address order: `next()`
    /// is the one with the smallest start, `next_back()` the one with the greatest.
    pub(super) fn free_starting_in(
        &self,
        lo: Addr,
        hi: Addr,
    ) -> impl DoubleEndedIterator<Item = Result<(Addr, Addr), StoreError>> + '_ {
        self.free.range(lo.key()..=hi.key()).map(move |entry| {
            let (k, v) = entry?;
            self.interval(&k, &v, lo.family)
        })
    }

    fn interval(
        &self,
        key: &[u8],
        value: &[u8],
        family: Family,
    ) -> Result<(Addr, Addr), StoreError> {
        match decode_interval(key, value) {
            Some(iv) if iv.0.family == family => Ok(iv),
            _ => Err(self.corrupt("undecodable free interval")),
        }
    }

    pub(super) fn corrupt(&self, reason: &str) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            reason: reason.to_owned(),
        }
    }
}
