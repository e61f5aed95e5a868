//! The chunk directory every disk store shares, whatever its I/O engine: the chunk files
//! under `<data_dir>/chunks`, an in-memory index of their lengths, a bounded cache of
//! open files, and the set of chunks and directories to sync. Metadata calls (open,
//! unlink, ftruncate, readdir, mkdir) are ordinary blocking calls made here; only data
//! transfers and fsync go through the engine.
//!
//! **Invariant:** the index holds every chunk file under `<data_dir>/chunks` and its
//! length as of the last completed (or reserved) write; it is rebuilt by a scan at open.
//! A write reserves its new length before the I/O, so the capacity check holds with
//! many writes in flight; a failed write re-reads the length from the file.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::id::{self, ChunkId};
use crate::limits::{ALIGN, FD_CACHE_MAX};
use crate::{check_chunk_size, check_range, ChunkStat, StoreConfig, StoreError, StoreUsage};

/// An open chunk file: a buffered descriptor, and with O_DIRECT a second, direct one.
///
/// Nominally `pub` only because [`IoEngine`](super::IoEngine) takes it; this module is
/// private, so nothing outside the crate can name it.
#[derive(Debug)]
pub struct ChunkFile {
    buffered: File,
    direct: Option<File>,
}

impl ChunkFile {
    /// The descriptor for moving `bytes` at file `offset`: the direct one when the store
    /// uses O_DIRECT and the offset, length and memory address are all 4096-aligned, else
    /// the buffered one. Linux keeps the two coherent (direct I/O writes back and
    /// invalidates the page cache over its range).
    pub(crate) fn fd_for(&self, offset: u64, bytes: &[u8]) -> &File {
        let align = ALIGN as u64;
        let (len, addr) = (bytes.len() as u64, bytes.as_ptr() as u64);
        match &self.direct {
            Some(direct)
                if offset.is_multiple_of(align)
                    && len.is_multiple_of(align)
                    && addr.is_multiple_of(align) =>
            {
                direct
            }
            _ => &self.buffered,
        }
    }

    /// The buffered descriptor, for metadata calls.
    pub(crate) fn buffered(&self) -> &File {
        &self.buffered
    }
}

/// A write's reservation in the index: what to restore if the write fails before any
/// byte reaches the file.
pub(crate) struct Reservation {
    id: ChunkId,
    previous_len: Option<u64>,
}

/// The chunk files under one `data_dir`.
#[derive(Debug)]
pub(crate) struct ChunkDir {
    data_dir: PathBuf,
    chunk_size: u64,
    o_direct: bool,
    /// Set once `fallocate` failed as unsupported here.
    cannot_allocate: Cell<bool>,
    capacity_bytes: Option<u64>,
    index: RefCell<BTreeMap<ChunkId, u64>>,
    used_bytes: Cell<u64>,
    files: RefCell<HashMap<ChunkId, (Rc<ChunkFile>, u64)>>,
    /// Monotonic use counter; the cached file with the smallest stamp is evicted first.
    tick: Cell<u64>,
    dirty_chunks: RefCell<BTreeSet<ChunkId>>,
    /// Directories whose entries changed since the last sync: file ids, and `None` for
    /// `<data_dir>/chunks` itself.
    dirty_dirs: RefCell<BTreeSet<Option<u64>>>,
}

impl ChunkDir {
    /// Creates `<data_dir>/chunks` if needed and indexes every chunk in it. Names that
    /// are not chunk names are skipped with a warning.
    pub(crate) fn open(config: &StoreConfig) -> Result<ChunkDir, StoreError> {
        config.validate()?;
        check_chunk_size(config.chunk_size)?;
        let chunks = id::chunks_dir(&config.data_dir);
        fs::create_dir_all(&chunks).map_err(|source| StoreError::Io {
            op: "create data_dir/chunks",
            source,
        })?;
        if config.o_direct {
            probe_o_direct(&config.data_dir)?;
        }
        let (index, used_bytes) = scan(&chunks)?;
        tracing::debug!(dir = %config.data_dir.display(), chunks = index.len(), used_bytes, "indexed chunks");
        Ok(ChunkDir {
            data_dir: config.data_dir.clone(),
            chunk_size: config.chunk_size,
            o_direct: config.o_direct,
            cannot_allocate: Cell::new(false),
            capacity_bytes: config.capacity_bytes,
            index: RefCell::new(index),
            used_bytes: Cell::new(used_bytes),
            files: RefCell::new(HashMap::new()),
            tick: Cell::new(0),
            dirty_chunks: RefCell::new(BTreeSet::new()),
            dirty_dirs: RefCell::new(BTreeSet::new()),
        })
    }

