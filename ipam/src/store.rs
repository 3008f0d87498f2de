use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use sled::transaction::{abort, TransactionError};
use sled::{Db, Transactional, Tree};
use tracing::{debug, info, warn};
use twill_conf::{Attachment, PodRange};

use crate::codec::{
    decode_addrs, decode_interval, decode_owner, decode_u64, encode_addrs, encode_u64, owner_key,
    Addr, Family,
};
use crate::lock::DirLock;
use crate::span::{decode_spans, encode_spans, Span};
use crate::{Reservation, StoreError};

const META_RANGES: &[u8] = b"ranges";
const META_GEN: &[u8] = b"gen";
const META_CURSOR: &[u8] = b"cursor";

/// The working set is tiny (a node holds a few hundred pods at most).
const CACHE_CAPACITY: u64 = 1 << 20;
/// sled zero-fills the rest of the active segment on every open; smaller
/// segments make each open write (and fsync) less. Mode and cache size made
/// no measurable difference. sled refuses to open a database with another
/// segment size than it was created with: never change this.
const SEGMENT_SIZE: usize = 256 << 10;
/// sled only drops its own file lock once its last background I/O task has
/// let go of the file, which may be a moment after the previous holder of our
/// lock dropped its `Db`. We hold our lock, so that is the only possible
/// holder: wait for it, within reason.
const SLED_LOCK_GRACE: Duration = Duration::from_secs(5);
/// Retries when a transaction finds the store changed since it was planned.
/// With the locks held nothing else writes, so one attempt is the norm.
const MAX_ATTEMPTS: usize = 8;

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

/// Which tree a pending write goes to.
#[derive(Clone, Copy)]
enum T {
    ByAddr = 0,
    ByOwner = 1,
    Free = 2,
    Meta = 3,
}

/// Writes planned outside a transaction (sled transactions cannot do range
/// reads) and applied atomically by [`Store::commit`]. The last write to a
/// key wins.
#[derive(Default)]
struct Changes {
    trees: [BTreeMap<Vec<u8>, Option<Vec<u8>>>; 4],
}

impl Changes {
    fn put(&mut self, tree: T, key: Vec<u8>, value: Vec<u8>) {
        self.trees[tree as usize].insert(key, Some(value));
    }

    fn del(&mut self, tree: T, key: Vec<u8>) {
        self.trees[tree as usize].insert(key, None);
    }

    fn is_empty(&self) -> bool {
        self.trees.iter().all(BTreeMap::is_empty)
    }
}

fn cursor_key(family: Family) -> Vec<u8> {
    [META_CURSOR, &[family.byte()]].concat()
}

