//! A real container runtime calling the plugin: Debian's containerd 1.6 driven by `ctr`,
//! on a rootfs made of Debian's `busybox-static` (no image, no registry).
//!
//! - [`Containerd`]: a private daemon (own config with the CRI plugin disabled, own
//!   root, state and socket under a temp dir), waited for, killed on drop. It and `ctr`
//!   die with the test's thread (`PR_SET_PDEATHSIG`); what a killed test binary still
//!   leaves (the shims, which outlive containerd by design, with their containers) is
//!   swept by the next [`Containerd::start`].
//! - [`BusyboxRootfs`]: a directory with `/bin/busybox` and symlinked applets.
//! - [`CniDirsGuard`]: `ctr run --cni` reads the machine's `/etc/cni/net.d` (only its
//!   first file) and `/opt/cni/bin`, and libcni caches results under `/var/lib/cni`.
//!   The guard serializes every test that touches them (a `flock`), snapshots them, and
//!   puts back exactly what it found when dropped, also when the test panics. What it
//!   installs itself is journalled in `/run`, so a run that was killed outright is undone
//!   by the next guard.
//!
//! Where things run: containerd, its shims and runc live in the root namespace; they
//! never touch the network (runc unshares a fresh network namespace for the container,
//! holding only `lo`). The CNI calls are made by the `ctr` *client* process, so running
//! `ctr` with `ip netns exec <node>` makes that node the container's host: the plugin
//! creates the host end of the veth pair in the node, the pod end in
//! `CNI_NETNS=/proc/<task pid>/ns/net`.

use crate::netns::next_id;
use crate::TempDir;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const CONTAINERD_BIN: &str = "/usr/bin/containerd";
pub const CTR_BIN: &str = "/usr/bin/ctr";
pub const SHIM_BIN: &str = "/usr/bin/containerd-shim-runc-v2";
pub const RUNC_BIN: &str = "/usr/sbin/runc";
pub const BUSYBOX_BIN: &str = "/bin/busybox";

/// The CNI config dir `ctr` reads (only its first `.conf`/`.conflist`/`.json`, sorted).
pub const CNI_CONF_DIR: &str = "/etc/cni/net.d";
/// The plugin dir `ctr` searches first (then `/usr/lib/cni` on Debian).
pub const CNI_BIN_DIR: &str = "/opt/cni/bin";
/// libcni's cache (`results/<network>-<container id>-<ifname>`), written by `ctr`.
pub const CNI_CACHE_DIR: &str = "/var/lib/cni";
/// Serializes every test (in every test binary) that touches the dirs above.
pub const CNI_DIRS_LOCK: &str = "/run/twill-test-cni-dirs.lock";
/// What a guard installed, while it is held; left behind only by a killed run.
const JOURNAL: &str = "/run/twill-test-cni-dirs.journal";
/// Copies of files a guard replaced, while it is held.
const BACKUP_DIR: &str = "/run/twill-test-cni-dirs.backup";

/// How long [`Containerd::start`] waits for the daemon to answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The applets [`BusyboxRootfs::new`] links.
pub const APPLETS: &[&str] = &[
    "sh", "ash", "ping", "sleep", "ip", "cat", "echo", "ls", "readlink", "mv", "hostname",
    "ifconfig", "route", "true", "false", "test", "[", "mkfifo", "stat", "grep",
];

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
        SWEEP.call_once(sweep_dead_runs);
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
    /// task exits). `extra` goes before the rootfs (e.g. `--mount ...`). Runc's state
    /// and the I/O FIFOs stay under the daemon's temp dir, and no cgroup is made
    /// (`--cgroup ""`), so nothing is left on the machine. Started, not waited for.
    pub fn spawn_run(
        &self,
        netns: &str,
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
            remove_empty_run_dirs();
        }
    }
}

