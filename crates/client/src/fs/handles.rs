//! Open files and their handles: open, close, seek, fsync, fstat, and publishing the
//! size a handle grew once its writes came back.

use std::collections::BTreeMap;
use std::time::Instant;

use benchfs_proto::layout::ChunkLayout;
use benchfs_proto::meta::{EntryKind, FileMetadata, SizeUpdate};
use benchfs_proto::placement::PlacementKey;
use benchfs_proto::{ops, Status};
use futures_util::future::join_all;

use super::inline::{self, Inline};
use super::read_ahead::ReadAhead;
use super::{ends_in_dot, fs_err, norm, rpc_err, Fd, FsClient, Whence};
use crate::error::ApiError;
use crate::flags::OpenFlags;
use crate::rpc::{OutPayload, RpcError};

/// How many times a close that found its bytes outlived a cut tries to grow the file to
/// them while other cuts keep coming (see `FsClient::publish_reaching`).
const GROW_ROUNDS_MAX: usize = 4;
/// Most write ends a handle keeps for its close (see [`WriteEnds`]): one for a
/// writer that moves forward, one more for each write that ended short of all before it.
const WRITE_ENDS_MAX: usize = 64;

/// Renames (by other clients) a handle's call follows before it gives up: one a call
/// would be plenty but for renames racing it.
const RENAMES_FOLLOWED_MAX: usize = 4;

#[derive(Debug)]
pub(super) struct OpenFile {
    pub(super) path: String,
    pub(super) meta: FileMetadata,
    pub(super) flags: OpenFlags,
    pub(super) pos: u64,
    /// The size as this client knows it: the size at open, grown by its own writes
    /// (those still in flight included).
    pub(super) size: u64,
    /// Whether `size` grew past what the metadata owner holds.
    pub(super) size_dirty: bool,
    /// Whether the handle wrote since it last published: its close then moves the file's
    /// modification time even when the size did not grow, as a write in place does on
    /// Linux (a file rewritten in place kept its old time, which `rsync` and `make`
    /// trust).
    pub(super) wrote: bool,
    /// The handle's writes in place since it last published (see [`WriteEnds`]).
    pub(super) write_ends: WriteEnds,
    /// Why this handle's deferred create failed, when it did: the handle has no file, and
    /// every later call on it fails so (see `inline::make_deferred`).
    pub(super) unmade: Option<Status>,
    /// The first failure of a write of this handle that went behind its call: every
    /// later write, fsync, fstat and close reports it, and the size is no longer
    /// published (see `pipeline`).
    pub(super) write_error: Option<RpcError>,
    /// What this handle read ahead (see `read_ahead`).
    pub(super) read_ahead: ReadAhead,
    /// When the handle last learned the file's published size: at its open, or the
    /// last `catch_up`.
    pub(super) checked_at: Instant,
    /// How far into each chunk, from its start, writes of this handle that every replica
    /// acknowledged reach: bytes the file holds since, which a server that lost them must
    /// not fill with zeros (see `data::chunk_write`). In flight ones are not counted: the
    /// next write to the chunk may land before them.
    pub(super) acked: BTreeMap<u64, u64>,
    /// The file's bytes when its record holds them, or a create deferred to the close
    /// (see `inline`); `None` for a file with chunks.
    pub(super) inline: Option<Inline>,
    /// Counts the starts and ends of this client's truncates and record writes of the
    /// file ([`FsClient::own_change`]): a reply that reads the record (a `catch_up`, a
    /// size update's) taken across one is older than the change and is not applied, or it
    /// would give back a size or bytes the change replaced.
    pub(super) own_changes: u64,
}

impl OpenFile {
    /// Takes the times a change this client made gave the record (`meta`), so that the
    /// handle's fstat shows this client's writes before their close publishes them.
    pub(super) fn take_times(&mut self, meta: &FileMetadata) {
        self.meta.mtime_ns = self.meta.mtime_ns.max(meta.mtime_ns);
        self.meta.ctime_ns = self.meta.ctime_ns.max(meta.ctime_ns);
    }

    /// The file was cut to `size`: the handle knows it so, has no larger size to publish,
    /// and bytes past the cut are no longer the file's (a write past it leaves a hole).
    pub(super) fn cut_to(&mut self, size: u64) {
        self.size = size;
        self.size_dirty = false;
        self.meta.size = self.meta.size.min(size);
        let chunk_size = self.meta.chunk_size.max(1);
        self.acked.retain(|&index, end| {
            let left = size.saturating_sub(index.saturating_mul(chunk_size));
            *end = (*end).min(left);
            *end > 0
        });
    }

