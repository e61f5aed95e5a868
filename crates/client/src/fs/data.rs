//! The data path: pread and pwrite split into chunk spans, sent to every span's servers
//! at once, from a copy or from a lent slice (or behind the call, see `pipeline`), and read
//! back in place, through the chunk cache, or from what the handle read ahead (see
//! `read_ahead`).

use std::time::Duration;

use benchfs_proto::layout::{ChunkLayout, ChunkSpan};
use benchfs_proto::meta::FileMetadata;
use benchfs_proto::placement::{PlacementKey, ServerIndex};
use benchfs_proto::{limits, ops, Status};
use benchfs_ucx::Loan;
use futures_util::future::join_all;

use super::read_ahead::ReadDst;
use super::{fs_err, rpc_err, Fd, FsClient};
use crate::error::ApiError;
use crate::flags::OpenFlags;
use crate::rpc::{OutPayload, RpcClient, RpcError};

/// How often [`FsClient::settle`] makes the worker progress while it waits.
pub(super) const SETTLE_PROGRESS_INTERVAL: Duration = Duration::from_millis(10);

/// Where the bytes a call sends come from.
#[derive(Clone, Copy)]
pub(super) enum WriteSource<'a> {
    /// A borrowed slice, copied into a send buffer per call.
    Copied(&'a [u8]),
    /// A range of a loan, sent in place.
    Lent(&'a Loan, (usize, usize)),
}

impl<'a> WriteSource<'a> {
    /// No payload.
    pub(super) const NONE: WriteSource<'static> = WriteSource::Copied(&[]);

    /// The whole of a loan.
    pub(super) fn lent(loan: &'a Loan) -> Self {
        WriteSource::Lent(loan, (0, loan.len()))
    }

    pub(super) fn len(&self) -> usize {
        match self {
            WriteSource::Copied(d) => d.len(),
            WriteSource::Lent(_, (start, end)) => end - start,
        }
    }

    /// The bytes in `range` of this source.
    pub(super) fn part(&self, range: std::ops::Range<usize>) -> WriteSource<'a> {
        match *self {
            WriteSource::Copied(d) => WriteSource::Copied(&d[range]),
            WriteSource::Lent(loan, (start, _)) => {
                WriteSource::Lent(loan, (start + range.start, start + range.end))
            }
        }
    }

    /// Runs `f` over the bytes of this source.
    pub(super) fn with_bytes<T>(&self, f: impl FnOnce(&[u8]) -> T) -> T {
        match *self {
            WriteSource::Copied(d) => f(d),
            WriteSource::Lent(loan, (start, end)) => {
                let view = loan
                    .lend(start..end)
                    .expect("a part of a loan lies within it");
                f(view.as_ref())
            }
        }
    }

    /// A payload for one call.
    pub(super) fn payload(&self, rpc: &RpcClient) -> OutPayload {
        match *self {
            WriteSource::Copied(d) => rpc.payload(d),
            WriteSource::Lent(loan, (start, end)) => OutPayload::Lent(
                loan.lend(start..end)
                    .expect("a part of a loan lies within it"),
            ),
        }
    }
}

/// What a read covers: the handle's path and metadata, where it starts, the bytes to
/// read, and their chunk spans.
pub(super) struct ReadPlan {
    pub(super) path: String,
    pub(super) meta: FileMetadata,
    pub(super) offset: u64,
    pub(super) len: usize,
    pub(super) spans: Vec<ChunkSpan>,
}

impl ReadPlan {
    /// The part of this read after its first `done` bytes, its spans still placed in the
    /// whole read's buffer.
    fn after(&self, done: usize) -> Result<ReadPlan, ApiError> {
        let offset = self.offset + done as u64;
        let len = self.len - done;
        let spans = ChunkLayout::new(self.meta.chunk_size)
            .spans(offset, len as u64)
            .map_err(|_| fs_err("read", &self.path, Status::InvalidArgument))?
            .map(|span| ChunkSpan {
                buf_offset: span.buf_offset + done as u64,
                ..span
            })
            .collect();
        Ok(ReadPlan {
            path: self.path.clone(),
            meta: self.meta,
            offset,
            len,
            spans,
        })
    }
}

