//! Inline files: files of at most `storage.inline_bytes` whose bytes live in their metadata
//! record, so that a small file costs one request to make (create, writes and close
//! together), one to read (the open's reply carries the bytes) and one to remove.
//!
//! **Deferred create.** An open with O_CREAT, neither O_EXCL nor O_TRUNC nor O_APPEND, of a
//! path no handle of this client has open, sends nothing: its writes are kept while they
//! fit the inline size with no hole, and the file is made by the first of close, fsync,
//! fstat, a read, a truncate or a namespace call on its path (one `MetadataCreateInline`
//! with the bytes) or a write that does not fit (a plain create, then the kept bytes and
//! the write go to chunks). Until then no other client sees the file (close-to-open
//! promises them nothing before the close), and errors of the create surface at that
//! call: a path that is a directory (EISDIR), a missing or non-directory parent
//! (ENOENT/ENOTDIR). The parent is checked at open from the metadata cache when it holds
//! it; otherwise with the create, at the same time (two requests, one round trip). If the
//! path names an inline file by then, the bytes are written at its offset 0, as an open
//! without O_TRUNC would; if it names a file with chunks, the open happens then and the
//! bytes go to chunks. O_EXCL is not deferred (its EEXIST belongs to the open), nor
//! O_TRUNC (a truncate moved to the first write would cut what other processes wrote to
//! a shared file after the open, as IOR's ranks do behind a barrier), nor O_APPEND (its
//! writes go after bytes it has not seen).
//!
//! **Held bytes.** A handle of an inline file keeps the bytes the open returned and reads
//! from them; its writes that fit go to the record (`MetadataWriteInline`, every replica)
//! and to the copies of every handle of this client. A write, append or truncate past the
//! limit first moves the bytes to chunk 0: seal them on every replica of the record,
//! write them to chunk 0 zero-padded (every replica), drop them from the record (see
//! `benchfs-server`'s `metadata/inline.rs`). Then the file is an ordinary one for good.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use benchfs_proto::limits::INLINE_BYTES_MAX;
use benchfs_proto::meta::{EntryKind, FileMetadata};
use benchfs_proto::placement::{PlacementKey, ServerIndex};
use benchfs_proto::{ops, path, Rpc, Status};

use super::data::{chunk_write, fill_from, WriteSource};
use super::handles::OpenFile;
use super::namespace::group_passed_on;
use super::read_ahead::ReadDst;
use super::{fs_err, rpc_err, Fd, FsClient};
use crate::error::ApiError;
use crate::flags::OpenFlags;
use crate::rpc::{OutPayload, RpcError};

/// A record and its bytes (empty unless it is inline).
#[derive(Debug, Clone)]
pub(super) struct Record {
    pub(super) meta: FileMetadata,
    pub(super) data: Vec<u8>,
}

/// What a handle knows of a file whose bytes live in its record.
#[derive(Debug)]
pub(super) enum Inline {
    /// Opened with O_CREAT and not made yet (see the module docs).
    Deferred(Deferred),
    /// The record holds the bytes; this is the handle's copy, from its open and this
    /// client's writes since.
    Held(Vec<u8>),
}

/// A deferred open: what the create will need.
#[derive(Debug)]
pub(super) struct Deferred {
    /// The bytes written, from offset 0 with no hole.
    bytes: Vec<u8>,
    mode: u32,
    /// The parent, when this client knew it as a directory at open.
    parent: Option<FileMetadata>,
}

/// Where a handle's bytes are.
enum Where {
    /// In chunks: the ordinary data path.
    Chunks,
    Deferred,
    Held,
}

/// The inode number of a deferred handle's placeholder record: servers never hand it out.
const NO_FILE_YET: u64 = 0;

/// Longest wait between retries of a call that met a sealed record (`Busy`).
const BUSY_BACKOFF_MAX: Duration = Duration::from_millis(64);

/// Seal tokens handed out by this process.
static TOKENS: AtomicU64 = AtomicU64::new(0);

/// A token no other mover picks, in practice: a keyed hash of this process's count.
fn seal_token() -> u64 {
    RandomState::new().hash_one(TOKENS.fetch_add(1, Ordering::Relaxed))
}

/// The state of a handle of `record`: its bytes when it is inline.
pub(super) fn held(record: Record) -> Option<Inline> {
    record.meta.inline.then(|| {
        let mut data = record.data;
        data.resize(record.meta.size as usize, 0);
        Inline::Held(data)
    })
}

/// `data` written at `offset` of `bytes`, a gap before it zero-filled.
fn write_into(bytes: &mut Vec<u8>, offset: usize, data: &[u8]) {
    let end = offset + data.len();
    if bytes.len() < end {
        bytes.resize(end, 0);
    }
    bytes[offset..end].copy_from_slice(data);
}

/// Copies `bytes[offset..]` into `dst`, as far as `size`; returns the count.
fn read_from(bytes: &[u8], size: u64, dst: &mut ReadDst<'_>, offset: u64) -> Option<usize> {
    if offset >= size || dst.len() == 0 {
        return Some(0);
    }
    let n = (dst.len() as u64).min(size - offset) as usize;
    let from = bytes.get(offset as usize..).unwrap_or_default();
    let from = &from[..from.len().min(n)];
    match dst {
        ReadDst::Slice(buf) => fill_from(&mut buf[..n], from),
        ReadDst::Loan(loan) => fill_from(loan.lend_mut(0..n)?.as_mut(), from),
    }
    Some(n)
}

