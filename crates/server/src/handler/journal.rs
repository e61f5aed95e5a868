//! The metadata journal: an append-only log of metadata changes that a restarted server
//! replays, for the file and io_uring backends.
//!
//! Record layout (little-endian): `len: u32` (bytes after this field), `check: u32` (low
//! half of XXH3-64 of the bytes after it), `tag: u8`, then for `Put` the 48-byte metadata
//! and a u16-prefixed path, for `Delete` the file id and the path, for `HighWater` the next
//! inode number. On open the journal is replayed up to the first torn or corrupt record,
//! then rewritten as a compact snapshot (temporary file, fsync, rename). A running server
//! compacts it the same way once the records appended since the last snapshot outweigh the
//! snapshot and [`COMPACT_MIN_BYTES`], so it stays within about twice the live table and
//! each compaction's cost is paid for by the appends before it.
//!
//! **Durability:** appends go to the page cache before the reply is sent, so a killed
//! server loses nothing it acknowledged; `Fsync` makes them survive a power loss too.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use benchfs_proto::meta::{FileMetadata, FILE_METADATA_LEN};
use benchfs_proto::wire::{Reader, Writer};
use xxhash_rust::xxh3::xxh3_64;

use crate::metadata::MetadataTable;

const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_HIGH_WATER: u8 = 3;
const TAG_MOVE_OUT: u8 = 4;
const TAG_TOMBSTONE: u8 = 5;
/// Largest record: a tag, metadata, and a path of PATH_LEN_MAX bytes with its prefix.
const RECORD_LEN_MAX: usize = 1 + FILE_METADATA_LEN + 8 + 2 + benchfs_proto::limits::PATH_LEN_MAX;

/// One metadata change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record<'a> {
    /// A record was created or replaced.
    Put {
        /// The path.
        path: &'a str,
        /// The record.
        meta: FileMetadata,
    },
    /// A record was removed.
    Delete {
        /// The path.
        path: &'a str,
        /// The removed record's inode number, so it is never handed out again.
        file_id: u64,
    },
    /// Inode numbers below this were handed out.
    HighWater(u64),
    /// A record left its path for another (a rename); its file lives on.
    MoveOut {
        /// The old path.
        path: &'a str,
        /// The record's inode number.
        file_id: u64,
    },
    /// A file deleted before the last snapshot, remembered for peers' orphan sweeps.
    Tombstone(u64),
}

/// Why the journal could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// Reading, writing or syncing the journal failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The journal file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Bytes appended since the last snapshot below which a running server never compacts.
pub const COMPACT_MIN_BYTES: u64 = 4 << 20;

/// The open journal of one server.
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
    /// Size of the last snapshot.
    snapshot_bytes: u64,
    /// Bytes appended since it.
    appended_bytes: u64,
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> JournalError {
    let path = path.to_path_buf();
    move |source| JournalError::Io { op, path, source }
}

fn encode(record: &Record<'_>) -> Vec<u8> {
    let mut body = Writer::new();
    match record {
        Record::Put { path, meta } => {
            body.u8(TAG_PUT);
            meta.encode(&mut body);
            body.str16(path.as_bytes());
        }
        Record::Delete { path, file_id } => {
            body.u8(TAG_DELETE).u64(*file_id).str16(path.as_bytes());
        }
        Record::HighWater(id) => {
            body.u8(TAG_HIGH_WATER).u64(*id);
        }
        Record::MoveOut { path, file_id } => {
            body.u8(TAG_MOVE_OUT).u64(*file_id).str16(path.as_bytes());
        }
        Record::Tombstone(id) => {
            body.u8(TAG_TOMBSTONE).u64(*id);
        }
    }
    let body = body.into_vec();
    let mut out = Writer::new();
    out.u32(body.len() as u32)
        .u32(xxh3_64(&body) as u32)
        .bytes(&body);
    out.into_vec()
}

/// Applies the well-formed records at the start of `bytes` to `table` and returns how
/// many bytes they span; a torn or corrupt record ends the replay.
fn replay(bytes: &[u8], table: &mut MetadataTable) -> usize {
    let mut r = Reader::new(bytes);
    let mut good = 0;
    while let (Ok(len), Ok(check)) = (r.u32(), r.u32()) {
        let len = len as usize;
        if len > RECORD_LEN_MAX {
            break;
        }
        let Ok(body) = r.take(len) else { break };
        if xxh3_64(body) as u32 != check || apply(body, table).is_none() {
            break;
        }
        good += 8 + len;
    }
    good
}

