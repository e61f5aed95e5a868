//! The metadata journal: an append-only log of metadata changes that a restarted server
//! replays, for the file and io_uring backends.
//!
//! Record layout (little-endian): `len: u32` (bytes after this field), `check: u32` (low
//! half of XXH3-64 of the bytes after it), `tag: u8`, then for `Put` the 72-byte metadata
//! and a u16-prefixed path (an inline record's `Put` has its own tag, and its bytes follow
//! the path, u16-prefixed; journals from before records had a birth time hold `Put`s
//! under two older tags with 64-byte metadata, which replay with the change time as the
//! birth and are rewritten in the new form by the snapshot), for `Delete` and `MoveOut`
//! the file id and the path, for
//! `HighWater` the next inode number, for `Tombstone` a file id. On open the journal is
//! replayed, then rewritten as a compact snapshot (temporary file, fsync, rename). A running
//! server compacts it the same way once the records appended since the last snapshot
//! outweigh the snapshot and [`COMPACT_MIN_BYTES`], so it stays within about twice the live
//! table and each compaction's cost is paid for by the appends before it; there the
//! snapshot is encoded on the event loop but written and synced by a thread, and the
//! records appended meanwhile are copied after it before it is renamed into place.
//!
//! **Torn tail or corruption.** A crash in the middle of an append leaves a prefix of the
//! record it was writing at the end of the file, and nothing else. So replay cuts a *torn
//! tail* (logged as a warning naming the file and the bytes dropped) only when the last
//! record is such a prefix: fewer than 8 header bytes remain, or its length field runs past
//! the end of the file, and what is there could begin a record of that length (the length
//! is within `9..=RECORD_LEN_MAX`, the tag is known, and the length agrees with the tag and
//! the path-length prefix, each checked when its bytes are present). Anything else is *corruption*,
//! [`JournalError::Corrupt`], and [`Journal::open`] leaves the file exactly as it was: a
//! record whose bytes are all there but whose checksum does not match (even the last one:
//! an append cut short cannot leave its length field complete and its body whole), a
//! checksum-valid record that does not decode or apply (an unknown tag, a bad field,
//! trailing bytes: a torn write cannot produce a matching checksum, so this is damage or a
//! journal from another version), and a length field outside `9..=RECORD_LEN_MAX` (no
//! append writes one, wherever it sits and however few bytes follow it). A zero-filled
//! tail, which some file systems can leave after a power loss, is corruption too (length 0).
//!
//! **Durability:** appends go to the page cache before the reply is sent, so a killed
//! server loses nothing it acknowledged; `Fsync` makes them survive a power loss too.
//!
//! **A full disk.** Records that let space be freed (deletes, seals, exact sizes: see
//! [`Journal::append_freeing`]) must go in when the disk is full, or nothing could ever be
//! removed. So the journal keeps [`FREEING_RESERVE_BYTES`] allocated past its end
//! (`fallocate` with `KEEP_SIZE`), and any other append that would eat into them fails with
//! ENOSPC. A snapshot that finds no room (at open, or a compaction) leaves the journal as
//! it was and no temporary file behind; the server runs on the journal uncompacted.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use benchfs_proto::meta::{FileMetadata, FILE_METADATA_LEN, FILE_METADATA_LEN_V1};
use benchfs_proto::wire::{Reader, Writer};
use xxhash_rust::xxh3::xxh3_64;

use crate::metadata::{MetadataTable, Seal};

/// A `Put` with metadata of [`FILE_METADATA_LEN_V1`] bytes (no birth time); replayed only.
const TAG_PUT_V1: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_HIGH_WATER: u8 = 3;
const TAG_MOVE_OUT: u8 = 4;
const TAG_TOMBSTONE: u8 = 5;
/// An inline `Put` with metadata of [`FILE_METADATA_LEN_V1`] bytes; replayed only.
const TAG_PUT_INLINE_V1: u8 = 6;
const TAG_PUT: u8 = 7;
const TAG_PUT_INLINE: u8 = 8;
const TAG_SEAL: u8 = 9;
/// Largest record: a tag, metadata, a path of PATH_LEN_MAX bytes and an inline record's
/// bytes, each with its prefix.
const RECORD_LEN_MAX: usize = 1
    + FILE_METADATA_LEN
    + 2
    + benchfs_proto::limits::PATH_LEN_MAX
    + 2
    + benchfs_proto::limits::INLINE_BYTES_MAX as usize;
/// Smallest record: a tag and a u64 (`HighWater`, `Tombstone`).
const RECORD_LEN_MIN: usize = 1 + 8;
/// Bytes of a record's header: the length and the checksum.
const HEADER_LEN: usize = 8;

/// One metadata change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record<'a> {
    /// A record was created or replaced.
    Put {
        /// The path.
        path: &'a str,
        /// The record.
        meta: FileMetadata,
        /// Its bytes if it is inline, else empty.
        data: &'a [u8],
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
    /// A file sealed for good before its chunks are removed: no record of it is stored
    /// again ([`Seal::ForGood`]; tentative seals are not journaled).
    Seal(u64),
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
    /// The journal holds a record that no crash in the middle of an append can explain (see
    /// the module docs for the rules); the file is left exactly as it was, for the operator
    /// to move aside or restore.
    #[error("{} is corrupt at byte {offset} ({reason}); the server will not start on it. Move it aside to start with an empty namespace, or restore it from a copy", path.display())]
    Corrupt {
        /// The journal file.
        path: PathBuf,
        /// Where the first bad record starts.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
}

/// Bytes appended since the last snapshot below which a running server never compacts.
pub const COMPACT_MIN_BYTES: u64 = 4 << 20;

/// Bytes kept allocated past the journal's end for records that free space: a thousand
/// deletes of 200-byte paths, or 60 of the longest.
pub const FREEING_RESERVE_BYTES: u64 = 256 << 10;

/// The open journal of one server.
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
    /// Size of the last snapshot.
    snapshot_bytes: u64,
    /// Bytes appended since it.
    appended_bytes: u64,
    /// A failed append left part of a record that could not be cut off yet.
    torn: bool,
    /// Bytes of the file allocated, past its end included (see [`FREEING_RESERVE_BYTES`]).
    allocated: u64,
    /// Whether the file system can allocate ahead (`fallocate`).
    can_allocate: bool,
    /// The snapshot being written, if one is.
    compaction: Option<Compaction>,
    /// No compaction starts before this many bytes were appended since the last snapshot
    /// (raised after a failed one, so a full disk is not rewritten at every append).
    compact_after: u64,
}

