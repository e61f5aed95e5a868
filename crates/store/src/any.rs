//! [`AnyChunkStore`]: the backend chosen at runtime, by dispatch.

use crate::StoreError;
use crate::{Backend, ChunkBuf, ChunkId, ChunkStat, ChunkStore, ChunkView, StoreConfig};
use crate::{FileChunkStore, InMemoryChunkStore, IoUringChunkStore, StoreUsage, TieredChunkStore};

/// One of the four stores, picked by [`StoreConfig::backend`].
#[derive(Debug)]
// A server holds one store for its lifetime, so the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum AnyChunkStore {
    /// The in-memory store.
    Memory(InMemoryChunkStore),
    /// The plain-file store.
    File(FileChunkStore),
    /// The io_uring store.
    IoUring(IoUringChunkStore),
    /// Memory over the io_uring store.
    Tiered(TieredChunkStore),
}

impl AnyChunkStore {
    /// Opens the configured backend. The memory backend with no `capacity_bytes` is
    /// unbounded.
    pub fn open(config: &StoreConfig) -> Result<AnyChunkStore, StoreError> {
        config.validate()?;
        Ok(match config.backend {
            Backend::Memory => {
                let store = InMemoryChunkStore::with_chunk_size(
                    config.chunk_size,
                    config.capacity_bytes.unwrap_or(u64::MAX),
                )?;
                store.use_huge_pages(config.huge_pages);
                store.prefault(config.prefault_bytes)?;
                AnyChunkStore::Memory(store)
            }
            Backend::File => AnyChunkStore::File(FileChunkStore::open(config)?),
            Backend::IoUring => AnyChunkStore::IoUring(IoUringChunkStore::open(config)?),
            Backend::Tiered => AnyChunkStore::Tiered(TieredChunkStore::open(config)?),
        })
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        match self {
            AnyChunkStore::Memory(_) => Backend::Memory,
            AnyChunkStore::File(_) => Backend::File,
            AnyChunkStore::IoUring(_) => Backend::IoUring,
            AnyChunkStore::Tiered(_) => Backend::Tiered,
        }
    }

    /// Up to `len` bytes at `offset` of a chunk in place, for a send with no copy, where
    /// the backend can lend them (the memory store, see
    /// [`InMemoryChunkStore::read_in_place`]); else `None`, and the caller reads.
    pub fn read_in_place(&self, id: ChunkId, offset: u64, len: usize) -> Option<ChunkView> {
        match self {
            AnyChunkStore::Memory(s) => s.read_in_place(id, offset, len),
            _ => None,
        }
    }

    /// Whether the store has held chunk `id` whole since it opened, so that bytes past its
    /// end were never written even if the store began again at open (see
    /// [`TieredChunkStore::kept_since_open`]); `false` where the backend cannot tell.
    pub fn kept_since_open(&self, id: ChunkId) -> bool {
        match self {
            AnyChunkStore::Tiered(s) => s.kept_since_open(id),
            _ => false,
        }
    }

    /// The registered buffer region (the io_uring store, and the tiered store's lower
    /// tier, whose buffers it hands out); see
    /// [`DiskChunkStore::registered_region`](crate::DiskChunkStore::registered_region).
    pub fn registered_region(&self) -> Option<(*const u8, usize)> {
        match self {
            AnyChunkStore::IoUring(s) => s.registered_region(),
            AnyChunkStore::Tiered(s) => s.registered_region(),
            AnyChunkStore::Memory(_) | AnyChunkStore::File(_) => None,
        }
    }
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            AnyChunkStore::Memory($s) => $call,
            AnyChunkStore::File($s) => $call,
            AnyChunkStore::IoUring($s) => $call,
            AnyChunkStore::Tiered($s) => $call,
        }
    };
}

impl ChunkStore for AnyChunkStore {
    fn chunk_size(&self) -> u64 {
        dispatch!(self, s => s.chunk_size())
    }

    async fn buffer(&self, len: usize) -> Result<ChunkBuf, StoreError> {
        dispatch!(self, s => s.buffer(len).await)
    }

    async fn write(
        &self,
        id: ChunkId,
        offset: u64,
        buf: ChunkBuf,
    ) -> (Result<(), StoreError>, ChunkBuf) {
        dispatch!(self, s => s.write(id, offset, buf).await)
    }

    async fn read(
        &self,
        id: ChunkId,
        offset: u64,
        buf: ChunkBuf,
    ) -> (Result<usize, StoreError>, ChunkBuf) {
        dispatch!(self, s => s.read(id, offset, buf).await)
    }

    async fn truncate(&self, id: ChunkId, len: u64) -> Result<(), StoreError> {
        dispatch!(self, s => s.truncate(id, len).await)
    }

    async fn remove(&self, id: ChunkId) -> Result<bool, StoreError> {
        dispatch!(self, s => s.remove(id).await)
    }

    async fn remove_file(&self, file_id: u64) -> Result<u64, StoreError> {
        dispatch!(self, s => s.remove_file(file_id).await)
    }

    async fn stat(&self, id: ChunkId) -> Result<Option<ChunkStat>, StoreError> {
        dispatch!(self, s => s.stat(id).await)
    }

    async fn list(&self) -> Result<Vec<ChunkId>, StoreError> {
        dispatch!(self, s => s.list().await)
    }

    async fn file_chunks(&self, file_id: u64) -> Result<Vec<(u64, ChunkStat)>, StoreError> {
        dispatch!(self, s => s.file_chunks(file_id).await)
    }

    async fn sync(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.sync().await)
    }

    fn usage(&self) -> StoreUsage {
        dispatch!(self, s => s.usage())
    }
}