/// How long a handle goes by the file size it knows before a read past it asks the
/// metadata owner again (`FsClient::catch_up`), as long as a mount caches
/// attributes by default. A mount's handles follow the same rule.
pub const CATCH_UP_AFTER: Duration = Duration::from_secs(1);

/// What a handle's look at its file's record found ([`FsClient::look`]): the record, and
/// the handle's count of its own changes when it asked (a change of its own that started
/// or ended meanwhile makes the record no guide to what the handle holds).
pub(super) struct Look {
    pub(super) record: ops::RecordReply,
    changes: u64,
}

impl FsClient {
    /// Most bytes this client keeps in the record of a file of `chunk_size`.
    fn inline_limit_for(&self, chunk_size: u64) -> u64 {
        self.inline_limit.min(chunk_size)
    }

    /// Opens `path` (normalised) deferred, if the flags and this client allow (see the
    /// module docs); `None` to open it the ordinary way. A parent the cache knows is not
    /// a directory fails here.
    pub(super) fn open_deferred(
        &self,
        path: &str,
        flags: OpenFlags,
        mode: u32,
    ) -> Result<Option<Fd>, ApiError> {
        let deferrable = self.inline_limit > 0
            && flags.contains(OpenFlags::CREATE | OpenFlags::WRITE)
            && !flags.contains(OpenFlags::EXCL)
            && !flags.contains(OpenFlags::TRUNC)
            && !flags.contains(OpenFlags::APPEND)
            && path != "/"
            && self.fds_where(|f| f.path == path).is_empty();
        if !deferrable {
            return Ok(None);
        }
        let (parent, _) = path::split_parent(path).map_err(|source| ApiError::Path {
            path: path.to_string(),
            source,
        })?;
        let parent = match self.meta_cache.borrow_mut().get(parent) {
            _ if parent == "/" => Some(self.root()),
            Some(m) if m.is_dir() => Some(m),
            Some(_) => return Err(fs_err("open", path, Status::NotDir)),
            None => None,
        };
        // A directory this client knows of at the path: refused now, as Linux refuses it.
        if self
            .meta_cache
            .borrow_mut()
            .get(path)
            .is_some_and(|m| m.is_dir())
        {
            return Err(fs_err("open", path, Status::IsDir));
        }
        let owner = self.owner.get();
        let meta = FileMetadata {
            file_id: NO_FILE_YET,
            kind: EntryKind::File,
            size: 0,
            mode: mode & 0o7777,
            uid: owner.uid,
            gid: owner.gid,
            chunk_size: self.create_chunk_size.get(),
            mtime_ns: 0,
            ctime_ns: 0,
            atime_ns: 0,
            birth_ns: 0,
            inline: true,
            cut_gen: 0,
        };
        let deferred = Some(Inline::Deferred(Deferred {
            bytes: Vec::new(),
            mode,
            parent,
        }));
        Ok(Some(self.add_handle(OpenFile {
            // So that a stat of the path makes the file first (see `flush_path`).
            size_dirty: true,
            ..OpenFile::new(path.to_string(), meta, flags, deferred)
        })))
    }

    /// The record of `path` (normalised) with its bytes if it is inline, for an open or a
    /// rename. With inline files off here, the lookup is the plain one, and only an inline
    /// record (made by a client with them on) costs a second request for its bytes.
    pub(super) async fn record_of(&self, op: &'static str, path: &str) -> Result<Record, ApiError> {
        // The root has no record on any server (`lookup` answers for it).
        if self.inline_limit > 0 && path != "/" {
            return self.lookup_record(op, path).await;
        }
        let meta = self.lookup(op, path, false).await?;
        if meta.inline {
            return self.lookup_record(op, path).await;
        }
        Ok(Record {
            meta,
            data: Vec::new(),
        })
    }

    /// Where the handle's bytes are; the error its create met, for a handle whose deferred
    /// create failed.
    fn where_is(&self, fd: Fd) -> Result<Where, ApiError> {
        self.with_file(fd, |f| match (&f.inline, f.unmade) {
            (_, Some(status)) => Err(fs_err("open", &f.path, status)),
            // Its create is under way in another call: no chunks to go to yet.
            (None, None) if f.meta.file_id == NO_FILE_YET => {
                Err(fs_err("open", &f.path, Status::Busy))
            }
            (None, None) => Ok(Where::Chunks),
            (Some(Inline::Deferred(_)), None) => Ok(Where::Deferred),
            (Some(Inline::Held(_)), None) => Ok(Where::Held),
        })?
    }

    /// Makes the file of a deferred handle, with the bytes written so far; nothing for
    /// any other handle. A create that fails without making the file (an existing
    /// directory at the path, a missing parent, an unreachable owner) leaves the handle
    /// with no file: every later call on it fails with that error, never reaching the
    /// chunk path with the placeholder record the open gave it.
    pub(super) async fn make_deferred(&self, fd: Fd) -> Result<(), ApiError> {
        if matches!(self.where_is(fd)?, Where::Deferred) {
            if let Err(e) = self.create_inline(fd).await {
                return Err(self.unmade_by(fd, e));
            }
        }
        Ok(())
    }

