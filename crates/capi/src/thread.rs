//! Each thread's own client and descriptor table, and its last error.

use foldhash::{HashMap, HashMapExt};
use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_int, CString};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

use benchfs_client::blocking::{BenchFS, FileMetadata};
use benchfs_client::{ApiError, Fd, OpenFlags, Whence};

use crate::settings::{self, Settings};

/// A failed call: the errno for C, and the message [`crate::benchfs_last_error`] gives.
#[derive(Debug)]
pub(crate) struct Failure {
    pub errno: c_int,
    pub message: String,
}

impl Failure {
    pub(crate) fn new(errno: c_int, message: String) -> Failure {
        Failure { errno, message }
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Failure {
        Failure::new(e.errno(), e.to_string())
    }
}

/// One thread's connection: its client, from which init, and its open descriptors.
pub(crate) struct ThreadClient {
    generation: u64,
    fs: BenchFS,
    fds: HashMap<c_int, Fd>,
    /// The permission bits creates and mkdirs leave out ([`Settings::umask`]).
    umask: u32,
}

/// Descriptors are numbered across the process, so a descriptor used on a thread that
/// did not open it is unknown there (EBADF) rather than some other file.
static NEXT_FD: AtomicI32 = AtomicI32::new(3);

thread_local! {
    static CLIENT: RefCell<Option<ThreadClient>> = const { RefCell::new(None) };
    /// Whether this thread has touched `CLIENT`: a plain flag, so the fork handler reads
    /// it without the first touch of `CLIENT` registering its destructor (which may
    /// allocate, not safe in the child of a threaded parent).
    static CLIENT_TOUCHED: Cell<bool> = const { Cell::new(false) };
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

pub(crate) fn set_last_error(message: &str) {
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = message);
}

pub(crate) fn last_error_ptr() -> *const c_char {
    // The CString lives in the thread's slot until the next failure replaces it.
    LAST_ERROR
        .try_with(|e| e.borrow().as_ptr())
        .unwrap_or(c"".as_ptr())
}

fn not_connected() -> Failure {
    Failure::new(
        libc::ENOTCONN,
        "BenchFS is not initialized: call benchfs_init first".into(),
    )
}

/// Set in a child made by `fork()`: UCX, under every client, does not survive a fork.
static FORKED: AtomicBool = AtomicBool::new(false);

/// Makes a child process of `fork()` leave BenchFS alone (see [`forked_child`]); once.
pub(crate) fn watch_forks() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registering a handler that only touches an atomic and this thread's
        // slot, as a child handler may. It fails only out of memory, and then a child
        // is as before.
        unsafe { libc::pthread_atfork(None, None, Some(forked_child)) };
    });
}

/// In the child, after `fork()`: the client the forking thread inherited is forgotten,
/// not closed. Closing it would tear down UCX state that is the parent's (its shared
/// memory, and epoll sets that parent and child share), so the child aborted at its
/// `exit` and the parent at its own. Every later call fails with ENOTSUP.
extern "C" fn forked_child() {
    FORKED.store(true, Ordering::Relaxed);
    if !CLIENT_TOUCHED.with(Cell::get) {
        return;
    }
    let _ = CLIENT.try_with(|slot| {
        if let Ok(mut slot) = slot.try_borrow_mut() {
            std::mem::forget(slot.take());
        }
    });
}

/// Refuses every call in a child made by `fork()`.
pub(crate) fn refuse_in_forked_child() -> Result<(), Failure> {
    match FORKED.load(Ordering::Relaxed) {
        true => Err(forked()),
        false => Ok(()),
    }
}

fn forked() -> Failure {
    Failure::new(
        libc::ENOTSUP,
        "BenchFS cannot be used in a child made by fork(): its transport (UCX) does not \
         survive a fork; use it from the parent, or exec a program that calls benchfs_init"
            .into(),
    )
}

/// Runs `f` on this thread's client, connecting it first if it has none or one from an
/// earlier init.
pub(crate) fn with_client<T>(
    f: impl FnOnce(&mut ThreadClient) -> Result<T, Failure>,
) -> Result<T, Failure> {
    refuse_in_forked_child()?;
    benchfs_client::blocking::outlive_thread_locals();
    CLIENT_TOUCHED.with(|touched| touched.set(true));
    CLIENT.with(|slot| {
        let mut slot = slot.try_borrow_mut().map_err(|_| {
            Failure::new(
                libc::EDEADLK,
                "libbenchfs was called again from inside one of its own calls".into(),
            )
        })?;
        let Some(settings) = settings::current() else {
            *slot = None;
            return Err(not_connected());
        };
        if slot.as_ref().map(|c| c.generation) != Some(settings.generation) {
            *slot = None;
            *slot = Some(ThreadClient::connect(&settings)?);
        }
        let client = slot.as_mut().ok_or_else(not_connected)?;
        f(client)
    })
}

