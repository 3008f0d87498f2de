//! Probes of the reachability matrix: one new TCP connection or one UDP request/echo from
//! inside a client namespace, with a short timeout (a denied packet is dropped, so a
//! denied probe is one that times out), all of a matrix run in parallel; and the UDP
//! echo server the pods run beside their TCP servers.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use twill_netlink::NetNs;

/// How long a probe waits for a connection or an echo. A dropped first SYN is
/// retransmitted after 1 s: under that, a probe sees exactly the first packet's verdict.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

/// What a probe reaches: a protocol and a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Probe {
    pub proto: Proto,
    pub port: u16,
}

impl Probe {
    pub const fn tcp(port: u16) -> Probe {
        Probe {
            proto: Proto::Tcp,
            port,
        }
    }

    pub const fn udp(port: u16) -> Probe {
        Probe {
            proto: Proto::Udp,
            port,
        }
    }
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = match self.proto {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        };
        write!(f, "{proto}/{}", self.port)
    }
}

/// One probe from inside the namespace at `netns` (a `/run/netns/..` path): true when
/// the server answered within [`PROBE_TIMEOUT`].
pub fn probe_once(netns: &str, to: IpAddr, probe: Probe) -> bool {
    let Ok(ns) = NetNs::open(Path::new(netns)) else {
        return false;
    };
    let addr = SocketAddr::new(to, probe.port);
    ns.run_here(|| match probe.proto {
        Proto::Tcp => tcp_answers(addr),
        Proto::Udp => udp_answers(addr),
    })
    .unwrap_or(false)
}

/// Connects and reads the server's line: a connection that a DNAT or a half-open path
/// lets through without a server behind it does not count.
fn tcp_answers(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT) else {
        return false;
    };
    let mut line = String::new();
    s.set_read_timeout(Some(PROBE_TIMEOUT)).is_ok()
        && s.read_to_string(&mut line).is_ok()
        && !line.is_empty()
}

/// Sends one datagram from a fresh socket (a new source port, so no conntrack entry of
/// an earlier probe lets it through) and waits for the echo.
fn udp_answers(addr: SocketAddr) -> bool {
    let bind: SocketAddr = match addr {
        SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        SocketAddr::V6(_) => ([0u16; 8], 0).into(),
    };
    let Ok(s) = UdpSocket::bind(bind) else {
        return false;
    };
    let mut buf = [0u8; 64];
    s.connect(addr).is_ok()
        && s.set_read_timeout(Some(PROBE_TIMEOUT)).is_ok()
        && s.send(b"probe").is_ok()
        && s.recv(&mut buf).is_ok_and(|n| &buf[..n] == b"probe")
}

/// Runs every probe of `jobs` (client namespace path, target address, probe) on its own
/// thread; the verdicts in the order of `jobs`.
pub fn probe_all(jobs: &[(String, IpAddr, Probe)]) -> Vec<bool> {
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|(ns, ip, probe)| s.spawn(move || probe_once(ns, *ip, *probe)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(false))
            .collect()
    })
}

/// A UDP socket inside a namespace that echoes every datagram, served by a thread;
/// stopped (and joined) on drop.
pub struct UdpEcho {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    pub fn start(netns: &str, bind: SocketAddr) -> Result<UdpEcho, String> {
        let ns = NetNs::open(Path::new(netns)).map_err(|e| e.to_string())?;
        let socket = ns
            .run(move || UdpSocket::bind(bind))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("bind UDP {bind} in {netns}: {e}"))?;
        // A short read timeout so that a stop request is seen promptly.
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("udp-echo-{}", bind.port()))
                .spawn(move || {
                    let mut buf = [0u8; 1500];
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                            let _ = socket.send_to(&buf[..n], peer);
                        }
                    }
                })
                .map_err(|e| format!("cannot start a UDP echo thread: {e}"))?
        };
        Ok(UdpEcho {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
