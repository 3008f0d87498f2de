//! The blocking cross-process lock around the sled database.
//!
//! sled takes a non-blocking lock on its own file and fails at once when
//! another process holds it, so concurrent CNI invocations queue here
//! instead, on a separate file that sled never touches.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use crate::StoreError;

/// The file a store service holds an exclusive lock on for as long as it serves the
/// store (see [`crate::service`]).
pub(crate) const SERVED_FILE: &str = "served";

/// How often a process waiting for the store lock looks whether a store service
/// took the store meanwhile.
const SERVED_POLL: Duration = Duration::from_millis(50);

fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock only reads the descriptor, which `file` keeps open.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn open_rw(path: &Path) -> Result<File, StoreError> {
    // std opens with O_CLOEXEC, so a child process never inherits a lock.
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| StoreError::Io {
            path: path.to_owned(),
            source,
        })
}

/// Held by a store service while it serves the store in `dir`.
#[derive(Debug)]
pub(crate) struct ServedMark {
    _file: File,
}

impl ServedMark {
    pub(crate) fn take(dir: &Path) -> Result<ServedMark, StoreError> {
        let path = dir.join(SERVED_FILE);
        let file = open_rw(&path)?;
        flock(&file, libc::LOCK_EX).map_err(|source| StoreError::Lock { path, source })?;
        Ok(ServedMark { _file: file })
    }
}

/// Whether a store service holds the store in `dir` right now. A shared,
/// non-blocking probe, so concurrent probes never see each other.
pub(crate) fn is_served(dir: &Path) -> bool {
    let Ok(file) = File::open(dir.join(SERVED_FILE)) else {
        return false;
    };
    matches!(flock(&file, libc::LOCK_SH | libc::LOCK_NB),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// Holds `flock(LOCK_EX)` on the lock file until dropped (closing the file
/// releases the lock).
///
/// The file also holds the store's rollback watermark: the generation of the
/// last transaction known to be flushed (u64 BE; an empty file means 0).
#[derive(Debug)]
pub(crate) struct DirLock {
    file: File,
}

impl DirLock {
    pub(crate) fn acquire(path: &Path) -> Result<DirLock, StoreError> {
        let file = open_rw(path)?;
        flock(&file, libc::LOCK_EX).map_err(|source| StoreError::Lock {
            path: path.to_owned(),
            source,
        })?;
        Ok(DirLock { file })
    }

    /// Waits for the lock like [`DirLock::acquire`], but returns
    /// [`StoreError::Served`] as soon as a store service holds the store in
    /// `dir`: the service keeps the lock for as long as it runs.
    pub(crate) fn acquire_unless_served(path: &Path, dir: &Path) -> Result<DirLock, StoreError> {
        let file = open_rw(path)?;
        let lock_err = |source| StoreError::Lock {
            path: path.to_owned(),
            source,
        };
        match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => return Ok(DirLock { file }),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(lock_err(e)),
        }
        let served = || StoreError::Served {
            dir: dir.to_owned(),
        };
        if is_served(dir) {
            return Err(served());
        }
        // flock has no timeout: wait on another thread and look at the service
        // mark meanwhile. A thread left waiting drops the lock as soon as it gets
        // it (nobody receives it).
        let (tx, rx) = mpsc::sync_channel(1);
        std::thread::spawn(move || {
            let got = flock(&file, libc::LOCK_EX).map(|()| file);
            let _ = tx.send(got);
        });
        loop {
            match rx.recv_timeout(SERVED_POLL) {
                Ok(Ok(file)) => return Ok(DirLock { file }),
                Ok(Err(e)) => return Err(lock_err(e)),
                Err(mpsc::RecvTimeoutError::Timeout) if is_served(dir) => return Err(served()),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(lock_err(io::Error::other("the lock waiter thread died")))
                }
            }
        }
    }

    pub(crate) fn watermark(&self) -> io::Result<u64> {
        let mut buf = [0u8; 8];
        let n = self.file.read_at(&mut buf, 0)?;
        // Anything shorter was never written completely: no claim.
        Ok(if n == buf.len() {
            u64::from_be_bytes(buf)
        } else {
            0
        })
    }

    /// Not fsynced: losing this write only weakens the check, and it is
    /// written after the store's own flush, so it never runs ahead of data
    /// that reached the disk.
    pub(crate) fn set_watermark(&self, generation: u64) -> io::Result<()> {
        self.file.write_all_at(&generation.to_be_bytes(), 0)
    }
}
