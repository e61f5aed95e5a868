//! BenchFS chunk stores: server-side storage of fixed-size file chunks.
//!
//! Four backends implement [`ChunkStore`]:
//! - [`InMemoryChunkStore`]: a capacity-bounded map of chunks made of pre-faulted,
//!   recycled pages, for tests and memory-only jobs.
//! - [`FileChunkStore`]: one plain file per chunk, `pread`/`pwrite` through `std::fs`.
//!   Calls block the (single) runtime thread; it is the baseline.
//! - [`IoUringChunkStore`]: one file per chunk, I/O through io_uring with registered
//!   buffers and optional O_DIRECT.
//! - [`TieredChunkStore`]: hot chunks in memory, written back to an io_uring store under
//!   `data_dir` by recency (LRU) when the memory tier is full, and on `sync`.
//!
//! The two disk backends are one store, [`DiskChunkStore`], over two [`IoEngine`]s:
//! `FileChunkStore` is `DiskChunkStore<StdEngine>` and `IoUringChunkStore` is
//! `DiskChunkStore<UringEngine>`. The store keeps the chunk directory (index, open-file
//! cache, capacity reservations, sync set) and the retry and short-transfer loops; an
//! engine only makes single positioned reads, writes and fsyncs.
//!
//! [`AnyChunkStore`] picks one at runtime from a [`StoreConfig`]. The on-disk layout is
//! described in [`id`](ChunkId): `<data_dir>/chunks/<file_id:016x>/<index:016x>`.
//!
//! **Invariant:** buffers move by value into every read and write and come back with
//! the result, so memory the kernel is using is never borrowed.
//! **Boundary:** stores are single-threaded (`!Send`): one per runtime thread, as the
//! server runs one current-thread runtime per process.

mod any;
mod buf;
mod disk;
mod error;
mod faulty;
mod id;
pub mod limits;
mod mapping;
mod memory;
mod pages;
mod tiered;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

pub use any::AnyChunkStore;
pub use buf::ChunkBuf;
pub use disk::{DiskChunkStore, FileChunkStore, IoUringChunkStore};
pub use disk::{IoEngine, StdEngine, UringEngine};
pub use error::StoreError;
pub use faulty::{FaultKind, FaultPlan, FaultyStore};
pub use id::ChunkId;
pub use mapping::{free_huge_page_bytes, free_page_reporting, VIRTIO_DEVICES_DIR};
pub use memory::{available_memory, InMemoryChunkStore};
pub use pages::memory_room;
pub use pages::ChunkView;
pub use tiered::{TieredChunkStore, TIERED_MARK_FILE};

use limits::{CHUNK_SIZE_DEFAULT, CHUNK_SIZE_MAX, CHUNK_SIZE_MIN};
use limits::{MEMORY_TIER_BYTES_DEFAULT, QUEUE_DEPTH_DEFAULT, QUEUE_DEPTH_MAX};

/// What [`ChunkStore::stat`] reports about a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkStat {
    /// Bytes in the chunk, holes included.
    pub len: u64,
}

/// Space a store uses, from [`ChunkStore::usage`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreUsage {
    /// Sum of the chunk lengths (holes count as used).
    pub used_bytes: u64,
    /// The configured bound, if any.
    pub capacity_bytes: Option<u64>,
    /// Number of chunks.
    pub chunks: u64,
}

/// Storage of fixed-size chunks, addressed by [`ChunkId`].
///
/// All offsets are within one chunk: a request must satisfy
/// `offset + len <= chunk_size`, else it fails with [`StoreError::OutOfRange`].
/// Not object-safe; choose a backend at runtime with [`AnyChunkStore`].
#[allow(async_fn_in_trait)]
pub trait ChunkStore {
    /// The chunk size every request is bounded by.
    fn chunk_size(&self) -> u64;

    /// A buffer of `len` bytes (at most the chunk size), as fast as this store can hand
    /// one out: a reused pool slot (registered, in the io_uring store) when one is free.
    /// Its contents are unspecified; fill what you write, use what a read reports.
    async fn buffer(&self, len: usize) -> Result<ChunkBuf, StoreError>;