    /// Passes on `e`, the failure of a deferred handle's create, first leaving the handle
    /// with no file if the create made none.
    fn unmade_by(&self, fd: Fd, e: ApiError) -> ApiError {
        let _ = self.with_file(fd, |f| {
            if f.inline.is_none() && f.meta.file_id == NO_FILE_YET {
                f.unmade = Some(e.cause_status());
            }
        });
        e
    }

    /// Makes the files of this client's deferred handles of `path`.
    pub(super) async fn make_deferred_at(&self, path: &str) -> Result<(), ApiError> {
        // A handle whose create failed has nothing to make: what is at the path stands.
        for fd in self.fds_where(|f| f.path == path && f.unmade.is_none()) {
            let made = self.make_deferred(fd).await;
            self.unless_unmade(fd, made)?;
        }
        Ok(())
    }

    /// Makes the files of this client's deferred handles in directory `dir` or below it.
    pub(super) async fn make_deferred_under(&self, dir: &str) -> Result<(), ApiError> {
        let below = |p: &str| dir == "/" || path::moved(p, dir, dir).is_some();
        for fd in
            self.fds_where(|f| matches!(f.inline, Some(Inline::Deferred(_))) && below(&f.path))
        {
            let made = self.make_deferred(fd).await;
            self.unless_unmade(fd, made)?;
        }
        Ok(())
    }

    /// Takes a deferred handle's state, leaving the handle with none.
    fn take_deferred(&self, fd: Fd) -> Result<(String, Deferred), ApiError> {
        self.with_file(fd, |f| match f.inline.take() {
            Some(Inline::Deferred(d)) => Ok((f.path.clone(), d)),
            other => {
                f.inline = other;
                Err(fs_err("open", &f.path, Status::BadHandle))
            }
        })?
    }

    /// Sets what a handle knows once its file exists as `record`.
    fn opened_as(&self, fd: Fd, record: Record) -> Result<(), ApiError> {
        self.meta_cache
            .borrow_mut()
            .put(&self.with_file(fd, |f| f.path.clone())?, record.meta);
        self.with_file(fd, |f| {
            f.meta = record.meta;
            f.size = record.meta.size;
            f.size_dirty = false;
            f.inline = held(record);
        })
    }

    /// The deferred create in one request: the file with the bytes written so far, made
    /// on the record's owner (and checked against its parent at the same time), then
    /// copied to the other replicas. A path that has a file with chunks, or a server whose
    /// limit is lower, falls back to [`Self::make_plain`].
    async fn create_inline(&self, fd: Fd) -> Result<(), ApiError> {
        let (path, mut d) = self.take_deferred(fd)?;
        let req = self.inline_create_request(&path, &mut d);
        let servers = self.replica_set(PlacementKey::Metadata(&path));
        let create = self.until_unsealed(|| async {
            self.call_on::<ops::MetadataCreateInline>(servers[0], &req, OutPayload::none())
                .await
                .map(|(reply, _)| reply)
        });
        let parent = async {
            match d.parent {
                Some(parent) => Ok(parent),
                None => self.check_parent("open", &path).await,
            }
        };
        let (parent, created) = futures_util::future::join(parent, create).await;
        let reply = match created {
            Ok(reply) => reply,
            Err(e) if matches!(e.status(), Status::Exists | Status::NeedsChunks) => {
                parent?;
                let deferred = Deferred {
                    bytes: req.data,
                    ..d
                };
                return self.make_plain(fd, &path, deferred).await;
            }
            Err(e) => return Err(rpc_err("create", &path)(e)),
        };
        // A file that was there took the bytes at its start (`written`) on the owner.
        let (data, written) = match reply.created {
            true => (req.data, Vec::new()),
            false => (reply.data, req.data),
        };
        let record = Record {
            meta: reply.meta,
            data,
        };
        let parent = match parent {
            Ok(parent) => parent,
            Err(e) => {
                self.leave_create(&path, &servers, reply.created, record.meta, written)
                    .await;
                return Err(e);
            }
        };
        let replicated = self
            .replicate_create(&path, &servers, &record, reply.created, written)
            .await;
        match replicated {
            Ok(()) if reply.created => {
                let meta = record.meta;
                self.opened_as(fd, record)?;
                let meta = self
                    .take_parents_group("open", &path, &parent, meta)
                    .await?;
                self.touch_parents(&[&path]).await;
                self.with_file(fd, |f| f.meta = meta)
            }
            Ok(()) => self.opened_as(fd, record),
            // Another replica has a file there that the owner lost (a memory server
            // restarted empty): open that one, as a create that found it would.
            Err(e) if reply.created && e.status() == Status::Exists => {
                let deferred = Deferred {
                    bytes: record.data,
                    ..d
                };
                self.make_plain(fd, &path, deferred).await
            }
            Err(e) => Err(rpc_err("create", &path)(e)),
        }
    }

    /// Leaves a deferred create that fails after the owner took it (its parent check
    /// failed): a record it made is removed; bytes the owner took into the file it found
    /// (`written`), which nothing undoes, go to the other replicas too, so the call fails
    /// without parting them.
    async fn leave_create(
        &self,
        path: &str,
        servers: &[ServerIndex],
        created: bool,
        owners: FileMetadata,
        written: Vec<u8>,
    ) {
        match created {
            true => self.undo_put(path, None, &servers[..1]).await,
            false => {
                let _ = self
                    .write_other_replicas(path, owners, written, servers)
                    .await;
            }
        }
    }

