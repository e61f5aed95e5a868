//! [`InMemoryChunkStore`]: chunks as page tables in a map, bounded by a byte capacity.
//! Chunk memory comes from a [`PagePool`] of pre-faulted, recycled pages (`pages.rs`), so
//! the write path takes no page faults once the pool has grown to the working set.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::buf::BufPool;
use crate::limits::{CHUNK_SIZE_DEFAULT, CHUNK_SIZE_MAX, CHUNK_SIZE_MIN, MEMORY_POOL_IN_FLIGHT};
use crate::limits::{PAGE_BYTES, PAGE_RUN_BUFFER_MIN};
use crate::pages::{ChunkView, PageChunk, PagePool};
use crate::{check_chunk_size, check_range, ChunkBuf, ChunkId, ChunkStat, ChunkStore};
use crate::{StoreError, StoreUsage};

// `new` skips `check_chunk_size` for the default; this is what makes that sound.
const _: () = assert!(CHUNK_SIZE_MIN <= CHUNK_SIZE_DEFAULT && CHUNK_SIZE_DEFAULT <= CHUNK_SIZE_MAX);

/// Chunks held in memory. Writes and truncates that would take the total past the
/// capacity fail with [`StoreError::NoSpace`] and change nothing. Holes count as used
/// but hold no memory.
///
/// Memory: chunks are tables of 4 KiB pages from a pool that maps pre-faulted segments
/// (aligned for transparent huge pages, where the system turns them on) as it needs them,
/// the next one on another thread ahead of need, and takes
/// back the pages of removed and cut chunks for the next write. The pool keeps what it
/// mapped until the store drops (its high-water mark stays resident); it maps at most
/// the capacity plus each chunk's rounding to whole pages.
#[derive(Debug)]
pub struct InMemoryChunkStore {
    chunk_size: u64,
    capacity_bytes: u64,
    // Drop order: the chunks hold pages of `pages`, so they go first.
    chunks: RefCell<BTreeMap<ChunkId, PageChunk>>,
    pages: Rc<PagePool>,
    used_bytes: Cell<u64>,
    /// Mapped on first use when built by `new`, so that constructor cannot fail.
    pool: OnceCell<Rc<BufPool>>,
}

impl InMemoryChunkStore {
    /// An empty store of [`CHUNK_SIZE_DEFAULT`] chunks holding at most `capacity_bytes`;
    /// `u64::MAX` means unbounded.
    ///
    /// Infallible: the buffer pool is mapped by the first [`ChunkStore::buffer`] call,
    /// which reports a failure to map it. Use [`with_chunk_size`](Self::with_chunk_size)
    /// to map it, and so fail, here.
    pub fn new(capacity_bytes: u64) -> InMemoryChunkStore {
        InMemoryChunkStore::empty(CHUNK_SIZE_DEFAULT, capacity_bytes)
    }

    /// An empty store of `chunk_size` chunks holding at most `capacity_bytes`; `u64::MAX`
    /// means unbounded. Fails if `chunk_size` is out of bounds or the buffer pool cannot
    /// be mapped: it maps the pool now so a server fails at start-up, not on a request.
    pub fn with_chunk_size(
        chunk_size: u64,
        capacity_bytes: u64,
    ) -> Result<InMemoryChunkStore, StoreError> {
        check_chunk_size(chunk_size)?;
        let store = InMemoryChunkStore::empty(chunk_size, capacity_bytes);
        store.pool()?;
        Ok(store)
    }

    /// Maps and faults in chunk memory for `bytes` of data now (capped at the capacity),
    /// so writes into it take no page faults; the pool keeps it for the store's life.
    /// Refuses more than the host has available: faulting in memory that is not there
    /// would wake the OOM killer rather than fail.
    pub fn prefault(&self, bytes: u64) -> Result<(), StoreError> {
        let bytes = bytes.min(self.capacity_bytes);
        if bytes == 0 {
            return Ok(());
        }
        if let Some(available) = available_memory() {
            // What the page pool leaves free for the rest of the server is not for chunks.
            let available = available.saturating_sub(crate::limits::MEMORY_HEADROOM_BYTES);
            if bytes > available {
                return Err(StoreError::InvalidConfig {
                    field: "prefault_bytes",
                    reason: format!(
                        "{bytes} bytes is more than the {available} bytes of memory available to this server (host and cgroup)"
                    ),
                });
            }
        }
        self.pages.prefault(bytes)
    }

    /// Whether chunk memory mapped from now on asks for transparent huge pages (default:
    /// no; see [`StoreConfig::huge_pages`](crate::StoreConfig::huge_pages)).
    pub fn use_huge_pages(&self, on: bool) {
        self.pages.use_huge_pages(on);
    }

