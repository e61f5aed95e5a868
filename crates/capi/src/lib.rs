//! libbenchfs: the BenchFS client for C programs, declared in `include/benchfs.h`.
//!
//! Each thread that calls the API gets its own client (its own UCX worker and open-file
//! table), made on its first call; [`benchfs_init`] reads the configuration and the
//! registry once and every thread connects to those servers. A descriptor belongs to the
//! thread that opened it: descriptors are numbered across the process, so one used from
//! another thread is refused with EBADF rather than naming some other file.
//!
//! Every entry point catches panics (a panic never unwinds into C) and reports failure
//! as -1 with `errno` set; [`benchfs_last_error`] gives the message, which names the path
//! and the server.

mod settings;
mod stat;
mod thread;

use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use benchfs_client::{OpenFlags, Whence};
use libc::{mode_t, off_t, size_t, ssize_t};

use crate::thread::{with_client, Failure};

/// What an entry point returns when it fails.
trait FailureValue {
    const FAILED: Self;
}

impl FailureValue for c_int {
    const FAILED: c_int = -1;
}

impl FailureValue for i64 {
    const FAILED: i64 = -1;
}

/// Runs one entry point: a failure sets errno and the thread's last error and returns -1;
/// a panic is caught and reported as EIO. Every entry point fails in a child made by
/// `fork()` (see [`thread::refuse_in_forked_child`]), setters and init included.
fn entry<T: FailureValue>(f: impl FnOnce() -> Result<T, Failure>) -> T {
    let call = || thread::refuse_in_forked_child().and_then(|()| f());
    let failure = match catch_unwind(AssertUnwindSafe(call)) {
        Ok(Ok(value)) => return value,
        Ok(Err(failure)) => failure,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Failure::new(libc::EIO, format!("internal error in libbenchfs: {what}"))
        }
    };
    thread::set_last_error(&failure.message);
    // SAFETY: __errno_location returns this thread's errno, valid for the thread's life.
    unsafe { *libc::__errno_location() = failure.errno };
    T::FAILED
}

/// The path a C string names; null or not UTF-8 is EINVAL (EFAULT for null).
///
/// # Safety
/// `path` is null or a NUL-terminated string valid for the call.
unsafe fn path_arg<'a>(path: *const c_char) -> Result<&'a str, Failure> {
    if path.is_null() {
        return Err(Failure::new(libc::EFAULT, "path is NULL".into()));
    }
    // SAFETY: the caller passes a NUL-terminated string (the header says so).
    let bytes = unsafe { CStr::from_ptr(path) };
    bytes.to_str().map_err(|_| {
        Failure::new(
            libc::EINVAL,
            format!("path {bytes:?} is not UTF-8, which BenchFS paths must be"),
        )
    })
}

/// A length the caller passed, as an offset or size BenchFS takes; negative is EINVAL.
fn non_negative(what: &str, value: off_t) -> Result<u64, Failure> {
    u64::try_from(value)
        .map_err(|_| Failure::new(libc::EINVAL, format!("{what} {value} is negative")))
}

/// The most bytes one read or write moves, as Linux's `MAX_RW_COUNT`: a larger count
/// gives a short transfer. A count past any real buffer (2^62) made the read plan its
/// spans for that many bytes, and the allocation aborted the process.
const RW_COUNT_MAX: usize = 0x7fff_f000;

/// Checks a caller's buffer: NULL is allowed only with size 0.
fn buffer_ok(buf: *const c_void, size: size_t) -> Result<(), Failure> {
    if buf.is_null() && size > 0 {
        return Err(Failure::new(libc::EFAULT, "buffer is NULL".into()));
    }
    if size > isize::MAX as usize {
        return Err(Failure::new(
            libc::EINVAL,
            format!("size {size} is too large"),
        ));
    }
    Ok(())
}

