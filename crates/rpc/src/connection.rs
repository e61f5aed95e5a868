//! The client side of the RPC: one [`RpcClient`] per thread (it owns that thread's UCX
//! worker) and one [`Connection`] per server.
//!
//! **Invariant:** every call ends within the RPC timeout and about 40 ms (see
//! `watch.rs`): with a reply, an error status, a transport error, or `Timeout`. A reply
//! that comes after its call gave up is dropped.

use foldhash::HashMap;
use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use benchfs_proto::frame::FRAME_HEADER_LEN;
use benchfs_proto::ops::{Auth, AuthRequest, Hello, HelloReply, HelloRequest};
use benchfs_proto::{Frame, Message, OpCode, Rpc, Status};
use benchfs_ucx::limits::IDLE_POLLS_PER_TURN;
use benchfs_ucx::{AmMessage, AmProto, AmStream, Context, Endpoint, LentMut, Worker};
use tokio::sync::Semaphore;

use super::{OutPayload, RpcError, CLIENT_QUEUE_MAX, REPLY_AM_ID, REQUEST_AM_ID};
use crate::clock::ServerClock;
use crate::watch::{check_calls, CallWatch, Verdict};

/// Settings of an [`RpcClient`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How long a call waits for its reply.
    pub rpc_timeout: Duration,
    /// Payloads above this go by rendezvous.
    pub rdma_threshold: usize,
    /// Busy-poll window of the progress task.
    pub busy_poll: Duration,
    /// Most calls in flight on one connection.
    pub inflight_max: usize,
    /// The job secret the handshake proves (it is never sent).
    pub secret: Vec<u8>,
    /// The name this client gives in the handshake.
    pub name: String,
}

/// Progress calls a lone call makes itself while it waits for its reply, about two
/// microseconds over shared memory (see [`Connection::wait_reply`]).
const REPLY_POLLS: u32 = 64;
/// Payload buffers kept for reuse, at most.
const SPARE_PAYLOADS_MAX: usize = 32;
/// Largest payload buffer kept for reuse (one chunk of the largest chunk size).
const SPARE_PAYLOAD_BYTES_MAX: usize = 64 << 20;

/// A thread's RPC endpoint: its UCX worker, reply queue and calls in flight.
pub struct RpcClient {
    worker: Rc<Worker>,
    /// Replies the router gave back, drained by [`route_replies`].
    replies: AmStream,
    pending: RefCell<HashMap<u64, Waiting>>,
    /// Buffers of sent payloads, reused so that a large write does not fault in fresh
    /// pages every time.
    spare_payloads: RefCell<Vec<Vec<u8>>>,
    next_id: Cell<u64>,
    /// Deadlines and connection failures of the calls in flight.
    watch: Rc<CallWatch>,
    options: ClientOptions,
}

/// A call in flight: its reply once it came, and the call's waker until then.
#[derive(Default)]
struct Waiting {
    reply: Option<AmMessage>,
    waker: Option<Waker>,
}

impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient")
            .field("pending", &self.pending.borrow().len())
            .finish()
    }
}

impl Drop for RpcClient {
    fn drop(&mut self) {
        self.worker.stop_progress();
    }
}

impl RpcClient {
    /// Creates the worker and starts its progress and reply tasks. Call inside a tokio
    /// `LocalSet` on a current-thread runtime.
    pub fn start(
        context: &Arc<Context>,
        options: ClientOptions,
    ) -> Result<Rc<RpcClient>, benchfs_ucx::UcxError> {
        let worker = Worker::new(context)?;
        let replies = worker.set_am_handler(REPLY_AM_ID, CLIENT_QUEUE_MAX)?;
        let progress = Rc::clone(&worker).run_progress(options.busy_poll);
        // Out of tokio's cooperative budget, whose forced yields can be lost when a call's
        // `block_on` returns (see `benchfs_ucx::block_on`).
        tokio::task::spawn_local(tokio::task::unconstrained(async move {
            if let Err(e) = progress.await {
                tracing::error!(error = %e, "client progress loop failed");
            }
        }));
        let client = Rc::new(RpcClient {
            worker,
            replies,
            pending: RefCell::default(),
            spare_payloads: RefCell::default(),
            next_id: Cell::new(1),
            watch: Rc::default(),
            options,
        });
        tokio::task::spawn_local(tokio::task::unconstrained(check_calls(Rc::downgrade(
            &client.watch,
        ))));
        let routed_to = Rc::downgrade(&client);
        client
            .replies
            .set_router(Box::new(move |msg| hand_over(&routed_to, msg)));
        tokio::task::spawn_local(tokio::task::unconstrained(route_replies(Rc::downgrade(
            &client,
        ))));
        Ok(client)
    }