fn apply(body: &[u8], table: &mut MetadataTable) -> Option<()> {
    let mut r = Reader::new(body);
    match r.u8().ok()? {
        TAG_PUT => {
            let meta = FileMetadata::decode(&mut r).ok()?;
            let path = r.utf8("path", benchfs_proto::limits::PATH_LEN_MAX).ok()?;
            table.insert(&path, meta, false).ok()?;
            table.reserve_file_id(meta.file_id);
        }
        TAG_DELETE => {
            let file_id = r.u64().ok()?;
            let path = r.utf8("path", benchfs_proto::limits::PATH_LEN_MAX).ok()?;
            // Replaying a delete of an absent record is harmless.
            let _ = table.delete(&path, None);
            table.reserve_file_id(file_id);
        }
        TAG_HIGH_WATER => {
            let id = r.u64().ok()?;
            table.reserve_file_id(id.checked_sub(1)?);
        }
        TAG_MOVE_OUT => {
            let file_id = r.u64().ok()?;
            let path = r.utf8("path", benchfs_proto::limits::PATH_LEN_MAX).ok()?;
            let _ = table.move_out(&path);
            table.reserve_file_id(file_id);
        }
        TAG_TOMBSTONE => {
            let file_id = r.u64().ok()?;
            table.add_tombstone(file_id);
            table.reserve_file_id(file_id);
        }
        _ => return None,
    }
    r.finish().ok()
}

impl Journal {
    /// Replays the journal at `path` into `table` (which should be empty), then rewrites it
    /// as a snapshot of `table` and opens it for appending.
    pub fn open(path: &Path, table: &mut MetadataTable) -> Result<Journal, JournalError> {
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes).map_err(io_error("read", path))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("open", path)(e)),
        }
        let good = replay(&bytes, table);
        if good < bytes.len() {
            tracing::warn!(path = %path.display(), dropped = bytes.len() - good, "metadata journal ends in a torn record; dropping it");
        }
        let (file, snapshot_bytes) = write_snapshot(path, table)?;
        Ok(Journal {
            file,
            path: path.to_path_buf(),
            snapshot_bytes,
            appended_bytes: 0,
        })
    }

    /// Appends one record (to the page cache).
    pub fn append(&mut self, record: &Record<'_>) -> Result<(), JournalError> {
        let bytes = encode(record);
        self.file
            .write_all(&bytes)
            .map_err(io_error("append", &self.path))?;
        self.appended_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Whether the appended records outweigh the snapshot enough to compact.
    pub fn wants_compaction(&self) -> bool {
        self.appended_bytes >= self.snapshot_bytes.max(COMPACT_MIN_BYTES)
    }

    /// Rewrites the journal as a snapshot of `table`, which must hold every record
    /// appended so far. A crash at any point leaves the old journal or the new one whole.
    pub fn compact(&mut self, table: &MetadataTable) -> Result<(), JournalError> {
        let (file, snapshot_bytes) = write_snapshot(&self.path, table)?;
        self.file = file;
        self.snapshot_bytes = snapshot_bytes;
        self.appended_bytes = 0;
        Ok(())
    }

    /// Makes every appended record durable.
    pub fn sync(&mut self) -> Result<(), JournalError> {
        self.file.sync_data().map_err(io_error("fsync", &self.path))
    }
}