    /// Writes all of `buf` at `offset`, creating the chunk and growing it as needed
    /// (skipped bytes read as zeros). A zero-length write changes nothing. The buffer
    /// comes back whatever the outcome, empty (no capacity) if the store took its memory
    /// as the chunk's (the memory store, for a buffer it handed out as pages).
    async fn write(
        &self,
        id: ChunkId,
        offset: u64,
        buf: ChunkBuf,
    ) -> (Result<(), StoreError>, ChunkBuf);

    /// Reads up to `buf.len()` bytes at `offset` into `buf` and returns the count: short
    /// only at the end of the chunk, 0 for a missing chunk or an offset past its end.
    /// `buf.len()` itself is left unchanged.
    async fn read(
        &self,
        id: ChunkId,
        offset: u64,
        buf: ChunkBuf,
    ) -> (Result<usize, StoreError>, ChunkBuf);

    /// Sets the chunk's length to `len` (at most the chunk size), shrinking it or growing
    /// it with zeros. A missing chunk is created, so `stat` then reports `len`.
    async fn truncate(&self, id: ChunkId, len: u64) -> Result<(), StoreError>;

    /// Removes a chunk; returns whether it existed.
    async fn remove(&self, id: ChunkId) -> Result<bool, StoreError>;

    /// Removes every chunk of `file_id`; returns how many there were.
    async fn remove_file(&self, file_id: u64) -> Result<u64, StoreError>;

    /// The chunk's length, or `None` if it does not exist.
    async fn stat(&self, id: ChunkId) -> Result<Option<ChunkStat>, StoreError>;

    /// Every chunk, in [`ChunkId`] order.
    async fn list(&self) -> Result<Vec<ChunkId>, StoreError>;

    /// The chunks of `file_id` with their lengths, in index order.
    async fn file_chunks(&self, file_id: u64) -> Result<Vec<(u64, ChunkStat)>, StoreError>;

    /// Makes every completed write, truncate and removal durable.
    async fn sync(&self) -> Result<(), StoreError>;

    /// Space in use now.
    fn usage(&self) -> StoreUsage;

    /// Writes `data` at `offset` in chunk `chunk_index` of file `file_id`: [`write`]
    /// with the copy into a [`buffer`] done for you. Fails with
    /// [`StoreError::OutOfRange`], changing nothing, if `offset + data.len()` exceeds the
    /// chunk size, and with [`StoreError::NoSpace`] if the store has no room.
    ///
    /// Takes `&mut self`, exclusive access: the convenience form for a single owner. A
    /// store shared through an `Rc`, as a server holds it, calls [`write`] (`&self`).
    ///
    /// [`write`]: ChunkStore::write
    /// [`buffer`]: ChunkStore::buffer
    ///
    /// ```
    /// use benchfs_store::{ChunkStore, InMemoryChunkStore};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    /// runtime.block_on(async {
    ///     let mut store = InMemoryChunkStore::new(1024 * 1024 * 100); // 100 MB
    ///     let data = vec![42u8; 4096];
    ///     store.write_chunk(1, 0, 0, &data).await?;
    ///     let read_data = store.read_chunk(1, 0, 0, 4096).await?;
    ///     assert_eq!(data, read_data);
    ///     Ok::<(), Box<dyn std::error::Error>>(())
    /// })
    /// # }
    /// ```
    async fn write_chunk(
        &mut self,
        file_id: u64,
        chunk_index: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<(), StoreError> {
        // Checked before taking a buffer, so the error names the caller's offset.
        check_range(self.chunk_size(), offset, data.len())?;
        let mut buf = self.buffer(data.len()).await?;
        buf.as_mut_slice().copy_from_slice(data);
        let id = ChunkId {
            file_id,
            index: chunk_index,
        };
        self.write(id, offset, buf).await.0
    }

    /// Reads up to `len` bytes at `offset` in chunk `chunk_index` of file `file_id`:
    /// [`read`] into a [`buffer`], returning exactly the bytes read. As with `read`, the
    /// result is short at the end of the chunk and empty for a missing chunk or an offset
    /// past its end; holes read as zeros. Fails with [`StoreError::OutOfRange`] if
    /// `offset + len` exceeds the chunk size. Example at [`write_chunk`].
    ///
    /// [`read`]: ChunkStore::read
    /// [`buffer`]: ChunkStore::buffer
    /// [`write_chunk`]: ChunkStore::write_chunk
    async fn read_chunk(
        &self,
        file_id: u64,
        chunk_index: u64,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, StoreError> {
        check_range(self.chunk_size(), offset, len)?;
        let buf = self.buffer(len).await?;
        let id = ChunkId {
            file_id,
            index: chunk_index,
        };
        let (result, buf) = self.read(id, offset, buf).await;
        // `read` never reports more than `buf.len()`; the `min` keeps slicing panic-free.
        let n = result?.min(buf.len());
        Ok(buf[..n].to_vec())
    }
}

/// Which [`ChunkStore`] implementation to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// [`InMemoryChunkStore`]; spelled `memory`.
    Memory,
    /// [`FileChunkStore`]; spelled `file`.
    File,
    /// [`IoUringChunkStore`]; spelled `iouring`.
    IoUring,
    /// [`TieredChunkStore`]: memory over io_uring; spelled `tiered`.
    Tiered,
}

impl Backend {
    /// Every backend, in a stable order.
    pub const ALL: [Backend; 4] = [
        Backend::Memory,
        Backend::File,
        Backend::IoUring,
        Backend::Tiered,
    ];

