//! Moving the benchmark's (single, main) thread between network namespaces with
//! `setns(2)`, so that plugin processes spawned from it start inside a node namespace
//! without `ip netns exec` in between: the timed window then holds the plugin process
//! and nothing else.
//!
//! Only namespaces the benchmark created are ever entered; the thread's own namespace
//! is restored when the [`ThreadNetns`] guard drops, also on error.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// An open handle on a network namespace.
pub struct NsHandle {
    file: File,
    path: String,
}

impl NsHandle {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path)
            .with_context(|| format!("cannot open network namespace {}", path.display()))?;
        Ok(NsHandle {
            file,
            path: path.display().to_string(),
        })
    }
}

/// The calling thread's network namespace at creation; restored on drop.
pub struct ThreadNetns {
    home: NsHandle,
}

impl ThreadNetns {
    pub fn new() -> Result<Self> {
        // `thread-self`, not `self`: setns changes one thread, and so must the restore.
        Ok(ThreadNetns {
            home: NsHandle::open(Path::new("/proc/thread-self/ns/net"))?,
        })
    }

    /// Moves the calling thread into `ns`; children spawned afterwards start there.
    pub fn enter(&self, ns: &NsHandle) -> Result<()> {
        setns(ns)
    }
}

impl Drop for ThreadNetns {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.home) {
            eprintln!("cni-bench: cannot return to the original network namespace: {e:#}");
        }
    }
}

fn setns(ns: &NsHandle) -> Result<()> {
    // SAFETY: setns only reads the descriptor, which `ns.file` keeps open; CLONE_NEWNET
    // makes the kernel refuse any descriptor that is not a network namespace.
    let rc = unsafe { libc::setns(ns.file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!(
            "cannot enter network namespace {}: {}",
            ns.path,
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
