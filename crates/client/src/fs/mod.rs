//! The file-system client: path operations, open files, chunked I/O, replication and
//! caches, as async methods on [`FsClient`] (one per thread). [`crate::api::BenchFS`] wraps it
//! in a blocking API.
//!
//! **Consistency (close-to-open, like NFS):** `open` always asks the metadata owner, so it
//! sees every change closed or fsynced before it; a file's size is pushed to its metadata
//! owner on `close`, `fsync` and `stat` of a file this client has open, not on every write.
//! Chunk data goes to the servers before `write` returns, so readers that open after the
//! writer closed see it. Cached metadata serves only parent checks and `stat`; it expires
//! after `cache_ttl_secs` (0: kept until this client changes the path).

mod cache;
mod fanout;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use benchfs_proto::meta::{EntryKind, FileMetadata, SizeUpdate};
use benchfs_proto::ops::{self, Rpc};
use benchfs_proto::Status;
use benchfs_ucx::{Context, Features, LentMut, Loan};
use futures_util::future::join_all;

use crate::api::{ApiError, OpenFlags};
use crate::rpc::{ClientOptions, Connection, Response, RpcClient};
use crate::rpc::{OutPayload, RpcError};
use benchfs_config::registry::{self, ServerEntry};
use benchfs_config::ServerConfig;
use benchfs_proto::layout::{ChunkLayout, ChunkSpan};
use benchfs_proto::path;
use benchfs_proto::placement::{PlacementKey, PlacementRing, ServerIndex};

use cache::{ChunkCache, MetadataCache};

/// A file handle number, as `open` returns it.
pub type Fd = u64;

/// Where `seek` counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whence {
    /// From the start of the file.
    Start,
    /// From the current position.
    Current,
    /// From the end of the file.
    End,
}

/// A directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's name.
    pub name: String,
    /// Its metadata.
    pub meta: FileMetadata,
}

#[derive(Debug)]
struct OpenFile {
    path: String,
    meta: FileMetadata,
    flags: OpenFlags,
    pos: u64,
    /// The size as this client knows it: the size at open, grown by its own writes.
    size: u64,
    /// Whether `size` grew past what the metadata owner holds.
    size_dirty: bool,
}

/// One server of the job and this client's connection to it.
struct ServerSlot {
    entry: RefCell<ServerEntry>,
    conn: RefCell<Option<Rc<Connection>>>,
    /// Held while connecting, so concurrent calls share one connection attempt.
    connecting: tokio::sync::Mutex<()>,
}

/// The per-thread file-system client.
pub struct FsClient {
    rpc: Rc<RpcClient>,
    ring: PlacementRing,
    servers: Vec<ServerSlot>,
    replicas: usize,
    files: RefCell<HashMap<Fd, OpenFile>>,
    next_fd: Cell<Fd>,
    meta_cache: RefCell<MetadataCache>,
    chunk_cache: RefCell<ChunkCache>,
    registry_dir: std::path::PathBuf,
}

impl std::fmt::Debug for FsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsClient")
            .field("servers", &self.servers.len())
            .finish()
    }
}

/// Root directory metadata; "/" has no record on any server.
fn root_meta() -> FileMetadata {
    FileMetadata {
        file_id: 0,
        kind: EntryKind::Directory,
        size: 0,
        mode: 0o755,
        chunk_size: benchfs_proto::limits::CHUNK_SIZE_MIN,
        mtime_ns: 0,
        ctime_ns: 0,
    }
}

fn fs_err(op: &'static str, path: &str, status: Status) -> ApiError {
    ApiError::Fs {
        op,
        path: path.to_string(),
        status,
    }
}

fn rpc_err<'a>(op: &'static str, path: &'a str) -> impl Fn(RpcError) -> ApiError + 'a {
    move |e| {
        tracing::debug!(error = %e, op, path, "rpc failed");
        fs_err(op, path, e.status())
    }
}

fn norm(path: &str) -> Result<String, ApiError> {
    path::normalize(path).map_err(|source| ApiError::Path {
        path: path.to_string(),
        source,
    })
}

/// Most worker progress calls made before reusing a connection, to notice a dead peer.
const STALE_PROGRESS_MAX: usize = 64;

/// How often [`FsClient::settle`] makes the worker progress while it waits.
const SETTLE_PROGRESS_INTERVAL: Duration = Duration::from_millis(10);

