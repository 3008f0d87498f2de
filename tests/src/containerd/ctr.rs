//! A running `ctr run` and how it ended; its output is collected in the background.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

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
    pub(super) fn spawn(mut cmd: Command, what: String) -> CtrRun {
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