/// Closes this thread's descriptors and its client.
pub(crate) fn close_thread_client() -> Result<(), Failure> {
    refuse_in_forked_child()?;
    // As in `with_client`: a thread whose first call this is would otherwise set up its
    // client's slot before the runtime's thread state, which then goes first at exit, and
    // the slot's closing of descriptors would panic (an abort, in a destructor).
    benchfs_client::blocking::outlive_thread_locals();
    CLIENT_TOUCHED.with(|touched| touched.set(true));
    let client = CLIENT.with(|slot| slot.try_borrow_mut().ok().and_then(|mut s| s.take()));
    let Some(mut client) = client else {
        return Ok(());
    };
    client.close_descriptors()
}

/// A client dropped with descriptors open (a later `benchfs_init`, another thread's
/// `benchfs_term`, the thread's exit) closes them first, so the sizes of writes that
/// returned are published: no later call can name those descriptors.
impl Drop for ThreadClient {
    fn drop(&mut self) {
        // No caller is left to tell of a failure.
        let _ = self.close_descriptors();
    }
}

impl ThreadClient {
    /// Closes every open descriptor, publishing its size; the first failure, once all
    /// were tried.
    fn close_descriptors(&mut self) -> Result<(), Failure> {
        let mut first_error = None;
        for (_, fd) in self.fds.drain() {
            if let Err(e) = self.fs.close(fd) {
                first_error.get_or_insert(Failure::from(e));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn connect(settings: &Arc<Settings>) -> Result<ThreadClient, Failure> {
        let fs = BenchFS::with_servers(
            &settings.config,
            settings.servers.clone(),
            settings.secret.clone(),
        )?;
        Ok(ThreadClient {
            generation: settings.generation,
            fs,
            fds: HashMap::new(),
            umask: settings.umask,
        })
    }

    /// `mode` of a file or directory this thread creates, less the process's umask.
    pub(crate) fn creation_mode(&self, mode: u32) -> u32 {
        mode & 0o7777 & !self.umask
    }

    /// Runs a path operation of the blocking client.
    pub(crate) fn run<T>(
        &mut self,
        f: impl FnOnce(&BenchFS) -> Result<T, ApiError>,
    ) -> Result<T, Failure> {
        f(&self.fs).map_err(Failure::from)
    }

    fn fd(&self, fd: c_int) -> Result<Fd, Failure> {
        self.fds.get(&fd).copied().ok_or_else(|| {
            Failure::new(
                libc::EBADF,
                format!("descriptor {fd} is not open on this thread"),
            )
        })
    }

    pub(crate) fn open(
        &mut self,
        path: &str,
        flags: OpenFlags,
        mode: u32,
    ) -> Result<c_int, Failure> {
        let number = NEXT_FD.fetch_add(1, Ordering::Relaxed);
        if number < 0 {
            NEXT_FD.store(i32::MIN, Ordering::Relaxed);
            return Err(Failure::new(
                libc::EMFILE,
                "this process has used up BenchFS descriptor numbers".into(),
            ));
        }
        // The chunk size may have been set on another thread since this one last opened.
        self.fs.client().set_chunk_size(settings::chunk_size())?;
        let fd = self.fs.open(path, flags, self.creation_mode(mode))?;
        self.fds.insert(number, fd);
        Ok(number)
    }

    pub(crate) fn close(&mut self, fd: c_int) -> Result<(), Failure> {
        let inner = self.fd(fd)?;
        self.fds.remove(&fd);
        Ok(self.fs.close(inner)?)
    }

    /// Writes at `offset`, or at the position when `None`.
    pub(crate) fn pwrite(
        &mut self,
        fd: c_int,
        data: &[u8],
        offset: Option<u64>,
    ) -> Result<i64, Failure> {
        let fd = self.fd(fd)?;
        let n = match offset {
            Some(offset) => self.fs.pwrite(fd, data, offset)?,
            None => self.fs.write(fd, data)?,
        };
        Ok(n as i64)
    }

    /// Reads at `offset`, or at the position when `None`.
    pub(crate) fn pread(
        &mut self,
        fd: c_int,
        buf: &mut [u8],
        offset: Option<u64>,
    ) -> Result<i64, Failure> {
        let fd = self.fd(fd)?;
        let n = match offset {
            Some(offset) => self.fs.pread(fd, buf, offset)?,
            None => self.fs.read(fd, buf)?,
        };
        Ok(n as i64)
    }

    pub(crate) fn seek(&mut self, fd: c_int, offset: i64, whence: Whence) -> Result<i64, Failure> {
        let pos = self.fs.seek(self.fd(fd)?, offset, whence)?;
        i64::try_from(pos).map_err(|_| Failure::new(libc::EOVERFLOW, format!("position {pos}")))
    }

    pub(crate) fn fsync(&mut self, fd: c_int) -> Result<(), Failure> {
        Ok(self.fs.fsync(self.fd(fd)?)?)
    }

    pub(crate) fn ftruncate(&mut self, fd: c_int, size: u64) -> Result<(), Failure> {
        Ok(self.fs.ftruncate(self.fd(fd)?, size)?)
    }

    pub(crate) fn fstat(&mut self, fd: c_int) -> Result<FileMetadata, Failure> {
        Ok(self.fs.fstat(self.fd(fd)?)?)
    }
}
