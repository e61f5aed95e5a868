//! What a workload runs against: the native client API or a POSIX directory (a FUSE mount,
//! or a local file system as the baseline). Paths are relative to the target's root and
//! use `/`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use benchfs_client::blocking::BenchFS;
use benchfs_client::{ApiError, Fd, OpenFlags};

use crate::error::{io_error, BenchError, Result};

/// A target a rank works on.
pub enum Storage {
    /// The native client API of a cluster (its caches off: every operation reaches the
    /// servers).
    Native(Box<BenchFS>),
    /// A directory of the local file system tree.
    Posix(PathBuf),
}

/// An open file.
pub enum Handle {
    /// A BenchFS descriptor.
    Native(Fd),
    /// A local file.
    Posix(File),
}

/// `statfs` magic of tmpfs, where the page cache is the storage.
const TMPFS_MAGIC: i64 = 0x0102_1994;

fn native(what: &str, path: &str, e: ApiError) -> BenchError {
    BenchError(format!("cannot {what} {path} in BenchFS: {e}"))
}

impl Storage {
    /// The absolute path of `rel` on this target.
    fn local(root: &Path, rel: &str) -> PathBuf {
        root.join(rel.trim_start_matches('/'))
    }

    fn remote(rel: &str) -> String {
        format!("/{}", rel.trim_start_matches('/'))
    }

    /// `rel` as a user names it: its BenchFS path, or its local path.
    pub fn display(&self, rel: &str) -> String {
        match self {
            Storage::Native(_) => Self::remote(rel),
            Storage::Posix(root) => Self::local(root, rel).display().to_string(),
        }
    }

    /// How reads of this target avoid a client-side cache, in a few words for the report.
    pub fn read_cache_note(&self) -> String {
        match self {
            Storage::Native(_) => "client caches off".into(),
            Storage::Posix(root) if is_tmpfs(root) => "tmpfs: the page cache is the storage".into(),
            Storage::Posix(_) => {
                "page cache dropped before reads (fdatasync + posix_fadvise DONTNEED)".into()
            }
        }
    }

    /// Creates (or truncates) `rel` for writing.
    pub fn create(&self, rel: &str) -> Result<Handle> {
        match self {
            Storage::Native(fs) => {
                let path = Self::remote(rel);
                let flags = OpenFlags::CREATE | OpenFlags::RDWR | OpenFlags::TRUNC;
                fs.open(&path, flags, 0o644)
                    .map(Handle::Native)
                    .map_err(|e| native("create", &path, e))
            }
            Storage::Posix(root) => {
                let path = Self::local(root, rel);
                File::create(&path)
                    .map(Handle::Posix)
                    .map_err(|e| io_error("create", &path, e))
            }
        }
    }

    /// Opens `rel` for writing, creating it if it is missing, keeping what it holds (a
    /// shared file that several ranks write).
    pub fn open_write(&self, rel: &str) -> Result<Handle> {
        match self {
            Storage::Native(fs) => {
                let path = Self::remote(rel);
                fs.open(&path, OpenFlags::CREATE | OpenFlags::RDWR, 0o644)
                    .map(Handle::Native)
                    .map_err(|e| native("open", &path, e))
            }
            Storage::Posix(root) => {
                let path = Self::local(root, rel);
                OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .read(true)
                    .write(true)
                    .mode(0o644)
                    .open(&path)
                    .map(Handle::Posix)
                    .map_err(|e| io_error("open", &path, e))
            }
        }
    }

    /// Opens `rel` for reading.
    pub fn open_read(&self, rel: &str) -> Result<Handle> {
        match self {
            Storage::Native(fs) => {
                let path = Self::remote(rel);
                fs.open(&path, OpenFlags::READ, 0)
                    .map(Handle::Native)
                    .map_err(|e| native("open", &path, e))
            }
            Storage::Posix(root) => {
                let path = Self::local(root, rel);
                File::open(&path)
                    .map(Handle::Posix)
                    .map_err(|e| io_error("open", &path, e))
            }
        }
    }

    /// Writes all of `data` at `offset`.
    pub fn write_at(&self, h: &Handle, rel: &str, data: &[u8], offset: u64) -> Result<()> {
        match (self, h) {
            (Storage::Native(fs), Handle::Native(fd)) => {
                let n = fs
                    .pwrite(*fd, data, offset)
                    .map_err(|e| native("write", &Self::remote(rel), e))?;
                if n != data.len() {
                    return Err(format!(
                        "short write to {} in BenchFS: {n} of {} bytes at {offset}",
                        Self::remote(rel),
                        data.len()
                    )
                    .into());
                }
                Ok(())
            }
            (Storage::Posix(root), Handle::Posix(f)) => f
                .write_all_at(data, offset)
                .map_err(|e| io_error("write", &Self::local(root, rel), e)),
            _ => Err("a handle of another target".into()),
        }
    }

    /// Reads into all of `buf` from `offset`; a short read is an error naming the file.
    pub fn read_exact_at(&self, h: &Handle, rel: &str, buf: &mut [u8], offset: u64) -> Result<()> {
        match (self, h) {
            (Storage::Native(fs), Handle::Native(fd)) => {
                let n = fs
                    .pread(*fd, buf, offset)
                    .map_err(|e| native("read", &Self::remote(rel), e))?;
                if n != buf.len() {
                    return Err(format!(
                        "short read of {} in BenchFS: {n} of {} bytes at {offset}",
                        Self::remote(rel),
                        buf.len()
                    )
                    .into());
                }
                Ok(())
            }
            (Storage::Posix(root), Handle::Posix(f)) => f
                .read_exact_at(buf, offset)
                .map_err(|e| io_error("read", &Self::local(root, rel), e)),
            _ => Err("a handle of another target".into()),
        }
    }