    /// Brings the replicas but the owner along with a deferred create: a record the owner
    /// made is copied to them; bytes it wrote into a file that was there (`written`) are
    /// written into the record each holds.
    async fn replicate_create(
        &self,
        path: &str,
        servers: &[ServerIndex],
        record: &Record,
        created: bool,
        written: Vec<u8>,
    ) -> Result<(), RpcError> {
        match created {
            true => self.copy_to_replicas(path, record, servers).await,
            false => {
                self.write_other_replicas(path, record.meta, written, servers)
                    .await
            }
        }
    }

    /// Copies the record the owner (`servers[0]`) just made to the other replicas, where
    /// the path has none (`Exists` otherwise: a replica kept a file the owner lost). If one
    /// does not take it, the record is removed again from the replicas that took it.
    ///
    /// Only a record this create made is copied: one that was there may be changing on
    /// every replica meanwhile (another client's appends), and a copy of the owner's
    /// would overwrite those that reached the others first, parting the replicas.
    async fn copy_to_replicas(
        &self,
        path: &str,
        record: &Record,
        servers: &[ServerIndex],
    ) -> Result<(), RpcError> {
        if servers.len() < 2 {
            return Ok(());
        }
        let insert = ops::InsertRequest {
            path: path.to_string(),
            meta: record.meta,
            exclusive: true,
            settled_only: false,
            newer_only: false,
            data: record.data.clone(),
        };
        let copies = futures_util::future::join_all(
            servers[1..]
                .iter()
                .map(|&s| self.call_on::<ops::MetadataInsert>(s, &insert, OutPayload::none())),
        )
        .await;
        let (mut holders, failed) =
            super::namespace::took_it(servers[1..].iter().copied().zip(copies));
        let Some(e) = failed else {
            return Ok(());
        };
        tracing::warn!(error = %e, path, "a replica did not take the new record; removing it");
        holders.push(servers[0]);
        self.undo_put(path, None, &holders).await;
        Err(e)
    }

    /// Writes `data` at the start of inline file `owners` at `path` on the replicas but the
    /// owner (`servers[0]`), which took it in a create that found the file: each takes the
    /// write into the record it holds. A replica with no record yet is asked again while
    /// the file's creator may still be copying it there (two clients' creates of one new
    /// file: the second's bytes had reached the owner alone, and its close failed with
    /// ENOENT while the first's copy brought its own bytes to the others), and one that may
    /// have lost its records gets the owner's copied, as for any inline write.
    async fn write_other_replicas(
        &self,
        path: &str,
        owners: FileMetadata,
        data: Vec<u8>,
        servers: &[ServerIndex],
    ) -> Result<(), RpcError> {
        if data.is_empty() || servers.len() < 2 {
            return Ok(());
        }
        let write = ops::WriteInlineRequest {
            path: path.to_string(),
            file_id: owners.file_id,
            offset: 0,
            data,
        };
        // A replica sealed by another client's move answers `Busy` until the move ends;
        // the move reads the owner's bytes, which took these before its seal (or the
        // create would have met the seal there), so a record it left without bytes
        // (`NeedsChunks`) holds them in chunk 0.
        let taken = ops::MetadataReply { meta: owners };
        let request = &write;
        let writes = futures_util::future::join_all(servers[1..].iter().map(|&s| async move {
            let wrote = self
                .until_unsealed(|| {
                    self.call_on::<ops::MetadataWriteInline>(s, request, OutPayload::none())
                })
                .await;
            match wrote {
                Ok((reply, _)) => Ok(reply),
                Err(e) if e.status() == Status::NeedsChunks => Ok(taken),
                Err(e) => Err(e),
            }
        }))
        .await;
        let took = (servers[0], Ok(taken));
        let mut answers: Vec<_> = std::iter::once(took)
            .chain(servers[1..].iter().copied().zip(writes))
            .collect();
        self.ask_again_while_created::<ops::MetadataWriteInline>(&mut answers, &write)
            .await;
        self.copy_to_replicas_that_lost_it::<ops::MetadataWriteInline>(
            path,
            owners.file_id,
            &mut answers,
            &write,
        )
        .await;
        super::routing::first_if_all_took(answers)
            .map(|_| ())
            .inspect_err(|e| {
                tracing::error!(error = %e, path, "a replica did not take the bytes written: the replicas of this record differ");
            })
    }

    /// The request of a deferred create at `path`, with the bytes `d` kept.
    fn inline_create_request(&self, path: &str, d: &mut Deferred) -> ops::CreateInlineRequest {
        let owner = self.owner.get();
        // A set-group-ID parent known at open passes its group on in the create itself.
        let gid = d
            .parent
            .as_ref()
            .and_then(group_passed_on)
            .unwrap_or(owner.gid);
        ops::CreateInlineRequest {
            path: path.to_string(),
            mode: d.mode,
            chunk_size: self.create_chunk_size.get(),
            uid: owner.uid,
            gid,
            data: std::mem::take(&mut d.bytes),
        }
    }

