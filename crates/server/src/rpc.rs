//! The server side of the RPC: accept connections, decode each request, run its handler
//! as a task on the event loop, and send the reply on the connection it came from.
//!
//! **Invariant:** nothing a peer sends can stop the loop. A frame that does not decode is
//! answered with `Protocol` when its request id can be read (so the caller fails fast) and
//! dropped otherwise, and a log line says why.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use benchfs_proto::frame::FRAME_HEADER_LEN;
use benchfs_proto::{DecodeError, Frame, OpCode, Status};
use benchfs_store::ChunkStore;
use benchfs_ucx::{AmMessage, AmProto, Endpoint, Listener, Worker};
use tokio::sync::Semaphore;

use benchfs_proto::frame::{REPLY_AM_ID, REQUEST_AM_ID};
use benchfs_store::ChunkBuf;

use crate::handler::{store_status, Payload, Reply, ServerState};

/// Most messages a server queues before it drops new ones (the sender then times out).
pub const SERVER_QUEUE_MAX: usize = 8192;

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
    /// Replies with a payload above this go by rendezvous.
    pub rdma_threshold: usize,
    /// How long a client may take to deliver a request's payload or to take a reply
    /// before its connection is closed: a client that is alive but stopped (SIGSTOP, a
    /// debugger) would otherwise hold the transfer's buffer and its in-flight slot for as
    /// long as it stays stopped.
    pub transfer_timeout: Duration,
}