    /// A payload holding a copy of `data`, in the buffer of an earlier call when one is
    /// spare.
    pub fn payload(&self, data: &[u8]) -> OutPayload {
        let mut buf = self.spare_payloads.borrow_mut().pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(data);
        OutPayload::Owned(buf)
    }

    fn recycle(&self, payload: OutPayload) {
        if let OutPayload::Owned(buf) = payload {
            self.recycle_buffer(buf);
        }
    }

    /// Keeps `buf`, the payload of a reply its caller is done with, for a later call: a
    /// read that receives into a fresh buffer faults in its pages every time (the
    /// server's shared-memory copy then pays for clearing them).
    pub fn recycle_buffer(&self, buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > SPARE_PAYLOAD_BYTES_MAX {
            return;
        }
        let mut spare = self.spare_payloads.borrow_mut();
        if spare.len() < SPARE_PAYLOADS_MAX {
            spare.push(buf);
        }
    }

    /// A buffer of `len` bytes to receive a reply into: a spare one when there is one,
    /// its bytes left as they are (the receive overwrites all `len`).
    fn reply_buffer(&self, len: usize) -> Vec<u8> {
        let mut buf = {
            let mut spare = self.spare_payloads.borrow_mut();
            match spare.iter().rposition(|b| b.capacity() >= len) {
                Some(i) => spare.swap_remove(i),
                None => spare.pop().unwrap_or_default(),
            }
        };
        if buf.len() < len {
            buf.resize(len, 0);
        }
        buf.truncate(len);
        buf
    }

    /// Gives `msg` to call `id` and wakes it; gives it back when no call `id` waits for a
    /// reply (it gave up, or had one), or when the table is in use (inside a progress call
    /// made with it borrowed; the routing task delivers it then).
    fn deliver(&self, id: u64, msg: AmMessage) -> Option<AmMessage> {
        let waker = {
            let Ok(mut pending) = self.pending.try_borrow_mut() else {
                return Some(msg);
            };
            match pending.get_mut(&id) {
                Some(waiting) if waiting.reply.is_none() => {
                    waiting.reply = Some(msg);
                    waiting.waker.take()
                }
                _ => return Some(msg),
            }
        };
        waker.into_iter().for_each(Waker::wake);
        None
    }

    /// Call `id`'s reply, if it came; else keeps `cx`'s waker for it. `None` as well for a
    /// call not in the table.
    fn poll_reply(&self, id: u64, cx: Option<&mut TaskContext<'_>>) -> Poll<Option<AmMessage>> {
        let mut pending = self.pending.borrow_mut();
        let Some(waiting) = pending.get_mut(&id) else {
            return Poll::Ready(None);
        };
        if let Some(msg) = waiting.reply.take() {
            return Poll::Ready(Some(msg));
        }
        if let Some(cx) = cx {
            benchfs_ucx::keep_waker(&mut waiting.waker, cx.waker());
        }
        Poll::Pending
    }

    /// The client's UCX worker.
    pub fn worker(&self) -> &Rc<Worker> {
        &self.worker
    }

    /// The client's settings.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Connects to a server and performs the handshake.
    pub async fn connect(self: &Rc<Self>, addr: SocketAddr) -> Result<Connection, RpcError> {
        self.connect_within(addr, self.options.rpc_timeout).await
    }