/// Where a span's bytes came: received in place (this many), or in a buffer.
pub(super) enum SpanData {
    Sunk(usize),
    Bytes(Vec<u8>),
}

impl SpanData {
    /// Completes the span's destination: copies the bytes if they came in a buffer (then
    /// kept by `rpc` for a later reply), and zeros what lies past the chunk's end (a hole
    /// inside the file).
    pub(super) fn fill(self, dst: &mut [u8], rpc: &RpcClient) {
        match self {
            SpanData::Sunk(n) => {
                let n = n.min(dst.len());
                dst[n..].fill(0);
            }
            SpanData::Bytes(bytes) => {
                fill_from(dst, &bytes);
                rpc.recycle_buffer(bytes);
            }
        }
    }
}

/// Copies what of `bytes` fits into `dst` and zeros the rest of it: a chunk's bytes, and
/// a hole past the chunk's end.
pub(super) fn fill_from(dst: &mut [u8], bytes: &[u8]) {
    let n = bytes.len().min(dst.len());
    dst[..n].copy_from_slice(&bytes[..n]);
    dst[n..].fill(0);
}

/// The request that writes `len` bytes at `offset` of chunk `index` of the file `meta`,
/// which held `held` bytes of the chunk from its start ([`FsClient::chunk_held`]): a
/// server that may have lost those bytes refuses a write that would leave some of them as
/// zeros before it.
pub(super) fn chunk_write(
    meta: &FileMetadata,
    index: u64,
    (offset, len): (u64, u64),
    held: u64,
    append_cut_gen: Option<u16>,
) -> ops::ChunkWrite {
    ops::ChunkWrite {
        io: ops::ChunkIo {
            file_id: meta.file_id,
            index,
            offset,
            len,
        },
        file_birth_ns: meta.birth_ns,
        chunk_held: held,
        append_cut_gen,
        hole_before: false,
    }
}

/// How many bytes of chunk `index`, from its start, the file `meta` held by its size (a
/// handle's: what the file held when it was opened, cut by its truncates).
fn held_by_size(meta: &FileMetadata, index: u64) -> u64 {
    let chunk_start = index.saturating_mul(meta.chunk_size);
    meta.size.saturating_sub(chunk_start).min(meta.chunk_size)
}

/// A span's range in the read's buffer.
pub(super) fn span_range(span: &ChunkSpan) -> std::ops::Range<usize> {
    span.buf_offset as usize..(span.buf_offset + span.len) as usize
}

impl FsClient {
    /// How many bytes of chunk `index` of `meta`, from its start, the file holds for a
    /// writer through handle `fd` (none: a handle-free write): what it held when the handle
    /// was opened, or as far as the handle's acknowledged writes reach, whichever is more.
    /// (Not the handle's size: a write of its own still in flight would count as held, and
    /// the next write be refused before it landed.)
    pub(super) fn chunk_held(&self, fd: Option<Fd>, meta: &FileMetadata, index: u64) -> u64 {
        let acked = fd
            .and_then(|fd| {
                self.with_file(fd, |f| f.acked.get(&index).copied())
                    .ok()
                    .flatten()
            })
            .unwrap_or(0);
        held_by_size(meta, index).max(acked)
    }

    /// Notes that every replica acknowledged a write through handle `fd` reaching `end`
    /// bytes into chunk `index`.
    pub(super) fn note_acked(&self, fd: Fd, index: u64, end: u64) {
        let _ = self.with_file(fd, |f| {
            let acked = f.acked.entry(index).or_insert(0);
            *acked = (*acked).max(end);
        });
    }

