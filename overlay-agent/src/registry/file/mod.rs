//! The file registry: one JSON file per node (`<dir>/<node>.json`, a [`VtepRecord`]) in a
//! directory shared by the agents of one machine. Meant for labs and tests, where every
//! "node" is a network namespace on the same host.
//!
//! Subnets are allocated under an exclusive `flock` on `<dir>/.lock`, so two agents
//! starting together never take the same one. Files are replaced atomically; changes
//! are seen through inotify, with a slow full rescan as a safety net. There are no
//! leases: a node leaves when its file is removed (`twill-agent uninstall`). The inotify
//! wrapper is in `inotify`.

mod inotify;
#[cfg(test)]
mod proptests;

use super::{Announcement, Malformed, Registry, RegistryError, Snapshot};
use crate::record::VtepRecord;
use crate::subnets;
use inotify::Inotify;
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use twill_conf::cluster::PodNetwork;

const RESCAN: Duration = Duration::from_secs(5);

pub struct FileRegistry {
    dir: PathBuf,
    networks: Vec<PodNetwork>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A node name that is safe as a file name.
fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

impl FileRegistry {
    pub fn new(dir: impl Into<PathBuf>, networks: Vec<PodNetwork>) -> Self {
        FileRegistry {
            dir: dir.into(),
            networks,
        }
    }

    fn record_path(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.json"))
    }

    /// Reads every record file; bad ones come back as [`Malformed`].
    pub fn list(&self) -> Result<Snapshot, RegistryError> {
        let mut snap = Snapshot {
            complete: true,
            ..Snapshot::default()
        };
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(snap),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            match read_record(&entry.path(), &name) {
                Entry::Record(r) => snap.records.push(*r),
                Entry::Malformed(m) => snap.malformed.push(m),
                Entry::Ignored => {}
            }
        }
        snap.records.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(snap)
    }
}

enum Entry {
    Record(Box<VtepRecord>),
    Malformed(Malformed),
    Ignored,
}

fn read_record(path: &Path, file_name: &str) -> Entry {
    let Some(stem) = file_name.strip_suffix(".json") else {
        return Entry::Ignored;
    };
    if file_name.starts_with('.') {
        return Entry::Ignored;
    }
    let malformed = |reason: String| {
        Entry::Malformed(Malformed {
            source: file_name.to_string(),
            reason,
        })
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        // Removed between listing and reading: the node left.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Entry::Ignored,
        Err(e) => return malformed(e.to_string()),
    };
    match VtepRecord::from_json(&bytes) {
        Ok(r) if r.node == stem => Entry::Record(Box::new(r)),
        Ok(r) => malformed(format!(
            "the file is named for {stem:?} but holds node {:?}",
            r.node
        )),
        Err(e) => malformed(e.to_string()),
    }
}

/// An exclusive flock on `<dir>/.lock`, released on drop.
struct DirLock {
    _fd: OwnedFd,
}

impl DirLock {
    fn take(dir: &Path) -> Result<Self, RegistryError> {
        let path = dir.join(".lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let fd = OwnedFd::from(f);
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err(&path)(std::io::Error::last_os_error()));
        }
        Ok(DirLock { _fd: fd })
    }
}