impl Store {
    /// Creates `dir` if missing, takes the blocking lock, opens sled.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Self::open_with(dir, false)
    }

    /// Like [`Store::open`], but gives up with [`StoreError::Served`] when a store
    /// service holds the store (it would never let go of the lock).
    pub fn open_unless_served(dir: &Path) -> Result<Store, StoreError> {
        Self::open_with(dir, true)
    }

    fn open_with(dir: &Path, unless_served: bool) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let lock_path = dir.join("lock");
        let lock = if unless_served {
            DirLock::acquire_unless_served(&lock_path, dir)?
        } else {
            DirLock::acquire(&lock_path)?
        };
        let path = dir.join("db");
        let lock_io = |source| StoreError::Io {
            path: lock_path.clone(),
            source,
        };
        // A new database starts at generation 0; forget the watermark of a
        // database that was removed on purpose.
        let fresh = !path.exists();
        if fresh {
            lock.set_watermark(0).map_err(lock_io)?;
        }
        let db = open_db(&path)?;
        let by_addr = db.open_tree("by_addr")?;
        let by_owner = db.open_tree("by_owner")?;
        let free = db.open_tree("free")?;
        let meta = db.open_tree("meta")?;
        let store = Store {
            db,
            by_addr,
            by_owner,
            free,
            meta,
            path,
            serial: Mutex::new(()),
            lock,
        };
        if !fresh {
            store.check_not_rolled_back()?;
        }
        Ok(store)
    }

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

    /// Checks internal consistency: by_addr and by_owner agree exactly, no
    /// address is both free and reserved, no address reserved twice, every
    /// usable address is either free or reserved (none leaked). Returns
    /// [`StoreError::Inconsistent`] describing the first problem found.
    pub fn verify(&self) -> Result<(), StoreError> {
        let _serial = self.serialize();
        let bad = |msg: String| Err(StoreError::Inconsistent(msg));
        let spans = self.stored_spans()?;
        self.gen()?;
        for family in [Family::V4, Family::V6] {
            self.cursor(family)?;
        }

        let mut held: BTreeMap<Addr, Vec<u8>> = BTreeMap::new();
        for entry in self.by_addr.iter() {
            let (key, value) = entry?;
            let Some(addr) = Addr::from_key(&key) else {
                return bad(format!("undecodable by_addr key {key:?}"));
            };
            if decode_owner(&value).is_none() {
                return bad(format!("{} is held by an undecodable owner", addr.ip()));
            }
            if !spans.iter().any(|s| s.holds(addr)) {
                return bad(format!(
                    "reserved {} is not usable in the configured ranges",
                    addr.ip()
                ));
            }
            held.insert(addr, value.to_vec());
        }

        let mut listed: BTreeMap<Addr, Vec<u8>> = BTreeMap::new();
        for entry in self.by_owner.iter() {
            let (key, value) = entry?;
            let Some(owner) = decode_owner(&key) else {
                return bad(format!("undecodable by_owner key {key:?}"));
            };
            let Some(addrs) = decode_addrs(&value) else {
                return bad(format!("undecodable address list of {owner:?}"));
            };
            if addrs.is_empty() {
                return bad(format!("{owner:?} has an empty address list"));
            }
            for addr in addrs {
                if listed.insert(addr, key.to_vec()).is_some() {
                    return bad(format!("{} is listed more than once", addr.ip()));
                }
                match held.get(&addr) {
                    Some(holder) if holder[..] == key[..] => {}
                    Some(_) => {
                        return bad(format!(
                            "{} is listed by {owner:?} but by_addr names another owner",
                            addr.ip()
                        ))
                    }
                    None => {
                        return bad(format!(
                            "{} is listed by {owner:?} but missing from by_addr",
                            addr.ip()
                        ))
                    }
                }
            }
        }
        if let Some(addr) = held.keys().find(|a| !listed.contains_key(a)) {
            return bad(format!(
                "{} is in by_addr but not in its owner's list",
                addr.ip()
            ));
        }

        let mut free_count: BTreeMap<Family, u128> = BTreeMap::new();
        let mut prev_end: Option<Addr> = None;
        for entry in self.free.iter() {
            let (key, value) = entry?;
            let Some((start, end)) = decode_interval(&key, &value) else {
                return bad(format!("undecodable free interval {key:?} → {value:?}"));
            };
            let what = format!("free interval {}-{}", start.ip(), end.ip());
            let Some(span) = spans
                .iter()
                .find(|s| s.family == start.family && s.lo <= start.value && end.value <= s.hi)
            else {
                return bad(format!("{what} is outside the configured ranges"));
            };
            if (start..=end).contains(&span.gateway) {
                return bad(format!("{what} contains the gateway"));
            }
            if let Some(prev) = prev_end.filter(|p| p.family == start.family) {
                if prev.value.saturating_add(1) >= start.value {
                    return bad(format!("{what} overlaps or touches the one before"));
                }
            }
            if let Some(addr) = held.range(start..=end).next() {
                return bad(format!("{} is both free and reserved", addr.0.ip()));
            }
            *free_count.entry(start.family).or_default() += end.value - start.value + 1;
            prev_end = Some(end);
        }
        for span in &spans {
            let free = free_count.get(&span.family).copied().unwrap_or(0);
            let reserved = held.range(span.first()..=span.last()).count() as u128;
            if free.saturating_add(reserved) != span.usable() {
                return bad(format!(
                    "{}: {free} free + {reserved} reserved != {} usable",
                    span.subnet,
                    span.usable()
                ));
            }
        }
        Ok(())
    }

    // ---- allocation ----

    fn plan_allocate(
        &self,
        owner: &Attachment,
        spans: &[Span],
    ) -> Result<(Changes, Vec<Addr>), StoreError> {
        let okey = owner_key(owner);
        let held = self.owner_addrs(&okey)?;
        let mut changes = Changes::default();
        let mut list = held.clone();
        let mut out = Vec::with_capacity(spans.len());

        for span in spans {
            // Idempotence: an owner keeps what it already holds in this range.
            if let Some(addr) = held.iter().find(|a| span.holds(**a)) {
                out.push(*addr);
                continue;
            }
            let (addr, start, end) = self.pick_free(span)?;
            // The free tree said so, but this is the one place a bug would
            // hand out an address twice: check the other index too.
            if !span.holds(addr) || self.by_addr.contains_key(addr.key())? {
                return Err(self.corrupt(&format!(
                    "free interval {}-{} contains unusable or reserved {}",
                    start.ip(),
                    end.ip(),
                    addr.ip()
                )));
            }
            // Cut `addr` out of its interval [start, end].
            let f = span.family;
            changes.del(T::Free, start.key());
            if start.value < addr.value {
                changes.put(T::Free, start.key(), Addr::new(f, addr.value - 1).key());
            }
            if addr.value < end.value {
                changes.put(T::Free, Addr::new(f, addr.value + 1).key(), end.key());
            }
            changes.put(T::ByAddr, addr.key(), okey.clone());
            changes.put(T::Meta, cursor_key(f), addr.key());
            list.push(addr);
            out.push(addr);
        }
        if list.len() != held.len() {
            changes.put(T::ByOwner, okey, encode_addrs(&list));
        }
        Ok((changes, out))
    }

    /// Round-robin: the first free address after the one last handed out in
    /// this range, wrapping to the start of the range. Returns the address
    /// and the free interval holding it.
    fn pick_free(&self, span: &Span) -> Result<(Addr, Addr, Addr), StoreError> {
        let from = match self.cursor(span.family)? {
            Some(c) if span.lo <= c.value && c.value < span.hi => {
                Addr::new(span.family, c.value + 1)
            }
            _ => span.first(),
        };
        // The interval holding `from`, if `from` is free.
        if let Some((start, end)) = self.last_free_starting_in(span.first(), from)? {
            if end >= from {
                return Ok((from, start, end));
            }
        }
        // Else the next interval above it, else wrap around.
        let next = match self.first_free_starting_in(from, span.last())? {
            Some(iv) => Some(iv),
            None => self.first_free_starting_in(span.first(), span.last())?,
        };
        match next {
            Some((start, end)) => Ok((start, start, end)),
            None => Err(StoreError::Exhausted {
                subnet: span.subnet,
                // Only counted on this error path.
                in_use: self
                    .by_addr
                    .range(span.first().key()..=span.last().key())
                    .count() as u128,
                usable: span.usable(),
            }),
        }
    }

    // ---- release ----

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

    fn plan_release_first(&self, okey: &[u8]) -> Result<(Changes, Option<Addr>), StoreError> {
        let mut changes = Changes::default();
        let held = self.owner_addrs(okey)?;
        let Some((&addr, rest)) = held.split_first() else {
            if self.by_owner.contains_key(okey)? {
                changes.del(T::ByOwner, okey.to_vec());
            }
            return Ok((changes, None));
        };
        if rest.is_empty() {
            changes.del(T::ByOwner, okey.to_vec());
        } else {
            changes.put(T::ByOwner, okey.to_vec(), encode_addrs(rest));
        }

        // Only the holder recorded in by_addr gives the address back.
        match self.by_addr.get(addr.key())? {
            Some(holder) if holder[..] == okey[..] => {
                changes.del(T::ByAddr, addr.key());
                if let Some(span) = self.stored_spans()?.iter().find(|s| s.holds(addr)) {
                    self.plan_free(&mut changes, span, addr)?;
                }
            }
            _ => warn!(
                address = %addr.ip(),
                "owner lists an address that by_addr does not give it; dropping it from the owner only"
            ),
        }
        Ok((changes, Some(addr)))
    }

    /// Puts `addr` back into the free tree, merged with the free intervals
    /// right below and right above it.
    fn plan_free(&self, changes: &mut Changes, span: &Span, addr: Addr) -> Result<(), StoreError> {
        let f = span.family;
        let (mut start, mut end) = (addr, addr);
        if let Some((s, e)) = self.last_free_starting_in(span.first(), addr)? {
            if e >= addr {
                warn!(address = %addr.ip(), "released address was already free");
                return Ok(());
            }
            if e.value + 1 == addr.value {
                start = s;
            }
        }
        if addr.value < span.hi {
            let above = Addr::new(f, addr.value + 1);
            if let Some(value) = self.free.get(above.key())? {
                let (_, e) = decode_interval(&above.key(), &value)
                    .ok_or_else(|| self.corrupt("undecodable free interval"))?;
                changes.del(T::Free, above.key());
                end = e;
            }
        }
        changes.put(T::Free, start.key(), end.key());
        Ok(())
    }

    // ---- range changes ----

    /// Switches to `new` ranges (sorted by family): drops every reservation
    /// not usable in them from both indexes and rebuilds the free tree. O(n),
    /// only when the ranges change.
    fn plan_set_ranges(&self, new: &[Span]) -> Result<(Changes, ()), StoreError> {
        let old = self.stored_spans()?;
        let mut changes = Changes::default();

        for key in self.free.iter().keys() {
            changes.del(T::Free, key?.to_vec());
        }

        let mut kept: Vec<Vec<u128>> = vec![Vec::new(); new.len()];
        let mut dropped = 0usize;
        for key in self.by_addr.iter().keys() {
            let key = key?;
            let addr =
                Addr::from_key(&key).ok_or_else(|| self.corrupt("undecodable address key"))?;
            match new.iter().position(|s| s.holds(addr)) {
                Some(i) => kept[i].push(addr.value),
                None => {
                    changes.del(T::ByAddr, key.to_vec());
                    dropped += 1;
                }
            }
        }
        for entry in self.by_owner.iter() {
            let (key, value) = entry?;
            let addrs =
                decode_addrs(&value).ok_or_else(|| self.corrupt("undecodable address list"))?;
            let stay: Vec<Addr> = addrs
                .iter()
                .copied()
                .filter(|a| new.iter().any(|s| s.holds(*a)))
                .collect();
            if stay.is_empty() {
                changes.del(T::ByOwner, key.to_vec());
            } else if stay.len() != addrs.len() {
                changes.put(T::ByOwner, key.to_vec(), encode_addrs(&stay));
            }
        }

        for (span, kept) in new.iter().zip(&kept) {
            for (start, end) in span.free_intervals(kept) {
                changes.put(T::Free, start.key(), end.key());
            }
        }
        // A cursor only means something in the range it walked.
        for family in [Family::V4, Family::V6] {
            let before = old.iter().find(|s| s.family == family);
            let after = new.iter().find(|s| s.family == family);
            if before != after {
                changes.del(T::Meta, cursor_key(family));
            }
        }
        changes.put(T::Meta, META_RANGES.to_vec(), encode_spans(new));

        let ranges: Vec<PodRange> = new.iter().map(Span::range).collect();
        info!(?ranges, dropped, "address ranges changed");
        Ok((changes, ()))
    }

    // ---- transactions ----

    /// Plans from the current state, then commits the plan atomically unless
    /// the store changed in between (then plans again). Returns the plan's
    /// output and whether anything was written.
    fn mutate<R>(
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
    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        if let Err(e) = self.lock.set_watermark(self.gen()?) {
            warn!(error = %e, "cannot record the store generation in the lock file");
        }
        Ok(())
    }

    /// sled recovers a damaged log by silently stopping at the first bad
    /// record, which would forget reservations of running pods and lead to
    /// handing their addresses out again. Detect that: the store must be at
    /// least at the generation recorded after the last flush.
    fn check_not_rolled_back(&self) -> Result<(), StoreError> {
        let recorded = self.lock.watermark().map_err(|source| StoreError::Io {
            path: self.path.with_file_name("lock"),
            source,
        })?;
        let current = self.gen()?;
        if current < recorded {
            return Err(self.corrupt(&format!(
                "store is at generation {current} but generation {recorded} was committed before: \
                 sled lost committed data"
            )));
        }
        Ok(())
    }

    fn serialize(&self) -> MutexGuard<'_, ()> {
        // The guarded state lives in sled; a panicked holder leaves nothing
        // half-done in memory.
        self.serial.lock().unwrap_or_else(PoisonError::into_inner)
    }

    // ---- reads ----

    fn gen(&self) -> Result<u64, StoreError> {
        match self.meta.get(META_GEN)? {
            None => Ok(0),
            Some(v) => decode_u64(&v).ok_or_else(|| self.corrupt("undecodable generation")),
        }
    }

    /// The configured ranges, sorted by family (empty before the first
    /// allocation).
    fn stored_spans(&self) -> Result<Vec<Span>, StoreError> {
        match self.meta.get(META_RANGES)? {
            None => Ok(Vec::new()),
            Some(v) => decode_spans(&v).ok_or_else(|| self.corrupt("undecodable ranges")),
        }
    }

    fn cursor(&self, family: Family) -> Result<Option<Addr>, StoreError> {
        match self.meta.get(cursor_key(family))? {
            None => Ok(None),
            Some(v) => match Addr::from_key(&v) {
                Some(a) if a.family == family => Ok(Some(a)),
                _ => Err(self.corrupt("undecodable cursor")),
            },
        }
    }

    fn owner_addrs(&self, okey: &[u8]) -> Result<Vec<Addr>, StoreError> {
        match self.by_owner.get(okey)? {
            None => Ok(Vec::new()),
            Some(v) => decode_addrs(&v).ok_or_else(|| self.corrupt("undecodable address list")),
        }
    }

    /// The free interval with the greatest start in `[lo, hi]`.
    fn last_free_starting_in(
        &self,
        lo: Addr,
        hi: Addr,
    ) -> Result<Option<(Addr, Addr)>, StoreError> {
        self.free
            .range(lo.key()..=hi.key())
            .next_back()
            .transpose()?
            .map(|(k, v)| self.interval(&k, &v, lo.family))
            .transpose()
    }

    /// The free interval with the smallest start in `[lo, hi]`.
    fn first_free_starting_in(
        &self,
        lo: Addr,
        hi: Addr,
    ) -> Result<Option<(Addr, Addr)>, StoreError> {
        self.free
            .range(lo.key()..=hi.key())
            .next()
            .transpose()?
            .map(|(k, v)| self.interval(&k, &v, lo.family))
            .transpose()
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

    fn corrupt(&self, reason: &str) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            reason: reason.to_owned(),
        }
    }
}

