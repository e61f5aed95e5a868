//! Write-behind: a handle's writes return once their bytes are copied into chunk writes in
//! flight, at most `client.write_behind_bytes` of them for the whole client, and the
//! replies are collected later, by a later call into the client.
//!
//! **Invariants:**
//! - A write that returned keeps no loan of the caller's memory. A chunk write in flight
//!   owns its payload: a copy of a borrowed slice (the async API), or a view of the
//!   blocking caller's loan, whose send ends before that write returns (the loan's
//!   scope waits for it); only the reply is then still to come.
//! - Every replica of every chunk gets the write, as without write-behind; a write counts
//!   as done when every replica answered.
//! - A failed write is never dropped: it is kept on its handle (the first failure, naming
//!   the server), and every later write, fsync, fstat and close of the handle fails with
//!   it, so the application learns of it even if it checks only close.
//! - A handle's size is published only once all its writes came back, and never once one
//!   failed: fsync and close wait for every byte, then publish.
//! - Whatever reads or changes a file this client has writes in flight for waits for them
//!   first (reads, stat, truncate, rename, unlink, O_TRUNC), so this client sees its own
//!   writes; other clients see them after close or fsync, as without write-behind.
//! - The client is single-threaded: calls in flight make progress only while some call
//!   into the client is awaited. Each write drives those before it, fsync and close drain
//!   them. A blocking caller that stops calling into the client for longer than the RPC
//!   timeout with writes in flight may see them time out; the failure reaches it as above.

use foldhash::HashMap;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

use benchfs_config::ClientConfig;
use benchfs_proto::layout::{ChunkLayout, ChunkSpan};
use benchfs_proto::meta::FileMetadata;
use benchfs_proto::placement::{PlacementKey, ServerIndex};
use benchfs_proto::{ops, Status};
use futures_util::future::join_all;
use tokio::sync::Notify;

use super::data::{chunk_write, WriteSource};
use super::read_ahead::Retired;
use super::{fs_err, rpc_err, Fd, FsClient};
use crate::error::ApiError;
use crate::rpc::{Connection, OutPayload, RpcError};

/// Most chunk writes in flight at once, whatever their size: bounds the tasks and the
/// bookkeeping of a stream of small writes, which gains little from more in flight.
const WRITES_IN_FLIGHT_MAX: usize = 256;

/// Most turns [`FsClient::advance_in_flight`] gives the calls in flight: enough for a
/// reply to be taken in, routed and answered, few enough that a caller is not held while a
/// stream of replies keeps coming.
const ADVANCE_TURNS_MAX: usize = 8;

/// What this client's write-behind and read-ahead did, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipelineCounters {
    /// Chunk writes sent behind the calls that made them (one per chunk piece, however
    /// many replicas it has).
    pub writes_behind: u64,
    /// Of those, the ones that failed on some replica.
    pub writes_behind_failed: u64,
    /// Bytes asked for ahead of reads.
    pub read_ahead_bytes: u64,
    /// Bytes reads took from what was read ahead.
    pub read_ahead_hit_bytes: u64,
}

/// The client's write-behind state and its read-ahead setting.
pub(super) struct Pipeline {
    /// Most bytes of writes in flight; 0: writes wait for their servers.
    write_window_bytes: u64,
    /// Most bytes a handle reads ahead; 0: no read-ahead.
    pub(super) read_window_bytes: u64,
    /// Chunk writes in flight, by id.
    writes: RefCell<HashMap<u64, WriteInFlight>>,
    /// Bytes of the writes in flight.
    bytes: Cell<u64>,
    next_id: Cell<u64>,
    /// Replies that came back and are not collected yet, pushed by the calls' tasks.
    replies: Rc<RefCell<Vec<WriteReply>>>,
    /// Woken whenever a reply is pushed.
    replied: Rc<Notify>,
    /// Fetches ahead that no handle wants any more, left to finish.
    pub(super) retired: Retired,
    pub(super) counters: Cell<PipelineCounters>,
}

impl Pipeline {
    pub(super) fn new(config: &ClientConfig) -> Pipeline {
        Pipeline {
            write_window_bytes: config.write_behind_bytes,
            read_window_bytes: config.read_ahead_bytes,
            writes: RefCell::default(),
            bytes: Cell::new(0),
            next_id: Cell::new(0),
            replies: Rc::default(),
            replied: Rc::default(),
            retired: Rc::default(),
            counters: Cell::default(),
        }
    }