/// Where the bytes a call sends come from.
#[derive(Clone, Copy)]
enum WriteSource<'a> {
    /// A borrowed slice, copied into a send buffer per call.
    Copied(&'a [u8]),
    /// A range of a loan, sent in place.
    Lent(&'a Loan, (usize, usize)),
}

impl<'a> WriteSource<'a> {
    /// No payload.
    const NONE: WriteSource<'static> = WriteSource::Copied(&[]);

    /// The whole of a loan.
    fn lent(loan: &'a Loan) -> Self {
        WriteSource::Lent(loan, (0, loan.len()))
    }

    fn len(&self) -> usize {
        match self {
            WriteSource::Copied(d) => d.len(),
            WriteSource::Lent(_, (start, end)) => end - start,
        }
    }

    /// The bytes in `range` of this source.
    fn part(&self, range: std::ops::Range<usize>) -> WriteSource<'a> {
        match *self {
            WriteSource::Copied(d) => WriteSource::Copied(&d[range]),
            WriteSource::Lent(loan, (start, _)) => {
                WriteSource::Lent(loan, (start + range.start, start + range.end))
            }
        }
    }

    /// A payload for one call.
    fn payload(&self, rpc: &RpcClient) -> OutPayload {
        match *self {
            WriteSource::Copied(d) => rpc.payload(d),
            WriteSource::Lent(loan, (start, end)) => OutPayload::Lent(
                loan.lend(start..end)
                    .expect("a part of a loan lies within it"),
            ),
        }
    }
}

/// What a read covers: the handle's path and metadata, the bytes to read, and their
/// chunk spans.
struct ReadPlan {
    path: String,
    meta: FileMetadata,
    len: usize,
    spans: Vec<ChunkSpan>,
}

/// Where a span's bytes came: received in place (this many), or in a buffer.
enum SpanData {
    Sunk(usize),
    Bytes(Vec<u8>),
}

impl SpanData {
    /// Completes the span's destination: copies the bytes if they came in a buffer, and
    /// zeros what lies past the chunk's end (a hole inside the file).
    fn fill(self, dst: &mut [u8]) {
        let n = match self {
            SpanData::Sunk(n) => n.min(dst.len()),
            SpanData::Bytes(bytes) => {
                let n = bytes.len().min(dst.len());
                dst[..n].copy_from_slice(&bytes[..n]);
                n
            }
        };
        dst[n..].fill(0);
    }
}

/// A span's range in the read's buffer.
fn span_range(span: &ChunkSpan) -> std::ops::Range<usize> {
    span.buf_offset as usize..(span.buf_offset + span.len) as usize
}

/// Whether an error means "this server did not answer", so a replica may.
fn is_unreachable(e: &RpcError) -> bool {
    matches!(e.status(), Status::TimedOut | Status::Unavailable)
}

impl FsClient {
    /// Connects to the servers listed in `entries`. Call inside a tokio `LocalSet`.
    pub fn new(
        config: &ServerConfig,
        entries: Vec<ServerEntry>,
        secret: Vec<u8>,
    ) -> Result<FsClient, ApiError> {
        if entries.is_empty() {
            return Err(ApiError::Cluster("the registry lists no servers".into()));
        }
        let ring = PlacementRing::new(
            entries.iter().map(|e| e.node_id.as_str()),
            config.placement.virtual_nodes,
        )
        .map_err(|e| ApiError::Cluster(e.to_string()))?;
        let mut slots: Vec<Option<ServerSlot>> = (0..entries.len()).map(|_| None).collect();
        for entry in entries {
            let index = ring
                .index_of(&entry.node_id)
                .expect("every entry is on the ring") as usize;
            slots[index] = Some(ServerSlot {
                entry: RefCell::new(entry),
                conn: RefCell::new(None),
                connecting: tokio::sync::Mutex::new(()),
            });
        }
        let context =
            Context::new(Features::ALL).map_err(|e| ApiError::Cluster(format!("UCX: {e}")))?;
        let options = ClientOptions {
            rpc_timeout: config.network.rpc_timeout,
            rdma_threshold: config.network.rdma_threshold_bytes as usize,
            busy_poll: config.network.busy_poll,
            inflight_max: config.network.inflight_max as usize,
            secret,
            name: format!("client-{}", std::process::id()),
        };
        let rpc = RpcClient::start(&context, options)
            .map_err(|e| ApiError::Cluster(format!("UCX: {e}")))?;
        let ttl = (config.cache.cache_ttl_secs > 0)
            .then(|| Duration::from_secs(config.cache.cache_ttl_secs));
        Ok(FsClient {
            rpc,
            ring,
            servers: slots
                .into_iter()
                .map(|s| s.expect("one slot per ring node"))
                .collect(),
            replicas: config.replication.replicas as usize,
            files: RefCell::default(),
            next_fd: Cell::new(3),
            meta_cache: RefCell::new(MetadataCache::new(
                config.cache.metadata_cache_entries as usize,
                ttl,
            )),
            chunk_cache: RefCell::new(ChunkCache::new(
                config.cache.chunk_cache_mb.saturating_mul(1 << 20),
                ttl,
            )),
            registry_dir: config.network.registry_dir.clone(),
        })
    }

    /// The servers, in ring order.
    pub fn servers(&self) -> Vec<ServerEntry> {
        self.servers
            .iter()
            .map(|s| s.entry.borrow().clone())
            .collect()
    }

    fn live_conn(slot: &ServerSlot) -> Option<Rc<Connection>> {
        slot.conn
            .borrow()
            .as_ref()
            .filter(|c| !c.is_failed())
            .cloned()
    }