    /// Makes the file's data durable.
    pub fn fsync(&self, h: &Handle, rel: &str) -> Result<()> {
        match (self, h) {
            (Storage::Native(fs), Handle::Native(fd)) => fs
                .fsync(*fd)
                .map_err(|e| native("fsync", &Self::remote(rel), e)),
            (Storage::Posix(root), Handle::Posix(f)) => f
                .sync_all()
                .map_err(|e| io_error("fsync", &Self::local(root, rel), e)),
            _ => Err("a handle of another target".into()),
        }
    }

    /// Closes the file (for BenchFS, publishing its size).
    pub fn close(&self, h: Handle, rel: &str) -> Result<()> {
        match (self, h) {
            (Storage::Native(fs), Handle::Native(fd)) => fs
                .close(fd)
                .map_err(|e| native("close", &Self::remote(rel), e)),
            (Storage::Posix(_), Handle::Posix(f)) => {
                drop(f);
                Ok(())
            }
            _ => Err("a handle of another target".into()),
        }
    }

    /// Drops what the local page cache holds of `rel` (untimed, before a read phase), so
    /// the baseline reads from its storage and not from memory. Nothing to do natively.
    pub fn drop_cache(&self, rel: &str) -> Result<()> {
        let Storage::Posix(root) = self else {
            return Ok(());
        };
        let path = Self::local(root, rel);
        let f = File::open(&path).map_err(|e| io_error("open", &path, e))?;
        f.sync_data().map_err(|e| io_error("fdatasync", &path, e))?;
        // SAFETY: the descriptor is open for the whole call; the advice only drops clean
        // cached pages.
        let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            return Err(io_error(
                "drop the page cache of",
                &path,
                std::io::Error::from_raw_os_error(rc),
            ));
        }
        Ok(())
    }

    /// The size of `rel`.
    pub fn stat_size(&self, rel: &str) -> Result<u64> {
        match self {
            Storage::Native(fs) => {
                let path = Self::remote(rel);
                fs.stat(&path)
                    .map(|m| m.size)
                    .map_err(|e| native("stat", &path, e))
            }
            Storage::Posix(root) => {
                let path = Self::local(root, rel);
                std::fs::metadata(&path)
                    .map(|m| m.len())
                    .map_err(|e| io_error("stat", &path, e))
            }
        }
    }

    /// Removes the file `rel`.
    pub fn unlink(&self, rel: &str) -> Result<()> {
        match self {
            Storage::Native(fs) => {
                let path = Self::remote(rel);
                fs.unlink(&path).map_err(|e| native("remove", &path, e))
            }
            Storage::Posix(root) => {
                let path = Self::local(root, rel);
                std::fs::remove_file(&path).map_err(|e| io_error("remove", &path, e))
            }
        }
    }

    /// Creates the directory `rel`; it must not exist.
    pub fn mkdir(&self, rel: &str) -> Result<()> {
        match self {
            Storage::Native(fs) => {
                let path = Self::remote(rel);
                fs.mkdir(&path, 0o755)
                    .map_err(|e| native("create directory", &path, e))
            }
            Storage::Posix(root) => {
                let path = Self::local(root, rel);
                std::fs::create_dir(&path).map_err(|e| io_error("create directory", &path, e))
            }
        }
    }

    /// Removes the empty directory `rel`.
    pub fn rmdir(&self, rel: &str) -> Result<()> {
        match self {
            Storage::Native(fs) => {
                let path = Self::remote(rel);
                fs.rmdir(&path)
                    .map_err(|e| native("remove directory", &path, e))
            }
            Storage::Posix(root) => {
                let path = Self::local(root, rel);
                std::fs::remove_dir(&path).map_err(|e| io_error("remove directory", &path, e))
            }
        }
    }

    /// The entries of directory `rel`: name and whether it is a directory.
    pub fn list(&self, rel: &str) -> Result<Vec<(String, bool)>> {
        match self {
            Storage::Native(fs) => {
                let path = Self::remote(rel);
                fs.readdir(&path)
                    .map(|v| v.into_iter().map(|e| (e.name, e.meta.is_dir())).collect())
                    .map_err(|e| native("list", &path, e))
            }
            Storage::Posix(root) => {
                let path = Self::local(root, rel);
                let entries = std::fs::read_dir(&path).map_err(|e| io_error("list", &path, e))?;
                let mut out = Vec::new();
                for entry in entries {
                    let entry = entry.map_err(|e| io_error("list", &path, e))?;
                    let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                    out.push((entry.file_name().to_string_lossy().into_owned(), is_dir));
                }
                Ok(out)
            }
        }
    }

    /// Whether `rel` exists; an error when the target cannot tell (a server that does not
    /// answer), which is not a missing file.
    pub fn exists(&self, rel: &str) -> Result<bool> {
        match self {
            Storage::Native(fs) => {
                let path = Self::remote(rel);
                match fs.stat(&path) {
                    Ok(_) => Ok(true),
                    Err(e) if e.errno() == libc::ENOENT => Ok(false),
                    Err(e) => Err(native("stat", &path, e)),
                }
            }
            Storage::Posix(root) => {
                let path = Self::local(root, rel);
                path.try_exists().map_err(|e| io_error("stat", &path, e))
            }
        }
    }
}

fn is_tmpfs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs only writes the struct we pass; `c` is a valid C string.
    unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut s) == 0 && s.f_type as i64 == TMPFS_MAGIC
    }
}