#[async_trait::async_trait]
impl Registry for FileRegistry {
    async fn join(&self, me: &Announcement) -> Result<Vec<IpNet>, RegistryError> {
        if !valid_node_name(&me.node) {
            return Err(RegistryError::Invalid(format!(
                "node name {:?} cannot name a registry file (letters, digits, '-', '.', '_')",
                me.node
            )));
        }
        let dir = self.dir.clone();
        let networks = self.networks.clone();
        let me = me.clone();
        let this = FileRegistry::new(dir.clone(), networks.clone());
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            let _lock = DirLock::take(&dir)?;
            let snap = this.list()?;
            let mine: Option<&VtepRecord> = snap.records.iter().find(|r| r.node == me.node);
            let taken: Vec<IpNet> = snap
                .records
                .iter()
                .filter(|r| r.node != me.node)
                .flat_map(|r| r.subnets.iter().copied())
                .collect();
            let mut subnets = Vec::new();
            for net in &networks {
                let preferred = mine.and_then(|r| {
                    r.subnets
                        .iter()
                        .copied()
                        .find(|s| s.addr().is_ipv4() == net.network.addr().is_ipv4())
                });
                let s = subnets::pick(net, &taken, preferred).ok_or(RegistryError::Exhausted {
                    network: net.network,
                    len: net.subnet_len,
                })?;
                subnets.push(s);
            }
            let record = me.record(subnets.clone());
            let body = serde_json::to_vec_pretty(&record)
                .map_err(|e| RegistryError::Invalid(e.to_string()))?;
            let path = this.record_path(&me.node);
            twill_conf::atomic::write_if_changed(&path, &body, 0o644).map_err(io_err(&path))?;
            Ok(subnets)
        })
        .await
        .map_err(|e| RegistryError::Unavailable(format!("registry task failed: {e}")))?
    }

    async fn keep_alive(&self) -> Result<(), RegistryError> {
        std::future::pending().await
    }

    async fn watch(&self, tx: watch::Sender<Snapshot>) -> Result<(), RegistryError> {
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let inotify = Inotify::watch_dir(&self.dir).map_err(io_err(&self.dir))?;
        let mut files: BTreeMap<String, (Stamp, Entry)> = BTreeMap::new();
        let mut sent = false;
        // Full listings at start, on the slow timer and after an inotify overflow;
        // otherwise only the files inotify named are read again, so a change costs
        // the same with 5 nodes as with 5,000.
        let mut wake = Wake::Full;
        loop {
            let changed = match &wake {
                Wake::Full => self.rescan(&mut files)? || !sent,
                Wake::Named(names) => self.reread(&mut files, names),
            };
            if changed {
                let snap = snapshot_of(&files);
                // Compared with what the channel holds: no second copy is kept.
                if *tx.borrow() != snap || !sent {
                    sent = true;
                    if tx.send(snap).is_err() {
                        return Ok(());
                    }
                }
            }
            wake = tokio::select! {
                r = inotify.wait() => match r.map_err(io_err(&self.dir))? {
                    Some(names) => Wake::Named(names),
                    None => Wake::Full,
                },
                _ = tokio::time::sleep(RESCAN) => Wake::Full,
                _ = tx.closed() => return Ok(()),
            };
        }
    }

    async fn leave(&self, node: &str) -> Result<(), RegistryError> {
        let path = self.record_path(node);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }
}

impl FileRegistry {
    /// Lists the directory and re-reads the files whose inode, mtime or size moved;
    /// returns whether anything changed.
    fn rescan(&self, files: &mut BTreeMap<String, (Stamp, Entry)>) -> Result<bool, RegistryError> {
        let mut changed = false;
        let mut seen = BTreeSet::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            use std::os::unix::fs::MetadataExt;
            let stamp = Stamp {
                ino: meta.ino(),
                mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                len: meta.len(),
            };
            seen.insert(name.clone());
            if files.get(&name).map(|(s, _)| s) == Some(&stamp) {
                continue;
            }
            files.insert(name.clone(), (stamp, read_record(&entry.path(), &name)));
            changed = true;
        }
        let before = files.len();
        files.retain(|name, _| seen.contains(name));
        Ok(changed || files.len() != before)
    }

    /// Reads again the record files inotify named (an in-place rewrite within one
    /// clock tick keeps inode, mtime and size, so names beat stamps here). Returns
    /// whether any of them was a record file.
    fn reread(
        &self,
        files: &mut BTreeMap<String, (Stamp, Entry)>,
        names: &BTreeSet<String>,
    ) -> bool {
        use std::os::unix::fs::MetadataExt;
        let mut changed = false;
        for name in names {
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            changed = true;
            let path = self.dir.join(name);
            match std::fs::metadata(&path) {
                Ok(meta) => {
                    let stamp = Stamp {
                        ino: meta.ino(),
                        mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                        len: meta.len(),
                    };
                    files.insert(name.clone(), (stamp, read_record(&path, name)));
                }
                Err(_) => {
                    files.remove(name);
                }
            }
        }
        changed
    }
}

