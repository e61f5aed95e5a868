//! [`DiskChunkStore`]: one file per chunk under `data_dir`, the data moved by an
//! [`IoEngine`].
//!
//! - `dir.rs`: [`ChunkDir`], the chunk files, their index, open-file cache and sync set.
//! - `engine.rs`: the [`IoEngine`] trait and [`StdEngine`] (`pread`/`pwrite`).
//! - `uring.rs`, `uring/driver.rs`: [`UringEngine`] and its ring.
//!
//! This module holds what the engines share: range and capacity checks (through the
//! directory), resubmitting short transfers for the rest, retrying `EINTR`/`EAGAIN`, and
//! every [`ChunkStore`] method, written once.

mod dir;
mod engine;
mod uring;

use std::io;
use std::rc::Rc;

use crate::buf::BufPool;
use crate::limits::RETRIES_MAX;
use crate::{ChunkBuf, ChunkId, ChunkStat, ChunkStore, StoreConfig, StoreError, StoreUsage};
use dir::{ChunkDir, ChunkFile};
pub use engine::{IoEngine, StdEngine};
pub use uring::UringEngine;

/// Chunks as plain files under `data_dir`, read and written with `pread`/`pwrite`.
///
/// Every call is a blocking system call on the runtime thread; this is the baseline the
/// io_uring store is measured against. With `o_direct`, aligned requests use an O_DIRECT
/// descriptor and unaligned ones a buffered descriptor of the same file.
pub type FileChunkStore = DiskChunkStore<StdEngine>;

/// Chunks as files under `data_dir`, read and written through io_uring.
///
/// - Buffers: [`ChunkStore::buffer`] hands out slots of one mapping registered with the
///   ring as fixed buffer 0 (`ReadFixed`/`WriteFixed`): `2 * queue_depth` (at most 256)
///   slots of 64 KiB, then up to `queue_depth` chunk-sized slots (at most 64 MiB in all).
///   A request too large for a slot, or arriving when its class is empty, gets an
///   unregistered aligned buffer and a plain `Read`/`Write` instead of waiting, so a
///   client that holds buffers can never stall the others. Any [`ChunkBuf`] is accepted.
/// - O_DIRECT: each chunk file is opened twice; aligned requests (offset, length and
///   address multiples of 4096) use the O_DIRECT descriptor, the rest the buffered one.
/// - Concurrency: at most `queue_depth` ops in flight; short transfers are resubmitted
///   for the rest. A future dropped mid-flight leaves its buffer with the ring until the
///   kernel is done with it.
/// - Metadata (open, unlink, ftruncate, readdir, mkdir) uses ordinary blocking calls.
///
/// Must be opened and used inside a tokio runtime with I/O enabled; `open` fails with
/// [`StoreError::Unsupported`] if this kernel has no usable io_uring.
pub type IoUringChunkStore = DiskChunkStore<UringEngine>;

/// Chunks as files under `data_dir` (see [`ChunkId`] for the layout), their data moved by
/// the engine `E`. Use it as [`FileChunkStore`] or [`IoUringChunkStore`].
///
/// Buffers come from one reused mapping ([`ChunkStore::buffer`]), or the heap when no
/// slot is free. With `o_direct`, each chunk file is opened twice, and aligned requests
/// (offset, length and address multiples of 4096) use the O_DIRECT descriptor.
#[derive(Debug)]
pub struct DiskChunkStore<E> {
    // Drop order matters: the engine goes first, so the io_uring one waits for its
    // in-flight ops while the files and buffers they use still exist.
    engine: E,
    dir: ChunkDir,
    pool: Rc<BufPool>,
}

