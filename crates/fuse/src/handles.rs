//! Open files. Any thread may serve any request, so a handle lives here, shared, not in
//! one thread's client: it holds the record, the size its writes reached and whether the
//! servers have been told.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use benchfs_client::fs::WriteEnds;
use benchfs_proto::meta::FileMetadata;
use benchfs_proto::path;

/// One open file.
#[derive(Debug, Clone)]
pub(crate) struct Handle {
    /// Node id.
    pub ino: u64,
    /// The file's path, following renames.
    pub path: String,
    /// The record at open.
    pub meta: FileMetadata,
    /// The size as this mount knows it: the size at open, moved by this mount's writes
    /// and truncates.
    pub size: u64,
    /// Whether `size` grew past what the servers hold.
    pub dirty: bool,
    /// Writes through the handle: one that wrote in place publishes the time alone.
    pub writes: u64,
    /// How many of `writes` the file's modification time on the servers covers.
    pub writes_published: u64,
    /// The writes in place not yet published, as `FsClient::publish_writes` takes them:
    /// the publish keeps the furthest of them that landed after another client cut the
    /// file, which need not be the furthest of all.
    pub write_ends: WriteEnds,
    /// How far this mount has seen the file written, through any handle, closed ones
    /// included: how far reads and appends through this handle go. Unlike `size`, never
    /// published.
    pub seen: u64,
    /// When the handle last learned the file's published size: at its open, or when a
    /// read past what it knew asked the record.
    pub looked_at: Instant,
}

/// Every open handle of the mount.
#[derive(Default)]
pub(crate) struct Handles {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Handle>>,
}