    pub(crate) fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    pub(crate) fn check_range(&self, offset: u64, len: usize) -> Result<u64, StoreError> {
        check_range(self.chunk_size, offset, len)
    }

    /// Reserves room for a chunk to reach `end` bytes.
    pub(crate) fn reserve(&self, id: ChunkId, end: u64) -> Result<Reservation, StoreError> {
        let mut index = self.index.borrow_mut();
        let previous_len = index.get(&id).copied();
        let old = previous_len.unwrap_or(0);
        if end > old {
            let needed = end - old;
            if let Some(capacity) = self.capacity_bytes {
                let available = capacity.saturating_sub(self.used_bytes.get());
                if needed > available {
                    return Err(StoreError::NoSpace { needed, available });
                }
            }
            self.used_bytes.set(self.used_bytes.get() + needed);
            index.insert(id, end);
        } else if previous_len.is_none() {
            index.insert(id, 0);
        }
        Ok(Reservation { id, previous_len })
    }

    /// Undoes a reservation whose write never reached the file.
    pub(crate) fn unreserve(&self, reservation: Reservation) {
        match reservation.previous_len {
            Some(len) => self.set_len(reservation.id, Some(len)),
            None => self.set_len(reservation.id, None),
        }
    }

    /// Re-reads a chunk's length from its file after a failed write.
    pub(crate) fn refresh(&self, id: ChunkId, file: &ChunkFile) {
        match file.buffered.metadata() {
            Ok(meta) => self.set_len(id, Some(meta.len())),
            Err(e) => tracing::warn!(%id, error = %e, "cannot re-read chunk length"),
        }
    }

    fn set_len(&self, id: ChunkId, len: Option<u64>) {
        let mut index = self.index.borrow_mut();
        let old = match len {
            Some(len) => index.insert(id, len),
            None => index.remove(&id),
        };
        let used = self.used_bytes.get() - old.unwrap_or(0) + len.unwrap_or(0);
        self.used_bytes.set(used);
    }

    /// Notes a completed write for the next `sync`.
    pub(crate) fn mark_dirty(&self, id: ChunkId) {
        self.dirty_chunks.borrow_mut().insert(id);
    }

    /// Checks a write of `len` bytes at `offset`, reserves the chunk's new length and
    /// opens the chunk. `None` for an empty write, which changes nothing.
    pub(crate) fn begin_write(
        &self,
        id: ChunkId,
        offset: u64,
        len: usize,
    ) -> Result<Option<Rc<ChunkFile>>, StoreError> {
        let end = self.check_range(offset, len)?;
        if len == 0 {
            return Ok(None);
        }
        let reservation = self.reserve(id, end)?;
        match self.open_for_write(id, reservation.previous_len.is_some()) {
            Ok(file) => Ok(Some(file)),
            Err(e) => {
                self.unreserve(reservation);
                Err(e)
            }
        }
    }

    /// Checks a read of `len` bytes at `offset` and opens the chunk; `None` if it does not
    /// exist.
    pub(crate) fn begin_read(
        &self,
        id: ChunkId,
        offset: u64,
        len: usize,
    ) -> Result<Option<Rc<ChunkFile>>, StoreError> {
        self.check_range(offset, len)?;
        self.open_for_read(id)
    }

    /// The open file of a chunk, creating the chunk (and its directory) unless it
    /// `existed`: one that did and is gone is [`StoreError::Vanished`], since a new file in
    /// its place would answer its lost bytes as a hole.
    pub(crate) fn open_for_write(
        &self,
        id: ChunkId,
        existed: bool,
    ) -> Result<Rc<ChunkFile>, StoreError> {
        if let Some(file) = self.cached(id) {
            return Ok(file);
        }
        let path = id::chunk_path(&self.data_dir, id);
        let file = match existed {
            true => self
                .open_file(&path, false)
                .map_err(|e| self.vanished(id, e))?,
            false => self.create_in_file_dir(&path, id)?,
        };
        Ok(self.insert_cached(id, file))
    }

