//! The server side of the RPC: take each request, decode it, run its handler as a task on
//! the event loop, and send the reply on the caller's session.
//!
//! A caller connects to the server's UCX worker address (from the registry) and opens with
//! a `Hello` that carries its own worker address. The server connects back to it, opens a
//! session under a random 64-bit id, and answers every later request that names the
//! session over that connection. A server with a job secret first checks the `Hello`'s
//! proof of the secret for that address, and drops a `Hello` without one unanswered: UCX
//! aborts the process on a malformed worker address, so no unproven address reaches it.
//! The server has no listening socket of its own: UCX's transports listen, and they drop a
//! connection that does not open with their own handshake.
//!
//! **Invariant:** nothing a peer sends can stop the loop. A frame that does not decode is
//! answered with `Protocol` when it names a session (so the caller fails fast) and dropped
//! otherwise; either way it is counted as malformed and a log line says why.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use benchfs_proto::frame::FRAME_HEADER_LEN;
use benchfs_proto::ops::HelloRequest;
use benchfs_proto::{DecodeError, Frame, Message, OpCode, Status};
use benchfs_store::ChunkStore;
use benchfs_ucx::{AmMessage, AmProto, Endpoint, Worker, WorkerAddress};
use tokio::sync::Semaphore;

use benchfs_proto::frame::{REPLY_AM_ID, REQUEST_AM_ID};
use benchfs_store::ChunkBuf;

use crate::handler::{store_status, Payload, Reply, ServerState};

/// Most messages a server queues before it drops new ones (the sender then times out).
pub const SERVER_QUEUE_MAX: usize = 8192;
/// Most sessions one server holds open: every rank of a large MPI job connects to every
/// server, so this is sized for tens of thousands of ranks.
pub const SESSIONS_MAX: usize = 65_536;
/// Sessions a server holds before it first sweeps out those whose connection failed.
const SESSIONS_SWEEP_MIN: usize = 64;
const _: () = assert!(SESSIONS_SWEEP_MIN <= SESSIONS_MAX);

/// A chunk-store buffer as a UCX send or receive buffer.
pub(crate) struct StoreBuf(pub ChunkBuf);

impl AsRef<[u8]> for StoreBuf {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

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
    /// before its session is closed: a client that is alive but stopped (SIGSTOP, a
    /// debugger) would otherwise hold the transfer's buffer and its in-flight slot for as
    /// long as it stays stopped.
    pub transfer_timeout: Duration,
}

/// Serves requests that arrive on `worker` until `stop` completes, then finishes the
/// requests in flight and returns.
pub async fn serve(
    state: Rc<ServerState>,
    worker: Rc<Worker>,
    options: ServeOptions,
    stop: impl Future<Output = ()>,
) -> Result<(), benchfs_ucx::UcxError> {
    let requests = worker.set_am_handler(REQUEST_AM_ID, SERVER_QUEUE_MAX)?;
    let sessions = Rc::new(RefCell::new(Sessions::new()));
    let inflight = Arc::new(Semaphore::new(options.inflight_max));
    tokio::pin!(stop);
    loop {
        let msg = tokio::select! {
            msg = requests.recv() => msg,
            () = &mut stop => break,
        };
        let Ok(permit) = Arc::clone(&inflight).acquire_owned().await else {
            break;
        };
        let state = Rc::clone(&state);
        let sessions = Rc::clone(&sessions);
        let worker = Rc::clone(&worker);
        let options = options.clone();
        tokio::task::spawn_local(async move {
            handle_message(&state, &worker, &sessions, msg, &options).await;
            drop(permit);
        });
    }
    // Wait for every request in flight to finish.
    let _all = inflight.acquire_many(options.inflight_max as u32).await;
    if requests.dropped_count() > 0 {
        tracing::warn!(
            dropped = requests.dropped_count(),
            "requests dropped because the queue was full"
        );
    }
    Ok(())
}

/// The sessions a server holds open: the connection back to each caller, by session id.
/// Ids are random, so a peer cannot name (and ride on) a session another caller proved
/// the secret for. Lookups cost the same for ten clients or ten thousand; sessions whose
/// connection failed are let go when the table has doubled since the last sweep, so
/// sweeping costs O(1) per insert.
struct Sessions {
    table: HashMap<u64, Endpoint>,
    sweep_at: usize,
}

impl Sessions {
    fn new() -> Self {
        Sessions {
            table: HashMap::new(),
            sweep_at: SESSIONS_SWEEP_MIN,
        }
    }

