//! The FUSE operations. Each request runs on one of the session's threads, through that
//! thread's own BenchFS client (a client and its UCX worker belong to one thread); what
//! all threads must agree on, the node ids and the open handles, is shared here.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use benchfs_client::blocking::BenchFS;
use benchfs_client::fs::CATCH_UP_AFTER;
use benchfs_client::{ApiError, DirEntry, FsSpace};
use benchfs_proto::meta::{EntryKind, FileMetadata, Owner};
use benchfs_proto::ops::{set_attr, SetAttrRequest, NAME_LEN_MAX};
use benchfs_proto::path;
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::attr::{self, ino_of, kind_of};
use crate::handles::{Handle, Handles};
use crate::inodes::{Inodes, ROOT};
use crate::{CacheMode, Settings};

/// Names an unlinked file that is still open in this mount takes until its last close
/// (as NFS clients do), so its data outlives the name as POSIX says.
const UNLINKED_PREFIX: &str = ".benchfs-unlinked-";

/// Where an open file of node `ino` at `path` may go when it is unlinked or replaced,
/// at the `attempt`th try (a name that exists is never taken): its last close removes it.
fn hidden_path(path: &str, ino: u64, attempt: usize) -> Result<String> {
    let (parent, _) = path::split_parent(path).map_err(|_| Errno::EINVAL)?;
    let name = match attempt {
        0 => format!("{UNLINKED_PREFIX}{ino:x}"),
        n => format!("{UNLINKED_PREFIX}{ino:x}-{n}"),
    };
    Ok(path::join(parent, &name))
}

/// How many hidden names an unlinked open file tries before the unlink fails (EEXIST).
const HIDE_TRIES_MAX: usize = 16;

/// Locks the nodes' size publishes and truncates are spread over.
const SIZE_LOCKS: usize = 64;

/// How many times a create that met an existing file, removed before it could be looked
/// at, makes the file again.
const CREATE_TRIES_MAX: usize = 8;
/// How soon after an open refused as stale the kernel's one retry comes (at once, but a
/// loaded host may delay it): an open of the node then follows its file.
const STALE_OPEN_RETRY_WITHIN: Duration = Duration::from_secs(1);

thread_local! {
    static CLIENT: RefCell<Option<BenchFS>> = const { RefCell::new(None) };
}

/// BenchFS as the kernel's FUSE file system.
pub struct BenchFuse {
    settings: Arc<Settings>,
    inodes: Inodes,
    handles: Handles,
    /// Held to publish a handle's size (read) and to truncate (write), one lock for the
    /// nodes whose number falls on it (so a truncate stuck on a dead server holds back
    /// few others' closes). A publish that read a handle's size before a truncate and
    /// sent it after would grow the file back past the cut: the kernel flushes a handle
    /// on every close of a copy of its descriptor, such as a forked child's at exec, so a
    /// FLUSH can come at any time, on another thread.
    sizes: Box<[RwLock<()>]>,
    /// Directory listings taken at opendir, by handle, so paging through one with
    /// offsets sees one consistent list.
    listings: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    next_listing: std::sync::atomic::AtomicU64,
    /// Who mounted: the root directory's owner.
    owner: Owner,
    mounted_ns: u64,
    /// Tells the kernel to drop what it cached of a node; set once the session exists.
    kernel: Arc<OnceLock<fuser::Notifier>>,
    /// The hidden names this mount moved open files to, which their last close removes:
    /// only these, never a file someone else named alike.
    hidden: Mutex<std::collections::HashSet<String>>,
}

type Result<T> = std::result::Result<T, Errno>;

impl BenchFuse {
    /// A file system over the servers in `settings`; each thread connects on its first
    /// request.
    pub(crate) fn new(settings: Arc<Settings>, owner: Owner) -> BenchFuse {
        BenchFuse {
            settings,
            inodes: Inodes::new(),
            handles: Handles::default(),
            sizes: (0..SIZE_LOCKS).map(|_| RwLock::default()).collect(),
            listings: Mutex::default(),
            next_listing: std::sync::atomic::AtomicU64::new(1),
            owner,
            mounted_ns: attr::ns(SystemTime::now()),
            kernel: Arc::default(),
            hidden: Mutex::default(),
        }
    }

    /// Where the session's notifier goes once the session exists (it takes this value).
    pub(crate) fn notifier_slot(&self) -> Arc<OnceLock<fuser::Notifier>> {
        Arc::clone(&self.kernel)
    }

    /// Makes the kernel ask for node `ino`'s attributes again at their next use. An open
    /// read the file's record afresh, but the kernel answers fstat and SEEK_END from the
    /// attributes it cached at this mount's last look (up to `attr_timeout` ago), and a
    /// size another client published since then would not show: not close-to-open.
    fn forget_attributes(&self, ino: u64) {
        let Some(kernel) = self.kernel.get() else {
            return;
        };
        // A negative offset: the attributes only, no cached pages.
        if let Err(e) = kernel.inval_inode(INodeNo(ino), -1, 0) {
            tracing::debug!(ino, error = %e, "attributes not invalidated");
        }
    }

