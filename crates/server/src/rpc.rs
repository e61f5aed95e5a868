//! The server side of the RPC: accept connections, decode each request, run its handler
//! on the event loop (in one plain call when it does not wait, else as a future polled
//! in place and made a task only if it waits), and send the reply on the connection it
//! came from.
//!
//! **Invariant:** nothing a peer sends can stop the loop. A frame that does not decode is
//! answered with `Protocol` when its request id can be read (so the caller fails fast) and
//! dropped otherwise, and a log line says why.
//!
//! Every decoded request is measured here ([`crate::metrics`]): from its frame decoded to
//! its reply handed to UCX (for a reply with a payload, until UCX has sent it), within a
//! trace-level span (`benchfs::rpc`) that records the operation, the sizes, the status and
//! the latency; disabled, as it is unless `node.trace_file` is set, it costs a level check.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use benchfs_proto::frame::FRAME_HEADER_LEN;
use benchfs_proto::ops::{self as op, Message};
use benchfs_proto::{DecodeError, Frame, OpCode, Status};
use benchfs_store::ChunkStore;
use benchfs_ucx::{AmMessage, AmProto, AmStream, Endpoint, EndpointId, Listener, Worker};
use tracing::Instrument;

use benchfs_proto::frame::{REPLY_AM_ID, REQUEST_AM_ID};
use benchfs_store::ChunkBuf;

use crate::budget::PayloadBudget;
use crate::handler::{store_status, Payload, Reply, ReplyPayload, ServerState};
use crate::metrics::Outcome;

/// The tracing target of the span around each request, which `node.trace_file` records.
pub const RPC_SPAN_TARGET: &str = "benchfs::rpc";

/// Most messages a server queues before it drops new ones (the sender then times out).
pub const SERVER_QUEUE_MAX: usize = 8192;
/// Most client connections one server holds open: every rank of a large MPI job connects
/// to every server, so this is sized for tens of thousands of ranks.
pub const CONNECTIONS_MAX: usize = 65_536;
/// Longest a stopping server waits for its requests in flight before it closes every
/// client connection, which ends the transfers a stopped client holds.
const DRAIN_BEFORE_CLOSING_MAX: Duration = Duration::from_secs(5);
/// Progress calls the request loop makes itself with busy polling on, after a request,
/// while no next one is queued: about a microsecond over shared memory, the time a client
/// takes to send its next request after a reply. A request found so skips the wake of the
/// loop's task and the progress task's turn (a sixth of a round trip).
pub const REQUEST_POLLS: u32 = 32;
/// Requests the loop takes in a row so before it lets the other tasks run.
const IN_A_ROW_MAX: u32 = 32;
/// Connections a server holds before it first sweeps out failed ones.
const CONNECTIONS_SWEEP_MIN: usize = 64;
const _: () = assert!(CONNECTIONS_SWEEP_MIN <= CONNECTIONS_MAX);

/// A chunk-store buffer as a UCX receive buffer (replies send a `ReplyPayload`).
pub(crate) struct StoreBuf(pub ChunkBuf);

impl AsMut<[u8]> for StoreBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        self.0.as_mut_slice()
    }
}

/// Settings of a serving loop.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Requests handled at once; more wait in the queue.
    pub inflight_max: usize,
    /// Replies with a payload above this go by rendezvous (RDMA on RDMA transports);
    /// smaller ones travel eagerly with the reply.
    pub rendezvous_threshold: usize,
    /// How long a client may take to deliver a request's payload or to take a reply
    /// before its connection is closed: a client that is alive but stopped (SIGSTOP, a
    /// debugger) would otherwise hold the transfer's buffer and its in-flight slot for as
    /// long as it stays stopped.
    pub transfer_timeout: Duration,
    /// Rendezvous payload bytes held in transfer buffers at once.
    pub payload_budget: PayloadBudget,
    /// Whether clients on this host may move payloads by shared memory, reaching this
    /// server's buffers themselves: the buffers of transfers given up on are then kept
    /// for good (see `bounded_transfer`).
    pub shared_memory: bool,
    /// Progress calls the request loop makes itself, after a request, while no next one
    /// is queued ([`REQUEST_POLLS`] with busy polling on, none with it off).
    pub polls_for_next: u32,
}

