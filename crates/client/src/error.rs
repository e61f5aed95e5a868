//! [`ApiError`]: what a client call fails with. Each variant keeps its typed cause (an
//! [`RpcError`] naming the server, a wire [`Status`], a path, registry, configuration or
//! UCX error), and [`ApiError::errno`] is the one place a C or FUSE caller's errno comes
//! from: every variant maps to a [`Status`], and [`Status::errno`] to the errno.

use std::path::PathBuf;

use benchfs_config::registry::RegistryError;
use benchfs_config::ConfigError;
use benchfs_proto::path::PathError;
use benchfs_proto::placement::PlacementError;
use benchfs_proto::Status;

use crate::rpc::RpcError;

/// What a client call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The client refused the operation itself (a bad handle, a write on a read-only
    /// handle, a directory opened for writing, ...), or a server answered an operation
    /// over several servers with this status.
    #[error("{op} {path}: {status}")]
    Fs {
        /// The operation, e.g. "open".
        op: &'static str,
        /// The path it was about (`#<fd>` for a handle).
        path: String,
        /// Why.
        status: Status,
    },
    /// A call to a server failed: no reply in time, a broken transport, a protocol
    /// error, or an error status. The source names the server.
    #[error("{op} {path}: {source}")]
    Rpc {
        /// The operation, e.g. "open".
        op: &'static str,
        /// The path it was about.
        path: String,
        /// The RPC's error.
        source: RpcError,
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
    /// The registry directory could not be read.
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
    /// The registry directory is missing or lists no server: none was started with it, or
    /// all have stopped.
    #[error("no BenchFS server is published in {dir}: start servers with `benchfsd --registry {dir}` (or `benchfs cluster up`), or point network.registry_dir at a running cluster's registry", dir = dir.display())]
    NoServers {
        /// The registry directory.
        dir: PathBuf,
    },
    /// The registry's servers do not form a valid ring (e.g. two share a node tag).
    #[error("placement ring: {0}")]
    Ring(#[from] PlacementError),
    /// The client's UCX context or worker could not start.
    #[error("UCX: {0}")]
    Transport(#[from] benchfs_ucx::UcxError),
    /// The client's event loop could not start.
    #[error("client runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// A chunk size asked for the files a client creates is above the servers': their
    /// stores take no larger chunk.
    #[error("chunk size {bytes} is above the servers' {servers} bytes: files take the servers' chunk size or a smaller power of two (down to {min})", min = benchfs_proto::limits::CHUNK_SIZE_MIN)]
    ChunkSizeAboveServers {
        /// The chunk size asked for.
        bytes: u64,
        /// The servers' chunk size.
        servers: u64,
    },
    /// A write or truncate would make the file larger than [`FILE_SIZE_MAX`](benchfs_proto::limits::FILE_SIZE_MAX) bytes (EFBIG).
    #[error("{op} {path}: the file would end at byte {end}, past the largest file size ({max} bytes)", max = benchfs_proto::limits::FILE_SIZE_MAX)]
    FileTooLarge {
        /// The operation.
        op: &'static str,
        /// The file.
        path: String,
        /// Where the file would end.
        end: u128,
    },
    /// The job secret does not fit the handshake.
    #[error("the job secret is {len} bytes; at most {max} are allowed")]
    SecretTooLong {
        /// The secret's length.
        len: usize,
        /// The most the handshake carries.
        max: usize,
    },
}

impl ApiError {
    /// The POSIX errno that describes this error: [`Status::errno`] of
    /// [`ApiError::cause_status`]. An unreachable cluster gives the same errno (EIO)
    /// whether it is found at connect time or in the middle of a call.
    pub fn errno(&self) -> i32 {
        match self {
            ApiError::FileTooLarge { .. } => libc::EFBIG,
            _ => self.cause_status().errno(),
        }
    }

    /// The wire status, where the error has one: a server's or the client's answer about
    /// a file, or a malformed path.
    pub fn status(&self) -> Option<Status> {
        match self {
            ApiError::Fs { status, .. } => Some(*status),
            ApiError::Rpc { source, .. } => Some(source.status()),
            ApiError::Path { source, .. } => Some(source.status()),
            _ => None,
        }
    }

    /// Whether the call's path named no file, or another file than the caller's (removed
    /// or renamed meanwhile).
    pub fn is_gone(&self) -> bool {
        matches!(self.status(), Some(Status::NotFound | Status::Stale))
    }

    /// The status every error maps to, including those with no wire status: a cluster
    /// that cannot be reached is `Unavailable`, a bad setting `InvalidArgument`.
    pub fn cause_status(&self) -> Status {
        if let Some(status) = self.status() {
            return status;
        }
        match self {
            ApiError::Config(_)
            | ApiError::SecretTooLong { .. }
            | ApiError::ChunkSizeAboveServers { .. }
            | ApiError::FileTooLarge { .. }
            | ApiError::Ring(_) => Status::InvalidArgument,
            ApiError::Runtime(_) => Status::Io,
            _ => Status::Unavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(error: ApiError, errno: i32) {
        assert_eq!(error.errno(), errno, "{error}");
    }

    #[test]
    fn errnos() {
        check(
            ApiError::Fs {
                op: "rmdir",
                path: "/d".into(),
                status: Status::NotEmpty,
            },
            libc::ENOTEMPTY,
        );
        check(
            ApiError::Path {
                path: "/x/..".into(),
                source: PathError::DotDot,
            },
            libc::EINVAL,
        );
        check(
            ApiError::Rpc {
                op: "open",
                path: "/f".into(),
                source: RpcError::Status {
                    server: "n0".into(),
                    status: Status::Exists,
                },
            },
            libc::EEXIST,
        );
        check(ApiError::SecretTooLong { len: 9, max: 8 }, libc::EINVAL);
    }

    /// An unreachable cluster at connect time gives the errno of an unreachable server
    /// mid-call (`RpcError::Transport` is `Status::Unavailable`).
    #[test]
    fn unreachable_is_one_errno() {
        let at_connect = ApiError::NoServers { dir: "/r".into() };
        assert_eq!(at_connect.errno(), Status::Unavailable.errno());
        assert_eq!(at_connect.errno(), libc::EIO);
    }
}
