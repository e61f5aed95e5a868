//! [`InMemoryChunkStore`]: chunks as vectors in a map, bounded by a byte capacity.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::buf::BufPool;
use crate::limits::MEMORY_POOL_IN_FLIGHT;
use crate::{check_chunk_size, check_range, ChunkBuf, ChunkId, ChunkStat, ChunkStore};
use crate::{StoreError, StoreUsage};

/// Chunks held in memory. Writes and truncates that would take the total past the
/// capacity fail with [`StoreError::NoSpace`] and change nothing. Holes are stored as
/// zeros and count as used.
#[derive(Debug)]
pub struct InMemoryChunkStore {
    chunk_size: u64,
    capacity_bytes: u64,
    chunks: RefCell<BTreeMap<ChunkId, Vec<u8>>>,
    used_bytes: Cell<u64>,
    pool: Rc<BufPool>,
}

impl InMemoryChunkStore {
    /// An empty store; `capacity_bytes == u64::MAX` means unbounded.
    pub fn new(chunk_size: u64, capacity_bytes: u64) -> Result<InMemoryChunkStore, StoreError> {
        check_chunk_size(chunk_size)?;
        Ok(InMemoryChunkStore {
            chunk_size,
            capacity_bytes,
            chunks: RefCell::new(BTreeMap::new()),
            used_bytes: Cell::new(0),
            pool: BufPool::for_chunks(chunk_size, MEMORY_POOL_IN_FLIGHT)?,
        })
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
        Ok(self.pool.take_or_heap(len))
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
