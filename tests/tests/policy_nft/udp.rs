//! UDP inside namespaces: an echo server, and a client that says whether its datagram
//! came back in time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use twill_netlink::NetNs;
use twill_tests::Netns;

fn in_ns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    NetNs::open(Path::new(&ns.path()))
        .and_then(|handle| handle.run(f))
        .unwrap_or_else(|e| panic!("cannot enter {}: {e}", ns.name()))
}

/// Echoes every datagram to its sender; stopped (and joined) on drop.
pub struct UdpEcho {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    pub fn start(ns: &Netns, bind: SocketAddr) -> UdpEcho {
        let socket = in_ns(ns, move || UdpSocket::bind(bind))
            .unwrap_or_else(|e| panic!("bind UDP {bind} in {}: {e}", ns.name()));
        // Short reads so that a stop request is seen promptly.
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("UDP read timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                        let _ = socket.send_to(&buf[..n], peer);
                    }
                }
            })
        };
        UdpEcho {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Whether one datagram from inside `from` to `to` is echoed within `limit`.
pub fn udp_echoed(from: &Netns, to: SocketAddr, limit: Duration) -> bool {
    in_ns(from, move || -> std::io::Result<bool> {
        let any = match to.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let socket = UdpSocket::bind(SocketAddr::new(any, 0))?;
        socket.set_read_timeout(Some(limit))?;
        socket.send_to(b"twill", to)?;
        let mut buf = [0u8; 64];
        let (n, peer) = socket.recv_from(&mut buf)?;
        Ok(peer == to && &buf[..n] == b"twill")
    })
    .unwrap_or(false)
}
