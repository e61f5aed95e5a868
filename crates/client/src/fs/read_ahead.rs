//! Read-ahead: once a handle's reads follow one another (a read starts where the last one
//! ended), it fetches the bytes after them, at most `client.read_ahead_bytes` ahead, in
//! pieces the size of its reads, and later reads take them from there. It fetches from
//! servers across the network only, up to the first chunk of a server on this host (see
//! `fetch_ahead`).
//!
//! **Invariants:**
//! - Bytes read ahead belong to one open handle. They are dropped at close; when this
//!   client writes, truncates, renames or unlinks the file; and as soon as the handle's
//!   reads stop following one another. A handle opened later (close-to-open) starts with
//!   none, so it never serves bytes older than its open.
//! - Nothing is fetched past the size the handle knows, nor while this client has writes
//!   of the file in flight (they would be read back old).
//! - Bytes read ahead serve a read only if the file's record, asked as the read runs,
//!   still names the file with the cut count the handle knows: a read never returns bytes
//!   another client's truncate or remove took from the file before the read began.
//! - A fetch is only a hint. One that failed, broke the protocol, came back short from a
//!   server that may have lost the chunk, or was dropped costs nothing but the read then
//!   made the usual way (any replica, with failover), which reports what went wrong.
//! - A fetch no handle wants any more is left to finish, never cut off: close waits for
//!   such fetches, and so does [`FsClient::wait_in_flight`] before a client goes. A receive
//!   cut off in flight can leave UCX 1.13 a shared-memory (cma) operation that crashes
//!   `ucp_worker_destroy`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ops::Range;
use std::rc::Rc;

use benchfs_proto::layout::ChunkLayout;
use benchfs_proto::meta::FileMetadata;
use benchfs_proto::ops;
use benchfs_proto::placement::{PlacementKey, ServerIndex};
use benchfs_ucx::Loan;
use futures_util::FutureExt;
use tokio::task::JoinHandle;

use super::data::{fill_from, ReadPlan};
use super::{Fd, FsClient};
use crate::rpc::{Connection, OutPayload, Response, RpcError};

/// Smallest piece fetched ahead: reads of a few KiB are served by one fetch of many of
/// them rather than one call each.
const READ_AHEAD_PIECE_MIN: u64 = 64 * 1024;

/// Most retired fetches left running before a read waits for them: reads that keep
/// breaking their run would otherwise leave fetches behind faster than they finish.
const RETIRED_FETCHES_MAX: usize = 64;

/// Where a read's bytes go: a slice, or a loan of the blocking caller's buffer.
pub(super) enum ReadDst<'a> {
    Slice(&'a mut [u8]),
    Loan(&'a Loan),
}

impl ReadDst<'_> {
    pub(super) fn len(&self) -> usize {
        match self {
            ReadDst::Slice(buf) => buf.len(),
            ReadDst::Loan(loan) => loan.len(),
        }
    }

    /// Copies `bytes` into `range` and zeros the rest of it (a hole); false if a receive
    /// still holds part of the loan's range.
    fn put(&mut self, range: Range<usize>, bytes: &[u8]) -> bool {
        match self {
            ReadDst::Slice(buf) => {
                fill_from(&mut buf[range], bytes);
                true
            }
            ReadDst::Loan(loan) => match loan.lend_mut(range) {
                Some(mut view) => {
                    fill_from(view.as_mut(), bytes);
                    true
                }
                None => false,
            },
        }
    }
}

/// What one fetch's task ends with: the server asked, the connection, and the reply.
type Fetched = (
    ServerIndex,
    Rc<Connection>,
    Result<Response<ops::ChunkIoReply>, RpcError>,
);

/// Fetches dropped before they finished, left to finish (see the module's invariants).
pub(super) type Retired = Rc<RefCell<Vec<JoinHandle<Fetched>>>>;

/// A fetch's task; dropped unfinished, it joins the client's retired fetches.
struct FetchTask {
    task: Option<JoinHandle<Fetched>>,
    retired: Retired,
}

impl Drop for FetchTask {
    fn drop(&mut self) {
        if let Some(task) = self.task.take().filter(|t| !t.is_finished()) {
            self.retired.borrow_mut().push(task);
        }
    }
}