    /// Writes at the handle's position (or the end, with APPEND) and advances it. The
    /// bytes are copied once into send buffers; see [`FsClient::write_lent`].
    pub async fn write(&self, fd: Fd, data: &[u8]) -> Result<usize, ApiError> {
        self.write_from(fd, WriteSource::Copied(data)).await
    }

    /// [`FsClient::write`] of a loan's bytes, sent from the lender's memory without a
    /// copy: the blocking API lends the caller's slice (see [`benchfs_ucx::lend`]).
    pub async fn write_lent(&self, fd: Fd, loan: &Loan) -> Result<usize, ApiError> {
        self.write_from(fd, WriteSource::lent(loan)).await
    }

    pub(super) async fn write_from(
        &self,
        fd: Fd,
        data: WriteSource<'_>,
    ) -> Result<usize, ApiError> {
        let (appends, pos) =
            self.with_file(fd, |f| (f.flags.contains(OpenFlags::APPEND), f.pos))?;
        let (offset, append_cut_gen) = match appends {
            true => self.append_offset(fd, data.len() as u64).await?,
            false => (pos, None),
        };
        let n = self.pwrite_from(fd, data, offset, append_cut_gen).await?;
        self.with_file(fd, |f| f.pos = offset + n as u64)?;
        Ok(n)
    }

    /// Where an append of `len` bytes through handle `fd` goes: the start of the range it
    /// claims ([`FsClient::claim_append`]) past what this client's handles of the file
    /// wrote and have not published, with the record's cut count the claim saw (which its
    /// chunk writes carry).
    async fn append_offset(&self, fd: Fd, len: u64) -> Result<(u64, Option<u16>), ApiError> {
        let (flags, size) = self.with_file(fd, |f| (f.flags, f.size))?;
        if len == 0 || !(flags.contains(OpenFlags::WRITE) || flags.contains(OpenFlags::APPEND)) {
            // Nothing to claim; the write answers (a bad handle's error, or 0).
            return Ok((size, None));
        }
        // The claim needs the record: a deferred create is made first.
        self.make_deferred(fd).await?;
        let (path, meta) = self.with_file(fd, |f| (f.path.clone(), f.meta))?;
        let floor = self
            .files
            .borrow()
            .values()
            .filter(|f| f.meta.file_id == meta.file_id && f.size_dirty)
            .map(|f| f.size)
            .max()
            .unwrap_or(0);
        let (start, claimed) = self.claim_append(&path, meta, floor, len).await?;
        // The record holds this end already: nothing to publish for it.
        self.with_file(fd, |f| f.size = f.size.max(start + len))?;
        Ok((start, Some(claimed.cut_gen)))
    }

    /// Claims the range an append of `len` bytes to file `meta`, named `path`, writes,
    /// starting at `floor` or later (what the caller wrote and has not published): the
    /// record's size grows by `len` on every replica in one step, so appends from other
    /// clients at once land before or after it, never over it. Returns the range's start
    /// and the record. An inline file's bytes move to chunk 0 first: appends write chunks.
    /// The size covers the range before its bytes land (a reader may see zeros there
    /// meanwhile, and for good if the write then fails, as on a local file system that
    /// crashed mid-append).
    pub(super) async fn claim_append(
        &self,
        path: &str,
        meta: FileMetadata,
        floor: u64,
        len: u64,
    ) -> Result<(u64, FileMetadata), ApiError> {
        let claim = |path: String| async move {
            let req = ops::ClaimAppendRequest {
                path: path.clone(),
                file_id: meta.file_id,
                floor,
                len,
            };
            let mut moved = false;
            loop {
                match self.claim_append_in_order(&path, &req).await {
                    Ok(replies) => {
                        let claimed = replies[0].meta;
                        self.meta_cache.borrow_mut().put(&path, claimed);
                        return Ok((claimed.size.saturating_sub(len), claimed));
                    }
                    Err(e) if e.status() == Status::NeedsChunks && !moved => {
                        self.move_to_chunks(&path, meta).await?;
                        moved = true;
                    }
                    Err(e) => return Err(rpc_err("append", &path)(e)),
                }
            }
        };
        self.following_renames(meta.file_id, path, claim).await
    }

