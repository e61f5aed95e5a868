//! `struct stat` from BenchFS metadata.

use benchfs_client::blocking::{FileMetadata, FsSpace};
use benchfs_proto::meta::EntryKind;
use benchfs_proto::ops::NAME_LEN_MAX;

use crate::thread::Failure;

const NS_PER_SEC: u64 = 1_000_000_000;

/// The `struct stat` of a record. `st_blksize` is the file's chunk size, the unit a
/// reader should use.
pub(crate) fn of(meta: &FileMetadata) -> libc::stat {
    // SAFETY: struct stat is plain old data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let (kind, nlink) = match meta.kind {
        EntryKind::File => (libc::S_IFREG, 1),
        EntryKind::Directory => (libc::S_IFDIR, 2),
        EntryKind::Symlink => (libc::S_IFLNK, 1),
    };
    st.st_mode = kind | (meta.mode & 0o7777);
    st.st_nlink = nlink;
    st.st_ino = meta.file_id;
    st.st_size = meta.size as libc::off_t;
    st.st_blksize = meta.chunk_size as libc::blksize_t;
    st.st_blocks = meta.size.div_ceil(512) as libc::blkcnt_t;
    (st.st_uid, st.st_gid) = (meta.uid, meta.gid);
    st.st_mtime = (meta.mtime_ns / NS_PER_SEC) as libc::time_t;
    st.st_mtime_nsec = (meta.mtime_ns % NS_PER_SEC) as i64;
    st.st_ctime = (meta.ctime_ns / NS_PER_SEC) as libc::time_t;
    st.st_ctime_nsec = (meta.ctime_ns % NS_PER_SEC) as i64;
    st.st_atime = (meta.atime_ns / NS_PER_SEC) as libc::time_t;
    st.st_atime_nsec = (meta.atime_ns % NS_PER_SEC) as i64;
    st
}

/// Writes the `struct stat` of `meta` to `out`.
///
/// # Safety
/// `out` is NULL or points to a writable `struct stat`.
pub(crate) unsafe fn fill(out: *mut libc::stat, meta: &FileMetadata) -> Result<(), Failure> {
    if out.is_null() {
        return Err(Failure::new(libc::EFAULT, "stat buffer is NULL".into()));
    }
    // SAFETY: non-null, and the caller vouches it is a writable struct stat.
    unsafe { out.write(of(meta)) };
    Ok(())
}

/// Writes the `struct statvfs` of `space` to `out`.
///
/// # Safety
/// `out` is NULL or points to a writable `struct statvfs`.
pub(crate) unsafe fn fill_statvfs(out: *mut libc::statvfs, space: &FsSpace) -> Result<(), Failure> {
    if out.is_null() {
        return Err(Failure::new(libc::EFAULT, "statvfs buffer is NULL".into()));
    }
    // SAFETY: struct statvfs is plain old data; all-zero is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    st.f_bsize = space.block_size as libc::c_ulong;
    st.f_frsize = space.block_size as libc::c_ulong;
    st.f_blocks = space.blocks as libc::fsblkcnt_t;
    st.f_bfree = space.blocks_free as libc::fsblkcnt_t;
    st.f_bavail = space.blocks_free as libc::fsblkcnt_t;
    st.f_files = space.files as libc::fsfilcnt_t;
    st.f_ffree = space.files_free as libc::fsfilcnt_t;
    st.f_favail = space.files_free as libc::fsfilcnt_t;
    st.f_namemax = NAME_LEN_MAX as libc::c_ulong;
    // SAFETY: non-null, and the caller vouches it is a writable struct statvfs.
    unsafe { out.write(st) };
    Ok(())
}