    /// A handle of file `meta` at `path`, open as `flags`, that knows the record's size.
    pub(super) fn new(
        path: String,
        meta: FileMetadata,
        flags: OpenFlags,
        inline: Option<Inline>,
    ) -> OpenFile {
        OpenFile {
            path,
            meta,
            flags,
            pos: 0,
            size: meta.size,
            size_dirty: false,
            wrote: false,
            write_ends: WriteEnds::default(),
            unmade: None,
            write_error: None,
            read_ahead: ReadAhead::default(),
            checked_at: Instant::now(),
            acked: BTreeMap::new(),
            inline,
            own_changes: 0,
        }
    }
}

impl FsClient {
    /// Opens (and with CREATE, creates) a file; returns its handle.
    pub async fn open(&self, path: &str, flags: OpenFlags, mode: u32) -> Result<Fd, ApiError> {
        let given = path;
        let path = norm(path)?;
        if flags.contains(OpenFlags::CREATE) {
            if flags.contains(OpenFlags::DIRECTORY) {
                return Err(fs_err("open", &path, Status::InvalidArgument));
            }
            self.check_create_chunk_size()?;
            // "/" and "/d/." name a directory, never a file to make: EEXIST with O_EXCL,
            // else EISDIR, as Linux answers.
            if path == "/" || ends_in_dot(given) {
                let is_dir = path == "/" || self.lookup("open", &path, false).await?.is_dir();
                let why = match (is_dir, flags.contains(OpenFlags::EXCL)) {
                    (false, _) => Status::NotDir,
                    (true, true) => Status::Exists,
                    (true, false) => Status::IsDir,
                };
                return Err(fs_err("open", &path, why));
            }
        }
        match self.check_dir_form("open", given, &path).await {
            Err(e) if e.status() == Some(Status::NotFound) && flags.contains(OpenFlags::CREATE) => {
                return Err(fs_err("open", &path, Status::IsDir));
            }
            checked => checked?,
        }
        if let Some(fd) = self.open_deferred(&path, flags, mode)? {
            return Ok(fd);
        }
        self.make_deferred_at(&path).await?;
        let writable = flags.contains(OpenFlags::WRITE) || flags.contains(OpenFlags::APPEND);
        let (record, created) = if flags.contains(OpenFlags::CREATE) {
            match self
                .create_checked("open", &path, EntryKind::File, mode)
                .await?
            {
                Ok(meta) => (
                    inline::Record {
                        meta,
                        data: Vec::new(),
                    },
                    true,
                ),
                Err(e) if e.status() == Status::Exists && !flags.contains(OpenFlags::EXCL) => {
                    (self.record_of("open", &path).await?, false)
                }
                Err(e) => return Err(rpc_err("open", &path)(e)),
            }
        } else {
            (self.record_of("open", &path).await?, false)
        };
        let (mut meta, mut data) = (record.meta, record.data);
        if meta.is_symlink() {
            return Err(fs_err("open", &path, Status::NotFollowed));
        }
        // O_TRUNC asks for write access too, as Linux takes it.
        if meta.is_dir() && (writable || flags.contains(OpenFlags::TRUNC)) {
            return Err(fs_err("open", &path, Status::IsDir));
        }
        if !meta.is_dir() && flags.contains(OpenFlags::DIRECTORY) {
            return Err(fs_err("open", &path, Status::NotDir));
        }
        // A file this open created has no chunks anywhere yet; any other may have chunks
        // past its published size, so even an empty one is cut. O_TRUNC cuts with any
        // access mode, as Linux does (and as a mount's open does, whose kernel truncates).
        if flags.contains(OpenFlags::TRUNC) && !created {
            self.drain_path(&path).await;
            meta = self.truncate_meta(&path, meta, 0).await?;
            self.cut_handles(meta);
            data.clear();
        }
        self.meta_cache.borrow_mut().put(&path, meta);
        // Close-to-open: data cached before this open may be stale.
        self.chunk_cache.borrow_mut().invalidate_file(meta.file_id);
        let inline = inline::held(inline::Record { meta, data });
        Ok(self.add_handle(OpenFile::new(path, meta, flags, inline)))
    }

    /// Adds handle `file`; returns its number.
    pub(super) fn add_handle(&self, file: OpenFile) -> Fd {
        let fd = self.next_fd.get();
        self.next_fd.set(fd + 1);
        self.files.borrow_mut().insert(fd, file);
        fd
    }