    /// The connection to server `index`, made (or remade after a failure) on demand. A
    /// server that restarted may listen elsewhere, so a failed attempt re-reads its
    /// registry entry and tries the address found there.
    async fn conn(&self, index: ServerIndex) -> Result<Rc<Connection>, RpcError> {
        let slot = &self.servers[index as usize];
        // The worker makes no progress between calls of a blocking client, so a peer that
        // went away meanwhile is noticed only now; without this the call would go out on
        // the dead connection and wait the whole RPC timeout.
        for _ in 0..STALE_PROGRESS_MAX {
            if self.rpc.worker().progress() == 0 {
                break;
            }
        }
        if let Some(c) = Self::live_conn(slot) {
            return Ok(c);
        }
        let _connecting = slot.connecting.lock().await;
        if let Some(c) = Self::live_conn(slot) {
            return Ok(c);
        }
        let addr = slot.entry.borrow().addr;
        let conn = match self.rpc.connect(addr).await {
            Ok(c) => c,
            Err(e) => {
                let node_id = slot.entry.borrow().node_id.clone();
                let path = registry::entry_path(&self.registry_dir, &node_id);
                let moved = std::fs::read_to_string(path)
                    .ok()
                    .and_then(|text| registry::parse_entry(&text).ok())
                    .filter(|entry| entry.node_id == node_id && entry.addr != addr);
                let Some(entry) = moved else { return Err(e) };
                tracing::info!(node_id, old = %addr, new = %entry.addr, "server moved; reconnecting");
                let conn = self.rpc.connect(entry.addr).await?;
                *slot.entry.borrow_mut() = entry;
                conn
            }
        };
        let conn = Rc::new(conn);
        *slot.conn.borrow_mut() = Some(Rc::clone(&conn));
        Ok(conn)
    }

    /// Calls `R` on one server; a transport failure drops the connection so the next call
    /// reconnects (a restarted server is picked up).
    async fn call_on<R: Rpc>(
        &self,
        index: ServerIndex,
        req: &R::Request,
        payload: OutPayload,
    ) -> Result<(R::Reply, Vec<u8>), RpcError> {
        self.call_on_into::<R>(index, req, payload, None)
            .await
            .map(|r| (r.reply, r.payload))
    }

    /// [`FsClient::call_on`], receiving the reply's payload into `sink` when it fits.
    async fn call_on_into<R: Rpc>(
        &self,
        index: ServerIndex,
        req: &R::Request,
        payload: OutPayload,
        sink: Option<LentMut>,
    ) -> Result<Response<R::Reply>, RpcError> {
        let conn = self.conn(index).await?;
        let result = conn.call_into::<R>(req, payload, sink).await;
        if let Err(e) = &result {
            if is_unreachable(e) {
                // Only this connection: another call may have replaced it meanwhile.
                let mut slot = self.servers[index as usize].conn.borrow_mut();
                if slot.as_ref().is_some_and(|c| Rc::ptr_eq(c, &conn)) {
                    slot.take();
                }
            }
        }
        result
    }

    /// Every server's index, for calls that fan out to the whole job.
    fn all_servers(&self) -> std::ops::Range<ServerIndex> {
        0..self.servers.len() as ServerIndex
    }

    fn replica_set(&self, key: PlacementKey<'_>) -> Vec<ServerIndex> {
        self.ring.replicas(key, self.replicas)
    }

    /// Reads from the first replica that answers.
    async fn read_any<R: Rpc>(
        &self,
        key: PlacementKey<'_>,
        req: &R::Request,
    ) -> Result<(R::Reply, Vec<u8>), RpcError> {
        self.read_any_into::<R>(key, req, || None)
            .await
            .map(|r| (r.reply, r.payload))
    }

    /// [`FsClient::read_any`], each attempt receiving into the sink `sink` gives, if any.
    /// A replica that timed out may still hold the last attempt's sink, and then the next
    /// attempt gets none and its payload comes as bytes.
    async fn read_any_into<R: Rpc>(
        &self,
        key: PlacementKey<'_>,
        req: &R::Request,
        sink: impl Fn() -> Option<LentMut>,
    ) -> Result<Response<R::Reply>, RpcError> {
        let mut last = None;
        for server in self.replica_set(key) {
            match self
                .call_on_into::<R>(server, req, OutPayload::none(), sink())
                .await
            {
                Err(e) if is_unreachable(&e) => last = Some(e),
                other => return other,
            }
        }
        Err(last.expect("at least one replica"))
    }

