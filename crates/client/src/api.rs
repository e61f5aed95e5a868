//! The client API: [`BenchFS`], its open flags and its error type.
//!
//! `BenchFS` is the blocking face of [`FsClient`]: each call runs the async client on the
//! handle's own current-thread runtime until it finishes. A handle belongs to one thread
//! (it owns that thread's UCX worker); a program with several threads opens one per thread,
//! as the C API and the FUSE mount do.

use std::future::Future;
use std::path::Path;

use benchfs_proto::Status;

pub use crate::fs::{DirEntry, Fd, FsClient, Whence};
use benchfs_config::{registry, ConfigError, ServerConfig};
pub use benchfs_proto::meta::FileMetadata;
use benchfs_proto::path::PathError;

/// A connection to a BenchFS cluster, for one thread.
pub struct BenchFS {
    runtime: tokio::runtime::Runtime,
    local: tokio::task::LocalSet,
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
        if secret.len() > benchfs_proto::ops::TOKEN_LEN_MAX {
            return Err(ApiError::Cluster(format!(
                "the job secret is {} bytes; at most {} are allowed",
                secret.len(),
                benchfs_proto::ops::TOKEN_LEN_MAX
            )));
        }
        let entries = registry::read(&config.network.registry_dir)
            .map_err(|e| ApiError::Cluster(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ApiError::Cluster(format!("runtime: {e}")))?;
        let local = tokio::task::LocalSet::new();
        let client = local.block_on(&runtime, async { FsClient::new(config, entries, secret) })?;
        Ok(BenchFS {
            runtime,
            local,
            client,
        })
    }

    /// Runs an async client operation to completion (for callers that want several
    /// operations in flight, like the benchmark driver).
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.local.block_on(&self.runtime, future)
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
    /// the call returns once UCX has finished with every byte of it.
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
        self.client.seek(fd, offset, whence)
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

    /// Renames a file or an empty directory.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), ApiError> {
        self.block_on(self.client.rename(from, to))
    }
}

/// How a file is opened; combine with `|`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct OpenFlags(u32);

impl OpenFlags {
    /// Open for reading.
    pub const READ: OpenFlags = OpenFlags(1);
    /// Open for writing.
    pub const WRITE: OpenFlags = OpenFlags(1 << 1);
    /// Create the file if it does not exist.
    pub const CREATE: OpenFlags = OpenFlags(1 << 2);
    /// Cut the file to zero length on open.
    pub const TRUNC: OpenFlags = OpenFlags(1 << 3);
    /// Every write goes to the end of the file.
    pub const APPEND: OpenFlags = OpenFlags(1 << 4);
    /// With CREATE: fail with EEXIST if the file exists.
    pub const EXCL: OpenFlags = OpenFlags(1 << 5);
    /// Read and write.
    pub const RDWR: OpenFlags = OpenFlags(Self::READ.0 | Self::WRITE.0);
    const ALL: u32 = (1 << 6) - 1;

    /// The raw bits.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Flags from raw bits; unknown bits are an error.
    pub fn from_bits(bits: u32) -> Option<OpenFlags> {
        (bits & !Self::ALL == 0).then_some(OpenFlags(bits))
    }

    /// Whether every flag in `other` is set.
    pub fn contains(self, other: OpenFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Flags from POSIX `open(2)` flags (O_RDONLY, O_WRONLY, O_RDWR, O_CREAT, O_TRUNC,
    /// O_APPEND, O_EXCL); other bits are ignored, as `open(2)` does.
    pub fn from_posix(flags: i32) -> OpenFlags {
        let mut out = match flags & libc::O_ACCMODE {
            libc::O_WRONLY => OpenFlags::WRITE,
            libc::O_RDWR => OpenFlags::RDWR,
            _ => OpenFlags::READ,
        };
        for (posix, ours) in [
            (libc::O_CREAT, OpenFlags::CREATE),
            (libc::O_TRUNC, OpenFlags::TRUNC),
            (libc::O_APPEND, OpenFlags::APPEND),
            (libc::O_EXCL, OpenFlags::EXCL),
        ] {
            if flags & posix != 0 {
                out = out | ours;
            }
        }
        out
    }
}

impl std::ops::BitOr for OpenFlags {
    type Output = OpenFlags;
    fn bitor(self, rhs: OpenFlags) -> OpenFlags {
        OpenFlags(self.0 | rhs.0)
    }
}

/// What a client call can fail with. Every variant has an errno.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The file system refused the operation.
    #[error("{op} {path}: {status}")]
    Fs {
        /// The operation, e.g. "open".
        op: &'static str,
        /// The path it was about.
        path: String,
        /// Why.
        status: Status,
    },
    /// A path was malformed.
    #[error("bad path {path:?}: {source}")]
    Path {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        source: PathError,
    },
    /// The configuration was not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No server could be found or reached.
    #[error("cluster: {0}")]
    Cluster(String),
}

impl ApiError {
    /// The POSIX errno that describes this error.
    pub fn errno(&self) -> i32 {
        match self {
            ApiError::Fs { status, .. } => status.errno(),
            ApiError::Path { source, .. } => source.status().errno(),
            ApiError::Config(_) => libc::EINVAL,
            ApiError::Cluster(_) => libc::EHOSTDOWN,
        }
    }

    /// The wire status, where the error has one.
    pub fn status(&self) -> Option<Status> {
        match self {
            ApiError::Fs { status, .. } => Some(*status),
            ApiError::Path { source, .. } => Some(source.status()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        let f = OpenFlags::from_posix(libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC);
        assert!(f.contains(OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNC));
        assert!(!f.contains(OpenFlags::READ));
        assert_eq!(OpenFlags::from_posix(libc::O_RDONLY), OpenFlags::READ);
        assert_eq!(
            OpenFlags::from_posix(libc::O_RDWR | libc::O_APPEND),
            OpenFlags::RDWR | OpenFlags::APPEND
        );
        assert_eq!(OpenFlags::from_bits(1 << 6), None);
        assert_eq!(OpenFlags::from_bits(3), Some(OpenFlags::RDWR));
    }

    #[test]
    fn errnos() {
        let e = ApiError::Fs {
            op: "rmdir",
            path: "/d".into(),
            status: Status::NotEmpty,
        };
        assert_eq!(e.errno(), libc::ENOTEMPTY);
        let e = ApiError::Path {
            path: "/x/..".into(),
            source: PathError::DotDot,
        };
        assert_eq!(e.errno(), libc::EINVAL);
    }
}
