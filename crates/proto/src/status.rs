//! The one status enum that servers send, clients return and the C API turns into errno.

/// Outcome of an operation, as carried on the wire (`u16`, little-endian).
///
/// **Invariant:** [`Status::errno`] is the only place a status becomes an errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
#[non_exhaustive]
pub enum Status {
    /// Success.
    Ok = 0,
    /// No such file or directory.
    NotFound = 1,
    /// The path already exists.
    Exists = 2,
    /// A path component is not a directory.
    NotDir = 3,
    /// The operation needs a file but the path is a directory.
    IsDir = 4,
    /// The directory is not empty.
    NotEmpty = 5,
    /// A path or a name is longer than the limits allow.
    NameTooLong = 6,
    /// An argument is malformed: a bad path, range, flag or length.
    InvalidArgument = 7,
    /// The server's store is full.
    NoSpace = 8,
    /// The storage device failed.
    Io = 9,
    /// No reply came within the RPC timeout.
    TimedOut = 10,
    /// The server cannot be reached or its connection failed.
    Unavailable = 11,
    /// A message broke the protocol: bad magic, version, length or operation.
    Protocol = 12,
    /// The operation is not supported by this server or backend.
    Unsupported = 13,
    /// The file handle is not open, or not open for this access.
    BadHandle = 14,
    /// The job secret did not match.
    PermissionDenied = 15,
    /// The server is shutting down or has too many requests in flight; retry later.
    Busy = 16,
    /// The caller's file is no longer the one at its path or on the server: it was removed
    /// or replaced, or its replicas disagree (a call that failed part way, and whose undo
    /// failed too).
    Stale = 17,
    /// The change does not fit the bytes the record holds (past its server's inline limit),
    /// or the record holds none (any more): the file's bytes belong in its chunks. Clients
    /// move them there and retry; it reaches a caller only if that fails too.
    NeedsChunks = 18,
    /// A chunk write refused because it would leave bytes before it that the file held
    /// and this server may have lost: its store began after the file was created, and it
    /// holds fewer of the chunk's bytes than the write skips. Zeros there would read as
    /// the file's data, so the write fails instead (EIO).
    Lost = 19,
    /// The root directory, which is neither removed nor renamed, nor replaced (as Linux
    /// answers for a file system's root). Clients refuse it themselves; servers never send it.
    InUse = 20,
    /// The path names a symbolic link, which the API does not follow (as `O_NOFOLLOW`): an
    /// open or a truncation of it would act on the link's own target string. Clients refuse
    /// it themselves; servers never send it. A mount follows links (its kernel does).
    NotFollowed = 21,
    /// The server's data directory cannot be written: its file system went read-only, as
    /// ext4 does after an error (`errors=remount-ro`). What it holds still reads.
    ReadOnly = 22,
}

impl Status {
    /// Every status, in wire order.
    pub const ALL: [Status; 23] = [
        Status::Ok,
        Status::NotFound,
        Status::Exists,
        Status::NotDir,
        Status::IsDir,
        Status::NotEmpty,
        Status::NameTooLong,
        Status::InvalidArgument,
        Status::NoSpace,
        Status::Io,
        Status::TimedOut,
        Status::Unavailable,
        Status::Protocol,
        Status::Unsupported,
        Status::BadHandle,
        Status::PermissionDenied,
        Status::Busy,
        Status::Stale,
        Status::NeedsChunks,
        Status::Lost,
        Status::InUse,
        Status::NotFollowed,
        Status::ReadOnly,
    ];

    /// Decodes a wire value; unknown values are `None`.
    pub fn from_wire(value: u16) -> Option<Status> {
        Status::ALL.get(usize::from(value)).copied()
    }

    /// The wire value.
    pub fn to_wire(self) -> u16 {
        self as u16
    }

    /// The POSIX errno for this status (0 for `Ok`).
    pub fn errno(self) -> i32 {
        match self {
            Status::Ok => 0,
            Status::NotFound => libc::ENOENT,
            Status::Exists => libc::EEXIST,
            Status::NotDir => libc::ENOTDIR,
            Status::IsDir => libc::EISDIR,
            Status::NotEmpty => libc::ENOTEMPTY,
            Status::NameTooLong => libc::ENAMETOOLONG,
            Status::InvalidArgument => libc::EINVAL,
            Status::NoSpace => libc::ENOSPC,
            Status::Io => libc::EIO,
            Status::TimedOut => libc::ETIMEDOUT,
            Status::Unavailable => libc::EIO,
            Status::Protocol => libc::EPROTO,
            Status::Unsupported => libc::EOPNOTSUPP,
            Status::BadHandle => libc::EBADF,
            Status::PermissionDenied => libc::EACCES,
            Status::Busy => libc::EAGAIN,
            Status::Stale => libc::ESTALE,
            Status::NeedsChunks => libc::EFBIG,
            Status::Lost => libc::EIO,
            Status::InUse => libc::EBUSY,
            Status::NotFollowed => libc::ELOOP,
            Status::ReadOnly => libc::EROFS,
        }
    }

    /// A short description, like `strerror`.
    pub fn describe(self) -> &'static str {
        match self {
            Status::Ok => "success",
            Status::NotFound => "no such file or directory",
            Status::Exists => "file exists",
            Status::NotDir => "not a directory",
            Status::IsDir => "is a directory",
            Status::NotEmpty => "directory not empty",
            Status::NameTooLong => "file name too long",
            Status::InvalidArgument => "invalid argument",
            Status::NoSpace => "no space left on server",
            Status::Io => "input/output error",
            Status::TimedOut => "timed out",
            Status::Unavailable => "server unavailable",
            Status::Protocol => "protocol error",
            Status::Unsupported => "operation not supported",
            Status::BadHandle => "bad file handle",
            Status::PermissionDenied => "permission denied",
            Status::Busy => "server busy",
            Status::Stale => {
                "stale: the file was removed or replaced since it was opened (or its replicas disagree)"
            }
            Status::NeedsChunks => "the file's bytes do not fit its record",
            Status::Lost => "input/output error: the server may have lost bytes of the file",
            Status::InUse => "device or resource busy: the root directory",
            Status::NotFollowed => {
                "a symbolic link: the API does not follow links (open its target, or use a mount)"
            }
            Status::ReadOnly => "read-only file system: the server's data directory went read-only",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip() {
        for (i, s) in Status::ALL.iter().enumerate() {
            assert_eq!(s.to_wire() as usize, i, "ALL must be in wire order");
            assert_eq!(Status::from_wire(s.to_wire()), Some(*s));
        }
        assert_eq!(Status::from_wire(Status::ALL.len() as u16), None);
        assert_eq!(Status::from_wire(u16::MAX), None);
    }

    #[test]
    fn errno_mapping() {
        assert_eq!(Status::Ok.errno(), 0);
        assert_eq!(Status::NotFound.errno(), libc::ENOENT);
        assert_eq!(Status::NotEmpty.errno(), libc::ENOTEMPTY);
        assert_eq!(Status::TimedOut.errno(), libc::ETIMEDOUT);
        for s in Status::ALL.iter().skip(1) {
            assert!(s.errno() > 0, "{s:?} must map to an errno");
        }
    }
}
