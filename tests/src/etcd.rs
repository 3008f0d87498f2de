//! A throwaway single-member etcd (Debian's `etcd-server`, `/usr/bin/etcd`) on loopback:
//! random free ports, a temporary data directory, killed on drop.
//!
//! `stop` and `restart` keep the data directory and the ports, so a client sees the
//! same server go away and come back.

use crate::TempDir;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ETCD_BIN: &str = "/usr/bin/etcd";
/// How long `start` and `restart` wait for etcd to report itself healthy.
const START_TIMEOUT: Duration = Duration::from_secs(20);

pub struct EtcdServer {
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    /// Where etcd runs and listens: loopback of this process's namespace, or an
    /// address inside a test namespace (so node namespaces can reach it).
    netns: Option<String>,
    host: String,
    child: Option<Child>,
}

impl EtcdServer {
    /// Starts etcd and waits until `/health` says it is healthy.
    pub fn start() -> EtcdServer {
        assert!(
            std::path::Path::new(ETCD_BIN).exists(),
            "{ETCD_BIN} is missing: install Debian's etcd-server"
        );
        let mut server = EtcdServer {
            dir: TempDir::new("etcd"),
            client_port: free_port(),
            peer_port: free_port(),
            netns: None,
            host: "127.0.0.1".into(),
            child: None,
        };
        server.spawn();
        server
    }

    /// Starts etcd inside the namespace `netns`, listening on `ip` (an address of that
    /// namespace, e.g. the lab's underlay router), and waits until it is healthy.
    pub fn start_in(netns: &str, ip: &str) -> EtcdServer {
        let mut server = EtcdServer {
            dir: TempDir::new("etcd"),
            client_port: 2379,
            peer_port: 2380,
            netns: Some(netns.to_string()),
            host: ip.to_string(),
            child: None,
        };
        server.spawn();
        server
    }

    /// `http://<host>:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.host, self.client_port)
    }

    /// The server's log (stdout and stderr, across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// Kills the server (as a crash would) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same ports and data, and waits until healthy.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("cannot open the etcd log");
        let err = log.try_clone().expect("cannot clone the etcd log handle");
        let client = self.endpoint();
        let peer = format!("http://{}:{}", self.host, self.peer_port);
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, ETCD_BIN]);
                c
            }
            None => Command::new(ETCD_BIN),
        };
        let child = cmd
            .arg("--name")
            .arg("twill-test")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("twill-test={peer}"))
            .arg("--logger")
            .arg("zap")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {ETCD_BIN}: {e}"));
        self.child = Some(child);
        self.wait_healthy();
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.client_port));
        loop {
            let healthy = match &self.netns {
                None => health(addr),
                Some(ns) => health_in(ns, &self.host, self.client_port),
            };
            if healthy {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "etcd exited with {status} while starting; log:\n{}",
                        self.log_tail()
                    );
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "etcd is not healthy after {START_TIMEOUT:?}; log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port nothing listens on right now (the kernel's pick for an ephemeral bind).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind an ephemeral port on loopback")
}

/// `health` from inside a namespace, with bash's /dev/tcp.
fn health_in(ns: &str, host: &str, port: u16) -> bool {
    let script = format!(
        "exec 3<>/dev/tcp/{host}/{port} && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
    );
    Command::new("ip")
        .args(["netns", "exec", ns, "timeout", "2", "bash", "-c", &script])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("\"health\":\"true\""))
        .unwrap_or(false)
}

/// True when `GET /health` answers `"health":"true"`.
fn health(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}
