//! A real container runtime calling the plugin: Debian's containerd 1.6 driven by `ctr`,
//! on a rootfs made of Debian's `busybox-static` (no image, no registry).
//!
//! - [`Containerd`]: a private daemon (own config with the CRI plugin disabled, own
//!   root, state and socket under a temp dir), waited for, killed on drop. It and `ctr`
//!   die with the test's thread (`PR_SET_PDEATHSIG`); what a killed test binary still
//!   leaves (the shims, which outlive containerd by design, with their containers) is
//!   swept by the next [`Containerd::start`] ([`sweep`]).
//! - [`CtrRun`]: one `ctr run --cni`, with the test's own CNI directories ([`CniDirs`])
//!   mounted where `ctr` looks for them, in a mount namespace of its own.
//! - [`BusyboxRootfs`]: a directory with `/bin/busybox` and symlinked applets.
//!
//! Where things run: containerd, its shims and runc live in the root namespace; they
//! never touch the network (runc unshares a fresh network namespace for the container,
//! holding only `lo`). The CNI calls are made by the `ctr` *client* process, so running
//! `ctr` with `ip netns exec <node>` makes that node the container's host: the plugin
//! creates the host end of the veth pair in the node, the pod end in
//! `CNI_NETNS=/proc/<task pid>/ns/net`.

mod cni_dirs;
mod ctr;
mod rootfs;
mod sweep;

pub use cni_dirs::{first_conf_file, CniDirs, CNI_BIN_DIR, CNI_CACHE_DIR, CNI_CONF_DIR};
pub use ctr::{CtrOutcome, CtrRun};
pub use rootfs::{BusyboxRootfs, APPLETS};

use crate::netns::next_id;
use crate::TempDir;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const CONTAINERD_BIN: &str = "/usr/bin/containerd";
pub const CTR_BIN: &str = "/usr/bin/ctr";
pub const SHIM_BIN: &str = "/usr/bin/containerd-shim-runc-v2";
pub const RUNC_BIN: &str = "/usr/sbin/runc";
pub const BUSYBOX_BIN: &str = "/bin/busybox";

/// How long [`Containerd::start`] waits for the daemon to answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);

static SWEEP: std::sync::Once = std::sync::Once::new();