    /// Makes a deferred handle's file the ordinary way (a write that does not fit, or a
    /// path inline creates cannot take): creates it or opens what is there, then writes
    /// the bytes kept through the handle.
    async fn make_plain(&self, fd: Fd, path: &str, d: Deferred) -> Result<(), ApiError> {
        let record = match self
            .create_checked("open", path, EntryKind::File, d.mode)
            .await?
        {
            Ok(meta) => Record {
                meta,
                data: Vec::new(),
            },
            Err(e) if e.status() == Status::Exists => self.record_of("open", path).await?,
            Err(e) => return Err(rpc_err("open", path)(e)),
        };
        if record.meta.is_dir() {
            return Err(fs_err("open", path, Status::IsDir));
        }
        self.opened_as(fd, record)?;
        if !d.bytes.is_empty() {
            if let Err(e) =
                Box::pin(self.pwrite_from(fd, WriteSource::Copied(&d.bytes), 0, None)).await
            {
                // Earlier writes took these bytes: their loss is the handle's to report
                // at fsync and close too, not this write's alone (a retry of it would
                // succeed over the zeros left in their place).
                let lost = match &e {
                    ApiError::Rpc { source, .. } => source.clone(),
                    other => RpcError::Status {
                        server: "this client".into(),
                        status: other.cause_status(),
                    },
                };
                self.with_file(fd, |f| {
                    f.write_error.get_or_insert(lost);
                })?;
                return Err(e);
            }
        }
        Ok(())
    }

    /// A write through a handle whose file is inline or deferred: `Some` if it was done
    /// there, `None` for the chunk path (the handle's file has chunks now, or had all
    /// along).
    pub(super) async fn write_inline(
        &self,
        fd: Fd,
        data: WriteSource<'_>,
        offset: u64,
    ) -> Result<Option<usize>, ApiError> {
        let len = data.len();
        let end = offset.saturating_add(len as u64);
        match self.where_is(fd)? {
            Where::Chunks => Ok(None),
            Where::Deferred => {
                let kept = self.with_file(fd, |f| match &mut f.inline {
                    Some(Inline::Deferred(d))
                        if end <= self.inline_limit && offset <= d.bytes.len() as u64 =>
                    {
                        data.with_bytes(|bytes| write_into(&mut d.bytes, offset as usize, bytes));
                        f.size = d.bytes.len() as u64;
                        true
                    }
                    _ => false,
                })?;
                if kept {
                    return Ok(Some(len));
                }
                let (path, d) = self.take_deferred(fd)?;
                if let Err(e) = self.make_plain(fd, &path, d).await {
                    return Err(self.unmade_by(fd, e));
                }
                Box::pin(self.write_inline(fd, data, offset)).await
            }
            Where::Held => {
                let (path, meta) = self.with_file(fd, |f| (f.path.clone(), f.meta))?;
                if end <= self.inline_limit_for(meta.chunk_size) {
                    let bytes = data.with_bytes(<[u8]>::to_vec);
                    if self
                        .write_record(&path, meta.file_id, offset, bytes)
                        .await?
                    {
                        return Ok(Some(len));
                    }
                }
                self.move_to_chunks(&path, meta).await?;
                Ok(None)
            }
        }
    }

    /// Writes `bytes` at `offset` of inline file `file_id` on every replica of its record
    /// and into this client's copies; false if the record holds no bytes (any more) or
    /// not that many.
    async fn write_record(
        &self,
        path: &str,
        file_id: u64,
        offset: u64,
        bytes: Vec<u8>,
    ) -> Result<bool, ApiError> {
        let req = ops::WriteInlineRequest {
            path: path.to_string(),
            file_id,
            offset,
            data: bytes,
        };
        self.own_change(file_id);
        let written = self
            .until_unsealed(|| {
                self.write_all_inline::<ops::MetadataWriteInline>(path, file_id, &req)
            })
            .await;
        self.own_change(file_id);
        match written {
            Ok(reply) => {
                self.meta_cache.borrow_mut().put(path, reply.meta);
                for f in self.files.borrow_mut().values_mut() {
                    if let (true, Some(Inline::Held(copy))) =
                        (f.meta.file_id == file_id, &mut f.inline)
                    {
                        write_into(copy, offset as usize, &req.data);
                        f.size = copy.len() as u64;
                        f.take_times(&reply.meta);
                    }
                }
                Ok(true)
            }
            Err(e) if e.status() == Status::NeedsChunks => Ok(false),
            Err(e) => Err(rpc_err("write", path)(e)),
        }
    }

    /// A call to every replica of `path`'s record; all must take it. A replica that has
    /// no record where another took the call is asked again while the file's creator may
    /// still be copying its new record there: another client opening the file met it on
    /// the owner, and a write into it failed with ENOENT. One that may have lost its
    /// records (restarted empty, not repaired yet) gets the record copied from one that
    /// took the call, so a rewrite of a small file does not fail until the repair runs.
    async fn write_all_inline<R: Rpc>(
        &self,
        path: &str,
        file_id: u64,
        req: &R::Request,
    ) -> Result<R::Reply, RpcError> {
        let answers = self.write_all_inline_each::<R>(path, file_id, req).await;
        super::routing::first_if_all_took(answers)
    }

    /// [`Self::write_all_inline`], with every replica's answer.
    async fn write_all_inline_each<R: Rpc>(
        &self,
        path: &str,
        file_id: u64,
        req: &R::Request,
    ) -> Vec<(ServerIndex, Result<R::Reply, RpcError>)> {
        let mut answers = self
            .write_each::<R>(PlacementKey::Metadata(path), req, WriteSource::NONE)
            .await;
        self.ask_again_while_created::<R>(&mut answers, req).await;
        self.copy_to_replicas_that_lost_it::<R>(path, file_id, &mut answers, req)
            .await;
        answers
    }