    pub(super) fn with_file<T>(
        &self,
        fd: Fd,
        f: impl FnOnce(&mut OpenFile) -> T,
    ) -> Result<T, ApiError> {
        let mut files = self.files.borrow_mut();
        let file = files
            .get_mut(&fd)
            .ok_or_else(|| fs_err("fd", &format!("#{fd}"), Status::BadHandle))?;
        Ok(f(file))
    }

    /// The handles of this client that `which` picks.
    pub(super) fn fds_where(&self, which: impl Fn(&OpenFile) -> bool) -> Vec<Fd> {
        self.files
            .borrow()
            .iter()
            .filter(|(_, f)| which(f))
            .map(|(fd, _)| *fd)
            .collect()
    }

    /// Waits for a handle's writes, then pushes its grown size to the metadata owner (and
    /// replicas); fails, publishing nothing, if one of its writes failed.
    pub(super) async fn flush_size(&self, fd: Fd) -> Result<(), ApiError> {
        // A deferred create is made here, with the bytes and the size in one request.
        self.make_deferred(fd).await?;
        self.drain_fd(fd).await;
        self.write_error(fd)?;
        let Some((path, meta, grown, ends, changes)) = self.with_file(fd, |f| {
            let grown = f.size_dirty.then_some(f.size);
            (grown.is_some() || f.wrote).then(|| {
                let ends = f.write_ends.clone();
                (f.path.clone(), f.meta, grown, ends, f.own_changes)
            })
        })?
        else {
            return Ok(());
        };
        let meta = self.publish_writes(&path, meta, grown, &ends).await?;
        self.with_file(fd, |f| {
            f.size_dirty = false;
            f.wrote = false;
            f.write_ends.clear();
            if let Some(meta) = meta {
                f.take_times(&meta);
                if f.own_changes == changes {
                    f.size = f.size.max(meta.size);
                    // Every write so far is published or went with a cut: later ones
                    // come after the cuts the record shows.
                    f.meta.cut_gen = meta.cut_gen;
                }
            }
        })?;
        Ok(())
    }

    /// Notes a change of this client's to file `file_id` starting or ending (see
    /// `OpenFile::own_changes`).
    pub(super) fn own_change(&self, file_id: u64) {
        for f in self
            .files
            .borrow_mut()
            .values_mut()
            .filter(|f| f.meta.file_id == file_id)
        {
            f.own_changes += 1;
        }
    }