    /// Writes to every replica at once; all must succeed.
    async fn write_all<R: Rpc>(
        &self,
        key: PlacementKey<'_>,
        req: &R::Request,
        payload: WriteSource<'_>,
    ) -> Result<R::Reply, RpcError> {
        let servers = self.replica_set(key);
        let results = join_all(
            servers
                .iter()
                .map(|&s| self.call_on::<R>(s, req, payload.payload(&self.rpc))),
        )
        .await;
        let mut first = None;
        for r in results {
            match r {
                Ok((reply, _)) => {
                    first.get_or_insert(reply);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(first.expect("at least one replica"))
    }

    /// The metadata of a normalised path, from the cache if allowed.
    async fn lookup(
        &self,
        op: &'static str,
        path: &str,
        cached: bool,
    ) -> Result<FileMetadata, ApiError> {
        if path == "/" {
            return Ok(root_meta());
        }
        if cached {
            if let Some(m) = self.meta_cache.borrow_mut().get(path) {
                return Ok(m);
            }
        }
        let (reply, _) = self
            .read_any::<ops::MetadataLookup>(
                PlacementKey::Metadata(path),
                &ops::PathRequest {
                    path: path.to_string(),
                },
            )
            .await
            .map_err(rpc_err(op, path))?;
        self.meta_cache.borrow_mut().put(path, reply.meta);
        Ok(reply.meta)
    }

    async fn check_parent(&self, op: &'static str, path: &str) -> Result<(), ApiError> {
        let (parent, _) = path::split_parent(path).map_err(|e| fs_err(op, path, e.status()))?;
        match self.lookup(op, parent, true).await {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(fs_err(op, path, Status::NotDir)),
            Err(e) => Err(e),
        }
    }

    fn forget(&self, path: &str) {
        self.meta_cache.borrow_mut().remove(path);
    }

    /// Creates a record on the owner, then copies it to the other replicas.
    async fn create_record(
        &self,
        op: &'static str,
        path: &str,
        kind: EntryKind,
        mode: u32,
    ) -> Result<FileMetadata, RpcError> {
        let key = PlacementKey::Metadata(path);
        let servers = self.replica_set(key);
        let req = ops::CreateRequest {
            path: path.to_string(),
            mode,
        };
        let (reply, _) = match kind {
            EntryKind::File => {
                self.call_on::<ops::MetadataCreateFile>(servers[0], &req, OutPayload::none())
                    .await?
            }
            EntryKind::Directory => {
                self.call_on::<ops::MetadataCreateDir>(servers[0], &req, OutPayload::none())
                    .await?
            }
        };
        let insert = ops::InsertRequest {
            path: path.to_string(),
            meta: reply.meta,
            exclusive: false,
        };
        for r in join_all(
            servers[1..]
                .iter()
                .map(|&s| self.call_on::<ops::MetadataInsert>(s, &insert, OutPayload::none())),
        )
        .await
        {
            if let Err(e) = r {
                tracing::warn!(error = %e, op, path, "replica did not take the new record");
                return Err(e);
            }
        }
        Ok(reply.meta)
    }

    /// Creates a record and checks its parent at once: the two live on different servers,
    /// so a create costs one round trip, not two. A record made under a parent that turns
    /// out to be missing (or not a directory) is removed again.
    async fn create_checked(
        &self,
        op: &'static str,
        path: &str,
        kind: EntryKind,
        mode: u32,
    ) -> Result<Result<FileMetadata, RpcError>, ApiError> {
        let (parent, created) = futures_util::future::join(
            self.check_parent(op, path),
            self.create_record(op, path, kind, mode),
        )
        .await;
        if let Err(e) = parent {
            if created.is_ok() {
                if let Err(undo) = self.delete_record(op, path, kind).await {
                    tracing::warn!(error = %undo, path, "could not remove a record made under a missing parent");
                }
            }
            return Err(e);
        }
        Ok(created)
    }

    /// Opens (and with CREATE, creates) a file; returns its handle.
    pub async fn open(&self, path: &str, flags: OpenFlags, mode: u32) -> Result<Fd, ApiError> {
        let path = norm(path)?;
        let writable = flags.contains(OpenFlags::WRITE) || flags.contains(OpenFlags::APPEND);
        let mut meta = if flags.contains(OpenFlags::CREATE) {
            match self
                .create_checked("open", &path, EntryKind::File, mode)
                .await?
            {
                Ok(m) => m,
                Err(e) if e.status() == Status::Exists && !flags.contains(OpenFlags::EXCL) => {
                    self.lookup("open", &path, false).await?
                }
                Err(e) => return Err(rpc_err("open", &path)(e)),
            }
        } else {
            self.lookup("open", &path, false).await?
        };
        if meta.is_dir() && writable {
            return Err(fs_err("open", &path, Status::IsDir));
        }
        if flags.contains(OpenFlags::TRUNC) && writable && meta.size > 0 {
            meta = self.truncate_meta(&path, meta, 0).await?;
        }
        self.meta_cache.borrow_mut().put(&path, meta);
        // Close-to-open: data cached before this open may be stale.
        self.chunk_cache.borrow_mut().invalidate_file(meta.file_id);
        let fd = self.next_fd.get();
        self.next_fd.set(fd + 1);
        let size = meta.size;
        self.files.borrow_mut().insert(
            fd,
            OpenFile {
                path,
                meta,
                flags,
                pos: 0,
                size,
                size_dirty: false,
            },
        );
        Ok(fd)
    }

    fn with_file<T>(&self, fd: Fd, f: impl FnOnce(&mut OpenFile) -> T) -> Result<T, ApiError> {
        let mut files = self.files.borrow_mut();
        let file = files
            .get_mut(&fd)
            .ok_or_else(|| fs_err("fd", &format!("#{fd}"), Status::BadHandle))?;
        Ok(f(file))
    }

    /// Pushes a handle's grown size to the metadata owner (and replicas).
    async fn flush_size(&self, fd: Fd) -> Result<(), ApiError> {
        let Some((path, size)) =
            self.with_file(fd, |f| f.size_dirty.then(|| (f.path.clone(), f.size)))?
        else {
            return Ok(());
        };
        let req = ops::UpdateSizeRequest {
            path: path.clone(),
            size,
            how: SizeUpdate::AtLeast,
        };
        let reply = self
            .write_all::<ops::UpdateSize>(PlacementKey::Metadata(&path), &req, WriteSource::NONE)
            .await
            .map_err(rpc_err("size update", &path))?;
        self.meta_cache.borrow_mut().put(&path, reply.meta);
        self.with_file(fd, |f| {
            f.size_dirty = false;
            f.size = f.size.max(reply.meta.size);
        })?;
        Ok(())
    }

    /// Closes a handle, publishing its size.
    pub async fn close(&self, fd: Fd) -> Result<(), ApiError> {
        let flushed = self.flush_size(fd).await;
        self.files.borrow_mut().remove(&fd);
        flushed
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

    async fn write_from(&self, fd: Fd, data: WriteSource<'_>) -> Result<usize, ApiError> {
        let offset = self.with_file(fd, |f| {
            if f.flags.contains(OpenFlags::APPEND) {
                f.size
            } else {
                f.pos
            }
        })?;
        let n = self.pwrite_from(fd, data, offset).await?;
        self.with_file(fd, |f| f.pos = offset + n as u64)?;
        Ok(n)
    }

    /// Reads at the handle's position and advances it.
    pub async fn read(&self, fd: Fd, buf: &mut [u8]) -> Result<usize, ApiError> {
        let offset = self.with_file(fd, |f| f.pos)?;
        let n = self.pread(fd, buf, offset).await?;
        self.with_file(fd, |f| f.pos = offset + n as u64)?;
        Ok(n)
    }

    /// Moves the handle's position.
    pub fn seek(&self, fd: Fd, offset: i64, whence: Whence) -> Result<u64, ApiError> {
        self.with_file(fd, |f| {
            let base = match whence {
                Whence::Start => 0,
                Whence::Current => f.pos,
                Whence::End => f.size,
            };
            let pos = base
                .checked_add_signed(offset)
                .ok_or(Status::InvalidArgument)?;
            f.pos = pos;
            Ok(pos)
        })?
        .map_err(|s| fs_err("seek", &format!("#{fd}"), s))
    }

    /// Writes `data` at `offset`, chunk by chunk, to every chunk's servers concurrently.
    /// The bytes are copied once into send buffers; see [`FsClient::pwrite_lent`].
    pub async fn pwrite(&self, fd: Fd, data: &[u8], offset: u64) -> Result<usize, ApiError> {
        self.pwrite_from(fd, WriteSource::Copied(data), offset)
            .await
    }

    /// [`FsClient::pwrite`] of a loan's bytes, sent from the lender's memory without a
    /// copy.
    pub async fn pwrite_lent(&self, fd: Fd, loan: &Loan, offset: u64) -> Result<usize, ApiError> {
        self.pwrite_from(fd, WriteSource::lent(loan), offset).await
    }

    async fn pwrite_from(
        &self,
        fd: Fd,
        data: WriteSource<'_>,
        offset: u64,
    ) -> Result<usize, ApiError> {
        let (path, meta, flags) = self.with_file(fd, |f| (f.path.clone(), f.meta, f.flags))?;
        if !(flags.contains(OpenFlags::WRITE) || flags.contains(OpenFlags::APPEND)) {
            return Err(fs_err("write", &path, Status::BadHandle));
        }
        let len = data.len();
        if len == 0 {
            return Ok(0);
        }
        let layout = ChunkLayout::new(meta.chunk_size);
        let spans = layout
            .spans(offset, len as u64)
            .map_err(|_| fs_err("write", &path, Status::InvalidArgument))?;
        let writes = spans.map(|span| {
            let start = span.buf_offset as usize;
            let part = data.part(start..start + span.len as usize);
            let req = ops::ChunkIo {
                file_id: meta.file_id,
                index: span.index,
                offset: span.offset_in_chunk,
                len: span.len,
                remote: None,
            };
            async move {
                let key = PlacementKey::Chunk {
                    file_id: meta.file_id,
                    index: span.index,
                };
                self.write_all::<ops::WriteChunk>(key, &req, part).await
            }
        });
        for r in join_all(writes).await {
            r.map_err(rpc_err("write", &path))?;
        }
        self.chunk_cache.borrow_mut().invalidate_file(meta.file_id);
        let end = offset + len as u64;
        self.with_file(fd, |f| {
            if end > f.size {
                f.size = end;
                f.size_dirty = true;
            }
        })?;
        Ok(len)
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
                }
            }
        }
    }

    /// Reads up to `buf.len()` bytes at `offset`; holes read as zeros; stops at the size.
    /// The bytes come in reply buffers and are copied into `buf`; see
    /// [`FsClient::pread_lent`].
    pub async fn pread(&self, fd: Fd, buf: &mut [u8], offset: u64) -> Result<usize, ApiError> {
        let Some(plan) = self.read_plan(fd, buf.len(), offset)? else {
            return Ok(0);
        };
        let reads = plan
            .spans
            .iter()
            .map(|span| self.read_span(plan.meta, span, None));
        let results = join_all(reads).await;
        for (span, result) in plan.spans.iter().zip(results) {
            let data = result.map_err(rpc_err("read", &plan.path))?;
            data.fill(&mut buf[span_range(span)]);
        }
        Ok(plan.len)
    }

    /// [`FsClient::pread`] into a loan's memory: replies are received straight into it (by
    /// rendezvous with no copy) unless the chunk cache is on. The blocking API lends the
    /// caller's buffer (see [`benchfs_ucx::lend_mut`]).
    pub async fn pread_lent(&self, fd: Fd, loan: &Loan, offset: u64) -> Result<usize, ApiError> {
        let Some(plan) = self.read_plan(fd, loan.len(), offset)? else {
            return Ok(0);
        };
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
            data.fill(view.as_mut());
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
    /// handle's checks; `None` when there is nothing to read.
    fn read_plan(&self, fd: Fd, want: usize, offset: u64) -> Result<Option<ReadPlan>, ApiError> {
        let (path, meta, size, flags) =
            self.with_file(fd, |f| (f.path.clone(), f.meta, f.size, f.flags))?;
        if meta.is_dir() {
            return Err(fs_err("read", &path, Status::IsDir));
        }
        if !flags.contains(OpenFlags::READ) {
            return Err(fs_err("read", &path, Status::BadHandle));
        }
        if offset >= size || want == 0 {
            return Ok(None);
        }
        let len = (want as u64).min(size - offset);
        let spans = ChunkLayout::new(meta.chunk_size)
            .spans(offset, len)
            .map_err(|_| fs_err("read", &path, Status::InvalidArgument))?
            .collect();
        Ok(Some(ReadPlan {
            path,
            meta,
            len: len as usize,
            spans,
        }))
    }

    /// Reads one span, from the chunk cache or its servers; into `loan` at the span's
    /// range when one is given and the cache is off.
    async fn read_span(
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
            loan.filter(|_| !cache.is_enabled())
        };
        let req = ops::ChunkIo {
            file_id: meta.file_id,
            index,
            offset,
            len,
            remote: None,
        };
        let key = PlacementKey::Chunk {
            file_id: meta.file_id,
            index,
        };
        let r = self
            .read_any_into::<ops::ReadChunk>(key, &req, || {
                loan.and_then(|l| l.lend_mut(span_range(span)))
            })
            .await?;
        let got = r.payload.len() + r.sunk;
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
            return Ok(SpanData::Sunk(r.sunk));
        }
        self.chunk_cache
            .borrow_mut()
            .put(meta.file_id, index, offset, &r.payload);
        Ok(SpanData::Bytes(r.payload))
    }

