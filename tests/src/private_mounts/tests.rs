use super::*;
use std::collections::BTreeMap;

/// An entry of the made-up file system.
#[derive(Clone)]
enum Fake {
    Dir(DirMeta),
    Link(&'static str),
    Other,
}

const DIR: Fake = dir(0o755, 0);

/// A directory owned by root and group `gid`.
const fn dir(mode: u32, gid: u32) -> Fake {
    Fake::Dir(DirMeta { mode, uid: 0, gid })
}

/// A made-up file system: path → entry.
struct FakeFs(BTreeMap<PathBuf, Fake>);

impl FakeFs {
    fn new(entries: &[(&str, Fake)]) -> FakeFs {
        FakeFs(
            entries
                .iter()
                .map(|(p, e)| (PathBuf::from(p), e.clone()))
                .collect(),
        )
    }
}

impl FakeFs {
    /// `path` with a final symlink followed (ancestors are never links here).
    fn resolve(&self, path: &Path) -> PathBuf {
        match (self.0.get(path), path.parent()) {
            (Some(Fake::Link(target)), Some(parent)) => self.resolve(&parent.join(target)),
            _ => path.to_path_buf(),
        }
    }
}

impl FsView for FakeFs {
    fn kind(&self, path: &Path) -> Option<Kind> {
        Some(match self.0.get(path)? {
            Fake::Dir(_) => Kind::Dir,
            Fake::Link(target) => Kind::Symlink { target: p(target) },
            Fake::Other => Kind::Other,
        })
    }
    fn dir(&self, path: &Path) -> Option<DirMeta> {
        match self.0.get(&self.resolve(path))? {
            Fake::Dir(meta) => Some(*meta),
            _ => None,
        }
    }
    fn list(&self, dir: &Path) -> Vec<(OsString, Kind)> {
        let dir = self.resolve(dir);
        self.0
            .keys()
            .filter(|p| p.parent() == Some(&dir))
            .map(|p| (p.file_name().unwrap().to_os_string(), self.kind(p).unwrap()))
            .collect()
    }
}

fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

/// The plan for `binds` (source, target) on `fs`, staging under `/t/s`.
fn plan_on(fs: &FakeFs, binds: &[(&str, &str)]) -> Result<Vec<Step>, String> {
    let binds: Vec<(PathBuf, PathBuf)> = binds.iter().map(|(s, t)| (p(s), p(t))).collect();
    plan(&binds, Path::new("/t/s"), fs)
}

fn tmpfs(target: &str, mode: u32, gid: u32) -> Step {
    Step::Tmpfs {
        target: p(target),
        mode,
        uid: 0,
        gid,
    }
}

/// The steps that cover `ancestor` (staged at `/t/s/0`) with a tmpfs holding
/// `entries`.
fn cover(ancestor: &str, mode: u32, gid: u32, entries: Vec<Step>) -> Vec<Step> {
    let mut steps = vec![
        Step::Mkdir(p("/t/s/0")),
        bind(ancestor, "/t/s/0"),
        tmpfs(ancestor, mode, gid),
    ];
    steps.extend(entries);
    steps.push(Step::Detach(p("/t/s/0")));
    steps
}

/// The steps that make the missing directories `dirs` (parents first) and bind
/// `source` on the last.
fn made(dirs: &[&str], source: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = dirs.iter().map(|d| Step::Mkdir(p(d))).collect();
    steps.push(bind(source, dirs.last().expect("a target")));
    steps
}

fn bind(source: &str, target: &str) -> Step {
    Step::Bind {
        source: p(source),
        target: p(target),
    }
}

#[test]
fn an_existing_target_is_only_bind_mounted() {
    let fs = FakeFs::new(&[
        ("/", DIR),
        ("/opt", DIR),
        ("/opt/cni", DIR),
        ("/opt/cni/bin", DIR),
    ]);
    let steps = plan_on(&fs, &[("/t/bin", "/opt/cni/bin")]).unwrap();
    assert_eq!(steps, vec![bind("/t/bin", "/opt/cni/bin")]);
}

#[test]
fn a_missing_target_is_made_in_a_tmpfs_over_its_lowest_existing_ancestor() {
    let fs = FakeFs::new(&[
        ("/", DIR),
        ("/etc", dir(0o750, 4)),
        ("/etc/hosts", Fake::Other),
        ("/etc/ssl", DIR),
        ("/etc/mtab", Fake::Link("../proc/self/mounts")),
    ]);
    let steps = plan_on(&fs, &[("/t/net.d", "/etc/cni/net.d")]).unwrap();
    let entries = vec![
        Step::Touch(p("/etc/hosts")),
        bind("/t/s/0/hosts", "/etc/hosts"),
        Step::Symlink {
            target: p("../proc/self/mounts"),
            path: p("/etc/mtab"),
        },
        Step::Mkdir(p("/etc/ssl")),
        bind("/t/s/0/ssl", "/etc/ssl"),
    ];
    let made = made(&["/etc/cni", "/etc/cni/net.d"], "/t/net.d");
    assert_eq!(steps, [cover("/etc", 0o750, 4, entries), made].concat());
}

#[test]
fn symlinks_to_directories_are_followed_as_mount_follows_them() {
    let fs = FakeFs::new(&[
        ("/", DIR),
        ("/opt", Fake::Link("/srv/opt")),
        ("/srv", DIR),
        ("/srv/opt", dir(0o700, 0)),
        ("/srv/opt/x", Fake::Other),
        ("/etc", DIR),
        ("/etc/cni", DIR),
        ("/etc/cni/net.d", Fake::Link("/srv")),
    ]);
    // An existing target behind a symlink: bound over where it leads.
    let steps = plan_on(&fs, &[("/t/net.d", "/etc/cni/net.d")]).unwrap();
    assert_eq!(steps, vec![bind("/t/net.d", "/etc/cni/net.d")]);
    // A missing target under a symlinked ancestor: the ancestor is covered with the
    // mode of the directory it leads to, and lists that directory's entries.
    let steps = plan_on(&fs, &[("/t/bin", "/opt/cni/bin")]).unwrap();
    let entries = vec![Step::Touch(p("/opt/x")), bind("/t/s/0/x", "/opt/x")];
    let made = made(&["/opt/cni", "/opt/cni/bin"], "/t/bin");
    assert_eq!(steps, [cover("/opt", 0o700, 0, entries), made].concat());
}

#[test]
fn a_directory_made_for_one_target_serves_the_next_without_another_cover() {
    let fs = FakeFs::new(&[("/", DIR), ("/var", DIR), ("/var/lib", DIR)]);
    let steps = plan_on(
        &fs,
        &[("/t/a", "/var/lib/cni/a"), ("/t/b", "/var/lib/cni/b")],
    )
    .unwrap();
    // The second target's parent was made for the first: only the target is made.
    let expected = [
        cover("/var/lib", 0o755, 0, vec![]),
        made(&["/var/lib/cni", "/var/lib/cni/a"], "/t/a"),
        made(&["/var/lib/cni/b"], "/t/b"),
    ];
    assert_eq!(steps, expected.concat());
}

#[test]
fn a_machine_directory_under_a_cover_is_covered_again_before_anything_is_made_in_it() {
    // /etc/ssl is the machine's, bind-mounted back into /etc's tmpfs: making
    // /etc/ssl/x there would write the machine's /etc/ssl.
    let fs = FakeFs::new(&[("/", DIR), ("/etc", DIR), ("/etc/ssl", DIR)]);
    let steps = plan_on(&fs, &[("/t/a", "/etc/a"), ("/t/x", "/etc/ssl/x")]).unwrap();
    let at = |want: &Step| steps.iter().position(|s| s == want).unwrap();
    assert!(
        at(&tmpfs("/etc/ssl", 0o755, 0)) < at(&Step::Mkdir(p("/etc/ssl/x"))),
        "{steps:#?}"
    );
}

#[test]
fn unsafe_plans_are_refused() {
    let fs = FakeFs::new(&[
        ("/", DIR),
        ("/t", DIR),
        ("/etc", DIR),
        ("/etc/f", Fake::Other),
    ]);
    for (target, why) in [
        ("/nope/cni", "covering /"),
        ("/t/cni", "would cover"),
        ("/etc/f/x", "not a directory"),
        ("etc/cni", "absolute"),
        ("/etc/../cni", "absolute"),
    ] {
        let err = plan_on(&fs, &[("/t/x", target)]).unwrap_err();
        assert!(err.contains(why), "{target}: {err}");
    }
}
