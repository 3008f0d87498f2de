use std::io;
use std::path::PathBuf;

use ipnet::IpNet;

/// Everything that can go wrong in the address store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation on the store directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The store lock could not be taken (or sled's own lock stayed busy).
    #[error("cannot lock address store {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The on-disk store cannot be opened or holds records we cannot read.
    /// Nothing is deleted: the caller decides what to do.
    #[error("address store {} is corrupt: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },

    /// sled reported an error while the store was open.
    #[error("address store: {0}")]
    Db(#[from] sled::Error),

    /// Every usable address of the subnet is reserved.
    #[error("no free address in {subnet}: {in_use} of {usable} in use")]
    Exhausted {
        subnet: IpNet,
        in_use: u128,
        usable: u128,
    },

    /// The ranges passed to `allocate` cannot be served.
    #[error("invalid address range: {0}")]
    InvalidRange(String),

    /// The store is damaged and the node's pod interfaces could not be listed to rebuild
    /// it; the store was left where it is.
    #[error("address store {} is damaged ({why}) and cannot be rebuilt: {reason}", path.display())]
    Unrebuildable {
        path: PathBuf,
        why: String,
        reason: String,
    },

    /// `verify` found the indexes disagreeing.
    #[error("address store is inconsistent: {0}")]
    Inconsistent(String),

    /// A store service (twill-agent) holds the store, and its socket did not answer.
    #[error("address store {} is held by twill-agent, whose store socket did not answer; try again", dir.display())]
    Served { dir: PathBuf },

    /// The store service answered with an error.
    #[error("address store (served by twill-agent): {0}")]
    Service(String),

    /// The store kept changing under us; with the store lock held this
    /// should not happen.
    #[error("address store changed during the operation too many times")]
    Conflict,
}