    /// Makes a handle's data and size durable on the servers.
    pub async fn fsync(&self, fd: Fd) -> Result<(), ApiError> {
        self.flush_size(fd).await?;
        let path = self.with_file(fd, |f| f.path.clone())?;
        let all = self
            .all_servers()
            .map(|s| self.call_on::<ops::Fsync>(s, &ops::Empty, OutPayload::none()));
        for r in join_all(all).await {
            r.map_err(rpc_err("fsync", &path))?;
        }
        Ok(())
    }

    /// The metadata of an open handle, with this client's own writes counted.
    pub async fn fstat(&self, fd: Fd) -> Result<FileMetadata, ApiError> {
        self.flush_size(fd).await?;
        self.with_file(fd, |f| FileMetadata {
            size: f.size,
            ..f.meta
        })
    }

    /// Publishes the sizes of this client's open handles of `path` that grew.
    async fn flush_path(&self, path: &str) -> Result<(), ApiError> {
        let dirty: Vec<Fd> = self
            .files
            .borrow()
            .iter()
            .filter(|(_, f)| f.path == path && f.size_dirty)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in dirty {
            self.flush_size(fd).await?;
        }
        Ok(())
    }

    /// The metadata of a path.
    pub async fn stat(&self, path: &str) -> Result<FileMetadata, ApiError> {
        let path = norm(path)?;
        self.flush_path(&path).await?;
        self.lookup("stat", &path, true).await
    }