/// Bytes of the file from `start` to `end`, fetched or on their way.
struct Piece {
    /// Where the fetch began: the reply's first byte.
    base: u64,
    /// The first byte no read has taken yet.
    start: u64,
    end: u64,
    fetch: Fetch,
}

enum Fetch {
    InFlight(FetchTask),
    /// The reply's bytes; a reply shorter than the piece ends the chunk, and the rest of
    /// the piece reads as zeros (a hole), as the usual read does.
    Ready(Vec<u8>),
}

/// One handle's read-ahead.
#[derive(Default)]
pub(super) struct ReadAhead {
    /// Where the last read ended: a read that starts there follows it.
    last_end: Option<u64>,
    /// Contiguous pieces in file order.
    pieces: VecDeque<Piece>,
    /// Changes whenever the pieces are dropped, so a read that took one out while it
    /// waited for its bytes does not put back bytes that went stale meanwhile.
    generation: u64,
}

impl std::fmt::Debug for ReadAhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadAhead")
            .field("last_end", &self.last_end)
            .field("pieces", &self.pieces.len())
            .finish()
    }
}

impl ReadAhead {
    /// Whether the handle holds no piece, fetched or on its way.
    fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Drops every piece (fetches in flight are left to finish).
    pub(super) fn reset(&mut self) {
        self.pieces.clear();
        self.generation = self.generation.wrapping_add(1);
    }

    /// Whether a piece holds `pos`, after those wholly before it.
    fn holds(&self, pos: u64) -> bool {
        self.pieces
            .iter()
            .find(|p| p.end > pos)
            .is_some_and(|p| p.start <= pos)
    }

    /// Takes out the piece that holds `pos`, dropping those wholly before it; drops them
    /// all if none holds it (the reads went elsewhere).
    fn take(&mut self, pos: u64) -> Option<Piece> {
        while self.pieces.front().is_some_and(|p| p.end <= pos) {
            self.pieces.pop_front();
        }
        match self.pieces.front() {
            Some(p) if p.start <= pos => self.pieces.pop_front(),
            Some(_) => {
                self.reset();
                None
            }
            None => None,
        }
    }
}

impl FsClient {
    /// Drops what this client's handles of file `file_id` read ahead: this client is
    /// writing it.
    pub(super) fn forget_read_ahead(&self, file_id: u64) {
        for f in self.files.borrow_mut().values_mut() {
            if f.meta.file_id == file_id {
                f.read_ahead.reset();
            }
        }
    }

    /// Fills the start of `plan`'s buffer from what handle `fd` read ahead; returns how
    /// many bytes it filled (0 when it holds nothing for this read, or when the file was
    /// cut or removed since the handle looked).
    pub(super) async fn read_prefetched(
        &self,
        fd: Fd,
        plan: &ReadPlan,
        dst: &mut ReadDst<'_>,
    ) -> usize {
        let holds = self.with_file(fd, |f| f.read_ahead.holds(plan.offset));
        if !matches!(holds, Ok(true)) {
            return 0;
        }
        // The check: the file's record still names the file, with the cut count the
        // handle knows. A truncate or remove by another client changes the record before
        // any chunk, so a read that began after either returned never takes bytes fetched
        // before it. The check runs beside the copy from the pieces, one request to the
        // metadata owner per read they serve. (Another client's writes over fetched bytes
        // are seen as close-to-open promises, at this handle's next look.)
        let (served, look) =
            futures_util::future::join(self.take_prefetched(fd, plan, dst), self.look(fd)).await;
        let stale = self.with_file(fd, |f| {
            let current = look
                .as_ref()
                .is_some_and(|l| l.record.meta.cut_gen == f.meta.cut_gen);
            if current {
                return None;
            }
            f.read_ahead.reset();
            // A size that grew is taken as a read with the window off would take it (past
            // the end the handle knows, a second after it looked), so read-ahead changes
            // no read's answer.
            let grow = f.checked_at.elapsed() >= super::inline::CATCH_UP_AFTER;
            if grow {
                f.checked_at = std::time::Instant::now();
            }
            Some(grow)
        });
        let grow = match stale {
            Ok(None) => return served,
            Ok(Some(grow)) => grow,
            // Closed meanwhile: nothing was checked.
            Err(_) => return 0,
        };
        // What was served may predate the cut: the caller reads it all anew, from a
        // handle that knows the cut.
        if let Some(look) = look {
            self.take_look(fd, look, grow);
        }
        0
    }