    /// Runs `call` again while it meets a record sealed for a move (`Busy`), backing off,
    /// for up to the RPC timeout: a move takes a few calls.
    async fn until_unsealed<T, F, Fut>(&self, call: F) -> Result<T, RpcError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, RpcError>>,
    {
        // The clock is read only once a call comes back busy, not on every call.
        let mut deadline = None;
        let mut wait = Duration::from_millis(1);
        loop {
            match call().await {
                Err(e) if e.status() == Status::Busy => {
                    let now = Instant::now();
                    if now >= *deadline.get_or_insert(now + self.rpc.options().rpc_timeout) {
                        return Err(e);
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(BUSY_BACKOFF_MAX);
                }
                other => return other,
            }
        }
    }

    /// A read through a handle whose file is inline or deferred: `Some` if served from
    /// the bytes the handle holds (a deferred file is made first), `None` for the chunk
    /// path.
    pub(super) async fn read_inline(
        &self,
        fd: Fd,
        dst: &mut ReadDst<'_>,
        offset: u64,
    ) -> Result<Option<usize>, ApiError> {
        let (path, flags) = self.with_file(fd, |f| (f.path.clone(), f.flags))?;
        match self.where_is(fd)? {
            Where::Chunks => return Ok(None),
            _ if !flags.contains(OpenFlags::READ) => {
                return Err(fs_err("read", &path, Status::BadHandle))
            }
            Where::Deferred => self.make_deferred(fd).await?,
            Where::Held => {}
        }
        self.with_file(fd, |f| match &f.inline {
            Some(Inline::Held(bytes)) => read_from(bytes, f.size, dst, offset)
                .map(Some)
                .ok_or_else(|| fs_err("read", &path, Status::Io)),
            _ => Ok(None),
        })?
    }

    /// Brings a handle up to what other clients published of its file since it was
    /// opened: a size that grew (their closes and fsyncs), the record's bytes, or its
    /// move from the record to chunks. One request to the metadata owner. Called by
    /// fstat and fsync, and by a read past the size the handle knows when the handle last
    /// looked [`CATCH_UP_AFTER`] ago or more, so a reader that opened before another
    /// process wrote sees its bytes, as NFS (after its attribute timeout) and MPI-IO's
    /// sync-barrier-sync promise, while reading a file to its end right after its open
    /// costs nothing more. Nothing changes for a file that is gone or is another
    /// file now (renamed over), nor for a deferred create (no record yet), nor when a
    /// truncate or record write of this client's started or ended while it asked.
    pub(super) async fn catch_up(&self, fd: Fd) {
        let _ = self.with_file(fd, |f| f.checked_at = Instant::now());
        if let Some(look) = self.look(fd).await {
            self.take_look(fd, look, true);
        }
    }

    /// Asks the metadata owner for the record of handle `fd`'s file. Best effort: `None`
    /// for a deferred create (no record yet), a path that names no file or another one
    /// now, or an owner that does not answer (what the handle knows then stands: its
    /// chunks may still be readable).
    pub(super) async fn look(&self, fd: Fd) -> Option<Look> {
        let (path, file_id, deferred, changes) = self
            .with_file(fd, |f| {
                let deferred = matches!(f.inline, Some(Inline::Deferred(_)));
                (f.path.clone(), f.meta.file_id, deferred, f.own_changes)
            })
            .ok()?;
        if deferred {
            return None;
        }
        let req = ops::PathRequest { path };
        match self
            .read_any::<ops::MetadataOpen>(PlacementKey::Metadata(&req.path), &req)
            .await
        {
            Ok((record, _)) if record.meta.file_id == file_id => Some(Look { record, changes }),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(error = %e, path = %req.path, "a handle could not catch up");
                None
            }
        }
    }

    /// Brings handle `fd` up to the record `look` found (see [`FsClient::catch_up`]),
    /// taking a size that grew only with `grow`: a handle that must learn of a cut now
    /// need not learn of growth sooner than the rule there says.
    pub(super) fn take_look(&self, fd: Fd, look: Look, grow: bool) {
        let Look { record, changes } = look;
        let file_id = record.meta.file_id;
        // Bytes another client wrote over cached or fetched-ahead ones are read anew.
        self.chunk_cache.borrow_mut().invalidate_file(file_id);
        let _ = self.with_file(fd, |f| {
            f.read_ahead.reset();
            if f.own_changes != changes {
                return;
            }
            let nothing_to_publish = !f.size_dirty && !f.wrote;
            if nothing_to_publish {
                // Its later writes come after every cut the record shows.
                f.meta.cut_gen = record.meta.cut_gen;
            }
            match (&mut f.inline, record.meta.inline) {
                // The record holds every byte this client wrote too (its writes go there
                // before they return, and none started or ended while it asked), so its
                // copy is the file: longer where others wrote, shorter where they cut it.
                (Some(Inline::Held(bytes)), true) => {
                    *bytes = record.data;
                    f.size = record.meta.size;
                }
                // Moved to chunks: from now on the handle reads them, sized as below.
                (Some(Inline::Held(_)), false) => {
                    f.inline = None;
                    f.meta = record.meta;
                }
                _ => {}
            }
            if record.meta.size > f.size {
                if grow {
                    f.size = record.meta.size;
                }
            } else if record.meta.size < f.size
                && nothing_to_publish
                && f.inline.is_none()
                && !record.meta.inline
            {
                // Another client cut the file since the handle looked: reads stop at the
                // cut, not read zeros to the old end. (A handle with writes of its own
                // to publish keeps its size until its close sorts them out.)
                f.cut_to(record.meta.size);
            }
        });
    }