/// Serves requests until `stop` is set, then finishes the requests in flight and returns.
pub async fn serve(
    state: Rc<ServerState>,
    worker: Rc<Worker>,
    listener: Listener,
    options: ServeOptions,
    stop: Arc<AtomicBool>,
) -> Result<(), benchfs_ucx::UcxError> {
    let requests = worker.set_am_handler(REQUEST_AM_ID, SERVER_QUEUE_MAX)?;
    let connections: Rc<RefCell<Vec<Endpoint>>> = Rc::default();
    let accept = {
        let connections = Rc::clone(&connections);
        tokio::task::spawn_local(async move {
            loop {
                match listener.accept().await {
                    Ok(ep) => {
                        let mut list = connections.borrow_mut();
                        list.retain(|e| !e.is_failed());
                        list.push(ep);
                        tracing::debug!(connections = list.len(), "accepted a connection");
                    }
                    Err(e) => tracing::warn!(error = %e, "accepting a connection failed"),
                }
            }
        })
    };
    let inflight = Arc::new(Semaphore::new(options.inflight_max));
    let handshakes = Rc::new(Handshakes::new(state.requires_handshake()));
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
    loop {
        let msg = tokio::select! {
            msg = requests.recv() => msg,
            _ = tick.tick() => {
                if stop.load(Ordering::Relaxed) { break; }
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&inflight).acquire_owned().await else {
            break;
        };
        let state = Rc::clone(&state);
        let handshakes = Rc::clone(&handshakes);
        let options = options.clone();
        tokio::task::spawn_local(async move {
            handle_message(&state, &handshakes, msg, &options).await;
            drop(permit);
        });
    }
    // Stop accepting, then wait for every request in flight to finish.
    accept.abort();
    let _all = inflight.acquire_many(options.inflight_max as u32).await;
    if requests.dropped_count() > 0 {
        tracing::warn!(
            dropped = requests.dropped_count(),
            "requests dropped because the queue was full"
        );
    }
    Ok(())
}

/// The connections that completed a handshake with the job secret. Enforced only when the
/// server has a secret; a list scanned per request, which stays cheap for the few hundred
/// clients one server sees.
struct Handshakes {
    required: bool,
    admitted: RefCell<Vec<Endpoint>>,
}

impl Handshakes {
    fn new(required: bool) -> Self {
        Handshakes {
            required,
            admitted: RefCell::default(),
        }
    }

    fn admits(&self, ep: &Endpoint) -> bool {
        !self.required || self.admitted.borrow().iter().any(|e| e.same_as(ep))
    }

    fn admit(&self, ep: &Endpoint) {
        if self.required {
            let mut admitted = self.admitted.borrow_mut();
            // Admission is by endpoint identity (`same_as`), never by UCX handle, so a
            // handle UCX reuses after a close admits nobody; failed ones are let go here.
            admitted.retain(|e| !e.is_failed());
            if !admitted.iter().any(|e| e.same_as(ep)) {
                admitted.push(ep.clone());
            }
        }
    }
}

/// A request id read from the raw header, for answering frames that do not decode.
fn raw_request_id(header: &[u8]) -> Option<u64> {
    let bytes = header.get(8..16)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

async fn handle_message(
    state: &ServerState,
    authenticated: &Handshakes,
    mut msg: AmMessage,
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
    // A reply on the request channel is as malformed as a bad header: count and refuse it.
    let decoded = Frame::decode(msg.header(), msg.data_len()).and_then(|f| match f.is_reply {
        false => Ok(f),
        true => Err(DecodeError::BadField {
            field: "flags",
            reason: "a reply on the request channel",
        }),
    });
    let frame = match decoded {
        Ok(f) => f,
        Err(e) => {
            state.counters.note_malformed();
            tracing::warn!(error = %e, "malformed request frame");
            if let Some(id) = raw_request_id(msg.header()) {
                send_reply(
                    &ep,
                    OpCode::Ping,
                    id,
                    Reply::error(Status::Protocol),
                    options,
                )
                .await;
            }
            return;
        }
    };
    // Refused before any payload is received: an unauthenticated peer gets no work done.
    if frame.op != OpCode::Hello && !authenticated.admits(&ep) {
        tracing::warn!(op = ?frame.op, "request before a successful handshake; refused");
        let refused = Reply::error(Status::PermissionDenied);
        send_reply(&ep, frame.op, frame.request_id, refused, options).await;
        return;
    }
    // Refused before any payload is received, too.
    if frame.payload_len > 0 && !frame.op.takes_payload() {
        state.counters.note_malformed();
        tracing::warn!(op = ?frame.op, "a payload on an operation that takes none; refused");
        let refused = Reply::error(Status::Protocol);
        send_reply(&ep, frame.op, frame.request_id, refused, options).await;
        return;
    }
    // A payload goes straight into a store buffer: by rendezvous with no copy, or copied
    // once from UCX's eager buffer. Only a body too long for the AM header comes first in
    // the data, and then the data is taken as one buffer.
    let header = msg.header().to_vec();
    let mut data = Vec::new();
    let mut payload_buf = None;
    if frame.body_in_header && frame.payload_len > 0 {
        let buf = match state.store().buffer(frame.payload_len).await {
            Ok(b) => b,
            Err(e) => {
                // The store refuses a buffer longer than a chunk: the request is at fault.
                tracing::warn!(error = %e, "no buffer for an incoming payload");
                let refused = Reply::error(store_status(e));
                send_reply(&ep, frame.op, frame.request_id, refused, options).await;
                return;
            }
        };
        match bounded_transfer(&ep, msg.recv_data(StoreBuf(buf)), options).await {
            Some(Ok(StoreBuf(b))) => payload_buf = Some(b),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "receiving a request payload failed");
                return;
            }
            None => return,
        }
    } else {
        match bounded_transfer(&ep, msg.into_data(), options).await {
            Some(Ok(d)) => data = d,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "receiving a request failed");
                return;
            }
            None => return,
        }
    }
    let (body, inline) = if frame.body_in_header {
        (&header[FRAME_HEADER_LEN..], &data[..])
    } else {
        data.split_at(frame.body_len.min(data.len()))
    };
    let payload = match payload_buf {
        Some(b) => Payload::Buf(b),
        None if inline.is_empty() => Payload::None,
        None => Payload::Bytes(inline),
    };
    let reply = state.handle(frame.op, body, payload).await;
    if frame.op == OpCode::Hello && reply.status == Status::Ok {
        authenticated.admit(&ep);
    }
    send_reply(&ep, frame.op, frame.request_id, reply, options).await;
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
    let proto = if payload_len > options.rdma_threshold {
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
                "a client stalled a transfer; closing its connection"
            );
            ep.abort();
            None
        }
    }
}