    /// The error for chunk `id`, which the index holds, failing to open with `e`.
    fn vanished(&self, id: ChunkId, e: io::Error) -> StoreError {
        if e.kind() != io::ErrorKind::NotFound {
            return StoreError::io("open chunk", e, 0);
        }
        tracing::error!(%id, "indexed chunk vanished from disk: its bytes are lost");
        StoreError::Vanished { chunk: id }
    }

    /// Opens `path`, a file in `id`'s file directory, creating it (and the directory) if
    /// missing.
    fn create_in_file_dir(&self, path: &Path, id: ChunkId) -> Result<ChunkFile, StoreError> {
        let file = match self.open_file(path, true) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let dir = id::file_dir(&self.data_dir, id.file_id);
                match fs::create_dir(&dir) {
                    Ok(()) => {
                        self.dirty_dirs.borrow_mut().insert(None);
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(StoreError::io("mkdir", e, 0)),
                }
                self.open_file(path, true)
            }
            other => other,
        }
        .map_err(|e| StoreError::io("open chunk", e, 0))?;
        self.dirty_dirs.borrow_mut().insert(Some(id.file_id));
        Ok(file)
    }

    /// Holds room on disk for chunk `id` to be written whole at up to `len` bytes later,
    /// where [`ChunkDir::begin_whole`] will write it: `len` bytes allocated in that file.
    /// The room is the file's own, so no
    /// other writer, an in-flight write of this store's or another process's, can take
    /// it before the write-back does (a shared reserve given back just before the
    /// write-back was taken so). Fails with [`StoreError::NoSpace`] when the disk has no
    /// room, holding what it held before.
    pub(crate) fn hold_whole(&self, id: ChunkId, len: u64) -> Result<(), StoreError> {
        let partial = id::partial_path(&self.data_dir, id);
        let size_before = fs::metadata(&partial).ok().map(|m| m.len());
        let file = self.create_in_file_dir(&partial, id)?;
        if let Err(e) = self.allocate(&file.buffered, len) {
            // A failed fallocate may keep part of what it allocated, and the length.
            match size_before {
                Some(size) => {
                    let _ = file.buffered.set_len(size);
                }
                None => self.release_whole(id),
            }
            return Err(StoreError::io("fallocate chunk", e, len));
        }
        Ok(())
    }

    /// Gives back the room held for chunk `id`'s write past its first `len` bytes.
    pub(crate) fn trim_whole(&self, id: ChunkId, len: u64) {
        let partial = id::partial_path(&self.data_dir, id);
        let trimmed = OpenOptions::new()
            .write(true)
            .open(&partial)
            .and_then(|file| match file.metadata()?.len() > len {
                true => file.set_len(len),
                false => Ok(()),
            });
        if let Err(e) = trimmed {
            tracing::warn!(path = %partial.display(), error = %e, "room held for a chunk not trimmed");
        }
    }

    /// Gives back the room [`ChunkDir::hold_whole`] held for chunk `id`, if any.
    pub(crate) fn release_whole(&self, id: ChunkId) {
        let partial = id::partial_path(&self.data_dir, id);
        match fs::remove_file(&partial) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(path = %partial.display(), error = %e, "partial chunk not removed");
            }
            _ => {}
        }
    }

    /// The file to write chunk `id` whole into, `len` bytes of it allocated, under a name
    /// of its own until [`ChunkDir::commit_whole`] renames it over the chunk's: a crash
    /// leaves the chunk as it was or whole, never its start alone (the rest read as never
    /// written). What a crash left of one is removed at the next open. It is the file
    /// [`ChunkDir::hold_whole`] held room in, if it did, and keeps that room: it is cut to
    /// the chunk's length only at the commit, and a failed write leaves it for the next.
    pub(crate) fn begin_whole(&self, id: ChunkId, len: u64) -> Result<Rc<ChunkFile>, StoreError> {
        let file = self.create_in_file_dir(&id::partial_path(&self.data_dir, id), id)?;
        self.allocate(&file.buffered, len)
            .map_err(|e| StoreError::io("fallocate chunk", e, len))?;
        Ok(Rc::new(file))
    }

    /// Makes `file`, which [`ChunkDir::begin_whole`] gave and which now holds the chunk's
    /// `len` bytes from its start, chunk `id`.
    pub(crate) fn commit_whole(
        &self,
        id: ChunkId,
        file: &ChunkFile,
        len: u64,
    ) -> Result<(), StoreError> {
        // Past `len` it may hold room held for more, or bytes of a failed write.
        file.buffered
            .set_len(len)
            .map_err(|e| StoreError::io("ftruncate", e, 0))?;
        let partial = id::partial_path(&self.data_dir, id);
        fs::rename(&partial, id::chunk_path(&self.data_dir, id))
            .map_err(|e| StoreError::io("rename chunk", e, 0))?;
        self.files.borrow_mut().remove(&id);
        self.set_len(id, Some(len));
        self.mark_dirty(id);
        Ok(())
    }

    /// Allocates the first `len` bytes of `file`. A file system that cannot allocate
    /// ahead leaves them to the writes (warned of once): a full disk then fails a tiered
    /// store's write-back.
    fn allocate(&self, file: &File, len: u64) -> io::Result<()> {
        if len == 0 || self.cannot_allocate.get() {
            return Ok(());
        }
        match fallocate(file, len) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                tracing::warn!(
                    dir = %self.data_dir.display(),
                    "this file system cannot allocate ahead (fallocate): the memory tier's \
                     unsynced writes are not guaranteed room on disk, and a full disk fails \
                     their write-back"
                );
                self.cannot_allocate.set(true);
                Ok(())
            }
            done => done,
        }
    }

    /// The open file of a chunk, or `None` if the chunk does not exist.
    pub(crate) fn open_for_read(&self, id: ChunkId) -> Result<Option<Rc<ChunkFile>>, StoreError> {
        if let Some(file) = self.cached(id) {
            return Ok(Some(file));
        }
        if !self.index.borrow().contains_key(&id) {
            return Ok(None);
        }
        let path = id::chunk_path(&self.data_dir, id);
        match self.open_file(&path, false) {
            Ok(file) => Ok(Some(self.insert_cached(id, file))),
            // The file system went read-only (as ext4 does after an error): the bytes still
            // read. Not cached, so no write ever finds this descriptor.
            Err(e) if e.kind() == io::ErrorKind::ReadOnlyFilesystem => self
                .open_read_only(&path)
                .map(|file| Some(Rc::new(file)))
                .map_err(|e| self.vanished(id, e)),
            Err(e) => Err(self.vanished(id, e)),
        }
    }

    /// Opens `path` for reading only: buffered, as reads on a read-only file system are
    /// rare enough not to need O_DIRECT.
    fn open_read_only(&self, path: &Path) -> io::Result<ChunkFile> {
        Ok(ChunkFile {
            buffered: File::open(path)?,
            direct: None,
        })
    }

    fn open_file(&self, path: &Path, create: bool) -> io::Result<ChunkFile> {
        let open = |direct: bool| {
            let mut options = OpenOptions::new();
            options.read(true).write(true).create(create);
            if direct {
                options.custom_flags(libc::O_DIRECT);
            }
            options.open(path)
        };
        let buffered = open(false)?;
        let direct = if self.o_direct {
            Some(open(true)?)
        } else {
            None
        };
        Ok(ChunkFile { buffered, direct })
    }

    fn cached(&self, id: ChunkId) -> Option<Rc<ChunkFile>> {
        let mut files = self.files.borrow_mut();
        let (file, stamp) = files.get_mut(&id)?;
        self.tick.set(self.tick.get() + 1);
        *stamp = self.tick.get();
        Some(Rc::clone(file))
    }

    fn insert_cached(&self, id: ChunkId, file: ChunkFile) -> Rc<ChunkFile> {
        let mut files = self.files.borrow_mut();
        if files.len() >= FD_CACHE_MAX {
            let oldest = files
                .iter()
                .min_by_key(|(_, (_, stamp))| *stamp)
                .map(|(id, _)| *id)
                .expect("the cache is full, so not empty");
            files.remove(&oldest);
        }
        let file = Rc::new(file);
        self.tick.set(self.tick.get() + 1);
        files.insert(id, (Rc::clone(&file), self.tick.get()));
        file
    }

    /// Sets a chunk's length, creating it if missing.
    pub(crate) fn truncate(&self, id: ChunkId, len: u64) -> Result<(), StoreError> {
        self.check_range(len, 0)?;
        let reservation = self.reserve(id, len)?;
        let file = match self.open_for_write(id, reservation.previous_len.is_some()) {
            Ok(file) => file,
            Err(e) => {
                self.unreserve(reservation);
                return Err(e);
            }
        };
        let result = file.buffered.set_len(len);
        match result {
            Ok(()) => {
                self.set_len(id, Some(len));
                self.mark_dirty(id);
                Ok(())
            }
            Err(e) => {
                self.refresh(id, &file);
                Err(StoreError::io("ftruncate", e, len))
            }
        }
    }

    pub(crate) fn remove(&self, id: ChunkId) -> Result<bool, StoreError> {
        self.files.borrow_mut().remove(&id);
        self.dirty_chunks.borrow_mut().remove(&id);
        let existed = match fs::remove_file(id::chunk_path(&self.data_dir, id)) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(StoreError::io("unlink chunk", e, 0)),
        };
        self.set_len(id, None);
        if existed {
            self.dirty_dirs.borrow_mut().insert(Some(id.file_id));
        }
        Ok(existed)
    }

    /// Unlinks every chunk file of `file_id` and then its directory.
    pub(crate) fn remove_file(&self, file_id: u64) -> Result<u64, StoreError> {
        let range = ChunkId::new(file_id, 0)..=ChunkId::new(file_id, u64::MAX);
        self.files
            .borrow_mut()
            .retain(|id, _| id.file_id != file_id);
        self.dirty_chunks
            .borrow_mut()
            .retain(|id| id.file_id != file_id);
        let ids: Vec<ChunkId> = self
            .index
            .borrow()
            .range(range)
            .map(|(id, _)| *id)
            .collect();
        let dir = id::file_dir(&self.data_dir, file_id);
        let mut removed = 0;
        for id in ids {
            match fs::remove_file(id::chunk_path(&self.data_dir, id)) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("unlink chunk", e, 0)),
            }
            self.set_len(id, None);
        }
        match fs::remove_dir(&dir) {
            Ok(()) => {
                self.dirty_dirs.borrow_mut().insert(None);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "file directory not removed")
            }
        }
        self.dirty_dirs.borrow_mut().remove(&Some(file_id));
        Ok(removed)
    }

    pub(crate) fn stat(&self, id: ChunkId) -> Option<ChunkStat> {
        self.index.borrow().get(&id).map(|&len| ChunkStat { len })
    }

    pub(crate) fn file_chunks(&self, file_id: u64) -> Vec<(u64, ChunkStat)> {
        let range = ChunkId::new(file_id, 0)..=ChunkId::new(file_id, u64::MAX);
        self.index
            .borrow()
            .range(range)
            .map(|(id, &len)| (id.index, ChunkStat { len }))
            .collect()
    }

    pub(crate) fn list(&self) -> Vec<ChunkId> {
        self.index.borrow().keys().copied().collect()
    }

    pub(crate) fn usage(&self) -> StoreUsage {
        StoreUsage {
            used_bytes: self.used_bytes.get(),
            capacity_bytes: self.capacity_bytes,
            chunks: self.index.borrow().len() as u64,
        }
    }

    /// Takes the chunks written since the last sync, oldest id first.
    pub(crate) fn take_dirty(&self) -> Vec<ChunkId> {
        std::mem::take(&mut *self.dirty_chunks.borrow_mut())
            .into_iter()
            .collect()
    }

    /// Fsyncs every directory whose entries changed since the last sync.
    pub(crate) fn sync_dirs(&self) -> Result<(), StoreError> {
        let dirs = std::mem::take(&mut *self.dirty_dirs.borrow_mut());
        // Children first, so a new file's entry is durable before its parent's.
        for dir in dirs.iter().rev() {
            let path = match dir {
                Some(file_id) => id::file_dir(&self.data_dir, *file_id),
                None => id::chunks_dir(&self.data_dir),
            };
            match File::open(&path) {
                Ok(dir) => dir
                    .sync_all()
                    .map_err(|e| StoreError::io("fsync dir", e, 0))?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("open dir", e, 0)),
            }
        }
        Ok(())
    }
}

