//! A minimal inotify watch on one directory: what the file registry needs to see its
//! directory change, without a crate for it.

use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use tokio::io::unix::AsyncFd;

/// A minimal inotify watch on one directory.
pub(super) struct Inotify {
    fd: AsyncFd<OwnedFd>,
}

impl Inotify {
    pub(super) fn watch_dir(dir: &Path) -> std::io::Result<Self> {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: plain syscalls; the descriptor is owned right away.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let mask = libc::IN_CREATE
            | libc::IN_CLOSE_WRITE
            | libc::IN_MOVED_TO
            | libc::IN_MOVED_FROM
            | libc::IN_DELETE
            | libc::IN_ATTRIB;
        if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is an open inotify descriptor that the AsyncFd owns until drop.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?;
        Ok(Inotify { fd })
    }

    /// Waits for at least one event, drains everything queued, and returns the names
    /// of the files the events were about; `None` when the kernel's queue overflowed
    /// and events were lost (the caller lists the directory).
    pub(super) async fn wait(&self) -> std::io::Result<Option<BTreeSet<String>>> {
        let mut names = BTreeSet::new();
        loop {
            let mut guard = self.fd.readable().await?;
            let mut buf = [0u8; 16384];
            let mut got = false;
            let mut overflow = false;
            loop {
                // SAFETY: reading into a buffer we own.
                let n = unsafe {
                    libc::read(
                        self.fd.get_ref().as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                    )
                };
                if n > 0 {
                    got = true;
                    overflow |= parse_events(&buf[..n as usize], &mut names);
                    continue;
                }
                let err = std::io::Error::last_os_error();
                if n < 0 && err.kind() == std::io::ErrorKind::WouldBlock {
                    guard.clear_ready();
                    break;
                }
                if n < 0 && err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
            if got {
                return Ok((!overflow).then_some(names));
            }
        }
    }
}

/// Names out of a buffer of `struct inotify_event { int wd; u32 mask, cookie, len; char name[len]; }`;
/// true when the buffer reports a queue overflow.
fn parse_events(mut buf: &[u8], names: &mut BTreeSet<String>) -> bool {
    const HEADER: usize = 16;
    let mut overflow = false;
    while buf.len() >= HEADER {
        let mask = u32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
        overflow |= mask & libc::IN_Q_OVERFLOW != 0;
        let len = u32::from_ne_bytes([buf[12], buf[13], buf[14], buf[15]]) as usize;
        let Some(name) = buf.get(HEADER..HEADER + len) else {
            return overflow;
        };
        let name = name.split(|b| *b == 0).next().unwrap_or_default();
        if !name.is_empty() {
            names.insert(String::from_utf8_lossy(name).into_owned());
        }
        buf = &buf[(HEADER + len).min(buf.len())..];
    }
    overflow
}