    /// Reads at the handle's position and advances it.
    pub async fn read(&self, fd: Fd, buf: &mut [u8]) -> Result<usize, ApiError> {
        let offset = self.with_file(fd, |f| f.pos)?;
        let n = self.pread(fd, buf, offset).await?;
        self.with_file(fd, |f| f.pos = offset + n as u64)?;
        Ok(n)
    }

    /// Writes `data` at `offset`, chunk by chunk, to every chunk's servers concurrently.
    /// The bytes are copied once into send buffers; see [`FsClient::pwrite_lent`].
    pub async fn pwrite(&self, fd: Fd, data: &[u8], offset: u64) -> Result<usize, ApiError> {
        self.pwrite_from(fd, WriteSource::Copied(data), offset, None)
            .await
    }

    /// [`FsClient::pwrite`] of a loan's bytes, sent from the lender's memory without a
    /// copy.
    pub async fn pwrite_lent(&self, fd: Fd, loan: &Loan, offset: u64) -> Result<usize, ApiError> {
        self.pwrite_from(fd, WriteSource::lent(loan), offset, None)
            .await
    }

    /// [`FsClient::pwrite`] of `data`; an append's bytes carry the cut count of its claim
    /// (`append_cut_gen`), and it notes no write end.
    pub(super) async fn pwrite_from(
        &self,
        fd: Fd,
        data: WriteSource<'_>,
        offset: u64,
        append_cut_gen: Option<u16>,
    ) -> Result<usize, ApiError> {
        let (path, flags) = self.with_file(fd, |f| (f.path.clone(), f.flags))?;
        if !(flags.contains(OpenFlags::WRITE) || flags.contains(OpenFlags::APPEND)) {
            return Err(fs_err("write", &path, Status::BadHandle));
        }
        let len = data.len();
        check_file_end("write", &path, offset, len as u64)?;
        if len == 0 {
            return Ok(0);
        }
        if let Some(n) = self.write_inline(fd, data, offset).await? {
            return Ok(n);
        }
        // The write may just have made the file, or moved its bytes to chunks.
        let meta = self.with_file(fd, |f| f.meta)?;
        if self.writes_behind() {
            // A failure of an earlier write fails this one, before any of its bytes go.
            self.write_error(fd)?;
            // What this client read ahead of the file is stale once the write is sent; a
            // read drains the write before it reads, or reads ahead again.
            self.forget_read_ahead(meta.file_id);
            self.chunk_cache.borrow_mut().invalidate_file(meta.file_id);
            self.write_behind(fd, &path, meta, data, (offset, append_cut_gen))
                .await?;
        } else {
            self.write_spans(Some(fd), &path, meta, data, (offset, append_cut_gen))
                .await?;
        }
        let end = offset + len as u64;
        self.with_file(fd, |f| {
            f.wrote = true;
            // An append's claim put it before any cut the close finds: a cut range is
            // not grown back for it (its time is still published).
            if append_cut_gen.is_none() {
                f.write_ends.note(offset, end, f.meta.chunk_size);
            }
            if end > f.size {
                f.size = end;
                f.size_dirty = true;
            }
        })?;
        Ok(len)
    }