/// Serves requests until `stop` completes or `still_ours` (asked before each request, with
/// the time it was picked up on the deadline clock)
/// says this server no longer answers for its node id, then refuses new connections,
/// finishes the requests in flight and returns. The listener stays the caller's to keep
/// (see [`Listener::keep_until_exit`]).
pub async fn serve(
    state: Rc<ServerState>,
    worker: Rc<Worker>,
    listener: Rc<Listener>,
    options: ServeOptions,
    stop: impl Future<Output = ()> + 'static,
    still_ours: impl Fn(u64) -> bool,
) -> Result<(), benchfs_ucx::UcxError> {
    let requests = worker.set_am_handler(REQUEST_AM_ID, SERVER_QUEUE_MAX)?;
    let connections = Rc::new(RefCell::new(Connections::new(state.requires_handshake())));
    let accept =
        tokio::task::spawn_local(accept_loop(Rc::clone(&listener), Rc::clone(&connections)));
    let inflight = Rc::new(InFlight::default());
    let options = Rc::new(options);
    // `stop` waits in a task of its own, which raises a flag: polling it with every
    // request (two signal streams) was a twentieth of a ping's handling.
    let stopping = Rc::new(Stopping::default());
    let signal = tokio::task::spawn_local({
        // Raised however the task ends, a panic of `stop` included.
        let raise = RaiseOnDrop(Rc::clone(&stopping));
        async move {
            stop.await;
            drop(raise);
        }
    });
    let at_once = AtOnce {
        state: Rc::clone(&state),
        connections: Rc::clone(&connections),
        inflight: Rc::clone(&inflight),
        options: Rc::clone(&options),
    };
    let mut in_a_row = 0;
    loop {
        let next = stopping.next_request(&requests, options.polls_for_next, &mut in_a_row);
        let Some(msg) = next.await else {
            break;
        };
        // One reading serves the fence, the deadline and the reply's stamp of a request
        // answered at once: each read of the clock was a few percent of a ping's handling.
        let now_us = benchfs_proto::clock::now_us();
        // Not one request past the moment another server took the node id over: its
        // client learns so when the connection closes, and asks the registry again.
        if !still_ours(now_us) {
            break;
        }
        let Some(msg) = at_once.try_answer(msg, now_us) else {
            continue;
        };
        let permit = inflight.acquire(options.inflight_max).await;
        let state = Rc::clone(&state);
        let connections = Rc::clone(&connections);
        let options = Rc::clone(&options);
        let handling = Box::pin(async move {
            handle_message(&state, &connections, msg, &options).await;
            drop(permit);
        });
        run_or_spawn(handling).await;
    }
    // Stop accepting, then wait for every request in flight to finish. A stopped client's
    // transfer would hold the drain for the whole transfer timeout (a minute by default,
    // as long as `cluster down` waits before it kills): past a few seconds its connection
    // is closed, which fails the transfer, as it does every unfinished one.
    signal.abort();
    accept.abort();
    listener.refuse();
    drain(&inflight, &connections, &options).await;
    if requests.dropped_count() > 0 {
        tracing::warn!(
            dropped = requests.dropped_count(),
            "requests dropped because the queue was full"
        );
    }
    Ok(())
}

/// Waits for every request in flight to finish, closing every client connection once
/// that takes longer than the transfer timeout allows.
async fn drain(inflight: &InFlight, connections: &RefCell<Connections>, options: &ServeOptions) {
    let drain = options.transfer_timeout.min(DRAIN_BEFORE_CLOSING_MAX);
    if tokio::time::timeout(drain, inflight.drained())
        .await
        .is_ok()
    {
        return;
    }
    tracing::warn!(
        in_flight = inflight.count.get(),
        drain_ms = drain.as_millis() as u64,
        "requests still in flight after draining; closing every client connection"
    );
    let clients: Vec<Endpoint> = connections
        .borrow()
        .table
        .values()
        .map(|entry| entry.ep.clone())
        .collect();
    for ep in &clients {
        give_up_on(ep, options);
    }
    inflight.drained().await;
}

/// Runs a request's handling to its end here if it does not wait, else on a task of its
/// own. Many requests that went this way (memory-store chunks) are answered without
/// waiting: answering those here rather than handing each to a task, a hop through the
/// scheduler, was a tenth of a round trip. One that must wait goes on as a task, which
/// polls it again with its own waker.
async fn run_or_spawn(mut handling: Pin<Box<impl Future<Output = ()> + 'static>>) {
    let polled = poll_fn(|cx| {
        let poll = std::panic::catch_unwind(AssertUnwindSafe(|| handling.as_mut().poll(cx)));
        Poll::Ready(poll.map(|p| p.is_ready()))
    })
    .await;
    match polled {
        Ok(true) => {}
        Ok(false) => {
            tokio::task::spawn_local(handling);
        }
        // As a task's panic would: that request goes unanswered, the server goes on.
        Err(_) => tracing::error!("handling a request panicked; it gets no reply"),
    }
}

/// Whether the serving loop should stop, and the loop's waker while it waits for requests.
#[derive(Default)]
struct Stopping {
    raised: Cell<bool>,
    loop_waker: Cell<Option<Waker>>,
}

impl Stopping {
    fn raise(&self) {
        self.raised.set(true);
        if let Some(waker) = self.loop_waker.take() {
            waker.wake();
        }
    }