/// Indexes `<data_dir>/chunks`: returns every chunk with its length, and the total.
fn scan(chunks: &Path) -> Result<(BTreeMap<ChunkId, u64>, u64), StoreError> {
    let read_dir = |path: &Path| fs::read_dir(path).map_err(|e| StoreError::io("readdir", e, 0));
    let mut index = BTreeMap::new();
    let mut used = 0;
    for entry in read_dir(chunks)? {
        let entry = entry.map_err(|e| StoreError::io("readdir", e, 0))?;
        let file_id = parse_entry(&entry, true)?;
        let Some(file_id) = file_id else { continue };
        for chunk in read_dir(&entry.path())? {
            let chunk = chunk.map_err(|e| StoreError::io("readdir", e, 0))?;
            if chunk
                .file_name()
                .to_string_lossy()
                .ends_with(id::PARTIAL_SUFFIX)
            {
                // Room held for a chunk's write-back, or a chunk being written whole when
                // the process died: never acknowledged as the chunk.
                fs::remove_file(chunk.path()).map_err(|e| StoreError::io("unlink", e, 0))?;
                continue;
            }
            let Some(index_no) = parse_entry(&chunk, false)? else {
                continue;
            };
            let len = chunk
                .metadata()
                .map_err(|e| StoreError::io("stat chunk", e, 0))?
                .len();
            index.insert(ChunkId::new(file_id, index_no), len);
            used += len;
        }
    }
    Ok((index, used))
}