    /// Runs `call`, a change to the record of file `file_id`, at `path`. When that no
    /// longer names the file (another client renamed it, or a directory above it), finds
    /// where its record went and runs `call` there, and points this client's handles of
    /// the file at it, so an open file follows its renames as on a local file system:
    /// without it, a writer's close after another client's rename lost the size it
    /// published (the bytes then read as an empty file).
    pub(super) async fn following_renames<T, F, Fut>(
        &self,
        file_id: u64,
        path: &str,
        call: F,
    ) -> Result<T, ApiError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        let mut path = path.to_string();
        for _ in 0..RENAMES_FOLLOWED_MAX {
            match call(path.clone()).await {
                Err(e) if e.is_gone() => match self.locate(file_id).await {
                    Some(moved) if moved != path => {
                        self.follow_rename(file_id, &path, &moved);
                        path = moved;
                    }
                    _ => return Err(e),
                },
                done => return done,
            }
        }
        call(path).await
    }

    /// Where a record of file `file_id` is, asking every server (each scans its table: for
    /// a handle whose file another client renamed, not for lookups); `None` if none
    /// answers with one.
    pub async fn locate(&self, file_id: u64) -> Option<String> {
        let req = ops::LocateFileRequest { file_id };
        let asks = self
            .all_servers()
            .map(|s| self.call_on::<ops::LocateFile>(s, &req, OutPayload::none()));
        join_all(asks)
            .await
            .into_iter()
            .find_map(|answer| answer.ok()?.0.path)
    }

    /// Points this client's handles of file `file_id` at `to`, its path since a rename
    /// from `from` that another client made.
    fn follow_rename(&self, file_id: u64, from: &str, to: &str) {
        tracing::debug!(
            file_id,
            from,
            to,
            "a handle follows its file to its new name"
        );
        self.meta_cache.borrow_mut().remove(from);
        for f in self.files.borrow_mut().values_mut() {
            if f.meta.file_id == file_id {
                f.path = to.to_string();
            }
        }
    }

    /// Grows the published size of file `file_id`, named `path`, to at least `size` on
    /// every replica (a size update never shrinks, so concurrent writers' updates
    /// commute); returns the record.
    pub async fn grow_size(
        &self,
        path: &str,
        file_id: u64,
        size: u64,
    ) -> Result<FileMetadata, ApiError> {
        Ok(self.update_size(path, file_id, size, None).await?.0)
    }

    /// [`FsClient::grow_size`], or with `uncut_since`, only on the replicas whose record
    /// was not cut since that cut count (the others move its time alone). Returns the
    /// first replica's record and the least size a replica answered with.
    async fn update_size(
        &self,
        path: &str,
        file_id: u64,
        size: u64,
        uncut_since: Option<u16>,
    ) -> Result<(FileMetadata, u64), ApiError> {
        let update = |path: String| async move {
            let req = ops::UpdateSizeRequest {
                path: path.clone(),
                file_id,
                size,
                how: match uncut_since {
                    Some(_) => SizeUpdate::AtLeastUncut,
                    None => SizeUpdate::AtLeast,
                },
                cut_gen: uncut_since.unwrap_or(0),
            };
            let replies = self
                .change_size::<ops::UpdateSize>(&path, file_id, &req)
                .await
                .map_err(rpc_err("size update", &path))?;
            let meta = replies[0].meta;
            let least = replies
                .iter()
                .map(|r| r.meta.size)
                .min()
                .unwrap_or(meta.size);
            self.meta_cache.borrow_mut().put(&path, meta);
            Ok((meta, least))
        };
        self.following_renames(file_id, path, update).await
    }

    /// Publishes what a handle of file `meta`, named `path`, wrote since it last did: the
    /// size its writes grew the file to (`grown`), else its writes in place
    /// (`write_ends`; none for appends alone); a write is kept when another client's cut
    /// came before it, and gone with the cut when it came after. Returns the record,
    /// or `None` when only writes in place were published and the file is gone (another
    /// client removed it: it has no time to move).
    pub async fn publish_writes(
        &self,
        path: &str,
        meta: FileMetadata,
        grown: Option<u64>,
        write_ends: &WriteEnds,
    ) -> Result<Option<FileMetadata>, ApiError> {
        let written = write_ends.reaches();
        let published = match grown {
            Some(size) => {
                let below = written.into_iter().filter(|&end| end < size);
                let reaches: Vec<u64> = std::iter::once(size).chain(below).collect();
                return self
                    .publish_reaching(path, meta, size, &reaches)
                    .await
                    .map(Some);
            }
            None => self.publish_reaching(path, meta, 0, &written).await,
        };
        match published {
            Err(e) if e.is_gone() => Ok(None),
            published => published.map(Some),
        }
    }

    /// Publishes writes of file `meta`, named `path`, that reached `reaches` (largest
    /// first, each the end of a write or of its part in one chunk), asking for size
    /// `asked` (0 for writes in place, which moves the time alone) on the replicas whose
    /// record was not cut since the writer looked (`meta.cut_gen`); returns the record.
    /// When a replica then ends before a reach, another client cut the file since the
    /// writer looked (or a replica missed a cut), and the writes' last bytes tell the
    /// order: the largest reach whose last byte is still held is of a write (or part) that
    /// landed after the cut and is the file's, which then grows to its end on every
    /// replica (the cut range between reads as zeros, as a truncate leaves it); the writes
    /// whose bytes were cut came before and went with it, as on a local file system.
    async fn publish_reaching(
        &self,
        path: &str,
        meta: FileMetadata,
        asked: u64,
        reaches: &[u64],
    ) -> Result<FileMetadata, ApiError> {
        // An inline file's bytes are its record's, cut and grown with it.
        let uncut_since = (!meta.inline).then_some(meta.cut_gen);
        let (published, least) = self
            .update_size(path, meta.file_id, asked, uncut_since)
            .await?;
        if published.inline {
            return Ok(published);
        }
        let mut reach = None;
        for &end in reaches.iter().filter(|&&end| end > least) {
            if self.holds_byte(meta, end - 1).await {
                reach = Some(end);
                break;
            }
        }
        let Some(reach) = reach else {
            return Ok(published);
        };
        // The check and the growth are two calls, and a truncate sets the size before it
        // cuts the chunks: a byte held at the check may be cut before the growth lands,
        // which then showed zeros nobody wrote. So the file grows only while its cut
        // count is the one the check followed; the truncate moves it again once its cut
        // is done, and the check is made again.
        let mut seen = published;
        for round in 0..GROW_ROUNDS_MAX {
            // The first round's check is the one that chose `reach`.
            if round > 0 && !self.holds_byte(meta, reach - 1).await {
                return Ok(seen);
            }
            let grown = self
                .update_size(path, meta.file_id, reach, Some(seen.cut_gen))
                .await;
            let (grown, least) = match grown {
                // Removed meanwhile: nothing left to keep.
                Err(e) if e.is_gone() => return Ok(seen),
                grown => grown?,
            };
            if least >= reach {
                return Ok(grown);
            }
            seen = grown;
        }
        // Cut again and again, or replicas whose counts differ (one missed a cut): the
        // bytes whose writes succeeded are kept, which only a cut racing still can zero.
        match self.grow_size(path, meta.file_id, reach).await {
            Err(e) if e.is_gone() => Ok(seen),
            grown => grown,
        }
    }

    /// Whether a server of file `meta`'s chunk holds the byte at `offset`. One that
    /// cannot be asked counts as holding it: growing a file over a cut range, which
    /// reads as zeros, is the lesser harm than losing bytes whose writes succeeded.
    async fn holds_byte(&self, meta: FileMetadata, offset: u64) -> bool {
        let chunk_size = meta.chunk_size.max(1);
        let req = ops::ChunkIo {
            file_id: meta.file_id,
            index: offset / chunk_size,
            offset: offset % chunk_size,
            len: 1,
        };
        let key = PlacementKey::Chunk {
            file_id: meta.file_id,
            index: req.index,
        };
        match self
            .read_any_into::<ops::ReadChunk>(key, &req, || None, |_, _| Ok(()))
            .await
        {
            Ok(r) => r.reply.len == 1,
            Err(e) => {
                tracing::debug!(error = %e, file_id = meta.file_id, offset, "a held byte could not be checked");
                true
            }
        }
    }

    /// Closes a handle once its writes came back, publishing its size; fails if one of
    /// them failed (the handle is closed either way).
    pub async fn close(&self, fd: Fd) -> Result<(), ApiError> {
        let flushed = self.flush_size(fd).await;
        self.files.borrow_mut().remove(&fd);
        // What the handle was fetching ahead finishes now, not under a later drop.
        self.drain_fetches().await;
        flushed
    }

    /// Cuts or extends the file open as `fd`, which must be open for writing
    /// (`InvalidArgument` otherwise, as ftruncate(2) says).
    pub async fn ftruncate(&self, fd: Fd, size: u64) -> Result<(), ApiError> {
        let (path, file_id, writable) = self.with_file(fd, |f| {
            let writable = f.flags.contains(OpenFlags::WRITE);
            (f.path.clone(), f.meta.file_id, writable)
        })?;
        if !writable {
            return Err(fs_err("ftruncate", &path, Status::InvalidArgument));
        }
        let cut = |path: String| async move { self.truncate(&path, size).await };
        self.following_renames(file_id, &path, cut).await
    }

    /// Moves the handle's position. From the end, a create deferred to the close is made
    /// first (one request), since only its record knows the size of a file that exists
    /// already: the handle alone knew just its own bytes, and a write after such a seek
    /// landed over the file's start.
    pub async fn seek(&self, fd: Fd, offset: i64, whence: Whence) -> Result<u64, ApiError> {
        if whence == Whence::End {
            self.make_deferred(fd).await?;
        }
        self.with_file(fd, |f| {
            let base = match whence {
                Whence::Start => 0,
                Whence::Current => f.pos,
                Whence::End => f.size,
            };
            let pos = base
                .checked_add_signed(offset)
                .filter(|&pos| pos <= benchfs_proto::limits::FILE_SIZE_MAX)
                .ok_or_else(|| fs_err("seek", &f.path, Status::InvalidArgument))?;
            f.pos = pos;
            Ok(pos)
        })?
    }

    /// Makes a handle's data and size durable on the servers: waits for its writes, fails
    /// if one of them failed, publishes its size, and has every server sync.
    pub async fn fsync(&self, fd: Fd) -> Result<(), ApiError> {
        self.flush_size(fd).await?;
        let path = self.with_file(fd, |f| f.path.clone())?;
        self.sync_servers(&path).await?;
        // A reader's fsync after a barrier sees what writers synced before it (MPI-IO).
        if self.with_file(fd, |f| f.flags.contains(OpenFlags::READ))? {
            self.catch_up(fd).await;
        }
        Ok(())
    }

    /// Makes every server flush its store and metadata to stable storage (a file's
    /// chunks may be on any of them); `path` names the file the caller syncs.
    pub async fn sync_servers(&self, path: &str) -> Result<(), ApiError> {
        let all = self
            .all_servers()
            .map(|s| self.call_on::<ops::Fsync>(s, &ops::Empty, OutPayload::none()));
        for r in join_all(all).await {
            r.map_err(rpc_err("fsync", path))?;
        }
        Ok(())
    }

    /// The metadata of an open handle, with this client's own writes counted and what
    /// other clients published since its open (see `catch_up`).
    pub async fn fstat(&self, fd: Fd) -> Result<FileMetadata, ApiError> {
        self.flush_size(fd).await?;
        self.catch_up(fd).await;
        self.with_file(fd, |f| FileMetadata {
            size: f.size,
            ..f.meta
        })
    }

    /// Publishes the sizes of this client's open handles of `path` that grew (and the time
    /// of those that wrote), once their writes came back. A handle whose write failed publishes nothing; its own calls
    /// report the failure.
    pub(super) async fn flush_path(&self, path: &str) -> Result<(), ApiError> {
        self.drain_path_writes(path).await;
        let dirty = self.fds_where(|f| {
            f.path == path
                && (f.size_dirty || f.wrote)
                && f.write_error.is_none()
                && f.unmade.is_none()
        });
        for fd in dirty {
            let flushed = self.flush_size(fd).await;
            self.unless_unmade(fd, flushed)?;
        }
        Ok(())
    }

    /// `result` of work on handle `fd` done for a call on its path, as that call's: an
    /// error that left the handle unmade (its deferred create failed) stays the handle's,
    /// for its own calls, while what is at the path stands.
    pub(super) fn unless_unmade(
        &self,
        fd: Fd,
        result: Result<(), ApiError>,
    ) -> Result<(), ApiError> {
        match result {
            Err(e) if self.with_file(fd, |f| f.unmade.is_none())? => Err(e),
            _ => Ok(()),
        }
    }
}