    /// The next request, or `None` once the flag is raised. It looks for it itself first,
    /// with up to `polls` progress calls (see [`REQUEST_POLLS`]); `in_a_row` counts the
    /// requests found so, and every [`IN_A_ROW_MAX`] of them the other tasks get a turn.
    async fn next_request(
        &self,
        requests: &AmStream,
        polls: u32,
        in_a_row: &mut u32,
    ) -> Option<AmMessage> {
        if *in_a_row >= IN_A_ROW_MAX {
            *in_a_row = 0;
            benchfs_ucx::yield_turn().await;
        }
        if !self.raised.get() {
            if let Some(msg) = requests.try_recv_polling(polls) {
                *in_a_row += 1;
                return Some(msg);
            }
        }
        *in_a_row = 0;
        self.or_next(requests).await
    }

    /// The next request, or `None` once the flag is raised.
    async fn or_next(&self, requests: &AmStream) -> Option<AmMessage> {
        poll_fn(|cx| {
            if self.raised.get() {
                return Poll::Ready(None);
            }
            match requests.poll_recv(cx) {
                Poll::Ready(msg) => Poll::Ready(Some(msg)),
                Poll::Pending => {
                    let mut kept = self.loop_waker.take();
                    benchfs_ucx::keep_waker(&mut kept, cx.waker());
                    self.loop_waker.set(kept);
                    Poll::Pending
                }
            }
        })
        .await
    }
}

/// Raises the stop flag when dropped.
struct RaiseOnDrop(Rc<Stopping>);

impl Drop for RaiseOnDrop {
    fn drop(&mut self) {
        self.0.raise();
    }
}

/// The requests being handled, bounded by `inflight_max`: a counter of the loop's own, as
/// its one waiter is the loop (tokio's semaphore cost an atomic and a lock per request).
#[derive(Default)]
struct InFlight {
    count: Cell<usize>,
    waiter: Cell<Option<Waker>>,
}

impl InFlight {
    /// Waits until fewer than `max` requests are in flight and counts one more.
    async fn acquire(self: &Rc<Self>, max: usize) -> Permit {
        self.wait_for(|count| count < max).await;
        self.hold()
    }

    /// Counts one more request in flight at once, beyond `max` if need be (a reply
    /// already handled, waiting for its send).
    fn hold(self: &Rc<Self>) -> Permit {
        self.count.set(self.count.get() + 1);
        Permit(Rc::clone(self))
    }

    /// Waits until no request is in flight.
    async fn drained(&self) {
        self.wait_for(|count| count == 0).await;
    }

    /// Waits until the number of requests in flight satisfies `ready`.
    async fn wait_for(&self, ready: impl Fn(usize) -> bool) {
        poll_fn(|cx| {
            if ready(self.count.get()) {
                return Poll::Ready(());
            }
            let mut kept = self.waiter.take();
            benchfs_ucx::keep_waker(&mut kept, cx.waker());
            self.waiter.set(kept);
            Poll::Pending
        })
        .await;
    }
}

/// One request in flight; dropping it lets the loop take another.
struct Permit(Rc<InFlight>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.count.set(self.0.count.get() - 1);
        if let Some(waiter) = self.0.waiter.take() {
            waiter.wake();
        }
    }
}