    /// Creates a directory.
    pub async fn mkdir(&self, path: &str, mode: u32) -> Result<(), ApiError> {
        let path = norm(path)?;
        if path == "/" {
            return Err(fs_err("mkdir", &path, Status::Exists));
        }
        let meta = self
            .create_checked("mkdir", &path, EntryKind::Directory, mode)
            .await?
            .map_err(rpc_err("mkdir", &path))?;
        self.meta_cache.borrow_mut().put(&path, meta);
        Ok(())
    }

    /// Removes the record of `path` from every replica; returns it.
    async fn delete_record(
        &self,
        op: &'static str,
        path: &str,
        expect: EntryKind,
    ) -> Result<FileMetadata, ApiError> {
        self.forget(path);
        let req = ops::DeleteRequest {
            path: path.to_string(),
            expect: Some(expect),
        };
        let reply = self
            .write_all::<ops::MetadataDelete>(PlacementKey::Metadata(path), &req, WriteSource::NONE)
            .await
            .map_err(rpc_err(op, path))?;
        Ok(reply.meta)
    }

    /// Removes every chunk of a file from the servers that can hold one: the owners (and
    /// replicas) of its chunks below `size`, or every server for a file with more chunks
    /// than servers. Chunks lie only below a file's published size (truncate removes the
    /// ones it cuts away), so a file of size 0 costs no call at all.
    async fn remove_chunks(
        &self,
        op: &'static str,
        path: &str,
        meta: FileMetadata,
    ) -> Result<(), ApiError> {
        self.chunk_cache.borrow_mut().invalidate_file(meta.file_id);
        let chunks = ChunkLayout::new(meta.chunk_size).chunk_count(meta.size);
        let servers: Vec<ServerIndex> = if chunks >= self.servers.len() as u64 {
            self.all_servers().collect()
        } else {
            let mut owners: Vec<ServerIndex> = (0..chunks)
                .flat_map(|index| {
                    self.replica_set(PlacementKey::Chunk {
                        file_id: meta.file_id,
                        index,
                    })
                })
                .collect();
            owners.sort_unstable();
            owners.dedup();
            owners
        };
        let req = ops::RemoveChunksRequest {
            file_id: meta.file_id,
        };
        let calls = servers
            .into_iter()
            .map(|s| self.call_on::<ops::RemoveChunks>(s, &req, OutPayload::none()));
        for r in join_all(calls).await {
            r.map_err(rpc_err(op, path))?;
        }
        Ok(())
    }