    /// Writes `data` at `offset` of the file `meta` to every chunk's servers at once. The
    /// size is not published: the caller does that when the write is complete.
    /// Through handle `fd`, if any (see [`FsClient::chunk_held`]); an append's bytes carry
    /// the cut count its claim saw.
    pub(super) async fn write_spans(
        &self,
        fd: Option<Fd>,
        path: &str,
        meta: FileMetadata,
        data: WriteSource<'_>,
        (offset, append_cut_gen): (u64, Option<u16>),
    ) -> Result<(), ApiError> {
        let len = data.len();
        let layout = ChunkLayout::new(meta.chunk_size);
        let spans = layout
            .spans(offset, len as u64)
            .map_err(|_| fs_err("write", path, Status::InvalidArgument))?;
        let writes = spans.map(|span| {
            let start = span.buf_offset as usize;
            let part = data.part(start..start + span.len as usize);
            let held = self.chunk_held(fd, &meta, span.index);
            let req = chunk_write(
                &meta,
                span.index,
                (span.offset_in_chunk, span.len),
                held,
                append_cut_gen,
            );
            async move {
                let key = PlacementKey::Chunk {
                    file_id: meta.file_id,
                    index: span.index,
                };
                let replicas = self.replica_set(key);
                self.restore_skipped(&meta, span.index, (span.offset_in_chunk, held), &replicas)
                    .await;
                let result = self.write_all::<ops::WriteChunk>(key, &req, part).await;
                if let (Some(fd), Ok(_)) = (fd, &result) {
                    self.note_acked(fd, span.index, span.offset_in_chunk + span.len);
                }
                result
            }
        });
        let results = join_all(writes).await;
        // After the write, so that nothing read ahead while it was on its way survives.
        self.forget_read_ahead(meta.file_id);
        self.chunk_cache.borrow_mut().invalidate_file(meta.file_id);
        for r in results {
            r.map_err(rpc_err("write", path))?;
        }
        Ok(())
    }

    /// Writes `data` at `offset` of the file `meta`, named `path`, with no handle: the
    /// bytes reach every replica of every chunk they touch, but the size is left to the
    /// caller ([`FsClient::grow_size`]), as a mount publishes it at flush.
    pub async fn write_at(
        &self,
        path: &str,
        meta: FileMetadata,
        data: &[u8],
        offset: u64,
    ) -> Result<(), ApiError> {
        self.write_unpublished(path, meta, WriteSource::Copied(data), (offset, None))
            .await
    }

    /// Appends the loan's bytes to file `meta`, named `path`, with no handle: claims their
    /// range on the record at `floor` or later, as an append through a handle does
    /// (`floor` is what the caller wrote and has not published), and writes them there.
    /// Returns where the bytes went.
    pub async fn append_at_lent(
        &self,
        path: &str,
        meta: FileMetadata,
        loan: &Loan,
        floor: u64,
    ) -> Result<u64, ApiError> {
        if !meta.has_chunks() {
            return Err(fs_err("write", path, Status::IsDir));
        }
        if loan.is_empty() {
            return Ok(floor);
        }
        let (start, meta) = self
            .claim_append(path, meta, floor, loan.len() as u64)
            .await?;
        self.write_unpublished(
            path,
            meta,
            WriteSource::lent(loan),
            (start, Some(meta.cut_gen)),
        )
        .await?;
        Ok(start)
    }

    async fn write_unpublished(
        &self,
        path: &str,
        meta: FileMetadata,
        data: WriteSource<'_>,
        (offset, append_cut_gen): (u64, Option<u16>),
    ) -> Result<(), ApiError> {
        if !meta.has_chunks() {
            return Err(fs_err("write", path, Status::IsDir));
        }
        if data.len() == 0 {
            return Ok(());
        }
        let Some(meta) = self.write_at_inline(path, meta, data, offset).await? else {
            return Ok(());
        };
        // After this client's writes of the file in flight, which would otherwise land in
        // either order with it.
        self.drain_file(meta.file_id).await;
        self.write_spans(None, path, meta, data, (offset, append_cut_gen))
            .await
    }

    /// Reads up to `buf.len()` bytes at `offset` of the file `meta`, named `path`, with
    /// no handle, as far as `size` (the size the caller knows, which may be past the
    /// published one by its own writes). Holes read as zeros.
    pub async fn read_at(
        &self,
        path: &str,
        meta: FileMetadata,
        size: u64,
        buf: &mut [u8],
        offset: u64,
    ) -> Result<usize, ApiError> {
        let (meta, size) = match self
            .read_at_inline(path, meta, size, ReadDst::Slice(&mut *buf), offset)
            .await?
        {
            Ok(n) => return Ok(n),
            Err(chunked) => chunked,
        };
        self.drain_file(meta.file_id).await;
        match plan_read(path, meta, size, buf.len(), offset)? {
            Some(plan) => self.read_copied(plan, buf).await,
            None => Ok(0),
        }
    }

