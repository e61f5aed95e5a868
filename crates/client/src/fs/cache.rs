//! The client's caches: metadata by path, and chunk data by (file, chunk), both LRU and
//! bounded, with an optional time to live.

use std::time::{Duration, Instant};

use benchfs_proto::limits::CHUNK_CACHE_SPAN_MAX;
use benchfs_proto::meta::FileMetadata;
use lru::LruCache;

/// The caches' hasher: a path is hashed at every lookup of an open or a create, and the
/// standard SipHash was a twentieth of an mdtest create's client time. Keys are the
/// caller's own paths, so flooding resistance buys nothing here.
type CacheHashState = foldhash::fast::RandomState;

/// Path → directory metadata, at most `capacity` entries. Only directories are kept: a
/// file's size changes with every other client's close, so lookups never serve a file from
/// here (`namespace::lookup`), and mdtest's creates each put one, evicting directories.
#[derive(Debug)]
pub(crate) struct MetadataCache {
    entries: Option<LruCache<String, (FileMetadata, Instant), CacheHashState>>,
    ttl: Option<Duration>,
}

impl MetadataCache {
    /// A cache of `capacity` entries (0 turns it off); entries expire after `ttl`.
    pub(crate) fn new(capacity: usize, ttl: Option<Duration>) -> Self {
        MetadataCache {
            entries: std::num::NonZeroUsize::new(capacity)
                .map(|capacity| LruCache::with_hasher(capacity, CacheHashState::default())),
            ttl,
        }
    }

    pub(crate) fn get(&mut self, path: &str) -> Option<FileMetadata> {
        let entries = self.entries.as_mut()?;
        let (meta, at) = *entries.get(path)?;
        if self.ttl.is_some_and(|ttl| at.elapsed() > ttl) {
            entries.pop(path);
            return None;
        }
        Some(meta)
    }

    /// Keeps `meta` if it is a directory's; any other record drops what `path` held.
    pub(crate) fn put(&mut self, path: &str, meta: FileMetadata) {
        let Some(entries) = self.entries.as_mut() else {
            return;
        };
        if meta.is_dir() {
            entries.put(path.to_string(), (meta, Instant::now()));
        } else {
            entries.pop(path);
        }
    }

    pub(crate) fn remove(&mut self, path: &str) {
        if let Some(entries) = self.entries.as_mut() {
            entries.pop(path);
        }
    }
}

/// (file, chunk) → the bytes last read from it at some offset, at most `capacity_bytes`;
/// only reads of up to [`CHUNK_CACHE_SPAN_MAX`] bytes.
#[derive(Debug)]
pub(crate) struct ChunkCache {
    entries: LruCache<(u64, u64), CachedSpan, CacheHashState>,
    bytes: u64,
    capacity_bytes: u64,
    ttl: Option<Duration>,
}

#[derive(Debug)]
struct CachedSpan {
    offset: u64,
    data: Vec<u8>,
    /// When it was read (for the time to live).
    at: Instant,
}

impl ChunkCache {
    /// A cache of `capacity_bytes` (0 turns it off); entries expire after `ttl`.
    pub(crate) fn new(capacity_bytes: u64, ttl: Option<Duration>) -> Self {
        ChunkCache {
            entries: LruCache::unbounded_with_hasher(CacheHashState::default()),
            bytes: 0,
            capacity_bytes,
            ttl,
        }
    }

    /// Whether the cache would keep a read of `len` bytes: it is on, and the read is
    /// small enough to be worth a copy ([`CHUNK_CACHE_SPAN_MAX`]).
    pub(crate) fn admits(&self, len: u64) -> bool {
        len <= CHUNK_CACHE_SPAN_MAX.min(self.capacity_bytes)
    }

    /// The bytes of `[offset, offset + len)` of a chunk, if a cached read covers them.
    pub(crate) fn get(
        &mut self,
        file_id: u64,
        index: u64,
        offset: u64,
        len: u64,
    ) -> Option<Vec<u8>> {
        let span = self.entries.get(&(file_id, index))?;
        if self.ttl.is_some_and(|ttl| span.at.elapsed() > ttl) {
            self.forget(file_id, index);
            return None;
        }
        let end = offset.checked_add(len)?;
        let cached_end = span.offset + span.data.len() as u64;
        // A hit needs the whole range; a short cached read is no proof the chunk ends there.
        if offset < span.offset || end > cached_end {
            return None;
        }
        let from = (offset - span.offset) as usize;
        Some(span.data[from..from + len as usize].to_vec())
    }

    pub(crate) fn put(&mut self, file_id: u64, index: u64, offset: u64, data: &[u8]) {
        let size = data.len() as u64;
        if size == 0 || !self.admits(size) {
            self.forget(file_id, index);
            return;
        }
        if let Some(old) = self.entries.put(
            (file_id, index),
            CachedSpan {
                offset,
                data: data.to_vec(),
                at: Instant::now(),
            },
        ) {
            self.bytes -= old.data.len() as u64;
        }
        self.bytes += size;
        while self.bytes > self.capacity_bytes {
            let Some((_, gone)) = self.entries.pop_lru() else {
                break;
            };
            self.bytes -= gone.data.len() as u64;
        }
    }

