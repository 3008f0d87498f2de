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

use crate::StoreError;

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
        // std opens with O_CLOEXEC, so a child process never inherits the lock.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|source| StoreError::Io {
                path: path.to_owned(),
                source,
            })?;
        loop {
            // SAFETY: flock only reads the descriptor, which `file` keeps open.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(DirLock { file });
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(StoreError::Lock {
                    path: path.to_owned(),
                    source: err,
                });
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