    pub(super) fn count(&self, f: impl FnOnce(&mut PipelineCounters)) {
        let mut counters = self.counters.get();
        f(&mut counters);
        self.counters.set(counters);
    }

    /// Whether a write of `len` more bytes may go now.
    fn has_room(&self, len: u64) -> bool {
        let bytes = self.bytes.get();
        bytes == 0
            || (bytes.saturating_add(len) <= self.write_window_bytes
                && self.writes.borrow().len() < WRITES_IN_FLIGHT_MAX)
    }

    fn any_write(&self, of: impl Fn(&WriteInFlight) -> bool) -> bool {
        self.writes.borrow().values().any(of)
    }
}

/// One chunk piece on its way to its replicas.
struct WriteInFlight {
    fd: Fd,
    file_id: u64,
    /// The chunk and the bytes of it.
    index: u64,
    range: std::ops::Range<u64>,
    len: u64,
    /// Replicas that have not answered yet.
    left: usize,
    /// The first replica's failure.
    failed: Option<RpcError>,
}

impl WriteInFlight {
    /// Whether this write touches bytes of `span` of file `file_id`.
    fn overlaps(&self, file_id: u64, span: &ChunkSpan) -> bool {
        let end = span.offset_in_chunk + span.len;
        self.file_id == file_id
            && self.index == span.index
            && self.range.start < end
            && span.offset_in_chunk < self.range.end
    }
}

/// A replica's answer to a chunk write in flight.
struct WriteReply {
    id: u64,
    server: ServerIndex,
    conn: Rc<Connection>,
    result: Result<(), RpcError>,
}

/// Pushes a call's reply when dropped: when the call ended, or if its task ended some
/// other way (a panic, the event loop dropped), so a write is never left unanswered.
struct ReplySlot {
    reply: Option<WriteReply>,
    replies: Rc<RefCell<Vec<WriteReply>>>,
    replied: Rc<Notify>,
}

impl Drop for ReplySlot {
    fn drop(&mut self) {
        if let Some(reply) = self.reply.take() {
            self.replies.borrow_mut().push(reply);
            self.replied.notify_waiters();
        }
    }
}

impl FsClient {
    /// Whether writes go behind the calls that make them.
    pub(super) fn writes_behind(&self) -> bool {
        self.pipeline.write_window_bytes > 0
    }

    /// What write-behind and read-ahead did so far.
    pub fn pipeline_counters(&self) -> PipelineCounters {
        self.pipeline.counters.get()
    }

    /// Sends `data` at `offset` of the file open as `fd` (named `path`) to every replica of
    /// every chunk it touches, returning once each piece is copied and on its way: waits
    /// only for room in the window. A piece that cannot even be sent (no connection) fails
    /// the call; one that fails later fails the handle.
    pub(super) async fn write_behind(
        &self,
        fd: Fd,
        path: &str,
        meta: FileMetadata,
        data: WriteSource<'_>,
        (offset, append_cut_gen): (u64, Option<u16>),
    ) -> Result<(), ApiError> {
        let spans = ChunkLayout::new(meta.chunk_size)
            .spans(offset, data.len() as u64)
            .map_err(|_| fs_err("write", path, Status::InvalidArgument))?;
        for span in spans {
            // A write in flight to the same bytes lands first: two in flight at once could
            // land in either order.
            self.wait_writes(|p| {
                p.has_room(span.len) && !p.any_write(|w| w.overlaps(meta.file_id, &span))
            })
            .await;
            // One of the handle's writes may have failed while this one waited.
            self.write_error(fd)?;
            let start = span.buf_offset as usize;
            let part = data.part(start..start + span.len as usize);
            self.send_behind(fd, path, meta, &span, (part, append_cut_gen))
                .await?;
        }
        self.advance_in_flight().await;
        Ok(())
    }

    /// Lets the calls in flight advance before a write or read returns to its caller. They
    /// run only while a call into the client waits, and one that found room (or its
    /// bytes fetched already) never waited: without this the calls just spawned would not
    /// even start until a call found the window full, and the pipeline would run in
    /// bursts. Each turn yields to the client's tasks, and another follows while the
    /// worker finds events for them, at most `ADVANCE_TURNS_MAX`.
    pub(super) async fn advance_in_flight(&self) {
        for _ in 0..ADVANCE_TURNS_MAX {
            benchfs_ucx::yield_turn().await;
            if self.rpc.worker().progress() == 0 {
                return;
            }
        }
    }

