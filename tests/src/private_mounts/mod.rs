//! A child process's private view of some of the machine's directories: each target
//! path (say `/etc/cni/net.d`) shows a directory of the test's instead, in a mount
//! namespace of the child's own, made between fork and exec. The machine's directories
//! are never written, and nothing is mounted in its own mount namespace: the mounts
//! die with the last process of the child's namespace.
//!
//! A target that does not exist on the machine cannot be made there, not even as an
//! empty mount point. Its lowest existing ancestor (`/etc` for `/etc/cni/net.d` on a
//! machine without `/etc/cni`) is then covered, in the child's namespace only, by a
//! tmpfs with the ancestor's mode and owner, in which every entry of the ancestor is
//! bind-mounted back (symlinks recreated): the child still sees all of `/etc`, and the
//! missing directories are made in the tmpfs. The original is reached during that
//! through a bind mount at a staging directory of the test's, detached afterwards.
//!
//! [`plan`] decides the steps from what the file system holds (pure, unit-tested with a
//! made-up file system); [`PrivateMounts::apply`] reads the machine, plans, and runs
//! the steps in the child as plain system calls (nothing allocates after the fork).

use std::collections::BTreeSet;
use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

/// What a path is, not following a final symlink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    Symlink {
        target: PathBuf,
    },
    /// A file, socket, FIFO or device: bind-mounted back onto an empty file.
    Other,
}

/// Mode and owner of a directory, which the tmpfs covering it takes over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirMeta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The file system as the plan sees it: the machine's, or a made-up one in unit tests.
pub trait FsView {
    /// What `path` is; `None` when it does not exist.
    fn kind(&self, path: &Path) -> Option<Kind>;
    /// The directory at `path`, following symlinks (as mount(2) does); `None` when
    /// there is none.
    fn dir(&self, path: &Path) -> Option<DirMeta>;
    /// The entries of directory `dir`, by name.
    fn list(&self, dir: &Path) -> Vec<(OsString, Kind)>;
}

/// The machine's file system.
pub struct Machine;

impl FsView for Machine {
    fn kind(&self, path: &Path) -> Option<Kind> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        Some(if meta.file_type().is_symlink() {
            Kind::Symlink {
                target: std::fs::read_link(path).ok()?,
            }
        } else if meta.is_dir() {
            Kind::Dir
        } else {
            Kind::Other
        })
    }

    fn dir(&self, path: &Path) -> Option<DirMeta> {
        let meta = std::fs::metadata(path).ok().filter(|m| m.is_dir())?;
        Some(DirMeta {
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        })
    }

    fn list(&self, dir: &Path) -> Vec<(OsString, Kind)> {
        let mut entries: Vec<(OsString, Kind)> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| Some((e.file_name(), self.kind(&e.path())?)))
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries
    }
}

/// One step in the child's mount namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `mount --rbind source target`.
    Bind {
        source: PathBuf,
        target: PathBuf,
    },
    /// A tmpfs over `target`, with the mode and owner of the directory it covers.
    Tmpfs {
        target: PathBuf,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Mkdir(PathBuf),
    /// An empty file, as the mount point of a non-directory.
    Touch(PathBuf),
    Symlink {
        target: PathBuf,
        path: PathBuf,
    },
    /// `umount --lazy`.
    Detach(PathBuf),
}

/// The steps that make each `(source, target)` of `binds` show `source` at `target`,
/// writing nothing but the staging directories `staging/<n>` (which must lie outside
/// every directory it covers). Targets must be absolute paths without `..`.
pub fn plan(
    binds: &[(PathBuf, PathBuf)],
    staging: &Path,
    fs: &impl FsView,
) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    // Directories of the child's view that are its own: tmpfs roots, and what was made
    // in them. Anything else is the machine's, and must not be written.
    let mut own: BTreeSet<PathBuf> = BTreeSet::new();
    let mut covers = 0;
    for (source, target) in binds {
        if !target.is_absolute() || target.components().any(|c| c == Component::ParentDir) {
            return Err(format!(
                "{} is not an absolute path without ..",
                target.display()
            ));
        }
        let is_dir = |p: &Path| own.contains(p) || fs.dir(p).is_some();
        let mut missing = Vec::new();
        let mut ancestor = target.as_path();
        while !is_dir(ancestor) {
            if fs.kind(ancestor).is_some() {
                return Err(format!(
                    "{} exists and is not a directory",
                    ancestor.display()
                ));
            }
            missing.push(ancestor.to_path_buf());
            ancestor = ancestor
                .parent()
                .ok_or_else(|| format!("no ancestor of {} exists", target.display()))?;
        }
        if !missing.is_empty() && !own.contains(ancestor) {
            let Some(DirMeta { mode, uid, gid }) = fs.dir(ancestor) else {
                return Err(format!("{} is not a directory", ancestor.display()));
            };
            // A mount over / would not be seen: lookups start below it.
            if ancestor.parent().is_none() {
                return Err(format!(
                    "cannot make {} without covering /",
                    target.display()
                ));
            }
            let stage = staging.join(covers.to_string());
            covers += 1;
            if stage.starts_with(ancestor) {
                return Err(format!(
                    "the staging directory {} lies in {}, which it would cover",
                    stage.display(),
                    ancestor.display()
                ));
            }
            steps.push(Step::Mkdir(stage.clone()));
            steps.push(Step::Bind {
                source: ancestor.to_path_buf(),
                target: stage.clone(),
            });
            steps.push(Step::Tmpfs {
                target: ancestor.to_path_buf(),
                mode,
                uid,
                gid,
            });
            for (name, kind) in fs.list(ancestor) {
                let path = ancestor.join(&name);
                let from = stage.join(&name);
                match kind {
                    Kind::Symlink { target } => steps.push(Step::Symlink { target, path }),
                    Kind::Dir => {
                        steps.push(Step::Mkdir(path.clone()));
                        steps.push(Step::Bind {
                            source: from,
                            target: path,
                        });
                    }
                    Kind::Other => {
                        steps.push(Step::Touch(path.clone()));
                        steps.push(Step::Bind {
                            source: from,
                            target: path,
                        });
                    }
                }
            }
            steps.push(Step::Detach(stage));
            own.insert(ancestor.to_path_buf());
        }
        for dir in missing.into_iter().rev() {
            steps.push(Step::Mkdir(dir.clone()));
            own.insert(dir);
        }
        steps.push(Step::Bind {
            source: source.clone(),
            target: target.clone(),
        });
    }
    Ok(steps)
}

