//! The CNI directories `ctr run --cni` uses, private to one test. `ctr` reads its config
//! from `/etc/cni/net.d` (only the first file) and plugins from `/opt/cni/bin`, and
//! libcni caches results under `/var/lib/cni`; none of them can be given on its command
//! line. So `ctr` runs in a mount namespace of its own in which directories of the
//! test's are mounted at those paths ([`PrivateMounts`]): the machine's own are never
//! read or written, a runtime on the machine keeps its conflist and plugin while tests
//! run, and tests need not take turns.

use crate::private_mounts::PrivateMounts;
use crate::TempDir;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The CNI config dir `ctr` reads (only its first `.conf`/`.conflist`/`.json`, sorted).
pub const CNI_CONF_DIR: &str = "/etc/cni/net.d";
/// The plugin dir `ctr` searches first (then `/usr/lib/cni` on Debian).
pub const CNI_BIN_DIR: &str = "/opt/cni/bin";
/// libcni's cache (`results/<network>-<container id>-<ifname>`), written by `ctr`.
pub const CNI_CACHE_DIR: &str = "/var/lib/cni";

/// The test's config, plugin and cache directories, shown to `ctr` (and the plugins it
/// runs) at [`CNI_CONF_DIR`], [`CNI_BIN_DIR`] and [`CNI_CACHE_DIR`]. Removed on drop.
pub struct CniDirs {
    dir: TempDir,
}

impl CniDirs {
    pub fn new() -> CniDirs {
        let dir = TempDir::new("cni");
        let c = CniDirs { dir };
        for d in [c.conf_dir(), c.bin_dir(), c.cache_dir(), c.staging_dir()] {
            std::fs::create_dir(&d)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
        }
        c
    }

    /// Shown at [`CNI_CONF_DIR`].
    pub fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    /// Shown at [`CNI_BIN_DIR`].
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    /// Shown at [`CNI_CACHE_DIR`].
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// Mount points for reaching what a tmpfs covers (see [`PrivateMounts`]).
    fn staging_dir(&self) -> PathBuf {
        self.dir.path().join("staging")
    }

    /// Copies the plugin binary `src` in as `<name>` (mode 0755).
    pub fn install_plugin(&self, name: &str, src: &Path) -> PathBuf {
        let path = self.bin_dir().join(name);
        std::fs::copy(src, &path)
            .and_then(|_| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)))
            .unwrap_or_else(|e| {
                panic!(
                    "cannot install {} as {}: {e}",
                    src.display(),
                    path.display()
                )
            });
        path
    }

    /// Writes `conflist` as `<name>` and panics unless it is the file `ctr` will read:
    /// the first config file in name order.
    pub fn install_conflist(&self, name: &str, conflist: &Value) -> PathBuf {
        let path = self.conf_dir().join(name);
        let bytes = serde_json::to_vec_pretty(conflist).expect("a conflist serializes");
        std::fs::write(&path, bytes)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        assert_eq!(
            first_conf_file(&self.conf_dir()).as_deref(),
            Some(path.as_path()),
            "{} is not the first config file of its dir, so ctr would not read it",
            path.display()
        );
        path
    }

    /// The mounts that show these directories at the machine's CNI paths.
    pub fn mounts(&self) -> PrivateMounts {
        PrivateMounts::new(&self.staging_dir())
            .bind(&self.conf_dir(), Path::new(CNI_CONF_DIR))
            .bind(&self.bin_dir(), Path::new(CNI_BIN_DIR))
            .bind(&self.cache_dir(), Path::new(CNI_CACHE_DIR))
    }
}

impl Default for CniDirs {
    fn default() -> Self {
        Self::new()
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