    /// Removes a file and its data.
    pub async fn unlink(&self, path: &str) -> Result<(), ApiError> {
        let path = norm(path)?;
        if path == "/" {
            return Err(fs_err("unlink", &path, Status::IsDir));
        }
        // Chunks are found from the published size, so publish this client's growth first.
        self.flush_path(&path).await?;
        let meta = self.delete_record("unlink", &path, EntryKind::File).await?;
        self.remove_chunks("unlink", &path, meta).await
    }

    /// Removes an empty directory.
    pub async fn rmdir(&self, path: &str) -> Result<(), ApiError> {
        let path = norm(path)?;
        if path == "/" {
            return Err(fs_err("rmdir", &path, Status::Busy));
        }
        let meta = self.lookup("rmdir", &path, false).await?;
        if !meta.is_dir() {
            return Err(fs_err("rmdir", &path, Status::NotDir));
        }
        if !self.list(&path, 1).await?.is_empty() {
            return Err(fs_err("rmdir", &path, Status::NotEmpty));
        }
        self.delete_record("rmdir", &path, EntryKind::Directory)
            .await?;
        Ok(())
    }

    /// The entries of a directory, sorted by name, from every server.
    pub async fn readdir(&self, path: &str) -> Result<Vec<DirEntry>, ApiError> {
        let path = norm(path)?;
        let meta = self.lookup("readdir", &path, false).await?;
        if !meta.is_dir() {
            return Err(fs_err("readdir", &path, Status::NotDir));
        }
        self.list(&path, usize::MAX).await
    }

    /// Lists a directory on every server, merging the pages; stops after `limit` entries.
    async fn list(&self, dir: &str, limit: usize) -> Result<Vec<DirEntry>, ApiError> {
        let pages = self
            .all_servers()
            .map(|s| fanout::list_server(self, s, dir, limit));
        let mut merged = BTreeMap::new();
        for page in join_all(pages).await {
            for (name, meta) in page.map_err(rpc_err("readdir", dir))? {
                merged.entry(name).or_insert(meta);
            }
        }
        Ok(merged
            .into_iter()
            .take(limit)
            .map(|(name, meta)| DirEntry { name, meta })
            .collect())
    }

    /// Cuts or extends a file.
    pub async fn truncate(&self, path: &str, size: u64) -> Result<(), ApiError> {
        let path = norm(path)?;
        let meta = self.lookup("truncate", &path, false).await?;
        if meta.is_dir() {
            return Err(fs_err("truncate", &path, Status::IsDir));
        }
        // This client's unpublished writes count toward the old size.
        let open_size = self
            .files
            .borrow()
            .values()
            .filter(|f| f.path == path)
            .map(|f| f.size)
            .max()
            .unwrap_or(0);
        let meta = FileMetadata {
            size: meta.size.max(open_size),
            ..meta
        };
        let meta = self.truncate_meta(&path, meta, size).await?;
        for f in self
            .files
            .borrow_mut()
            .values_mut()
            .filter(|f| f.path == path)
        {
            f.size = meta.size;
            f.size_dirty = false;
        }
        Ok(())
    }

