//! TCP inside namespaces: a server that answers every connection with its name and the
//! peer address it saw, and clients that connect from inside another namespace. Nothing
//! waits a fixed time: connections are retried until a deadline.

use crate::netns::Netns;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use twill_netlink::NetNs;

/// How long one connection attempt (connect, then reading the reply) may take.
pub const ATTEMPT: Duration = Duration::from_secs(1);

/// A TCP listener inside a namespace, served by a thread: every connection gets one
/// line `<name> <peer ip>:<peer port>` and is closed. Stopped (and its thread joined)
/// on drop.
pub struct TcpServer {
    pub name: String,
    /// The bound address (the real port when bound to port 0).
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpServer {
    /// Binds `bind` inside `ns` (the socket stays in that namespace) and starts serving.
    pub fn start(ns: &Netns, name: &str, bind: SocketAddr) -> Result<TcpServer, String> {
        let listener = in_ns(ns, move || TcpListener::bind(bind))?
            .map_err(|e| format!("bind {bind} in {}: {e}", ns.name()))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("local address of the listener in {}: {e}", ns.name()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("nonblocking listener: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            let name = name.to_string();
            std::thread::Builder::new()
                .name(format!("tcp-server-{name}"))
                .spawn(move || serve(listener, &name, &stop))
                .map_err(|e| format!("cannot start a server thread: {e}"))?
        };
        Ok(TcpServer {
            name: name.to_string(),
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The accept loop: polls in short slices so that a stop request is seen promptly.
fn serve(listener: TcpListener, name: &str, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, 100) };
        if n <= 0 {
            continue;
        }
        while let Ok((mut stream, peer)) = listener.accept() {
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_write_timeout(Some(ATTEMPT));
            let _ = writeln!(stream, "{name} {peer}");
        }
    }
}

/// What a [`TcpServer`] answered: its name and the peer address it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub server: String,
    pub peer: SocketAddr,
}

/// One connection from inside `from` to `to`, within [`ATTEMPT`] for the connect and
/// again for the reply.
pub fn tcp_ask_once(from: &Netns, to: SocketAddr) -> Result<Reply, String> {
    let text = in_ns(from, move || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&to, ATTEMPT)?;
        s.set_read_timeout(Some(ATTEMPT))?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    })?
    .map_err(|e| format!("{} → {to}: {e}", from.name()))?;
    let mut words = text.split_whitespace();
    match (words.next(), words.next().and_then(|p| p.parse().ok())) {
        (Some(server), Some(peer)) => Ok(Reply {
            server: server.to_string(),
            peer,
        }),
        _ => Err(format!("{} → {to}: unexpected reply {text:?}", from.name())),
    }
}

/// One TCP connect from inside `from` to `to` that must complete within `limit`: the
/// time it took, or the error. A `limit` under one second tells a connection whose
/// first SYN was answered from one that needed a retransmission.
pub fn tcp_connect_within(
    from: &Netns,
    to: SocketAddr,
    limit: Duration,
) -> Result<Duration, String> {
    in_ns(from, move || {
        let started = Instant::now();
        TcpStream::connect_timeout(&to, limit).map(|_| started.elapsed())
    })?
    .map_err(|e| format!("{} → {to}: {e}", from.name()))
}

/// [`tcp_ask_once`] retried until it succeeds or `timeout` passes (the last error then).
pub fn tcp_ask(from: &Netns, to: SocketAddr, timeout: Duration) -> Result<Reply, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let err = match tcp_ask_once(from, to) {
            Ok(reply) => return Ok(reply),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(format!("no answer within {timeout:?}: {err}"));
        }
        // A refused or unreachable attempt fails at once: poll, do not spin.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `f` on a thread inside `ns`.
fn in_ns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    let handle = NetNs::open(Path::new(&ns.path())).map_err(|e| format!("{e}"))?;
    handle.run(f).map_err(|e| format!("{e}"))
}
