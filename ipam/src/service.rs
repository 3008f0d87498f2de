//! The address store served on a unix socket by a long-lived process (the node
//! agent), and the client the plugin uses.
//!
//! A plugin process that opens sled itself pays its recovery on every call:
//! a log scan, a snapshot write and several fsyncs, milliseconds per pod. The
//! service opens the store once and keeps it, with its lock, for as long as it
//! runs. Each connection carries one request line and one reply line (JSON).
//!
//! The client falls back to opening the store itself when no service answers:
//! nodes without an agent, the agent restarting. Every operation is idempotent
//! per owner, so a request cut off by a dying service is simply repeated
//! locally. A service holds `<dir>/served` locked; a local open that finds it
//! held gives up instead of waiting for a lock that is never released.

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};
use twill_conf::{Attachment, PodRange};

use crate::lock::ServedMark;
use crate::{Reservation, Store, StoreError};

/// The longest request line the service reads (GC lists every attachment).
const MAX_REQUEST: u64 = 16 << 20;

/// How long a client waits for the service's reply. Operations take well under
/// a millisecond plus one fsync; this only bounds a service that hangs.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// One operation on the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Op {
    Allocate {
        owner: Attachment,
        ranges: Vec<PodRange>,
    },
    Release {
        owner: Attachment,
    },
    Lookup {
        owner: Attachment,
    },
    Reservations,
    /// Releases every owner not in `keep`.
    Retain {
        keep: Vec<Attachment>,
    },
    Verify,
}

/// What an operation returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    Allocated(Vec<IpNet>),
    Addresses(Vec<IpAddr>),
    Reservations(Vec<Reservation>),
    Verified,
}

impl Outcome {
    /// The addresses of an `Allocate`.
    pub fn allocated(self) -> Result<Vec<IpNet>, StoreError> {
        match self {
            Outcome::Allocated(a) => Ok(a),
            other => Err(other.unexpected()),
        }
    }

    /// The addresses of a `Release` or `Lookup`.
    pub fn addresses(self) -> Result<Vec<IpAddr>, StoreError> {
        match self {
            Outcome::Addresses(a) => Ok(a),
            other => Err(other.unexpected()),
        }
    }

    /// The reservations of `Reservations` or `Retain`.
    pub fn reservations(self) -> Result<Vec<Reservation>, StoreError> {
        match self {
            Outcome::Reservations(r) => Ok(r),
            other => Err(other.unexpected()),
        }
    }