/// The number a directory entry names, if it is a well-formed directory (`dir`) or
/// regular file; anything else is skipped with a warning.
fn parse_entry(entry: &fs::DirEntry, dir: bool) -> Result<Option<u64>, StoreError> {
    let kind = entry
        .file_type()
        .map_err(|e| StoreError::io("stat chunk", e, 0))?;
    let number = id::parse_name(&entry.file_name());
    let kind_ok = if dir { kind.is_dir() } else { kind.is_file() };
    if number.is_none() || !kind_ok {
        tracing::warn!(path = %entry.path().display(), "skipping a name that is not a chunk");
        return Ok(None);
    }
    Ok(number)
}

/// Fails with [`StoreError::Unsupported`] if `data_dir` cannot take O_DIRECT (tmpfs).
fn probe_o_direct(data_dir: &Path) -> Result<(), StoreError> {
    let path = data_dir.join(".o_direct_probe");
    let result = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path);
    let _ = fs::remove_file(&path);
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(StoreError::Unsupported {
            feature: "O_DIRECT",
            reason: format!(
                "the file system under {} refuses O_DIRECT (tmpfs?): {e}",
                data_dir.display()
            ),
        }),
        Err(e) => Err(StoreError::io("open O_DIRECT probe", e, 0)),
    }
}