    /// Connects to a server and performs the handshake, each of its calls given `timeout`
    /// instead of the RPC timeout: a server that just failed to answer is asked with a
    /// shorter one (a live server answers a handshake at once).
    pub async fn connect_within(
        self: &Rc<Self>,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<Connection, RpcError> {
        let server = addr.to_string();
        let ep =
            Endpoint::connect_socket(&self.worker, addr).map_err(|source| RpcError::Transport {
                server: server.clone(),
                source,
            })?;
        let mut conn = Connection {
            ep,
            client: Rc::clone(self),
            server,
            inflight: Semaphore::new(self.options.inflight_max),
            hello: None,
            clock: ServerClock::default(),
            shared_memory: false,
        };
        let hello = conn
            .call_within::<Hello>(
                &HelloRequest {
                    client: self.options.name.clone(),
                },
                OutPayload::none(),
                None,
                timeout,
            )
            .await?
            .reply;
        conn.server = format!("{}@{}", hello.node_id, addr);
        // A server with a job secret challenges; the answer proves the secret without
        // sending it.
        if !hello.challenge.is_empty() {
            let proof = benchfs_proto::auth::proof(&self.options.secret, &hello.challenge);
            let auth = AuthRequest { proof };
            let proved = conn
                .call_within::<Auth>(&auth, OutPayload::none(), None, timeout)
                .await;
            match proved {
                Err(e) if e.status() == benchfs_proto::Status::PermissionDenied => {
                    return Err(RpcError::SecretRefused {
                        server: conn.server.clone(),
                        has_secret: !self.options.secret.is_empty(),
                    });
                }
                proved => {
                    proved?;
                }
            }
        }
        conn.hello = Some(hello);
        conn.shared_memory = conn.ep.uses_shared_memory();
        Ok(conn)
    }
}

/// Hands a reply to the call awaiting it as it arrives (inside UCX's progress, so it only
/// wakes the call), or gives it back to [`route_replies`]: one that is not a reply or
/// whose call gave up, which is dropped there, outside UCX.
fn hand_over(client: &Weak<RpcClient>, msg: AmMessage) -> Option<AmMessage> {
    let Some(client) = client.upgrade() else {
        return Some(msg);
    };
    let Some(id) = Frame::reply_id(msg.header()) else {
        return Some(msg);
    };
    client.deliver(id, msg)
}

/// Hands each reply the router gave back to the call waiting for it; ends with the client
/// (the stream wakes it as it goes), so the worker goes too.
async fn route_replies(client: Weak<RpcClient>) {
    loop {
        let next = poll_fn(|cx| match client.upgrade() {
            Some(client) => client.replies.poll_recv(cx).map(|msg| Some((client, msg))),
            None => Poll::Ready(None),
        });
        let Some((client, msg)) = next.await else {
            return;
        };
        match Frame::decode(msg.header(), msg.data_len()) {
            // The caller may have given up meanwhile; then the reply is dropped.
            Ok(frame) if frame.is_reply => drop(client.deliver(frame.request_id, msg)),
            Ok(_) => tracing::warn!("a request arrived on the reply channel; dropped"),
            // A reply this build cannot read (a server of another version) still names its
            // call: the call decodes it again and fails with the reason, at once.
            Err(e) => match Frame::reply_id(msg.header()) {
                Some(id) => drop(client.deliver(id, msg)),
                None => tracing::warn!(error = %e, "malformed reply frame; dropped"),
            },
        }
    }
}

/// A reply: its body decoded, and its payload.
#[derive(Debug)]
pub struct Response<R> {
    /// The decoded reply body.
    pub reply: R,
    /// Payload bytes that came with it, unless they went into the call's sink.
    pub payload: Vec<u8>,
    /// Payload bytes received into the call's sink ([`Connection::call_into`]).
    pub sunk: usize,
}

/// A reply taken in: its frame, body and payload, and the payload bytes put in the
/// call's sink.
type Exchanged = (Frame, Vec<u8>, Vec<u8>, usize);

/// A connection to one server, after a successful handshake.
pub struct Connection {
    ep: Endpoint,
    client: Rc<RpcClient>,
    server: String,
    inflight: Semaphore,
    hello: Option<HelloReply>,
    /// The server's deadline clock, as its replies showed it.
    clock: ServerClock,
    /// Whether UCX moves this connection's data by shared memory (the server is on this
    /// host), as the lanes it chose at the handshake say.
    shared_memory: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("server", &self.server)
            .finish()
    }
}