/// Panics unless containerd, ctr, the runc shim, runc and a static busybox are
/// installed, naming the Debian package to install.
pub fn require_tools() {
    for (bin, package) in [
        (CONTAINERD_BIN, "containerd"),
        (CTR_BIN, "containerd"),
        (SHIM_BIN, "containerd"),
        (RUNC_BIN, "runc (a dependency of containerd)"),
        (BUSYBOX_BIN, "busybox-static"),
    ] {
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: install Debian's {package} (`apt-get install containerd busybox-static`)"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The daemon

/// A private containerd: config, root, state, socket and logs under one temp dir; the
/// ctr namespace `twill-test`. Killed (after its containers are removed) on drop.
pub struct Containerd {
    dir: TempDir,
    child: Option<Child>,
    namespace: String,
    /// Whether `/run/containerd` (where 1.6 puts shim sockets, whatever the config says)
    /// existed before: if not, it is removed again when empty.
    run_dir_existed: bool,
}

impl Containerd {
    /// Writes the config, starts the daemon and waits until `ctr version` gets an answer.
    pub fn start() -> Containerd {
        require_tools();
        SWEEP.call_once(sweep::sweep_dead_runs);
        let dir = TempDir::new("containerd");
        let sock = dir.path().join("containerd.sock");
        assert!(
            sock.as_os_str().len() + ".ttrpc".len() < 100,
            "{} is too long for a unix socket: set TMPDIR to a shorter directory",
            sock.display()
        );
        let d = dir.path().display();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#
        );
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).expect("cannot write the containerd config");
        let log = File::create(dir.path().join("containerd.log"))
            .expect("cannot create the containerd log");
        let run_dir_existed = Path::new("/run/containerd").exists();
        let mut cmd = Command::new(CONTAINERD_BIN);
        die_with_parent(&mut cmd);
        let child = cmd
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cannot clone a file handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {CONTAINERD_BIN}: {e}"));
        let mut c = Containerd {
            dir,
            child: Some(child),
            namespace: "twill-test".into(),
            run_dir_existed,
        };
        c.wait_answering();
        c
    }

    fn wait_answering(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let out = self.ctr(None).arg("version").output();
            if out.is_ok_and(|o| o.status.success()) {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "containerd exited with {status} while starting; log:\n{}",
                        self.log_tail(30)
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "containerd does not answer on {} after {START_TIMEOUT:?}; log:\n{}",
                self.address().display(),
                self.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's gRPC socket (`ctr --address`).
    pub fn address(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// The containerd namespace the containers are made in (`ctr -n`); `ctr` passes
    /// `CNI_CONTAINERID=<namespace>-<container id>`.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The CNI container ID `ctr` passes for container `id`.
    pub fn cni_container_id(&self, id: &str) -> String {
        format!("{}-{id}", self.namespace)
    }

    /// A scratch directory beside the daemon's, removed with it.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    fn log_tail(&self, n: usize) -> String {
        crate::cluster::tail(&self.log(), n)
    }

    /// `ctr --address <socket> -n <namespace>`, run inside network namespace `netns`
    /// (with `ip netns exec`) when given.
    pub fn ctr(&self, netns: Option<&str>) -> Command {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, CTR_BIN]);
                c
            }
            None => Command::new(CTR_BIN),
        };
        cmd.arg("--address")
            .arg(self.address())
            .args(["-n", &self.namespace]);
        cmd
    }

    /// `ctr run --rm --cni` of `argv` in container `id` on `rootfs`, with `ctr` inside
    /// `netns` (that node becomes the host), not detached (so `ctr` sends DEL after the
    /// task exits), seeing `cni`'s directories as the machine's CNI directories.
    /// `extra` goes before the rootfs (e.g. `--mount ...`). Runc's state and the I/O
    /// FIFOs stay under the daemon's temp dir, and no cgroup is made (`--cgroup ""`), so
    /// nothing is left on the machine. Started, not waited for.
    pub fn spawn_run(
        &self,
        netns: &str,
        cni: &CniDirs,
        rootfs: &Path,
        id: &str,
        extra: &[&str],
        argv: &[&str],
    ) -> CtrRun {
        let mut cmd = self.ctr(Some(netns));
        cmd.args(["run", "--rm", "--cni"])
            .arg("--fifo-dir")
            .arg(self.dir.path().join("fifo"))
            .arg("--runc-root")
            .arg(self.dir.path().join("runc"))
            .args(["--cgroup", ""])
            .args(extra)
            .arg("--rootfs")
            .arg(rootfs)
            .arg(id)
            .args(argv);
        die_with_parent(&mut cmd);
        cni.mounts()
            .apply(&mut cmd)
            .unwrap_or_else(|e| panic!("cannot give ctr the test's CNI directories: {e}"));
        CtrRun::spawn(cmd, format!("ctr run {id} {}", argv.join(" ")))
    }

    /// Removes every container of the namespace (killing its task first).
    pub fn remove_all_containers(&self) {
        let Ok(out) = self.ctr(None).args(["containers", "ls", "-q"]).output() else {
            return;
        };
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = self.ctr(None).args(["tasks", "rm", "-f", id]).output();
            let _ = self.ctr(None).args(["containers", "rm", id]).output();
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.remove_all_containers();
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if !self.run_dir_existed {
            sweep::remove_empty_run_dirs();
        }
    }
}

/// The child gets SIGKILL when the thread that started it ends (the test's thread, so
/// also when the test binary is killed outright).
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A container ID unique to this process, usable as a CNI container ID.
pub fn container_id(label: &str) -> String {
    format!("{label}-{}-{}", std::process::id(), next_id())
}