    /// [`FsClient::read_prefetched`] without the check.
    async fn take_prefetched(&self, fd: Fd, plan: &ReadPlan, dst: &mut ReadDst<'_>) -> usize {
        let mut served = 0;
        while served < plan.len {
            let pos = plan.offset + served as u64;
            let taken = self.with_file(fd, |f| {
                let generation = f.read_ahead.generation;
                f.read_ahead.take(pos).map(|p| (p, generation))
            });
            let Ok(Some((piece, generation))) = taken else {
                break;
            };
            let data = match piece.fetch {
                Fetch::Ready(data) => data,
                Fetch::InFlight(task) => {
                    match self.fetched(plan.meta, piece.end - piece.base, task).await {
                        Some(data) => data,
                        None => {
                            self.reset_read_ahead(fd, generation);
                            break;
                        }
                    }
                }
            };
            let n = (piece.end - pos).min((plan.len - served) as u64) as usize;
            let from = (pos - piece.base) as usize;
            if data.len() < from + n {
                self.short_reads.set(self.short_reads.get() + 1);
            }
            if !dst.put(served..served + n, data.get(from..).unwrap_or_default()) {
                break;
            }
            served += n;
            self.pipeline.count(|c| c.read_ahead_hit_bytes += n as u64);
            let start = pos + n as u64;
            if start < piece.end {
                let rest = Piece {
                    start,
                    fetch: Fetch::Ready(data),
                    ..piece
                };
                let _ = self.with_file(fd, |f| {
                    if f.read_ahead.generation == generation {
                        f.read_ahead.pieces.push_front(rest);
                    }
                });
            } else {
                self.rpc.recycle_buffer(data);
            }
        }
        served
    }

    /// Drops handle `fd`'s read-ahead unless it was dropped since `generation`.
    fn reset_read_ahead(&self, fd: Fd, generation: u64) {
        let _ = self.with_file(fd, |f| {
            if f.read_ahead.generation == generation {
                f.read_ahead.reset();
            }
        });
    }

    /// The bytes of a fetch of `asked` bytes, once it came back whole and trustworthy.
    async fn fetched(
        &self,
        meta: FileMetadata,
        asked: u64,
        mut task: FetchTask,
    ) -> Option<Vec<u8>> {
        let (server, conn, result) = task.task.take()?.await.ok()?;
        self.call_ended(server, &conn, result.as_ref().err());
        let reply = result.ok()?;
        let got = reply.payload.len() as u64;
        if reply.reply.len != got || got > asked {
            return None;
        }
        self.check_not_lost(server, meta, &reply.reply, asked)
            .ok()?;
        Some(reply.payload)
    }

    /// After a read of `len` bytes at `offset` through handle `fd`: if it followed the
    /// handle's last read, fetches what lies ahead up to the window; if not, drops what
    /// was read ahead.
    pub(super) async fn read_ahead_after(&self, fd: Fd, offset: u64, len: usize) {
        let window = self.pipeline.read_window_bytes;
        let end = offset + len as u64;
        let plan = self.with_file(fd, |f| {
            let ahead = &mut f.read_ahead;
            let follows = ahead.last_end == Some(offset);
            ahead.last_end = Some(end);
            if !follows || window == 0 {
                ahead.reset();
                return None;
            }
            let from = ahead.pieces.back().map_or(end, |p| p.end).max(end);
            let until = end.saturating_add(window).min(f.size);
            Some((from, until, f.meta, ahead.generation))
        });
        self.collect_fetches();
        if self.pipeline.retired.borrow().len() > RETIRED_FETCHES_MAX {
            self.drain_fetches().await;
        }
        let Ok(Some((from, until, meta, generation))) = plan else {
            return;
        };
        if from < until && !self.has_writes_of(meta.file_id) {
            self.fetch_ahead_until(fd, meta, generation, (from, until), len as u64)
                .await;
        }
        self.advance_in_flight().await;
    }