/// sled tuned for a short-lived process: no background flusher (every
/// mutation flushes before returning) and a small cache.
pub(crate) fn sled_config(path: &Path) -> sled::Config {
    sled::Config::new()
        .path(path)
        .mode(sled::Mode::LowSpace)
        .cache_capacity(CACHE_CAPACITY)
        .segment_size(SEGMENT_SIZE)
        .flush_every_ms(None)
}

/// sled 0.34.7 writes a snapshot to `snap.<lsn>.generating` and renames it when it is
/// complete and synced, but lists snapshots skipping only `.in___motion`: a process
/// killed while writing one leaves a `.generating` file that the next open takes for
/// the newest snapshot, and fails as corrupt. Such a file is always incomplete (the
/// previous snapshot stays until the rename), so it is removed before opening. Only
/// called with the store lock held, when no other process can be writing one.
pub(crate) fn remove_incomplete_snapshots(path: &Path) -> Result<usize, StoreError> {
    let entries = match std::fs::read_dir(path) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(StoreError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            std::fs::remove_file(entry.path()).map_err(|source| StoreError::Io {
                path: entry.path(),
                source,
            })?;
            tracing::info!(file = %entry.path().display(), "removed an incomplete sled snapshot left by a killed process");
            removed += 1;
        }
    }
    Ok(removed)
}

