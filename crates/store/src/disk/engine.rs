//! [`IoEngine`]: the few calls in which the disk stores differ, and [`StdEngine`], the
//! blocking `pread`/`pwrite` one. The io_uring engine is in [`uring`](super::uring).

use std::io;
use std::os::unix::fs::FileExt;
use std::rc::Rc;

use super::dir::ChunkFile;
use crate::buf::BufPool;
use crate::{ChunkBuf, StoreConfig, StoreError};

/// How a [`DiskChunkStore`](super::DiskChunkStore) moves bytes between its buffers and
/// its chunk files: one positioned read or write per call, and fsync.
///
/// The store does everything else once for every engine: range and capacity checks, the
/// chunk directory, resubmitting short transfers for the rest, and retrying `EINTR` and
/// `EAGAIN`. So an engine makes exactly one attempt per call and may move fewer bytes
/// than asked.
///
/// Buffers move by value and come back with the result, so an engine that hands the
/// kernel a pointer (io_uring) can keep the buffer until the kernel is done with it, even
/// if the caller's future is dropped. Implemented by [`StdEngine`] and
/// [`UringEngine`](super::UringEngine) only (sealed).
#[allow(async_fn_in_trait)]
pub trait IoEngine: Sized + sealed::Sealed {
    /// What errors call this engine's reads, e.g. `"pread"`.
    const READ_OP: &'static str;
    /// What errors call this engine's writes, e.g. `"pwrite"`.
    const WRITE_OP: &'static str;
    /// What errors call this engine's fsyncs, e.g. `"fsync"`.
    const FSYNC_OP: &'static str;

    /// Sets the engine up for a store opened with `config`, whose buffers come from
    /// `pool`.
    fn open(config: &StoreConfig, pool: &Rc<BufPool>) -> Result<Self, StoreError>;

    /// Reads into `buf[start..]` from `file` at `offset`; returns the bytes read, 0 at
    /// the end of the file.
    async fn read_at(
        &self,
        file: &Rc<ChunkFile>,
        buf: ChunkBuf,
        start: usize,
        offset: u64,
    ) -> (io::Result<usize>, ChunkBuf);

    /// Writes `buf[start..]` to `file` at `offset`; returns the bytes written.
    async fn write_at(
        &self,
        file: &Rc<ChunkFile>,
        buf: ChunkBuf,
        start: usize,
        offset: u64,
    ) -> (io::Result<usize>, ChunkBuf);

    /// Makes `file`'s data and length durable.
    async fn fsync(&self, file: &Rc<ChunkFile>) -> io::Result<()>;
}

pub(super) mod sealed {
    /// Keeps [`IoEngine`](super::IoEngine) to this crate's engines: the store's
    /// correctness rests on each making one attempt per call and owning what the kernel
    /// uses.
    pub trait Sealed {}
}

/// Blocking `pread`/`pwrite`/`fsync` through `std::fs`, on the runtime thread: the
/// baseline the io_uring engine is measured against.
#[derive(Debug)]
pub struct StdEngine {
    // Only this module builds one.
    _private: (),
}

impl sealed::Sealed for StdEngine {}

impl IoEngine for StdEngine {
    const READ_OP: &'static str = "pread";
    const WRITE_OP: &'static str = "pwrite";
    const FSYNC_OP: &'static str = "fsync";

    fn open(_config: &StoreConfig, _pool: &Rc<BufPool>) -> Result<StdEngine, StoreError> {
        Ok(StdEngine { _private: () })
    }

    async fn read_at(
        &self,
        file: &Rc<ChunkFile>,
        mut buf: ChunkBuf,
        start: usize,
        offset: u64,
    ) -> (io::Result<usize>, ChunkBuf) {
        let fd = file.fd_for(offset, &buf[start..]);
        let result = fd.read_at(&mut buf[start..], offset);
        (result, buf)
    }

    async fn write_at(
        &self,
        file: &Rc<ChunkFile>,
        buf: ChunkBuf,
        start: usize,
        offset: u64,
    ) -> (io::Result<usize>, ChunkBuf) {
        let fd = file.fd_for(offset, &buf[start..]);
        let result = fd.write_at(&buf[start..], offset);
        (result, buf)
    }

    async fn fsync(&self, file: &Rc<ChunkFile>) -> io::Result<()> {
        file.buffered().sync_all()
    }
}