/// Removes a call's entry from the pending table however the call ends.
struct PendingGuard<'a> {
    client: &'a RpcClient,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.client.pending.borrow_mut().remove(&self.id);
    }
}

impl Connection {
    /// The transports UCX chose for this connection's lanes (`tcp/eth0`, `sysv/memory`,
    /// `cma/memory`, ...), as [`Endpoint::transports`] names them.
    pub fn transports(&self) -> Vec<String> {
        self.ep.transports()
    }

    /// Whether this connection's data moves by shared memory: its server is on this host.
    pub fn is_shared_memory(&self) -> bool {
        self.shared_memory
    }

    /// What the server said in the handshake.
    pub fn hello(&self) -> Option<&HelloReply> {
        self.hello.as_ref()
    }

    /// Whether the server answering is `node_id` with a store born at `born_ns` (when
    /// known): another server may listen at an address a dead one had, on a port the
    /// system gave out again, even one of another cluster with the same node ids. A
    /// connection without a handshake proves nothing either way and counts as the one.
    pub fn serves_as(&self, node_id: &str, born_ns: Option<u64>) -> bool {
        self.hello.as_ref().is_none_or(|hello| {
            hello.node_id == node_id && born_ns.is_none_or(|born| born == hello.born_ns)
        })
    }

    /// The server's name, for messages.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Whether the transport reported this connection failed.
    pub fn is_failed(&self) -> bool {
        self.ep.is_failed()
    }

    /// Calls `R` with no payload.
    pub async fn call<R: Rpc>(&self, request: &R::Request) -> Result<R::Reply, RpcError> {
        Ok(self
            .call_with::<R>(request, OutPayload::none())
            .await?
            .reply)
    }

    /// Calls `R` with a payload (sent eagerly up to the threshold, by rendezvous above).
    pub async fn call_with<R: Rpc>(
        &self,
        request: &R::Request,
        payload: impl Into<OutPayload>,
    ) -> Result<Response<R::Reply>, RpcError> {
        self.call_into::<R>(request, payload, None).await
    }

    /// Calls `R`, receiving the reply's payload straight into `sink` when it fits (by
    /// rendezvous with no copy; eager data is copied once), else as in
    /// [`Connection::call_with`].
    pub async fn call_into<R: Rpc>(
        &self,
        request: &R::Request,
        payload: impl Into<OutPayload>,
        sink: Option<LentMut>,
    ) -> Result<Response<R::Reply>, RpcError> {
        let timeout = self.client.options.rpc_timeout;
        self.call_within::<R>(request, payload.into(), sink, timeout)
            .await
    }

    /// Calls `R` with no deadline, waiting at most `wait` for its reply: the server takes
    /// the request however late it runs (a stopped one, once it runs again, before what
    /// was sent to it later). Only for changes that stay right whenever they apply: the
    /// undo a client leaves with a server that stopped answering, of a change it took.
    pub async fn call_without_deadline<R: Rpc>(
        &self,
        request: &R::Request,
        wait: Duration,
    ) -> Result<R::Reply, RpcError> {
        let exchange = pin!(self.exchange(R::OP, request.to_bytes(), OutPayload::none(), None, 0));
        let (_, body, _, _) = self.watched(exchange, wait).await?;
        R::Reply::from_bytes(&body).map_err(|source| self.protocol(source))
    }

