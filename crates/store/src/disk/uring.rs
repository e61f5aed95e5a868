//! [`UringEngine`]: data moved by io_uring, with the store's buffer pool registered as
//! fixed buffers. The ring and its completions are in [`driver`].

mod driver;

use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use io_uring::{opcode, types};

use super::dir::ChunkFile;
use super::engine::{sealed, IoEngine};
use crate::buf::BufPool;
use crate::{ChunkBuf, StoreConfig, StoreError};
use driver::{Driver, Keep};

/// io_uring reads, writes and fsyncs, at most `queue_depth` in flight.
///
/// The store's buffer pool is registered with the ring as fixed buffer 0, so pool
/// buffers go by `ReadFixed`/`WriteFixed`; any other [`ChunkBuf`], or every buffer if the
/// kernel refused the registration (e.g. over `RLIMIT_MEMLOCK`), by plain `Read`/`Write`.
/// Must be opened and used inside a tokio runtime with I/O enabled.
pub struct UringEngine {
    // Drop order matters: the driver waits for in-flight ops before the pool mapping
    // (registered with its ring) can go.
    driver: Driver,
    pool: Rc<BufPool>,
    /// Whether `pool` is registered with the ring.
    fixed: bool,
}

impl sealed::Sealed for UringEngine {}

impl IoEngine for UringEngine {
    const READ_OP: &'static str = "io_uring read";
    const WRITE_OP: &'static str = "io_uring write";
    const FSYNC_OP: &'static str = "io_uring fsync";

    /// Fails with [`StoreError::Unsupported`] if this kernel has no usable io_uring.
    fn open(config: &StoreConfig, pool: &Rc<BufPool>) -> Result<UringEngine, StoreError> {
        let driver = Driver::new(config.queue_depth)?;
        // SAFETY: the engine keeps `pool` in a field declared after `driver`, so the
        // mapping outlives the ring; buffers handed out keep it alive longer still.
        let fixed = match unsafe { driver.register_region(pool.region()) } {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot register the buffer pool with io_uring; using unregistered I/O");
                false
            }
        };
        Ok(UringEngine {
            driver,
            pool: Rc::clone(pool),
            fixed,
        })
    }

    async fn read_at(
        &self,
        file: &Rc<ChunkFile>,
        buf: ChunkBuf,
        start: usize,
        offset: u64,
    ) -> (io::Result<usize>, ChunkBuf) {
        self.transfer(false, file, buf, start, offset).await
    }

    async fn write_at(
        &self,
        file: &Rc<ChunkFile>,
        buf: ChunkBuf,
        start: usize,
        offset: u64,
    ) -> (io::Result<usize>, ChunkBuf) {
        self.transfer(true, file, buf, start, offset).await
    }

    async fn fsync(&self, file: &Rc<ChunkFile>) -> io::Result<()> {
        let fd = types::Fd(file.buffered().as_raw_fd());
        let entry = opcode::Fsync::new(fd).build();
        let keep = Keep {
            buf: None,
            file: Rc::clone(file),
        };
        // SAFETY: the entry refers to no memory, and `fd` belongs to `keep.file`.
        let (result, _) = unsafe { self.driver.run(entry, keep) }.await;
        cqe_result(result).map(drop)
    }
}

impl UringEngine {
    /// Submits one read or write of `buf[start..]` at `offset` and waits for it.
    async fn transfer(
        &self,
        write: bool,
        file: &Rc<ChunkFile>,
        mut buf: ChunkBuf,
        start: usize,
        offset: u64,
    ) -> (io::Result<usize>, ChunkBuf) {
        let len = buf.len() - start;
        let len32 = u32::try_from(len).expect("requests are bounded by CHUNK_SIZE_MAX");
        let fd = types::Fd(file.fd_for(offset, &buf[start..]).as_raw_fd());
        // From `as_mut_ptr`, not the slice above: the kernel may write through it.
        let addr = buf.as_mut_ptr().wrapping_add(start);
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
            file: Rc::clone(file),
        };
        // SAFETY: `addr..addr+len` lies inside `buf`'s memory (registered buffer 0 when
        // `fixed`), and `fd` belongs to `file`; both move into `keep`, which the driver
        // holds until the CQE. Moving a ChunkBuf does not move its bytes.
        let (result, keep) = unsafe { self.driver.run(entry, keep) }.await;
        let buf = keep.buf.expect("the driver hands back what it was given");
        (cqe_result(result), buf)
    }
}

/// A CQE result (a count, or `-errno`) as an `io::Result`.
fn cqe_result(result: i32) -> io::Result<usize> {
    usize::try_from(result).map_err(|_| io::Error::from_raw_os_error(-result))
}

impl fmt::Debug for UringEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UringEngine")
            .field("fixed", &self.fixed)
            .finish_non_exhaustive()
    }
}
