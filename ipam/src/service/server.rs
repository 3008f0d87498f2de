//! The service side: one store, opened once, served on a unix socket.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use super::{AdmissionHook, NodeHealth, Op, Outcome, Reply, Request, MAX_REQUEST, REPLY_TIMEOUT};
use crate::lock::ServedMark;
use crate::{PodPorts, Rebuilt, Store, StoreError};

/// Serves one store directory on one socket.
pub struct StoreService {
    store: Arc<Store>,
    dir: PathBuf,
    listener: UnixListener,
    socket: PathBuf,
    admission: Option<Arc<dyn AdmissionHook>>,
    health: Option<Arc<dyn NodeHealth>>,
    _served: ServedMark,
}

impl StoreService {
    /// Opens the store in `dir` (waiting for plugin processes that hold it), binds
    /// `socket` (replacing a stale one, mode 0600), then marks the store served.
    /// Binding before marking means a plugin that sees the mark can connect.
    pub fn start(dir: &Path, socket: &Path) -> Result<StoreService, StoreError> {
        Self::serving(Store::open(dir)?, dir, socket)
    }

    /// Like [`StoreService::start`], but a store that is missing, unreadable or
    /// inconsistent is moved aside and rebuilt from `ports` first; says what was rebuilt.
    pub fn start_rebuilding(
        dir: &Path,
        socket: &Path,
        ports: &dyn PodPorts,
    ) -> Result<(StoreService, Option<Rebuilt>), StoreError> {
        let (store, rebuilt) = Store::open_or_rebuild(dir, ports)?;
        if let Some(r) = &rebuilt {
            r.log(dir);
        }
        Ok((Self::serving(store, dir, socket)?, rebuilt))
    }

    fn serving(store: Store, dir: &Path, socket: &Path) -> Result<StoreService, StoreError> {
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
            admission: None,
            health: None,
            _served: served,
        })
    }

    /// Serves `Admit` through `hook` and tells it of every release; without a hook an
    /// admission is answered "not enforced".
    pub fn with_admission(mut self, hook: Arc<dyn AdmissionHook>) -> StoreService {
        self.admission = Some(hook);
        self
    }

    /// Answers `Verify` with the node's problem when `health` has one.
    pub fn with_health(mut self, health: Arc<dyn NodeHealth>) -> StoreService {
        self.health = Some(health);
        self
    }

    /// Every reservation of the served store.
    pub fn reservations(&self) -> Result<Vec<crate::Reservation>, StoreError> {
        self.store.reservations()
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
        if let (Op::Admit(admission), Some(hook)) = (&req.op, &self.admission) {
            return match hook.admit(admission) {
                Ok(()) => Reply::Ok(Outcome::Admitted { enforced: true }),
                Err(e) => Reply::Failed(e),
            };
        }
        if let (Op::Verify, Some(health)) = (&req.op, &self.health) {
            if let Some(why) = health.not_ready() {
                return Reply::Failed(format!("the node is not ready: {why}"));
            }
        }
        match self.store.apply(&req.op) {
            Ok(outcome) => {
                self.tell_released(&req.op, &outcome);
                Reply::Ok(outcome)
            }
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

impl StoreService {
    fn tell_released(&self, op: &Op, outcome: &Outcome) {
        let Some(hook) = &self.admission else { return };
        match (op, outcome) {
            (Op::Release { owner }, _) => hook.released(owner),
            (Op::Retain { .. }, Outcome::Reservations(released)) => {
                for r in released {
                    hook.released(&r.owner);
                }
            }
            _ => {}
        }
    }
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::ECONNABORTED)
    )
}