    /// The name `FromStr` accepts and `Display` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::File => "file",
            Backend::IoUring => "iouring",
            Backend::Tiered => "tiered",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Backend {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Backend, StoreError> {
        Backend::ALL
            .into_iter()
            .find(|b| b.as_str() == s)
            .ok_or_else(|| StoreError::InvalidConfig {
                field: "backend",
                reason: format!("{s:?} is not one of memory, file, iouring, tiered"),
            })
    }
}

/// Whether chunk memory asks the kernel for transparent huge pages
/// (`storage.huge_pages`): `true`, `false`, or `"auto"` (the default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum HugePages {
    /// Huge pages unless the host hands the memory it frees back to a hypervisor
    /// ([`free_page_reporting`]). Where it does not, a huge page faults in several times
    /// faster than as many small pages and pins in one step for a shared-memory transfer;
    /// where it does, every fresh huge page waits for the hypervisor to back it (see the
    /// README for the figures).
    #[default]
    Auto,
    /// Huge pages.
    On,
    /// Small pages, as the system's THP policy gives them.
    Off,
}

impl HugePages {
    /// Whether a store of `backend` on this host takes huge pages: never for a backend
    /// without chunk memory.
    pub fn resolve(self, backend: Backend) -> bool {
        let has_chunk_memory = matches!(backend, Backend::Memory | Backend::Tiered);
        match self {
            HugePages::On => true,
            HugePages::Off => false,
            HugePages::Auto => has_chunk_memory && !host_reports_free_pages(),
        }
    }
}

/// [`free_page_reporting`] of this host, read once: a server resolves its settings more
/// than once (validation, the store, what it publishes), and every answer must agree.
fn host_reports_free_pages() -> bool {
    static REPORTS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REPORTS.get_or_init(|| free_page_reporting(std::path::Path::new(VIRTIO_DEVICES_DIR)))
}

impl fmt::Display for HugePages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HugePages::Auto => "auto",
            HugePages::On => "true",
            HugePages::Off => "false",
        })
    }
}