/// Connects this process to a BenchFS cluster: reads the configuration (the file
/// `BENCHFS_CONFIG` names, else defaults, overlaid with `BENCHFS_<SECTION>_<KEY>`), the
/// settings (`BENCHFS_CHUNK_SIZE`, `BENCHFS_RDMA_THRESH`, `BENCHFS_RPC_TIMEOUT_MSEC`,
/// and any setter called before), the secret (`BENCHFS_SECRET_FILE`), and the servers in
/// `registry` (NULL: `BENCHFS_REGISTRY`, else the configuration's `registry_dir`), and
/// connects the calling thread. Calling it again reconnects every thread (at its next
/// call, which first closes the descriptors the thread had open, publishing their sizes)
/// with the environment and setters of then. One that fails leaves the library as
/// before any init (calls fail with ENOTCONN, the setters work).
///
/// # Safety
/// `registry` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn benchfs_init(registry: *const c_char) -> c_int {
    entry(|| {
        let registry = if registry.is_null() {
            None
        } else {
            // SAFETY: non-null, and the caller passes a NUL-terminated string.
            Some(unsafe { path_arg(registry) }?)
        };
        thread::watch_forks();
        let generation = settings::init(registry)?;
        // One that cannot connect leaves nothing behind: no half-set-up library whose
        // setters answer EBUSY and whose other threads try again at every call.
        with_client(|_| Ok(0)).inspect_err(|_| settings::forget(generation))
    })
}

/// Disconnects: closes the calling thread's open descriptors (publishing their sizes)
/// and its client, and forgets the settings. Other threads' clients, with their
/// descriptors, are closed at their next call (which then fails with ENOTCONN) or when
/// they exit.
#[no_mangle]
pub extern "C" fn benchfs_term() -> c_int {
    entry(|| {
        settings::term();
        thread::close_thread_client().map(|()| 0)
    })
}

/// The message of the calling thread's last failure ("" if none); valid until its next
/// call.
#[no_mangle]
pub extern "C" fn benchfs_last_error() -> *const c_char {
    thread::last_error_ptr()
}

/// Sets the chunk size of the files created from now on (0: the servers' configured
/// size). A power of two from 4 KiB up to the servers' configured size; a create that
/// asks for more fails with EINVAL.
#[no_mangle]
pub extern "C" fn benchfs_set_chunk_size(bytes: size_t) -> c_int {
    entry(|| settings::set_chunk_size(bytes as u64).map(|()| 0))
}

/// Sets the size above which payloads move by rendezvous (RDMA). Before
/// [`benchfs_init`] only (EBUSY after).
#[no_mangle]
pub extern "C" fn benchfs_set_rdma_thresh(bytes: size_t) -> c_int {
    entry(|| settings::set_rdma_threshold(bytes as u64).map(|()| 0))
}

/// Sets how long a call waits for a server, in milliseconds. Before [`benchfs_init`]
/// only (EBUSY after).
#[no_mangle]
pub extern "C" fn benchfs_set_rpc_timeout_msec(msec: c_int) -> c_int {
    entry(|| settings::set_rpc_timeout_msec(i64::from(msec)).map(|()| 0))
}

/// Opens `path` with open(2) `flags` (O_RDONLY, O_WRONLY, O_RDWR, O_CREAT, O_EXCL,
/// O_TRUNC, O_APPEND, O_DIRECTORY; others are ignored) and `mode` for a file it creates,
/// less the process's umask at `benchfs_init`.
///
/// # Safety
/// `path` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn benchfs_open(path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    entry(|| {
        // SAFETY: the caller passes a NUL-terminated string.
        let path = unsafe { path_arg(path) }?;
        with_client(|t| t.open(path, OpenFlags::from_posix(flags), mode))
    })
}

/// Creates `path` (or truncates it), as open(path, flags | O_CREAT | O_TRUNC, mode).
///
/// # Safety
/// `path` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn benchfs_create(path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    entry(|| {
        // SAFETY: the caller passes a NUL-terminated string.
        let path = unsafe { path_arg(path) }?;
        let flags = OpenFlags::from_posix(flags) | OpenFlags::CREATE | OpenFlags::TRUNC;
        with_client(|t| t.open(path, flags, mode))
    })
}

