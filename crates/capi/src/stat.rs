//! `struct stat` from BenchFS metadata.

use benchfs_client::blocking::FileMetadata;
use benchfs_proto::meta::EntryKind;

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
