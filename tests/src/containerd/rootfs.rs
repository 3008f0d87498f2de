//! A container root filesystem without an image: Debian's static busybox.

use super::{require_tools, BUSYBOX_BIN};
use crate::TempDir;
use std::path::Path;
use std::process::Command;

/// The applets [`BusyboxRootfs::new`] links.
pub const APPLETS: &[&str] = &[
    "sh", "ash", "ping", "sleep", "ip", "cat", "echo", "ls", "readlink", "mv", "hostname",
    "ifconfig", "route", "true", "false", "test", "[", "mkfifo", "stat", "grep",
];

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
