//! Opening a store: the directory lock, sled tuned for a short-lived process, and the
//! recovery checks sled 0.34 needs (incomplete snapshots, silent rollbacks, panics).

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use sled::Db;

use super::Store;
use crate::lock::DirLock;
use crate::StoreError;

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
        let lock = Self::lock_dir(dir, unless_served)?;
        Self::open_locked(dir, lock)
            .map(|(store, _)| store)
            .map_err(|(e, _)| e)
    }

    /// Creates `dir` if missing and takes its lock.
    pub(super) fn lock_dir(dir: &Path, unless_served: bool) -> Result<DirLock, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let lock_path = dir.join("lock");
        if unless_served {
            DirLock::acquire_unless_served(&lock_path, dir)
        } else {
            DirLock::acquire(&lock_path)
        }
    }

    /// Opens sled with the lock held; also says whether the database was created now.
    /// On failure the lock comes back, so the caller can act on the store while no one
    /// else can.
    pub(super) fn open_locked(
        dir: &Path,
        lock: DirLock,
    ) -> Result<(Store, bool), (StoreError, DirLock)> {
        let path = dir.join("db");
        // A new database starts at generation 0; forget the watermark of a
        // database that was removed on purpose.
        let fresh = !path.exists();
        if fresh {
            if let Err(source) = lock.set_watermark(0) {
                let path = dir.join("lock");
                return Err((StoreError::Io { path, source }, lock));
            }
        }
        let db = match open_db(&path) {
            Ok(db) => db,
            Err(e) => return Err((e, lock)),
        };
        let trees = (|| {
            Ok::<_, sled::Error>((
                db.open_tree("by_addr")?,
                db.open_tree("by_owner")?,
                db.open_tree("free")?,
                db.open_tree("meta")?,
            ))
        })();
        let (by_addr, by_owner, free, meta) = match trees {
            Ok(t) => t,
            Err(e) => return Err((e.into(), lock)),
        };
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
            if let Err(e) = store.check_not_rolled_back() {
                return Err((e, store.into_lock()));
            }
        }
        Ok((store, fresh))
    }

    /// Closes sled but keeps the directory lock.
    pub(super) fn into_lock(self) -> DirLock {
        let Store {
            db,
            by_addr,
            by_owner,
            free,
            meta,
            lock,
            ..
        } = self;
        drop((by_addr, by_owner, free, meta, db));
        lock
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
}

/// sled tuned for a short-lived process: no background flusher (every
/// mutation flushes before returning) and a small cache.
fn sled_config(path: &Path) -> sled::Config {
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
fn remove_incomplete_snapshots(path: &Path) -> Result<usize, StoreError> {
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