    /// A store that maps nothing until it is used; the caller has checked `chunk_size`.
    pub(crate) fn empty(chunk_size: u64, capacity_bytes: u64) -> InMemoryChunkStore {
        InMemoryChunkStore {
            chunk_size,
            capacity_bytes,
            chunks: RefCell::new(BTreeMap::new()),
            pages: Rc::new(PagePool::new(capacity_bytes)),
            used_bytes: Cell::new(0),
            pool: OnceCell::new(),
        }
    }

    /// The buffer pool, mapped now if it is not yet. A failed mapping leaves the cell
    /// empty, so the next call tries again.
    fn pool(&self) -> Result<&Rc<BufPool>, StoreError> {
        if let Some(pool) = self.pool.get() {
            return Ok(pool);
        }
        // Small transfers, mapped at the first: huge pages only as chunk memory takes them
        // (faulting them in on a VM that hands free memory back stalls that transfer).
        let pool = BufPool::for_chunks(
            self.chunk_size,
            MEMORY_POOL_IN_FLIGHT,
            self.pages.huge_pages(),
        )?;
        Ok(self.pool.get_or_init(|| pool))
    }

    /// Bytes mapped for chunk data, in use or free: the pool's high-water mark, which it
    /// keeps mapped (and resident) until the store drops.
    pub fn page_pool_bytes(&self) -> u64 {
        self.pages.mapped_bytes() as u64
    }

    /// Checks that a chunk may grow from `old` to `new` bytes under the capacity.
    fn check_growth(&self, old: u64, new: u64) -> Result<(), StoreError> {
        let needed = new.saturating_sub(old);
        let available = self.capacity_bytes - self.used_bytes.get();
        if needed > available {
            return Err(StoreError::NoSpace { needed, available });
        }
        Ok(())
    }

    /// Puts `len` bytes at `offset` into chunk `id` with `fill` (made now if missing),
    /// once the range and the capacity allow them, and counts the growth: the one place a
    /// write's checks and accounting live. A chunk made for a `fill` that failed goes again.
    fn put(
        &self,
        id: ChunkId,
        offset: u64,
        len: usize,
        fill: impl FnOnce(&mut PageChunk) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let end = check_range(self.chunk_size, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let mut chunks = self.chunks.borrow_mut();
        let existed = chunks.contains_key(&id);
        let chunk = chunks.entry(id).or_default();
        let old = chunk.len() as u64;
        match self.check_growth(old, end).and_then(|()| fill(chunk)) {
            Ok(()) => {
                self.used_bytes
                    .set(self.used_bytes.get() + end.saturating_sub(old));
                Ok(())
            }
            Err(e) => {
                if !existed {
                    chunks.remove(&id);
                }
                Err(e)
            }
        }
    }

    /// [`ChunkStore::write`] from a slice, done before it returns: what the tiered store
    /// calls, so nothing can run between its checks and the write.
    pub(crate) fn write_bytes(
        &self,
        id: ChunkId,
        offset: u64,
        data: &[u8],
    ) -> Result<(), StoreError> {
        self.put(id, offset, data.len(), |chunk| {
            chunk.write(&self.pages, offset as usize, data)
        })
    }

    /// [`ChunkStore::read`] into a slice, done before it returns.
    pub(crate) fn read_bytes(
        &self,
        id: ChunkId,
        offset: u64,
        out: &mut [u8],
    ) -> Result<usize, StoreError> {
        check_range(self.chunk_size, offset, out.len())?;
        let chunks = self.chunks.borrow();
        Ok(chunks
            .get(&id)
            .map_or(0, |chunk| chunk.read(offset as usize, out)))
    }

    /// Up to `len` bytes at `offset` of the chunk in place, for a send with no copy: where
    /// they lie in pages one after the other in memory (as a write of a fresh range takes
    /// them), else `None`, and the caller reads them into a buffer.
    pub fn read_in_place(&self, id: ChunkId, offset: u64, len: usize) -> Option<ChunkView> {
        check_range(self.chunk_size, offset, len).ok()?;
        let chunks = self.chunks.borrow();
        chunks.get(&id)?.view(&self.pages, offset as usize, len)
    }

    /// [`ChunkStore::truncate`], done before it returns.
    pub(crate) fn set_len(&self, id: ChunkId, len: u64) -> Result<(), StoreError> {
        check_range(self.chunk_size, len, 0)?;
        let mut chunks = self.chunks.borrow_mut();
        let old = chunks.get(&id).map_or(0, |c| c.len() as u64);
        self.check_growth(old, len)?;
        chunks
            .entry(id)
            .or_default()
            .set_len(&self.pages, len as usize);
        self.used_bytes.set(self.used_bytes.get() - old + len);
        Ok(())
    }

    /// [`ChunkStore::remove`], done before it returns.
    pub(crate) fn remove_chunk(&self, id: ChunkId) -> bool {
        let removed = self.chunks.borrow_mut().remove(&id);
        if let Some(chunk) = removed {
            self.used_bytes
                .set(self.used_bytes.get() - chunk.len() as u64);
            chunk.release(&self.pages);
            return true;
        }
        false
    }

    /// [`ChunkStore::remove_file`], done before it returns.
    pub(crate) fn remove_file_chunks(&self, file_id: u64) -> u64 {
        let ids: Vec<ChunkId> = self
            .chunks
            .borrow()
            .range(ChunkId::new(file_id, 0)..=ChunkId::new(file_id, u64::MAX))
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            self.remove_chunk(*id);
        }
        ids.len() as u64
    }

