//! [`IoUringChunkStore`]: one file per chunk, data moved by io_uring with registered
//! buffers and optional O_DIRECT.

mod driver;

use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use io_uring::{opcode, types};

use crate::buf::BufPool;
use crate::disk::{ChunkDir, ChunkFile};
use crate::limits::RETRIES_MAX;
use crate::{ChunkBuf, ChunkId, ChunkStat, ChunkStore, StoreConfig, StoreError, StoreUsage};
use driver::{Driver, Keep};

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
/// Must be opened and used inside a tokio runtime with I/O enabled.
pub struct IoUringChunkStore {
    // Drop order matters: the driver waits for in-flight ops before the pool mapping
    // (registered with its ring) can go.
    driver: Driver,
    dir: ChunkDir,
    pool: Rc<BufPool>,
    fixed: bool,
}

impl IoUringChunkStore {
    /// Opens (creating if needed) the store under `config.data_dir` and indexes the
    /// chunks already there. Fails with [`StoreError::Unsupported`] if this kernel has
    /// no usable io_uring, or if O_DIRECT is asked for on a file system without it.
    pub fn open(config: &StoreConfig) -> Result<IoUringChunkStore, StoreError> {
        config.validate()?;
        let driver = Driver::new(config.queue_depth)?;
        let dir = ChunkDir::open(config)?;
        let queue_depth = config.queue_depth as usize;
        let pool = BufPool::for_chunks(config.chunk_size, queue_depth)?;
        // SAFETY: `pool` is a field declared after `driver`, so the mapping outlives the
        // ring; buffers handed out keep it alive longer still.
        let fixed = match unsafe { driver.register_region(pool.region()) } {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot register the buffer pool with io_uring; using unregistered I/O");
                false
            }
        };
        Ok(IoUringChunkStore {
            driver,
            dir,
            pool,
            fixed,
        })
    }

    /// Start and length of the one mapping every pooled [`ChunkBuf`] lives in, for the
    /// RPC layer to register with UCX. It stays mapped while the store or any of its
    /// buffers lives.
    pub fn registered_region(&self) -> Option<(*const u8, usize)> {
        Some(self.pool.region())
    }

    /// Whether the pool is registered with the ring (fixed-buffer ops). False when the
    /// kernel refused, e.g. over `RLIMIT_MEMLOCK`.
    pub fn uses_fixed_buffers(&self) -> bool {
        self.fixed
    }

    /// Submits one read or write of `buf[done..]` at `offset` and waits for it.
    async fn transfer(
        &self,
        write: bool,
        file: Rc<ChunkFile>,
        mut buf: ChunkBuf,
        done: usize,
        offset: u64,
    ) -> (i32, Rc<ChunkFile>, ChunkBuf) {
        let len = buf.len() - done;
        let len32 = u32::try_from(len).expect("requests are bounded by CHUNK_SIZE_MAX");
        let addr = buf.as_mut_ptr().wrapping_add(done);
        let fd = types::Fd(file.fd_for(offset, len, addr).as_raw_fd());
        let fixed = self.fixed && buf.in_pool(&self.pool);
        let entry = match (write, fixed) {
            (true, true) => opcode::WriteFixed::new(fd, addr, len32, 0)
                .offset(offset)
                .build(),
            (true, false) => opcode::Write::new(fd, addr, len32).offset(offset).build(),
            (false, true) => opcode::ReadFixed::new(fd, addr, len32, 0)
                .offset(offset)
                .build(),
            (false, false) => opcode::Read::new(fd, addr, len32).offset(offset).build(),
        };
        let keep = Keep {
            buf: Some(buf),
            file,
        };
        // SAFETY: `addr..addr+len` lies inside `buf`'s memory (registered buffer 0 when
        // `fixed`), and `fd` belongs to `file`; both move into `keep`, which the driver
        // holds until the CQE. Moving a ChunkBuf does not move its bytes.
        let (result, keep) = unsafe { self.driver.run(entry, keep) }.await;
        let buf = keep.buf.expect("the driver hands back what it was given");
        (result, keep.file, buf)
    }
}

/// Whether a negative CQE result is worth resubmitting as is.
fn transient(errno: i32) -> bool {
    errno == libc::EINTR || errno == libc::EAGAIN
}

impl ChunkStore for IoUringChunkStore {
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
        let mut file = match self.dir.begin_write(id, offset, buf.len()) {
            Ok(Some(file)) => file,
            Ok(None) => return (Ok(()), buf),
            Err(e) => return (Err(e), buf),
        };
        let len = buf.len();
        let mut done = 0;
        let mut retries = 0;
        while done < len {
            let result;
            (result, file, buf) = self
                .transfer(true, file, buf, done, offset + done as u64)
                .await;
            match result {
                n if n > 0 => done += n as usize,
                0 => {
                    self.dir.refresh(id, &file);
                    let source = io::Error::from(io::ErrorKind::WriteZero);
                    return (
                        Err(StoreError::Io {
                            op: "io_uring write",
                            source,
                        }),
                        buf,
                    );
                }
                n if transient(-n) && retries < RETRIES_MAX => retries += 1,
                n => {
                    self.dir.refresh(id, &file);
                    let source = io::Error::from_raw_os_error(-n);
                    let needed = (len - done) as u64;
                    return (Err(StoreError::io("io_uring write", source, needed)), buf);
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
        let mut file = match self.dir.begin_read(id, offset, buf.len()) {
            Ok(Some(file)) => file,
            Ok(None) => return (Ok(0), buf),
            Err(e) => return (Err(e), buf),
        };
        let len = buf.len();
        let mut done = 0;
        let mut retries = 0;
        while done < len {
            let result;
            (result, file, buf) = self
                .transfer(false, file, buf, done, offset + done as u64)
                .await;
            match result {
                n if n > 0 => done += n as usize,
                0 => break,
                n if transient(-n) && retries < RETRIES_MAX => retries += 1,
                n => {
                    let source = io::Error::from_raw_os_error(-n);
                    return (Err(StoreError::io("io_uring read", source, 0)), buf);
                }
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
        for (id, file) in self.dir.take_dirty()? {
            let fd = types::Fd(file.buffered().as_raw_fd());
            let entry = opcode::Fsync::new(fd).build();
            let keep = Keep { buf: None, file };
            // SAFETY: the entry refers to no memory, and `fd` belongs to `keep.file`.
            let (result, _) = unsafe { self.driver.run(entry, keep) }.await;
            if result < 0 {
                self.dir.mark_dirty(id);
                let source = io::Error::from_raw_os_error(-result);
                return Err(StoreError::io("io_uring fsync", source, 0));
            }
        }
        self.dir.sync_dirs()
    }

    fn usage(&self) -> StoreUsage {
        self.dir.usage()
    }
}

impl std::fmt::Debug for IoUringChunkStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoUringChunkStore")
            .field("dir", &self.dir)
            .field("fixed", &self.fixed)
            .finish_non_exhaustive()
    }
}
