//! The blocking client API: [`BenchFS`], for programs without an async runtime (a C
//! library, a thread per MPI rank).
//!
//! `BenchFS` is the blocking face of [`FsClient`]: each call runs the async client on the
//! handle's own current-thread runtime until it finishes. A handle belongs to one thread
//! (it owns that thread's UCX worker); a program with several threads opens one per thread,
//! as the C API and the FUSE mount do. Blocking reads and writes lend the caller's buffer
//! to UCX instead of copying it (see [`benchfs_ucx::lend`]); the async
//! [`crate::api::BenchFS`] cannot, since its futures may be dropped at any point. With
//! write-behind on (`client.write_behind_bytes`), a write copies instead, so that it can
//! return while its bytes are still on their way; with read-ahead on, bytes read ahead are
//! copied in from the handle's buffers.

use std::future::Future;
use std::path::Path;

use benchfs_config::registry::ServerEntry;
use benchfs_config::ServerConfig;
pub use benchfs_proto::meta::FileMetadata;

pub use crate::error::ApiError;
pub use crate::flags::OpenFlags;
pub use crate::fs::{DirEntry, Fd, FsClient, FsSpace, Whence};

/// A connection to a BenchFS cluster, for one thread.
pub struct BenchFS {
    // Dropped in this order: the client, then the tasks on the local set (their timers
    // leave the runtime's driver with them), then the runtime. A runtime dropped first
    // fires the timers still set and wakes their tasks, which needs tokio's thread-local
    // state: gone when a C API thread's client drops at thread exit (an abort).
    client: FsClient,
    local: tokio::task::LocalSet,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for BenchFS {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchFS")
            .field("client", &self.client)
            .finish()
    }
}