    /// The chunk's length, or `None` if it does not exist.
    pub(crate) fn chunk_len(&self, id: ChunkId) -> Option<u64> {
        self.chunks.borrow().get(&id).map(|c| c.len() as u64)
    }
}

impl ChunkStore for InMemoryChunkStore {
    fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// A payload's worth of pool pages in a row when it is large enough to be worth it
    /// and the pool has them (a write of it then takes them as the chunk's pages: the
    /// copy from a buffer took a memory server a sixth of its time writing), else a slot.
    async fn buffer(&self, len: usize) -> Result<ChunkBuf, StoreError> {
        check_range(self.chunk_size, 0, len)?;
        let room = self.capacity_bytes - self.used_bytes.get();
        if len >= PAGE_RUN_BUFFER_MIN && room / 2 >= len as u64 {
            if let Some(first) = self.pages.take_run(len.div_ceil(PAGE_BYTES)) {
                return Ok(ChunkBuf::from_pages(first, len, Rc::clone(&self.pages)));
            }
        }
        Ok(self.pool()?.take_or_heap(len))
    }

    async fn write(
        &self,
        id: ChunkId,
        offset: u64,
        buf: ChunkBuf,
    ) -> (Result<(), StoreError>, ChunkBuf) {
        // A buffer of this pool's pages at a page boundary becomes the chunk's pages.
        if !(offset as usize).is_multiple_of(PAGE_BYTES) || buf.is_empty() {
            return (self.write_bytes(id, offset, buf.as_slice()), buf);
        }
        let (first, len) = match buf.into_pages(&self.pages) {
            Ok(pages) => pages,
            Err(buf) => return (self.write_bytes(id, offset, buf.as_slice()), buf),
        };
        let adopted = self.put(id, offset, len, |chunk| {
            // SAFETY: `into_pages` handed over the buffer's pages, in a row from `first`.
            unsafe { chunk.adopt(&self.pages, offset as usize, first, len) };
            Ok(())
        });
        if adopted.is_err() {
            // Refused before `adopt` took them.
            self.pages.give_run(first, len.div_ceil(PAGE_BYTES));
        }
        (adopted, ChunkBuf::empty())
    }

    async fn read(
        &self,
        id: ChunkId,
        offset: u64,
        mut buf: ChunkBuf,
    ) -> (Result<usize, StoreError>, ChunkBuf) {
        (self.read_bytes(id, offset, buf.as_mut_slice()), buf)
    }

    async fn truncate(&self, id: ChunkId, len: u64) -> Result<(), StoreError> {
        self.set_len(id, len)
    }

    async fn remove(&self, id: ChunkId) -> Result<bool, StoreError> {
        Ok(self.remove_chunk(id))
    }

    async fn remove_file(&self, file_id: u64) -> Result<u64, StoreError> {
        Ok(self.remove_file_chunks(file_id))
    }

    async fn stat(&self, id: ChunkId) -> Result<Option<ChunkStat>, StoreError> {
        Ok(self.chunk_len(id).map(|len| ChunkStat { len }))
    }

    async fn list(&self) -> Result<Vec<ChunkId>, StoreError> {
        Ok(self.chunks.borrow().keys().copied().collect())
    }

    async fn file_chunks(&self, file_id: u64) -> Result<Vec<(u64, ChunkStat)>, StoreError> {
        let chunks = self.chunks.borrow();
        let range = ChunkId::new(file_id, 0)..=ChunkId::new(file_id, u64::MAX);
        Ok(chunks
            .range(range)
            .map(|(id, c)| {
                (
                    id.index,
                    ChunkStat {
                        len: c.len() as u64,
                    },
                )
            })
            .collect())
    }

    async fn sync(&self) -> Result<(), StoreError> {
        // Nothing here outlives the process, so there is nothing to make durable.
        Ok(())
    }

    fn usage(&self) -> StoreUsage {
        StoreUsage {
            used_bytes: self.used_bytes.get(),
            capacity_bytes: (self.capacity_bytes != u64::MAX).then_some(self.capacity_bytes),
            chunks: self.chunks.borrow().len() as u64,
        }
    }
}

/// The memory this process may still fault in, in bytes: the host's available memory
/// (`MemAvailable`) or, when less, what the limits of its cgroups (v1 or v2) and of every
/// cgroup above them leave (a Slurm job's, a container's); `None` where neither says.
pub fn available_memory() -> Option<u64> {
    host_available_memory()
        .into_iter()
        .chain(cgroup_available_memory())
        .min()
}