/// A snapshot being written and synced by a thread of its own: at a million records that
/// took over a second, during which the server answered nothing. The loop encodes it and
/// hands it over in buffers of [`SNAPSHOT_CHUNK_BYTES`], so it never sits whole in memory
/// while the thread keeps up. The records appended meanwhile go to the journal as before,
/// and are copied after the snapshot when it is put in the journal's place
/// ([`Journal::finish_compaction`]).
#[derive(Debug)]
struct Compaction {
    /// Where the first record the snapshot does not hold starts in the journal.
    from: u64,
    /// The snapshot's length.
    snapshot_bytes: u64,
    /// Ends with the temporary file written and synced (or removed, on failure).
    writer: std::thread::JoinHandle<Result<(), JournalError>>,
    /// Set to make the thread stop and remove the temporary file.
    abandon: Arc<AtomicBool>,
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> JournalError {
    let path = path.to_path_buf();
    move |source| JournalError::Io { op, path, source }
}

fn encode(record: &Record<'_>) -> Vec<u8> {
    encode_into(Vec::new(), record)
}

/// Appends `record` to `out`: one buffer for a whole snapshot, not two per record.
fn encode_into(out: Vec<u8>, record: &Record<'_>) -> Vec<u8> {
    let start = out.len();
    let mut body = Writer::from_vec(out);
    // The length and the checksum, filled in below.
    body.u32(0).u32(0);
    match record {
        Record::Put { path, meta, data } => {
            body.u8(if meta.inline { TAG_PUT_INLINE } else { TAG_PUT });
            meta.encode(&mut body);
            body.str16(path.as_bytes());
            if meta.inline {
                body.str16(data);
            }
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
        Record::Seal(id) => {
            body.u8(TAG_SEAL).u64(*id);
        }
    }
    let mut out = body.into_vec();
    let body_start = start + HEADER_LEN;
    let len = (out.len() - body_start) as u32;
    let check = xxh3_64(&out[body_start..]) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..body_start].copy_from_slice(&check.to_le_bytes());
    out
}

/// How a replay ended.
#[derive(Debug, PartialEq, Eq)]
enum Replayed {
    /// Every byte was a record, and all were applied.
    Whole,
    /// The records before `at` were applied; from `at` on is a torn tail.
    Torn {
        /// Where the torn record starts.
        at: usize,
    },
    /// The records before `offset` were applied; the one at `offset` is bad.
    Corrupt {
        /// Where the bad record starts.
        offset: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// What the bytes at a record boundary hold.
enum Next<'a> {
    /// A whole record whose checksum matches: its body.
    Record(&'a [u8]),
    /// The prefix of a record, cut by the end of the file.
    Torn,
    /// Something no append writes.
    Corrupt(String),
}

/// Applies the records of `bytes` to `table` in order, up to a torn tail or the first bad
/// record. After `Corrupt` the table holds a partial replay and is to be discarded.
fn replay(bytes: &[u8], table: &mut MetadataTable) -> Replayed {
    let mut pos = 0;
    while let Some(rest) = bytes.get(pos..).filter(|rest| !rest.is_empty()) {
        match next_record(rest) {
            Next::Record(body) => {
                if let Err(reason) = apply(body, table) {
                    return Replayed::Corrupt {
                        offset: pos,
                        reason,
                    };
                }
                pos += HEADER_LEN + body.len();
            }
            Next::Torn => return Replayed::Torn { at: pos },
            Next::Corrupt(reason) => {
                return Replayed::Corrupt {
                    offset: pos,
                    reason,
                }
            }
        }
    }
    Replayed::Whole
}

/// Classifies the record at the start of `rest`, which is not empty.
fn next_record(rest: &[u8]) -> Next<'_> {
    let Some(len) = rest.get(..4).and_then(le_u32) else {
        return Next::Torn;
    };
    let len = len as usize;
    if !(RECORD_LEN_MIN..=RECORD_LEN_MAX).contains(&len) {
        return Next::Corrupt(format!(
            "record length {len} is outside {RECORD_LEN_MIN}..={RECORD_LEN_MAX}"
        ));
    }
    let Some(check) = rest.get(4..HEADER_LEN).and_then(le_u32) else {
        return Next::Torn;
    };
    let Some(body) = rest.get(HEADER_LEN..HEADER_LEN + len) else {
        let prefix = rest.get(HEADER_LEN..).unwrap_or_default();
        return match could_begin(prefix, len) {
            Ok(()) => Next::Torn,
            Err(reason) => Next::Corrupt(reason),
        };
    };
    if xxh3_64(body) as u32 != check {
        return Next::Corrupt(format!(
            "the checksum of its {len}-byte record does not match"
        ));
    }
    Next::Record(body)
}

fn le_u32(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// Whether `prefix`, the body bytes of a record cut by the end of the file, could begin a
/// body of `len` bytes as [`encode`] writes it: a torn append leaves such a prefix, while a
/// damaged length field or tag almost never passes, because a damaged record was complete
/// and so its tag and path-length prefix are there to disagree with its length.
fn could_begin(prefix: &[u8], len: usize) -> Result<(), String> {
    let Some(&tag) = prefix.first() else {
        return Ok(());
    };
    // Where the u16 path length sits, the body length without the path (and bytes), and
    // whether the record's bytes follow the path with a u16 length of their own.
    let (path_len_at, fixed, with_bytes) = match tag {
        TAG_HIGH_WATER | TAG_TOMBSTONE | TAG_SEAL => (None, 1 + 8, false),
        TAG_DELETE | TAG_MOVE_OUT => (Some(1 + 8), 1 + 8 + 2, false),
        _ => match PutTag::of(tag) {
            Some(put) => {
                let prefixes = if put.inline { 4 } else { 2 };
                let meta_len = put.meta_len();
                (Some(1 + meta_len), 1 + meta_len + prefixes, put.inline)
            }
            None => return Err(format!("unknown record tag {tag}")),
        },
    };
    let u16_at = |at: usize| {
        prefix
            .get(at..at + 2)
            .and_then(|b| <[u8; 2]>::try_from(b).ok())
            .map(|b| usize::from(u16::from_le_bytes(b)))
    };
    let expected = match path_len_at {
        None => Some(fixed),
        Some(at) => u16_at(at).and_then(|path_len| match with_bytes {
            false => Some(fixed + path_len),
            true => u16_at(at + 2 + path_len).map(|data_len| fixed + path_len + data_len),
        }),
    };
    match expected {
        Some(expected) if expected != len => Err(format!(
            "record length {len} disagrees with its contents ({expected} bytes)"
        )),
        None if len < fixed => Err(format!("record length {len} is too short for tag {tag}")),
        _ => Ok(()),
    }
}

/// Applies one checksum-valid record body to `table`, or says why it does not decode.
fn apply(body: &[u8], table: &mut MetadataTable) -> Result<(), String> {
    let mut r = Reader::new(body);
    let bad = |e: benchfs_proto::wire::DecodeError| format!("record does not decode: {e}");
    let path_max = benchfs_proto::limits::PATH_LEN_MAX;
    match r.u8().map_err(bad)? {
        TAG_DELETE => {
            let file_id = r.u64().map_err(bad)?;
            let path = r.utf8("path", path_max).map_err(bad)?;
            // Replaying a delete of an absent record is harmless.
            let _ = table.delete(&path, None);
            table.reserve_file_id(file_id);
        }
        TAG_HIGH_WATER => {
            let mark = r.u64().map_err(bad)?;
            if mark == 0 {
                return Err("high-water mark 0".into());
            }
            table.reserve_below(mark);
        }
        TAG_MOVE_OUT => {
            let file_id = r.u64().map_err(bad)?;
            let path = r.utf8("path", path_max).map_err(bad)?;
            let _ = table.move_out(&path);
            table.reserve_file_id(file_id);
        }
        TAG_TOMBSTONE => {
            let file_id = r.u64().map_err(bad)?;
            table.add_tombstone(file_id);
            table.reserve_file_id(file_id);
        }
        TAG_SEAL => {
            let file_id = r.u64().map_err(bad)?;
            // Sealed only where no record named the file, so `seal` finds none here.
            table.seal(file_id, Seal::ForGood);
        }
        tag => {
            let put = PutTag::of(tag).ok_or_else(|| format!("unknown record tag {tag}"))?;
            let meta = match put.v1 {
                false => FileMetadata::decode(&mut r),
                true => FileMetadata::decode_v1(&mut r),
            }
            .map_err(bad)?;
            let path = r.utf8("path", path_max).map_err(bad)?;
            let data = match put.inline {
                true => r
                    .str16("data", benchfs_proto::limits::INLINE_BYTES_MAX as usize)
                    .map_err(bad)?,
                false => &[],
            };
            if meta.inline != put.inline {
                return Err(format!("record for {path:?} disagrees with its tag {tag}"));
            }
            table
                .insert(&path, meta, data, false)
                .map_err(|status| format!("record for {path:?} does not apply: {status}"))?;
            table.reserve_file_id(meta.file_id);
        }
    }
    r.finish().map_err(bad)
}

/// What a `Put` tag says of its record: whether its metadata is the older form without a
/// birth time, and whether the record's bytes follow the path.
#[derive(Debug, Clone, Copy)]
struct PutTag {
    v1: bool,
    inline: bool,
}

impl PutTag {
    /// The `Put` that `tag` marks; `None` for any other tag.
    fn of(tag: u8) -> Option<PutTag> {
        let (v1, inline) = match tag {
            TAG_PUT => (false, false),
            TAG_PUT_INLINE => (false, true),
            TAG_PUT_V1 => (true, false),
            TAG_PUT_INLINE_V1 => (true, true),
            _ => return None,
        };
        Some(PutTag { v1, inline })
    }

    /// Bytes of the record's metadata.
    fn meta_len(self) -> usize {
        match self.v1 {
            false => FILE_METADATA_LEN,
            true => FILE_METADATA_LEN_V1,
        }
    }
}

impl Journal {
    /// Replays the journal at `path` into `table` (which should be empty), then rewrites it
    /// as a snapshot of `table` and opens it for appending. A torn tail is cut with a
    /// warning; a corrupt record is [`JournalError::Corrupt`], with the file untouched and
    /// `table` holding a partial replay to discard (see the module docs for which is which).
    pub fn open(path: &Path, table: &mut MetadataTable) -> Result<Journal, JournalError> {
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes).map_err(io_error("read", path))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("open", path)(e)),
        }
        let replayed = match replay(&bytes, table) {
            Replayed::Whole => bytes.len(),
            Replayed::Torn { at } => {
                tracing::warn!(path = %path.display(), at, dropped = bytes.len() - at, "metadata journal ends in a torn record (an append cut short); dropping it");
                at
            }
            Replayed::Corrupt { offset, reason } => {
                return Err(JournalError::Corrupt {
                    path: path.to_path_buf(),
                    offset: offset as u64,
                    reason,
                });
            }
        };
        let (file, snapshot_bytes) = match write_snapshot(path, table) {
            Ok(written) => written,
            Err(e) => {
                // Most likely a full disk: the journal just replayed is as good, only longer.
                tracing::warn!(error = %e, "cannot rewrite the metadata journal; appending to it as it is");
                keep_as_it_is(path, replayed as u64)?
            }
        };
        Ok(Journal {
            file,
            path: path.to_path_buf(),
            snapshot_bytes,
            appended_bytes: 0,
            torn: false,
            allocated: snapshot_bytes,
            can_allocate: true,
            compaction: None,
            compact_after: 0,
        })
    }