pub(crate) fn open_db(path: &Path) -> Result<Db, StoreError> {
    remove_incomplete_snapshots(path)?;
    let config = sled_config(path);
    let deadline = Instant::now() + SLED_LOCK_GRACE;
    loop {
        // sled 0.34 may panic instead of returning an error on some damaged
        // files; the caller must get an error it can act on either way.
        let err = match catch_unwind(AssertUnwindSafe(|| config.open())) {
            Ok(Ok(db)) => return Ok(db),
            Ok(Err(e)) => e,
            Err(panic) => {
                let reason = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "sled panicked while opening".into());
                return Err(StoreError::Corrupt {
                    path: path.to_owned(),
                    reason,
                });
            }
        };
        if !is_sled_lock_error(&err) {
            return Err(open_error(path, err));
        }
        if Instant::now() >= deadline {
            return Err(StoreError::Lock {
                path: path.to_owned(),
                source: io::Error::new(io::ErrorKind::WouldBlock, err.to_string()),
            });
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// sled reports its busy file lock only as an `Other` I/O error with this text.
fn is_sled_lock_error(err: &sled::Error) -> bool {
    matches!(err, sled::Error::Io(e)
        if e.kind() == io::ErrorKind::Other && e.to_string().contains("could not acquire lock"))
}

fn open_error(path: &Path, err: sled::Error) -> StoreError {
    match err {
        sled::Error::Io(source) => StoreError::Io {
            path: path.to_owned(),
            source,
        },
        sled::Error::Corruption { .. } | sled::Error::ReportableBug(_) => StoreError::Corrupt {
            path: path.to_owned(),
            reason: err.to_string(),
        },
        other => StoreError::Db(other),
    }
}
