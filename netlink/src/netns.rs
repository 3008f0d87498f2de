//! Network namespaces by file descriptor.
//!
//! `setns` changes only the calling thread, so work in another namespace runs on a
//! short-lived thread of its own; the calling thread never leaves its namespace.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

/// `NS_GET_NSTYPE` from linux/nsfs.h: returns the CLONE_NEW* type of a namespace fd.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a network namespace")]
    NotNetns { path: PathBuf },
    #[error("cannot enter network namespace {path}: {source}")]
    Enter {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the thread working in network namespace {path} panicked")]
    Thread { path: PathBuf },
    #[error("cannot return from network namespace {path}: {source}")]
    Return {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl NetnsError {
    /// True when the namespace does not exist (any more): a DEL can treat that as done.
    pub fn is_gone(&self) -> bool {
        matches!(self, NetnsError::Open { source, .. }
            if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// An open handle on a network namespace.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Opens `path` (a bind mount such as `/run/netns/x` or `/proc/<pid>/ns/net`) and checks
    /// that it is a network namespace, not just any file.
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: ioctl on a valid fd with no argument; a non-nsfs fd gives ENOTTY.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if kind != libc::CLONE_NEWNET {
            return Err(NetnsError::NotNetns {
                path: path.to_path_buf(),
            });
        }
        Ok(NetNs {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<Self, NetnsError> {
        Self::open(Path::new("/proc/thread-self/ns/net"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Runs `f` on the calling thread inside this namespace, then returns the thread
    /// to the namespace it was in. Saves starting a thread; for single-threaded
    /// callers such as the plugin. If the way back fails, the thread stays in this
    /// namespace and the caller gets [`NetnsError::Return`].
    pub fn run_here<T>(&self, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
        let home = Self::current()?;
        // SAFETY: setns on valid namespace fds; affects only this thread.
        if unsafe { libc::setns(self.fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(NetnsError::Enter {
                path: self.path.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
        let out = f();
        // SAFETY: as above.
        if unsafe { libc::setns(home.fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(NetnsError::Return {
                path: self.path.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(out)
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result.
    pub fn run<T, F>(&self, f: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on a valid namespace fd; affects only this thread.
                if unsafe { libc::setns(self.fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(NetnsError::Enter {
                        path: self.path.clone(),
                        source: std::io::Error::last_os_error(),
                    });
                }
                Ok(f())
            })
            .join()
            .map_err(|_| NetnsError::Thread {
                path: self.path.clone(),
            })?
        })
    }
}