    /// Opens a session over `ep`; `None` when the table is full of live sessions or no
    /// random id could be drawn.
    fn open(&mut self, ep: Endpoint) -> Option<u64> {
        if self.table.len() >= self.sweep_at {
            self.table.retain(|_, ep| !ep.is_failed());
            self.sweep_at = (self.table.len() * 2).max(SESSIONS_SWEEP_MIN);
        }
        if self.table.len() >= SESSIONS_MAX {
            return None;
        }
        let id = loop {
            let mut bytes = [0u8; 8];
            if let Err(e) = getrandom::fill(&mut bytes) {
                tracing::error!(error = %e, "no randomness for a session id");
                return None;
            }
            let id = u64::from_le_bytes(bytes);
            // 0 is "no session" on the wire.
            if id != 0 && !self.table.contains_key(&id) {
                break id;
            }
        };
        self.table.insert(id, ep);
        Some(id)
    }
}

/// Answers a `Hello`: checks its proof of the job secret, connects back to the caller's
/// worker address and opens a session. A `Hello` that cannot be answered (its body is
/// bad, or its proof, so its address is not to be trusted) is dropped and counted.
async fn hello(
    state: &ServerState,
    worker: &Rc<Worker>,
    sessions: &RefCell<Sessions>,
    frame: &Frame,
    body: &[u8],
    options: &ServeOptions,
) {
    let request = match HelloRequest::from_bytes(body) {
        Ok(r) => r,
        Err(e) => {
            state.counters.note_malformed();
            tracing::warn!(error = %e, "malformed Hello; dropped (no address to answer)");
            return;
        }
    };
    if !state.proves_secret(&request.address, &request.proof) {
        state.counters.note_malformed();
        tracing::warn!(
            client = %request.client,
            "handshake refused: no proof of the job secret; dropped unanswered"
        );
        return;
    }
    let address = WorkerAddress::from_bytes(request.address);
    let ep = match Endpoint::connect_address(worker, &address) {
        Ok(ep) => ep,
        Err(e) => {
            tracing::warn!(client = %request.client, error = %e, "cannot connect back to a caller; Hello dropped");
            return;
        }
    };
    let opened = sessions.borrow_mut().open(ep.clone());
    let reply = match opened {
        Some(session) => state.hello(&request.client, session),
        None => {
            tracing::warn!(max = SESSIONS_MAX, client = %request.client, "handshake refused: the server holds the most sessions it may");
            Reply::error(Status::Busy)
        }
    };
    send_reply(&ep, frame.op, frame.request_id, reply, options).await;
}

/// The request id and session read from a raw header, for answering frames that do not
/// decode.
fn raw_ids(header: &[u8]) -> Option<(u64, u64)> {
    let id = header.get(8..16)?;
    let session = header.get(32..40)?;
    Some((
        u64::from_le_bytes(id.try_into().ok()?),
        u64::from_le_bytes(session.try_into().ok()?),
    ))
}

/// The connection back to `session`'s caller, if the session is open.
fn session_ep(sessions: &RefCell<Sessions>, session: u64) -> Option<Endpoint> {
    let sessions = sessions.borrow();
    sessions.table.get(&session).cloned()
}

async fn handle_message(
    state: &ServerState,
    worker: &Rc<Worker>,
    sessions: &RefCell<Sessions>,
    msg: AmMessage,
    options: &ServeOptions,
) {
    let frame = match decode_request(&msg) {
        Ok(f) => f,
        Err(e) => {
            state.counters.note_malformed();
            tracing::warn!(error = %e, "malformed request frame");
            let raw = raw_ids(msg.header());
            if let Some((ep, id)) = raw.and_then(|(id, s)| Some((session_ep(sessions, s)?, id))) {
                let refused = Reply::error(Status::Protocol);
                send_reply(&ep, OpCode::Ping, id, refused, options).await;
            }
            return;
        }
    };
    if frame.op == OpCode::Hello {
        let Some(body) = hello_body(state, msg, &frame, options).await else {
            return;
        };
        hello(state, worker, sessions, &frame, &body, options).await;
        return;
    }
    let Some(ep) = session_ep(sessions, frame.session) else {
        tracing::warn!(op = ?frame.op, "a request of no open session; dropped");
        return;
    };
    if ep.is_failed() {
        // Its caller is gone or its session was closed; nobody can get the answer.
        return;
    }
    if let Some(status) = refusal(state, &frame) {
        let refused = Reply::error(status);
        send_reply(&ep, frame.op, frame.request_id, refused, options).await;
        return;
    }
    let header = msg.header().to_vec();
    let Some(received) = receive(state, &ep, msg, &frame, options).await else {
        return;
    };
    let data;
    let (body, payload) = match received {
        Received::Buf(buf) => (&header[FRAME_HEADER_LEN..], Payload::Buf(buf)),
        Received::Bytes(bytes) => {
            data = bytes;
            let (body, inline) = if frame.body_in_header {
                (&header[FRAME_HEADER_LEN..], &data[..])
            } else {
                data.split_at(frame.body_len.min(data.len()))
            };
            let payload = match inline.is_empty() {
                true => Payload::None,
                false => Payload::Bytes(inline),
            };
            (body, payload)
        }
    };
    let reply = state.handle(frame.op, body, payload).await;
    send_reply(&ep, frame.op, frame.request_id, reply, options).await;
}

