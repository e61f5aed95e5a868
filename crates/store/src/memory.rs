//! [`InMemoryChunkStore`]: chunks as vectors in a map, bounded by a byte capacity.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::buf::BufPool;
use crate::limits::{CHUNK_SIZE_DEFAULT, CHUNK_SIZE_MAX, CHUNK_SIZE_MIN, MEMORY_POOL_IN_FLIGHT};
use crate::{check_chunk_size, check_range, ChunkBuf, ChunkId, ChunkStat, ChunkStore};
use crate::{StoreError, StoreUsage};

// `new` skips `check_chunk_size` for the default; this is what makes that sound.
const _: () = assert!(CHUNK_SIZE_MIN <= CHUNK_SIZE_DEFAULT && CHUNK_SIZE_DEFAULT <= CHUNK_SIZE_MAX);

/// Chunks held in memory. Writes and truncates that would take the total past the
/// capacity fail with [`StoreError::NoSpace`] and change nothing. Holes are stored as
/// zeros and count as used.
#[derive(Debug)]
pub struct InMemoryChunkStore {
    chunk_size: u64,
    capacity_bytes: u64,
    chunks: RefCell<BTreeMap<ChunkId, Vec<u8>>>,
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

    fn empty(chunk_size: u64, capacity_bytes: u64) -> InMemoryChunkStore {
        InMemoryChunkStore {
            chunk_size,
            capacity_bytes,
            chunks: RefCell::new(BTreeMap::new()),
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
        let pool = BufPool::for_chunks(self.chunk_size, MEMORY_POOL_IN_FLIGHT)?;
        Ok(self.pool.get_or_init(|| pool))
    }

    /// Checks that growing a chunk from `old` to `new` bytes fits, and reserves the memory.
    fn grow(&self, chunk: &mut Vec<u8>, new: usize) -> Result<(), StoreError> {
        let old = chunk.len();
        if new <= old {
            return Ok(());
        }
        let needed = (new - old) as u64;
        let available = self.capacity_bytes - self.used_bytes.get();
        if needed > available {
            return Err(StoreError::NoSpace { needed, available });
        }
        chunk
            .try_reserve_exact(new - old)
            .map_err(|_| StoreError::NoSpace {
                needed,
                available: 0,
            })?;
        chunk.resize(new, 0);
        self.used_bytes.set(self.used_bytes.get() + needed);
        Ok(())
    }
}

impl ChunkStore for InMemoryChunkStore {
    fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    async fn buffer(&self, len: usize) -> Result<ChunkBuf, StoreError> {
        check_range(self.chunk_size, 0, len)?;
        Ok(self.pool()?.take_or_heap(len))
    }

    async fn write(
        &self,
        id: ChunkId,
        offset: u64,
        buf: ChunkBuf,
    ) -> (Result<(), StoreError>, ChunkBuf) {
        let end = match check_range(self.chunk_size, offset, buf.len()) {
            Ok(end) => end as usize,
            Err(e) => return (Err(e), buf),
        };
        if buf.is_empty() {
            return (Ok(()), buf);
        }
        let mut chunks = self.chunks.borrow_mut();
        let existed = chunks.contains_key(&id);
        let chunk = chunks.entry(id).or_default();
        if let Err(e) = self.grow(chunk, end) {
            if !existed {
                chunks.remove(&id);
            }
            return (Err(e), buf);
        }
        chunk[offset as usize..end].copy_from_slice(buf.as_slice());
        (Ok(()), buf)
    }

    async fn read(
        &self,
        id: ChunkId,
        offset: u64,
        mut buf: ChunkBuf,
    ) -> (Result<usize, StoreError>, ChunkBuf) {
        if let Err(e) = check_range(self.chunk_size, offset, buf.len()) {
            return (Err(e), buf);
        }
        let chunks = self.chunks.borrow();
        let Some(chunk) = chunks.get(&id) else {
            return (Ok(0), buf);
        };
        let start = (offset as usize).min(chunk.len());
        let n = (chunk.len() - start).min(buf.len());
        buf.as_mut_slice()[..n].copy_from_slice(&chunk[start..start + n]);
        (Ok(n), buf)
    }

    async fn truncate(&self, id: ChunkId, len: u64) -> Result<(), StoreError> {
        check_range(self.chunk_size, len, 0)?;
        let len = len as usize;
        let mut chunks = self.chunks.borrow_mut();
        let existed = chunks.contains_key(&id);
        let chunk = chunks.entry(id).or_default();
        if len < chunk.len() {
            self.used_bytes
                .set(self.used_bytes.get() - (chunk.len() - len) as u64);
            chunk.truncate(len);
            chunk.shrink_to_fit();
        } else if let Err(e) = self.grow(chunk, len) {
            if !existed {
                chunks.remove(&id);
            }
            return Err(e);
        }
        Ok(())
    }

    async fn remove(&self, id: ChunkId) -> Result<bool, StoreError> {
        let removed = self.chunks.borrow_mut().remove(&id);
        if let Some(chunk) = &removed {
            self.used_bytes
                .set(self.used_bytes.get() - chunk.len() as u64);
        }
        Ok(removed.is_some())
    }

    async fn remove_file(&self, file_id: u64) -> Result<u64, StoreError> {
        let mut chunks = self.chunks.borrow_mut();
        let ids: Vec<ChunkId> = chunks
            .range(ChunkId::new(file_id, 0)..=ChunkId::new(file_id, u64::MAX))
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            let chunk = chunks.remove(id).expect("listed just above");
            self.used_bytes
                .set(self.used_bytes.get() - chunk.len() as u64);
        }
        Ok(ids.len() as u64)
    }

    async fn stat(&self, id: ChunkId) -> Result<Option<ChunkStat>, StoreError> {
        Ok(self.chunks.borrow().get(&id).map(|c| ChunkStat {
            len: c.len() as u64,
        }))
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
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
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

    #[test]
    fn new_is_lazy_with_the_default_chunk_size() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
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