    async fn call_within<R: Rpc>(
        &self,
        request: &R::Request,
        payload: OutPayload,
        sink: Option<LentMut>,
        timeout: Duration,
    ) -> Result<Response<R::Reply>, RpcError> {
        let deadline_us = match R::OP {
            // The handshake changes nothing and has no clock to go by.
            OpCode::Hello | OpCode::Auth => 0,
            _ => {
                // Read before the watch starts the call's timeout, so the deadline is
                // never later than the call's end.
                let mut start_us = benchfs_proto::clock::now_us();
                if self.clock.is_stale(start_us, timeout) {
                    // Boxed: the rare ping would otherwise size every call's future.
                    Box::pin(self.measure_clock(timeout)).await?;
                    start_us = benchfs_proto::clock::now_us();
                }
                let margin = benchfs_proto::clock::deadline_margin();
                self.clock.deadline(start_us, timeout, margin)
            }
        };
        let exchange = pin!(self.exchange(R::OP, request.to_bytes(), payload, sink, deadline_us));
        let (frame, body, payload, sunk) = self.watched(exchange, timeout).await?;
        let reply = R::Reply::from_bytes(&body).map_err(|source| self.protocol(source))?;
        debug_assert_eq!(frame.op, R::OP);
        Ok(Response {
            reply,
            payload,
            sunk,
        })
    }

    /// Measures the server's clock again by a ping, when the bound went stale over an idle
    /// connection.
    async fn measure_clock(&self, timeout: Duration) -> Result<(), RpcError> {
        self.clock.remeasure();
        let ping = pin!(self.exchange(OpCode::Ping, Vec::new(), OutPayload::none(), None, 0));
        self.watched(ping, timeout).await.map(drop)
    }

    /// Runs an exchange under the call watch: it ends with its result, or `Timeout`, or
    /// the connection's failure.
    async fn watched(
        &self,
        exchange: Pin<&mut impl Future<Output = Result<Exchanged, RpcError>>>,
        timeout: Duration,
    ) -> Result<Exchanged, RpcError> {
        match self.client.watch.run(timeout, &self.ep, exchange).await {
            Ok(result) => result,
            Err(Verdict::TimedOut) => Err(RpcError::Timeout {
                server: self.server.clone(),
                timeout_ms: timeout.as_millis() as u64,
            }),
            Err(Verdict::Failed(e)) => Err(self.transport(e)),
        }
    }

    fn protocol(&self, source: benchfs_proto::DecodeError) -> RpcError {
        RpcError::Protocol {
            server: self.server.clone(),
            source,
        }
    }

    fn status(&self, status: Status) -> RpcError {
        RpcError::Status {
            server: self.server.clone(),
            status,
        }
    }

    fn transport(&self, source: benchfs_ucx::UcxError) -> RpcError {
        RpcError::Transport {
            server: self.server.clone(),
            source,
        }
    }

    /// Sends one request and waits for its reply (the caller bounds the wait).
    async fn exchange(
        &self,
        op: OpCode,
        body: Vec<u8>,
        payload: OutPayload,
        sink: Option<LentMut>,
        deadline_us: u64,
    ) -> Result<Exchanged, RpcError> {
        let _permit = self
            .inflight
            .acquire()
            .await
            .map_err(|_| self.status(Status::Busy))?;
        let client = &self.client;
        let id = client.next_id.get();
        client.next_id.set(id.wrapping_add(1));
        client.pending.borrow_mut().insert(id, Waiting::default());
        let _guard = PendingGuard { client, id };
        let _awaiting = client.worker.expect_replies();
        self.send_request(op, id, body, payload, deadline_us)
            .await?;
        let msg = self.wait_reply(id).await?;
        let frame = self.check_reply(op, &msg)?;
        self.take_reply(frame, msg, sink).await
    }

    /// Sends a request: the body rides in the AM header when it fits, else it leads the
    /// data; above the threshold the data goes by rendezvous.
    async fn send_request(
        &self,
        op: OpCode,
        id: u64,
        body: Vec<u8>,
        payload: OutPayload,
        deadline_us: u64,
    ) -> Result<(), RpcError> {
        let client = &self.client;
        let frame =
            Frame::header(op, id, 0, false, body.len(), payload.len()).with_clock(deadline_us);
        let body_fits = FRAME_HEADER_LEN + body.len() <= client.worker.max_am_header();
        let mut header = frame.to_vec_with_room(if body_fits { body.len() } else { 0 });
        let proto = if payload.len() > client.options.rdma_threshold {
            AmProto::Rndv
        } else {
            AmProto::Eager
        };
        let data = if body_fits {
            header.extend_from_slice(&body);
            payload
        } else {
            let mut data = body;
            data.extend_from_slice(payload.as_ref());
            client.recycle(payload);
            OutPayload::Owned(data)
        };
        let (_, data) = self
            .ep
            .am_send(REQUEST_AM_ID, header, data, proto)
            .await
            .map_err(|e| self.transport(e))?;
        client.recycle(data);
        Ok(())
    }