/// Closes a descriptor, publishing the file's size.
#[no_mangle]
pub extern "C" fn benchfs_close(fd: c_int) -> c_int {
    entry(|| with_client(|t| t.close(fd).map(|()| 0)))
}

/// Writes `size` bytes at `offset`; returns the count written.
///
/// # Safety
/// `buf` is valid for reading `size` bytes (or NULL with size 0).
#[no_mangle]
pub unsafe extern "C" fn benchfs_pwrite(
    fd: c_int,
    buf: *const c_void,
    size: size_t,
    offset: off_t,
) -> ssize_t {
    // SAFETY: the caller's contract is write_at's.
    unsafe { write_at(fd, buf, size, Some(offset)) }
}

/// Writes `size` bytes at the descriptor's position, which moves past them.
///
/// # Safety
/// `buf` is valid for reading `size` bytes (or NULL with size 0).
#[no_mangle]
pub unsafe extern "C" fn benchfs_write(fd: c_int, buf: *const c_void, size: size_t) -> ssize_t {
    // SAFETY: the caller's contract is write_at's.
    unsafe { write_at(fd, buf, size, None) }
}

/// Reads up to `size` bytes at `offset`; returns the count read (0 at the end).
///
/// # Safety
/// `buf` is valid for writing `size` bytes (or NULL with size 0).
#[no_mangle]
pub unsafe extern "C" fn benchfs_pread(
    fd: c_int,
    buf: *mut c_void,
    size: size_t,
    offset: off_t,
) -> ssize_t {
    // SAFETY: the caller's contract is read_at's.
    unsafe { read_at(fd, buf, size, Some(offset)) }
}

/// Reads up to `size` bytes at the descriptor's position, which moves past them.
///
/// # Safety
/// `buf` is valid for writing `size` bytes (or NULL with size 0).
#[no_mangle]
pub unsafe extern "C" fn benchfs_read(fd: c_int, buf: *mut c_void, size: size_t) -> ssize_t {
    // SAFETY: the caller's contract is read_at's.
    unsafe { read_at(fd, buf, size, None) }
}

/// Writes at `offset`, or at the descriptor's position when `None`.
///
/// # Safety
/// `buf` is valid for reading `size` bytes (or NULL with size 0).
unsafe fn write_at(fd: c_int, buf: *const c_void, size: size_t, offset: Option<off_t>) -> ssize_t {
    entry(|| {
        buffer_ok(buf, size)?;
        let offset = offset.map(|o| non_negative("offset", o)).transpose()?;
        // SAFETY: checked non-null (or size 0) above; the caller vouches for the length.
        let data = unsafe { byte_slice(buf, size.min(RW_COUNT_MAX)) };
        with_client(|t| t.pwrite(fd, data, offset))
    }) as ssize_t
}

/// Reads at `offset`, or at the descriptor's position when `None`.
///
/// # Safety
/// `buf` is valid for writing `size` bytes (or NULL with size 0).
unsafe fn read_at(fd: c_int, buf: *mut c_void, size: size_t, offset: Option<off_t>) -> ssize_t {
    entry(|| {
        buffer_ok(buf, size)?;
        let offset = offset.map(|o| non_negative("offset", o)).transpose()?;
        // SAFETY: checked non-null (or size 0) above; the caller vouches for the length.
        let data = unsafe { byte_slice_mut(buf, size.min(RW_COUNT_MAX)) };
        with_client(|t| t.pread(fd, data, offset))
    }) as ssize_t
}

/// Moves the descriptor's position (SEEK_SET, SEEK_CUR, SEEK_END); returns the new one.
#[no_mangle]
pub extern "C" fn benchfs_seek(fd: c_int, offset: off_t, whence: c_int) -> off_t {
    entry(|| {
        let whence = match whence {
            libc::SEEK_SET => Whence::Start,
            libc::SEEK_CUR => Whence::Current,
            libc::SEEK_END => Whence::End,
            other => return Err(Failure::new(libc::EINVAL, format!("whence {other}"))),
        };
        with_client(|t| t.seek(fd, offset, whence))
    })
}

