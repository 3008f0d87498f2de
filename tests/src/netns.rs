//! Named network namespaces (`ip netns`) that are deleted when dropped.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Prefix of every namespace (and temp dir) this process creates: `twt<pid>-`. The pid
/// lets the sweep tell a dead run's leftovers from a live parallel run's namespaces.
pub fn run_prefix() -> String {
    PREFIX
        .get()
        .cloned()
        .unwrap_or_else(|| format!("twt{}-", std::process::id()))
}

/// Replaces the run prefix for this process (before anything is created). The lab uses
/// `twlab-`, which the sweep never touches, so `--keep` survives later test runs.
pub fn set_run_prefix(prefix: &str) {
    let _ = PREFIX.set(prefix.to_string());
}

/// Runs a command (argv) and returns its output; panics with the command and its stderr
/// when it fails, since a test cannot go on from a broken setup step.
pub fn sh(argv: &[&str]) -> String {
    let out = run(argv);
    assert!(
        out.status.success(),
        "`{}` failed: {}",
        argv.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command (argv) and returns its output, whatever its exit status.
pub fn run(argv: &[&str]) -> Output {
    Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{}`: {e}", argv.join(" ")))
}

static SWEEP: Once = Once::new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A number unique within this process, for names of namespaces, directories and
/// container IDs.
pub fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Whether `name` (of a namespace, a temp dir) was made by a run whose process is gone:
/// it starts with `twt<pid>-` and no process `<pid>` exists.
pub fn left_by_dead_run(name: &str) -> bool {
    let Some(pid) = name
        .strip_prefix("twt")
        .and_then(|rest| rest.split('-').next())
        .and_then(|p| p.parse::<u32>().ok())
    else {
        return false;
    };
    pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Deletes namespaces left by earlier runs whose process is gone.
fn sweep_leftovers() {
    let list = run(&["ip", "netns", "list"]);
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if left_by_dead_run(name) {
            let _ = run(&["ip", "netns", "del", name]);
        }
    }
}

/// A network namespace named `<run prefix><n>-<label>`, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new(label: &str) -> Netns {
        SWEEP.call_once(sweep_leftovers);
        let n = next_id();
        let name = format!("{}{n}-{label}", run_prefix());
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The path a runtime passes as CNI_NETNS.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs argv inside the namespace; panics on failure.
    pub fn sh(&self, argv: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(argv);
        sh(&full)
    }

    /// Runs argv inside the namespace; returns the output whatever the status.
    pub fn run(&self, argv: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(argv);
        run(&full)
    }

    /// `nft -f -` with `script` inside the namespace; the error carries nft's words.
    pub fn nft_script(&self, script: &str) -> Result<(), String> {
        use std::io::Write as _;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("running nft: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .map_err(|e| format!("writing the script to nft: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("waiting for nft: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "nft -f - in {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }

    /// `ip` inside the namespace, e.g. `ns.ip(&["-4", "addr", "show", "eth0"])`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// True when one ping to `addr` from this namespace is answered within 2 s.
    pub fn ping(&self, addr: &str) -> bool {
        self.run(&["ping", "-c", "1", "-W", "2", addr])
            .status
            .success()
    }

    /// Interface names in the namespace.
    pub fn links(&self) -> Vec<String> {
        let out = self.ip(&["-o", "link", "show"]);
        out.lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .collect()
    }

    /// Links, addresses and routes as text: equal before and after an operation that must
    /// change nothing.
    ///
    /// What the kernel changes on its own is left out: running timers of bridges and
    /// bridge ports (`gc_timer 297.84`) are masked, and the snapshot waits (up to 10 s)
    /// for duplicate address detection to finish, so that a link-local address that is
    /// still `tentative` does not differ from the same address a moment later.
    pub fn snapshot(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.ip(&["-6", "addr", "show", "tentative"]).trim() != ""
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut s = String::new();
        for args in [
            &["-d", "link", "show"][..],
            &["addr", "show"],
            &["route", "show", "table", "all"],
            &["-6", "route", "show", "table", "all"],
            &["neigh", "show", "nud", "permanent"],
        ] {
            for line in self.ip(args).lines() {
                s.push_str(&mask_timers(line));
                s.push('\n');
            }
        }
        s
    }

    /// Deletes the namespace now (as a runtime does when a pod goes away); dropping the
    /// value afterwards does nothing more.
    pub fn delete(&self) {
        sh(&["ip", "netns", "del", &self.name]);
    }
}

/// Replaces the value after every `*_timer` word with `_`.
fn mask_timers(line: &str) -> String {
    let mut out = Vec::new();
    let mut mask_next = false;
    for word in line.split_whitespace() {
        if mask_next {
            out.push("_");
            mask_next = false;
        } else {
            out.push(word);
            mask_next = word.ends_with("_timer");
        }
    }
    out.join(" ")
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}
