//! The client side: the service when it answers, else the store opened here.

use std::io::{self, BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;
use tracing::{debug, warn};
use twill_conf::{Attachment, PodRange};

use super::{Admission, Op, Outcome, Reply, Request, REPLY_TIMEOUT};
use crate::{PodPorts, Reservation, Store, StoreError};

/// The store of one directory, through the service when one answers on
/// `socket`, else opened in this process.
#[derive(Debug, Clone)]
pub struct StoreClient {
    dir: PathBuf,
    socket: Option<PathBuf>,
    /// Where a store opened here is rebuilt from when it is lost or damaged.
    ports: Option<Arc<dyn PodPorts>>,
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
            ports: None,
        }
    }

    /// A store this client opens itself and finds missing, unreadable or inconsistent is
    /// moved aside and rebuilt from `ports` (see [`Store::open_or_rebuild`]).
    pub fn rebuilding_from(mut self, ports: Arc<dyn PodPorts>) -> StoreClient {
        self.ports = Some(ports);
        self
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

    /// Whether the pod's rules are in force (false: nobody enforces NetworkPolicy here,
    /// or the service did not take the request).
    pub fn admit(&self, admission: Admission) -> Result<bool, StoreError> {
        match self.run(&Op::Admit(admission))? {
            Outcome::Admitted { enforced } => Ok(enforced),
            other => Err(other.unexpected()),
        }
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
        let opened = match &client.ports {
            Some(ports) => Store::open_unless_served_or_rebuild(&client.dir, ports.as_ref()).map(
                |(store, rebuilt)| {
                    if let Some(r) = rebuilt {
                        r.log(&client.dir);
                    }
                    store
                },
            ),
            None => Store::open_unless_served(&client.dir),
        };
        match opened {
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