/// Makes the descriptor's data and size durable on the servers.
#[no_mangle]
pub extern "C" fn benchfs_fsync(fd: c_int) -> c_int {
    entry(|| with_client(|t| t.fsync(fd).map(|()| 0)))
}

/// Cuts or extends `path` to `length` bytes.
///
/// # Safety
/// `path` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn benchfs_truncate(path: *const c_char, length: off_t) -> c_int {
    entry(|| {
        // SAFETY: the caller passes a NUL-terminated string.
        let path = unsafe { path_arg(path) }?;
        let length = non_negative("length", length)?;
        with_client(|t| t.run(|fs| fs.truncate(path, length)).map(|()| 0))
    })
}

/// Cuts or extends the file open as `fd` (open for writing) to `length` bytes.
#[no_mangle]
pub extern "C" fn benchfs_ftruncate(fd: c_int, length: off_t) -> c_int {
    entry(|| {
        let length = non_negative("length", length)?;
        with_client(|t| t.ftruncate(fd, length).map(|()| 0))
    })
}

/// Removes a file.
///
/// # Safety
/// `path` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn benchfs_unlink(path: *const c_char) -> c_int {
    entry(|| {
        // SAFETY: the caller passes a NUL-terminated string.
        let path = unsafe { path_arg(path) }?;
        with_client(|t| t.run(|fs| fs.unlink(path)).map(|()| 0))
    })
}

/// Creates a directory.
///
/// # Safety
/// `path` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn benchfs_mkdir(path: *const c_char, mode: mode_t) -> c_int {
    entry(|| {
        // SAFETY: the caller passes a NUL-terminated string.
        let path = unsafe { path_arg(path) }?;
        with_client(|t| {
            let mode = t.creation_mode(mode);
            t.run(|fs| fs.mkdir(path, mode)).map(|()| 0)
        })
    })
}

/// Removes an empty directory.
///
/// # Safety
/// `path` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn benchfs_rmdir(path: *const c_char) -> c_int {
    entry(|| {
        // SAFETY: the caller passes a NUL-terminated string.
        let path = unsafe { path_arg(path) }?;
        with_client(|t| t.run(|fs| fs.rmdir(path)).map(|()| 0))
    })
}

/// Renames a file or an empty directory.
///
/// # Safety
/// `from` and `to` are NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn benchfs_rename(from: *const c_char, to: *const c_char) -> c_int {
    entry(|| {
        // SAFETY: the caller passes NUL-terminated strings.
        let (from, to) = unsafe { (path_arg(from)?, path_arg(to)?) };
        with_client(|t| t.run(|fs| fs.rename(from, to)).map(|()| 0))
    })
}

/// Fills `st` with the metadata of `path`.
///
/// # Safety
/// `path` is a NUL-terminated string; `st` points to a writable `struct stat`.
#[no_mangle]
pub unsafe extern "C" fn benchfs_stat(path: *const c_char, st: *mut libc::stat) -> c_int {
    entry(|| {
        // SAFETY: the caller passes a NUL-terminated string.
        let path = unsafe { path_arg(path) }?;
        let meta = with_client(|t| t.run(|fs| fs.stat(path)))?;
        // SAFETY: the caller passes a writable struct stat (checked for NULL inside).
        unsafe { stat::fill(st, &meta) }.map(|()| 0)
    })
}

/// Fills `st` with the metadata of the file open as `fd`, this thread's writes counted.
///
/// # Safety
/// `st` points to a writable `struct stat`.
#[no_mangle]
pub unsafe extern "C" fn benchfs_fstat(fd: c_int, st: *mut libc::stat) -> c_int {
    entry(|| {
        let meta = with_client(|t| t.fstat(fd))?;
        // SAFETY: the caller passes a writable struct stat (checked for NULL inside).
        unsafe { stat::fill(st, &meta) }.map(|()| 0)
    })
}