    /// Appends one record (to the page cache). Fails with ENOSPC rather than take the room
    /// kept for records that free space.
    pub fn append(&mut self, record: &Record<'_>) -> Result<(), JournalError> {
        self.append_with(record, false)
    }

    /// Appends a record that lets space be freed (a delete, a seal, a truncation), into the
    /// room kept for them when the disk is full.
    pub fn append_freeing(&mut self, record: &Record<'_>) -> Result<(), JournalError> {
        self.append_with(record, true)
    }

    fn append_with(&mut self, record: &Record<'_>, freeing: bool) -> Result<(), JournalError> {
        let bytes = encode(record);
        let end = self.snapshot_bytes + self.appended_bytes;
        if self.torn {
            self.file
                .set_len(end)
                .map_err(io_error("cut a torn record from", &self.path))?;
            self.torn = false;
            self.allocated = end;
        }
        if !freeing {
            self.keep_reserve(end, bytes.len() as u64)?;
        }
        if let Err(e) = self.file.write_all(&bytes) {
            // A write cut short (a full disk) leaves part of a record at the end: the next
            // append must not land behind it, or replay stops there, as at a crash. The cut
            // frees what was allocated past the end too.
            self.torn = self.file.set_len(end).is_err();
            self.allocated = end;
            return Err(io_error("append", &self.path)(e));
        }
        self.appended_bytes += bytes.len() as u64;
        self.allocated = self.allocated.max(end + bytes.len() as u64);
        Ok(())
    }

    /// Makes sure [`FREEING_RESERVE_BYTES`] stay allocated past `end + len`, allocating two
    /// reserves' worth when they would not, so this costs a call only now and then.
    fn keep_reserve(&mut self, end: u64, len: u64) -> Result<(), JournalError> {
        let needed = end + len + FREEING_RESERVE_BYTES;
        if !self.can_allocate || needed <= self.allocated {
            return Ok(());
        }
        let keep_size = nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
        let allocate = |to: u64| {
            let (Ok(at), Ok(n)) = (i64::try_from(end), i64::try_from(to - end)) else {
                return Err(nix::errno::Errno::EFBIG);
            };
            nix::fcntl::fallocate(&self.file, keep_size, at, n).map(|()| to)
        };
        let ahead = needed + FREEING_RESERVE_BYTES;
        match allocate(ahead).or_else(|_| allocate(needed)) {
            Ok(to) => {
                self.allocated = to;
                Ok(())
            }
            Err(nix::errno::Errno::EOPNOTSUPP) => {
                tracing::warn!(path = %self.path.display(), "this file system cannot allocate ahead (fallocate): a full disk may refuse deletes too");
                self.can_allocate = false;
                Ok(())
            }
            Err(e) => Err(io_error("keep room for deletes in", &self.path)(e.into())),
        }
    }

    /// Whether the appended records outweigh the snapshot enough to compact, and no
    /// compaction is under way.
    pub fn wants_compaction(&self) -> bool {
        self.compaction.is_none()
            && self.appended_bytes
                >= self
                    .snapshot_bytes
                    .max(COMPACT_MIN_BYTES)
                    .max(self.compact_after)
    }

    /// Rewrites the journal as a snapshot of `table`, which must hold every record
    /// appended so far, and waits for it. A crash at any point leaves the old journal or
    /// the new one whole.
    #[cfg(test)]
    pub fn compact(&mut self, table: &MetadataTable) -> Result<(), JournalError> {
        self.start_compaction(table)?;
        if let Some(compaction) = &self.compaction {
            while !compaction.writer.is_finished() {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        self.finish_compaction()
    }

    /// Encodes a snapshot of `table`, which must hold every record appended so far, and
    /// hands it to a thread that writes and syncs it to a temporary file; the journal goes
    /// on as it is until [`Self::finish_compaction`] finds the thread done.
    pub fn start_compaction(&mut self, table: &MetadataTable) -> Result<(), JournalError> {
        if self.compaction.is_some() {
            return Ok(());
        }
        if !self.has_room_for_snapshot() {
            self.compaction_failed();
            return Ok(());
        }
        let (chunks, to_write) = std::sync::mpsc::channel::<Vec<u8>>();
        let (written, spent) = std::sync::mpsc::channel::<Vec<u8>>();
        let tmp = tmp_path(&self.path);
        let abandon = Arc::new(AtomicBool::new(false));
        let abandoned = Arc::clone(&abandon);
        let writer = std::thread::Builder::new()
            .name("journal-snapshot".into())
            .spawn(move || {
                let stop_if_abandoned = || match abandoned.load(Ordering::Relaxed) {
                    true => Err(std::io::Error::other("abandoned: the server is stopping")),
                    false => Ok(()),
                };
                write_tmp(&tmp, |file| {
                    for chunk in to_write {
                        stop_if_abandoned()?;
                        file.write_all(&chunk)?;
                        let _ = written.send(chunk);
                    }
                    stop_if_abandoned()
                })
            });
        let writer = match writer {
            Ok(writer) => writer,
            Err(e) => {
                self.compaction_failed();
                return Err(io_error(
                    "start a thread to write the snapshot of",
                    &self.path,
                )(e));
            }
        };
        // Unbounded, so the loop never waits for the disk; buffers the thread has written
        // come back, so a snapshot encoded while the thread keeps up takes no fresh memory.
        let snapshot_bytes = encode_snapshot(table, |chunk| {
            chunks.send(chunk).ok()?;
            Some(spent.try_recv().unwrap_or_default())
        });
        self.compaction = Some(Compaction {
            from: self.snapshot_bytes + self.appended_bytes,
            snapshot_bytes,
            writer,
            abandon,
        });
        Ok(())
    }

    /// Whether the disk has room for a snapshot as long as the journal, with as much again
    /// to spare: while the thread writes it the server answers requests, and a snapshot
    /// that took the last free bytes would fail their writes until it gave them back.
    fn has_room_for_snapshot(&self) -> bool {
        let journal_bytes = self.snapshot_bytes + self.appended_bytes;
        match nix::sys::statvfs::statvfs(&self.path) {
            Ok(fs) => {
                let free = fs.blocks_available().saturating_mul(fs.fragment_size());
                free / 2 >= journal_bytes.saturating_add(FREEING_RESERVE_BYTES)
            }
            // Nothing known: try, as before there was a check.
            Err(_) => true,
        }
    }

    /// Stops a compaction under way, waiting for its thread, and removes its temporary
    /// file: called before the server lets its data directory go, so that no thread of
    /// this process writes there once the next server may own it.
    pub fn abandon_compaction(&mut self) {
        let Some(compaction) = self.compaction.take() else {
            return;
        };
        compaction.abandon.store(true, Ordering::Relaxed);
        let _ = compaction.writer.join();
        let _ = std::fs::remove_file(tmp_path(&self.path));
    }

    /// Puts the snapshot in the journal's place once its thread is done: the records
    /// appended since it began are copied after it and synced (an `Fsync` may have made
    /// them durable in the old file), then it is renamed over the journal. Does nothing
    /// while the thread runs. A failure leaves the old journal as the journal, whole.
    pub fn finish_compaction(&mut self) -> Result<(), JournalError> {
        let Some(compaction) = self.compaction.take_if(|c| c.writer.is_finished()) else {
            return Ok(());
        };
        let tmp = tmp_path(&self.path);
        let written = match compaction.writer.join() {
            Ok(written) => written,
            Err(_) => Err(io_error("write the snapshot of", &self.path)(
                std::io::Error::other("the snapshot thread panicked"),
            )),
        };
        let end = self.snapshot_bytes + self.appended_bytes;
        let installed = written.and_then(|()| self.install(&tmp, compaction.from, end));
        let file = match installed {
            Ok(file) => file,
            Err(e) => {
                // Removed already, unless the thread panicked before it could.
                let _ = std::fs::remove_file(&tmp);
                self.compaction_failed();
                return Err(e);
            }
        };
        self.file = file;
        self.snapshot_bytes = compaction.snapshot_bytes;
        self.appended_bytes = end - compaction.from;
        self.torn = false;
        self.allocated = self.snapshot_bytes + self.appended_bytes;
        self.compact_after = 0;
        sync_dir_of(&self.path);
        Ok(())
    }

    /// Copies the journal's bytes `from..end` after the snapshot in `tmp` and puts it in
    /// the journal's place ([`put_in_place`]).
    fn install(&self, tmp: &Path, from: u64, end: u64) -> Result<File, JournalError> {
        use std::os::unix::fs::FileExt;
        let mut tail = vec![0; (end - from) as usize];
        File::open(&self.path)
            .and_then(|journal| journal.read_exact_at(&mut tail, from))
            .map_err(io_error(
                "read the records appended during compaction from",
                &self.path,
            ))?;
        put_in_place(tmp, &self.path, &tail)
    }

    fn compaction_failed(&mut self) {
        self.compact_after = self.appended_bytes + self.snapshot_bytes.max(COMPACT_MIN_BYTES);
    }

    /// Makes every appended record durable.
    pub fn sync(&mut self) -> Result<(), JournalError> {
        self.file.sync_data().map_err(io_error("fsync", &self.path))
    }
}

impl Drop for Journal {
    /// However the server ends (a panic included), no snapshot thread outlives the journal.
    fn drop(&mut self) {
        self.abandon_compaction();
    }
}

/// Opens the journal at `path` for appending as it is, its torn tail (from `len` on) cut,
/// when it could not be rewritten; returns it with its length.
fn keep_as_it_is(path: &Path, len: u64) -> Result<(File, u64), JournalError> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(io_error("open", path))?;
    file.set_len(len)
        .map_err(io_error("cut a torn record from", path))?;
    Ok((file, len))
}

/// Makes the rename of a snapshot onto `path` durable. The new journal is in place whatever
/// this says (so a failure is only logged: failing then left the server appending to the
/// old, unlinked file, or cutting the new one to the old one's length); only a power loss
/// right now could bring the old one back, and it holds every record the new one does.
fn sync_dir_of(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            tracing::warn!(dir = %dir.display(), error = %e, "syncing the directory of the compacted metadata journal failed");
        }
    }
}

