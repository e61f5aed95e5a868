//! [`FileChunkStore`]: one plain file per chunk, through `std::fs`.

use std::io;
use std::os::unix::fs::FileExt;

use crate::buf::BufPool;
use crate::disk::ChunkDir;
use crate::limits::RETRIES_MAX;
use crate::{ChunkBuf, ChunkId, ChunkStat, ChunkStore, StoreConfig, StoreError, StoreUsage};

/// Chunks as plain files under `data_dir`, read and written with `pread`/`pwrite`.
///
/// Every call is a blocking system call on the runtime thread; this is the baseline the
/// io_uring store is measured against. With `o_direct`, aligned requests use an O_DIRECT
/// descriptor and unaligned ones a buffered descriptor of the same file.
#[derive(Debug)]
pub struct FileChunkStore {
    dir: ChunkDir,
    pool: std::rc::Rc<BufPool>,
}

impl FileChunkStore {
    /// Opens (creating if needed) the store under `config.data_dir` and indexes the
    /// chunks already there.
    pub fn open(config: &StoreConfig) -> Result<FileChunkStore, StoreError> {
        Ok(FileChunkStore {
            dir: ChunkDir::open(config)?,
            pool: BufPool::for_chunks(config.chunk_size, config.queue_depth as usize)?,
        })
    }
}

/// Whether a failed call is worth repeating as is.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
    )
}

impl ChunkStore for FileChunkStore {
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
        mut buf: ChunkBuf,
    ) -> (Result<(), StoreError>, ChunkBuf) {
        let file = match self.dir.begin_write(id, offset, buf.len()) {
            Ok(Some(file)) => file,
            Ok(None) => return (Ok(()), buf),
            Err(e) => return (Err(e), buf),
        };
        let len = buf.len();
        let mut done = 0;
        let mut retries = 0;
        while done < len {
            let addr = buf.as_mut_ptr().wrapping_add(done).cast_const();
            let fd = file.fd_for(offset + done as u64, len - done, addr);
            match fd.write_at(&buf[done..], offset + done as u64) {
                Ok(0) => {
                    self.dir.refresh(id, &file);
                    let source = io::Error::from(io::ErrorKind::WriteZero);
                    return (
                        Err(StoreError::Io {
                            op: "pwrite",
                            source,
                        }),
                        buf,
                    );
                }
                Ok(n) => done += n,
                Err(e) if transient(&e) && retries < RETRIES_MAX => retries += 1,
                Err(e) => {
                    self.dir.refresh(id, &file);
                    return (Err(StoreError::io("pwrite", e, (len - done) as u64)), buf);
                }
            }
        }
        self.dir.mark_dirty(id);
        (Ok(()), buf)
    }

    async fn read(
        &self,
        id: ChunkId,
        offset: u64,
        mut buf: ChunkBuf,
    ) -> (Result<usize, StoreError>, ChunkBuf) {
        let file = match self.dir.begin_read(id, offset, buf.len()) {
            Ok(Some(file)) => file,
            Ok(None) => return (Ok(0), buf),
            Err(e) => return (Err(e), buf),
        };
        let len = buf.len();
        let mut done = 0;
        let mut retries = 0;
        while done < len {
            let addr = buf.as_mut_ptr().wrapping_add(done).cast_const();
            let fd = file.fd_for(offset + done as u64, len - done, addr);
            match fd.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if transient(&e) && retries < RETRIES_MAX => retries += 1,
                Err(e) => return (Err(StoreError::io("pread", e, 0)), buf),
            }
        }
        (Ok(done), buf)
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

    async fn sync(&self) -> Result<(), StoreError> {
        for (_, file) in self.dir.take_dirty()? {
            file.buffered()
                .sync_all()
                .map_err(|e| StoreError::io("fsync", e, 0))?;
        }
        self.dir.sync_dirs()
    }

    fn usage(&self) -> StoreUsage {
        self.dir.usage()
    }
}