/// Fills `st` with the size and room of the file system `path` lies in (`path` must
/// exist): every server's, over the replica count.
///
/// # Safety
/// `path` is a NUL-terminated string; `st` points to a writable `struct statvfs`.
#[no_mangle]
pub unsafe extern "C" fn benchfs_statvfs(path: *const c_char, st: *mut libc::statvfs) -> c_int {
    entry(|| {
        // SAFETY: the caller passes a NUL-terminated string.
        let path = unsafe { path_arg(path) }?;
        let space = with_client(|t| t.run(|fs| fs.statfs(path)))?;
        // SAFETY: the caller passes a writable struct statvfs (checked for NULL inside).
        unsafe { stat::fill_statvfs(st, &space) }.map(|()| 0)
    })
}

/// Checks that `path` exists (F_OK) and that its owner may read (R_OK), write (W_OK)
/// and search or execute it (X_OK): files in BenchFS belong to the job's user.
///
/// # Safety
/// `path` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn benchfs_access(path: *const c_char, mode: c_int) -> c_int {
    entry(|| {
        // SAFETY: the caller passes a NUL-terminated string.
        let path = unsafe { path_arg(path) }?;
        if mode & !(libc::R_OK | libc::W_OK | libc::X_OK) != 0 {
            return Err(Failure::new(libc::EINVAL, format!("access mode {mode:#o}")));
        }
        let meta = with_client(|t| t.run(|fs| fs.stat(path)))?;
        let owner_bits = (meta.mode >> 6) as c_int & 0o7;
        let wanted = (if mode & libc::R_OK != 0 { 0o4 } else { 0 })
            | (if mode & libc::W_OK != 0 { 0o2 } else { 0 })
            | (if mode & libc::X_OK != 0 { 0o1 } else { 0 });
        if owner_bits & wanted != wanted {
            return Err(Failure::new(
                libc::EACCES,
                format!(
                    "access {path}: mode {:o} does not allow {mode:#o}",
                    meta.mode
                ),
            ));
        }
        Ok(0)
    })
}

/// The callback [`benchfs_readdir`] calls once per entry: `ctx` as given, the entry's
/// name, its metadata and 0; a non-zero return stops the listing.
pub type Filler = unsafe extern "C" fn(
    ctx: *mut c_void,
    name: *const c_char,
    st: *const libc::stat,
    offset: off_t,
) -> c_int;

/// Lists the directory `path`, calling `filler` once per entry ("." and ".." are not
/// listed). The filler may call the API itself.
///
/// # Safety
/// `path` is a NUL-terminated string; `filler` is a valid function.
#[no_mangle]
pub unsafe extern "C" fn benchfs_readdir(
    path: *const c_char,
    ctx: *mut c_void,
    filler: Option<Filler>,
) -> c_int {
    entry(|| {
        // SAFETY: the caller passes a NUL-terminated string.
        let path = unsafe { path_arg(path) }?;
        let filler = filler.ok_or_else(|| Failure::new(libc::EFAULT, "filler is NULL".into()))?;
        // Listed first and called back outside the thread's client, so the callback may
        // use the API.
        let entries = with_client(|t| t.run(|fs| fs.readdir(path)))?;
        for entry in entries {
            let Ok(name) = std::ffi::CString::new(entry.name) else {
                continue;
            };
            let st = stat::of(&entry.meta);
            // SAFETY: the caller vouches for filler; name and st outlive the call.
            if unsafe { filler(ctx, name.as_ptr(), &st, 0) } != 0 {
                break;
            }
        }
        Ok(0)
    })
}

/// `size` bytes at `buf` as a slice.
///
/// # Safety
/// `buf` is valid for reading `size` bytes, or `size` is 0.
unsafe fn byte_slice<'a>(buf: *const c_void, size: size_t) -> &'a [u8] {
    if size == 0 {
        return &[];
    }
    // SAFETY: per the function's contract.
    unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), size) }
}

/// `size` bytes at `buf` as a mutable slice.
///
/// # Safety
/// `buf` is valid for writing `size` bytes, or `size` is 0.
unsafe fn byte_slice_mut<'a>(buf: *mut c_void, size: size_t) -> &'a mut [u8] {
    if size == 0 {
        return &mut [];
    }
    // SAFETY: per the function's contract.
    unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), size) }
}