    /// Reads a plan's spans and copies each reply into `buf`.
    async fn read_copied(&self, plan: ReadPlan, buf: &mut [u8]) -> Result<usize, ApiError> {
        let reads = plan
            .spans
            .iter()
            .map(|span| self.read_span(plan.meta, span, None));
        let results = join_all(reads).await;
        for (span, result) in plan.spans.iter().zip(results) {
            let data = result.map_err(rpc_err("read", &plan.path))?;
            data.fill(&mut buf[span_range(span)], &self.rpc);
        }
        Ok(plan.len)
    }

    /// Runs the event loop until every view of `loan` is back: until UCX has finished
    /// every send that reads it. The lender's `settle` (see [`benchfs_ucx::lend`]).
    pub async fn settle(&self, loan: &Loan) {
        let worker = self.rpc.worker();
        let _polling = worker.expect_replies();
        while loan.outstanding() > 0 {
            tokio::select! {
                _ = loan.returned() => {}
                // A send cancelled by a closed endpoint completes during progress, which
                // an idle worker might not otherwise run, so this does not rely on the
                // progress task alone.
                _ = tokio::time::sleep(SETTLE_PROGRESS_INTERVAL) => {
                    worker.progress();
                    // A write behind that lent a view and timed out is collected here:
                    // collecting drops its connection, whose close cancels the send
                    // that still holds the view. A call that timed out kept its
                    // connection for undo notes, which gives way here.
                    self.collect_writes();
                    self.drop_silent_conns();
                }
            }
        }
    }

    /// Reads up to `buf.len()` bytes at `offset`; holes read as zeros; stops at the size.
    /// The bytes come in reply buffers (or from what the handle read ahead) and are copied
    /// into `buf`; see [`FsClient::pread_lent`].
    pub async fn pread(&self, fd: Fd, buf: &mut [u8], offset: u64) -> Result<usize, ApiError> {
        self.read_handle(fd, ReadDst::Slice(buf), offset).await
    }

    /// [`FsClient::pread`] into a loan's memory: replies are received straight into it (by
    /// rendezvous with no copy) unless the chunk cache is on; bytes the handle read ahead
    /// are copied in. The blocking API lends the caller's buffer (see
    /// [`benchfs_ucx::lend_mut`]).
    pub async fn pread_lent(&self, fd: Fd, loan: &Loan, offset: u64) -> Result<usize, ApiError> {
        self.read_handle(fd, ReadDst::Loan(loan), offset).await
    }

    /// A handle's read: what it read ahead first, then the rest from the servers; then
    /// reads ahead if its reads follow one another.
    async fn read_handle(
        &self,
        fd: Fd,
        mut dst: ReadDst<'_>,
        offset: u64,
    ) -> Result<usize, ApiError> {
        let stale = self.with_file(fd, |f| {
            f.flags.contains(OpenFlags::READ)
                && offset.saturating_add(dst.len() as u64) > f.size
                && f.checked_at.elapsed() >= super::inline::CATCH_UP_AFTER
        })?;
        if stale {
            self.catch_up(fd).await;
        }
        if let Some(n) = self.read_inline(fd, &mut dst, offset).await? {
            return Ok(n);
        }
        let Some(plan) = self.read_plan(fd, dst.len(), offset).await? else {
            return Ok(0);
        };
        let short_before = self.short_reads.get();
        let served = self.read_prefetched(fd, &plan, &mut dst).await;
        if served < plan.len {
            let rest = plan.after(served)?;
            match dst {
                ReadDst::Slice(buf) => self.read_copied(rest, buf).await?,
                ReadDst::Loan(loan) => self.read_into_loan(rest, loan).await?,
            };
        }
        let mut len = plan.len;
        if self.short_reads.get() != short_before {
            // A hole, or another client cut the file since the handle looked: the bytes
            // past a cut are no file's, so the read ends there rather than in zeros.
            self.catch_up(fd).await;
            let size = self.with_file(fd, |f| f.size)?;
            len = len.min(size.saturating_sub(offset) as usize);
        }
        self.read_ahead_after(fd, offset, len).await;
        Ok(len)
    }