impl<E: IoEngine> DiskChunkStore<E> {
    /// Opens (creating if needed) the store under `config.data_dir` and indexes the
    /// chunks already there. Fails with [`StoreError::Unsupported`] if the engine cannot
    /// run here, or if O_DIRECT is asked for on a file system without it.
    pub fn open(config: &StoreConfig) -> Result<DiskChunkStore<E>, StoreError> {
        config.validate()?;
        // In huge pages whatever `storage.huge_pages` says of chunk memory: every transfer
        // of a disk store lands in or leaves from this pool, and a same-host peer's copy
        // pins each page it touches, which for 4 KiB pages cost as much as the copy (1 MiB
        // pings into an io_uring server: 9.7 -> 20 GB/s). The fault-in cost that keeps
        // chunk memory in small pages on some VMs is paid once, at start.
        let pool = BufPool::for_chunks(config.chunk_size, config.queue_depth as usize, true)?;
        // The engine before the directory, so a missing io_uring creates nothing on disk.
        let engine = E::open(config, &pool)?;
        let dir = ChunkDir::open(config)?;
        Ok(DiskChunkStore { engine, dir, pool })
    }

    /// Moves `buf` to or from `file` at `offset`, resubmitting short transfers for the
    /// rest and retrying `EINTR`/`EAGAIN` up to [`RETRIES_MAX`] times in all. A read
    /// stops early at the end of the file; a write that makes no progress fails. Returns
    /// the bytes moved.
    async fn transfer_all(
        &self,
        write: bool,
        file: &Rc<ChunkFile>,
        mut buf: ChunkBuf,
        offset: u64,
    ) -> (Result<usize, StoreError>, ChunkBuf) {
        let len = buf.len();
        let mut done = 0;
        let mut retries = 0;
        while done < len {
            let at = offset + done as u64;
            let result;
            (result, buf) = if write {
                self.engine.write_at(file, buf, done, at).await
            } else {
                self.engine.read_at(file, buf, done, at).await
            };
            match result {
                Ok(0) if write => {
                    let source = io::Error::from(io::ErrorKind::WriteZero);
                    let op = E::WRITE_OP;
                    return (Err(StoreError::Io { op, source }), buf);
                }
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if transient(&e) && retries < RETRIES_MAX => retries += 1,
                Err(e) if write => {
                    let needed = (len - done) as u64;
                    return (Err(StoreError::io(E::WRITE_OP, e, needed)), buf);
                }
                Err(e) => return (Err(StoreError::io(E::READ_OP, e, 0)), buf),
            }
        }
        (Ok(done), buf)
    }
}

impl<E: IoEngine> DiskChunkStore<E> {
    /// A chunk's length as indexed, without I/O; `None` if it does not exist.
    pub(crate) fn chunk_len(&self, id: ChunkId) -> Option<u64> {
        self.dir.stat(id).map(|stat| stat.len)
    }

    /// Holds room on disk for chunk `id` to be written whole at up to `len` bytes (see
    /// [`ChunkDir::hold_whole`](dir::ChunkDir::hold_whole)).
    pub(crate) fn hold_whole(&self, id: ChunkId, len: u64) -> Result<(), StoreError> {
        self.dir.hold_whole(id, len)
    }

    /// Gives back the room held for chunk `id`'s write past its first `len` bytes.
    pub(crate) fn trim_whole(&self, id: ChunkId, len: u64) {
        self.dir.trim_whole(id, len);
    }

    /// Gives back the room held for chunk `id`'s write, if any.
    pub(crate) fn release_whole(&self, id: ChunkId) {
        self.dir.release_whole(id);
    }

    /// Writes `buf` as the whole of chunk `id`, replacing what it held, so that a process
    /// killed meanwhile leaves the chunk as it was or whole, never its start alone (see
    /// [`ChunkDir::begin_whole`](dir::ChunkDir::begin_whole)). The capacity is not
    /// checked: the tiered store, whose lower tier has none, checks its own. On failure
    /// the file written into stays, with the room it holds, for the next attempt.
    pub(crate) async fn write_whole(
        &self,
        id: ChunkId,
        buf: ChunkBuf,
    ) -> (Result<(), StoreError>, ChunkBuf) {
        let len = buf.len() as u64;
        let file = match self.dir.begin_whole(id, len) {
            Ok(file) => file,
            Err(e) => return (Err(e), buf),
        };
        let (result, buf) = self.transfer_all(true, &file, buf, 0).await;
        let committed = result.and_then(|_| self.dir.commit_whole(id, &file, len));
        (committed, buf)
    }