/// The temporary file a snapshot of the journal at `path` is written to.
fn tmp_path(path: &Path) -> PathBuf {
    path.with_extension("journal.tmp")
}

/// Bytes of snapshot encoded before they are handed on to be written.
const SNAPSHOT_CHUNK_BYTES: usize = 4 << 20;

/// Encodes the records that rebuild `table`, in the order replay needs, and hands them to
/// `emit` in buffers of about [`SNAPSHOT_CHUNK_BYTES`]; `emit` gives back a buffer to go
/// on with (its bytes are cleared), or `None` to stop. Returns the bytes encoded.
fn encode_snapshot(table: &MetadataTable, mut emit: impl FnMut(Vec<u8>) -> Option<Vec<u8>>) -> u64 {
    let seals = table.seals_for_good().map(Record::Seal);
    let puts = table.records().map(|(path, meta, data)| Record::Put {
        path,
        meta: *meta,
        data,
    });
    // After the records: storing a record lifts its file's tombstone, and a file displaced
    // by a rename onto its other name keeps one while that name still holds it.
    let tombstones = table.tombstones().map(Record::Tombstone);
    let records = std::iter::once(Record::HighWater(table.next_file_id()))
        .chain(seals)
        .chain(puts)
        .chain(tombstones);
    let mut encoded = 0;
    let mut buf = Vec::with_capacity(SNAPSHOT_CHUNK_BYTES);
    for record in records {
        buf = encode_into(buf, &record);
        if buf.len() >= SNAPSHOT_CHUNK_BYTES {
            encoded += buf.len() as u64;
            let Some(mut next) = emit(buf) else {
                return encoded;
            };
            next.clear();
            buf = next;
        }
    }
    encoded += buf.len() as u64;
    if !buf.is_empty() {
        emit(buf);
    }
    encoded
}

