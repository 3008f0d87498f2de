//! A store that is missing, unreadable or fails `verify` is moved aside (never deleted)
//! and rebuilt from the reservations the node's pod interfaces record, so losing it
//! never hands out an address a running pod holds.
//!
//! "Missing" and "a fresh node" look the same on disk; both are rebuilt from the
//! kernel. A fresh node has no pod interfaces, so its rebuild restores nothing and is
//! exactly a fresh store.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::warn;
use twill_conf::Attachment;

use super::trees::{Changes, T};
use super::Store;
use crate::codec::{encode_addrs, owner_key, Addr};
use crate::lock::DirLock;
use crate::recovery::{recover, PodPorts, Recovered};
use crate::StoreError;

/// What a rebuild did, for the caller to log and count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuilt {
    /// Why the store was rebuilt.
    pub why: String,
    /// Where the damaged database went (`None` when it was missing).
    pub moved_aside: Option<PathBuf>,
    /// Reservations restored from the pod interfaces.
    pub restored: usize,
    /// Pod interfaces whose address could not be restored, with why.
    pub unknown: Vec<(String, String)>,
}

impl Rebuilt {
    /// One line an operator can act on: why, where the damaged copy went, how many
    /// reservations came back, and each pod interface whose address could not.
    pub fn log(&self, dir: &Path) {
        let aside = self.moved_aside.as_ref().map_or_else(
            || "nothing (it was missing)".to_string(),
            |p| p.display().to_string(),
        );
        warn!(
            store = %dir.display(),
            why = %self.why,
            moved_aside = %aside,
            restored = self.restored,
            unknown = self.unknown.len(),
            "address store rebuilt from the node's pod interfaces"
        );
        for (link, why) in &self.unknown {
            warn!(link = %link, why = %why, "address store rebuild: this pod interface's address is unknown and may be handed out again");
        }
    }
}

impl Store {
    /// Like [`Store::open`], but a store that is missing, unreadable or inconsistent is
    /// rebuilt from `ports`; says what was rebuilt, if anything.
    pub fn open_or_rebuild(
        dir: &Path,
        ports: &dyn PodPorts,
    ) -> Result<(Store, Option<Rebuilt>), StoreError> {
        Self::open_rebuilding(dir, false, ports)
    }

    /// [`Store::open_unless_served`] that rebuilds like [`Store::open_or_rebuild`].
    pub fn open_unless_served_or_rebuild(
        dir: &Path,
        ports: &dyn PodPorts,
    ) -> Result<(Store, Option<Rebuilt>), StoreError> {
        Self::open_rebuilding(dir, true, ports)
    }

    fn open_rebuilding(
        dir: &Path,
        unless_served: bool,
        ports: &dyn PodPorts,
    ) -> Result<(Store, Option<Rebuilt>), StoreError> {
        let lock = Self::lock_dir(dir, unless_served)?;
        let (why, lock) = match Self::open_locked(dir, lock) {
            Ok((store, true)) => {
                let recovered = list(dir, "the store was missing", ports)?;
                if recovered == Recovered::default() {
                    return Ok((store, None));
                }
                let rebuilt = store.restore("the store was missing", None, recovered)?;
                return Ok((store, Some(rebuilt)));
            }
            Ok((store, false)) => match store.verify() {
                Ok(()) => return Ok((store, None)),
                Err(e) if is_damage(&e) => (e.to_string(), store.into_lock()),
                Err(e) => return Err(e),
            },
            Err((e, lock)) if is_damage(&e) => (e.to_string(), lock),
            Err((e, _)) => return Err(e),
        };
        // The kernel is read before anything moves: if it cannot be, the store stays.
        let recovered = list(dir, &why, ports)?;
        let aside = move_aside(&dir.join("db"))?;
        let store = reopen(dir, lock)?;
        let rebuilt = store.restore(&why, aside, recovered)?;
        Ok((store, Some(rebuilt)))
    }

    /// Writes `recovered` into this (new, empty) store in one transaction. The ranges
    /// stay unset: the next allocation sets them and builds the free intervals around
    /// what was restored.
    fn restore(
        &self,
        why: &str,
        moved_aside: Option<PathBuf>,
        recovered: Recovered,
    ) -> Result<Rebuilt, StoreError> {
        let serial = self.serialize();
        let mut by_owner: BTreeMap<Attachment, Vec<Addr>> = BTreeMap::new();
        for r in &recovered.reservations {
            by_owner
                .entry(r.owner.clone())
                .or_default()
                .push(Addr::from_ip(r.address));
        }
        let plan = |_: &Store| {
            let mut changes = Changes::default();
            for (owner, addrs) in &by_owner {
                let okey = owner_key(owner);
                for a in addrs {
                    changes.put(T::ByAddr, a.key(), okey.clone());
                }
                changes.put(T::ByOwner, okey, encode_addrs(addrs));
            }
            Ok((changes, ()))
        };
        if self.mutate(plan)?.1 {
            self.flush()?;
        }
        drop(serial);
        self.verify()?;
        Ok(Rebuilt {
            why: why.to_string(),
            moved_aside,
            restored: recovered.reservations.len(),
            unknown: recovered.unknown,
        })
    }
}

fn list(dir: &Path, why: &str, ports: &dyn PodPorts) -> Result<Recovered, StoreError> {
    let ports = ports.list().map_err(|reason| StoreError::Unrebuildable {
        path: dir.to_owned(),
        why: why.to_string(),
        reason,
    })?;
    Ok(recover(&ports))
}

fn reopen(dir: &Path, lock: DirLock) -> Result<Store, StoreError> {
    Store::open_locked(dir, lock)
        .map(|(store, _)| store)
        .map_err(|(e, _)| e)
}

/// Damage that a rebuild mends; anything else (a full disk, a permission) is left to the
/// operator, since a new store would fail the same way.
fn is_damage(e: &StoreError) -> bool {
    match e {
        StoreError::Corrupt { .. } | StoreError::Inconsistent(_) => true,
        StoreError::Db(sled::Error::Corruption { .. } | sled::Error::ReportableBug(_)) => true,
        StoreError::Io { source, .. } => matches!(
            source.kind(),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
        ),
        _ => false,
    }
}

/// Renames the database to `db.damaged-<unix time>` beside it; `None` when there is
/// nothing to move.
fn move_aside(db: &Path) -> Result<Option<PathBuf>, StoreError> {
    if !db.exists() {
        return Ok(None);
    }
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let base = db.with_file_name(format!("db.damaged-{secs}"));
    let mut target = base.clone();
    for n in 1.. {
        if !target.exists() {
            break;
        }
        target = PathBuf::from(format!("{}.{n}", base.display()));
    }
    std::fs::rename(db, &target).map_err(|source| StoreError::Io {
        path: db.to_owned(),
        source,
    })?;
    Ok(Some(target))
}
