//! The async client API: [`BenchFS`], for programs on a tokio current-thread runtime.
//!
//! ```no_run
//! use benchfs_client::api::{BenchFS, OpenFlags};
//! use benchfs_config::ServerConfig;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ServerConfig::from_file("benchfs.toml")?;
//! let fs = BenchFS::new(config).await?;
//! let fd = fs.create("/test.txt", OpenFlags::CREATE | OpenFlags::WRITE).await?;
//! let written = fs.write(fd, b"Hello, BenchFS!").await?;
//! fs.close(fd).await?;
//! # Ok(())
//! # }
//! ```
//!
//! A `BenchFS` is the same [`FsClient`] the blocking [`crate::blocking::BenchFS`] wraps;
//! it brings its own `LocalSet`, in which the client's UCX progress and reply tasks run
//! while one of its calls is awaited, so it works under `#[tokio::main(flavor =
//! "current_thread")]` with no set-up. It is `!Send`: it owns this thread's UCX worker.
//! Reads and writes copy the caller's bytes once, since a future may be dropped at any
//! point; the blocking API lends them to UCX instead. Close every handle, or await
//! [`FsClient::wait_in_flight`], before dropping a `BenchFS`: writes behind and fetches
//! ahead may still be in flight, and the client's worker should not go under them (the
//! blocking `BenchFS` waits for them when dropped).

use std::future::Future;

use benchfs_config::ServerConfig;
pub use benchfs_proto::meta::FileMetadata;
use tokio::task::LocalSet;

pub use crate::error::ApiError;
pub use crate::flags::OpenFlags;
pub use crate::fs::{DirEntry, Fd, FsClient, FsSpace, Whence};

/// Mode of files `create` and `open` make: read-write for the owner, readable by others.
pub const FILE_MODE_DEFAULT: u32 = 0o644;

/// An async connection to a BenchFS cluster, for one thread.
pub struct BenchFS {
    local: LocalSet,
    client: FsClient,
}

impl std::fmt::Debug for BenchFS {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchFS")
            .field("client", &self.client)
            .finish()
    }
}

impl BenchFS {
    /// Connects to the servers published in `config.network.registry_dir`. A registry
    /// that is missing or empty is [`ApiError::NoServers`], whose message says what to do.
    pub async fn new(config: ServerConfig) -> Result<BenchFS, ApiError> {
        Self::with_secret(&config, Vec::new()).await
    }

    /// Connects, presenting `secret` in every handshake.
    pub async fn with_secret(config: &ServerConfig, secret: Vec<u8>) -> Result<BenchFS, ApiError> {
        let local = LocalSet::new();
        let client = local
            .run_until(async { FsClient::connect(config, secret) })
            .await?;
        Ok(BenchFS { local, client })
    }

    /// Runs a client future with the client's background tasks.
    // Boxed at once: each operation's future is some KiB, and held inline (`run_until`
    // holds its future twice) it was copied whole at each of the awaits above it.
    fn run<'a, F: Future + 'a>(&'a self, future: F) -> impl Future<Output = F::Output> + 'a {
        self.local.run_until(Box::pin(future))
    }

    /// The async client underneath, for several operations in flight at once (run them
    /// inside [`BenchFS::run_with`]).
    pub fn client(&self) -> &FsClient {
        &self.client
    }

    /// Runs `future`, which may use [`BenchFS::client`], with the client's background
    /// tasks: for callers that want several operations in flight.
    pub async fn run_with<F: Future>(&self, future: F) -> F::Output {
        self.run(future).await
    }

    /// Creates a file, or truncates one that exists, and opens it with `flags` (which
    /// should allow writing); its mode is [`FILE_MODE_DEFAULT`].
    pub async fn create(&self, path: &str, flags: OpenFlags) -> Result<Fd, ApiError> {
        let flags = flags | OpenFlags::CREATE | OpenFlags::TRUNC;
        self.open_with_mode(path, flags, FILE_MODE_DEFAULT).await
    }

    /// Opens a file; with [`OpenFlags::CREATE`], a file it makes gets [`FILE_MODE_DEFAULT`].
    pub async fn open(&self, path: &str, flags: OpenFlags) -> Result<Fd, ApiError> {
        self.open_with_mode(path, flags, FILE_MODE_DEFAULT).await
    }

    /// Opens a file; with [`OpenFlags::CREATE`], a file it makes gets `mode`.
    pub async fn open_with_mode(
        &self,
        path: &str,
        flags: OpenFlags,
        mode: u32,
    ) -> Result<Fd, ApiError> {
        self.run(self.client.open(path, flags, mode)).await
    }

    /// Closes a handle, publishing the file's size.
    pub async fn close(&self, fd: Fd) -> Result<(), ApiError> {
        self.run(self.client.close(fd)).await
    }

    /// Reads at the handle's position and advances it; returns the bytes read, 0 at the
    /// end of the file.
    pub async fn read(&self, fd: Fd, buf: &mut [u8]) -> Result<usize, ApiError> {
        self.run(self.client.read(fd, buf)).await
    }

    /// Writes at the handle's position (the end, with APPEND) and advances it.
    pub async fn write(&self, fd: Fd, data: &[u8]) -> Result<usize, ApiError> {
        self.run(self.client.write(fd, data)).await
    }

    /// Reads at `offset`.
    pub async fn pread(&self, fd: Fd, buf: &mut [u8], offset: u64) -> Result<usize, ApiError> {
        self.run(self.client.pread(fd, buf, offset)).await
    }

    /// Writes at `offset`.
    pub async fn pwrite(&self, fd: Fd, data: &[u8], offset: u64) -> Result<usize, ApiError> {
        self.run(self.client.pwrite(fd, data, offset)).await
    }

    /// Moves the handle's position.
    pub async fn seek(&self, fd: Fd, offset: i64, whence: Whence) -> Result<u64, ApiError> {
        self.run(self.client.seek(fd, offset, whence)).await
    }

    /// Makes the handle's data and size durable.
    pub async fn fsync(&self, fd: Fd) -> Result<(), ApiError> {
        self.run(self.client.fsync(fd)).await
    }

    /// Metadata of an open handle.
    pub async fn fstat(&self, fd: Fd) -> Result<FileMetadata, ApiError> {
        self.run(self.client.fstat(fd)).await
    }

    /// Metadata of a path.
    pub async fn stat(&self, path: &str) -> Result<FileMetadata, ApiError> {
        self.run(self.client.stat(path)).await
    }

    /// The space of the file system `path` lies in, as statfs(2) reports it.
    pub async fn statfs(&self, path: &str) -> Result<FsSpace, ApiError> {
        self.run(self.client.statfs(path)).await
    }

    /// Removes a file.
    pub async fn unlink(&self, path: &str) -> Result<(), ApiError> {
        self.run(self.client.unlink(path)).await
    }

    /// Creates a directory.
    pub async fn mkdir(&self, path: &str, mode: u32) -> Result<(), ApiError> {
        self.run(self.client.mkdir(path, mode)).await
    }

    /// Removes an empty directory.
    pub async fn rmdir(&self, path: &str) -> Result<(), ApiError> {
        self.run(self.client.rmdir(path)).await
    }

    /// Lists a directory.
    pub async fn readdir(&self, path: &str) -> Result<Vec<DirEntry>, ApiError> {
        self.run(self.client.readdir(path)).await
    }

    /// Cuts or extends a file.
    pub async fn truncate(&self, path: &str, size: u64) -> Result<(), ApiError> {
        self.run(self.client.truncate(path, size)).await
    }

    /// Renames a file or an empty directory.
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), ApiError> {
        self.run(self.client.rename(from, to)).await
    }
}