    /// Waits for the reply. A reply never comes over a connection that failed after the
    /// send; the call's watch ends the wait then, instead of at the timeout.
    ///
    /// With busy polling on, the only call in flight of its client progresses the worker
    /// itself for a while, as a latency benchmark's loop does: a reply that comes meanwhile
    /// (a metadata reply takes about a microsecond over shared memory) ends the wait in that
    /// poll, without the progress task's turn and the wake of the caller's task. It does so
    /// at its second poll, which it asks for at once (a blocking caller's `block_on` makes
    /// it before any task's turn): the first returns, so that calls started beside it (the
    /// other chunks of one write, the lanes of a `join_all`) are sent first instead of
    /// after its reply.
    async fn wait_reply(&self, id: u64) -> Result<AmMessage, RpcError> {
        let client = &self.client;
        let may_spin = !client.options.busy_poll.is_zero();
        let mut polls = 0u32;
        let reply = poll_fn(|cx| {
            polls = polls.saturating_add(1);
            if may_spin && polls == 2 && client.pending.borrow().len() == 1 {
                for poll in 1..=REPLY_POLLS {
                    if let Poll::Ready(reply) = client.poll_reply(id, None) {
                        return Poll::Ready(reply);
                    }
                    // As often as the progress loop gives the CPU away while idle.
                    if client.worker.progress() == 0 && poll % IDLE_POLLS_PER_TURN == 0 {
                        client.worker.idle_poll();
                    }
                }
            }
            let reply = client.poll_reply(id, Some(cx));
            if may_spin && reply.is_pending() && polls == 1 {
                cx.waker().wake_by_ref();
            }
            reply
        });
        reply.await.ok_or_else(|| self.status(Status::Unavailable))
    }

    /// The reply's frame, if it answers `op` with success.
    fn check_reply(&self, op: OpCode, msg: &AmMessage) -> Result<Frame, RpcError> {
        let frame = Frame::decode(msg.header(), msg.data_len()).map_err(|e| self.protocol(e))?;
        if self.clock.wants_sample() {
            self.clock
                .sample(frame.clock_us, benchfs_proto::clock::now_us());
        }
        if frame.op != op {
            return Err(self.protocol(benchfs_proto::DecodeError::BadField {
                field: "op",
                reason: "reply is for another operation",
            }));
        }
        let status = Status::from_wire(frame.status).ok_or_else(|| {
            self.protocol(benchfs_proto::DecodeError::BadField {
                field: "status",
                reason: "unknown status",
            })
        })?;
        match status {
            Status::Ok => Ok(frame),
            status => Err(self.status(status)),
        }
    }

    /// Takes the reply's body and payload: the payload straight into `sink` when it fits.
    async fn take_reply(
        &self,
        frame: Frame,
        mut msg: AmMessage,
        sink: Option<LentMut>,
    ) -> Result<Exchanged, RpcError> {
        let header_body = msg.header()[FRAME_HEADER_LEN..].to_vec();
        if let Some(sink) = sink.filter(|s| {
            frame.body_in_header && frame.payload_len > 0 && frame.payload_len <= s.as_ref().len()
        }) {
            msg.recv_data(sink).await.map_err(|e| self.transport(e))?;
            return Ok((frame, header_body, Vec::new(), frame.payload_len));
        }
        let mut data = if msg.is_rendezvous() {
            let buf = self.client.reply_buffer(msg.data_len());
            msg.recv_data(buf).await
        } else {
            msg.into_data().await
        }
        .map_err(|e| self.transport(e))?;
        if frame.body_in_header {
            Ok((frame, header_body, data, 0))
        } else {
            let payload = data.split_off(frame.body_len.min(data.len()));
            Ok((frame, data, payload, 0))
        }
    }
}
