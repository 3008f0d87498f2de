//! The netlink connection, and the two ways every operation of the crate talks over it:
//! [`Netlink::request`] (one object changed, or one read) and [`Netlink::dump`].
//!
//! The agent runs thousands of operations concurrently on one connection. Two limits of
//! the connection apply to all of them: at most [`MAX_IN_FLIGHT`] requests are in flight
//! (more would lose kernel answers), and dumps take turns (the kernel answers EBUSY to a
//! second dump on the same socket).

use crate::error::{found, Context, NetlinkError, Result};
use crate::netns::NetNs;
use futures::StreamExt;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::packet_route::neighbour::NeighbourMessage;
use rtnetlink::packet_route::route::RouteMessage;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::Handle;
use std::sync::Arc;
use tokio::sync::{Mutex, Semaphore, SemaphorePermit};

/// Requests of ours in flight on one socket at most. The kernel queues every answer in
/// the socket's receive buffer (an ACK takes ~1 KiB of it) and drops what does not fit;
/// netlink-proto then waits forever for the dropped answer. It writes requests as they
/// come and reads answers only when the runtime reports the socket readable, so on a
/// busy runtime hundreds of answers can pile up unread: 2,000-5,000 concurrent callers
/// with the default 208 KiB buffer hung about one run in three (the socket's `Drops` in
/// /proc/net/netlink counted the lost answers). Waiting for a slot here keeps the unread
/// answers well within even the default buffer.
const MAX_IN_FLIGHT: usize = 128;

/// Receive buffer asked for (best effort; SO_RCVBUFFORCE needs CAP_NET_ADMIN, otherwise
/// net.core.rmem_max caps it). Room for dump batches next to MAX_IN_FLIGHT answers.
const RCVBUF: libc::c_int = 4 << 20;

/// A netlink connection bound to one network namespace. Clones share the socket.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
    limits: Arc<Limits>,
}

struct Limits {
    in_flight: Semaphore,
    /// The kernel runs one dump at a time per socket and answers EBUSY to a second.
    dump: Mutex<()>,
}

/// What a request asks of the kernel; it decides the request's header flags.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ask {
    /// Create the object; EEXIST if it exists.
    Create,
    /// Create the object, or replace the one that exists.
    Replace,
    /// Change (or delete) an existing object.
    Change,
    /// Read one object: the answer is the object, there is no ACK.
    Get,
}

impl Ask {
    fn flags(self) -> u16 {
        match self {
            Ask::Create => NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            Ask::Replace => NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            Ask::Change => NLM_F_REQUEST | NLM_F_ACK,
            Ask::Get => NLM_F_REQUEST,
        }
    }
}

/// A kind of object the kernel answers with (RTM_NEW* of a dump or a get).
pub(crate) trait Answer: Sized {
    fn from_answer(m: RouteNetlinkMessage) -> Option<Self>;
}

macro_rules! answers {
    ($($ty:ty => $variant:ident),* $(,)?) => {$(
        impl Answer for $ty {
            fn from_answer(m: RouteNetlinkMessage) -> Option<Self> {
                match m {
                    RouteNetlinkMessage::$variant(x) => Some(x),
                    _ => None,
                }
            }
        }
    )*};
}

answers!(
    LinkMessage => NewLink,
    AddressMessage => NewAddress,
    RouteMessage => NewRoute,
    NeighbourMessage => NewNeighbour,
);