/// Accepts connections and keeps them open (an endpoint closes with its last handle).
async fn accept_loop(listener: Rc<Listener>, connections: Rc<RefCell<Connections>>) {
    loop {
        match listener.accept().await {
            Ok(ep) => {
                let mut table = connections.borrow_mut();
                let peer = ep.peer_addr();
                if table.insert(ep) {
                    tracing::debug!(connections = table.len(), ?peer, "accepted a connection");
                } else {
                    tracing::warn!(
                        max = CONNECTIONS_MAX,
                        ?peer,
                        "refused a connection: the server holds the most it may"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "accepting a connection failed"),
        }
    }
}

/// One connection the server holds, and where its handshake stands.
struct Entry {
    ep: Endpoint,
    /// Whether it proved the job secret (or the server has none).
    admitted: bool,
    /// The challenge its last `Hello` got, until an `Auth` uses it.
    challenge: Option<Vec<u8>>,
    /// The name it gave in `Hello`, for logs.
    client: String,
}

/// The connections a server holds open, and which of them proved the job secret
/// (enforced only when the server has one). Keyed by endpoint identity, never by UCX
/// handle, so a handle UCX reuses after a close admits nobody. Lookups cost the same for
/// ten clients or ten thousand; failed connections are let go when the table has doubled
/// since the last sweep, so sweeping costs O(1) per insert.
struct Connections {
    handshake_required: bool,
    table: HashMap<EndpointId, Entry>,
    sweep_at: usize,
}

impl Connections {
    fn new(handshake_required: bool) -> Self {
        Connections {
            handshake_required,
            table: HashMap::new(),
            sweep_at: CONNECTIONS_SWEEP_MIN,
        }
    }

    fn len(&self) -> usize {
        self.table.len()
    }

    /// Holds `ep` open; false (and `ep` is dropped, which closes it) when the table is
    /// full of live connections.
    fn insert(&mut self, ep: Endpoint) -> bool {
        self.entry(&ep).is_some()
    }

    /// The entry of `ep`, made if needed; `None` when the table is full.
    fn entry(&mut self, ep: &Endpoint) -> Option<&mut Entry> {
        if self.table.len() >= self.sweep_at {
            self.table.retain(|_, e| !e.ep.is_failed());
            self.sweep_at = (self.table.len() * 2).max(CONNECTIONS_SWEEP_MIN);
        }
        if self.table.len() >= CONNECTIONS_MAX && !self.table.contains_key(&ep.id()) {
            return None;
        }
        Some(self.table.entry(ep.id()).or_insert_with(|| Entry {
            ep: ep.clone(),
            admitted: false,
            challenge: None,
            client: String::new(),
        }))
    }

    fn admits(&self, ep: &Endpoint) -> bool {
        !self.handshake_required || self.table.get(&ep.id()).is_some_and(|e| e.admitted)
    }
}

/// Answers a `Hello`: with a job secret, a fresh random challenge for this connection.
fn hello(
    state: &ServerState,
    connections: &RefCell<Connections>,
    ep: &Endpoint,
    body: &[u8],
) -> Reply {
    if !state.requires_handshake() {
        return state.hello(body, Vec::new());
    }
    let mut challenge = vec![0u8; benchfs_proto::auth::CHALLENGE_LEN];
    if let Err(e) = getrandom::fill(&mut challenge) {
        tracing::error!(error = %e, "no randomness for a handshake challenge");
        return Reply::error(Status::Io);
    }
    let mut table = connections.borrow_mut();
    let Some(entry) = table.entry(ep) else {
        tracing::warn!(
            max = CONNECTIONS_MAX,
            "handshake refused: too many connections"
        );
        return Reply::error(Status::Busy);
    };
    entry.challenge = Some(challenge.clone());
    entry.client = client_name(body, ep);
    state.hello(body, challenge)
}

/// The client name a `Hello` body gives, for logs (empty if it does not decode).
/// How logs name a client: the name its `Hello` gives and the address it connected from.
fn client_name(body: &[u8], ep: &Endpoint) -> String {
    use benchfs_proto::Message;
    let name = benchfs_proto::ops::HelloRequest::from_bytes(body)
        .map(|r| r.client)
        .unwrap_or_default();
    match ep.peer_addr() {
        Some(addr) => format!("{name} from {addr}"),
        None => name,
    }
}

/// Checks an `Auth` against this connection's challenge, which it uses up.
fn authenticate(
    state: &ServerState,
    connections: &RefCell<Connections>,
    ep: &Endpoint,
    body: &[u8],
) -> Reply {
    let mut table = connections.borrow_mut();
    let Some(entry) = table.entry(ep) else {
        return Reply::error(Status::Busy);
    };
    let challenge = entry.challenge.take();
    let reply = state.authenticate(body, challenge.as_deref(), &entry.client);
    entry.admitted |= reply.status == Status::Ok;
    reply
}

/// A request id read from the raw header, for answering frames that do not decode.
fn raw_request_id(header: &[u8]) -> Option<u64> {
    let bytes = header.get(8..16)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

async fn handle_message(
    state: &ServerState,
    connections: &RefCell<Connections>,
    msg: AmMessage,
    options: &ServeOptions,
) {
    let Some(ep) = msg.reply_endpoint().cloned() else {
        tracing::warn!("request without a reply endpoint; dropped");
        return;
    };
    if ep.is_failed() {
        // Queued before its connection failed or was closed; nobody can get the answer.
        return;
    }
    let frame = match decode_request(&msg) {
        Ok(f) => f,
        Err(e) => {
            state.counters.note_malformed();
            tracing::warn!(error = %e, "malformed request frame");
            if let Some(id) = raw_request_id(msg.header()) {
                let refused = Reply::error(Status::Protocol);
                send_reply(&ep, OpCode::Ping, id, refused, options).await;
            }
            return;
        }
    };
    let _in_flight = state.metrics.enter();
    let measured = Measured::start(&frame);
    let (status, outcome) = answer(state, connections, &ep, msg, &frame, options)
        .instrument(measured.span.clone())
        .await;
    measured.finish(state, status, outcome);
}

/// A request's measurement: its span and when its handling began.
struct Measured {
    op: OpCode,
    span: tracing::Span,
    started: Instant,
}

impl Measured {
    fn start(frame: &Frame) -> Measured {
        let span = tracing::trace_span!(
            target: RPC_SPAN_TARGET,
            "rpc",
            op = frame.op.name(),
            request_id = frame.request_id,
            request_bytes = (frame.body_len + frame.payload_len) as u64,
            status = tracing::field::Empty,
            reply_bytes = tracing::field::Empty,
            latency_ns = tracing::field::Empty,
        );
        Measured {
            op: frame.op,
            span,
            started: Instant::now(),
        }
    }

    /// Records the request's outcome in the metrics and its span. `status`: the reply's,
    /// `None` when no reply could be sent.
    fn finish(self, state: &ServerState, status: Option<Status>, outcome: Outcome) {
        let latency = self.started.elapsed();
        state.metrics.record(self.op, outcome, latency);
        if self.span.is_disabled() {
            return;
        }
        match status {
            Some(status) => self.span.record("status", tracing::field::debug(status)),
            None => self.span.record("status", "unanswered"),
        };
        self.span.record("reply_bytes", outcome.bytes_out);
        self.span.record(
            "latency_ns",
            u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX),
        );
    }
}

/// What the request loop answers requests at once with (see [`AtOnce::answer`]).
struct AtOnce {
    state: Rc<ServerState>,
    connections: Rc<RefCell<Connections>>,
    inflight: Rc<InFlight>,
    options: Rc<ServeOptions>,
}

impl AtOnce {
    /// [`AtOnce::answer`], a panic of which leaves the request unanswered, as a task's
    /// panic would, and the server going on.
    fn try_answer(&self, msg: AmMessage, now_us: u64) -> Option<AmMessage> {
        let answered = std::panic::catch_unwind(AssertUnwindSafe(|| self.answer(msg, now_us)));
        answered.unwrap_or_else(|_| {
            tracing::error!("handling a request panicked; it gets no reply");
            None
        })
    }

    /// Answers a request at once when nothing in its handling waits: its data came
    /// eagerly and its operation is answered from the metadata table (or refused). Most
    /// requests (metadata, pings, the handshake) are such; they then cost no future, no
    /// task and no allocation of their own (the boxed per-request future and its move were
    /// a sixth of a ping's handling). A reply UCX cannot take at once (its send resources
    /// are taken) finishes on a task of its own. Gives the message back when it must go
    /// the waiting way, and takes it when it is answered or not to be answered (its
    /// connection failed). `now_us`: when the request was picked up, on the deadline clock.
    fn answer(&self, msg: AmMessage, now_us: u64) -> Option<AmMessage> {
        let AtOnce {
            state,
            connections,
            inflight,
            options,
        } = self;
        let Some(ep) = msg.reply_endpoint() else {
            return Some(msg);
        };
        if ep.is_failed() {
            // Queued before its connection failed or was closed; nobody can get the answer.
            return None;
        }
        let Ok(frame) = decode_request(&msg) else {
            return Some(msg);
        };
        if crate::handler::waits(frame.op) {
            return Some(msg);
        }
        let Some(data) = msg.eager_data() else {
            return Some(msg);
        };
        if frame.op.takes_payload() && frame.payload_len as u64 > state.store().chunk_size() {
            // Refused the waiting way, as the store refuses a buffer longer than a chunk.
            return Some(msg);
        }
        let _in_flight = state.metrics.enter();
        let measured = Measured::start(&frame);
        let entered = measured.span.enter();
        let (body, payload) = split_body(&frame, msg.header(), data);
        let (reply, refused) =
            reply_at_once(state, connections, ep, &frame, body, payload.len(), now_us);
        let status = reply.status;
        let [body_in, body_out] = reply.body_file_bytes;
        // What the metrics count once the reply went: a refused request counts no bytes.
        let outcome = move |sent: bool| match refused {
            true => Outcome::UNANSWERED,
            false => Outcome {
                ok: sent && status == Status::Ok,
                bytes_in: frame.payload_len as u64 + body_in,
                bytes_out: body_out,
            },
        };
        let mut send = reply_request(ep, frame.op, frame.request_id, reply, now_us, options);
        drop(entered);
        match Pin::new(&mut send).poll(&mut std::task::Context::from_waker(Waker::noop())) {
            Poll::Ready(result) => {
                let sent = reply_sent(Some(result));
                measured.finish(state, sent.then_some(status), outcome(sent));
            }
            Poll::Pending => {
                // UCX queued the reply (its send resources are taken): wait for it on a task,
                // counted in flight so that a stopping server waits for it too.
                let permit = inflight.hold();
                let ep = ep.clone();
                let state = Rc::clone(state);
                let options = Rc::clone(options);
                let span = measured.span.clone();
                let send = async move {
                    let _in_flight = state.metrics.enter();
                    let sent = reply_sent(bounded_transfer(&ep, send, &options).await);
                    measured.finish(&state, sent.then_some(status), outcome(sent));
                    drop(permit);
                };
                tokio::task::spawn_local(send.instrument(span));
            }
        }
        None
    }
}

/// A request's body and inline payload: the body rides in the AM header when the frame
/// says so, else it leads the data.
fn split_body<'a>(frame: &Frame, header: &'a [u8], data: &'a [u8]) -> (&'a [u8], &'a [u8]) {
    match frame.body_in_header {
        true => (&header[FRAME_HEADER_LEN..], data),
        false => data.split_at(frame.body_len.min(data.len())),
    }
}

/// The reply to a request that does not wait, and whether it is a refusal.
fn reply_at_once(
    state: &ServerState,
    connections: &RefCell<Connections>,
    ep: &Endpoint,
    frame: &Frame,
    body: &[u8],
    payload_len: usize,
    now_us: u64,
) -> (Reply, bool) {
    if let Some(status) = refusal(state, connections, ep, frame, now_us) {
        return (Reply::error(status), true);
    }
    let reply = match frame.op {
        OpCode::Hello => hello(state, connections, ep, body),
        OpCode::Auth => authenticate(state, connections, ep, body),
        op => match state.handle_at_once(op, body, payload_len) {
            Some(reply) => reply,
            None => unreachable!("an operation that waits went the waiting way"),
        },
    };
    (reply, false)
}

/// Answers one decoded request: refuses it, or receives its data, runs its handler and
/// sends the reply. Returns the reply's status (`None`: no reply could be sent) and what
/// the metrics count.
async fn answer(
    state: &ServerState,
    connections: &RefCell<Connections>,
    ep: &Endpoint,
    msg: AmMessage,
    frame: &Frame,
    options: &ServeOptions,
) -> (Option<Status>, Outcome) {
    // Read now: the request may have waited for a permit since it was picked up.
    let now_us = benchfs_proto::clock::now_us();
    if let Some(status) = refusal(state, connections, ep, frame, now_us) {
        return refuse(ep, frame, status, options).await;
    }
    let header = msg.header().to_vec();
    let bytes = rendezvous_bytes(
        frame,
        &header,
        options.rendezvous_threshold,
        state.store().chunk_size(),
    );
    let budget = options.payload_budget.hold(bytes).await;
    let Some(received) = receive(state, ep, msg, frame, options).await else {
        return (None, Outcome::UNANSWERED);
    };
    // A request's payload has arrived: its bytes go back now, not after the store's work
    // (a disk write of a chunk would hold them for milliseconds). A read keeps its bytes
    // for its reply.
    let budget = (frame.op == OpCode::ReadChunk).then_some(budget);
    let data;
    let (body, payload) = match received {
        Received::Buf(buf) => (&header[FRAME_HEADER_LEN..], Payload::Buf(buf)),
        Received::Bytes(bytes) => {
            data = bytes;
            let (body, inline) = split_body(frame, &header, &data);
            let payload = match inline.is_empty() {
                true => Payload::None,
                false => Payload::Bytes(inline),
            };
            (body, payload)
        }
    };
    if let Some(status) = lateness(state, frame, benchfs_proto::clock::now_us()) {
        return refuse(ep, frame, status, options).await;
    }
    let reply = match frame.op {
        OpCode::Hello => hello(state, connections, ep, body),
        OpCode::Auth => authenticate(state, connections, ep, body),
        op => state.handle(op, body, payload).await,
    };
    let status = reply.status;
    let [body_in, body_out] = reply.body_file_bytes;
    let bytes_out = reply.payload.as_ref().map_or(0, |p| p.len() as u64) + body_out;
    let sent = send_reply(ep, frame.op, frame.request_id, reply, options).await;
    drop(budget);
    let outcome = Outcome {
        ok: sent && status == Status::Ok,
        bytes_in: frame.payload_len as u64 + body_in,
        bytes_out,
    };
    (sent.then_some(status), outcome)
}

/// Refuses a request with `status`; a refused request counts as unanswered.
async fn refuse(
    ep: &Endpoint,
    frame: &Frame,
    status: Status,
    options: &ServeOptions,
) -> (Option<Status>, Outcome) {
    let refused = Reply::error(status);
    send_reply(ep, frame.op, frame.request_id, refused, options).await;
    (Some(status), Outcome::UNANSWERED)
}

/// The bytes of a request's payload and of its reply's (a read's) that go by rendezvous,
/// each into or out of a transfer buffer of its own (eager ones are copied through UCX's).
/// A read counts no more than the chunk holds past its offset, whatever it asks for.
fn rendezvous_bytes(frame: &Frame, header: &[u8], threshold: usize, chunk_size: u64) -> usize {
    let reply = match frame.op {
        OpCode::ReadChunk if frame.body_in_header => header
            .get(FRAME_HEADER_LEN..)
            .and_then(|body| op::ChunkIo::from_bytes(body).ok())
            .map_or(0, |io| {
                let len = io.len.min(chunk_size.saturating_sub(io.offset));
                usize::try_from(len).unwrap_or(usize::MAX)
            }),
        _ => 0,
    };
    [frame.payload_len, reply]
        .into_iter()
        .filter(|&len| len > threshold)
        .fold(0, usize::saturating_add)
}

/// The request's frame; a reply on the request channel is as malformed as a bad header.
fn decode_request(msg: &AmMessage) -> Result<Frame, DecodeError> {
    Frame::decode(msg.header(), msg.data_len()).and_then(|f| match f.is_reply {
        false => Ok(f),
        true => Err(DecodeError::BadField {
            field: "flags",
            reason: "a reply on the request channel",
        }),
    })
}

/// Why a request is refused before any of its payload is received, if it is: an
/// unauthenticated peer gets no work done, and a payload on an operation that takes none
/// is never taken in.
fn refusal(
    state: &ServerState,
    connections: &RefCell<Connections>,
    ep: &Endpoint,
    frame: &Frame,
    now_us: u64,
) -> Option<Status> {
    let handshake = matches!(frame.op, OpCode::Hello | OpCode::Auth);
    if !handshake && !connections.borrow().admits(ep) {
        tracing::warn!(op = ?frame.op, "request before a successful handshake; refused");
        return Some(Status::PermissionDenied);
    }
    if let Some(status) = lateness(state, frame, now_us) {
        return Some(status);
    }
    if frame.payload_len > 0 && !frame.op.takes_payload() {
        state.counters.note_malformed();
        tracing::warn!(op = ?frame.op, "a payload on an operation that takes none; refused");
        return Some(Status::Protocol);
    }
    None
}

/// `TimedOut` for a request whose caller has given up on it: its deadline passed while it
/// waited (in this server's queue, or in a socket while the server was stopped). The
/// caller may already have undone its change on the other replicas, so it must not be
/// applied here now. Checked before a request is started, and again once its payload is
/// in; a request started in time is finished. `now_us`: a reading of the deadline clock
/// taken no earlier than the request was picked up.
fn lateness(state: &ServerState, frame: &Frame, now_us: u64) -> Option<Status> {
    if !benchfs_proto::clock::passed(frame.clock_us, now_us) {
        return None;
    }
    let late = state.counters.note_late();
    // Logged at the first, second, fourth, ... of them: a server that resumes after a stop
    // may find a whole queue of them.
    if late.is_power_of_two() {
        tracing::warn!(
            op = ?frame.op,
            request_id = frame.request_id,
            late_so_far = late,
            "a request came after its caller gave up on it (this server was stopped or \
             stalled); refused"
        );
    }
    Some(Status::TimedOut)
}

/// What a request's AM data became.
enum Received {
    /// The payload, in a store buffer (the body rode in the AM header).
    Buf(ChunkBuf),
    /// The whole data: the body when it did not fit the header, then any inline payload.
    Bytes(Vec<u8>),
}

/// Receives a request's data within the transfer bound. A payload goes straight into a
/// store buffer: by rendezvous with no copy, or copied once from UCX's eager buffer. Only
/// a body too long for the AM header comes first in the data, and then the data is taken
/// as one buffer. `None`: the request is over (refused, or its transfer failed).
async fn receive(
    state: &ServerState,
    ep: &Endpoint,
    mut msg: AmMessage,
    frame: &Frame,
    options: &ServeOptions,
) -> Option<Received> {
    if !(frame.body_in_header && frame.payload_len > 0) {
        return match bounded_transfer(ep, msg.into_data(), options).await? {
            Ok(data) => Some(Received::Bytes(data)),
            Err(e) => {
                tracing::warn!(error = %e, "receiving a request failed");
                None
            }
        };
    }
    let buf = match state.store().buffer(frame.payload_len).await {
        Ok(b) => b,
        Err(e) => {
            // The store refuses a buffer longer than a chunk: the request is at fault.
            tracing::warn!(error = %e, "no buffer for an incoming payload");
            let refused = Reply::error(store_status(e));
            send_reply(ep, frame.op, frame.request_id, refused, options).await;
            return None;
        }
    };
    match bounded_transfer(ep, msg.recv_data(StoreBuf(buf)), options).await? {
        Ok(StoreBuf(buf)) => Some(Received::Buf(buf)),
        Err(e) => {
            tracing::warn!(error = %e, "receiving a request payload failed");
            None
        }
    }
}

/// Sends a reply (see [`reply_request`]). A client that does not take it within the
/// transfer timeout loses its connection. Returns whether the reply went.
async fn send_reply(
    ep: &Endpoint,
    op: OpCode,
    request_id: u64,
    reply: Reply,
    options: &ServeOptions,
) -> bool {
    let send = reply_request(
        ep,
        op,
        request_id,
        reply,
        benchfs_proto::clock::now_us(),
        options,
    );
    reply_sent(bounded_transfer(ep, send, options).await)
}

/// A reply's data: its payload, or its body when the body does not fit the AM header.
enum ReplyData {
    Empty,
    Payload(ReplyPayload),
    Bytes(Vec<u8>),
}

impl AsRef<[u8]> for ReplyData {
    fn as_ref(&self) -> &[u8] {
        match self {
            ReplyData::Empty => &[],
            ReplyData::Payload(p) => p.as_ref(),
            ReplyData::Bytes(b) => b,
        }
    }
}

/// Hands a reply to UCX: the body rides in the AM header when it fits, the payload in the
/// data. `clock_us`, the server's time it carries, may be read any time before the send:
/// its caller takes it as a lower bound of this clock at the reply's arrival.
fn reply_request(
    ep: &Endpoint,
    op: OpCode,
    request_id: u64,
    reply: Reply,
    clock_us: u64,
    options: &ServeOptions,
) -> benchfs_ucx::Request<(Vec<u8>, ReplyData)> {
    let payload_len = reply.payload.as_ref().map_or(0, |p| p.len());
    let fits = FRAME_HEADER_LEN + reply.body.len() <= ep.worker().max_am_header();
    let frame = Frame::header(
        op,
        request_id,
        reply.status.to_wire(),
        true,
        reply.body.len(),
        payload_len,
    )
    .with_clock(clock_us);
    let mut header = frame.to_vec_with_room(if fits { reply.body.len() } else { 0 });
    let proto = if payload_len > options.rendezvous_threshold {
        AmProto::Rndv
    } else {
        AmProto::Eager
    };
    let data = if fits {
        header.extend_from_slice(&reply.body);
        reply.payload.map_or(ReplyData::Empty, ReplyData::Payload)
    } else {
        let mut data = reply.body;
        if let Some(p) = &reply.payload {
            data.extend_from_slice(p.as_ref());
        }
        ReplyData::Bytes(data)
    };
    // Kept from the start, not only once a transfer is bounded: a reply queued here may
    // be failed by another transfer's give-up before its own bound begins.
    ep.am_send(REPLY_AM_ID, header, data, proto)
        .keep_buffers_if_aborted(ep, KeepForGood::keep_for_good)
}

/// Whether a reply's send went (`None`: the transfer was given up).
fn reply_sent<T>(result: Option<Result<T, benchfs_ucx::UcxError>>) -> bool {
    match result {
        Some(Ok(_)) => true,
        Some(Err(e)) => {
            tracing::debug!(error = %e, "sending a reply failed; the client is gone");
            false
        }
        None => false,
    }
}

/// A transfer's buffers, which can be kept from reuse for good (see [`bounded_transfer`]).
trait KeepForGood: Sized {
    /// Never frees or reuses these buffers.
    fn keep_for_good(self) {
        std::mem::forget(self);
    }
}

/// A request's data received into the heap.
impl KeepForGood for Vec<u8> {}

/// A request's payload received into a store buffer: its pages or slot never go back to
/// the store's pools.
impl KeepForGood for StoreBuf {}

/// A reply's header and data.
impl KeepForGood for (Vec<u8>, ReplyData) {
    fn keep_for_good(self) {
        // The header went eagerly, copied: only the data may still be read.
        match self.1 {
            ReplyData::Payload(ReplyPayload::View(view)) => view.retire(),
            data => std::mem::forget(data),
        }
    }
}

/// Closes the connection of a client the server gives up on (it is alive but takes no
/// data), which fails the transfers in flight on it. A client that reaches this server's
/// buffers by shared memory may still do so when it runs again: their buffers are then
/// kept, never reused (see [`bounded_transfer`]).
fn give_up_on(ep: &Endpoint, options: &ServeOptions) {
    let reachable = options.shared_memory && ep.uses_shared_memory();
    tracing::debug!(
        buffers_kept = reachable,
        "closing a client's connection with transfers in flight (a client that reaches \
         this server's memory keeps its transfers' buffers from reuse)"
    );
    if reachable {
        ep.abort_keeping_buffers();
    } else {
        ep.abort();
    }
}

/// Runs a transfer with a client, or gives up on the client when it takes longer than the
/// transfer timeout: its connection is closed, which ends the transfer (`None`). Over
/// shared memory a client moves the payload itself, into or out of this server's buffer,
/// and a stopped one may do so when it runs again, long after: so then the buffers of
/// every transfer on the connection are kept for good, never reused, rather than let it
/// write into another chunk's pages or read them as this reply's bytes.
async fn bounded_transfer<T: KeepForGood + 'static>(
    ep: &Endpoint,
    transfer: benchfs_ucx::Request<T>,
    options: &ServeOptions,
) -> Option<Result<T, benchfs_ucx::UcxError>> {
    let transfer = transfer.keep_buffers_if_aborted(ep, T::keep_for_good);
    // Most replies are handed to UCX at once: no timer for those (its clock read was a
    // twentieth of a ping's handling).
    let mut transfer = std::pin::pin!(transfer);
    if let Poll::Ready(done) = poll_fn(|cx| Poll::Ready(transfer.as_mut().poll(cx))).await {
        return Some(done);
    }
    match tokio::time::timeout(options.transfer_timeout, transfer).await {
        Ok(result) => Some(result),
        Err(_) => {
            tracing::warn!(
                timeout_ms = options.transfer_timeout.as_millis() as u64,
                "a client stalled a transfer; closing its connection"
            );
            give_up_on(ep, options);
            None
        }
    }
}
