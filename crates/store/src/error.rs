//! The chunk-store error type and its one mapping to a wire [`Status`].

use std::io;

use benchfs_proto::Status;

/// Why a chunk-store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store's capacity, or the disk under it, has no room for the request.
    /// `available` is 0 when the disk itself reported `ENOSPC`.
    #[error("no space: {needed} bytes needed, {available} available")]
    NoSpace {
        /// Bytes the request would have added.
        needed: u64,
        /// Bytes still free under the capacity.
        available: u64,
    },
    /// The request reaches past the end of a chunk (`offset + len > chunk_size`).
    #[error("range {offset}+{len} is beyond the chunk size {chunk_size}")]
    OutOfRange {
        /// First byte of the request within the chunk.
        offset: u64,
        /// Length of the request.
        len: u64,
        /// The store's chunk size.
        chunk_size: u64,
    },
    /// A system call failed; `op` names it.
    #[error("{op} failed: {source}")]
    Io {
        /// The call that failed, e.g. `"pwrite"` or `"io_uring read"`.
        op: &'static str,
        /// The error the kernel returned.
        #[source]
        source: io::Error,
    },
    /// A kernel or file-system feature the configuration asks for is missing.
    #[error("{feature} is not supported here: {reason}")]
    Unsupported {
        /// The missing feature, e.g. `"io_uring"` or `"O_DIRECT"`.
        feature: &'static str,
        /// What failed and what to do about it.
        reason: String,
    },
    /// A chunk the store holds is gone from its data directory (removed by hand, a
    /// file system that lost it): its bytes are lost, and answering its range as a hole
    /// would give zeros for them.
    #[error("chunk {chunk}'s file vanished from the data directory: its bytes are lost")]
    Vanished {
        /// The chunk.
        chunk: crate::ChunkId,
    },
    /// A configuration value is out of bounds.
    #[error("invalid config `{field}`: {reason}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// Why it was rejected.
        reason: String,
    },
}

/// The status a client is sent for a store error, decided by the variant: whose fault it
/// is (the request's, the device's, the server's) is known here, not from an errno.
///
/// **Invariant:** this is the only place a store error becomes a status;
/// [`StoreError::errno`] goes through it and [`Status::errno`].
impl From<&StoreError> for Status {
    fn from(e: &StoreError) -> Status {
        match e {
            // The store, or the disk under it, is full.
            StoreError::NoSpace { .. } => Status::NoSpace,
            // The request reaches past the chunk: the client's argument is wrong.
            StoreError::OutOfRange { .. } => Status::InvalidArgument,
            // The device or file system failed. Only errnos that say so unambiguously keep
            // their meaning (a full disk or quota, an operation the kernel lacks, a file
            // system gone read-only); every
            // other one, EINVAL and EBADF included, is the server's failure and never the
            // client's argument or handle.
            StoreError::Io { source, .. } => match source.raw_os_error() {
                Some(libc::ENOSPC | libc::EDQUOT) => Status::NoSpace,
                Some(libc::EOPNOTSUPP | libc::ENOSYS) => Status::Unsupported,
                Some(libc::EROFS) => Status::ReadOnly,
                _ => Status::Io,
            },
            // The kernel or file system lacks a feature the server's configuration needs.
            StoreError::Unsupported { .. } => Status::Unsupported,
            // Bytes this server held are gone: another replica may hold them.
            StoreError::Vanished { .. } => Status::Lost,
            // The server's own configuration is wrong; no request value causes it, so the
            // client sees a server failure, not an invalid argument.
            StoreError::InvalidConfig { .. } => Status::Io,
        }
    }
}

impl StoreError {
    /// The errno a client sees for this error: `Status::from(self).errno()`.
    pub fn errno(&self) -> i32 {
        Status::from(self).errno()
    }

    /// Wraps an I/O error, turning `ENOSPC` into [`StoreError::NoSpace`] for `needed` bytes.
    pub(crate) fn io(op: &'static str, source: io::Error, needed: u64) -> StoreError {
        if source.raw_os_error() == Some(libc::ENOSPC) {
            StoreError::NoSpace {
                needed,
                available: 0,
            }
        } else {
            StoreError::Io { op, source }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(error: StoreError, expected: i32) {
        assert_eq!(error.errno(), expected, "{error}");
        assert_eq!(Status::from(&error).errno(), expected, "{error}");
    }

    #[test]
    fn errno() {
        check(
            StoreError::NoSpace {
                needed: 1,
                available: 0,
            },
            libc::ENOSPC,
        );
        check(
            StoreError::io("pwrite", io::Error::from_raw_os_error(libc::ENOSPC), 4),
            libc::ENOSPC,
        );
        // A kernel errno from the device is the server's failure, not the client's handle
        // or argument.
        check(
            StoreError::io("pread", io::Error::from_raw_os_error(libc::EBADF), 4),
            libc::EIO,
        );
        check(
            StoreError::io("pwrite", io::Error::from_raw_os_error(libc::EINVAL), 4),
            libc::EIO,
        );
        check(StoreError::io("pread", io::Error::other("x"), 4), libc::EIO);
        check(
            StoreError::OutOfRange {
                offset: 1,
                len: 2,
                chunk_size: 2,
            },
            libc::EINVAL,
        );
        check(
            StoreError::InvalidConfig {
                field: "queue_depth",
                reason: "0".into(),
            },
            libc::EIO,
        );
        check(
            StoreError::Unsupported {
                feature: "io_uring",
                reason: "old kernel".into(),
            },
            libc::EOPNOTSUPP,
        );
    }

    #[test]
    fn status_by_variant() {
        let io = |errno| StoreError::Io {
            op: "pwrite",
            source: io::Error::from_raw_os_error(errno),
        };
        assert_eq!(Status::from(&io(libc::ENOSPC)), Status::NoSpace);
        assert_eq!(Status::from(&io(libc::EDQUOT)), Status::NoSpace);
        assert_eq!(Status::from(&io(libc::EOPNOTSUPP)), Status::Unsupported);
        assert_eq!(Status::from(&io(libc::EROFS)), Status::ReadOnly);
        assert_eq!(Status::from(&io(libc::EIO)), Status::Io);
        assert_eq!(Status::from(&io(libc::EINVAL)), Status::Io);
        assert_eq!(Status::from(&io(libc::ERANGE)), Status::Io);
        assert_eq!(Status::from(&io(libc::EFBIG)), Status::Io);
        assert_eq!(
            Status::from(&StoreError::OutOfRange {
                offset: 0,
                len: 1,
                chunk_size: 0
            }),
            Status::InvalidArgument
        );
    }
}