/// The body of a `Hello`, which may carry no payload. It is taken within the transfer
/// bound; there is no session to close when the caller stalls, so the request is dropped.
async fn hello_body(
    state: &ServerState,
    msg: AmMessage,
    frame: &Frame,
    options: &ServeOptions,
) -> Option<Vec<u8>> {
    if frame.payload_len > 0 {
        state.counters.note_malformed();
        tracing::warn!("a payload on a Hello; dropped");
        return None;
    }
    if frame.body_in_header {
        return Some(msg.header()[FRAME_HEADER_LEN..].to_vec());
    }
    match tokio::time::timeout(options.transfer_timeout, msg.into_data()).await {
        Ok(Ok(body)) => Some(body),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "receiving a Hello failed");
            None
        }
        Err(_) => {
            tracing::warn!("a caller stalled its Hello; dropped");
            None
        }
    }
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

/// Why a request is refused before any of its payload is received, if it is: a payload
/// on an operation that takes none is never taken in.
fn refusal(state: &ServerState, frame: &Frame) -> Option<Status> {
    if frame.payload_len > 0 && !frame.op.takes_payload() {
        state.counters.note_malformed();
        tracing::warn!(op = ?frame.op, "a payload on an operation that takes none; refused");
        return Some(Status::Protocol);
    }
    None
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

/// Sends a reply; the body rides in the AM header when it fits, the payload in the data.
/// A client that does not take it within the transfer timeout loses its connection.
async fn send_reply(
    ep: &Endpoint,
    op: OpCode,
    request_id: u64,
    reply: Reply,
    options: &ServeOptions,
) {
    let payload_len = reply.payload.as_ref().map_or(0, |p| p.len());
    let fits = FRAME_HEADER_LEN + reply.body.len() <= ep.worker().max_am_header();
    let mut header = Frame::header(
        op,
        request_id,
        reply.status.to_wire(),
        true,
        reply.body.len(),
        payload_len,
    )
    .to_bytes()
    .to_vec();
    let proto = if payload_len > options.rendezvous_threshold {
        AmProto::Rndv
    } else {
        AmProto::Eager
    };
    let result = if fits {
        header.extend_from_slice(&reply.body);
        match reply.payload {
            Some(p) => {
                let send = ep.am_send(REPLY_AM_ID, header, StoreBuf(p), proto);
                bounded_transfer(ep, send, options)
                    .await
                    .map(|r| r.map(drop))
            }
            None => {
                let send = ep.am_send(REPLY_AM_ID, header, Vec::new(), proto);
                bounded_transfer(ep, send, options)
                    .await
                    .map(|r| r.map(drop))
            }
        }
    } else {
        let mut data = reply.body;
        if let Some(p) = &reply.payload {
            data.extend_from_slice(p.as_slice());
        }
        let send = ep.am_send(REPLY_AM_ID, header, data, proto);
        bounded_transfer(ep, send, options)
            .await
            .map(|r| r.map(drop))
    };
    if let Some(Err(e)) = result {
        tracing::debug!(error = %e, "sending a reply failed; the client is gone");
    }
}

/// Runs a transfer with a client, or gives up on the client when it takes longer than the
/// transfer timeout: its connection is closed, which ends the transfer (`None`).
async fn bounded_transfer<T>(
    ep: &Endpoint,
    transfer: benchfs_ucx::Request<T>,
    options: &ServeOptions,
) -> Option<Result<T, benchfs_ucx::UcxError>> {
    match tokio::time::timeout(options.transfer_timeout, transfer).await {
        Ok(result) => Some(result),
        Err(_) => {
            tracing::warn!(
                timeout_ms = options.transfer_timeout.as_millis() as u64,
                "a client stalled a transfer; closing its session"
            );
            ep.abort();
            None
        }
    }
}