    /// A read with no handle (a mount's) of a file that was inline when the caller looked
    /// it up: `Ok` with the count if its record still holds the bytes, else `Err` with
    /// the record to read chunks by and how far (`size`, or further where the record
    /// just read says the file was published further). Every read asks the record, which
    /// is one request as a chunk read is.
    pub(super) async fn read_at_inline(
        &self,
        path: &str,
        meta: FileMetadata,
        size: u64,
        mut dst: ReadDst<'_>,
        offset: u64,
    ) -> Result<Result<usize, (FileMetadata, u64)>, ApiError> {
        if !meta.inline {
            return Ok(Err((meta, size)));
        }
        let record = self.lookup_record("read", path).await?;
        if record.meta.file_id != meta.file_id {
            return Err(fs_err("read", path, Status::Stale));
        }
        if !record.meta.inline {
            // It left its record since the caller looked.
            return Ok(Err((record.meta, size.max(record.meta.size))));
        }
        // What the record holds was published, whatever the caller knew of the size.
        read_from(&record.data, size.max(record.meta.size), &mut dst, offset)
            .map(Ok)
            .ok_or_else(|| fs_err("read", path, Status::Io))
    }

    /// A write with no handle (a mount's) to a file that was inline when the caller looked
    /// it up: `None` if it went to the record, else the record to write chunks by (the
    /// bytes were moved there first if they had to be).
    pub(super) async fn write_at_inline(
        &self,
        path: &str,
        meta: FileMetadata,
        data: WriteSource<'_>,
        offset: u64,
    ) -> Result<Option<FileMetadata>, ApiError> {
        if !meta.inline {
            return Ok(Some(meta));
        }
        let end = offset.saturating_add(data.len() as u64);
        if end <= self.inline_limit_for(meta.chunk_size) {
            let bytes = data.with_bytes(<[u8]>::to_vec);
            if self.write_record(path, meta.file_id, offset, bytes).await? {
                return Ok(None);
            }
        }
        self.move_to_chunks(path, meta).await.map(Some)
    }

    /// Cuts or extends inline file `meta` at `path` to `size` on every replica of its
    /// record: `Ok` with the record if it still holds the bytes, else `Err` with the
    /// record after they moved to chunk 0 (the caller then cuts the chunks).
    pub(super) async fn truncate_inline(
        &self,
        path: &str,
        meta: FileMetadata,
        size: u64,
    ) -> Result<Result<FileMetadata, FileMetadata>, ApiError> {
        if size <= self.inline_limit_for(meta.chunk_size) {
            let next = benchfs_proto::meta::next_cut_gen(meta.cut_gen);
            let req = super::namespace::exact_size(path, meta.file_id, size, next);
            let cut = self
                .until_unsealed(|| {
                    self.write_all_inline::<ops::UpdateSize>(path, meta.file_id, &req)
                })
                .await;
            match cut {
                Ok(reply) if reply.meta.inline => return Ok(Ok(reply.meta)),
                Ok(reply) => return Ok(Err(reply.meta)),
                Err(e) if e.status() == Status::NeedsChunks => {}
                Err(e) => return Err(rpc_err("truncate", path)(e)),
            }
        }
        self.move_to_chunks(path, meta).await.map(Err)
    }

    /// Moves inline file `meta`'s bytes from its record to chunk 0 (see the module docs)
    /// and returns the record, which holds none after. A move under way by another
    /// client is waited for; one whose seal lapsed (its mover died) is taken over.
    pub(super) async fn move_to_chunks(
        &self,
        path: &str,
        meta: FileMetadata,
    ) -> Result<FileMetadata, ApiError> {
        let token = seal_token();
        let seal = ops::SealInlineRequest {
            path: path.to_string(),
            file_id: meta.file_id,
            token,
        };
        let moved = self
            .until_unsealed(|| async {
                // Read before the seal goes out: each replica's lease runs from when it
                // took it, and the calls that bring a seal to every replica can take most
                // of a timeout.
                let sealing_since = Instant::now();
                let answers = self
                    .write_all_inline_each::<ops::MetadataSealInline>(path, meta.file_id, &seal)
                    .await;
                let (moved_on, still_inline): (Vec<_>, Vec<_>) = answers
                    .iter()
                    .filter_map(|(s, a)| a.as_ref().ok().map(|r| (*s, r.meta.inline)))
                    .partition(|(_, inline)| !inline);
                let sealed = match super::routing::first_if_all_took(answers) {
                    Ok(sealed) => sealed,
                    Err(e) => {
                        self.end_move(path, meta.file_id, token, false).await;
                        return Err(e);
                    }
                };
                // A replica that holds no bytes any more took an earlier move's drop,
                // which comes after chunk 0 has the bytes: that move ended on some
                // replicas only (a drop refused after a restart ended a seal), and the
                // others take the moved record now, their bytes stale beside chunk 0's.
                if let Some(&(from, _)) = moved_on.first() {
                    let to: Vec<_> = still_inline.iter().map(|(s, _)| *s).collect();
                    return self.finish_move(path, meta.file_id, from, &to).await;
                }
                // A seal holds for twice the RPC timeout: one that is half gone may lapse
                // before these bytes land, so the move starts again instead.
                if sealing_since.elapsed() >= self.rpc.options().rpc_timeout {
                    self.end_move(path, meta.file_id, token, false).await;
                    return Err(RpcError::Status {
                        server: "the record's servers".into(),
                        status: Status::Busy,
                    });
                }
                if let Err(e) = self.write_chunk_zero(path, &sealed).await {
                    self.end_move(path, meta.file_id, token, false).await;
                    return Err(e);
                }
                self.drop_moved(path, meta.file_id, token).await
            })
            .await
            .map_err(rpc_err("write", path))?;
        self.meta_cache.borrow_mut().put(path, moved);
        for f in self.files.borrow_mut().values_mut() {
            if f.meta.file_id == meta.file_id && matches!(f.inline, Some(Inline::Held(_))) {
                f.inline = None;
                f.meta = moved;
            }
        }
        Ok(moved)
    }