    /// [`FsClient::read_at`] into a loan's memory, as [`FsClient::pread_lent`].
    pub async fn read_at_lent(
        &self,
        path: &str,
        meta: FileMetadata,
        size: u64,
        loan: &Loan,
        offset: u64,
    ) -> Result<usize, ApiError> {
        let (meta, size) = match self
            .read_at_inline(path, meta, size, ReadDst::Loan(loan), offset)
            .await?
        {
            Ok(n) => return Ok(n),
            Err(chunked) => chunked,
        };
        self.drain_file(meta.file_id).await;
        let Some(plan) = plan_read(path, meta, size, loan.len(), offset)? else {
            return Ok(0);
        };
        self.read_into_loan(plan, loan).await
    }

    /// [`FsClient::write_at`] of a loan's bytes, sent in place.
    pub async fn write_at_lent(
        &self,
        path: &str,
        meta: FileMetadata,
        loan: &Loan,
        offset: u64,
    ) -> Result<(), ApiError> {
        self.write_unpublished(path, meta, WriteSource::lent(loan), (offset, None))
            .await
    }

    async fn read_into_loan(&self, plan: ReadPlan, loan: &Loan) -> Result<usize, ApiError> {
        let reads = plan
            .spans
            .iter()
            .map(|span| self.read_span(plan.meta, span, Some(loan)));
        let results = join_all(reads).await;
        for (span, result) in plan.spans.iter().zip(results) {
            let data = result.map_err(rpc_err("read", &plan.path))?;
            let mut view = match loan.lend_mut(span_range(span)) {
                Some(view) => view,
                None => {
                    // A receive abandoned when its replica timed out still holds the
                    // range; it ends once UCX cancels it, as the scope's settle would.
                    self.settle(loan).await;
                    loan.lend_mut(span_range(span))
                        .ok_or_else(|| fs_err("read", &plan.path, Status::Io))?
                }
            };
            data.fill(view.as_mut(), &self.rpc);
        }
        Ok(plan.len)
    }

    /// [`FsClient::read`] into a loan's memory, as [`FsClient::pread_lent`].
    pub async fn read_lent(&self, fd: Fd, loan: &Loan) -> Result<usize, ApiError> {
        let offset = self.with_file(fd, |f| f.pos)?;
        let n = self.pread_lent(fd, loan, offset).await?;
        self.with_file(fd, |f| f.pos = offset + n as u64)?;
        Ok(n)
    }

    /// The chunk spans a read of up to `want` bytes at `offset` covers, after the
    /// handle's checks; `None` when there is nothing to read. This client's writes of the
    /// file in flight land first, so the read sees them.
    async fn read_plan(
        &self,
        fd: Fd,
        want: usize,
        offset: u64,
    ) -> Result<Option<ReadPlan>, ApiError> {
        let (path, meta, flags) = self.with_file(fd, |f| (f.path.clone(), f.meta, f.flags))?;
        if !flags.contains(OpenFlags::READ) && !meta.is_dir() {
            return Err(fs_err("read", &path, Status::BadHandle));
        }
        self.drain_file(meta.file_id).await;
        let size = self.with_file(fd, |f| f.size)?;
        plan_read(&path, meta, size, want, offset)
    }

