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
    let steps = plan(&[(p("/t/bin"), p("/opt/cni/bin"))], Path::new("/t/s"), &fs).unwrap();
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
    let steps = plan(
        &[(p("/t/net.d"), p("/etc/cni/net.d"))],
        Path::new("/t/s"),
        &fs,
    )
    .unwrap();
    assert_eq!(
        steps,
        vec![
            Step::Mkdir(p("/t/s/0")),
            bind("/etc", "/t/s/0"),
            Step::Tmpfs {
                target: p("/etc"),
                mode: 0o750,
                uid: 0,
                gid: 4
            },
            Step::Touch(p("/etc/hosts")),
            bind("/t/s/0/hosts", "/etc/hosts"),
            Step::Symlink {
                target: p("../proc/self/mounts"),
                path: p("/etc/mtab")
            },
            Step::Mkdir(p("/etc/ssl")),
            bind("/t/s/0/ssl", "/etc/ssl"),
            Step::Detach(p("/t/s/0")),
            Step::Mkdir(p("/etc/cni")),
            Step::Mkdir(p("/etc/cni/net.d")),
            bind("/t/net.d", "/etc/cni/net.d"),
        ]
    );
}

#[test]
fn a_directory_made_for_one_target_serves_the_next_without_another_cover() {
    let fs = Fake::new(&[("/", DIR), ("/var", DIR), ("/var/lib", DIR)]);
    let steps = plan(
        &[
            (p("/t/a"), p("/var/lib/cni/a")),
            (p("/t/b"), p("/var/lib/cni/b")),
        ],
        Path::new("/t/s"),
        &fs,
    )
    .unwrap();
    assert_eq!(
        steps,
        vec![
            Step::Mkdir(p("/t/s/0")),
            bind("/var/lib", "/t/s/0"),
            Step::Tmpfs {
                target: p("/var/lib"),
                mode: 0o755,
                uid: 0,
                gid: 0
            },
            Step::Detach(p("/t/s/0")),
            Step::Mkdir(p("/var/lib/cni")),
            Step::Mkdir(p("/var/lib/cni/a")),
            bind("/t/a", "/var/lib/cni/a"),
            Step::Mkdir(p("/var/lib/cni/b")),
            bind("/t/b", "/var/lib/cni/b"),
        ]
    );
}

#[test]
fn a_machine_directory_under_a_cover_is_covered_again_before_anything_is_made_in_it() {
    // /etc/ssl is the machine's, bind-mounted back into /etc's tmpfs: making
    // /etc/ssl/x there would write the machine's /etc/ssl.
    let fs = Fake::new(&[("/", DIR), ("/etc", DIR), ("/etc/ssl", DIR)]);
    let steps = plan(
        &[(p("/t/a"), p("/etc/a")), (p("/t/x"), p("/etc/ssl/x"))],
        Path::new("/t/s"),
        &fs,
    )
    .unwrap();
    let at = |want: &dyn Fn(&Step) -> bool| steps.iter().position(want).unwrap();
    let tmpfs = at(&|s| matches!(s, Step::Tmpfs { target, .. } if target == Path::new("/etc/ssl")));
    let mkdir = at(&|s| s == &Step::Mkdir(p("/etc/ssl/x")));
    assert!(tmpfs < mkdir, "{steps:#?}");
}

#[test]
fn unsafe_plans_are_refused() {
    let fs = Fake::new(&[
        ("/", DIR),
        ("/tmp", DIR),
        ("/etc", DIR),
        ("/etc/f", Kind::Other),
    ]);
    for (target, staging, why) in [
        ("/nope/cni", "/tmp/s", "covering /"),
        ("/tmp/cni", "/tmp/s", "would cover"),
        ("/etc/f/x", "/tmp/s", "not a directory"),
        ("etc/cni", "/tmp/s", "absolute"),
        ("/etc/../cni", "/tmp/s", "absolute"),
    ] {
        let err = plan(&[(p("/t/x"), p(target))], Path::new(staging), &fs).unwrap_err();
        assert!(err.contains(why), "{target}: {err}");
    }
}