/// Creates `tmp`, lets `write` fill it, and syncs it; on failure removes it.
fn write_tmp(
    tmp: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<(), JournalError> {
    let written = File::create(tmp)
        .map_err(io_error("create", tmp))
        .and_then(|mut f| {
            write(&mut f).map_err(io_error("write", tmp))?;
            f.sync_all().map_err(io_error("fsync", tmp))
        });
    if written.is_err() {
        // A partial snapshot would only hold space a full disk needs.
        let _ = std::fs::remove_file(tmp);
    }
    written
}

/// Writes `table` as a snapshot to a temporary file, syncs it and renames it over `path`
/// (then syncs the directory); returns `path` opened for appending and the snapshot's size.
fn write_snapshot(path: &Path, table: &MetadataTable) -> Result<(File, u64), JournalError> {
    let tmp = tmp_path(path);
    let mut snapshot_bytes = 0;
    write_tmp(&tmp, |file| {
        let mut failed = None;
        snapshot_bytes = encode_snapshot(table, |chunk| match file.write_all(&chunk) {
            Ok(()) => Some(chunk),
            Err(e) => {
                failed = Some(e);
                None
            }
        });
        failed.map_or(Ok(()), Err)
    })?;
    let file = put_in_place(&tmp, path, &[])?;
    sync_dir_of(path);
    Ok((file, snapshot_bytes))
}

/// Opens the synced snapshot `tmp` for appending, appends `tail` (records it does not
/// hold) and syncs them, and renames it over `path`; returns it, open for appending. The
/// file is opened before the rename, which then is the last step that can fail: a failure
/// after it would leave the caller on the old, unlinked journal or, at start, cutting the
/// new one to the old one's length. On failure `tmp` is removed and `path` is as it was.
fn put_in_place(tmp: &Path, path: &Path, tail: &[u8]) -> Result<File, JournalError> {
    let placed = OpenOptions::new()
        .append(true)
        .open(tmp)
        .map_err(io_error("open", tmp))
        .and_then(|mut file| {
            if !tail.is_empty() {
                file.write_all(tail).map_err(io_error("append to", tmp))?;
                file.sync_data().map_err(io_error("fsync", tmp))?;
            }
            std::fs::rename(tmp, path).map_err(io_error("rename", path))?;
            Ok(file)
        });
    if placed.is_err() {
        // A partial snapshot would only hold space a full disk needs.
        let _ = std::fs::remove_file(tmp);
    }
    placed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{Owner, TOMBSTONES_MAX};

    fn table() -> MetadataTable {
        MetadataTable::new(1, 4096)
    }

    /// A fresh journal in `dir`: its path, its table and the journal.
    fn open_in(dir: &Path) -> (PathBuf, MetadataTable, Journal) {
        let path = dir.join("metadata.journal");
        let mut t = table();
        let j = Journal::open(&path, &mut t).unwrap();
        (path, t, j)
    }

    /// Unmounts its directory when dropped.
    struct Unmount<'a>(&'a Path);

    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }

    /// Mounts a tmpfs of `size` on `dir`; `None`, with a skip reported, without root.
    fn mount_tmpfs<'a>(dir: &'a Path, size: &str) -> Option<Unmount<'a>> {
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("SKIPPED journal on a full disk: mounting a tmpfs needs root");
            }
            return None;
        }
        Some(Unmount(dir))
    }

    /// Regression: an append cut short by a full disk left part of a record, and the
    /// appends after space came back landed behind it: the server refused to start on
    /// its journal ("corrupt at byte ...").
    #[test]
    fn an_append_cut_short_by_a_full_disk_leaves_the_journal_whole() {
        let dir = tempfile::tempdir().unwrap();
        let Some(_unmount) = mount_tmpfs(dir.path(), "64k") else {
            return;
        };
        let (path, _, mut j) = open_in(dir.path());
        // Most of the disk goes to a filler, the rest to records until one fails (records
        // that free space: the others stop short of the room kept for these).
        let filler = dir.path().join("filler");
        std::fs::write(&filler, vec![0u8; 48 << 10]).unwrap();
        let mut acknowledged = Vec::new();
        let failed = (0..10_000u64).find(|&id| {
            let ok = j.append_freeing(&Record::Seal(id)).is_ok();
            if ok {
                acknowledged.push(id);
            }
            !ok
        });
        assert!(failed.is_some(), "the disk never filled");
        std::fs::remove_file(&filler).unwrap();
        let after = 1_000_000;
        j.append_freeing(&Record::Seal(after)).unwrap();
        drop(j);
        let mut replayed = table();
        Journal::open(&path, &mut replayed).expect("the journal replays after a full disk");
        for id in acknowledged.iter().chain([&after]) {
            assert_eq!(replayed.seal_of(*id), Some(Seal::ForGood), "seal {id}");
        }
    }

    /// Regression, found by a hostile run: on a full disk nothing could be deleted (the
    /// journal had no room for the record), so the space was never reclaimed; and a
    /// restart failed writing its snapshot ("metadata.journal.tmp: No space left").
    #[test]
    fn a_full_disk_takes_deletes_but_no_new_files_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let Some(_unmount) = mount_tmpfs(dir.path(), "2m") else {
            return;
        };
        let (path, mut t, mut j) = open_in(dir.path());
        let names: Vec<String> = (0..300)
            .map(|i| format!("/f{i:04}-{}", "x".repeat(200)))
            .collect();
        let put = |t: &mut MetadataTable, j: &mut Journal, name: &str| {
            let meta = t.create_file(name, 0o644, 0, Owner::default())?;
            let appended = j.append(&Record::Put {
                path: name,
                meta,
                data: &[],
            });
            appended.map_err(|_| benchfs_proto::Status::NoSpace)
        };
        for name in &names {
            put(&mut t, &mut j, name).unwrap();
        }
        // A filler takes the rest of the disk.
        let mut filler = File::create(dir.path().join("filler")).unwrap();
        while filler.write_all(&[1u8; 4096]).is_ok() {}
        drop(filler);
        // New files take what was allocated past the room kept for deletes, then stop.
        let refused = (0..10_000)
            .map(|i| put(&mut t, &mut j, &format!("/new{i}")))
            .find(Result::is_err);
        assert_eq!(
            refused,
            Some(Err(benchfs_proto::Status::NoSpace)),
            "new files are refused on a full disk"
        );
        for name in &names {
            let meta = t.delete(name, None).unwrap();
            let file_id = meta.file_id;
            j.append_freeing(&Record::Delete {
                path: name,
                file_id,
            })
            .unwrap_or_else(|e| panic!("delete {name} on a full disk: {e}"));
        }
        drop(j);
        let mut replayed = table();
        let j = Journal::open(&path, &mut replayed).expect("a restart on a full disk");
        for name in &names {
            assert!(replayed.lookup(name).is_err(), "{name} stays deleted");
        }
        let tmp = path.with_extension("journal.tmp");
        assert!(!tmp.exists(), "no partial snapshot is left behind");
        drop(j);
    }

    /// Creates `name` in `t` and journals it.
    fn create(t: &mut MetadataTable, j: &mut Journal, name: &str) {
        let meta = t.create_file(name, 0o644, 0, Owner::default()).unwrap();
        j.append(&Record::Put {
            path: name,
            meta,
            data: &[],
        })
        .unwrap();
    }

    /// Deletes `name` from `t` and journals it.
    fn delete(t: &mut MetadataTable, j: &mut Journal, name: &str) {
        let file_id = t.delete(name, None).unwrap().file_id;
        j.append_freeing(&Record::Delete {
            path: name,
            file_id,
        })
        .unwrap();
    }

    /// Every record of `t`, as (path, inode number).
    /// Replays the journal at `path` into a fresh table, which must list what `t` does.
    fn assert_replays_as(path: &Path, t: &MetadataTable) {
        let mut replayed = table();
        Journal::open(path, &mut replayed).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(listing(&replayed), listing(t));
    }

    fn listing(t: &MetadataTable) -> Vec<(String, u64)> {
        t.records()
            .map(|(p, meta, _)| (p.to_string(), meta.file_id))
            .collect()
    }

    /// Calls `finish_compaction` until the snapshot thread is done; its last result.
    fn wait_for_compaction(j: &mut Journal) -> Result<(), JournalError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let finished = j.finish_compaction();
            if j.compaction.is_none() {
                return finished;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the snapshot thread never ended"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn records_appended_while_a_snapshot_is_written_follow_it() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut t, mut j) = open_in(dir.path());
        for i in 0..2_000 {
            create(&mut t, &mut j, &format!("/before{i}"));
        }
        for i in 0..500 {
            delete(&mut t, &mut j, &format!("/before{i}"));
        }
        let grown = std::fs::metadata(&path).unwrap().len();
        j.start_compaction(&t).unwrap();
        // Changes the snapshot does not hold: new files, and deletes of files it does.
        for i in 0..300 {
            create(&mut t, &mut j, &format!("/during{i}"));
        }
        for i in 500..700 {
            delete(&mut t, &mut j, &format!("/before{i}"));
        }
        wait_for_compaction(&mut j).unwrap();
        assert!(
            std::fs::metadata(&path).unwrap().len() < grown,
            "the journal was not compacted"
        );
        create(&mut t, &mut j, "/after");
        drop(j);
        let mut replayed = table();
        Journal::open(&path, &mut replayed).unwrap();
        assert_eq!(listing(&replayed), listing(&t));
        assert_eq!(replayed.next_file_id(), t.next_file_id());
    }

    #[test]
    fn a_compaction_abandoned_at_stop_leaves_no_temporary_file_and_the_journal_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut t, mut j) = open_in(dir.path());
        for i in 0..20_000 {
            create(&mut t, &mut j, &format!("/f{i}"));
        }
        j.start_compaction(&t).unwrap();
        create(&mut t, &mut j, "/during");
        j.abandon_compaction();
        assert!(
            !tmp_path(&path).exists(),
            "the snapshot's temporary file is left"
        );
        // Dropped with a compaction under way: the same.
        j.start_compaction(&t).unwrap();
        drop(j);
        assert!(
            !tmp_path(&path).exists(),
            "the snapshot's temporary file is left"
        );
        assert_replays_as(&path, &t);
    }

    /// A snapshot that would take the disk's last free bytes is not begun: while its thread
    /// wrote it, the server's other writes would fail for want of room.
    #[test]
    fn no_compaction_begins_without_room_for_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let Some(_unmount) = mount_tmpfs(dir.path(), "2m") else {
            return;
        };
        let (path, mut t, mut j) = open_in(dir.path());
        let names: Vec<String> = (0..2_000)
            .map(|i| format!("/f{i:04}-{}", "x".repeat(200)))
            .collect();
        for name in &names {
            create(&mut t, &mut j, name);
        }
        j.start_compaction(&t).unwrap();
        assert!(
            j.compaction.is_none(),
            "a snapshot began with no room for it"
        );
        assert!(!j.wants_compaction(), "tried again at once");
        assert!(!tmp_path(&path).exists());
        create(&mut t, &mut j, "/after");
        drop(j);
        assert_replays_as(&path, &t);
    }

    #[test]
    fn a_failed_compaction_leaves_the_journal_whole_and_waits_before_trying_again() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut t, mut j) = open_in(dir.path());
        for i in 0..1_000 {
            create(&mut t, &mut j, &format!("/f{i}"));
        }
        // The snapshot's temporary file cannot be made where a directory stands.
        std::fs::create_dir(tmp_path(&path)).unwrap();
        j.start_compaction(&t).unwrap();
        create(&mut t, &mut j, "/during");
        let failed = wait_for_compaction(&mut j);
        assert!(
            matches!(&failed, Err(JournalError::Io { op: "create", .. })),
            "{failed:?}"
        );
        assert!(
            !j.wants_compaction(),
            "a failed compaction is tried again only after as many bytes more"
        );
        create(&mut t, &mut j, "/after");
        drop(j);
        assert_replays_as(&path, &t);
    }

    #[test]
    fn seals_for_good_survive_replay_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut t, mut j) = open_in(dir.path());
        let (for_good, tentative) = (7, 8);
        assert!(t.seal(for_good, Seal::ForGood));
        j.append(&Record::Seal(for_good)).unwrap();
        assert!(t.seal(tentative, Seal::Tentative));
        j.append(&Record::Tombstone(tentative)).unwrap();
        let check = |t: &MetadataTable, when: &str| {
            assert_eq!(t.seal_of(for_good), Some(Seal::ForGood), "{when}");
            assert_eq!(t.seal_of(tentative), None, "{when}: not journaled");
            assert!(t.is_deleted(tentative) && !t.is_deleted(for_good), "{when}");
        };
        drop(j);
        let mut replayed = table();
        let mut j = Journal::open(&path, &mut replayed).unwrap();
        check(&replayed, "replayed");
        j.compact(&replayed).unwrap();
        drop(j);
        let mut compacted = table();
        Journal::open(&path, &mut compacted).unwrap();
        check(&compacted, "compacted");
    }

    #[test]
    fn replays_changes_and_survives_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut t, mut j) = open_in(dir.path());
        let a = t.create_file("/a", 0o644, 0, Owner::default()).unwrap();
        j.append(&Record::Put {
            path: "/a",
            meta: a,
            data: &[],
        })
        .unwrap();
        let b = t.create_dir("/b", 0o755, Owner::default()).unwrap();
        j.append(&Record::Put {
            path: "/b",
            meta: b,
            data: &[],
        })
        .unwrap();
        let gone = t.create_file("/gone", 0, 0, Owner::default()).unwrap();
        j.append(&Record::Put {
            path: "/gone",
            meta: gone,
            data: &[],
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
                data: &[],
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
        let (path, mut t, mut j) = open_in(dir.path());
        let keep = t.create_file("/keep", 0o644, 0, Owner::default()).unwrap();
        j.append(&Record::Put {
            path: "/keep",
            meta: keep,
            data: &[],
        })
        .unwrap();
        let mut compactions = 0;
        let mut last = keep;
        for i in 0..200_000 {
            let name = format!("/churn-{}", i % 7);
            last = t.create_file(&name, 0o600, 0, Owner::default()).unwrap();
            j.append(&Record::Put {
                path: &name,
                meta: last,
                data: &[],
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
    fn junk_replays_nothing_and_does_not_panic() {
        let mut t = table();
        for junk in [
            &b"\xff\xff\xff\xff\0\0\0\0"[..],
            b"\x05\0\0\0abcd\x01",
            &[0u8; 64],
            &[0xa5; 5000],
        ] {
            assert!(
                matches!(replay(junk, &mut t), Replayed::Corrupt { offset: 0, .. }),
                "{junk:?}"
            );
        }
        assert_eq!(replay(b"", &mut t), Replayed::Whole);
        assert!(t.is_empty());
    }

    /// What opening a journal must do.
    #[derive(Debug)]
    enum Want {
        /// Start with exactly these paths (sorted), the file rewritten as a whole snapshot.
        Starts(&'static [&'static str]),
        /// Refuse, naming the record that starts at this offset, and leave the file as it was.
        Refuses(usize),
    }

    /// Opens a journal holding `bytes` and checks the outcome against `want`.
    #[track_caller]
    fn check(case: &str, bytes: &[u8], want: Want) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.journal");
        std::fs::write(&path, bytes).unwrap();
        let mut t = table();
        match (Journal::open(&path, &mut t), want) {
            (Ok(j), Want::Starts(paths)) => {
                drop(j);
                let held: Vec<&str> = t.entries().map(|(p, _)| p).collect();
                assert_eq!(held, paths, "{case}: replayed records");
                let rewritten = std::fs::read(&path).unwrap();
                assert_eq!(
                    replay(&rewritten, &mut table()),
                    Replayed::Whole,
                    "{case}: the torn tail is cut"
                );
            }
            (Err(e @ JournalError::Corrupt { .. }), Want::Refuses(at)) => {
                let message = e.to_string();
                let JournalError::Corrupt {
                    path: p, offset, ..
                } = e
                else {
                    unreachable!()
                };
                assert_eq!((p, offset), (path.clone(), at as u64), "{case}: {message}");
                assert!(
                    message.contains(&format!("is corrupt at byte {at} ("))
                        && message.contains("will not start on it. Move it aside"),
                    "{case}: {message}"
                );
                let after = std::fs::read(&path).unwrap();
                assert!(after == bytes, "{case}: the journal was changed");
                assert!(!path.with_extension("journal.tmp").exists(), "{case}");
            }
            (got, want) => panic!("{case}: got {got:?}, want {want:?}"),
        }
    }

    /// Three records' metadata: a file, a directory, a file.
    fn metas() -> [FileMetadata; 3] {
        let mut t = table();
        [
            t.create_file("/a", 0o644, 0, Owner::default()).unwrap(),
            t.create_dir("/b", 0o755, Owner::default()).unwrap(),
            t.create_file("/c", 0o600, 0, Owner::default()).unwrap(),
        ]
    }

    /// `meta` as an inline file's record holding `data`.
    fn inline_meta(meta: FileMetadata, data: &[u8]) -> FileMetadata {
        FileMetadata {
            inline: true,
            size: data.len() as u64,
            ..meta
        }
    }

    /// A `Put` body as journals from before the birth time wrote it: the older tag and the
    /// metadata without its last field.
    fn v1_body(record: &Record<'_>) -> Vec<u8> {
        let mut body = body(record);
        body[0] = match body[0] {
            TAG_PUT => TAG_PUT_V1,
            _ => TAG_PUT_INLINE_V1,
        };
        body.drain(1 + FILE_METADATA_LEN_V1..1 + FILE_METADATA_LEN);
        body
    }

    #[test]
    fn a_journal_from_before_the_birth_time_replays_with_the_change_time_as_birth() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.journal");
        let mut t = table();
        let plain = FileMetadata {
            ctime_ns: 77,
            birth_ns: 5,
            ..t.create_file("/p", 0o644, 0, Owner::default()).unwrap()
        };
        let inline = inline_meta(
            FileMetadata {
                ctime_ns: 88,
                ..t.create_file("/i", 0o644, 0, Owner::default()).unwrap()
            },
            b"bytes",
        );
        let old = [
            raw(&v1_body(&Record::Put {
                path: "/p",
                meta: plain,
                data: &[],
            })),
            raw(&v1_body(&Record::Put {
                path: "/i",
                meta: inline,
                data: b"bytes",
            })),
        ]
        .concat();
        std::fs::write(&path, old).unwrap();
        // Twice: the replay of the old form, then of the snapshot it was rewritten as.
        for round in 0..2 {
            let mut again = table();
            Journal::open(&path, &mut again).unwrap();
            let (p, _) = again.record("/p").unwrap();
            assert_eq!(
                p,
                FileMetadata {
                    birth_ns: 77,
                    ..plain
                },
                "round {round}"
            );
            let (i, data) = again.record("/i").unwrap();
            assert_eq!(
                i,
                FileMetadata {
                    birth_ns: 88,
                    ..inline
                },
                "round {round}"
            );
            assert_eq!(data, b"bytes", "round {round}");
        }
    }

    /// An inline record and its bytes survive a replay and the snapshot after it, and
    /// changes to them replay in order.
    #[test]
    fn inline_records_replay_with_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.journal");
        let mut t = table();
        t.set_inline_limit(4096, std::time::Duration::ZERO);
        let mut j = Journal::open(&path, &mut t).unwrap();
        let made = t
            .create_inline("/f", 0o644, 0, Owner::default(), b"first")
            .unwrap()
            .meta;
        let (meta, data) = t.record("/f").unwrap();
        j.append(&Record::Put {
            path: "/f",
            meta,
            data,
        })
        .unwrap();
        t.write_inline("/f", made.file_id, 5, b" second").unwrap();
        let (meta, data) = t.record("/f").unwrap();
        j.append(&Record::Put {
            path: "/f",
            meta,
            data,
        })
        .unwrap();
        drop(j);
        for round in 0..2 {
            let mut again = table();
            Journal::open(&path, &mut again).unwrap();
            let (meta, data) = again.record("/f").unwrap();
            assert!(meta.inline, "round {round}");
            assert_eq!(data, b"first second", "round {round}");
        }
        // A checksum-valid record whose tag disagrees with its flag is corruption.
        let mut plain_tag = body(&Record::Put {
            path: "/g",
            meta: inline_meta(made, b"x"),
            data: b"x",
        });
        plain_tag[0] = TAG_PUT;
        check_refusals(&[("an inline record under the plain tag", raw(&plain_tag))]);
    }

    /// `records` encoded back to back, and where each starts.
    fn journal(records: &[Record<'_>]) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for record in records {
            starts.push(bytes.len());
            bytes.extend(encode(record));
        }
        (bytes, starts)
    }

    /// A record of `body` with a correct header and checksum.
    fn raw(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u32).to_le_bytes().to_vec();
        out.extend((xxh3_64(body) as u32).to_le_bytes());
        out.extend(body);
        out
    }

    #[test]
    fn a_torn_tail_is_cut_at_every_point_and_the_rest_replays() {
        let [_, b, c] = metas();
        let first = good_records();
        let inline = inline_meta(c, b"small file");
        let lasts: [(Record<'_>, &'static [&'static str]); 6] = [
            (
                Record::Put {
                    path: "/i",
                    meta: inline,
                    data: b"small file",
                },
                &["/a", "/b", "/i"],
            ),
            (
                Record::Put {
                    path: "/c",
                    meta: c,
                    data: &[],
                },
                &["/a", "/b", "/c"],
            ),
            (
                Record::Delete {
                    path: "/b",
                    file_id: b.file_id,
                },
                &["/a"],
            ),
            (
                Record::MoveOut {
                    path: "/b",
                    file_id: b.file_id,
                },
                &["/a"],
            ),
            (Record::HighWater(c.file_id + 1), &["/a", "/b"]),
            (Record::Tombstone(c.file_id), &["/a", "/b"]),
        ];
        for (last, whole) in lasts {
            let (bytes, starts) = journal(&[first[0], first[1], last]);
            check(&format!("{last:?} whole"), &bytes, Want::Starts(whole));
            for cut in starts[2] + 1..bytes.len() {
                let case = format!("{last:?} cut after {cut} of {} bytes", bytes.len());
                check(&case, &bytes[..cut], Want::Starts(&["/a", "/b"]));
            }
        }
        let (bytes, starts) = journal(&first);
        for cut in 1..starts[1] {
            check("a lone torn record", &bytes[..cut], Want::Starts(&[]));
        }
    }

    /// One flipped byte in the middle of the journal was taken for a torn tail: the records
    /// after it were dropped, the journal rewritten, and the server started as if nothing
    /// had happened. Any one flipped byte, in any record, the last included, now refuses.
    #[test]
    fn a_flipped_byte_in_any_record_refuses_and_keeps_the_file() {
        let [a, b, c] = metas();
        let (bytes, starts) = journal(&[
            Record::Put {
                path: "/a",
                meta: a,
                data: &[],
            },
            Record::Delete {
                path: "/b",
                file_id: b.file_id,
            },
            Record::Put {
                path: "/c",
                meta: c,
                data: &[],
            },
        ]);
        for at in 0..bytes.len() {
            for mask in [0x01u8, 0x80] {
                let mut bad = bytes.clone();
                bad[at] ^= mask;
                let record = starts.iter().rposition(|&s| s <= at).unwrap();
                let case = format!("byte {at} ^ {mask:#04x}, in record {record}");
                check(&case, &bad, Want::Refuses(starts[record]));
            }
        }
    }

    /// Puts of `/a` and `/b`: the good start of every crafted journal.
    fn good_records() -> [Record<'static>; 2] {
        let [a, b, _] = metas();
        [
            Record::Put {
                path: "/a",
                meta: a,
                data: &[],
            },
            Record::Put {
                path: "/b",
                meta: b,
                data: &[],
            },
        ]
    }

    /// [`good_records`], encoded.
    fn good_start() -> Vec<u8> {
        journal(&good_records()).0
    }

    /// The body `encode` writes for `record`.
    fn body(record: &Record<'_>) -> Vec<u8> {
        encode(record)[HEADER_LEN..].to_vec()
    }

    /// Checks that a journal of [`good_start`] and then each case's bytes refuses, naming
    /// the first byte after the good start.
    #[track_caller]
    fn check_refusals(cases: &[(&str, Vec<u8>)]) {
        let good = good_start();
        for (case, tail) in cases {
            check(case, &[&good[..], tail].concat(), Want::Refuses(good.len()));
        }
    }

    #[test]
    fn a_cut_header_is_torn() {
        let good = good_start();
        let high_water = encode(&Record::HighWater(99));
        check("empty file", &[], Want::Starts(&[]));
        check("whole", &good, Want::Starts(&["/a", "/b"]));
        for cut in 1..HEADER_LEN {
            let bytes = [&good[..], &high_water[..cut]].concat();
            check(
                &format!("header cut after {cut}"),
                &bytes,
                Want::Starts(&["/a", "/b"]),
            );
        }
    }

    #[test]
    fn lengths_no_append_writes_refuse() {
        let high_water = encode(&Record::HighWater(99));
        let too_long = (RECORD_LEN_MAX as u32 + 1).to_le_bytes();
        check_refusals(&[
            (
                "past the limit, body cut",
                [&too_long[..], &[0; 4], &[1; 10]].concat(),
            ),
            (
                "past the limit, header cut",
                [&too_long[..], &[0; 2]].concat(),
            ),
            (
                "past the limit, in the middle",
                [&too_long[..], &[0; 4], &high_water].concat(),
            ),
            ("0, in the middle", [&[0; 8][..], &high_water].concat()),
            ("0, a zero-filled tail", vec![0; 64]),
            (
                "disagreeing with the tag, body cut",
                [&50u32.to_le_bytes()[..], &[0; 4], &[TAG_HIGH_WATER, 1, 2]].concat(),
            ),
        ]);
    }

    #[test]
    fn whole_records_with_bad_contents_refuse() {
        let [_, _, c] = metas();
        let high_water = encode(&Record::HighWater(c.file_id + 1));
        let mut last_flipped = encode(&Record::Put {
            path: "/c",
            meta: c,
            data: &[],
        });
        last_flipped[HEADER_LEN + 20] ^= 0x04;
        let mut trailing = body(&Record::HighWater(7));
        trailing.push(0);
        let root = body(&Record::Put {
            path: "/",
            meta: c,
            data: &[],
        });
        check_refusals(&[
            (
                "the last record's body flipped, its length whole",
                last_flipped,
            ),
            (
                "an unknown tag, checksum valid, in the middle",
                [raw(&[0xee; 9]), high_water.clone()].concat(),
            ),
            ("an unknown tag, checksum valid, last", raw(&[0xee; 9])),
            ("an unknown tag, body cut", raw(&[0xee; 40])[..20].to_vec()),
            ("a checksum-valid record of \"/\"", raw(&root)),
            (
                "a checksum-valid high-water mark 0",
                raw(&body(&Record::HighWater(0))),
            ),
            (
                "a checksum-valid record with a trailing byte",
                [raw(&trailing), high_water].concat(),
            ),
        ]);
    }

    /// The decoder against the contract in the module docs, with proptest: arbitrary bytes,
    /// and valid journals cut, flipped and extended. `BENCHFS_FUZZ_CASES` sets the number of
    /// cases of each test (`make fuzz` runs a long one).
    mod fuzz {
        use super::*;
        use benchfs_proto::meta::EntryKind;
        use proptest::collection::vec;
        use proptest::prelude::*;
        use proptest::sample::Index;
        use proptest::test_runner::{Config, TestRunner};

        /// Cases per test: `BENCHFS_FUZZ_CASES` when set, else `default`.
        fn fuzz_cases(default: u32) -> u32 {
            std::env::var("BENCHFS_FUZZ_CASES").map_or(default, |v| {
                v.parse().expect("BENCHFS_FUZZ_CASES must be a number")
            })
        }

        fn runner(default: u32) -> TestRunner {
            TestRunner::new(Config {
                cases: fuzz_cases(default),
                failure_persistence: None,
                ..Config::default()
            })
        }

        /// A [`Record`] that owns its path.
        #[derive(Debug, Clone)]
        enum Owned {
            Put(String, FileMetadata, Vec<u8>),
            Delete(String, u64),
            HighWater(u64),
            MoveOut(String, u64),
            Tombstone(u64),
        }

        impl Owned {
            fn record(&self) -> Record<'_> {
                match self {
                    Owned::Put(path, meta, data) => Record::Put {
                        path,
                        meta: *meta,
                        data,
                    },
                    Owned::Delete(path, file_id) => Record::Delete {
                        path,
                        file_id: *file_id,
                    },
                    Owned::HighWater(id) => Record::HighWater(*id),
                    Owned::MoveOut(path, file_id) => Record::MoveOut {
                        path,
                        file_id: *file_id,
                    },
                    Owned::Tombstone(id) => Record::Tombstone(*id),
                }
            }

            /// The model: what the record means, done through the table's own API.
            fn apply_to(&self, t: &mut MetadataTable) {
                match self {
                    Owned::Put(path, meta, data) => {
                        t.insert(path, *meta, data, false).expect("a valid path");
                        t.reserve_file_id(meta.file_id);
                    }
                    Owned::Delete(path, file_id) => {
                        let _ = t.delete(path, None);
                        t.reserve_file_id(*file_id);
                    }
                    Owned::HighWater(id) => t.reserve_below(*id),
                    Owned::MoveOut(path, file_id) => {
                        let _ = t.move_out(path);
                        t.reserve_file_id(*file_id);
                    }
                    Owned::Tombstone(id) => {
                        t.add_tombstone(*id);
                        t.reserve_file_id(*id);
                    }
                }
            }
        }

        /// Inode numbers: this server's (tag 1, as [`table`] gives), up to its very last,
        /// and any.
        fn file_id() -> impl Strategy<Value = u64> {
            prop_oneof![
                (1u64..64).prop_map(|n| 1 << 32 | n),
                (0u64..4).prop_map(|n| (1 << 32 | 0xffff_ffff) - n),
                any::<u64>(),
            ]
        }

        /// Paths a `Put` can hold: normalisable, not the root, some not yet normal.
        fn put_path() -> impl Strategy<Value = String> {
            "(/{1,2}[a-c]{1,2}){1,3}/?"
        }

        fn meta() -> impl Strategy<Value = FileMetadata> {
            let fields = (0usize..3, any::<u64>(), any::<u32>(), 0u32..64);
            let times = (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>());
            let owner = (any::<u32>(), any::<u32>());
            (file_id(), fields, times, owner).prop_map(
                |(
                    file_id,
                    (kind, size, mode, shift),
                    (mtime_ns, ctime_ns, atime_ns, birth_ns),
                    (uid, gid),
                )| {
                    FileMetadata {
                        file_id,
                        kind: [EntryKind::File, EntryKind::Directory, EntryKind::Symlink][kind],
                        size,
                        mode,
                        uid,
                        gid,
                        chunk_size: 1 << shift,
                        mtime_ns,
                        ctime_ns,
                        atime_ns,
                        birth_ns,
                        inline: false,
                        cut_gen: 0,
                    }
                },
            )
        }

        /// An inline file's record and its bytes (up to the largest a record holds).
        fn inline_put() -> impl Strategy<Value = Owned> {
            let data = prop_oneof![
                vec(any::<u8>(), 0..64),
                vec(
                    any::<u8>(),
                    benchfs_proto::limits::INLINE_BYTES_MAX as usize
                        ..=benchfs_proto::limits::INLINE_BYTES_MAX as usize
                ),
            ];
            (put_path(), meta(), data).prop_map(|(path, meta, data)| {
                let meta = FileMetadata {
                    kind: EntryKind::File,
                    inline: true,
                    size: data.len() as u64,
                    ..meta
                };
                Owned::Put(path, meta, data)
            })
        }

        /// A record a server could append (delete and move-out paths need not exist, nor
        /// even be valid: replay ignores those).
        fn record() -> impl Strategy<Value = Owned> {
            let any_path = || prop_oneof![put_path(), "\\PC{0,12}"];
            prop_oneof![
                3 => (put_path(), meta()).prop_map(|(p, m)| Owned::Put(p, m, Vec::new())),
                1 => inline_put(),
                1 => (any_path(), file_id()).prop_map(|(p, id)| Owned::Delete(p, id)),
                1 => file_id().prop_map(|id| Owned::HighWater(id.max(1))),
                1 => (any_path(), file_id()).prop_map(|(p, id)| Owned::MoveOut(p, id)),
                1 => file_id().prop_map(Owned::Tombstone),
            ]
        }

        /// A piece of a junk journal: random bytes, a random length, a checksum-valid record
        /// of random or damaged contents, or a valid record.
        fn piece() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                vec(any::<u8>(), 0..40),
                (any::<u32>(), vec(any::<u8>(), 0..80)).prop_map(|(len, rest)| [
                    &len.to_le_bytes()[..],
                    &rest
                ]
                .concat()),
                (0u8..7, vec(any::<u8>(), 0..80))
                    .prop_map(|(tag, rest)| raw(&[&[tag][..], &rest].concat())),
                (record(), any::<Index>(), 1u8..).prop_map(|(r, at, mask)| {
                    let mut b = body(&r.record());
                    let i = at.index(b.len());
                    b[i] ^= mask;
                    raw(&b)
                }),
                record().prop_map(|r| encode(&r.record())),
            ]
        }

        /// Damage done to a valid journal.
        #[derive(Debug, Clone)]
        enum Damage {
            /// Cut it at this point (an index into `0..=len`).
            Cut(Index),
            /// Flip one byte (by a non-zero mask) in each named record (record, byte in it),
            /// then perhaps cut.
            Flips(Vec<(Index, Index, u8)>, Option<Index>),
            /// Append these bytes.
            Junk(Vec<u8>),
        }

        fn damage() -> impl Strategy<Value = Damage> {
            prop_oneof![
                any::<Index>().prop_map(Damage::Cut),
                (
                    vec((any::<Index>(), any::<Index>(), 1u8..), 1..4),
                    proptest::option::of(any::<Index>())
                )
                    .prop_map(|(flips, cut)| Damage::Flips(flips, cut)),
                // No checksum-valid record: one could apply (2^-32 for random bytes).
                prop_oneof![
                    vec(any::<u8>(), 1..64),
                    vec(Just(0u8), 1..64),
                    (any::<u32>(), vec(any::<u8>(), 0..80)).prop_map(|(len, rest)| [
                        &len.to_le_bytes()[..],
                        &rest
                    ]
                    .concat()),
                ]
                .prop_map(Damage::Junk),
            ]
        }

        /// What a table holds: its records, tombstones and next inode number.
        type State = (Vec<(String, FileMetadata, Vec<u8>)>, Vec<u64>, u64);

        fn state(t: &MetadataTable) -> State {
            let entries = t
                .records()
                .map(|(p, m, d)| (p.to_string(), *m, d.to_vec()))
                .collect();
            (entries, t.tombstones().collect(), t.next_file_id())
        }

        /// What opening a journal did.
        #[derive(Debug, PartialEq)]
        enum Opened {
            /// It opened, with this table.
            Ok(State),
            /// It refused, naming the record at this offset.
            Refused(u64),
        }

        /// Opens a journal of `bytes` at `path`, checking what holds whatever the bytes: it
        /// opens and rewrites itself as a snapshot of the same table, or it refuses as
        /// corrupt at a byte of the file and leaves the file as it was.
        fn open(path: &Path, bytes: &[u8]) -> Result<Opened, TestCaseError> {
            std::fs::write(path, bytes).unwrap();
            let mut t = table();
            let opened = match Journal::open(path, &mut t) {
                Ok(j) => {
                    drop(j);
                    let rewritten = std::fs::read(path).unwrap();
                    let mut again = table();
                    prop_assert_eq!(replay(&rewritten, &mut again), Replayed::Whole);
                    prop_assert_eq!(state(&again), state(&t), "the snapshot replays the same");
                    Opened::Ok(state(&t))
                }
                Err(JournalError::Corrupt { offset, .. }) => {
                    let after = std::fs::read(path).unwrap();
                    prop_assert!(after == bytes, "a refused journal was changed");
                    prop_assert!(
                        offset < bytes.len() as u64,
                        "offset {offset} is past the end"
                    );
                    Opened::Refused(offset)
                }
                Err(e) => return Err(TestCaseError::fail(format!("not a corruption: {e}"))),
            };
            prop_assert!(!path.with_extension("journal.tmp").exists());
            Ok(opened)
        }

        /// A valid journal of `records`: its bytes, where each record starts and ends, and
        /// the model's table after each prefix of the records (`models[k]`: the first k).
        fn valid(records: &[Owned]) -> (Vec<u8>, Vec<(usize, usize)>, Vec<State>) {
            let (bytes, starts) = journal(&records.iter().map(Owned::record).collect::<Vec<_>>());
            let ends = starts.iter().skip(1).copied().chain([bytes.len()]);
            let spans = starts.iter().copied().zip(ends).collect();
            let mut t = table();
            let mut models = vec![state(&t)];
            for r in records {
                r.apply_to(&mut t);
                models.push(state(&t));
            }
            (bytes, spans, models)
        }

        /// Flips one byte in each named record before `cut`, then opens the journal cut
        /// there: the first flipped record refuses if it is whole; if the cut falls inside
        /// it, it refuses or is dropped as a torn tail; with no flip left it is a pure cut.
        fn check_flips(
            path: &Path,
            records: &[Owned],
            flips: &[(Index, Index, u8)],
            cut: Option<Index>,
        ) -> Result<(), TestCaseError> {
            let (mut bytes, spans, models) = valid(records);
            let cut = cut.map_or(bytes.len(), |c| c.index(bytes.len() + 1));
            let mut flipped = Vec::new();
            for &(record, at, mask) in flips {
                let r = record.index(spans.len());
                let (start, end) = spans[r];
                let pos = start + at.index(end - start);
                if pos < cut && !flipped.contains(&r) {
                    bytes[pos] ^= mask;
                    flipped.push(r);
                }
            }
            let got = open(path, &bytes[..cut])?;
            let whole = spans.iter().filter(|&&(_, end)| end <= cut).count();
            match flipped.iter().min().map(|&r| (r, spans[r])) {
                None => prop_assert_eq!(got, Opened::Ok(models[whole].clone())),
                Some((_, (start, end))) if end <= cut => {
                    prop_assert_eq!(got, Opened::Refused(start as u64));
                }
                Some((r, (start, _))) => prop_assert!(
                    got == Opened::Ok(models[r].clone()) || got == Opened::Refused(start as u64),
                    "a flipped torn tail neither refused at {start} nor kept {r} records: {got:?}"
                ),
            }
            Ok(())
        }

        fn check_damage(
            path: &Path,
            records: &[Owned],
            damage: &Damage,
        ) -> Result<(), TestCaseError> {
            let (mut bytes, spans, models) = valid(records);
            match damage {
                Damage::Cut(at) => {
                    let cut = at.index(bytes.len() + 1);
                    let whole = spans.iter().filter(|&&(_, end)| end <= cut).count();
                    let got = open(path, &bytes[..cut])?;
                    prop_assert_eq!(got, Opened::Ok(models[whole].clone()));
                }
                Damage::Flips(flips, cut) => check_flips(path, records, flips, *cut)?,
                Damage::Junk(junk) => {
                    let len = bytes.len();
                    bytes.extend(junk);
                    match open(path, &bytes)? {
                        Opened::Ok(got) => prop_assert_eq!(&got, &models[records.len()]),
                        Opened::Refused(at) => prop_assert!(at >= len as u64, "refused at {at}"),
                    }
                }
            }
            Ok(())
        }

        #[test]
        fn arbitrary_bytes_open_or_refuse_untouched() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("metadata.journal");
            let junk = vec(piece(), 0..6).prop_map(|pieces| pieces.concat());
            runner(1000)
                .run(&junk, |bytes| open(&path, &bytes).map(drop))
                .unwrap();
        }

        #[test]
        fn damaged_journals_keep_the_contract() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("metadata.journal");
            runner(1000)
                .run(&(vec(record(), 1..10), damage()), |(records, damage)| {
                    check_damage(&path, &records, &damage)
                })
                .unwrap();
        }
    }
}