/// Makes tokio's per-thread state on this thread outlive a client that a caller keeps in
/// a thread-local of its own (a C API or FUSE thread's client): call it before that
/// thread-local first holds one. Thread-local destructors run in the reverse order of
/// first use, and a client dropped after tokio's state is gone wakes its tasks into it,
/// which aborts the process at thread exit. Cheap after the first call on a thread.
pub fn outlive_thread_locals() {
    thread_local! {
        static DONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if DONE.replace(true) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    // Driving a local set on a runtime touches them all: the runtime's context, the set's,
    // and the driver's own.
    benchfs_ucx::block_on(&runtime, &tokio::task::LocalSet::new(), async {
        tokio::task::spawn_local(async {}).await.ok();
    });
}

impl Drop for BenchFS {
    /// Waits for the calls still in flight (writes behind of handles never closed,
    /// fetches ahead) before the client's worker goes: UCX can crash destroying a worker
    /// under an operation in flight. Not while unwinding, when the runtime may be the
    /// thing that failed, nor from a thread-local destructor that runs after tokio's own
    /// (a C API or mount thread's client at thread exit), where no runtime can be entered.
    fn drop(&mut self) {
        if std::thread::panicking() || !self.client.has_in_flight() {
            return;
        }
        let runtime_gone =
            tokio::runtime::Handle::try_current().is_err_and(|e| e.is_thread_local_destroyed());
        if runtime_gone {
            tracing::warn!("a client went with calls in flight: its thread was exiting");
            return;
        }
        self.block_on(self.client.wait_in_flight());
    }
}

impl BenchFS {
    /// Connects to the servers published in `config.network.registry_dir`.
    pub fn connect(config: &ServerConfig) -> Result<BenchFS, ApiError> {
        Self::connect_with_secret(config, Vec::new())
    }

    /// Connects with the defaults (and `BENCHFS_*` variables), to the servers published in
    /// `registry_dir`.
    pub fn connect_registry(registry_dir: impl AsRef<Path>) -> Result<BenchFS, ApiError> {
        let mut config = ServerConfig::from_env()?;
        config.network.registry_dir = registry_dir.as_ref().to_path_buf();
        Self::connect(&config)
    }

    /// Connects, presenting `secret` in every handshake.
    pub fn connect_with_secret(
        config: &ServerConfig,
        secret: Vec<u8>,
    ) -> Result<BenchFS, ApiError> {
        Self::start(|| FsClient::connect(config, secret))
    }

    /// Connects to the servers in `entries` (a registry read once and shared by the
    /// threads of a process), presenting `secret` in every handshake.
    pub fn with_servers(
        config: &ServerConfig,
        entries: Vec<ServerEntry>,
        secret: Vec<u8>,
    ) -> Result<BenchFS, ApiError> {
        Self::start(|| FsClient::new(config, entries, secret))
    }

    fn start(connect: impl FnOnce() -> Result<FsClient, ApiError>) -> Result<BenchFS, ApiError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ApiError::Runtime)?;
        let local = tokio::task::LocalSet::new();
        let client = benchfs_ucx::block_on(&runtime, &local, async { connect() })?;
        Ok(BenchFS {
            runtime,
            local,
            client,
        })
    }

    /// Runs an async client operation to completion (for callers that want several
    /// operations in flight, like the benchmark driver).
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        benchfs_ucx::block_on(&self.runtime, &self.local, future)
    }

    /// The async client underneath.
    pub fn client(&self) -> &FsClient {
        &self.client
    }

    /// Creates (or truncates) a file and opens it for writing.
    pub fn create(&self, path: &str, mode: u32) -> Result<Fd, ApiError> {
        self.open(
            path,
            OpenFlags::CREATE | OpenFlags::WRITE | OpenFlags::TRUNC,
            mode,
        )
    }

    /// Opens a file.
    pub fn open(&self, path: &str, flags: OpenFlags, mode: u32) -> Result<Fd, ApiError> {
        self.block_on(self.client.open(path, flags, mode))
    }

    /// Closes a handle, publishing the file's size.
    pub fn close(&self, fd: Fd) -> Result<(), ApiError> {
        self.block_on(self.client.close(fd))
    }

    /// Reads at the handle's position. Replies are received into `buf` in place (unless
    /// the chunk cache is on), and the call returns once UCX has finished with it.
    pub fn read(&self, fd: Fd, buf: &mut [u8]) -> Result<usize, ApiError> {
        benchfs_ucx::lend_mut(
            buf,
            |loan| self.block_on(self.client.read_lent(fd, loan)),
            |loan| self.block_on(self.client.settle(loan)),
        )
    }

    /// Writes at the handle's position. The sends read `data` in place, with no copy, and
    /// no send reads it after the call. With write-behind on, the call returns once every
    /// send has read its bytes, before the servers answer (a failure surfaces at a later
    /// write, fsync or close); off, once the servers have them.
    pub fn write(&self, fd: Fd, data: &[u8]) -> Result<usize, ApiError> {
        benchfs_ucx::lend(
            data,
            |loan| self.block_on(self.client.write_lent(fd, loan)),
            |loan| self.block_on(self.client.settle(loan)),
        )
    }

    /// Reads at `offset`, receiving into `buf` in place as [`BenchFS::read`] does.
    pub fn pread(&self, fd: Fd, buf: &mut [u8], offset: u64) -> Result<usize, ApiError> {
        benchfs_ucx::lend_mut(
            buf,
            |loan| self.block_on(self.client.pread_lent(fd, loan, offset)),
            |loan| self.block_on(self.client.settle(loan)),
        )
    }

    /// Reads up to `buf.len()` bytes at `offset` of file `meta` (named `path`) with no
    /// handle, as far as `size`; received in place ([`FsClient::read_at`]).
    pub fn read_at(
        &self,
        path: &str,
        meta: FileMetadata,
        size: u64,
        buf: &mut [u8],
        offset: u64,
    ) -> Result<usize, ApiError> {
        benchfs_ucx::lend_mut(
            buf,
            |loan| self.block_on(self.client.read_at_lent(path, meta, size, loan, offset)),
            |loan| self.block_on(self.client.settle(loan)),
        )
    }

    /// Writes `data` at `offset` of file `meta` (named `path`) with no handle, sent in
    /// place; the size is the caller's to publish ([`FsClient::write_at`]).
    pub fn write_at(
        &self,
        path: &str,
        meta: FileMetadata,
        data: &[u8],
        offset: u64,
    ) -> Result<(), ApiError> {
        benchfs_ucx::lend(
            data,
            |loan| self.block_on(self.client.write_at_lent(path, meta, loan, offset)),
            |loan| self.block_on(self.client.settle(loan)),
        )
    }

    /// Appends `data` to file `meta` (named `path`) with no handle, at `floor` or later:
    /// the range is claimed on the record first, so appends of other clients at once never
    /// overlap it ([`FsClient::append_at_lent`]). Returns where the bytes went.
    pub fn append_at(
        &self,
        path: &str,
        meta: FileMetadata,
        data: &[u8],
        floor: u64,
    ) -> Result<u64, ApiError> {
        benchfs_ucx::lend(
            data,
            |loan| self.block_on(self.client.append_at_lent(path, meta, loan, floor)),
            |loan| self.block_on(self.client.settle(loan)),
        )
    }

    /// Writes at `offset`, reading `data` in place as [`BenchFS::write`] does.
    pub fn pwrite(&self, fd: Fd, data: &[u8], offset: u64) -> Result<usize, ApiError> {
        benchfs_ucx::lend(
            data,
            |loan| self.block_on(self.client.pwrite_lent(fd, loan, offset)),
            |loan| self.block_on(self.client.settle(loan)),
        )
    }

    /// Moves the handle's position.
    pub fn seek(&self, fd: Fd, offset: i64, whence: Whence) -> Result<u64, ApiError> {
        self.block_on(self.client.seek(fd, offset, whence))
    }

    /// Makes the handle's data and size durable.
    pub fn fsync(&self, fd: Fd) -> Result<(), ApiError> {
        self.block_on(self.client.fsync(fd))
    }

    /// Metadata of an open handle.
    pub fn fstat(&self, fd: Fd) -> Result<FileMetadata, ApiError> {
        self.block_on(self.client.fstat(fd))
    }

    /// Metadata of a path.
    pub fn stat(&self, path: &str) -> Result<FileMetadata, ApiError> {
        self.block_on(self.client.stat(path))
    }

    /// The space of the file system `path` lies in, as statfs(2) reports it.
    pub fn statfs(&self, path: &str) -> Result<FsSpace, ApiError> {
        self.block_on(self.client.statfs(path))
    }

    /// Removes a file.
    pub fn unlink(&self, path: &str) -> Result<(), ApiError> {
        self.block_on(self.client.unlink(path))
    }

    /// Creates a directory.
    pub fn mkdir(&self, path: &str, mode: u32) -> Result<(), ApiError> {
        self.block_on(self.client.mkdir(path, mode))
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, path: &str) -> Result<(), ApiError> {
        self.block_on(self.client.rmdir(path))
    }

    /// Lists a directory.
    pub fn readdir(&self, path: &str) -> Result<Vec<DirEntry>, ApiError> {
        self.block_on(self.client.readdir(path))
    }

    /// Cuts or extends a file.
    pub fn truncate(&self, path: &str, size: u64) -> Result<(), ApiError> {
        self.block_on(self.client.truncate(path, size))
    }

    /// Cuts or extends the file open as `fd`.
    pub fn ftruncate(&self, fd: Fd, size: u64) -> Result<(), ApiError> {
        self.block_on(self.client.ftruncate(fd, size))
    }

    /// Renames a file or an empty directory.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), ApiError> {
        self.block_on(self.client.rename(from, to))
    }
}