/// What a handle wrote in place since it last published, as its publish checks it after
/// another client's cut (see [`FsClient::publish_writes`]). Appends add nothing: their
/// claim orders them before any cut the publish finds.
#[derive(Debug, Clone, Default)]
pub struct WriteEnds {
    /// The writes' ends, largest first, each the end of a write later than those before
    /// it: after a cut, the publish keeps the largest of those writes that landed after
    /// it, which need not be the largest of all. An end a later write reaches past is
    /// dropped (that write's bytes tell the order for both); at most
    /// [`WRITE_ENDS_MAX`], the latest taking the smallest's place.
    ends: Vec<u64>,
    /// How far into the file the writes reach in each chunk, by chunk index: a write over
    /// several chunks lands chunk by chunk, so a cut can come between its parts, and a
    /// part that landed after it is the file's though the write's last byte went with the
    /// cut (a write behind racing another client's truncate showed such a part's bytes
    /// under a size short of them, and again when the file grew). One entry a chunk
    /// written.
    parts: BTreeMap<u64, u64>,
}

impl WriteEnds {
    /// Notes a write in place of `offset..end` to a file of `chunk_size` chunks.
    pub fn note(&mut self, offset: u64, end: u64, chunk_size: u64) {
        while self.ends.last().is_some_and(|&last| last <= end) {
            self.ends.pop();
        }
        if self.ends.len() == WRITE_ENDS_MAX {
            self.ends.pop();
        }
        self.ends.push(end);
        // The write went out through the same layout, so its range splits.
        let Ok(spans) = ChunkLayout::new(chunk_size).spans(offset, end - offset) else {
            return;
        };
        for span in spans {
            let part_end = offset + span.buf_offset + span.len;
            let reach = self.parts.entry(span.index).or_insert(0);
            *reach = (*reach).max(part_end);
        }
    }

    /// Forgets every write: published, cut or removed.
    pub fn clear(&mut self) {
        self.ends.clear();
        self.parts.clear();
    }

    /// The ends a publish checks, largest first: of every write noted, and of its part in
    /// each chunk.
    pub fn reaches(&self) -> Vec<u64> {
        let mut reaches: Vec<u64> = self
            .ends
            .iter()
            .chain(self.parts.values())
            .copied()
            .collect();
        reaches.sort_unstable_by(|a, b| b.cmp(a));
        reaches.dedup();
        reaches
    }
}
