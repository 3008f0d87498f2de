//! The address store as the plugin uses it: open for one critical section, errors mapped
//! to CNI codes.

use crate::cni::error::{CniError, INVALID_CONFIG, IO_FAILURE, NO_FREE_ADDRESS};
use crate::cni::Env;
use twill_conf::{PluginConf, PodRange};
use twill_ipam::{Owner, Range, Store, StoreError};

pub fn owner(env: &Env) -> Owner {
    Owner {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    }
}

pub fn ranges(pod_ranges: &[PodRange]) -> Vec<Range> {
    pod_ranges
        .iter()
        .map(|r| Range {
            subnet: r.subnet,
            gateway: r.gateway,
        })
        .collect()
}

/// Runs `f` with the store open (and its lock held), and closes it right after.
pub fn with_store<T>(
    conf: &PluginConf,
    f: impl FnOnce(&Store) -> Result<T, StoreError>,
) -> Result<T, CniError> {
    let dir = conf.store_dir();
    let store = Store::open(&dir).map_err(|e| map_err(e, conf))?;
    f(&store).map_err(|e| map_err(e, conf))
}

fn map_err(e: StoreError, conf: &PluginConf) -> CniError {
    let code = match &e {
        StoreError::Exhausted { .. } => NO_FREE_ADDRESS,
        StoreError::InvalidRange(_) => INVALID_CONFIG,
        _ => IO_FAILURE,
    };
    CniError::new(
        code,
        format!("address store {}: {e}", conf.store_dir().display()),
    )
}

/// sled 0.34 starts its seven I/O threads lazily, from the thread that first needs them,
/// and each new thread busy-waits (no yield) until all seven exist. On a 2-CPU node they
/// preempt the thread that is starting them, and opening the store takes 3–30 ms of
/// spinning instead of ~2 ms. Running the store thread SCHED_FIFO with reset-on-fork
/// keeps sled's threads at normal priority, unable to preempt it. Only with two CPUs or
/// more (on one CPU a real-time spinner could starve a lock holder), and best effort:
/// without CAP_SYS_NICE nothing changes.
pub fn shield_from_sled_startup_spin() {
    // SAFETY: plain syscalls on the calling thread with valid arguments.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0
            || libc::CPU_COUNT(&set) < 2
        {
            return;
        }
        let param = libc::sched_param { sched_priority: 1 };
        libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param);
    }
}
