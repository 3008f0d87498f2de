//! The one error type of the crate's rtnetlink operations.

use crate::netns::NetnsError;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(std::io::Error),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{0}")]
    InvalidRoute(String),
    #[error("{op}: {source}")]
    Request {
        op: String,
        source: rtnetlink::Error,
    },
}

impl NetlinkError {
    /// The errno the kernel answered with, if it answered with one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Request {
                source: rtnetlink::Error::NetlinkError(m),
                ..
            } => Some(m.raw_code().abs()),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENODEV | libc::ENOENT | libc::ESRCH | libc::EADDRNOTAVAIL)
        )
    }

    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// The kernel has no driver for the link kind asked for (`Unknown device type`).
    pub fn is_unsupported(&self) -> bool {
        self.errno() == Some(libc::EOPNOTSUPP)
    }

    /// A request the kernel accepted whose outcome is not what was asked for (a link
    /// gone right after its creation, say).
    pub(crate) fn failed(op: String) -> Self {
        NetlinkError::Request {
            op,
            source: rtnetlink::Error::RequestFailed,
        }
    }
}

/// The result of the crate's rtnetlink operations.
pub type Result<T, E = NetlinkError> = std::result::Result<T, E>;

/// Names the operation a failed request was part of.
pub(crate) trait Context<T> {
    fn op(self, op: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for Result<T, rtnetlink::Error> {
    fn op(self, op: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| NetlinkError::Request { op: op(), source })
    }
}

/// The answer, or `None` when the kernel said the object does not exist: for lookups,
/// and for deletions that count "already gone" as done.
pub(crate) fn found<T>(res: Result<T>) -> Result<Option<T>> {
    match res {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}
