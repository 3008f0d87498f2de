//! The parts of the `twill-agent` binary that are not the daemon's start.

pub mod logging;
pub mod uninstall;