    /// A short read (a hole) from a server whose store began after the file was created
    /// may be a chunk the server lost (its data directory was lost, a memory store
    /// restarted): refused as an I/O error, so another replica is asked, and the read
    /// fails rather than answer zeros for bytes that were written. `reply` answered a
    /// read of `asked` bytes; one the server answered `whole` (a chunk it kept through
    /// the restart) stops short at a hole.
    pub(super) fn check_not_lost(
        &self,
        server: ServerIndex,
        meta: FileMetadata,
        reply: &ops::ChunkIoReply,
        asked: u64,
    ) -> Result<(), RpcError> {
        let slot = &self.servers[server as usize];
        let short = reply.len < asked && !reply.whole;
        if short && slot.born_ns.get() > meta.birth_ns {
            return Err(RpcError::MayHaveLost {
                server: slot.name(),
            });
        }
        Ok(())
    }

    /// Reads one span, from the chunk cache or its servers; into `loan` at the span's
    /// range when one is given and the cache would not keep the span.
    pub(super) async fn read_span(
        &self,
        meta: FileMetadata,
        span: &ChunkSpan,
        loan: Option<&Loan>,
    ) -> Result<SpanData, RpcError> {
        let (index, offset, len) = (span.index, span.offset_in_chunk, span.len);
        let loan = {
            let mut cache = self.chunk_cache.borrow_mut();
            if let Some(bytes) = cache.get(meta.file_id, index, offset, len) {
                return Ok(SpanData::Bytes(bytes));
            }
            loan.filter(|_| !cache.admits(len))
        };
        let req = ops::ChunkIo {
            file_id: meta.file_id,
            index,
            offset,
            len,
        };
        let key = PlacementKey::Chunk {
            file_id: meta.file_id,
            index,
        };
        let r = self
            .read_any_into::<ops::ReadChunk>(
                key,
                &req,
                || loan.and_then(|l| l.lend_mut(span_range(span))),
                |server, r| self.check_not_lost(server, meta, &r.reply, len),
            )
            .await?;
        let got = r.payload.len() + r.sunk;
        if r.reply.len < len {
            self.short_reads.set(self.short_reads.get() + 1);
        }
        if r.reply.len != got as u64 || r.reply.len > len {
            return Err(RpcError::Protocol {
                server: "chunk server".into(),
                source: benchfs_proto::DecodeError::LengthMismatch {
                    field: "read payload",
                    declared: r.reply.len,
                    actual: got as u64,
                },
            });
        }
        if r.sunk > 0 {
            self.chunk_cache.borrow_mut().forget(meta.file_id, index);
            return Ok(SpanData::Sunk(r.sunk));
        }
        self.chunk_cache
            .borrow_mut()
            .put(meta.file_id, index, offset, &r.payload);
        Ok(SpanData::Bytes(r.payload))
    }
}

/// The chunk spans a read of up to `want` bytes at `offset` of a file of `size` bytes
/// covers; `None` when there is nothing to read.
fn plan_read(
    path: &str,
    meta: FileMetadata,
    size: u64,
    want: usize,
    offset: u64,
) -> Result<Option<ReadPlan>, ApiError> {
    if meta.is_dir() {
        return Err(fs_err("read", path, Status::IsDir));
    }
    if offset >= size || want == 0 {
        return Ok(None);
    }
    let len = (want as u64).min(size - offset);
    let spans = ChunkLayout::new(meta.chunk_size)
        .spans(offset, len)
        .map_err(|_| fs_err("read", path, Status::InvalidArgument))?
        .collect();
    Ok(Some(ReadPlan {
        path: path.to_string(),
        meta,
        offset,
        len: len as usize,
        spans,
    }))
}

/// Refuses an operation that would end the file at `offset + len` past
/// [`limits::FILE_SIZE_MAX`] (EFBIG, as Linux does).
pub(super) fn check_file_end(
    op: &'static str,
    path: &str,
    offset: u64,
    len: u64,
) -> Result<(), ApiError> {
    let end = u128::from(offset) + u128::from(len);
    if end > u128::from(limits::FILE_SIZE_MAX) {
        return Err(ApiError::FileTooLarge {
            op,
            path: path.to_string(),
            end,
        });
    }
    Ok(())
}