    /// Starts fetches from `pos` to `until` for handle `fd` in pieces of about `read_len`,
    /// unless its read-ahead is dropped meanwhile (`generation`).
    async fn fetch_ahead_until(
        &self,
        fd: Fd,
        meta: FileMetadata,
        generation: u64,
        (mut pos, until): (u64, u64),
        read_len: u64,
    ) {
        let window = self.pipeline.read_window_bytes;
        let piece_max = read_len
            .max(READ_AHEAD_PIECE_MIN)
            .min(meta.chunk_size)
            .min(window);
        while pos < until {
            let chunk_end = (pos / meta.chunk_size)
                .saturating_add(1)
                .saturating_mul(meta.chunk_size);
            let len = piece_max.min(until - pos).min(chunk_end - pos);
            let Some(task) = self.fetch_ahead(meta, pos, len).await else {
                return;
            };
            let piece = Piece {
                base: pos,
                start: pos,
                end: pos + len,
                fetch: Fetch::InFlight(task),
            };
            let kept = self.with_file(fd, |f| {
                // Dropped meanwhile (a write, a truncate): this fetch may read old bytes.
                let kept = f.read_ahead.generation == generation;
                if kept {
                    f.read_ahead.pieces.push_back(piece);
                }
                kept
            });
            if !matches!(kept, Ok(true)) {
                return;
            }
            self.pipeline.count(|c| c.read_ahead_bytes += len);
            pos += len;
        }
    }

    /// Starts fetching `len` bytes at `pos` of file `meta` (within one chunk) from the
    /// replica reads ask first; `None` if it cannot be reached now, or is reached by shared
    /// memory: there a call's round trip is a few microseconds and the client copies each
    /// byte itself, so a fetch ahead hides next to nothing and costs a second copy and the
    /// record check (one client's sequential reads over shared memory, 4 KiB to 1 MiB, ran
    /// at 0.5-0.7x with a 16 MiB window than without; over tcp, 0.9-1.2x).
    async fn fetch_ahead(&self, meta: FileMetadata, pos: u64, len: u64) -> Option<FetchTask> {
        let layout = ChunkLayout::new(meta.chunk_size);
        let index = layout.chunk_index(pos);
        let key = PlacementKey::Chunk {
            file_id: meta.file_id,
            index,
        };
        let server = *self.read_order(key).first()?;
        let conn = match self.conn(server).await {
            Ok(conn) => conn,
            Err(e) => {
                self.note_call(server, Some(&e));
                return None;
            }
        };
        if conn.is_shared_memory() {
            return None;
        }
        let req = ops::ChunkIo {
            file_id: meta.file_id,
            index,
            offset: pos - index * meta.chunk_size,
            len,
        };
        let task = tokio::task::spawn_local(async move {
            let result = conn
                .call_into::<ops::ReadChunk>(&req, OutPayload::none(), None)
                .await;
            (server, conn, result)
        });
        Some(FetchTask {
            task: Some(task),
            retired: Rc::clone(&self.pipeline.retired),
        })
    }

    /// Whether a write behind or a fetch ahead may still be on its way.
    pub(crate) fn has_in_flight(&self) -> bool {
        self.collect_writes();
        self.collect_fetches();
        self.has_writes()
            || !self.pipeline.retired.borrow().is_empty()
            || self
                .files
                .borrow()
                .values()
                .any(|f| !f.read_ahead.is_empty())
    }

    /// Accounts for the retired fetches that finished, and forgets them.
    fn collect_fetches(&self) {
        let finished: Vec<_> = {
            let mut retired = self.pipeline.retired.borrow_mut();
            let (finished, running) = retired.drain(..).partition(|t| t.is_finished());
            *retired = running;
            finished
        };
        for task in finished {
            if let Some(Ok((server, conn, result))) = task.now_or_never() {
                self.call_ended(server, &conn, result.as_ref().err());
            }
        }
    }

    /// Waits for every retired fetch.
    pub(super) async fn drain_fetches(&self) {
        loop {
            let task = self.pipeline.retired.borrow_mut().pop();
            let Some(task) = task else { return };
            if let Ok((server, conn, result)) = task.await {
                self.call_ended(server, &conn, result.as_ref().err());
            }
        }
    }

    /// Waits for every call this client left in flight: writes behind (their failures
    /// stay on their handles) and fetches ahead (dropped). Call before dropping a client
    /// whose handles are not all closed: its worker should not go while calls are on
    /// their way. The blocking API's `BenchFS` does so when dropped.
    pub async fn wait_in_flight(&self) {
        if !self.has_in_flight() {
            return;
        }
        self.drain_writes().await;
        for f in self.files.borrow_mut().values_mut() {
            f.read_ahead.reset();
        }
        self.drain_fetches().await;
    }
}