    /// Every chunk with its length, in id order, without I/O.
    pub(crate) fn indexed(&self) -> Vec<(ChunkId, u64)> {
        self.dir
            .list()
            .into_iter()
            .filter_map(|id| Some((id, self.dir.stat(id)?.len)))
            .collect()
    }
}

impl DiskChunkStore<UringEngine> {
    /// Start and length of the one mapping every pooled [`ChunkBuf`] lives in, for the
    /// RPC layer to register with UCX. It stays mapped while the store or any of its
    /// buffers lives.
    pub fn registered_region(&self) -> Option<(*const u8, usize)> {
        Some(self.pool.region())
    }
}

/// Whether a failed call is worth repeating as is.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
    )
}

impl<E: IoEngine> ChunkStore for DiskChunkStore<E> {
    fn chunk_size(&self) -> u64 {
        self.dir.chunk_size()
    }

    async fn buffer(&self, len: usize) -> Result<ChunkBuf, StoreError> {
        self.dir.check_range(0, len)?;
        Ok(self.pool.take_or_heap(len))
    }

    async fn write(
        &self,
        id: ChunkId,
        offset: u64,
        buf: ChunkBuf,
    ) -> (Result<(), StoreError>, ChunkBuf) {
        let file = match self.dir.begin_write(id, offset, buf.len()) {
            Ok(Some(file)) => file,
            Ok(None) => return (Ok(()), buf),
            Err(e) => return (Err(e), buf),
        };
        let (result, buf) = self.transfer_all(true, &file, buf, offset).await;
        match result {
            Ok(_) => {
                self.dir.mark_dirty(id);
                (Ok(()), buf)
            }
            // Some bytes may have landed: take the length from the file, not the
            // reservation.
            Err(e) => {
                self.dir.refresh(id, &file);
                (Err(e), buf)
            }
        }
    }

    async fn read(
        &self,
        id: ChunkId,
        offset: u64,
        buf: ChunkBuf,
    ) -> (Result<usize, StoreError>, ChunkBuf) {
        match self.dir.begin_read(id, offset, buf.len()) {
            Ok(Some(file)) => self.transfer_all(false, &file, buf, offset).await,
            Ok(None) => (Ok(0), buf),
            Err(e) => (Err(e), buf),
        }
    }

    async fn truncate(&self, id: ChunkId, len: u64) -> Result<(), StoreError> {
        self.dir.truncate(id, len)
    }

    async fn remove(&self, id: ChunkId) -> Result<bool, StoreError> {
        self.dir.remove(id)
    }

    async fn remove_file(&self, file_id: u64) -> Result<u64, StoreError> {
        self.dir.remove_file(file_id)
    }

    async fn stat(&self, id: ChunkId) -> Result<Option<ChunkStat>, StoreError> {
        Ok(self.dir.stat(id))
    }

    async fn list(&self) -> Result<Vec<ChunkId>, StoreError> {
        Ok(self.dir.list())
    }

    async fn file_chunks(&self, file_id: u64) -> Result<Vec<(u64, ChunkStat)>, StoreError> {
        Ok(self.dir.file_chunks(file_id))
    }

    async fn sync(&self) -> Result<(), StoreError> {
        // One chunk open at a time (the open-file cache bounds the descriptors): holding
        // every dirty chunk open at once ran out of descriptors past a few thousand.
        let mut dirty = self.dir.take_dirty().into_iter();
        while let Some(id) = dirty.next() {
            let synced = match self.dir.open_for_read(id) {
                Ok(Some(file)) => {
                    (self.engine.fsync(&file).await).map_err(|e| StoreError::io(E::FSYNC_OP, e, 0))
                }
                // A chunk whose file vanished has nothing left to make durable; its
                // reads fail.
                Ok(None) | Err(StoreError::Vanished { .. }) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = synced {
                // Still not durable: the next sync tries these again.
                self.dir.mark_dirty(id);
                dirty.for_each(|id| self.dir.mark_dirty(id));
                return Err(e);
            }
        }
        self.dir.sync_dirs()
    }

    fn usage(&self) -> StoreUsage {
        self.dir.usage()
    }
}