/// How to open a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Which implementation.
    pub backend: Backend,
    /// Root of the on-disk layout (unused by the memory backend).
    pub data_dir: PathBuf,
    /// Largest chunk, in bytes; within [`CHUNK_SIZE_MIN`]..=[`CHUNK_SIZE_MAX`].
    pub chunk_size: u64,
    /// Use O_DIRECT for aligned requests (disk backends). Unaligned requests still work:
    /// they go through a second, buffered descriptor.
    pub o_direct: bool,
    /// Bound on the bytes stored; `None` is unbounded.
    pub capacity_bytes: Option<u64>,
    /// Most io_uring operations in flight, 1..=[`QUEUE_DEPTH_MAX`].
    pub queue_depth: u32,
    /// Bytes of chunks the tiered backend keeps in memory (whole chunks: it holds up to
    /// `memory_tier_bytes / chunk_size` of them); at least one chunk. Other backends
    /// ignore it.
    pub memory_tier_bytes: u64,
    /// Bytes of chunk memory the memory backend (and the tiered backend's memory tier)
    /// maps and faults in when it opens, so that the first writes into them take no page
    /// faults; 0: memory is faulted in as the store grows. At most the capacity (the
    /// memory tier); the disk backends take none.
    pub prefault_bytes: u64,
    /// Whether the memory backend (and the tiered backend's memory tier) asks the kernel
    /// for transparent huge pages for chunk memory (`MADV_HUGEPAGE`), as many as it shows
    /// free twice over. Shared-memory transfers into and out of chunks pin their pages one
    /// by one, which costs far less for huge pages, but where the kernel's free huge pages
    /// were handed back to a hypervisor they cost more to fault in than small ones (see
    /// the README). [`HugePages::resolve`] decides it from `storage.huge_pages`. The disk
    /// backends take none.
    pub huge_pages: bool,
}

impl StoreConfig {
    /// A config with the defaults a server uses: [`CHUNK_SIZE_DEFAULT`] chunks,
    /// [`QUEUE_DEPTH_DEFAULT`] operations in flight, buffered I/O, no capacity bound, a
    /// memory tier of [`MEMORY_TIER_BYTES_DEFAULT`], small pages for chunk memory.
    pub fn new(backend: Backend, data_dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            backend,
            data_dir: data_dir.into(),
            chunk_size: CHUNK_SIZE_DEFAULT,
            o_direct: false,
            capacity_bytes: None,
            queue_depth: QUEUE_DEPTH_DEFAULT,
            memory_tier_bytes: MEMORY_TIER_BYTES_DEFAULT,
            prefault_bytes: 0,
            huge_pages: false,
        }
    }

    /// Checks every bound.
    pub fn validate(&self) -> Result<(), StoreError> {
        check_chunk_size(self.chunk_size)?;
        if !(1..=QUEUE_DEPTH_MAX).contains(&self.queue_depth) {
            return Err(StoreError::InvalidConfig {
                field: "queue_depth",
                reason: format!("{} is not within 1..={QUEUE_DEPTH_MAX}", self.queue_depth),
            });
        }
        if self.backend != Backend::Memory && self.data_dir.as_os_str().is_empty() {
            return Err(StoreError::InvalidConfig {
                field: "data_dir",
                reason: "empty path".into(),
            });
        }
        self.check_prefault()?;
        self.check_huge_pages()?;
        if self.backend == Backend::Tiered && self.memory_tier_bytes < self.chunk_size {
            return Err(StoreError::InvalidConfig {
                field: "memory_tier_bytes",
                reason: format!(
                    "{} is less than one chunk ({})",
                    self.memory_tier_bytes, self.chunk_size
                ),
            });
        }
        Ok(())
    }

    /// `huge_pages` is asked of a backend with chunk memory: the memory and tiered ones.
    pub fn check_huge_pages(&self) -> Result<(), StoreError> {
        match self.backend {
            Backend::File | Backend::IoUring if self.huge_pages => Err(StoreError::InvalidConfig {
                field: "huge_pages",
                reason: format!(
                    "applies to the memory and tiered backends, not {}",
                    self.backend
                ),
            }),
            _ => Ok(()),
        }
    }

    /// `prefault_bytes` fits the memory it would fault in: the capacity, or the memory
    /// tier's whole chunks (within the capacity); the disk backends have none.
    pub fn check_prefault(&self) -> Result<(), StoreError> {
        let bytes = self.prefault_bytes;
        let room = match self.backend {
            _ if bytes == 0 => return Ok(()),
            Backend::Memory => self.capacity_bytes.unwrap_or(u64::MAX),
            // The tier holds whole chunks, and never more than the capacity.
            Backend::Tiered => (self.memory_tier_bytes / self.chunk_size * self.chunk_size)
                .min(self.capacity_bytes.unwrap_or(u64::MAX)),
            Backend::File | Backend::IoUring => {
                return Err(StoreError::InvalidConfig {
                    field: "prefault_bytes",
                    reason: format!(
                        "applies to the memory and tiered backends, not {}",
                        self.backend
                    ),
                })
            }
        };
        if bytes > room {
            return Err(StoreError::InvalidConfig {
                field: "prefault_bytes",
                reason: format!("{bytes} is more than the memory it would fill ({room} bytes)"),
            });
        }
        Ok(())
    }
}