    /// Copies the record of `file_id` at `path` from server `from`, where a move ended, over
    /// the still inline (and sealed) ones of servers `to`, and returns it.
    async fn finish_move(
        &self,
        path: &str,
        file_id: u64,
        from: ServerIndex,
        to: &[ServerIndex],
    ) -> Result<FileMetadata, RpcError> {
        let lookup = ops::PathRequest {
            path: path.to_string(),
        };
        let (record, _) = self
            .call_on::<ops::MetadataOpen>(from, &lookup, OutPayload::none())
            .await?;
        if record.meta.file_id != file_id || record.meta.inline {
            // Renamed, removed or made anew meanwhile: the caller's next step finds out.
            return Err(RpcError::Status {
                server: self.server_name(from),
                status: Status::Stale,
            });
        }
        let insert = ops::InsertRequest {
            path: path.to_string(),
            meta: record.meta,
            exclusive: false,
            settled_only: false,
            newer_only: false,
            data: Vec::new(),
        };
        for &server in to {
            self.call_on::<ops::MetadataInsert>(server, &insert, OutPayload::none())
                .await?;
        }
        tracing::warn!(
            path,
            replicas = to.len(),
            "finished a move to chunks that had ended on some replicas only"
        );
        Ok(record.meta)
    }

    /// Ends a move sealed with `token` whose bytes are in chunk 0: every replica's record
    /// drops its bytes (one that holds none answers as it is).
    async fn drop_moved(
        &self,
        path: &str,
        file_id: u64,
        token: u64,
    ) -> Result<FileMetadata, RpcError> {
        let drop = ops::DropInlineRequest {
            path: path.to_string(),
            file_id,
            token,
            moved: true,
        };
        self.write_all_inline::<ops::MetadataDropInline>(path, file_id, &drop)
            .await
            .map(|reply| reply.meta)
    }

    /// Writes a sealed record's bytes to chunk 0 of its file on every replica, zero-padded
    /// to the most bytes any record holds, so that nothing a failed move left there shows
    /// when the file grows (no move writes past that).
    async fn write_chunk_zero(
        &self,
        path: &str,
        sealed: &ops::RecordReply,
    ) -> Result<(), RpcError> {
        let meta = FileMetadata {
            inline: false,
            ..sealed.meta
        };
        let mut padded = sealed.data.clone();
        padded.resize(INLINE_BYTES_MAX.min(meta.chunk_size) as usize, 0);
        let req = chunk_write(&meta, 0, (0, padded.len() as u64), 0, None);
        let key = PlacementKey::Chunk {
            file_id: meta.file_id,
            index: 0,
        };
        let written = self
            .write_all::<ops::WriteChunk>(key, &req, WriteSource::Copied(&padded))
            .await;
        self.chunk_cache.borrow_mut().invalidate_file(meta.file_id);
        tracing::debug!(
            path,
            file_id = meta.file_id,
            ok = written.is_ok(),
            "inline bytes to chunk 0"
        );
        written.map(drop)
    }

    /// Lifts (or, with `moved`, completes) a move's seal on every replica; a failure is
    /// logged, since the seal lapses anyway.
    async fn end_move(&self, path: &str, file_id: u64, token: u64, moved: bool) {
        let req = ops::DropInlineRequest {
            path: path.to_string(),
            file_id,
            token,
            moved,
        };
        for (_, answer) in self
            .write_each::<ops::MetadataDropInline>(
                PlacementKey::Metadata(path),
                &req,
                WriteSource::NONE,
            )
            .await
        {
            if let Err(e) = answer {
                if !matches!(e.status(), Status::Busy | Status::NotFound) {
                    tracing::warn!(error = %e, path, "a seal was not lifted; it lapses");
                }
            }
        }
    }

    /// The record of `path` (normalised) and its bytes if it is inline, from its owner or
    /// a replica.
    pub(super) async fn lookup_record(
        &self,
        op: &'static str,
        path: &str,
    ) -> Result<Record, ApiError> {
        let req = ops::PathRequest {
            path: path.to_string(),
        };
        match self
            .read_any::<ops::MetadataOpen>(PlacementKey::Metadata(path), &req)
            .await
        {
            Ok((reply, _)) => {
                self.meta_cache.borrow_mut().put(path, reply.meta);
                Ok(Record {
                    meta: reply.meta,
                    data: reply.data,
                })
            }
            Err(e) if e.status() == Status::NotFound => Err(self.why_not_found(op, path, e).await),
            Err(e) => Err(rpc_err(op, path)(e)),
        }
    }
}