    async fn truncate_meta(
        &self,
        path: &str,
        meta: FileMetadata,
        size: u64,
    ) -> Result<FileMetadata, ApiError> {
        let layout = ChunkLayout::new(meta.chunk_size);
        if size < meta.size {
            // Cut the chunk the new end falls in and empty every chunk after it, so bytes
            // past the new end read as zeros if the file grows again.
            let first = layout.chunk_index(size);
            let last = layout.chunk_count(meta.size);
            let cuts = (first..last).map(|index| {
                let len = if index == first {
                    size - index * meta.chunk_size
                } else {
                    0
                };
                let req = ops::TruncateChunkRequest {
                    file_id: meta.file_id,
                    index,
                    len,
                };
                async move {
                    self.write_all::<ops::TruncateChunk>(
                        PlacementKey::Chunk {
                            file_id: meta.file_id,
                            index,
                        },
                        &req,
                        WriteSource::NONE,
                    )
                    .await
                }
            });
            for r in join_all(cuts).await {
                r.map_err(rpc_err("truncate", path))?;
            }
            self.chunk_cache.borrow_mut().invalidate_file(meta.file_id);
        }
        let req = ops::UpdateSizeRequest {
            path: path.to_string(),
            size,
            how: SizeUpdate::Exact,
        };
        let reply = self
            .write_all::<ops::UpdateSize>(PlacementKey::Metadata(path), &req, WriteSource::NONE)
            .await
            .map_err(rpc_err("truncate", path))?;
        self.meta_cache.borrow_mut().put(path, reply.meta);
        Ok(reply.meta)
    }

    /// Renames a file or an empty directory. A file at `to` is replaced; a directory at
    /// `to` must be empty and `from` must be a directory too.
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), ApiError> {
        let (from, to) = (norm(from)?, norm(to)?);
        if from == "/" || to == "/" {
            return Err(fs_err("rename", &from, Status::Busy));
        }
        if to.starts_with(&format!("{from}/")) {
            return Err(fs_err("rename", &to, Status::InvalidArgument));
        }
        let meta = self.lookup("rename", &from, false).await?;
        if from == to {
            return Ok(());
        }
        self.check_parent("rename", &to).await?;
        if meta.is_dir() && !self.list(&from, 1).await?.is_empty() {
            // Records are keyed by full path, so moving a populated directory would move
            // every record under it, which cannot be made atomic here.
            return Err(fs_err("rename", &from, Status::Unsupported));
        }
        let replaced = match self.lookup("rename", &to, false).await {
            Ok(existing) => Some(existing),
            Err(e) if e.status() == Some(Status::NotFound) => None,
            Err(e) => return Err(e),
        };
        if let Some(existing) = replaced {
            match (meta.is_dir(), existing.is_dir()) {
                (false, true) => return Err(fs_err("rename", &to, Status::IsDir)),
                (true, false) => return Err(fs_err("rename", &to, Status::NotDir)),
                (true, true) if !self.list(&to, 1).await?.is_empty() => {
                    return Err(fs_err("rename", &to, Status::NotEmpty))
                }
                _ => {}
            }
        }
        let insert = ops::InsertRequest {
            path: to.clone(),
            meta,
            exclusive: false,
        };
        self.write_all::<ops::MetadataInsert>(
            PlacementKey::Metadata(&to),
            &insert,
            WriteSource::NONE,
        )
        .await
        .map_err(rpc_err("rename", &to))?;
        self.forget(&to);
        self.delete_record("rename", &from, meta.kind).await?;
        if let Some(old) = replaced.filter(|m| !m.is_dir() && m.file_id != meta.file_id) {
            self.remove_chunks("rename", &to, old).await?;
        }
        for f in self
            .files
            .borrow_mut()
            .values_mut()
            .filter(|f| f.path == from)
        {
            f.path = to.clone();
        }
        Ok(())
    }

    /// Counters of every server, in ring order.
    pub async fn server_stats(&self) -> Vec<(ServerEntry, Result<ops::StatsReply, ApiError>)> {
        let all = self.all_servers().map(|s| async move {
            let r = self
                .call_on::<ops::Stats>(s, &ops::Empty, OutPayload::none())
                .await
                .map(|(r, _)| r);
            (
                self.servers[s as usize].entry.borrow().clone(),
                r.map_err(rpc_err("stats", "/")),
            )
        });
        join_all(all).await
    }

    /// A payload holding a copy of `data`, as a write sends it.
    pub fn copy_payload(&self, data: &[u8]) -> OutPayload {
        self.rpc.payload(data)
    }

    /// Round trip to one server with a payload it discards (for the RPC benchmark). The
    /// server receives the payload into a store buffer, as a write's, so it may be at
    /// most a chunk.
    pub async fn ping(&self, server: ServerIndex, payload: OutPayload) -> Result<(), ApiError> {
        self.call_on::<ops::Ping>(server, &ops::Empty, payload)
            .await
            .map(drop)
            .map_err(rpc_err("ping", "/"))
    }
}