fn host_available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The least room under the memory limit among this process's cgroups and their
/// ancestors: `memory.max` of the unified hierarchy (cgroup v2), and `memory.limit_in_bytes`
/// of the v1 memory controller, which many clusters' Slurm still uses. A path outside the
/// namespace's root (`/..`) names no directory here and is skipped.
fn cgroup_available_memory() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let root = std::path::Path::new("/sys/fs/cgroup");
    let mut least: Option<u64> = None;
    for line in cgroups.lines() {
        // `hierarchy-id:controllers:path`; the unified hierarchy has id 0 and no controllers.
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if path.split('/').any(|part| part == "..") {
            continue;
        }
        let path = path.trim_start_matches('/');
        let room = if id == "0" && controllers.is_empty() {
            least_room(root, &root.join(path), &CgroupFiles::V2)
        } else if controllers.split(',').any(|c| c == "memory") {
            let mount = root.join("memory");
            least_room(&mount, &mount.join(path), &CgroupFiles::V1)
        } else {
            None
        };
        least = least.into_iter().chain(room).min();
    }
    least
}

/// The files a cgroup hierarchy states its memory limit and usage in (each directory's
/// `memory.stat` breaks the usage down under the keys named here).
struct CgroupFiles {
    limit: &'static str,
    usage: &'static str,
    /// `memory.stat` keys of file pages, clean or not: inactive, active.
    file_pages: [&'static str; 2],
    /// `memory.stat` keys of the file pages not yet clean: dirty, under writeback.
    unclean: [&'static str; 2],
}

impl CgroupFiles {
    const V1: CgroupFiles = CgroupFiles {
        limit: "memory.limit_in_bytes",
        usage: "memory.usage_in_bytes",
        file_pages: ["total_inactive_file", "total_active_file"],
        unclean: ["total_dirty", "total_writeback"],
    };
    const V2: CgroupFiles = CgroupFiles {
        limit: "memory.max",
        usage: "memory.current",
        file_pages: ["inactive_file", "active_file"],
        unclean: ["file_dirty", "file_writeback"],
    };
}

/// A v1 limit at or above this is "no limit" (the kernel shows one as about 2^63).
const CGROUP_V1_UNLIMITED: u64 = 1 << 62;
/// Usage this far below a limit leaves room enough that its reclaimable part is not read.
const CGROUP_ROOM_PLENTY: u64 = 1 << 30;

/// The least room from `dir` up to `root`, over the directories with a limit ("max" and
/// v1's huge value are none): the limit less the usage, where the usage does not count
/// clean file pages, which the kernel reclaims before it would kill (a job's page cache
/// fills its cgroup up to the limit). Dirty pages must be written first, and a disk
/// store's writes make many, so they count.
fn least_room(root: &std::path::Path, dir: &std::path::Path, files: &CgroupFiles) -> Option<u64> {
    let mut dir = dir.to_path_buf();
    let mut least: Option<u64> = None;
    loop {
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
        let number = |name: &str| read(name).and_then(|text| text.trim().parse::<u64>().ok());
        if let Some(max) = number(files.limit).filter(|&max| max < CGROUP_V1_UNLIMITED) {
            let current = number(files.usage).unwrap_or(0);
            let mut room = max.saturating_sub(current);
            if room < CGROUP_ROOM_PLENTY {
                let stats = read("memory.stat").unwrap_or_default();
                let stat_of = |name: &str| {
                    stats
                        .lines()
                        .find_map(|line| {
                            let (key, value) = line.split_once(' ')?;
                            (key == name).then(|| value.trim().parse::<u64>().ok())?
                        })
                        .unwrap_or(0)
                };
                let clean = files
                    .file_pages
                    .iter()
                    .map(|name| stat_of(name))
                    .sum::<u64>()
                    .saturating_sub(files.unclean.iter().map(|name| stat_of(name)).sum());
                room = max.saturating_sub(current.saturating_sub(clean));
            }
            least = Some(least.map_or(room, |l| l.min(room)));
        }
        if dir == root || !dir.starts_with(root) || !dir.pop() {
            return least;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One call of a convenience method on chunk `.0` of file 1, at offset `.1`, and what
    /// it returns; an error is named by its variant.
    enum Step {
        Write(u64, u64, Vec<u8>, Result<(), &'static str>),
        Read(u64, u64, usize, Result<Vec<u8>, &'static str>),
    }

    fn kind(e: &StoreError) -> &'static str {
        match e {
            StoreError::NoSpace { .. } => "NoSpace",
            StoreError::OutOfRange { .. } => "OutOfRange",
            _ => "other",
        }
    }

    /// Runs `steps` in order on a fresh store of [`CHUNK_SIZE_MIN`] chunks.
    fn check(capacity_bytes: u64, steps: Vec<Step>) {
        block_on(async {
            let mut store =
                InMemoryChunkStore::with_chunk_size(CHUNK_SIZE_MIN, capacity_bytes).unwrap();
            for (i, step) in steps.into_iter().enumerate() {
                match step {
                    Step::Write(index, offset, data, expected) => {
                        let got = store.write_chunk(1, index, offset, &data).await;
                        assert_eq!(got.map_err(|e| kind(&e)), expected, "step {i}");
                    }
                    Step::Read(index, offset, len, expected) => {
                        let got = store.read_chunk(1, index, offset, len).await;
                        assert_eq!(got.map_err(|e| kind(&e)), expected, "step {i}");
                    }
                }
            }
        });
    }

    const MIN: usize = CHUNK_SIZE_MIN as usize;

    #[test]
    fn write_then_read_at_offsets() {
        use Step::*;
        check(
            u64::MAX,
            vec![
                Write(0, 0, vec![1; 10], Ok(())),
                Read(0, 0, 10, Ok(vec![1; 10])),
                Read(0, 4, 3, Ok(vec![1; 3])),
                // Short at the end of the chunk, as `read` is.
                Read(0, 5, 20, Ok(vec![1; 5])),
                Write(0, 20, vec![2; 4], Ok(())),
                // The hole between 10 and 20 reads as zeros.
                Read(0, 8, 16, Ok([&[1; 2][..], &[0; 10], &[2; 4]].concat())),
                Write(3, (MIN - 4) as u64, vec![3; 4], Ok(())),
                Read(3, (MIN - 4) as u64, 4, Ok(vec![3; 4])),
                Write(0, 0, Vec::new(), Ok(())),
            ],
        );
    }

    #[test]
    fn missing_chunk_reads_empty() {
        use Step::*;
        check(
            u64::MAX,
            vec![
                Read(0, 0, 4096, Ok(Vec::new())),
                Write(1, 0, vec![1; 10], Ok(())),
                Read(0, 0, 10, Ok(Vec::new())),
                // Past the end of a chunk that exists.
                Read(1, 10, 10, Ok(Vec::new())),
                Read(1, 100, 10, Ok(Vec::new())),
            ],
        );
    }

    #[test]
    fn out_of_range_is_an_error() {
        use Step::*;
        check(
            u64::MAX,
            vec![
                Write(0, 0, vec![1; MIN + 1], Err("OutOfRange")),
                Write(0, 1, vec![1; MIN], Err("OutOfRange")),
                Write(0, u64::MAX, vec![1; 2], Err("OutOfRange")),
                Read(0, 0, 0, Ok(Vec::new())),
                Read(0, 0, MIN + 1, Err("OutOfRange")),
                Read(0, 1, MIN, Err("OutOfRange")),
            ],
        );
    }

    #[test]
    fn full_store_is_no_space() {
        use Step::*;
        check(
            16,
            vec![
                Write(0, 0, vec![1; 16], Ok(())),
                Write(1, 0, vec![2; 1], Err("NoSpace")),
                Write(0, 16, vec![2; 1], Err("NoSpace")),
                // Overwriting needs no new space, and the failures changed nothing.
                Write(0, 0, vec![3; 16], Ok(())),
                Read(0, 0, 32, Ok(vec![3; 16])),
                Read(1, 0, 1, Ok(Vec::new())),
            ],
        );
    }

    /// Runs `work` on a current-thread runtime, as a server runs its store.
    fn block_on<F: std::future::Future>(work: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(work)
    }

    /// A read in place is of the chunk's own bytes, as far as its end; never of a hole or
    /// of pages apart in memory (the caller then reads into a buffer).
    #[test]
    fn reads_in_place_are_of_pages_in_a_row() {
        block_on(async {
            let mut store = InMemoryChunkStore::with_chunk_size(1 << 20, u64::MAX).unwrap();
            let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
            store.write_chunk(1, 0, 0, &data).await.unwrap();
            let view = store
                .read_in_place(ChunkId::new(1, 0), 5000, 200_000)
                .unwrap();
            assert_eq!(view.as_ref(), &data[5000..], "short at the chunk's end");
            assert!(store
                .read_in_place(ChunkId::new(1, 0), 100_000, 10)
                .is_none());
            assert!(store.read_in_place(ChunkId::new(1, 9), 0, 10).is_none());
            // A hole between two writes.
            store.write_chunk(1, 1, 0, &[1; 10]).await.unwrap();
            store.write_chunk(1, 1, 3 * 4096, &[2; 10]).await.unwrap();
            assert!(store
                .read_in_place(ChunkId::new(1, 1), 0, 4 * 4096)
                .is_none());
            assert!(store.read_in_place(ChunkId::new(1, 1), 0, 10).is_some());
            // Page 1 taken before page 0: the two lie the wrong way round in memory.
            store.write_chunk(1, 2, 4096, &[3; 4096]).await.unwrap();
            store.write_chunk(1, 2, 0, &[4; 4096]).await.unwrap();
            assert!(store.read_in_place(ChunkId::new(1, 2), 0, 8192).is_none());
        });
    }

    /// A write of a store buffer at a page boundary takes the buffer's pages as the chunk's,
    /// with no copy; what its last page holds past the write stays the chunk's (the old
    /// bytes, or zeros where the chunk had none).
    #[test]
    fn a_write_of_a_store_buffer_takes_its_pages() {
        block_on(async {
            let mut store = InMemoryChunkStore::with_chunk_size(1 << 20, u64::MAX).unwrap();
            let old = vec![1; 40 * 4096];
            store.write_chunk(1, 0, 0, &old).await.unwrap();
            // Adopt the growth ahead now, as a write would once it is done.
            store.pages.finish_growth();
            let len = PAGE_RUN_BUFFER_MIN + 100;
            let mut buf = store.buffer(len).await.unwrap();
            buf.as_mut_slice().fill(2);
            let addr = buf.as_ptr();
            let (result, _) = store.write(ChunkId::new(1, 0), 4096, buf).await;
            result.unwrap();
            let view = store.read_in_place(ChunkId::new(1, 0), 4096, 10).unwrap();
            assert_eq!(
                view.as_ref().as_ptr(),
                addr,
                "the chunk took the buffer's pages"
            );
            drop(view);
            let mut want = old;
            want[4096..4096 + len].fill(2);
            assert!(store.read_chunk(1, 0, 0, 1 << 20).await.unwrap() == want);

            let mut buf = store.buffer(len).await.unwrap();
            buf.as_mut_slice().fill(3);
            let (result, _) = store.write(ChunkId::new(1, 1), 8192, buf).await;
            result.unwrap();
            store
                .truncate(ChunkId::new(1, 1), 8192 + len as u64 + 50)
                .await
                .unwrap();
            let got = store.read_chunk(1, 1, 0, 1 << 20).await.unwrap();
            assert_eq!(got.len(), 8192 + len + 50);
            assert!(got[..8192].iter().all(|&b| b == 0));
            assert!(got[8192..8192 + len].iter().all(|&b| b == 3));
            assert!(
                got[8192 + len..].iter().all(|&b| b == 0),
                "zeros past the write"
            );
            assert_eq!(store.usage().used_bytes, 40 * 4096 + 8192 + len as u64 + 50);
        });
    }

    /// Pages a removed, cut or rewritten chunk gives back are handed out again in a row,
    /// as fresh ones are: the next large write takes them with no copy, and reads of it go
    /// in place. (On a stack of free pages, a second round of writes into a recycled pool
    /// copied every payload and every read of it, and a cut chunk's pages broke the runs
    /// after them.)
    #[test]
    fn pages_given_back_are_taken_again_in_a_row() {
        block_on(async {
            let store = InMemoryChunkStore::with_chunk_size(1 << 20, u64::MAX).unwrap();
            // Room enough that the pool does not grow during the test: one segment.
            store.pages.prefault(96 << 20).unwrap();
            store.pages.finish_growth();
            let len = 1 << 20;
            let write = |index: u64, fill: u8| {
                let store = &store;
                async move {
                    let mut buf = store.buffer(len).await.unwrap();
                    buf.as_mut_slice().fill(fill);
                    let addr = buf.as_ptr();
                    let (result, _) = store.write(ChunkId::new(1, index), 0, buf).await;
                    result.unwrap();
                    let view = store.read_in_place(ChunkId::new(1, index), 0, len);
                    let view = view.unwrap_or_else(|| panic!("{index}/{fill}: not in place"));
                    assert_eq!(view.as_ref().as_ptr(), addr, "{index}/{fill}: copied");
                    assert!(view.as_ref().iter().all(|&b| b == fill));
                }
            };
            for round in 0..3u8 {
                for index in 0..4 {
                    write(index, round).await;
                }
                // A chunk written again gives back the pages it replaces, which the next
                // new chunk takes; a buffer never written gives back its run, likewise.
                write(1, round + 100).await;
                write(4, round + 100).await;
                drop(store.buffer(len).await.unwrap());
                write(5, round + 100).await;
                // Cut a chunk in the middle short and remove the file.
                store.truncate(ChunkId::new(1, 2), 5000).await.unwrap();
                store.remove_file(1).await.unwrap();
            }
        });
    }
    /// Pages freed while a read in place is out are not written by another chunk until it
    /// ends (a send may still be reading them), and are reused after.
    #[test]
    fn pages_lent_to_a_read_in_place_are_not_reused_until_it_ends() {
        block_on(async {
            let mut store = InMemoryChunkStore::with_chunk_size(1 << 20, u64::MAX).unwrap();
            store.write_chunk(1, 0, 0, &vec![7; 1 << 20]).await.unwrap();
            let view = store.read_in_place(ChunkId::new(1, 0), 0, 1 << 20).unwrap();
            assert!(store.remove(ChunkId::new(1, 0)).await.unwrap());
            store.write_chunk(2, 0, 0, &vec![9; 1 << 20]).await.unwrap();
            assert!(
                view.as_ref().iter().all(|&b| b == 7),
                "the lent pages kept their bytes"
            );
            drop(view);
            store.pages.finish_growth();
            let mapped = store.page_pool_bytes();
            assert!(store.remove(ChunkId::new(2, 0)).await.unwrap());
            // Twice the chunk: both removed chunks' pages are free again.
            store.write_chunk(3, 0, 0, &vec![1; 1 << 20]).await.unwrap();
            store.write_chunk(3, 1, 0, &vec![1; 1 << 20]).await.unwrap();
            store.pages.finish_growth();
            assert_eq!(
                store.page_pool_bytes(),
                mapped,
                "the held-back pages came back"
            );
        });
    }

    /// A retired read in place (its send given up on while the peer may still read it)
    /// keeps its pages from every later chunk, for good, whether its chunk let go of them
    /// before the retirement (they wait for the view) or after; other pages are reused.
    #[test]
    fn pages_of_a_retired_read_in_place_never_go_to_another_chunk() {
        for removed_first in [false, true] {
            block_on(async {
                let mut store = InMemoryChunkStore::with_chunk_size(1 << 20, u64::MAX).unwrap();
                store.write_chunk(1, 0, 0, &vec![7; 1 << 20]).await.unwrap();
                let view = store.read_in_place(ChunkId::new(1, 0), 0, 1 << 20).unwrap();
                let (at, len) = (view.as_ref().as_ptr() as usize, view.len());
                let retired = at..at + len;
                if removed_first {
                    assert!(store.remove(ChunkId::new(1, 0)).await.unwrap());
                    view.retire();
                } else {
                    view.retire();
                    assert!(store.remove(ChunkId::new(1, 0)).await.unwrap());
                }
                for file in 2..10u64 {
                    store
                        .write_chunk(file, 0, 0, &vec![9; 1 << 20])
                        .await
                        .unwrap();
                    let other = store.read_in_place(ChunkId::new(file, 0), 0, 1 << 20);
                    let other = other.expect("a fresh chunk's pages lie in a row");
                    let start = other.as_ref().as_ptr() as usize;
                    assert!(
                        start + other.len() <= retired.start || retired.end <= start,
                        "chunk {file} took a retired page (removed first: {removed_first})"
                    );
                    drop(other);
                    assert!(store.remove(ChunkId::new(file, 0)).await.unwrap());
                }
                // SAFETY: the retired pages stay mapped while the store lives.
                let kept = unsafe { std::slice::from_raw_parts(at as *const u8, len) };
                assert!(
                    kept.iter().all(|&b| b == 7),
                    "the retired pages kept their bytes"
                );
            });
        }
    }

    /// A read in place holds back only its own pages: another chunk's freed pages are
    /// free at once, even while the read is out (a client stalled in a transfer must not
    /// keep every page freed meanwhile from reuse).
    #[test]
    fn a_read_in_place_holds_back_only_its_own_pages() {
        block_on(async {
            let mut store = InMemoryChunkStore::with_chunk_size(1 << 20, u64::MAX).unwrap();
            store.write_chunk(1, 0, 0, &vec![5; 1 << 20]).await.unwrap();
            store.write_chunk(2, 0, 0, &vec![6; 1 << 20]).await.unwrap();
            store.pages.finish_growth();
            let mapped = store.page_pool_bytes();
            let view = store.read_in_place(ChunkId::new(1, 0), 0, 1 << 20).unwrap();
            for round in 0..8u8 {
                assert!(store.remove(ChunkId::new(2, 0)).await.unwrap());
                store
                    .write_chunk(2, 0, 0, &vec![round; 1 << 20])
                    .await
                    .unwrap();
            }
            store.pages.finish_growth();
            assert_eq!(
                store.page_pool_bytes(),
                mapped,
                "chunk 2's pages were reused"
            );
            assert!(view.as_ref().iter().all(|&b| b == 5));
        });
    }

    use crate::limits::PAGE_RUN_BUFFER_MIN;
    use crate::mapping::thread_minor_faults as minor_faults;

    /// Writes `chunks` whole chunks of file 1 in 256 KiB requests, each from a buffer of
    /// the store's as a server's are, then removes the file.
    async fn write_round(store: &InMemoryChunkStore, chunks: u64) -> i64 {
        let piece = 256 << 10;
        let before = minor_faults();
        for index in 0..chunks {
            for offset in (0..store.chunk_size).step_by(piece) {
                let mut buf = store.buffer(piece).await.unwrap();
                buf.as_mut_slice().fill(0x5a);
                let (result, _) = store.write(ChunkId::new(1, index), offset, buf).await;
                result.unwrap();
            }
        }
        let faults = minor_faults() - before;
        assert_eq!(store.remove_file(1).await.unwrap(), chunks);
        faults
    }

    /// Steady state: rewriting chunks whose pages came back to the pool takes no page
    /// faults (the seed's store took one per 4 KiB written, 8192 here).
    #[test]
    fn steady_state_writes_take_no_page_faults() {
        block_on(async {
            let store = InMemoryChunkStore::with_chunk_size(1 << 20, u64::MAX).unwrap();
            let pages_written = 32 * (1 << 20) / 4096;
            write_round(&store, 32).await;
            store.pages.finish_growth();
            let mapped = store.page_pool_bytes();
            let faults = write_round(&store, 32).await;
            assert_eq!(store.page_pool_bytes(), mapped, "the pool did not grow");
            // A few faults may come from the heap (the map's nodes, page tables); one per
            // page written would be 8192.
            assert!(
                faults < pages_written / 100,
                "{faults} minor faults rewriting {pages_written} pages"
            );
        });
    }

    /// A prefaulted store's first writes take no page faults; near the prefault's end the
    /// pool grows ahead by one segment at most (the prefault's size, here).
    #[test]
    fn a_prefaulted_store_writes_fresh_chunks_without_page_faults() {
        block_on(async {
            let chunks = 32;
            let bytes = chunks * (1 << 20);
            let pages_written = (bytes / 4096) as i64;
            let prefaulted = InMemoryChunkStore::with_chunk_size(1 << 20, u64::MAX).unwrap();
            prefaulted.prefault(bytes).unwrap();
            assert_eq!(prefaulted.page_pool_bytes(), bytes);
            let faults = write_round(&prefaulted, chunks).await;
            prefaulted.pages.finish_growth();
            let mapped = prefaulted.page_pool_bytes();
            assert!(
                mapped <= 2 * bytes,
                "{mapped} bytes mapped for a prefault of {bytes}"
            );
            assert!(
                faults < pages_written / 100,
                "{faults} minor faults writing {pages_written} prefaulted pages"
            );
        });
    }

    /// A fresh store's chunk memory is faulted in by the pool's growth thread, ahead of
    /// the writes: the writer takes the faults of the first segment only (a pool of one
    /// huge page, 512 pages), not one per page written (8192).
    #[test]
    fn a_fresh_store_takes_its_page_faults_off_the_writers_thread() {
        if crate::mapping::huge_pages_always() {
            // A fault per huge page on any thread: counting says nothing here.
            return;
        }
        block_on(async {
            let chunks = 32;
            let pages_written = (chunks * (1 << 20) / 4096) as i64;
            let first_segment = (crate::limits::HUGE_PAGE_BYTES / 4096) as i64;
            let store = InMemoryChunkStore::with_chunk_size(1 << 20, u64::MAX).unwrap();
            let faults = write_round(&store, chunks).await;
            assert!(
                faults < first_segment + pages_written / 100,
                "{faults} minor faults on the writer's thread writing {pages_written} fresh pages"
            );
            assert!(
                store.page_pool_bytes() >= chunks * (1 << 20),
                "the pool holds what was written"
            );
        });
    }

    #[test]
    fn prefaulting_stays_within_the_capacity_and_the_host() {
        let bounded = InMemoryChunkStore::with_chunk_size(1 << 20, 4 << 20).unwrap();
        bounded.prefault(64 << 20).unwrap();
        assert_eq!(bounded.page_pool_bytes(), 4 << 20);
        let err = InMemoryChunkStore::new(u64::MAX)
            .prefault(u64::MAX / 2)
            .unwrap_err();
        assert!(err.to_string().contains("available"), "{err}");
    }

    #[test]
    fn a_bounded_store_maps_no_more_than_its_capacity() {
        block_on(async {
            let capacity = 3 * CHUNK_SIZE_MIN;
            let mut store = InMemoryChunkStore::with_chunk_size(CHUNK_SIZE_MIN, capacity).unwrap();
            for index in 0..3 {
                store.write_chunk(1, index, 0, &[1; MIN]).await.unwrap();
            }
            let err = store.write_chunk(1, 3, 0, &[1; 1]).await.unwrap_err();
            assert!(matches!(err, StoreError::NoSpace { .. }), "{err}");
            assert_eq!(store.page_pool_bytes(), capacity);
            // Freed pages are reused, not mapped anew.
            store.remove(ChunkId::new(1, 0)).await.unwrap();
            store.write_chunk(1, 4, 0, &[2; MIN]).await.unwrap();
            assert_eq!(store.page_pool_bytes(), capacity);
        });
    }

    #[test]
    fn new_is_lazy_with_the_default_chunk_size() {
        block_on(async {
            let mut store = InMemoryChunkStore::new(100 << 20);
            assert_eq!(store.chunk_size(), CHUNK_SIZE_DEFAULT);
            assert!(
                store.pool.get().is_none(),
                "no pool before the first buffer"
            );
            let end = CHUNK_SIZE_DEFAULT - 4;
            store.write_chunk(7, 2, end, &[9; 4]).await.unwrap();
            assert!(store.pool.get().is_some());
            assert_eq!(store.read_chunk(7, 2, end, 4).await.unwrap(), [9; 4]);
            assert_eq!(store.usage().used_bytes, CHUNK_SIZE_DEFAULT);
        });
    }
}