impl Handles {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Handle>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a handle; returns its number.
    pub(crate) fn open(&self, ino: u64, path: &str, meta: FileMetadata) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let handle = Handle {
            ino,
            path: path.to_string(),
            meta,
            size: meta.size,
            dirty: false,
            writes: 0,
            writes_published: 0,
            write_ends: WriteEnds::default(),
            seen: meta.size,
            looked_at: Instant::now(),
        };
        self.lock().insert(fh, handle);
        fh
    }

    /// A copy of handle `fh`.
    pub(crate) fn get(&self, fh: u64) -> Option<Handle> {
        self.lock().get(&fh).cloned()
    }

    /// Closes handle `fh`; returns it, and whether another handle of its node is open.
    pub(crate) fn close(&self, fh: u64) -> Option<(Handle, bool)> {
        let mut open = self.lock();
        let handle = open.remove(&fh)?;
        let mut others = false;
        // What the closed handle wrote is the file's now, for every process of the mount:
        // a reader opened before it (`tail -f`) must not stop at the size it opened with.
        // Only for reading: the other handles publish what they wrote, not this.
        for h in open.values_mut().filter(|h| h.ino == handle.ino) {
            others = true;
            h.seen = h.seen.max(handle.size).max(handle.seen);
        }
        Some((handle, others))
    }

    /// Handle `fh` asked the record now, which says the file was published up to
    /// `published` (`None`: the record did not answer, or is another file's now): every
    /// handle of its node reads that far.
    pub(crate) fn looked(&self, fh: u64, published: Option<u64>) {
        let mut open = self.lock();
        let Some(h) = open.get_mut(&fh) else { return };
        h.looked_at = Instant::now();
        let ino = h.ino;
        if let Some(size) = published {
            for h in open.values_mut().filter(|h| h.ino == ino) {
                h.seen = h.seen.max(size);
            }
        }
    }

    /// A write through `fh` of `offset..end`; an append's claim put it before any cut its
    /// publish finds, so it adds no write end.
    ///
    /// An append leaves the handle's size to publish as it was: its claim grew the record on
    /// every replica already. Counted there, it raised the floor of the mount's next
    /// append above what a replica that had not yet seen another mount's claim held, and
    /// the replicas, taking the two claims in another order, placed that append 100 bytes
    /// apart (found by a hostile-user run; the replica repair then grew the file by zeros).
    pub(crate) fn wrote(&self, fh: u64, (offset, end): (u64, u64), appended: bool) {
        if let Some(h) = self.lock().get_mut(&fh) {
            h.seen = h.seen.max(end);
            h.writes += 1;
            if appended {
                return;
            }
            h.write_ends.note(offset, end, h.meta.chunk_size);
            if end > h.size {
                h.size = end;
                h.dirty = true;
            }
        }
    }

    /// The servers now hold the size and time of handle `fh` as they were when it had
    /// size `seen` and had made `writes` writes; `cut_gen` is the published record's cut
    /// count, if the file still has one.
    pub(crate) fn published(&self, fh: u64, seen: u64, writes: u64, cut_gen: Option<u16>) {
        if let Some(h) = self.lock().get_mut(&fh) {
            // With no write since the publish began, the handle's later writes come after
            // every cut the record showed.
            if let Some(cut_gen) = cut_gen.filter(|_| h.writes == writes) {
                h.meta.cut_gen = cut_gen;
            }
            if h.size == seen {
                h.dirty = false;
            }
            // Ends noted since the publish began are kept, with the published ones
            // among them: publishing one again grows the file no further than it did.
            if h.writes == writes {
                h.write_ends.clear();
            }
            h.writes_published = h.writes_published.max(writes);
        }
    }

    /// `ino`'s mode is now `mode`, as every handle of it should know.
    pub(crate) fn mode_set(&self, ino: u64, mode: u32) {
        for h in self.lock().values_mut().filter(|h| h.ino == ino) {
            h.meta.mode = mode;
        }
    }

    /// Times are being set on `ino`: what its handles wrote so far moves them no more.
    pub(crate) fn times_set(&self, ino: u64) {
        for h in self.lock().values_mut().filter(|h| h.ino == ino) {
            h.writes_published = h.writes;
        }
    }

    /// The servers now hold size `size` for `ino`: its handles that reached no further have
    /// nothing left to publish (one that grew past it since keeps its own).
    pub(crate) fn published_through(&self, ino: u64, size: u64) {
        for h in self
            .lock()
            .values_mut()
            .filter(|h| h.ino == ino && h.size <= size)
        {
            h.dirty = false;
        }
    }

    /// The largest size an open handle of `ino` knows (only those with a size still to
    /// publish, if `unpublished`), if there is one.
    pub(crate) fn size_of(&self, ino: u64, unpublished: bool) -> Option<u64> {
        self.lock()
            .values()
            .filter(|h| h.ino == ino && (h.dirty || !unpublished))
            .map(|h| h.size)
            .max()
    }

    /// The node of the open handles at `path` with a size still to publish, and the
    /// largest such size, if there is one.
    pub(crate) fn unpublished_at(&self, path: &str) -> Option<(u64, u64)> {
        self.lock()
            .values()
            .filter(|h| h.path == path && h.dirty)
            .map(|h| (h.ino, h.size))
            .max_by_key(|&(_, size)| size)
    }

    /// How far reads of `ino` go: the largest size or extent seen of its open handles, if
    /// one is open.
    pub(crate) fn read_limit(&self, ino: u64) -> Option<u64> {
        self.lock()
            .values()
            .filter(|h| h.ino == ino)
            .map(|h| h.size.max(h.seen))
            .max()
    }

    /// Whether a handle of `ino` made writes whose time the servers do not hold yet.
    pub(crate) fn has_unpublished_writes(&self, ino: u64) -> bool {
        self.lock()
            .values()
            .any(|h| h.ino == ino && h.writes > h.writes_published)
    }

    /// Whether a handle of `ino` is open.
    pub(crate) fn is_open(&self, ino: u64) -> bool {
        self.lock().values().any(|h| h.ino == ino)
    }

    /// The node of an open handle whose file is at `path`, if there is one.
    pub(crate) fn open_at(&self, path: &str) -> Option<u64> {
        self.lock().values().find(|h| h.path == path).map(|h| h.ino)
    }

    /// A truncate set `ino`'s size: no handle has a larger size left to publish, and bytes
    /// past it are no longer the file's (the record a handle writes with says how far
    /// the servers held bytes, as `FsClient::cut_handles` cuts an API handle's).
    pub(crate) fn truncated(&self, ino: u64, size: u64) {
        for h in self.lock().values_mut().filter(|h| h.ino == ino) {
            h.meta.size = h.meta.size.min(size);
            h.size = size;
            h.seen = size;
            h.dirty = false;
            h.write_ends.clear();
        }
    }

    /// Follows a rename of `from` to `to`.
    pub(crate) fn renamed(&self, from: &str, to: &str) {
        for h in self.lock().values_mut() {
            if let Some(moved) = path::moved(&h.path, from, to) {
                h.path = moved;
            }
        }
    }
}