pub(crate) fn check_chunk_size(chunk_size: u64) -> Result<(), StoreError> {
    if (CHUNK_SIZE_MIN..=CHUNK_SIZE_MAX).contains(&chunk_size) {
        Ok(())
    } else {
        Err(StoreError::InvalidConfig {
            field: "chunk_size",
            reason: format!("{chunk_size} is not within {CHUNK_SIZE_MIN}..={CHUNK_SIZE_MAX}"),
        })
    }
}

/// Checks `offset + len <= chunk_size`.
pub(crate) fn check_range(chunk_size: u64, offset: u64, len: usize) -> Result<u64, StoreError> {
    let len = len as u64;
    match offset.checked_add(len) {
        Some(end) if end <= chunk_size => Ok(end),
        _ => Err(StoreError::OutOfRange {
            offset,
            len,
            chunk_size,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names() {
        for b in Backend::ALL {
            assert_eq!(b.to_string().parse::<Backend>().unwrap(), b);
        }
        assert!("io_uring".parse::<Backend>().is_err());
        assert!("".parse::<Backend>().is_err());
    }

    #[test]
    fn range() {
        assert_eq!(check_range(10, 0, 10).unwrap(), 10);
        assert_eq!(check_range(10, 10, 0).unwrap(), 10);
        assert!(check_range(10, 10, 1).is_err());
        assert!(check_range(10, u64::MAX, 2).is_err());
    }

    /// The provided `write_chunk` and `read_chunk` work through every backend.
    #[test]
    fn convenience_methods_on_every_backend() {
        // The io_uring store is opened and used inside a runtime with I/O enabled; the
        // LocalSet is how the server runs it.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for backend in Backend::ALL {
            let dir = tempfile::tempdir().unwrap();
            let mut config = StoreConfig::new(backend, dir.path());
            config.chunk_size = CHUNK_SIZE_MIN;
            config.queue_depth = 2;
            tokio::task::LocalSet::new().block_on(&runtime, async {
                let mut store = match AnyChunkStore::open(&config) {
                    Ok(store) => store,
                    // io_uring may be missing or forbidden where the tests run.
                    Err(StoreError::Unsupported { .. }) => return,
                    Err(e) => panic!("open {backend}: {e}"),
                };
                store.write_chunk(5, 1, 100, &[7; 50]).await.unwrap();
                let got = store.read_chunk(5, 1, 90, 100).await.unwrap();
                assert_eq!(got, [&[0; 10][..], &[7; 50]].concat(), "{backend}");
                assert!(store.read_chunk(5, 2, 0, 10).await.unwrap().is_empty());
                let long = vec![0; CHUNK_SIZE_MIN as usize + 1];
                let err = store.write_chunk(5, 1, 0, &long).await.unwrap_err();
                assert!(matches!(err, StoreError::OutOfRange { .. }), "{backend}");
            });
        }
    }

    #[test]
    fn config_bounds() {
        let mut cfg = StoreConfig::new(Backend::File, "/x");
        cfg.validate().unwrap();
        cfg.queue_depth = 0;
        assert!(cfg.validate().is_err());
        cfg.queue_depth = 1;
        cfg.chunk_size = CHUNK_SIZE_MAX + 1;
        assert!(cfg.validate().is_err());
        let mut cfg = StoreConfig::new(Backend::Tiered, "/x");
        cfg.validate().unwrap();
        cfg.memory_tier_bytes = cfg.chunk_size - 1;
        let e = cfg.validate().unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::InvalidConfig {
                    field: "memory_tier_bytes",
                    ..
                }
            ),
            "{e}"
        );
        // Only the tiered backend has a memory tier.
        cfg.backend = Backend::IoUring;
        cfg.validate().unwrap();
    }
}