/// Removes `/run/containerd` (shim sockets, runc's default root) if nothing is in it.
fn remove_empty_run_dirs() {
    for d in [
        "/run/containerd/s",
        "/run/containerd/runc",
        "/run/containerd",
    ] {
        let _ = std::fs::remove_dir(d);
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

static SWEEP: std::sync::Once = std::sync::Once::new();

/// Kills what a test process that died without cleaning up left running: the shims of
/// its containers (they outlive containerd by design) with their containers, and its
/// containerd and `ctr` if still there. Found only by the dead run's own paths: an
/// argument under `<temp dir>/twt<pid>-<n>-containerd/` whose `<pid>` is gone.
fn sweep_dead_runs() {
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
            let Some(rest) = Path::new(arg.as_ref())
                .strip_prefix(&tmp)
                .ok()
                .and_then(|r| r.to_str())
                .and_then(|r| r.strip_prefix("twt"))
            else {
                return false;
            };
            let Some((owner, dir)) = rest.split_once('-') else {
                return false;
            };
            let Ok(owner) = owner.parse::<u32>() else {
                return false;
            };
            dir.split('/')
                .next()
                .is_some_and(|d| d.ends_with("-containerd"))
                && owner != std::process::id()
                && !Path::new(&format!("/proc/{owner}")).exists()
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

/// A running `ctr run`: its output is collected in the background.
pub struct CtrRun {
    what: String,
    child: Child,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

/// How a `ctr run` ended.
#[derive(Debug)]
pub struct CtrOutcome {
    /// None when it was killed for running too long.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CtrOutcome {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

impl CtrRun {
    fn spawn(mut cmd: Command, what: String) -> CtrRun {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{what}`: {e}"));
        let stdout = Some(read_all(child.stdout.take().expect("piped stdout")));
        let stderr = Some(read_all(child.stderr.take().expect("piped stderr")));
        CtrRun {
            what,
            child,
            stdout,
            stderr,
        }
    }

    /// Whether `ctr` is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for `ctr` to exit; kills it after that.
    pub fn wait(mut self, timeout: Duration) -> CtrOutcome {
        let start = Instant::now();
        let mut status = None;
        while start.elapsed() < timeout {
            if let Ok(Some(s)) = self.child.try_wait() {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if status.is_none() {
            eprintln!("`{}` still runs after {timeout:?}: killing it", self.what);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let join = |h: Option<std::thread::JoinHandle<String>>| {
            h.and_then(|h| h.join().ok()).unwrap_or_default()
        };
        CtrOutcome {
            status,
            stdout: join(self.stdout.take()),
            stderr: join(self.stderr.take()),
            elapsed: start.elapsed(),
        }
    }
}

impl Drop for CtrRun {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads `r` to its end on a thread of its own.
fn read_all(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = r.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    })
}

// ---------------------------------------------------------------------------------------
// The rootfs

/// A container root filesystem: Debian's static busybox as `/bin/busybox`, applets as
/// symlinks to it, and the empty directories runc mounts on. Removed on drop.
pub struct BusyboxRootfs {
    dir: TempDir,
}

impl BusyboxRootfs {
    /// Builds a rootfs with [`APPLETS`]; panics unless the busybox runs in it (a
    /// dynamically linked one, from Debian's `busybox` package, would not).
    pub fn new() -> BusyboxRootfs {
        Self::with_applets(APPLETS)
    }

    pub fn with_applets(applets: &[&str]) -> BusyboxRootfs {
        require_tools();
        let dir = TempDir::new("rootfs");
        let root = dir.path();
        for d in ["bin", "proc", "sys", "dev", "etc", "tmp", "run"] {
            std::fs::create_dir_all(root.join(d)).expect("cannot create a rootfs dir");
        }
        std::fs::copy(BUSYBOX_BIN, root.join("bin/busybox"))
            .unwrap_or_else(|e| panic!("cannot copy {BUSYBOX_BIN}: {e}"));
        for a in applets {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(a))
                .unwrap_or_else(|e| panic!("cannot link applet {a}: {e}"));
        }
        std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
        let out = Command::new("chroot")
            .arg(root)
            .args(["/bin/busybox", "true"])
            .output()
            .expect("cannot run chroot");
        assert!(
            out.status.success(),
            "{BUSYBOX_BIN} does not run inside a bare rootfs ({}): install Debian's \
             busybox-static, whose busybox is statically linked",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        BusyboxRootfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for BusyboxRootfs {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------------------------------
// The machine's CNI dirs

/// One file system entry as found: enough to put it back byte for byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    File {
        bytes: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
        /// Seconds and nanoseconds.
        mtime: (i64, i64),
    },
    Symlink {
        target: PathBuf,
    },
    Dir {
        mode: u32,
        uid: u32,
        gid: u32,
        mtime: (i64, i64),
        children: BTreeMap<OsString, Entry>,
    },
    /// A socket, FIFO or device: never read (a FIFO would block), kept as it is; the
    /// guard cannot recreate one that went away.
    Special {
        mode: u32,
    },
}

impl Entry {
    /// Reads `path` (not following a final symlink); None when it does not exist.
    pub fn read(path: &Path) -> Option<Entry> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        let mode = meta.mode() & 0o7777;
        let mtime = (meta.mtime(), meta.mtime_nsec());
        let ft = meta.file_type();
        Some(if ft.is_symlink() {
            Entry::Symlink {
                target: std::fs::read_link(path)
                    .unwrap_or_else(|e| panic!("cannot read link {}: {e}", path.display())),
            }
        } else if ft.is_dir() {
            let mut children = BTreeMap::new();
            let entries = std::fs::read_dir(path)
                .unwrap_or_else(|e| panic!("cannot list {}: {e}", path.display()));
            for e in entries.flatten() {
                if let Some(child) = Entry::read(&e.path()) {
                    children.insert(e.file_name(), child);
                }
            }
            Entry::Dir {
                mode,
                uid: meta.uid(),
                gid: meta.gid(),
                mtime,
                children,
            }
        } else if !ft.is_file() {
            Entry::Special { mode: meta.mode() }
        } else {
            Entry::File {
                bytes: std::fs::read(path)
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display())),
                mode,
                uid: meta.uid(),
                gid: meta.gid(),
                mtime,
            }
        })
    }

    /// Appends `[relative path, is dir, mtime s, mtime ns]` of this entry (at `rel`, ""
    /// for the root) and of everything under it.
    fn list(&self, rel: &Path, out: &mut Vec<Value>) {
        let (is_dir, mtime) = match self {
            Entry::Dir { mtime, .. } => (true, *mtime),
            Entry::File { mtime, .. } => (false, *mtime),
            _ => (false, (0, 0)),
        };
        out.push(json!([rel, is_dir, mtime.0, mtime.1]));
        if let Entry::Dir { children, .. } = self {
            for (name, child) in children {
                child.list(&rel.join(name), out);
            }
        }
    }

    /// Makes `path` equal to `self`: removes what is not in it, rewrites what differs
    /// (and puts its mtime back), leaves alone what is equal.
    fn restore(&self, path: &Path, errors: &mut Vec<String>) {
        let now = Entry::read(path);
        match (self, &now) {
            (
                Entry::Dir {
                    mode,
                    uid,
                    gid,
                    mtime,
                    children,
                },
                Some(Entry::Dir {
                    mode: now_mode,
                    uid: now_uid,
                    gid: now_gid,
                    children: now_children,
                    ..
                }),
            ) => {
                if (uid, gid) != (now_uid, now_gid) {
                    if let Err(e) = std::os::unix::fs::lchown(path, Some(*uid), Some(*gid)) {
                        note(errors, "cannot chown", path, e);
                    }
                }
                if mode != now_mode {
                    if let Err(e) =
                        std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode))
                    {
                        note(errors, "cannot chmod", path, e);
                    }
                }
                for name in now_children.keys() {
                    if !children.contains_key(name) {
                        remove_any(&path.join(name), errors);
                    }
                }
                for (name, child) in children {
                    child.restore(&path.join(name), errors);
                }
                // Last: adding and removing children changed it.
                if let Err(e) = set_mtime(path, *mtime) {
                    note(errors, "cannot set the mtime of", path, e);
                }
            }
            (Entry::Dir { .. }, _) => {
                if now.is_some() {
                    remove_any(path, errors);
                }
                if let Err(e) = std::fs::create_dir(path) {
                    note(errors, "cannot create", path, e);
                    return;
                }
                self.restore(path, errors);
            }
            (_, Some(n)) if n == self => {}
            (Entry::Special { .. }, _) => {
                errors.push(format!(
                    "{} (a socket, FIFO or device) changed or went away",
                    path.display()
                ));
            }
            (Entry::Symlink { target }, _) => {
                if now.is_some() {
                    remove_any(path, errors);
                }
                if let Err(e) = std::os::unix::fs::symlink(target, path) {
                    note(errors, "cannot create the symlink", path, e);
                }
            }
            (
                Entry::File {
                    bytes,
                    mode,
                    uid,
                    gid,
                    mtime,
                },
                _,
            ) => {
                if matches!(now, Some(Entry::Dir { .. })) {
                    remove_any(path, errors);
                }
                if let Err(e) = write_atomic(path, bytes, *mode, Some((*uid, *gid)))
                    .and_then(|()| set_mtime(path, *mtime))
                {
                    note(errors, "cannot write", path, e);
                }
            }
        }
    }
}

/// Sets the mtime of `path` (not following a symlink); the atime is left alone.
fn set_mtime(path: &Path, (sec, nsec): (i64, i64)) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: sec as libc::time_t,
            tv_nsec: nsec as libc::c_long,
        },
    ];
    // SAFETY: a valid C string and two timespecs, as utimensat expects.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn note(errors: &mut Vec<String>, what: &str, path: &Path, e: std::io::Error) {
    errors.push(format!("{what} {}: {e}", path.display()));
}

fn remove_any(path: &Path, errors: &mut Vec<String>) {
    let r = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => Ok(()),
    };
    if let Err(e) = r {
        errors.push(format!("cannot remove {}: {e}", path.display()));
    }
}

/// Writes `bytes` to a temp file beside `path`, sets its mode (and owner), renames it
/// over `path`: a runtime never sees half a file nor "text file busy".
fn write_atomic(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.twill-test-{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::lchown(&tmp, Some(uid), Some(gid))?;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The state of one guarded directory.
#[derive(Clone, Debug, PartialEq, Eq)]
enum DirState {
    /// The directory did not exist; `top` is its highest missing ancestor (e.g.
    /// `/etc/cni` for `/etc/cni/net.d` on a machine without `/etc/cni`).
    Absent {
        top: PathBuf,
    },
    Present(Entry),
}

impl DirState {
    fn read(dir: &Path) -> DirState {
        if let Some(entry) = Entry::read(dir) {
            return DirState::Present(entry);
        }
        let mut top = dir.to_path_buf();
        while let Some(parent) = top.parent() {
            if std::fs::symlink_metadata(parent).is_ok() {
                break;
            }
            top = parent.to_path_buf();
        }
        DirState::Absent { top }
    }
}

/// Holds the machine's CNI dirs (`/etc/cni/net.d`, `/opt/cni/bin`, `/var/lib/cni`) for
/// one test: exclusive across processes, and put back exactly as found on drop.
pub struct CniDirsGuard {
    dirs: Vec<(PathBuf, DirState)>,
    journal_path: PathBuf,
    backup_dir: PathBuf,
    journal: File,
    backups: usize,
    restored: bool,
    // Dropped last: the lock is held until everything is back.
    _lock: File,
}

impl CniDirsGuard {
    /// Takes the lock (waiting for any other holder), undoes what a killed holder left,
    /// and snapshots the dirs.
    pub fn acquire() -> CniDirsGuard {
        Self::acquire_at(
            &[
                Path::new(CNI_CONF_DIR),
                Path::new(CNI_BIN_DIR),
                Path::new(CNI_CACHE_DIR),
            ],
            Path::new(CNI_DIRS_LOCK),
            Path::new(JOURNAL),
            Path::new(BACKUP_DIR),
        )
    }

    /// [`CniDirsGuard::acquire`] for other dirs, with its own lock file, journal and
    /// backup dir (for testing the guard itself).
    pub fn acquire_at(
        dirs: &[&Path],
        lock_path: &Path,
        journal_path: &Path,
        backup_dir: &Path,
    ) -> CniDirsGuard {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(lock_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", lock_path.display()));
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            assert!(
                e.kind() == std::io::ErrorKind::Interrupted,
                "cannot lock {}: {e}",
                lock_path.display()
            );
        }
        recover_journal(journal_path, backup_dir);
        let dirs: Vec<(PathBuf, DirState)> = dirs
            .iter()
            .map(|d| (d.to_path_buf(), DirState::read(d)))
            .collect();
        let mut journal = File::create(journal_path).unwrap_or_else(|e| {
            panic!("cannot create the journal {}: {e}", journal_path.display())
        });
        for (dir, state) in &dirs {
            match state {
                DirState::Absent { top } => journal_line(&mut journal, &json!({"absent": top})),
                // What was there, so that what a killed run's runtime added can go, and
                // the dirs get their mtimes back.
                DirState::Present(entry) => {
                    let mut entries = Vec::new();
                    entry.list(Path::new(""), &mut entries);
                    journal_line(&mut journal, &json!({"tree": dir, "entries": entries}));
                }
            }
        }
        CniDirsGuard {
            dirs,
            journal_path: journal_path.to_path_buf(),
            backup_dir: backup_dir.to_path_buf(),
            journal,
            backups: 0,
            restored: false,
            _lock: lock,
        }
    }

    /// Installs `bytes` as `dir/name` (mode `mode`), creating `dir` when missing.
    pub fn install(&mut self, dir: &Path, name: &str, bytes: &[u8], mode: u32) -> PathBuf {
        assert!(
            self.dirs.iter().any(|(d, _)| d == dir),
            "{} is not guarded",
            dir.display()
        );
        std::fs::create_dir_all(dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let path = dir.join(name);
        if std::fs::symlink_metadata(&path).is_ok() {
            std::fs::create_dir_all(&self.backup_dir).expect("cannot create the backup dir");
            let backup = self.backup_dir.join(self.backups.to_string());
            self.backups += 1;
            std::fs::copy(&path, &backup)
                .unwrap_or_else(|e| panic!("cannot back up {}: {e}", path.display()));
            let meta = std::fs::metadata(&path).expect("a file just copied");
            journal_line(
                &mut self.journal,
                &json!({"replaced": path, "backup": backup,
                        "mtime": [meta.mtime(), meta.mtime_nsec()]}),
            );
        } else {
            journal_line(&mut self.journal, &json!({"added": path}));
        }
        write_atomic(&path, bytes, mode, None)
            .unwrap_or_else(|e| panic!("cannot install {}: {e}", path.display()));
        path
    }

    /// Installs the plugin binary `src` as `/opt/cni/bin/<name>` (mode 0755).
    pub fn install_plugin(&mut self, name: &str, src: &Path) -> PathBuf {
        let bytes =
            std::fs::read(src).unwrap_or_else(|e| panic!("cannot read {}: {e}", src.display()));
        self.install(Path::new(CNI_BIN_DIR), name, &bytes, 0o755)
    }

    /// Installs `conflist` as `/etc/cni/net.d/<name>` and panics unless it is the file
    /// `ctr` will read: the first config file in name order.
    pub fn install_conflist(&mut self, name: &str, conflist: &Value) -> PathBuf {
        let bytes = serde_json::to_vec_pretty(conflist).expect("a conflist serializes");
        let path = self.install(Path::new(CNI_CONF_DIR), name, &bytes, 0o644);
        let first = first_conf_file(Path::new(CNI_CONF_DIR));
        assert_eq!(
            first.as_deref(),
            Some(path.as_path()),
            "{} is not the first config file of {CNI_CONF_DIR}, so ctr would not read it",
            path.display()
        );
        path
    }

    /// Puts every dir back as it was found, then checks that it is: panics naming every
    /// difference. Dropping the guard does the same, and only reports when panicking.
    pub fn restore(mut self) {
        let errors = self.restore_inner();
        assert!(
            errors.is_empty(),
            "the CNI dirs are not back as they were:\n{}",
            errors.join("\n")
        );
    }

    fn restore_inner(&mut self) -> Vec<String> {
        self.restored = true;
        let mut errors = Vec::new();
        for (dir, state) in &self.dirs {
            match state {
                DirState::Absent { top } => remove_any(top, &mut errors),
                DirState::Present(entry) => entry.restore(dir, &mut errors),
            }
        }
        for (dir, state) in &self.dirs {
            let now = DirState::read(dir);
            if &now != state {
                errors.push(format!(
                    "{} differs after restoring: {}",
                    dir.display(),
                    describe_diff(dir, state, &now)
                ));
            }
        }
        if errors.is_empty() {
            let _ = std::fs::remove_dir_all(&self.backup_dir);
            let _ = std::fs::remove_file(&self.journal_path);
        }
        errors
    }
}

impl Drop for CniDirsGuard {
    fn drop(&mut self) {
        if self.restored {
            return;
        }
        let errors = self.restore_inner();
        if !errors.is_empty() {
            let msg = format!(
                "the CNI dirs are not back as they were:\n{}",
                errors.join("\n")
            );
            if std::thread::panicking() {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

/// The first `.conf`/`.conflist`/`.json` file of `dir` in name order, as libcni
/// (`ConfFiles`, sorted) and so `ctr` picks it.
pub fn first_conf_file(dir: &Path) -> Option<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conf" | "conflist" | "json")
                )
        })
        .collect();
    files.sort();
    files.into_iter().next()
}

fn journal_line(journal: &mut File, line: &Value) {
    writeln!(journal, "{line}")
        .and_then(|()| journal.sync_all())
        .unwrap_or_else(|e| panic!("cannot write the guard's journal: {e}"));
}

/// Undoes what a guard whose process died without restoring had installed.
fn recover_journal(journal: &Path, backup_dir: &Path) {
    let Ok(text) = std::fs::read_to_string(journal) else {
        return;
    };
    eprintln!(
        "{} was left by a killed test run: undoing what it installed",
        journal.display()
    );
    let mut errors = Vec::new();
    for line in text.lines().rev() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let path = |k: &str| v[k].as_str().map(PathBuf::from);
        if let Some(p) = path("added") {
            remove_any(&p, &mut errors);
        } else if let (Some(p), Some(b)) = (path("replaced"), path("backup")) {
            let mtime = journal_mtime(&v);
            let restored = std::fs::metadata(&b).and_then(|m| {
                let bytes = std::fs::read(&b)?;
                write_atomic(&p, &bytes, m.mode() & 0o7777, Some((m.uid(), m.gid())))?;
                set_mtime(&p, mtime)
            });
            if let Err(e) = restored {
                errors.push(format!("cannot put back {}: {e}", p.display()));
            }
        } else if let Some(p) = path("absent") {
            remove_any(&p, &mut errors);
        } else if let Some(dir) = path("tree") {
            recover_tree(&dir, &v["entries"], &mut errors);
        }
    }
    assert!(
        errors.is_empty(),
        "cannot undo {}:\n{}",
        journal.display(),
        errors.join("\n")
    );
    let _ = std::fs::remove_dir_all(backup_dir);
    let _ = std::fs::remove_file(journal);
}

/// Removes from `dir` what is not in `entries` (`[relative path, is dir, mtime s, mtime
/// ns]` as [`Entry::list`] wrote them), then puts the dirs' mtimes back, deepest first.
fn recover_tree(dir: &Path, entries: &Value, errors: &mut Vec<String>) {
    let known: BTreeMap<PathBuf, (bool, (i64, i64))> = entries
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                dir.join(e[0].as_str()?),
                (
                    e[1].as_bool()?,
                    (e[2].as_i64().unwrap_or(0), e[3].as_i64().unwrap_or(0)),
                ),
            ))
        })
        .collect();
    fn prune(path: &Path, known: &BTreeMap<PathBuf, (bool, (i64, i64))>, errors: &mut Vec<String>) {
        let Ok(list) = std::fs::read_dir(path) else {
            return;
        };
        for e in list.flatten() {
            let p = e.path();
            match known.get(&p) {
                None => remove_any(&p, errors),
                Some((true, _)) => prune(&p, known, errors),
                Some(_) => {}
            }
        }
    }
    prune(dir, &known, errors);
    for (p, (is_dir, mtime)) in known.iter().rev() {
        if *is_dir && p.is_dir() {
            if let Err(e) = set_mtime(p, *mtime) {
                errors.push(format!("cannot set the mtime of {}: {e}", p.display()));
            }
        }
    }
}

/// The `"mtime": [seconds, nanoseconds]` of a journal line.
fn journal_mtime(v: &Value) -> (i64, i64) {
    (
        v["mtime"][0].as_i64().unwrap_or_default(),
        v["mtime"][1].as_i64().unwrap_or_default(),
    )
}

/// Paths that differ between two states (for failure messages).
fn describe_diff(dir: &Path, before: &DirState, after: &DirState) -> String {
    fn walk(path: &Path, a: Option<&Entry>, b: Option<&Entry>, out: &mut Vec<String>) {
        match (a, b) {
            (Some(Entry::Dir { children: ca, .. }), Some(Entry::Dir { children: cb, .. })) => {
                if a != b && ca == cb {
                    out.push(format!("{}: mode, owner or mtime", path.display()));
                }
                let names: std::collections::BTreeSet<&OsString> =
                    ca.keys().chain(cb.keys()).collect();
                for n in names {
                    walk(&path.join(n), ca.get(n), cb.get(n), out);
                }
            }
            (Some(_), None) => out.push(format!("{}: missing", path.display())),
            (None, Some(_)) => out.push(format!("{}: added", path.display())),
            (Some(x), Some(y)) if x != y => out.push(format!("{}: changed", path.display())),
            _ => {}
        }
    }
    let mut out = Vec::new();
    match (before, after) {
        (DirState::Present(a), DirState::Present(b)) => walk(dir, Some(a), Some(b), &mut out),
        (a, b) => out.push(format!("was {}, is {}", state_word(a), state_word(b))),
    }
    out.join(", ")
}

fn state_word(s: &DirState) -> &'static str {
    match s {
        DirState::Absent { .. } => "absent",
        DirState::Present(_) => "present",
    }
}

/// A container ID unique to this process, usable as a CNI container ID.
pub fn container_id(label: &str) -> String {
    format!("{label}-{}-{}", std::process::id(), next_id())
}
