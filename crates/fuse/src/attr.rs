//! Records as the kernel sees them, and failures as errnos.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use benchfs_client::ApiError;
use benchfs_proto::meta::{EntryKind, FileMetadata, Owner};
use fuser::{Errno, FileAttr, FileType, INodeNo};

use crate::inodes::ROOT;

/// The node id of a record.
pub(crate) fn ino_of(meta: &FileMetadata) -> u64 {
    meta.file_id
}

fn time(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

/// The kernel's file type of a record.
pub(crate) fn kind_of(meta: &FileMetadata) -> FileType {
    match meta.kind {
        EntryKind::File => FileType::RegularFile,
        EntryKind::Directory => FileType::Directory,
        EntryKind::Symlink => FileType::Symlink,
    }
}

/// The kernel's attributes of record `meta` whose size is `size`.
pub(crate) fn of(meta: &FileMetadata, size: u64) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino_of(meta)),
        size,
        blocks: size.div_ceil(512),
        atime: time(meta.atime_ns),
        mtime: time(meta.mtime_ns),
        ctime: time(meta.ctime_ns),
        crtime: time(meta.birth_ns),
        kind: kind_of(meta),
        perm: (meta.mode & 0o7777) as u16,
        // No hard links; a directory counts 1 as on btrfs, which tells find(1) not to
        // infer its subdirectory count.
        nlink: 1,
        uid: meta.uid,
        gid: meta.gid,
        rdev: 0,
        blksize: u32::try_from(meta.chunk_size).unwrap_or(u32::MAX),
        flags: 0,
    }
}

/// The root, which has no record: a directory owned by whoever mounted.
pub(crate) fn root(owner: Owner, mounted_ns: u64) -> FileAttr {
    FileAttr {
        ino: INodeNo(ROOT),
        size: 0,
        blocks: 0,
        atime: time(mounted_ns),
        mtime: time(mounted_ns),
        ctime: time(mounted_ns),
        crtime: time(mounted_ns),
        kind: FileType::Directory,
        perm: 0o755,
        nlink: 1,
        uid: owner.uid,
        gid: owner.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// A failure as the errno the caller gets; logged, with the path and server it names.
pub(crate) fn errno(e: &ApiError) -> Errno {
    let errno = e.errno();
    if matches!(
        errno,
        libc::EIO | libc::ETIMEDOUT | libc::EPROTO | libc::ESTALE | libc::ENOSPC
    ) {
        tracing::warn!(error = %e, "call failed");
    } else {
        tracing::debug!(error = %e, "call failed");
    }
    Errno::from_i32(errno)
}

/// Nanoseconds since the epoch of `t` (0 before it: a time set by a caller is refused
/// first, see `setattr`).
pub(crate) fn ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