    /// Before a write behind at `offset` of chunk `index` of `meta` through handle `fd`:
    /// restores the bytes it skips on a replica among `servers` that lost them (see
    /// `lost`), once this client's writes to the chunk landed, since the copy would undo
    /// them. Returns how much of the chunk the file holds for the write.
    async fn restore_behind(
        &self,
        fd: Fd,
        meta: &FileMetadata,
        (index, offset): (u64, u64),
        servers: &[ServerIndex],
    ) -> u64 {
        let held = self.chunk_held(Some(fd), meta, index);
        if !self.may_skip_lost(meta, (offset, held), servers) {
            return held;
        }
        let file_id = meta.file_id;
        self.wait_writes(|p| !p.any_write(|w| w.file_id == file_id && w.index == index))
            .await;
        // Those writes are acknowledged now.
        let held = self.chunk_held(Some(fd), meta, index);
        self.restore_skipped(meta, index, (offset, held), servers)
            .await;
        held
    }

    /// Sends one chunk piece to its replicas, each call in a task of its own that pushes
    /// its reply for [`FsClient::collect_writes`].
    async fn send_behind(
        &self,
        fd: Fd,
        path: &str,
        meta: FileMetadata,
        span: &ChunkSpan,
        (part, append_cut_gen): (WriteSource<'_>, Option<u16>),
    ) -> Result<(), ApiError> {
        let key = PlacementKey::Chunk {
            file_id: meta.file_id,
            index: span.index,
        };
        let servers = self.replica_set(key);
        // Every replica's connection first, so a piece that cannot reach one of them is
        // sent to none and fails this call.
        let conns = join_all(servers.iter().map(|&s| self.conn(s))).await;
        let mut ready = Vec::with_capacity(servers.len());
        for (&server, conn) in servers.iter().zip(conns) {
            match conn {
                Ok(conn) => ready.push((server, conn)),
                Err(e) => {
                    self.note_call(server, Some(&e));
                    return Err(rpc_err("write", path)(e));
                }
            }
        }
        let (index, offset) = (span.index, span.offset_in_chunk);
        let held = self
            .restore_behind(fd, &meta, (index, offset), &servers)
            .await;
        let payloads = part.payloads(&self.rpc, ready.len());
        let req = chunk_write(&meta, index, (offset, span.len), held, append_cut_gen);
        let p = &self.pipeline;
        let id = p.next_id.get();
        p.next_id.set(id.wrapping_add(1));
        p.writes.borrow_mut().insert(
            id,
            WriteInFlight {
                fd,
                file_id: meta.file_id,
                index: span.index,
                range: span.offset_in_chunk..span.offset_in_chunk + span.len,
                len: span.len,
                left: ready.len(),
                failed: None,
            },
        );
        p.bytes.set(p.bytes.get() + span.len);
        p.count(|c| c.writes_behind += 1);
        for ((server, conn), payload) in ready.into_iter().zip(payloads) {
            let mut slot = ReplySlot {
                reply: Some(WriteReply {
                    id,
                    server,
                    conn: Rc::clone(&conn),
                    result: Err(RpcError::Status {
                        server: conn.server().to_string(),
                        status: Status::Io,
                    }),
                }),
                replies: Rc::clone(&p.replies),
                replied: Rc::clone(&p.replied),
            };
            let req = req.clone();
            tokio::task::spawn_local(async move {
                let result = conn
                    .call_into::<ops::WriteChunk>(&req, payload, None)
                    .await
                    .map(drop);
                if let Some(reply) = slot.reply.as_mut() {
                    reply.result = result;
                }
            });
        }
        Ok(())
    }

    /// Takes in the replies that came back: counts each call, and settles each chunk
    /// piece whose replicas all answered, keeping a failure on its handle.
    pub(super) fn collect_writes(&self) {
        let replies = std::mem::take(&mut *self.pipeline.replies.borrow_mut());
        for reply in replies {
            self.call_ended(reply.server, &reply.conn, reply.result.as_ref().err());
            let finished = {
                let mut writes = self.pipeline.writes.borrow_mut();
                let Some(write) = writes.get_mut(&reply.id) else {
                    continue;
                };
                write.left -= 1;
                if let Err(e) = reply.result {
                    write.failed.get_or_insert(e);
                }
                if write.left > 0 {
                    continue;
                }
                writes.remove(&reply.id)
            };
            let Some(write) = finished else { continue };
            let p = &self.pipeline;
            p.bytes.set(p.bytes.get() - write.len);
            if write.failed.is_none() {
                self.note_acked(write.fd, write.index, write.range.end);
            }
            if let Some(e) = write.failed {
                p.count(|c| c.writes_behind_failed += 1);
                let kept = self.with_file(write.fd, |f| {
                    tracing::warn!(path = f.path, error = %e, "a write behind failed; the handle reports it");
                    f.write_error.get_or_insert(e);
                });
                if kept.is_err() {
                    // Close waits for a handle's writes, so this is a bug, not an outcome.
                    tracing::error!(
                        fd = write.fd,
                        "a write behind failed after its handle closed"
                    );
                }
            }
        }
    }

    /// Collects replies until `done` holds of the pipeline.
    async fn wait_writes(&self, done: impl Fn(&Pipeline) -> bool) {
        // Most closes have nothing in flight: no registration with the notifier (a lock).
        self.collect_writes();
        if done(&self.pipeline) {
            return;
        }
        let replied = Rc::clone(&self.pipeline.replied);
        loop {
            // Registered before the check, so a reply pushed in between still wakes us.
            let notified = replied.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.collect_writes();
            if done(&self.pipeline) {
                return;
            }
            notified.await;
        }
    }

    /// Waits until every write in flight came back.
    pub(super) async fn drain_writes(&self) {
        self.wait_writes(|p| p.writes.borrow().is_empty()).await;
    }

    /// Waits until every write of handle `fd` came back.
    pub(super) async fn drain_fd(&self, fd: Fd) {
        self.wait_writes(|p| !p.any_write(|w| w.fd == fd)).await;
    }

    /// Waits until every write of file `file_id` came back.
    pub(super) async fn drain_file(&self, file_id: u64) {
        self.wait_writes(|p| !p.any_write(|w| w.file_id == file_id))
            .await;
    }

    /// Whether writes are in flight.
    pub(super) fn has_writes(&self) -> bool {
        !self.pipeline.writes.borrow().is_empty()
    }

    /// Whether writes of file `file_id` are in flight.
    pub(super) fn has_writes_of(&self, file_id: u64) -> bool {
        self.pipeline.any_write(|w| w.file_id == file_id)
    }

    /// Waits until every write of this client's handles of the file at `path`
    /// (normalised) came back.
    pub(super) async fn drain_path_writes(&self, path: &str) {
        let fds = self.fds_where(|f| f.path == path);
        if !fds.is_empty() {
            self.wait_writes(|p| !p.any_write(|w| fds.contains(&w.fd)))
                .await;
        }
    }

    /// Readies the file at `path` (normalised) for an operation that changes it by name
    /// (truncate, rename, unlink): waits for every write of this client's handles of it,
    /// and drops what they read ahead.
    pub(super) async fn drain_path(&self, path: &str) {
        self.drain_path_writes(path).await;
        for f in self.files.borrow_mut().values_mut() {
            if f.path == path {
                f.read_ahead.reset();
            }
        }
    }

    /// The failure a write behind of handle `fd` met, if any, as an error naming the path
    /// and the server.
    pub(super) fn write_error(&self, fd: Fd) -> Result<(), ApiError> {
        self.collect_writes();
        self.with_file(fd, |f| match &f.write_error {
            Some(e) => Err(ApiError::Rpc {
                op: "write",
                path: f.path.clone(),
                source: e.clone(),
            }),
            None => Ok(()),
        })?
    }
}

impl WriteSource<'_> {
    /// A payload of these bytes for each of `copies` replicas. A borrowed slice is copied
    /// once, since the write returns before its calls end. A loan is lent to each call
    /// instead: the blocking API's write does not return until every send has read its
    /// view ([`benchfs_ucx::lend`]), which is before the servers answer, so the replies
    /// still come in behind the call, and the bytes cross no copy in the client.
    fn payloads(&self, rpc: &crate::rpc::RpcClient, copies: usize) -> Vec<OutPayload> {
        if let WriteSource::Lent(..) = self {
            return (0..copies).map(|_| self.payload(rpc)).collect();
        }
        self.with_bytes(|bytes| {
            if copies == 1 {
                vec![rpc.payload(bytes)]
            } else {
                let shared: Rc<[u8]> = Rc::from(bytes);
                (0..copies)
                    .map(|_| OutPayload::Shared(Rc::clone(&shared)))
                    .collect()
            }
        })
    }
}