impl Netlink {
    fn new(mut conn: rtnetlink::proto::Connection<RouteNetlinkMessage>, handle: Handle) -> Self {
        use rtnetlink::sys::AsyncSocket;
        let fd = std::os::fd::AsRawFd::as_raw_fd(conn.socket_mut().socket_ref());
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            // SAFETY: setsockopt on an open socket with a c_int option value.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&RCVBUF as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                break;
            }
        }
        tokio::spawn(conn);
        Netlink {
            handle,
            limits: Arc::new(Limits {
                in_flight: Semaphore::new(MAX_IN_FLIGHT),
                dump: Mutex::new(()),
            }),
        }
    }

    /// Connects in the calling thread's namespace. Needs a tokio runtime context.
    pub fn connect() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        Ok(Netlink::new(conn, handle))
    }

    /// Connects in `ns`: the socket is opened by a thread inside `ns` and stays bound
    /// to it. Needs a tokio runtime context.
    pub fn connect_in(ns: &NetNs) -> Result<Self> {
        Self::connect_in_with(ns, || ()).map(|(nl, ())| nl)
    }

    /// Like [`Netlink::connect_in`], and runs `f` on the thread inside `ns` first (for
    /// namespace-local work such as sysctls), saving a second thread.
    pub fn connect_in_with<T: Send>(ns: &NetNs, f: impl FnOnce() -> T + Send) -> Result<(Self, T)> {
        let rt = tokio::runtime::Handle::current();
        let (socket, out) = ns.run(move || {
            let out = f();
            let _guard = rt.enter();
            (rtnetlink::new_connection(), out)
        })?;
        let (conn, handle, _) = socket.map_err(NetlinkError::Socket)?;
        Ok((Netlink::new(conn, handle), out))
    }

    /// Like [`Netlink::connect_in_with`], on the calling thread, which enters `ns` and
    /// comes back ([`NetNs::run_here`]). For single-threaded callers (the plugin).
    pub fn connect_in_here_with<T>(ns: &NetNs, f: impl FnOnce() -> T) -> Result<(Self, T)> {
        let (socket, out) = ns.run_here(|| {
            let out = f();
            (rtnetlink::new_connection(), out)
        })?;
        let (conn, handle, _) = socket.map_err(NetlinkError::Socket)?;
        Ok((Netlink::new(conn, handle), out))
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Sends one request, once an in-flight slot is free, and reads its answer: none
    /// for a change (the kernel's ACK), the object for an [`Ask::Get`].
    pub(crate) async fn request(
        &self,
        ask: Ask,
        msg: RouteNetlinkMessage,
        op: impl FnOnce() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let _slot = self.slot().await;
        self.exchange(msg, ask.flags()).await.op(op)
    }

    /// A [`Netlink::request`] that changes something: its answer is the ACK.
    pub(crate) async fn change(
        &self,
        ask: Ask,
        msg: RouteNetlinkMessage,
        op: impl FnOnce() -> String,
    ) -> Result<()> {
        self.request(ask, msg, op).await.map(drop)
    }

    /// Deletes what `msg` names; `Ok(false)` when it was already gone.
    pub(crate) async fn delete(
        &self,
        msg: RouteNetlinkMessage,
        op: impl FnOnce() -> String,
    ) -> Result<bool> {
        let answer = found(self.request(Ask::Change, msg, op).await)?;
        Ok(answer.is_some())
    }

    /// Dumps the objects `query` asks for, in the socket's dump turn, and reads them
    /// all.
    pub(crate) async fn dump<T: Answer>(
        &self,
        query: RouteNetlinkMessage,
        op: impl FnOnce() -> String,
    ) -> Result<Vec<T>> {
        let _turn = self.limits.dump.lock().await;
        let _slot = self.slot().await;
        let answers = self
            .exchange(query, NLM_F_REQUEST | NLM_F_DUMP)
            .await
            .op(op)?;
        Ok(answers.into_iter().filter_map(T::from_answer).collect())
    }

    /// Waits for an in-flight slot; hold it until the request's answer is read. Never
    /// take a second one while holding one.
    async fn slot(&self) -> SemaphorePermit<'_> {
        self.limits
            .in_flight
            .acquire()
            .await
            .expect("the semaphore is never closed")
    }

    /// The answers to `msg`, up to the kernel's ACK, DONE or first error.
    async fn exchange(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, rtnetlink::Error> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = flags;
        let mut answers = self.handle.clone().request(req)?;
        let mut out = Vec::new();
        while let Some(answer) = answers.next().await {
            let (header, payload) = answer.into_parts();
            match payload {
                NetlinkPayload::InnerMessage(m) => out.push(m),
                NetlinkPayload::Error(e) => return Err(rtnetlink::Error::NetlinkError(e)),
                other => {
                    return Err(rtnetlink::Error::UnexpectedMessage(NetlinkMessage::new(
                        header, other,
                    )))
                }
            }
        }
        Ok(out)
    }
}
