use super::*;
use std::collections::BTreeMap;

/// A made-up file system: path → kind.
struct Fake(BTreeMap<PathBuf, Kind>);

const DIR: Kind = Kind::Dir {
    mode: 0o755,
    uid: 0,
    gid: 0,
};

impl Fake {
    fn new(entries: &[(&str, Kind)]) -> Fake {
        Fake(
            entries
                .iter()
                .map(|(p, k)| (PathBuf::from(p), k.clone()))
                .collect(),
        )
    }
}

impl FsView for Fake {
    fn kind(&self, path: &Path) -> Option<Kind> {
        self.0.get(path).cloned()
    }
    fn list(&self, dir: &Path) -> Vec<(OsString, Kind)> {
        self.0
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .map(|(p, k)| (p.file_name().unwrap().to_os_string(), k.clone()))
            .collect()
    }
}

fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

/// The plan for `binds` (source, target) on `fs`, staging under `/t/s`.
fn plan_on(fs: &Fake, binds: &[(&str, &str)]) -> Result<Vec<Step>, String> {
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

fn bind(source: &str, target: &str) -> Step {
    Step::Bind {
        source: p(source),
        target: p(target),
    }
}

#[test]
fn an_existing_target_is_only_bind_mounted() {
    let fs = Fake::new(&[
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
    let etc = Kind::Dir {
        mode: 0o750,
        uid: 0,
        gid: 4,
    };
    let fs = Fake::new(&[
        ("/", DIR),
        ("/etc", etc),
        ("/etc/hosts", Kind::Other),
        ("/etc/ssl", DIR),
        (
            "/etc/mtab",
            Kind::Symlink {
                target: p("../proc/self/mounts"),
            },
        ),
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
    let made = vec![
        Step::Mkdir(p("/etc/cni")),
        Step::Mkdir(p("/etc/cni/net.d")),
        bind("/t/net.d", "/etc/cni/net.d"),
    ];
    assert_eq!(steps, [cover("/etc", 0o750, 4, entries), made].concat());
}

#[test]
fn a_directory_made_for_one_target_serves_the_next_without_another_cover() {
    let fs = Fake::new(&[("/", DIR), ("/var", DIR), ("/var/lib", DIR)]);
    let steps = plan_on(
        &fs,
        &[("/t/a", "/var/lib/cni/a"), ("/t/b", "/var/lib/cni/b")],
    )
    .unwrap();
    let made = vec![
        Step::Mkdir(p("/var/lib/cni")),
        Step::Mkdir(p("/var/lib/cni/a")),
        bind("/t/a", "/var/lib/cni/a"),
        Step::Mkdir(p("/var/lib/cni/b")),
        bind("/t/b", "/var/lib/cni/b"),
    ];
    assert_eq!(steps, [cover("/var/lib", 0o755, 0, vec![]), made].concat());
}

#[test]
fn a_machine_directory_under_a_cover_is_covered_again_before_anything_is_made_in_it() {
    // /etc/ssl is the machine's, bind-mounted back into /etc's tmpfs: making
    // /etc/ssl/x there would write the machine's /etc/ssl.
    let fs = Fake::new(&[("/", DIR), ("/etc", DIR), ("/etc/ssl", DIR)]);
    let steps = plan_on(&fs, &[("/t/a", "/etc/a"), ("/t/x", "/etc/ssl/x")]).unwrap();
    let at = |want: &Step| steps.iter().position(|s| s == want).unwrap();
    assert!(
        at(&tmpfs("/etc/ssl", 0o755, 0)) < at(&Step::Mkdir(p("/etc/ssl/x"))),
        "{steps:#?}"
    );
}

#[test]
fn unsafe_plans_are_refused() {
    let fs = Fake::new(&[
        ("/", DIR),
        ("/t", DIR),
        ("/etc", DIR),
        ("/etc/f", Kind::Other),
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