/// Writes `table` as a snapshot to a temporary file, syncs it and renames it over `path`
/// (then syncs the directory); returns `path` opened for appending and the snapshot's size.
fn write_snapshot(path: &Path, table: &MetadataTable) -> Result<(File, u64), JournalError> {
    let tmp = path.with_extension("journal.tmp");
    let mut snapshot = encode(&Record::HighWater(table.next_file_id()));
    for id in table.tombstones() {
        snapshot.extend(encode(&Record::Tombstone(id)));
    }
    for (p, meta) in table.entries() {
        snapshot.extend(encode(&Record::Put {
            path: p,
            meta: *meta,
        }));
    }
    let mut f = File::create(&tmp).map_err(io_error("create", &tmp))?;
    f.write_all(&snapshot).map_err(io_error("write", &tmp))?;
    f.sync_all().map_err(io_error("fsync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io_error("rename", path))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error("fsync", dir))?;
    }
    let file = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io_error("open", path))?;
    Ok((file, snapshot.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::TOMBSTONES_MAX;

    fn table() -> MetadataTable {
        MetadataTable::new(1, 4096)
    }

    #[test]
    fn replays_changes_and_survives_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.journal");
        let mut t = table();
        let mut j = Journal::open(&path, &mut t).unwrap();
        let a = t.create_file("/a", 0o644).unwrap();
        j.append(&Record::Put {
            path: "/a",
            meta: a,
        })
        .unwrap();
        let b = t.create_dir("/b", 0o755).unwrap();
        j.append(&Record::Put {
            path: "/b",
            meta: b,
        })
        .unwrap();
        let gone = t.create_file("/gone", 0).unwrap();
        j.append(&Record::Put {
            path: "/gone",
            meta: gone,
        })
        .unwrap();
        t.delete("/gone", None).unwrap();
        j.append(&Record::Delete {
            path: "/gone",
            file_id: gone.file_id,
        })
        .unwrap();
        drop(j);
        // A torn record at the end, as a crash mid-append leaves.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(
            &encode(&Record::Put {
                path: "/torn",
                meta: a,
            })[..20],
        )
        .unwrap();
        drop(f);

        let mut t2 = table();
        let _j = Journal::open(&path, &mut t2).unwrap();
        assert_eq!(t2.lookup("/a").unwrap(), a);
        assert_eq!(t2.lookup("/b").unwrap(), b);
        assert!(t2.lookup("/gone").is_err());
        assert!(t2.lookup("/torn").is_err());
        assert!(
            t2.next_file_id() > gone.file_id,
            "a deleted file's inode number is not reused"
        );
        let reopened_len = std::fs::metadata(&path).unwrap().len();
        let mut t3 = table();
        Journal::open(&path, &mut t3).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            reopened_len,
            "snapshot is stable"
        );
        assert_eq!(t3.len(), 2);
    }

    /// A long-running server once compacted its journal only at restart, so create and
    /// delete churn grew it without bound.
    #[test]
    fn churn_compacts_while_running_and_replays_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.journal");
        let mut t = table();
        let mut j = Journal::open(&path, &mut t).unwrap();
        let keep = t.create_file("/keep", 0o644).unwrap();
        j.append(&Record::Put {
            path: "/keep",
            meta: keep,
        })
        .unwrap();
        let mut compactions = 0;
        let mut last = keep;
        for i in 0..200_000 {
            let name = format!("/churn-{}", i % 7);
            last = t.create_file(&name, 0o600).unwrap();
            j.append(&Record::Put {
                path: &name,
                meta: last,
            })
            .unwrap();
            t.delete(&name, None).unwrap();
            j.append(&Record::Delete {
                path: &name,
                file_id: last.file_id,
            })
            .unwrap();
            if j.wants_compaction() {
                j.compact(&t).unwrap();
                compactions += 1;
            }
            // Live records stay few; the rest is the bounded set of tombstones.
            let tombstone_len = encode(&Record::Tombstone(0)).len() as u64;
            // One deleted file per round so far.
            let tombstones = (i + 1).min(TOMBSTONES_MAX as u64) * tombstone_len;
            let len = std::fs::metadata(&path).unwrap().len();
            let bound = 2 * (COMPACT_MIN_BYTES + tombstones) + 4096;
            assert!(len <= bound, "journal grew to {len} bytes, past {bound}");
        }
        assert!(compactions > 0, "churn past the threshold compacts");
        drop(j);
        let mut t2 = table();
        Journal::open(&path, &mut t2).unwrap();
        assert_eq!(t2.len(), 1);
        assert_eq!(t2.lookup("/keep").unwrap(), keep);
        assert!(
            t2.is_deleted(last.file_id),
            "tombstones survive compaction and replay"
        );
        assert!(
            t2.next_file_id() > last.file_id,
            "no inode number is reused"
        );
    }

    #[test]
    fn corrupt_bytes_replay_nothing_and_do_not_panic() {
        let mut t = table();
        for junk in [
            &b""[..],
            b"\xff\xff\xff\xff\0\0\0\0",
            b"\x05\0\0\0abcd\x01",
            &[0u8; 64],
        ] {
            assert_eq!(replay(junk, &mut t), 0);
        }
        assert!(t.is_empty());
    }
}