    fn unexpected(self) -> StoreError {
        StoreError::Service(format!("unexpected reply {self:?}"))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    dir: PathBuf,
    #[serde(flatten)]
    op: Op,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Reply {
    Ok(Outcome),
    /// The service serves another directory: the client opens its own.
    NotServed {
        served: PathBuf,
    },
    Exhausted {
        subnet: IpNet,
        in_use: u128,
        usable: u128,
    },
    InvalidRange(String),
    Failed(String),
}

impl Store {
    /// Runs one operation.
    pub fn apply(&self, op: &Op) -> Result<Outcome, StoreError> {
        Ok(match op {
            Op::Allocate { owner, ranges } => Outcome::Allocated(self.allocate(owner, ranges)?),
            Op::Release { owner } => Outcome::Addresses(self.release(owner)?),
            Op::Lookup { owner } => Outcome::Addresses(self.lookup(owner)?),
            Op::Reservations => Outcome::Reservations(self.reservations()?),
            Op::Retain { keep } => {
                let keep: HashSet<&Attachment> = keep.iter().collect();
                Outcome::Reservations(self.retain(|o| keep.contains(o))?)
            }
            Op::Verify => {
                self.verify()?;
                Outcome::Verified
            }
        })
    }
}

/// Serves one store directory on one socket.
pub struct StoreService {
    store: Arc<Store>,
    dir: PathBuf,
    listener: UnixListener,
    socket: PathBuf,
    _served: ServedMark,
}

impl StoreService {
    /// Opens the store in `dir` (waiting for plugin processes that hold it), binds
    /// `socket` (replacing a stale one, mode 0600), then marks the store served.
    /// Binding before marking means a plugin that sees the mark can connect.
    pub fn start(dir: &Path, socket: &Path) -> Result<StoreService, StoreError> {
        let store = Store::open(dir)?;
        let dir = dir.canonicalize().map_err(|source| StoreError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let io_err = |source| StoreError::Io {
            path: socket.to_owned(),
            source,
        };
        if let Some(parent) = socket.parent() {
            std::fs::create_dir_all(parent).map_err(io_err)?;
        }
        match std::fs::remove_file(socket) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
        let listener = UnixListener::bind(socket).map_err(io_err)?;
        std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(io_err)?;
        let served = ServedMark::take(&dir)?;
        info!(dir = %dir.display(), socket = %socket.display(), "serving the address store");
        Ok(StoreService {
            store: Arc::new(store),
            dir,
            listener,
            socket: socket.to_owned(),
            _served: served,
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Accepts connections until the listener fails; one thread per connection
    /// (the store serializes the operations itself).
    pub fn serve(self) -> io::Error {
        let this = Arc::new(self);
        for conn in this.listener.incoming() {
            match conn {
                Ok(stream) => {
                    let this = Arc::clone(&this);
                    std::thread::spawn(move || {
                        if let Err(e) = this.handle(stream) {
                            debug!(error = %e, "store client went away");
                        }
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_transient_accept_error(&e) => {
                    warn!(error = %e, "store socket: accept failed; going on");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return e,
            }
        }
        io::Error::other("store socket listener ended")
    }

    fn handle(&self, stream: UnixStream) -> io::Result<()> {
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        let mut line = Vec::new();
        BufReader::new(io::Read::take(&stream, MAX_REQUEST)).read_until(b'\n', &mut line)?;
        let reply = match serde_json::from_slice::<Request>(&line) {
            Err(e) => Reply::Failed(format!("undecodable request: {e}")),
            Ok(req) => self.reply(req),
        };
        let mut out = serde_json::to_vec(&reply).map_err(io::Error::other)?;
        out.push(b'\n');
        (&stream).write_all(&out)
    }

    fn reply(&self, req: Request) -> Reply {
        let same_dir = req
            .dir
            .canonicalize()
            .map(|d| d == self.dir)
            .unwrap_or(false);
        if !same_dir {
            return Reply::NotServed {
                served: self.dir.clone(),
            };
        }
        match self.store.apply(&req.op) {
            Ok(outcome) => Reply::Ok(outcome),
            Err(StoreError::Exhausted {
                subnet,
                in_use,
                usable,
            }) => Reply::Exhausted {
                subnet,
                in_use,
                usable,
            },
            Err(StoreError::InvalidRange(r)) => Reply::InvalidRange(r),
            Err(e) => {
                warn!(error = %e, op = ?req.op, "address store operation failed");
                Reply::Failed(e.to_string())
            }
        }
    }
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::ECONNABORTED)
    )
}

/// The store of one directory, through the service when one answers on
/// `socket`, else opened in this process.
#[derive(Debug, Clone)]
pub struct StoreClient {
    dir: PathBuf,
    socket: Option<PathBuf>,
}

/// Why the service did not answer a request.
enum Unanswered {
    /// Nobody listens (no agent, or a stale socket): open the store locally.
    NoService,
    /// The service serves another directory.
    NotServed,
    /// The connection broke or timed out mid-request.
    Broken(io::Error),
}

impl StoreClient {
    pub fn new(dir: impl Into<PathBuf>, socket: Option<PathBuf>) -> StoreClient {
        StoreClient {
            dir: dir.into(),
            socket,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn run(&self, op: &Op) -> Result<Outcome, StoreError> {
        self.begin(op.clone()).finish()
    }

    /// Sends `op` to the service, if one listens, and returns at once: the caller
    /// does other work while the service runs it, then calls [`Pending::finish`].
    pub fn begin(&self, op: Op) -> Pending<'_> {
        let sent = match &self.socket {
            None => Err(Unanswered::NoService),
            Some(socket) => self.send(socket, &op),
        };
        Pending {
            client: self,
            op,
            sent,
        }
    }

    fn send(&self, socket: &Path, op: &Op) -> Result<UnixStream, Unanswered> {
        let stream = match UnixStream::connect(socket) {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(Unanswered::NoService)
            }
            Err(e) => return Err(Unanswered::Broken(e)),
        };
        let broken = Unanswered::Broken;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(broken)?;
        stream
            .set_write_timeout(Some(REPLY_TIMEOUT))
            .map_err(broken)?;
        let mut req = serde_json::to_vec(&Request {
            dir: self.dir.clone(),
            op: op.clone(),
        })
        .map_err(|e| broken(io::Error::other(e)))?;
        req.push(b'\n');
        (&stream).write_all(&req).map_err(broken)?;
        Ok(stream)
    }

    fn receive(&self, stream: UnixStream) -> Result<Result<Outcome, StoreError>, Unanswered> {
        let broken = Unanswered::Broken;
        let mut line = Vec::new();
        BufReader::new(&stream)
            .read_until(b'\n', &mut line)
            .map_err(broken)?;
        if line.is_empty() {
            return Err(broken(io::Error::from(io::ErrorKind::UnexpectedEof)));
        }
        let reply: Reply = serde_json::from_slice(&line)
            .map_err(|e| broken(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        Ok(match reply {
            Reply::Ok(outcome) => Ok(outcome),
            Reply::NotServed { served } => {
                debug!(ours = %self.dir.display(), served = %served.display(), "the store service serves another directory");
                return Err(Unanswered::NotServed);
            }
            Reply::Exhausted {
                subnet,
                in_use,
                usable,
            } => Err(StoreError::Exhausted {
                subnet,
                in_use,
                usable,
            }),
            Reply::InvalidRange(r) => Err(StoreError::InvalidRange(r)),
            Reply::Failed(msg) => Err(StoreError::Service(msg)),
        })
    }

    fn remote(&self, socket: &Path, op: &Op) -> Result<Result<Outcome, StoreError>, Unanswered> {
        let stream = self.send(socket, op)?;
        self.receive(stream)
    }

    pub fn allocate(
        &self,
        owner: &Attachment,
        ranges: &[PodRange],
    ) -> Result<Vec<IpNet>, StoreError> {
        self.run(&Op::Allocate {
            owner: owner.clone(),
            ranges: ranges.to_vec(),
        })?
        .allocated()
    }

    pub fn release(&self, owner: &Attachment) -> Result<Vec<IpAddr>, StoreError> {
        let owner = owner.clone();
        self.run(&Op::Release { owner })?.addresses()
    }

    pub fn lookup(&self, owner: &Attachment) -> Result<Vec<IpAddr>, StoreError> {
        let owner = owner.clone();
        self.run(&Op::Lookup { owner })?.addresses()
    }

    pub fn reservations(&self) -> Result<Vec<Reservation>, StoreError> {
        self.run(&Op::Reservations)?.reservations()
    }

    /// Releases every owner not in `keep`; returns what was released.
    pub fn retain(&self, keep: Vec<Attachment>) -> Result<Vec<Reservation>, StoreError> {
        self.run(&Op::Retain { keep })?.reservations()
    }

    pub fn verify(&self) -> Result<(), StoreError> {
        match self.run(&Op::Verify)? {
            Outcome::Verified => Ok(()),
            other => Err(other.unexpected()),
        }
    }
}

/// An operation begun with [`StoreClient::begin`].
pub struct Pending<'a> {
    client: &'a StoreClient,
    op: Op,
    sent: Result<UnixStream, Unanswered>,
}

impl Pending<'_> {
    /// Whether the request went to a service (else `finish` opens the store here).
    pub fn is_sent(&self) -> bool {
        self.sent.is_ok()
    }

    /// The service's answer; or, when no service took the request, the operation
    /// run on the store opened in this process.
    pub fn finish(self) -> Result<Outcome, StoreError> {
        let Pending { client, op, sent } = self;
        let mut broken = false;
        let unanswered = match sent.and_then(|stream| client.receive(stream)) {
            Ok(r) => return r,
            Err(u) => u,
        };
        if let Unanswered::Broken(e) = unanswered {
            // Idempotent per owner: repeating it locally is safe, and the local
            // open tells whether the service still holds the store.
            warn!(dir = %client.dir.display(), error = %e, "store service did not answer; trying locally");
            broken = true;
        }
        match Store::open_unless_served(&client.dir) {
            Ok(store) => store.apply(&op),
            // The service took the store while we waited for the lock.
            Err(StoreError::Served { dir }) => match (&client.socket, broken) {
                (Some(socket), false) => client
                    .remote(socket, &op)
                    .unwrap_or(Err(StoreError::Served { dir })),
                _ => Err(StoreError::Served { dir }),
            },
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    fn range(cidr: &str, gw: &str) -> PodRange {
        PodRange {
            subnet: cidr.parse().expect("literal"),
            gateway: gw.parse().expect("literal"),
        }
    }

    fn owner(id: &str) -> Attachment {
        Attachment {
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    fn serve(dir: &Path, socket: &Path) {
        let service = StoreService::start(dir, socket).expect("service starts");
        std::thread::spawn(move || service.serve());
    }

    #[test]
    fn the_service_answers_every_operation() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (dir, socket) = (tmp.path().join("store"), tmp.path().join("s.sock"));
        serve(&dir, &socket);
        let client = StoreClient::new(&dir, Some(socket));
        let r = [range("10.9.0.0/24", "10.9.0.1")];

        let a = client.allocate(&owner("a"), &r).expect("allocate a");
        assert_eq!(a, vec!["10.9.0.2/24".parse::<IpNet>().expect("literal")]);
        assert_eq!(client.allocate(&owner("a"), &r).expect("again"), a);
        let b = client.allocate(&owner("b"), &r).expect("allocate b");
        assert_ne!(a, b);
        assert_eq!(
            client.lookup(&owner("b")).expect("lookup"),
            vec![b[0].addr()]
        );
        assert_eq!(client.reservations().expect("list").len(), 2);
        client.verify().expect("verify");
        let released = client.retain(vec![owner("a")]).expect("retain");
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].owner, owner("b"));
        assert_eq!(
            client.release(&owner("a")).expect("release"),
            vec![a[0].addr()]
        );
        assert!(client.reservations().expect("list").is_empty());
        // The service holds the store: a process opening it itself gives up at once.
        let start = Instant::now();
        assert!(matches!(
            Store::open_unless_served(&dir),
            Err(StoreError::Served { .. })
        ));
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn errors_cross_the_socket_typed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (dir, socket) = (tmp.path().join("store"), tmp.path().join("s.sock"));
        serve(&dir, &socket);
        let client = StoreClient::new(&dir, Some(socket));
        let r = [range("10.9.0.0/30", "10.9.0.1")];
        client
            .allocate(&owner("a"), &r)
            .expect("the one usable address");
        match client.allocate(&owner("b"), &r) {
            Err(StoreError::Exhausted {
                subnet,
                in_use,
                usable,
            }) => {
                assert_eq!(subnet.to_string(), "10.9.0.0/30");
                assert_eq!((in_use, usable), (1, 1));
            }
            other => panic!("expected Exhausted, got {other:?}"),
        }
        let bad = [range("10.9.0.0/24", "10.8.0.1")];
        assert!(matches!(
            client.allocate(&owner("c"), &bad),
            Err(StoreError::InvalidRange(_))
        ));
    }

    #[test]
    fn without_a_service_the_client_opens_the_store_itself() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("store");
        let r = [range("10.9.0.0/24", "10.9.0.1")];
        // No socket file at all.
        let none = StoreClient::new(&dir, Some(tmp.path().join("missing.sock")));
        none.allocate(&owner("a"), &r).expect("local allocate");
        // A stale socket file: nobody listens on it.
        let stale = tmp.path().join("stale.sock");
        drop(UnixListener::bind(&stale).expect("bind"));
        let client = StoreClient::new(&dir, Some(stale));
        assert_eq!(client.reservations().expect("local list").len(), 1);
    }

    #[test]
    fn a_service_for_another_directory_is_not_used() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let socket = tmp.path().join("s.sock");
        serve(&tmp.path().join("served"), &socket);
        let other = tmp.path().join("other");
        let client = StoreClient::new(&other, Some(socket.clone()));
        let r = [range("10.9.0.0/24", "10.9.0.1")];
        client.allocate(&owner("a"), &r).expect("local allocate");
        // It went to `other`, not to the served store.
        let served = StoreClient::new(tmp.path().join("served"), Some(socket));
        assert!(served.reservations().expect("served list").is_empty());
        drop(client);
        let local = Store::open(&other).expect("open other");
        assert_eq!(local.reservations().expect("list").len(), 1);
    }

    /// A plugin waiting for the store lock while the agent starts up: whichever
    /// gets the lock first, the plugin's request is served once, never lost and
    /// never stuck behind a lock the service keeps.
    #[test]
    fn a_client_waiting_for_the_lock_moves_to_a_service_that_starts_meanwhile() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (dir, socket) = (tmp.path().join("store"), tmp.path().join("s.sock"));
        let held = Store::open(&dir).expect("hold the store");

        let (tx, rx) = mpsc::channel();
        let client = StoreClient::new(&dir, Some(socket.clone()));
        std::thread::spawn(move || {
            let r = [range("10.9.0.0/24", "10.9.0.1")];
            let _ = tx.send(client.allocate(&owner("waiter"), &r));
        });
        let (dir2, socket2) = (dir.clone(), socket.clone());
        let service = std::thread::spawn(move || {
            StoreService::start(&dir2, &socket2)
                .expect("service starts")
                .serve()
        });
        // Both wait for the lock now; let them race for it.
        std::thread::sleep(Duration::from_millis(100));
        assert!(rx.try_recv().is_err(), "the client must wait for the lock");
        drop(held);

        let got = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the waiting client finishes")
            .expect("and gets an address");
        assert_eq!(got.len(), 1);
        let via_service = StoreClient::new(&dir, Some(socket));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !crate::lock::is_served(&dir) {
            assert!(Instant::now() < deadline, "the service never started");
            assert!(!service.is_finished(), "the service thread ended");
            std::thread::sleep(Duration::from_millis(10));
        }
        let all = via_service.reservations().expect("list via the service");
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].owner, owner("waiter"));
        assert_eq!(all[0].address, got[0].addr());
    }
}