    /// Runs `f` on this thread's client, connecting it first; the caller's user and group
    /// own what `f` creates.
    fn call<T>(
        &self,
        req: &Request,
        f: impl FnOnce(&BenchFS) -> std::result::Result<T, ApiError>,
    ) -> Result<T> {
        benchfs_client::blocking::outlive_thread_locals();
        CLIENT.with(|slot| {
            let mut slot = slot.borrow_mut();
            if slot.is_none() {
                let s = &self.settings;
                let fs = BenchFS::with_servers(&s.config, s.servers.clone(), s.secret.clone())
                    .map_err(|e| {
                        tracing::error!(error = %e, "cannot connect to the servers");
                        Errno::EIO
                    })?;
                *slot = Some(fs);
            }
            let Some(fs) = slot.as_ref() else {
                return Err(Errno::EIO);
            };
            fs.client().set_owner(Owner {
                uid: req.uid(),
                gid: req.gid(),
            });
            f(fs).map_err(|e| attr::errno(&e))
        })
    }

    fn path_of(&self, ino: INodeNo) -> Result<String> {
        self.inodes.path(ino.0).ok_or(Errno::ESTALE)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<String> {
        let name = name.to_str().ok_or(Errno::EINVAL)?;
        if name.len() > NAME_LEN_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        Ok(path::join(&self.path_of(parent)?, name))
    }

    /// The record at `path`, its size raised to what this mount's handles of it wrote and
    /// have not published. Those are read before the record: a FLUSH on another thread
    /// that publishes one in between then shows in one or the other (read after the
    /// record, it could vanish from both).
    fn stat(&self, req: &Request, path: &str) -> Result<FileMetadata> {
        let pending = self.handles.unpublished_at(path);
        let mut meta = self.call(req, |fs| fs.stat(path))?;
        if let Some((_, size)) = pending.filter(|&(ino, _)| ino == ino_of(&meta)) {
            meta.size = meta.size.max(size);
        }
        Ok(meta)
    }

    /// The attributes of `meta`, with the size this mount's own unpublished writes reached.
    fn attr(&self, meta: &FileMetadata) -> FileAttr {
        let size = self
            .handles
            .size_of(ino_of(meta), true)
            .map_or(meta.size, |s| s.max(meta.size));
        attr::of(meta, size)
    }

    /// The current record of node `ino`: `ESTALE` if its path now names another file.
    fn record(&self, req: &Request, ino: INodeNo) -> Result<(String, FileMetadata)> {
        let path = self.path_of(ino)?;
        let missed = match self.stat(req, &path) {
            Ok(meta) if ino_of(&meta) == ino.0 => return Ok((path, meta)),
            Ok(_) => Errno::ESTALE,
            Err(e) if e == Errno::ENOENT => e,
            Err(e) => return Err(e),
        };
        // Another mount renamed the file or a directory above it: the node follows its
        // file there (found by a hostile run: fstat, ftruncate and fchmod on an open
        // file failed until this mount looked the new name up).
        let moved = self.call(req, |fs| Ok(fs.block_on(fs.client().locate(ino.0))))?;
        let Some(moved) = moved.filter(|moved| *moved != path) else {
            return Err(missed);
        };
        let meta = self.stat(req, &moved)?;
        if ino_of(&meta) != ino.0 {
            return Err(Errno::ESTALE);
        }
        self.inodes.relocate(ino.0, &moved);
        Ok((moved, meta))
    }

    /// The record of node `ino` at the name this mount knows it by, for an open by name:
    /// ESTALE when another file holds that name now or none does, not the file's new name
    /// as [`Self::record`] follows it, and ESTALE too while the kernel may still hold an
    /// entry for a name another client moved the node from (the open does not say which
    /// name the kernel walked). The kernel opens the node its cached entry names, which
    /// may be up to `entry_timeout` old: following another mount's rename there wrote
    /// `echo new > f2` into the file moved from `f2` to `f4`, and `cat a` read the file
    /// moved away from `a` (a hostile run). On ESTALE the kernel looks the name up again
    /// (LOOKUP_REVAL) and opens what it names now, as NFS's close-to-open does.
    fn record_at_its_name(&self, req: &Request, ino: INodeNo) -> Result<(String, FileMetadata)> {
        if self.inodes.moved_within(ino.0, self.settings.entry_timeout) {
            return Err(Errno::ESTALE);
        }
        let path = self.path_of(ino)?;
        match self.stat(req, &path) {
            Ok(meta) if ino_of(&meta) == ino.0 => Ok((path, meta)),
            Ok(_) => Err(Errno::ESTALE),
            Err(e) => Err(stale_node(e)),
        }
    }

    /// How long the kernel may keep node `ino`'s attributes: not at all while a handle has
    /// writes whose times its close publishes, else the old times would show past the
    /// close for the whole timeout.
    fn attr_timeout(&self, ino: u64) -> Duration {
        match self.handles.has_unpublished_writes(ino) {
            true => Duration::ZERO,
            false => self.settings.attr_timeout,
        }
    }

    /// Answers a lookup-like call: the kernel now holds one more reference to the node.
    fn entry(&self, path: &str, meta: &FileMetadata, reply: ReplyEntry) {
        self.inodes.remember(ino_of(meta), path);
        reply.entry(
            &self.settings.entry_timeout,
            &self.attr(meta),
            Generation(0),
        );
    }

    /// Creates a file or directory `name` in `parent` and answers with its entry.
    fn make(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        kind: EntryKind,
        mode: u32,
        reply: ReplyEntry,
    ) {
        let made = self.child(parent, name).and_then(|path| {
            let meta = self.call(req, |fs| fs.block_on(fs.client().make(&path, kind, mode)))?;
            Ok((path, meta))
        });
        match made {
            Ok((path, meta)) => self.entry(&path, &meta, reply),
            Err(e) => reply.error(e),
        }
    }

    /// How the kernel serves a handle opened with `flags` (open(2)'s). An appending
    /// handle under `kernel_cache` does direct I/O: through the page cache the kernel cuts
    /// a write that starts inside a page it does not hold at that page's end, each piece
    /// would claim its own range, and another mount's append could land between them.
    fn open_flags(&self, flags: i32) -> FopenFlags {
        match self.settings.cache {
            CacheMode::Direct => FopenFlags::FOPEN_DIRECT_IO,
            CacheMode::Page if flags & libc::O_APPEND != 0 => FopenFlags::FOPEN_DIRECT_IO,
            CacheMode::Page | CacheMode::Writeback => FopenFlags::empty(),
        }
    }

    /// How far this mount knows file `ino` to reach, through `handle` or any other open
    /// handle: where its reads stop and its appends go.
    fn known_end(&self, ino: u64, handle: &Handle) -> u64 {
        self.handles
            .read_limit(ino)
            .map_or(handle.size, |s| s.max(handle.size))
    }

    fn open_handle(&self, path: &str, meta: &FileMetadata) -> u64 {
        let ino = ino_of(meta);
        let mut meta = *meta;
        if let Some(size) = self.handles.size_of(ino, false) {
            meta.size = meta.size.max(size);
        }
        self.handles.open(ino, path, meta)
    }

    fn sizes_of(&self, ino: u64) -> &RwLock<()> {
        &self.sizes[(ino % self.sizes.len() as u64) as usize]
    }

    /// Holds off truncates of node `ino` while a size of it is published.
    fn publishing(&self, ino: u64) -> RwLockReadGuard<'_, ()> {
        self.sizes_of(ino).read().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds off publishing sizes of node `ino` while a truncate of it runs.
    fn cutting(&self, ino: u64) -> RwLockWriteGuard<'_, ()> {
        self.sizes_of(ino)
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the servers the size handle `fh`'s writes reached, if they do not know it,
    /// and that it wrote (the modification time moves), if it did.
    fn publish(&self, req: &Request, fh: FileHandle) -> Result<()> {
        let ino = self.handles.get(fh.0).ok_or(Errno::EBADF)?.ino;
        let _publishing = self.publishing(ino);
        let handle = self.handles.get(fh.0).ok_or(Errno::EBADF)?;
        if !handle.dirty && handle.writes == handle.writes_published {
            return Ok(());
        }
        let grown = handle.dirty.then_some(handle.size);
        // Gone (another mount removed the file): ESTALE, as its writes said.
        let record = self
            .call(req, |fs| {
                fs.block_on(fs.client().publish_writes(
                    &handle.path,
                    handle.meta,
                    grown,
                    &handle.write_ends,
                ))
            })
            .map_err(stale_node)?;
        self.handles
            .published(fh.0, handle.size, handle.writes, record.map(|r| r.cut_gen));
        Ok(())
    }

    /// A read of `n` bytes at `offset` through handle `fh` met a chunk shorter than it
    /// asked: a hole, or another client cut the file since this mount looked. The record
    /// says which; after a cut the read ends there, rather than in zeros the file no
    /// longer holds, and the mount's handles know the size. Not while a handle of the
    /// file has writes to publish: its close sorts those out.
    fn cut_elsewhere(&self, req: &Request, fh: FileHandle, offset: u64, n: usize) -> usize {
        let Some(handle) = self.handles.get(fh.0) else {
            return n;
        };
        if self.handles.has_unpublished_writes(handle.ino)
            || self.handles.size_of(handle.ino, true).is_some()
        {
            return n;
        }
        let _publishing = self.publishing(handle.ino);
        let published = self
            .call(req, |fs| fs.stat(&handle.path))
            .ok()
            .filter(|m| m.file_id == handle.meta.file_id)
            .map(|m| m.size);
        let Some(size) = published else {
            return n;
        };
        self.handles.looked(fh.0, Some(size));
        let end = offset.saturating_add(n as u64);
        if size >= end {
            return n;
        }
        self.handles.truncated(handle.ino, size);
        size.saturating_sub(offset) as usize
    }

    fn set_times(
        &self,
        req: &mut SetAttrRequest,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
    ) {
        let now = attr::ns(SystemTime::now());
        let at = |t: TimeOrNow| match t {
            TimeOrNow::SpecificTime(t) => attr::ns(t),
            TimeOrNow::Now => now,
        };
        if let Some(t) = atime {
            req.set |= set_attr::ATIME;
            req.atime_ns = at(t);
        }
        if let Some(t) = mtime {
            req.set |= set_attr::MTIME;
            req.mtime_ns = at(t);
        }
        req.ctime_ns = now;
    }

    fn listing(&self, fh: FileHandle) -> Result<Arc<Vec<DirEntry>>> {
        let listings = self.listings.lock().unwrap_or_else(|p| p.into_inner());
        listings.get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    fn create_inner(
        &self,
        req: &Request,
        path: &str,
        mode: u32,
        flags: i32,
    ) -> Result<(FileMetadata, u64)> {
        let mut tries = 0;
        let meta = loop {
            let made = self.call(req, |fs| {
                fs.block_on(fs.client().make(path, EntryKind::File, mode))
            });
            let existing = match made {
                Ok(meta) => break meta,
                Err(e) if e == Errno::EEXIST && flags & libc::O_EXCL == 0 => self.stat(req, path),
                Err(e) => return Err(e),
            };
            // Removed between the two calls: make it again, as a local create would.
            tries += 1;
            let meta = match existing {
                Err(e) if e == Errno::ENOENT && tries < CREATE_TRIES_MAX => continue,
                existing => existing?,
            };
            if meta.is_dir() {
                return Err(Errno::EISDIR);
            }
            if flags & libc::O_TRUNC != 0 && meta.size > 0 {
                let _cutting = self.cutting(ino_of(&meta));
                self.call(req, |fs| fs.truncate(path, 0))?;
                self.handles.truncated(ino_of(&meta), 0);
                break self.stat(req, path)?;
            }
            break meta;
        };
        Ok((meta, self.open_handle(path, &meta)))
    }

    fn setattr_inner(&self, req: &Request, ino: INodeNo, changes: AttrChanges) -> Result<FileAttr> {
        if ino.0 == ROOT {
            return Err(Errno::EPERM);
        }
        let before_epoch = |t: Option<TimeOrNow>| matches!(t, Some(TimeOrNow::SpecificTime(t)) if t < std::time::UNIX_EPOCH);
        if before_epoch(changes.atime) || before_epoch(changes.mtime) {
            // Records keep times since 1970 only; stored as 1970 they would read back as
            // a time nobody set.
            return Err(Errno::EINVAL);
        }
        let (path, mut meta) = self.record(req, ino)?;
        if let Some(size) = changes.size {
            if meta.is_dir() {
                return Err(Errno::EISDIR);
            }
            let _cutting = self.cutting(ino.0);
            // A truncate that grows the file cuts past its published end: writes this
            // mount's handles (on other threads' clients) have not published yet are
            // published first, so that cut spares them.
            if let Some(end) = self.handles.size_of(ino.0, true) {
                self.call(req, |fs| {
                    fs.block_on(fs.client().grow_size(&path, meta.file_id, end))
                })?;
            }
            if let Err(e) = self.call(req, |fs| fs.truncate(&path, size)) {
                // Some replicas of the record may hold the new size: where the record read
                // now does, the handles take it (as `FsClient::truncate` has its own do),
                // so writes past it publish the size they reach.
                if self.record(req, ino).is_ok_and(|(_, now)| now.size == size) {
                    self.handles.truncated(ino.0, size);
                }
                return Err(e);
            }
            self.handles.truncated(ino.0, size);
            meta.size = size;
        }
        let mut set = SetAttrRequest {
            path: path.clone(),
            file_id: meta.file_id,
            set: 0,
            mode: changes.mode.unwrap_or(0),
            uid: changes.uid.unwrap_or(0),
            gid: changes.gid.unwrap_or(0),
            atime_ns: 0,
            mtime_ns: 0,
            ctime_ns: 0,
        };
        for (given, bit) in [
            (changes.mode.is_some(), set_attr::MODE),
            (changes.uid.is_some(), set_attr::UID),
            (changes.gid.is_some(), set_attr::GID),
        ] {
            if given {
                set.set |= bit;
            }
        }
        if changes.atime.is_some() || changes.mtime.is_some() {
            // A size published at close sets the file's time to the close's: the sizes this
            // mount's handles reached go first, so times set now stay (tar, cp -p set them
            // before they close). As any publish, not across a truncate, which it would
            // undo.
            let _publishing = self.publishing(ino.0);
            if let Some(end) = self.handles.size_of(ino.0, true) {
                self.call(req, |fs| {
                    fs.block_on(fs.client().grow_size(&path, meta.file_id, end))
                })?;
                self.handles.published_through(ino.0, end);
            }
            self.handles.times_set(ino.0);
        }
        self.set_times(&mut set, changes.atime, changes.mtime);
        if set.set != 0 {
            meta = self.call(req, |fs| fs.block_on(fs.client().set_attr(set)))?;
        } else if changes.size.is_some() {
            meta = self.stat(req, &path)?;
        }
        Ok(self.attr(&meta))
    }

    fn rename_inner(&self, req: &Request, from: &str, to: &str, flags: RenameFlags) -> Result<()> {
        if flags.contains(RenameFlags::RENAME_EXCHANGE) || flags.bits() & !RENAME_SUPPORTED != 0 {
            return Err(Errno::EINVAL);
        }
        if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            match self.stat(req, to) {
                Ok(_) => return Err(Errno::EEXIST),
                Err(e) if e == Errno::ENOENT => {}
                Err(e) => return Err(e),
            }
        }
        // A file this mount has open and the rename replaces stays readable through its
        // handles, as one unlinked while open does: it moves aside first.
        let replaced = match self.handles.open_at(to) {
            Some(ino) if from != to => Some((self.hide(req, to, ino)?, ino)),
            _ => None,
        };
        if let Err(e) = self.call(req, |fs| fs.block_on(fs.client().rename(from, to))) {
            if let Some((hidden, _)) = replaced {
                self.forget_hidden(&hidden);
                if let Err(back) = self.rename_inner(req, &hidden, to, RenameFlags::empty()) {
                    tracing::warn!(path = to, hidden, errno = ?back, "a rename failed and the file it would have replaced stays under its hidden name");
                }
            }
            return Err(e);
        }
        self.inodes.renamed(from, to);
        self.handles.renamed(from, to);
        self.hidden_moved(from, to);
        if let Some((hidden, ino)) = replaced {
            self.remove_hidden_if_closed(req, &hidden, ino);
        }
        Ok(())
    }

    /// Removes `hidden`, the hidden name of node `ino`, if no handle of it is open any more.
    /// Its last close removes it too, once the handles know the hidden name; a close
    /// between the move aside and that could not, and the file would stay for good. So
    /// whichever comes last removes it (the other finds nothing there).
    fn remove_hidden_if_closed(&self, req: &Request, hidden: &str, ino: u64) {
        if !self.handles.is_open(ino) {
            self.remove_hidden(req, hidden);
        }
    }

    /// Clears the set-user-ID bit, and the set-group-ID bit of a group-executable file,
    /// before a write by anyone but root, as Linux does (`file_remove_privs`): a writable
    /// set-ID program must not take new contents and stay set-ID. The kernel does it itself
    /// only for writes through its page cache, not for direct I/O (the default mode, and
    /// appends in every mode but `writeback_cache`).
    fn drop_set_id_bits(&self, req: &Request, ino: INodeNo, handle: &Handle) -> Result<()> {
        const GROUP_SET_ID: u32 = libc::S_ISGID | libc::S_IXGRP;
        let set_id_bits = |mode: u32| {
            let group = match mode & GROUP_SET_ID == GROUP_SET_ID {
                true => libc::S_ISGID,
                false => 0,
            };
            mode & libc::S_ISUID | group
        };
        if req.uid() == 0 || set_id_bits(handle.meta.mode) == 0 {
            return Ok(());
        }
        let (path, meta) = self.record(req, ino)?;
        let mode = meta.mode & !set_id_bits(meta.mode);
        if mode != meta.mode {
            let set = SetAttrRequest {
                path,
                file_id: meta.file_id,
                set: set_attr::MODE,
                mode: mode & 0o7777,
                uid: 0,
                gid: 0,
                atime_ns: 0,
                mtime_ns: 0,
                ctime_ns: attr::ns(SystemTime::now()),
            };
            self.call(req, |fs| fs.block_on(fs.client().set_attr(set)))?;
        }
        self.handles.mode_set(ino.0, mode);
        self.forget_attributes(ino.0);
        Ok(())
    }

    /// Moves the open file of node `ino` at `path` to a hidden name that no file holds, and
    /// returns that name.
    fn hide(&self, req: &Request, path: &str, ino: u64) -> Result<String> {
        for attempt in 0..HIDE_TRIES_MAX {
            let hidden = hidden_path(path, ino, attempt)?;
            match self.rename_inner(req, path, &hidden, RenameFlags::RENAME_NOREPLACE) {
                Ok(()) => {
                    self.hidden_names().insert(hidden.clone());
                    return Ok(hidden);
                }
                Err(e) if e == Errno::EEXIST => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Errno::EEXIST)
    }

    fn hidden_names(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.hidden.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After `from` was renamed to `to`: hidden names under a renamed directory move with
    /// it, and a hidden file renamed by its user is no longer this mount's to remove.
    fn hidden_moved(&self, from: &str, to: &str) {
        let mut hidden = self.hidden_names();
        hidden.remove(from);
        let moved: Vec<(String, String)> = hidden
            .iter()
            .filter_map(|h| path::moved(h, from, to).map(|to| (h.clone(), to)))
            .collect();
        for (old, new) in moved {
            hidden.remove(&old);
            hidden.insert(new);
        }
    }

    /// Whether `path` is a hidden name this mount made; it no longer counts as one.
    fn forget_hidden(&self, path: &str) -> bool {
        self.hidden_names().remove(path)
    }

    /// Removes `hidden` if this mount still counts it as a hidden name it made, once.
    fn remove_hidden(&self, req: &Request, hidden: &str) {
        if !self.forget_hidden(hidden) {
            return;
        }
        match self.call(req, |fs| fs.unlink(hidden)) {
            Err(e) if e != Errno::ENOENT => {
                tracing::warn!(path = hidden, errno = ?e, "could not remove a file unlinked while open");
            }
            _ => {}
        }
    }

    fn unlink_inner(&self, req: &Request, path: &str) -> Result<()> {
        let meta = self.stat(req, path)?;
        if meta.is_dir() {
            return Err(Errno::EISDIR);
        }
        let ino = ino_of(&meta);
        if self.handles.is_open(ino) {
            let hidden = self.hide(req, path, ino)?;
            self.remove_hidden_if_closed(req, &hidden, ino);
            return Ok(());
        }
        self.call(req, |fs| fs.unlink(path))
    }

    fn statfs_inner(&self, req: &Request) -> Result<FsSpace> {
        self.call(req, |fs| {
            fs.statfs("/")
                .inspect_err(|e| tracing::warn!(error = %e, "statfs failed"))
        })
    }

    fn readdir_entries(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
    ) -> Result<Arc<Vec<DirEntry>>> {
        match self.listing(fh) {
            Ok(l) => Ok(l),
            Err(_) => {
                let path = self.path_of(ino)?;
                Ok(Arc::new(self.call(req, |fs| fs.readdir(&path))?))
            }
        }
    }
}

/// The rename flags this file system handles (RENAME_NOREPLACE; RENAME_EXCHANGE is EINVAL).
const RENAME_SUPPORTED: u32 = libc::RENAME_NOREPLACE;

/// What a setattr asks to change.
struct AttrChanges {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
}

/// The error a call on a node whose file is gone gives: ESTALE, as NFS does. On it an
/// open looks the name up again and retries (an `O_CREAT` open then makes the file; one
/// of a name another mount removed and made again opens the new file), where ENOENT
/// ended the call while the kernel's entry for the name lasted.
fn stale_node(e: Errno) -> Errno {
    if e == Errno::ENOENT {
        Errno::ESTALE
    } else {
        e
    }
}

fn done(reply: ReplyEmpty, r: Result<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for BenchFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let max_write = self.settings.max_write;
        if let Err(nearest) = config.set_max_write(max_write) {
            let _ = config.set_max_write(nearest);
        }
        if let Err(nearest) = config.set_max_readahead(max_write) {
            let _ = config.set_max_readahead(nearest);
        }
        let mut wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS;
        match self.settings.cache {
            CacheMode::Writeback => {
                tracing::warn!("writeback_cache: the kernel keeps its own size of each file it caches, so this mount does not see other mounts' writes to those files (not close-to-open)");
                wanted |= InitFlags::FUSE_WRITEBACK_CACHE;
            }
            // Lets programs mmap a file opened for direct I/O (git, executables), through
            // the page cache; kernels before 6.6 refuse such an mmap with ENODEV.
            CacheMode::Direct
                if config
                    .capabilities()
                    .contains(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP) =>
            {
                wanted |= InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP;
            }
            CacheMode::Direct => {
                tracing::warn!("this kernel cannot mmap direct-I/O files; mount with -o kernel_cache for programs that mmap");
            }
            // Its O_APPEND handles do direct I/O (see `open_flags`).
            CacheMode::Page
                if config
                    .capabilities()
                    .contains(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP) =>
            {
                wanted |= InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP;
            }
            CacheMode::Page => {}
        }
        if let Err(missing) = config.add_capabilities(wanted) {
            if missing.contains(InitFlags::FUSE_WRITEBACK_CACHE) {
                return Err(std::io::Error::other(
                    "the kernel does not offer the writeback cache this mount asked for",
                ));
            }
            let _ = config.add_capabilities(wanted & !missing);
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self
            .child(parent, name)
            .and_then(|p| Ok((self.stat(req, &p)?, p)))
        {
            Ok((meta, path)) => self.entry(&path, &meta, reply),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.inodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino.0 == ROOT {
            let root = attr::root(self.owner, self.mounted_ns);
            return reply.attr(&self.settings.attr_timeout, &root);
        }
        match self.record(req, ino) {
            Ok((_, meta)) => reply.attr(&self.attr_timeout(ino.0), &self.attr(&meta)),
            // The file of an open descriptor is gone (another client removed it): the
            // descriptor is stale, as its reads and writes say and NFS says; ENOENT made
            // `cat` of it report "No such file or directory".
            Err(e) if e == Errno::ENOENT && (fh.is_some() || self.handles.is_open(ino.0)) => {
                reply.error(Errno::ESTALE)
            }
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let changes = AttrChanges {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        };
        // ESTALE for a node whose file is gone: an open with O_TRUNC (which the kernel
        // cuts by this call) or a truncate(2) then looks the name up again, where ENOENT
        // failed an `O_CREAT|O_TRUNC` open of a name another process had just removed.
        match self.setattr_inner(req, ino, changes) {
            Ok(attr) => reply.attr(&self.attr_timeout(ino.0), &attr),
            Err(e) => reply.error(stale_node(e)),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let target = self
            .path_of(ino)
            .and_then(|p| self.call(req, |fs| fs.block_on(fs.client().readlink(&p))));
        match target {
            Ok(t) => reply.data(t.as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // Only regular files: device nodes, FIFOs and sockets have no meaning here.
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        self.make(req, parent, name, EntryKind::File, mode & !umask, reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.make(
            req,
            parent,
            name,
            EntryKind::Directory,
            mode & !umask,
            reply,
        );
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        done(
            reply,
            self.child(parent, name)
                .and_then(|p| self.unlink_inner(req, &p)),
        );
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self
            .child(parent, name)
            .and_then(|p| self.call(req, |fs| fs.rmdir(&p)));
        done(reply, r);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let made = self.child(parent, link_name).and_then(|path| {
            let target = target.to_str().ok_or(Errno::EINVAL)?;
            let meta = self.call(req, |fs| fs.block_on(fs.client().symlink(target, &path)))?;
            Ok((path, meta))
        });
        match made {
            Ok((path, meta)) => self.entry(&path, &meta, reply),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = self.child(parent, name).and_then(|from| {
            let to = self.child(newparent, newname)?;
            self.rename_inner(req, &from, &to, flags)
        });
        done(reply, r);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        // No hard links: link(2) documents EPERM for a file system without them.
        reply.error(Errno::EPERM);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        // Right after a refusal the kernel asks once more: with the name looked up afresh,
        // or through a link to the node itself (`/proc/self/fd/N`), which has no name to
        // look up again. Either way the node's file is meant, wherever it is now.
        let found = match self
            .inodes
            .take_open_refusal(ino.0, STALE_OPEN_RETRY_WITHIN)
        {
            true => self.record(req, ino),
            false => self.record_at_its_name(req, ino),
        };
        if found.as_ref().is_err_and(|e| *e == Errno::ESTALE) {
            self.inodes.refuse_open(ino.0);
        }
        match found {
            Ok((_, meta)) if meta.is_dir() => reply.error(Errno::EISDIR),
            Ok((path, meta)) => {
                let fh = self.open_handle(&path, &meta);
                self.forget_attributes(ino.0);
                reply.opened(FileHandle(fh), self.open_flags(flags.0));
            }
            Err(e) => reply.error(stale_node(e)),
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(handle) = self.handles.get(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let mut limit = self.known_end(ino.0, &handle);
        if !handle.meta.inline
            && offset.saturating_add(u64::from(size)) > limit
            && handle.looked_at.elapsed() >= CATCH_UP_AFTER
        {
            // A read past what this mount's handles know may be for growth another client
            // published since (the kernel learned of it by a stat): the record says how
            // far. Not within a second of the handle's last look, as the API's handles
            // (and NFS's attribute cache) do, so reading a file to its end right after its
            // open costs no request more. (An inline file's read asks its record anyway.)
            // A truncate of the mount waits: its cut must not be undone by a size read
            // before it.
            let _publishing = self.publishing(ino.0);
            let published = self
                .call(req, |fs| fs.stat(&handle.path))
                .ok()
                .filter(|m| m.file_id == handle.meta.file_id)
                .map(|m| m.size);
            self.handles.looked(fh.0, published);
            limit = limit.max(published.unwrap_or(0));
        }
        let mut buf = vec![0; size as usize];
        let read = self.call(req, |fs| {
            let short_before = fs.client().short_reads();
            let n = fs.read_at(&handle.path, handle.meta, limit, &mut buf, offset)?;
            Ok((n, fs.client().short_reads() != short_before))
        });
        match read {
            Ok((n, short)) => {
                let n = if short {
                    self.cut_elsewhere(req, fh, offset, n)
                } else {
                    n
                };
                reply.data(&buf[..n])
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(handle) = self.handles.get(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let Ok(len) = u32::try_from(data.len()) else {
            return reply.error(Errno::EINVAL);
        };
        if let Err(e) = self.drop_set_id_bits(req, ino, &handle) {
            return reply.error(e);
        }
        // The kernel puts an appending write at the size it cached, which misses what
        // another mount appended since, or appends at the same time, or cut: the range is
        // claimed on the record instead, past what this mount's handles wrote and have
        // not published (the record holds the rest; a floor of sizes learned earlier put
        // appends past another mount's cut, over a hole of zeros). Writes from the page
        // cache carry page offsets, not appends.
        let appending =
            flags.0 & libc::O_APPEND != 0 && !write_flags.contains(WriteFlags::FUSE_WRITE_CACHE);
        let written = match appending {
            true => {
                let floor = self.handles.size_of(ino.0, true).unwrap_or(0);
                self.call(req, |fs| {
                    fs.append_at(&handle.path, handle.meta, data, floor)
                })
            }
            false => self
                .call(req, |fs| {
                    fs.write_at(&handle.path, handle.meta, data, offset)
                })
                .map(|()| offset),
        };
        match written {
            Ok(offset) => {
                let written = (offset, offset + u64::from(len));
                self.handles.wrote(fh.0, written, appending);
                reply.written(len);
            }
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        done(reply, self.publish(req, fh));
    }

    fn release(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let published = self.publish(req, fh);
        if let Some((handle, others)) = self.handles.close(fh.0) {
            if !others {
                self.remove_hidden(req, &handle.path);
            }
        }
        done(reply, published);
    }

    fn fsync(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.publish(req, fh).and_then(|()| {
            let path = self.handles.get(fh.0).map(|h| h.path).unwrap_or_default();
            self.call(req, |fs| fs.block_on(fs.client().sync_servers(&path)))
        });
        done(reply, r);
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // The name may hold another directory now (another mount removed and made it
        // again): listing that under this node, whose own record is gone, failed later
        // with ESTALE that the kernel does not retry.
        let path = match ino.0 {
            ROOT => self.path_of(ino),
            _ => self
                .record(req, ino)
                .map(|(path, _)| path)
                .map_err(stale_node),
        };
        let listed = path.and_then(|path| self.call(req, |fs| fs.readdir(&path)));
        match listed {
            Ok(entries) => {
                let fh = self
                    .next_listing
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.listings
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(fh, Arc::new(entries));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.readdir_entries(req, ino, fh) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        // Offsets 1 and 2 are "." and ".."; entry i is offset i + 3.
        let dots = [(ino, ".", 1u64), (INodeNo(ROOT), "..", 2)];
        for (node, name, next) in dots.into_iter().skip(offset.min(2) as usize) {
            if reply.add(node, next, FileType::Directory, name) {
                return reply.ok();
            }
        }
        let start = offset.saturating_sub(2) as usize;
        for (i, entry) in entries.iter().enumerate().skip(start) {
            let node = INodeNo(ino_of(&entry.meta));
            if reply.add(node, i as u64 + 3, kind_of(&entry.meta), &entry.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let (entries, dir) = match self
            .readdir_entries(req, ino, fh)
            .and_then(|e| Ok((e, self.path_of(ino)?)))
        {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        let ttl = self.settings.entry_timeout;
        if offset < 1 {
            let me = if ino.0 == ROOT {
                attr::root(self.owner, self.mounted_ns)
            } else {
                match self.record(req, ino) {
                    Ok((_, meta)) => self.attr(&meta),
                    Err(e) => return reply.error(e),
                }
            };
            if reply.add(ino, 1, ".", &ttl, &me, Generation(0)) {
                return reply.ok();
            }
        }
        if offset < 2 {
            // The kernel takes no reference for "." and ".."; their attributes are unused.
            let parent = attr::root(self.owner, self.mounted_ns);
            if reply.add(parent.ino, 2, "..", &ttl, &parent, Generation(0)) {
                return reply.ok();
            }
        }
        let start = offset.saturating_sub(2) as usize;
        for (i, entry) in entries.iter().enumerate().skip(start) {
            let attr = self.attr(&entry.meta);
            if reply.add(
                attr.ino,
                i as u64 + 3,
                &entry.name,
                &ttl,
                &attr,
                Generation(0),
            ) {
                break;
            }
            // An entry given with its attributes counts as a lookup the kernel holds.
            self.inodes
                .remember(attr.ino.0, &path::join(&dir, &entry.name));
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.listings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.statfs_inner(req) {
            Ok(space) => reply.statfs(
                space.blocks,
                space.blocks_free,
                space.blocks_free,
                space.files,
                space.files_free,
                space.block_size as u32,
                NAME_LEN_MAX as u32,
                space.block_size as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Permission bits are checked by the kernel (default_permissions); this only
        // says whether the node still exists.
        if ino.0 == ROOT {
            return reply.ok();
        }
        done(reply, self.record(req, ino).map(drop));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let made = self
            .child(parent, name)
            .and_then(|path| Ok((self.create_inner(req, &path, mode & !umask, flags)?, path)));
        match made {
            Ok(((meta, fh), path)) => {
                self.inodes.remember(ino_of(&meta), &path);
                reply.created(
                    &self.settings.entry_timeout,
                    &self.attr(&meta),
                    Generation(0),
                    FileHandle(fh),
                    self.open_flags(flags),
                );
            }
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        // Chunks are allocated as they are written; space cannot be reserved ahead.
        reply.error(Errno::EOPNOTSUPP);
    }
}
