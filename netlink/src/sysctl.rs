//! `/proc/sys` access. Entries under `net/` belong to the network namespace of the thread
//! that opens them, so these run in the namespace where they should take effect.

use std::net::IpAddr;
use std::path::PathBuf;

fn path(key: &str) -> PathBuf {
    // Keys use "/" so that interface names with dots (twill.1) stay intact.
    PathBuf::from("/proc/sys").join(key)
}

/// Reads a sysctl such as `net/ipv4/ip_forward`.
pub fn read(key: &str) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(path(key))?.trim().to_string())
}

/// Writes `value` unless the sysctl already holds it (writes are not free and some
/// trigger work in the kernel).
pub fn ensure(key: &str, value: &str) -> std::io::Result<()> {
    if read(key)? == value {
        return Ok(());
    }
    std::fs::write(path(key), value)
}

/// An address family, as the kernel switches forwarding per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    fn forwarding_key(self) -> &'static str {
        match self {
            IpFamily::V4 => "net/ipv4/ip_forward",
            IpFamily::V6 => "net/ipv6/conf/all/forwarding",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot enable forwarding ({key}): {source}")]
pub struct ForwardingError {
    pub key: &'static str,
    #[source]
    pub source: std::io::Error,
}

/// Turns forwarding on in each of `families`, in order, trying every one (one family
/// failing says nothing of the others). Returns the failures; none when all are on.
#[must_use = "forwarding may have stayed off"]
pub fn enable_forwarding(families: impl IntoIterator<Item = IpFamily>) -> Vec<ForwardingError> {
    families
        .into_iter()
        .filter_map(|family| {
            let key = family.forwarding_key();
            ensure(key, "1")
                .err()
                .map(|source| ForwardingError { key, source })
        })
        .collect()
}
