//! What a killed test run left of its containerd: shims (they outlive containerd by
//! design) with their containers, the daemon and `ctr` themselves, and the shims'
//! sockets under `/run/containerd`.

use crate::netns::left_by_dead_run;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Kills what a test process that died without cleaning up left running: the shims of
/// its containers (they outlive containerd by design) with their containers, and its
/// containerd and `ctr` if still there. Found only by the dead run's own paths: an
/// argument under `<temp dir>/twt<pid>-<n>-containerd/` whose `<pid>` is gone.
pub(super) fn sweep_dead_runs() {
    let tmp = std::env::temp_dir();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    let mut leftovers: Vec<(i32, Vec<String>)> = Vec::new();
    let mut parents: Vec<(i32, i32)> = Vec::new();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if let Some(ppid) = std::fs::read_to_string(p.path().join("stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
            })
        {
            parents.push((pid, ppid));
        }
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let dead_run = cmdline.split(|b| *b == 0).any(|arg| {
            let arg = String::from_utf8_lossy(arg);
            Path::new(arg.as_ref())
                .strip_prefix(&tmp)
                .ok()
                .and_then(|r| r.components().next())
                .and_then(|d| d.as_os_str().to_str())
                .is_some_and(|d| d.ends_with("-containerd") && left_by_dead_run(d))
        });
        if dead_run {
            let argv = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            leftovers.push((pid, argv));
        }
    }
    let found = !leftovers.is_empty();
    for (pid, argv) in leftovers {
        if let Some(socket) = shim_socket(&argv) {
            let _ = std::fs::remove_file(socket);
        }
        // A shim's children are its containers' init processes.
        for (child, _) in parents.iter().filter(|(_, pp)| *pp == pid) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(*child, libc::SIGKILL) };
        }
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    if found {
        // The dead run made these (its drop would have removed them); only when empty.
        remove_empty_run_dirs();
    }
}

/// The socket containerd 1.6 gives the shim whose argv this is:
/// `/run/containerd/s/<sha256 of "<address>/<namespace>/<id>">` (a killed shim leaves it).
fn shim_socket(argv: &[String]) -> Option<PathBuf> {
    if !argv.first()?.ends_with("containerd-shim-runc-v2") {
        return None;
    }
    let flag = |name: &str| {
        let i = argv.iter().position(|a| a == name)?;
        argv.get(i + 1).cloned()
    };
    let key = format!(
        "{}/{}/{}",
        flag("-address")?,
        flag("-namespace")?,
        flag("-id")?
    );
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(key.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    let hex = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()?
        .to_string();
    Some(Path::new("/run/containerd/s").join(hex))
}

/// Removes `/run/containerd` (shim sockets, runc's default root) if nothing is in it.
pub(super) fn remove_empty_run_dirs() {
    for d in [
        "/run/containerd/s",
        "/run/containerd/runc",
        "/run/containerd",
    ] {
        let _ = std::fs::remove_dir(d);
    }
}