enum Wake {
    Full,
    Named(BTreeSet<String>),
}

fn snapshot_of(files: &BTreeMap<String, (Stamp, Entry)>) -> Snapshot {
    let mut snap = Snapshot {
        complete: true,
        ..Snapshot::default()
    };
    for (_, entry) in files.values() {
        match entry {
            Entry::Record(r) => snap.records.push((**r).clone()),
            Entry::Malformed(m) => snap.malformed.push(m.clone()),
            Entry::Ignored => {}
        }
    }
    snap
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    mtime: SystemTime,
    len: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Mac;
    use crate::registry::fixtures::v4;

    fn ann(node: &str, last: u8) -> Announcement {
        Announcement {
            node: node.into(),
            public_ip: format!("192.168.0.{last}").parse().unwrap(),
            vtep_mac: Mac([0x0a, 0, 0, 0, 0, last]),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_joins_get_distinct_subnets_and_restarts_keep_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let mut tasks = Vec::new();
        for i in 1..=12u8 {
            let reg = FileRegistry::new(dir.path(), v4());
            tasks.push(tokio::spawn(async move {
                reg.join(&ann(&format!("n{i}"), i)).await.unwrap()
            }));
        }
        let mut got = Vec::new();
        for t in tasks {
            got.extend(t.await.unwrap());
        }
        let mut uniq = got.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), 12, "{got:?}");
        let reg = FileRegistry::new(dir.path(), v4());
        let before = reg.list().unwrap();
        let n5 = before.records.iter().find(|r| r.node == "n5").unwrap();
        assert_eq!(reg.join(&ann("n5", 5)).await.unwrap(), n5.subnets);
    }

    #[tokio::test]
    async fn exhaustion_names_the_network() {
        let dir = tempfile::tempdir().unwrap();
        let small = vec![PodNetwork {
            network: "10.9.0.0/23".parse().unwrap(),
            subnet_len: 24,
        }];
        let reg = FileRegistry::new(dir.path(), small);
        reg.join(&ann("a", 1)).await.unwrap();
        let e = reg.join(&ann("b", 2)).await.unwrap_err();
        assert!(e.to_string().contains("10.9.0.0/23"), "{e}");
        assert!(reg.join(&ann("../x", 3)).await.is_err());
    }

    async fn wait_for(rx: &watch::Receiver<Snapshot>, f: impl Fn(&Snapshot) -> bool) {
        let mut rx = rx.clone();
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if f(&rx.borrow_and_update()) {
                    return;
                }
                rx.changed().await.unwrap();
            }
        })
        .await
        .expect("condition within 5 s")
    }

    #[tokio::test]
    async fn watch_sees_joins_leaves_and_malformed_files() {
        let dir = tempfile::tempdir().unwrap();
        let reg = std::sync::Arc::new(FileRegistry::new(dir.path(), v4()));
        let (tx, rx) = watch::channel(Snapshot::default());
        let w = reg.clone();
        let task = tokio::spawn(async move { w.watch(tx).await });
        reg.join(&ann("a", 1)).await.unwrap();
        wait_for(&rx, |s: &Snapshot| s.records.len() == 1).await;
        std::fs::write(dir.path().join("junk.json"), b"{not json").unwrap();
        std::fs::write(
            dir.path().join("liar.json"),
            serde_json::to_vec(&ann("other", 9).record(vec!["10.244.9.0/24".parse().unwrap()]))
                .unwrap(),
        )
        .unwrap();
        wait_for(&rx, |s: &Snapshot| {
            s.malformed.len() == 2 && s.records.len() == 1
        })
        .await;
        reg.leave("a").await.unwrap();
        wait_for(&rx, |s: &Snapshot| s.records.is_empty()).await;
        drop(rx);
        task.abort();
    }
}