/// Allocates the first `len` bytes of `file` (`fallocate(2)`, mode 0: the length grows
/// to cover them).
fn fallocate(file: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let Ok(len) = libc::off_t::try_from(len) else {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    };
    // SAFETY: a plain system call on a descriptor `file` owns; no memory is passed.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Backend;
    use std::os::unix::fs::MetadataExt;

    /// Bytes of disk `path` takes (0 if it does not exist).
    fn allocated(path: &Path) -> u64 {
        fs::metadata(path).map_or(0, |m| m.blocks() * 512)
    }

    #[test]
    fn room_held_for_a_whole_write_is_the_written_files_until_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let chunks = ChunkDir::open(&StoreConfig::new(Backend::File, dir.path())).unwrap();
        let id = ChunkId::new(3, 1);
        let partial = id::partial_path(dir.path(), id);
        chunks.hold_whole(id, 16384).unwrap();
        chunks.hold_whole(id, 65536).unwrap();
        assert!(
            allocated(&partial) >= 65536,
            "held in the file the write will write"
        );
        chunks.release_whole(id);
        assert!(!partial.exists(), "given back");

        chunks.hold_whole(id, 65536).unwrap();
        chunks.trim_whole(id, 32768);
        assert_eq!(fs::metadata(&partial).unwrap().len(), 32768, "trimmed");
        chunks.hold_whole(id, 65536).unwrap();
        // A shorter chunk keeps the room held until its bytes are in.
        let file = chunks.begin_whole(id, 4096).unwrap();
        assert!(
            allocated(&partial) >= 65536,
            "begun: the room is still held"
        );
        std::os::unix::fs::FileExt::write_all_at(file.buffered(), &[7; 4096], 0).unwrap();
        chunks.commit_whole(id, &file, 4096).unwrap();
        let chunk = id::chunk_path(dir.path(), id);
        assert_eq!(fs::read(&chunk).unwrap(), vec![7; 4096]);
        assert!(allocated(&chunk) < 65536, "cut to the chunk at the commit");
        assert!(!partial.exists());
        assert_eq!(chunks.stat(id).map(|s| s.len), Some(4096));
    }
}
