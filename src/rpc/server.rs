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

use benchfs_proto::frame::FRAME_HEADER_LEN;
use benchfs_proto::ops::RemoteBuffer;
use benchfs_proto::{DecodeError, Frame, OpCode, Status};
use benchfs_store::{ChunkBuf, ChunkStore};
use benchfs_ucx::{AmMessage, AmProto, Endpoint, Listener, RemoteKey, Worker};
use tokio::sync::Semaphore;

use super::{StoreBuf, REPLY_AM_ID, REQUEST_AM_ID, SERVER_QUEUE_MAX};
use crate::server::{store_status, DataMover, Payload, Reply, ServerState};

/// Settings of a serving loop.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Requests handled at once; more wait in the queue.
    pub inflight_max: usize,
    /// Replies with a payload above this go by rendezvous.
    pub rdma_threshold: usize,
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
        let threshold = options.rdma_threshold;
        tokio::task::spawn_local(async move {
            handle_message(&state, msg, threshold).await;
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

/// A request id read from the raw header, for answering frames that do not decode.
fn raw_request_id(header: &[u8]) -> Option<u64> {
    let bytes = header.get(8..16)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

async fn handle_message(state: &ServerState, mut msg: AmMessage, threshold: usize) {
    let Some(ep) = msg.reply_endpoint().cloned() else {
        tracing::warn!("request without a reply endpoint; dropped");
        return;
    };
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
            state
                .counters
                .malformed
                .set(state.counters.malformed.get() + 1);
            tracing::warn!(error = %e, "malformed request frame");
            if let Some(id) = raw_request_id(msg.header()) {
                send_reply(
                    &ep,
                    OpCode::Ping,
                    id,
                    Reply {
                        status: Status::Protocol,
                        body: Vec::new(),
                        payload: None,
                    },
                    threshold,
                )
                .await;
            }
            return;
        }
    };
    // The payload goes straight into a store buffer when it came by rendezvous; eager
    // data is already an owned buffer.
    let header = msg.header().to_vec();
    let mut data = Vec::new();
    let mut payload_buf = None;
    if msg.is_rendezvous() && frame.body_in_header {
        let buf = match state.store().buffer(frame.payload_len).await {
            Ok(b) => b,
            Err(e) => {
                // The store refuses a buffer longer than a chunk: the request is at fault.
                tracing::warn!(error = %e, "no buffer for an incoming payload");
                let refused = Reply {
                    status: store_status(e),
                    body: Vec::new(),
                    payload: None,
                };
                send_reply(&ep, frame.op, frame.request_id, refused, threshold).await;
                return;
            }
        };
        match msg.recv_data(StoreBuf(buf)).await {
            Ok(StoreBuf(b)) => payload_buf = Some(b),
            Err(e) => {
                tracing::warn!(error = %e, "receiving a request payload failed");
                return;
            }
        }
    } else {
        match msg.into_data().await {
            Ok(d) => data = d,
            Err(e) => {
                tracing::warn!(error = %e, "receiving a request failed");
                return;
            }
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
    let mover = UcxMover { ep: ep.clone() };
    let reply = state.handle(frame.op, body, payload, &mover).await;
    send_reply(&ep, frame.op, frame.request_id, reply, threshold).await;
}

/// Sends a reply; the body rides in the AM header when it fits, the payload in the data.
async fn send_reply(ep: &Endpoint, op: OpCode, request_id: u64, reply: Reply, threshold: usize) {
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
    let proto = if payload_len > threshold {
        AmProto::Rndv
    } else {
        AmProto::Eager
    };
    let result = if fits {
        header.extend_from_slice(&reply.body);
        match reply.payload {
            Some(p) => ep
                .am_send(REPLY_AM_ID, header, StoreBuf(p), proto)
                .await
                .map(drop),
            None => ep
                .am_send(REPLY_AM_ID, header, Vec::new(), proto)
                .await
                .map(drop),
        }
    } else {
        let mut data = reply.body;
        if let Some(p) = &reply.payload {
            data.extend_from_slice(p.as_slice());
        }
        ep.am_send(REPLY_AM_ID, header, data, proto).await.map(drop)
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "sending a reply failed; the client is gone");
    }
}

/// Moves RDMA payloads with UCX get/put on the requesting client's endpoint.
struct UcxMover {
    ep: Endpoint,
}

impl UcxMover {
    fn rkey(&self, remote: &RemoteBuffer) -> Result<RemoteKey, Status> {
        RemoteKey::unpack(&self.ep, &remote.rkey).map_err(|e| {
            tracing::warn!(error = %e, "bad remote key");
            Status::InvalidArgument
        })
    }
}

impl DataMover for UcxMover {
    async fn pull(&self, remote: &RemoteBuffer, buf: ChunkBuf) -> (Result<(), Status>, ChunkBuf) {
        let rkey = match self.rkey(remote) {
            Ok(k) => k,
            Err(s) => return (Err(s), buf),
        };
        // The request owns the buffer until UCX is done with it; on failure it is gone
        // with the request, so the caller gets a fresh, empty one back.
        let len = buf.len();
        match self.ep.get(StoreBuf(buf), remote.addr, &rkey).await {
            Ok(StoreBuf(b)) => (Ok(()), b),
            Err(e) => {
                tracing::warn!(error = %e, "RMA get failed");
                (Err(Status::Unavailable), ChunkBuf::with_len(len))
            }
        }
    }

    async fn push(&self, buf: ChunkBuf, remote: &RemoteBuffer) -> (Result<(), Status>, ChunkBuf) {
        let rkey = match self.rkey(remote) {
            Ok(k) => k,
            Err(s) => return (Err(s), buf),
        };
        let len = buf.len();
        let result: Result<(), benchfs_ucx::UcxError> =
            match self.ep.put(StoreBuf(buf), remote.addr, &rkey).await {
                Ok(StoreBuf(b)) => match self.ep.flush().await {
                    Ok(()) => return (Ok(()), b),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
        if let Err(e) = result {
            tracing::warn!(error = %e, "RMA put failed");
        }
        (Err(Status::Unavailable), ChunkBuf::with_len(len))
    }
}
