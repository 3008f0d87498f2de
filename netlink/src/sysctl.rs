//! `/proc/sys` access. Entries under `net/` belong to the network namespace of the thread
//! that opens them, so these run in the namespace where they should take effect.

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