    /// Drops the cached span of one chunk: expired, invalidated, or older than a read of
    /// the chunk the cache did not keep (it must not outlive that newer read, or a later
    /// small read of the chunk would go back in time).
    pub(crate) fn forget(&mut self, file_id: u64, index: u64) {
        if let Some(old) = self.entries.pop(&(file_id, index)) {
            self.bytes -= old.data.len() as u64;
        }
    }

    /// Drops every cached chunk of a file (after this client wrote or cut it, or opened it
    /// again: close-to-open).
    pub(crate) fn invalidate_file(&mut self, file_id: u64) {
        let keys: Vec<_> = self
            .entries
            .iter()
            .filter(|((f, _), _)| *f == file_id)
            .map(|(k, _)| *k)
            .collect();
        for (file_id, index) in keys {
            self.forget(file_id, index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use benchfs_proto::meta::EntryKind;

    fn dir(size: u64) -> FileMetadata {
        FileMetadata {
            kind: EntryKind::Directory,
            ..meta(size)
        }
    }

    fn meta(size: u64) -> FileMetadata {
        FileMetadata {
            file_id: 1,
            kind: EntryKind::File,
            size,
            mode: 0,
            uid: 0,
            gid: 0,
            chunk_size: 4096,
            mtime_ns: 0,
            ctime_ns: 0,
            atime_ns: 0,
            birth_ns: 0,
            inline: false,
            cut_gen: 0,
        }
    }

    #[test]
    fn metadata_cache_is_bounded_and_expires() {
        let mut c = MetadataCache::new(2, None);
        c.put("/a", dir(1));
        c.put("/b", dir(2));
        c.put("/c", dir(3));
        assert_eq!(c.get("/a"), None, "least recently used is evicted");
        assert_eq!(c.get("/c").unwrap().size, 3);
        c.remove("/c");
        assert_eq!(c.get("/c"), None);
        let mut off = MetadataCache::new(0, None);
        off.put("/a", dir(1));
        assert_eq!(off.get("/a"), None);
        let mut ttl = MetadataCache::new(4, Some(Duration::ZERO));
        ttl.put("/a", dir(1));
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(ttl.get("/a"), None);
    }

    #[test]
    fn metadata_cache_keeps_directories_only_and_files_evict_none() {
        let mut c = MetadataCache::new(2, None);
        c.put("/d", dir(1));
        for i in 0..10 {
            c.put(&format!("/d/f{i}"), meta(i));
        }
        assert_eq!(c.get("/d/f9"), None, "a file is not kept");
        assert_eq!(c.get("/d").unwrap().size, 1, "files evicted the directory");
        // A directory replaced by a file (rmdir, then create) is forgotten.
        c.put("/d", meta(5));
        assert_eq!(c.get("/d"), None);
    }

    #[test]
    fn chunk_cache_keeps_small_reads_only() {
        let max = CHUNK_CACHE_SPAN_MAX as usize;
        let mut c = ChunkCache::new(64 << 20, None);
        c.put(1, 0, 0, &vec![1; max]);
        c.put(1, 1, 0, &vec![2; max + 1]);
        assert_eq!(c.get(1, 0, 0, 2), Some(vec![1, 1]));
        assert_eq!(c.get(1, 1, 0, 2), None, "a large read is not kept");
        assert_eq!(c.bytes, max as u64);
        assert!(c.admits(max as u64) && !c.admits(max as u64 + 1));
        // A newer large read of a cached chunk drops the older span.
        c.put(1, 0, 0, &vec![3; max + 1]);
        assert_eq!(
            c.get(1, 0, 0, 2),
            None,
            "the older span went with the newer read"
        );
        assert_eq!(c.bytes, 0);
        assert!(!ChunkCache::new(0, None).admits(1), "off");
    }

    #[test]
    fn chunk_cache_hits_only_covered_ranges_and_stays_bounded() {
        let mut c = ChunkCache::new(10, None);
        c.put(1, 0, 4, &[1, 2, 3, 4]);
        assert_eq!(c.get(1, 0, 5, 2), Some(vec![2, 3]));
        assert_eq!(c.get(1, 0, 3, 2), None);
        assert_eq!(c.get(1, 0, 6, 4), None);
        c.put(2, 0, 0, &[9; 8]);
        assert!(c.bytes <= 10);
        assert_eq!(c.get(1, 0, 5, 2), None, "evicted to stay within capacity");
        c.invalidate_file(2);
        assert_eq!(c.bytes, 0);
        let mut off = ChunkCache::new(0, None);
        off.put(1, 0, 0, &[1]);
        assert_eq!(off.get(1, 0, 0, 1), None);
    }
}
