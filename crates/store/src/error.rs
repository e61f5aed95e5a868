//! The chunk-store error type and its errno mapping.

use std::io;

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
    /// A configuration value is out of bounds.
    #[error("invalid config `{field}`: {reason}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// Why it was rejected.
        reason: String,
    },
}

impl StoreError {
    /// The errno a client should see for this error.
    pub fn errno(&self) -> i32 {
        match self {
            StoreError::NoSpace { .. } => libc::ENOSPC,
            StoreError::OutOfRange { .. } => libc::EINVAL,
            StoreError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            StoreError::Unsupported { .. } => libc::EOPNOTSUPP,
            StoreError::InvalidConfig { .. } => libc::EINVAL,
        }
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
        check(
            StoreError::io("pread", io::Error::from_raw_os_error(libc::EBADF), 4),
            libc::EBADF,
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
    }
}