/// Directories of the test's shown at paths of the machine, for one child process.
pub struct PrivateMounts {
    binds: Vec<(PathBuf, PathBuf)>,
    staging: PathBuf,
}

impl PrivateMounts {
    /// Shows nothing yet; `staging` is a directory of the test's (outside every
    /// target's ancestors) for the staging mount points.
    pub fn new(staging: &Path) -> PrivateMounts {
        PrivateMounts {
            binds: Vec::new(),
            staging: staging.to_path_buf(),
        }
    }

    /// Shows `source` at `target`.
    pub fn bind(mut self, source: &Path, target: &Path) -> PrivateMounts {
        self.binds
            .push((source.to_path_buf(), target.to_path_buf()));
        self
    }

    /// Makes `cmd` start in a mount namespace of its own (propagation private) with the
    /// binds in place. The plan is made now, from the machine as it is; its steps run
    /// in the child, and a failing one fails `cmd`'s spawn with that step's error.
    pub fn apply(&self, cmd: &mut Command) -> Result<(), String> {
        let steps = plan(&self.binds, &self.staging, &Machine)?;
        let calls = steps
            .iter()
            .map(Call::from_step)
            .collect::<Result<Vec<Call>, String>>()?;
        // SAFETY: the closure makes system calls on C strings prepared before the fork;
        // it neither allocates nor locks.
        unsafe {
            cmd.pre_exec(move || {
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                for call in &calls {
                    call.run()?;
                }
                Ok(())
            });
        }
        Ok(())
    }
}

/// A [`Step`] as the system call that does it, with its arguments ready.
enum Call {
    Bind(CString, CString),
    Tmpfs(CString, CString),
    Mkdir(CString),
    Touch(CString),
    Symlink(CString, CString),
    Detach(CString),
}

fn c_path(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{} holds a NUL", p.display()))
}

impl Call {
    fn from_step(step: &Step) -> Result<Call, String> {
        Ok(match step {
            Step::Bind { source, target } => Call::Bind(c_path(source)?, c_path(target)?),
            Step::Tmpfs {
                target,
                mode,
                uid,
                gid,
            } => Call::Tmpfs(
                c_path(target)?,
                CString::new(format!("mode={mode:o},uid={uid},gid={gid}"))
                    .expect("no NUL in numbers"),
            ),
            Step::Mkdir(p) => Call::Mkdir(c_path(p)?),
            Step::Touch(p) => Call::Touch(c_path(p)?),
            Step::Symlink { target, path } => Call::Symlink(c_path(target)?, c_path(path)?),
            Step::Detach(p) => Call::Detach(c_path(p)?),
        })
    }

    /// Runs in the forked child: system calls only.
    fn run(&self) -> std::io::Result<()> {
        // SAFETY: every pointer is a NUL-terminated string owned by `self`, or null
        // where the call takes null.
        unsafe {
            match self {
                Call::Bind(source, target) => check(libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                )),
                Call::Tmpfs(target, data) => check(libc::mount(
                    c"tmpfs".as_ptr(),
                    target.as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    data.as_ptr().cast(),
                )),
                Call::Mkdir(path) => check(libc::mkdir(path.as_ptr(), 0o755)),
                Call::Touch(path) => {
                    let fd = libc::open(
                        path.as_ptr(),
                        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                        0o644,
                    );
                    check(fd)?;
                    check(libc::close(fd))
                }
                Call::Symlink(target, path) => check(libc::symlink(target.as_ptr(), path.as_ptr())),
                Call::Detach(target) => check(libc::umount2(target.as_ptr(), libc::MNT_DETACH)),
            }
        }
    }
}

fn check(r: libc::c_int) -> std::io::Result<()> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
