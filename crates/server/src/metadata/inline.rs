//! Inline files in the metadata table: records that hold their file's bytes, up to the
//! server's `storage.inline_bytes` (and the file's chunk size), so that a small file is
//! made, read and removed in one request each.
//!
//! A file grows out of its record by a move the client drives, because the record and
//! chunk 0 live on different servers: [`MetadataTable::seal_inline`] freezes the bytes
//! under the mover's token and hands them out, the mover writes them to chunk 0 (every
//! replica), then [`MetadataTable::drop_inline`] drops them. **Invariant:** while a live
//! seal holds a record's bytes, nothing changes them (writes are `Busy`), so what reaches
//! chunk 0 is what the record held when it stops being inline. A seal lapses after its
//! lease (a mover that died); the first write after that ends it, and the old mover's drop
//! then fails, since its copy may be out of date.

use std::time::{Duration, Instant};

use benchfs_proto::meta::{EntryKind, FileMetadata, Owner};
use benchfs_proto::{path, Status};

use super::{content_changed, MetadataTable};

/// A move of a record's bytes to chunk 0 under way.
#[derive(Debug, Clone, Copy)]
pub(super) struct Seal {
    /// The mover's token.
    token: u64,
    /// When writes may end the seal.
    until: Instant,
}

/// What [`MetadataTable::create_inline`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedInline {
    /// The record after it.
    pub meta: FileMetadata,
    /// Whether it made the file (else it wrote into the inline file there was).
    pub created: bool,
    /// The file's bytes after a write into an existing file; empty when `created`.
    pub data: Vec<u8>,
}

impl MetadataTable {
    /// Lets records hold up to `limit` bytes of their file (0: none), and seals hold off
    /// writes for `lease`.
    pub fn set_inline_limit(&mut self, limit: u64, lease: Duration) {
        self.inline_limit = limit;
        self.seal_lease = lease;
    }

    /// Most bytes the record of a file of `chunk_size` may hold here.
    fn limit_for(&self, chunk_size: u64) -> u64 {
        self.inline_limit.min(chunk_size)
    }

    /// The record of `path` and its bytes (empty unless it is inline).
    pub fn record(&self, path: &str) -> Result<(FileMetadata, &[u8]), Status> {
        let path = path::normalize(path)?;
        let meta = *self.entries.get(&path).ok_or(Status::NotFound)?;
        let data = self.inline_bytes.get(&path).map_or(&[][..], |d| &d[..]);
        Ok((meta, data))
    }

    /// The normalised path and record of `file_id` at `path`, for a change of it (noted
    /// for the replica repair's settle window): `Stale` when the path now names another
    /// file.
    fn entry_of(&mut self, path: &str, file_id: u64) -> Result<(String, FileMetadata), Status> {
        let path = path::normalize(path)?;
        self.recent.touch(&path);
        let meta = *self.entries.get(&path).ok_or(Status::NotFound)?;
        if meta.file_id != file_id {
            return Err(Status::Stale);
        }
        Ok((path, meta))
    }

    /// `Busy` while a live seal freezes the bytes of `path` (normalised); a lapsed one is
    /// ended here, since the bytes are about to change under it.
    fn unsealed(&mut self, path: &str) -> Result<(), Status> {
        match self.seals.get(path) {
            Some(seal) if Instant::now() < seal.until => Err(Status::Busy),
            Some(_) => {
                self.seals.remove(path);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The bytes of the inline record at `path`, an entry made for them if it had none.
    fn inline_bytes_mut(&mut self, path: &str) -> &mut Vec<u8> {
        self.inline_bytes.entry(path.to_string()).or_default()
    }

    /// Cuts or zero-extends the bytes of the inline record `meta` at `path` (normalised)
    /// to `size`; the caller sets the size in the record.
    pub(super) fn resize_inline(
        &mut self,
        path: &str,
        meta: &FileMetadata,
        size: u64,
    ) -> Result<(), Status> {
        if size > self.limit_for(meta.chunk_size) {
            return Err(Status::NeedsChunks);
        }
        self.unsealed(path)?;
        self.inline_bytes_mut(path).resize(size as usize, 0);
        Ok(())
    }

    /// Makes the file `path` holding `data` in its record; if the path names an inline
    /// file, writes `data` at its offset 0 instead (its mode and owner stay, as for an
    /// open with O_CREAT of a file that exists). Any other record there is `Exists`, and
    /// `data` past the limit is `NeedsChunks`.
    pub fn create_inline(
        &mut self,
        path: &str,
        mode: u32,
        chunk_size: u64,
        owner: Owner,
        data: &[u8],
    ) -> Result<CreatedInline, Status> {
        let path = path::normalize(path)?;
        self.recent.touch(&path);
        if path == "/" {
            return Err(Status::Exists);
        }
        let Some(&meta) = self.entries.get(&path) else {
            self.check_unsealed(&path)?;
            let chunk_size = self.file_chunk_size(chunk_size)?;
            // With inline files off here, not even an empty file is made inline.
            if self.inline_limit == 0 || data.len() as u64 > self.limit_for(chunk_size) {
                return Err(Status::NeedsChunks);
            }
            let meta = FileMetadata {
                size: data.len() as u64,
                inline: true,
                ..self.new_record(EntryKind::File, mode, chunk_size, owner)?
            };
            self.put(path, meta, data.to_vec());
            return Ok(CreatedInline {
                meta,
                created: true,
                data: Vec::new(),
            });
        };
        if !meta.inline {
            return Err(Status::Exists);
        }
        let meta = self.write_at(&path, meta, 0, data)?;
        let data = self.inline_bytes.get(&path).cloned().unwrap_or_default();
        Ok(CreatedInline {
            meta,
            created: false,
            data,
        })
    }

    /// Writes `data` at `offset` of the inline file `file_id` at `path`: `Stale` if the
    /// path names another file, `NeedsChunks` if its record holds no bytes or the write
    /// would end past the limit, `Busy` while they are sealed. A gap reads as zeros.
    pub fn write_inline(
        &mut self,
        path: &str,
        file_id: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<FileMetadata, Status> {
        let (path, meta) = self.entry_of(path, file_id)?;
        if !meta.inline {
            return Err(Status::NeedsChunks);
        }
        self.write_at(&path, meta, offset, data)
    }

    /// Writes into the inline record `meta` at `path` (normalised) and returns it updated.
    fn write_at(
        &mut self,
        path: &str,
        meta: FileMetadata,
        offset: u64,
        data: &[u8],
    ) -> Result<FileMetadata, Status> {
        // Writing nothing changes nothing, not even the times (write(2) of 0 bytes, or an
        // open with O_CREAT of an inline file that exists).
        if data.is_empty() {
            return Ok(meta);
        }
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(Status::InvalidArgument)?;
        if end > self.limit_for(meta.chunk_size) {
            return Err(Status::NeedsChunks);
        }
        self.unsealed(path)?;
        let bytes = self.inline_bytes_mut(path);
        if (bytes.len() as u64) < end {
            bytes.resize(end as usize, 0);
        }
        bytes[offset as usize..end as usize].copy_from_slice(data);
        let size = bytes.len() as u64;
        let meta = self.entries.get_mut(path).ok_or(Status::Io)?;
        meta.size = size;
        content_changed(meta);
        Ok(*meta)
    }

    /// Freezes the bytes of inline file `file_id` at `path` under `token` and returns the
    /// record with them, for a move to chunk 0. A record that holds no bytes comes back
    /// with none (nothing to move); one sealed under another live token is `Busy`.
    pub fn seal_inline(
        &mut self,
        path: &str,
        file_id: u64,
        token: u64,
    ) -> Result<(FileMetadata, Vec<u8>), Status> {
        let (path, meta) = self.entry_of(path, file_id)?;
        if !meta.inline {
            return Ok((meta, Vec::new()));
        }
        if self
            .seals
            .get(&path)
            .is_some_and(|s| s.token != token && Instant::now() < s.until)
        {
            return Err(Status::Busy);
        }
        let data = self.inline_bytes.get(&path).cloned().unwrap_or_default();
        let until = Instant::now() + self.seal_lease;
        self.seals.insert(path, Seal { token, until });
        Ok((meta, data))
    }

    /// Ends the move under `token`: with `moved` (the bytes are in chunk 0) the record
    /// drops them and stops being inline; without, it keeps them. `Busy` if the seal is
    /// gone (it lapsed and the bytes were written since, or another mover took it); a
    /// record that holds no bytes comes back as it is.
    pub fn drop_inline(
        &mut self,
        path: &str,
        file_id: u64,
        token: u64,
        moved: bool,
    ) -> Result<FileMetadata, Status> {
        let (path, meta) = self.entry_of(path, file_id)?;
        if !meta.inline {
            return Ok(meta);
        }
        if self.seals.get(&path).is_none_or(|s| s.token != token) {
            return Err(Status::Busy);
        }
        self.seals.remove(&path);
        if !moved {
            return Ok(meta);
        }
        self.inline_bytes.remove(&path);
        let meta = self.entries.get_mut(&path).ok_or(Status::Io)?;
        meta.inline = false;
        Ok(*meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use benchfs_proto::meta::SizeUpdate;

    /// A table whose records hold up to 100 bytes and whose seals never lapse (a day).
    fn table() -> MetadataTable {
        let mut t = MetadataTable::new(3, 4096);
        t.set_inline_limit(100, Duration::from_secs(86_400));
        t
    }

    fn create(t: &mut MetadataTable, path: &str, data: &[u8]) -> Result<CreatedInline, Status> {
        t.create_inline(path, 0o640, 0, Owner { uid: 1, gid: 2 }, data)
    }

    #[track_caller]
    fn check(t: &MetadataTable, path: &str, inline: bool, bytes: &[u8]) {
        let (meta, data) = t.record(path).unwrap();
        assert_eq!(
            (meta.inline, meta.size),
            (inline, bytes.len() as u64),
            "{path}"
        );
        let held: &[u8] = if inline { bytes } else { &[] };
        assert_eq!(data, held, "{path}");
    }

    #[test]
    fn create_then_write_into_an_existing_inline_file() {
        let mut t = table();
        let made = create(&mut t, "/f", b"hello world").unwrap();
        assert!(made.created && made.data.is_empty());
        assert_eq!(
            (made.meta.mode, made.meta.uid, made.meta.gid),
            (0o640, 1, 2)
        );
        check(&t, "/f", true, b"hello world");
        // O_CREAT of a file that is there: the bytes go at offset 0, the rest stays.
        let again = t
            .create_inline("/f", 0o600, 0, Owner::default(), b"J")
            .unwrap();
        assert!(!again.created);
        assert_eq!(again.data, b"Jello world");
        assert_eq!(
            (again.meta.file_id, again.meta.mode),
            (made.meta.file_id, 0o640)
        );
        check(&t, "/f", true, b"Jello world");
        // Past the limit, or into a record that is not inline: refused, nothing changes.
        assert_eq!(create(&mut t, "/big", &[1; 101]), Err(Status::NeedsChunks));
        assert_eq!(t.lookup("/big"), Err(Status::NotFound));
        t.create_file("/plain", 0o644, 0, Owner::default()).unwrap();
        assert_eq!(create(&mut t, "/plain", b"x"), Err(Status::Exists));
        t.create_dir("/d", 0o755, Owner::default()).unwrap();
        assert_eq!(create(&mut t, "/d", b"x"), Err(Status::Exists));
        assert_eq!(create(&mut t, "/", b"x"), Err(Status::Exists));
    }

    #[test]
    fn limits_are_the_servers_and_the_files_chunk() {
        let mut t = table();
        assert!(create(&mut t, "/at", &[7; 100]).is_ok());
        let mut small = MetadataTable::new(3, 4096);
        small.set_inline_limit(8192, Duration::ZERO);
        // The file's chunk size bounds its record too.
        assert!(small
            .create_inline("/c", 0, 4096, Owner::default(), &[1; 4096])
            .is_ok());
        assert_eq!(
            small.create_inline("/d", 0, 4096, Owner::default(), &[1; 4097]),
            Err(Status::NeedsChunks)
        );
        let mut off = MetadataTable::new(3, 4096);
        assert_eq!(
            off.create_inline("/e", 0, 0, Owner::default(), b""),
            Err(Status::NeedsChunks),
            "inline_bytes = 0 makes no inline record"
        );
    }

    #[test]
    fn writes_and_sizes_keep_the_bytes_in_step() {
        let mut t = table();
        let id = create(&mut t, "/f", b"abc").unwrap().meta.file_id;
        assert_eq!(t.write_inline("/f", id, 5, b"xy").unwrap().size, 7);
        check(&t, "/f", true, b"abc\0\0xy");
        assert_eq!(t.write_inline("/f", id + 1, 0, b"z"), Err(Status::Stale));
        assert_eq!(
            t.write_inline("/f", id, 99, b"zz"),
            Err(Status::NeedsChunks)
        );
        assert_eq!(t.write_inline("/nope", id, 0, b"z"), Err(Status::NotFound));
        t.update_size("/f", id, 2, SizeUpdate::Exact).unwrap();
        check(&t, "/f", true, b"ab");
        t.update_size("/f", id, 4, SizeUpdate::AtLeast).unwrap();
        check(&t, "/f", true, b"ab\0\0");
        assert_eq!(
            t.update_size("/f", id, 101, SizeUpdate::Exact),
            Err(Status::NeedsChunks)
        );
        check(&t, "/f", true, b"ab\0\0");
        let plain = t.create_file("/p", 0, 0, Owner::default()).unwrap().file_id;
        assert_eq!(
            t.write_inline("/p", plain, 0, b"z"),
            Err(Status::NeedsChunks)
        );
    }

    #[test]
    fn an_empty_inline_file_holds_no_bytes_entry_and_takes_writes_sizes_and_seals() {
        let mut t = table();
        let id = create(&mut t, "/e", b"").unwrap().meta.file_id;
        assert!(t.inline_bytes.is_empty(), "an empty file made an entry");
        check(&t, "/e", true, b"");
        t.update_size("/e", id, 3, SizeUpdate::AtLeast).unwrap();
        check(&t, "/e", true, b"\0\0\0");
        t.update_size("/e", id, 0, SizeUpdate::Exact).unwrap();
        check(&t, "/e", true, b"");
        let before = t.snapshot("/e");
        assert_eq!(t.write_inline("/e", id, 1, b"xy").unwrap().size, 3);
        check(&t, "/e", true, b"\0xy");
        t.restore("/e", before);
        check(&t, "/e", true, b"");
        let (_, sealed) = t.seal_inline("/e", id, 7).unwrap();
        assert!(sealed.is_empty());
        assert!(!t.drop_inline("/e", id, 7, true).unwrap().inline);
        check(&t, "/e", false, b"");
    }

    #[test]
    fn a_seal_freezes_the_bytes_until_dropped_or_lifted() {
        let mut t = table();
        let id = create(&mut t, "/f", b"data").unwrap().meta.file_id;
        let (meta, data) = t.seal_inline("/f", id, 1).unwrap();
        assert!(meta.inline);
        assert_eq!(data, b"data");
        // Another mover, and every write, waits.
        assert_eq!(t.seal_inline("/f", id, 2), Err(Status::Busy));
        assert_eq!(t.write_inline("/f", id, 0, b"x"), Err(Status::Busy));
        assert_eq!(create(&mut t, "/f", b"x").unwrap_err(), Status::Busy);
        assert_eq!(
            t.update_size("/f", id, 1, SizeUpdate::Exact),
            Err(Status::Busy)
        );
        assert_eq!(t.drop_inline("/f", id, 2, true), Err(Status::Busy));
        // Lifted: writes go on, and the old token no longer drops anything.
        assert!(t.drop_inline("/f", id, 1, false).unwrap().inline);
        t.write_inline("/f", id, 0, b"D").unwrap();
        assert_eq!(t.drop_inline("/f", id, 1, true), Err(Status::Busy));
        // Moved: the record drops the bytes and keeps its size; a move after is a no-op.
        t.seal_inline("/f", id, 3).unwrap();
        let moved = t.drop_inline("/f", id, 3, true).unwrap();
        assert_eq!((moved.inline, moved.size), (false, 4));
        check(&t, "/f", false, b"Data");
        assert_eq!(t.seal_inline("/f", id, 4).unwrap().1, b"");
        assert!(!t.drop_inline("/f", id, 4, true).unwrap().inline);
        assert_eq!(t.write_inline("/f", id, 0, b"x"), Err(Status::NeedsChunks));
    }

    #[test]
    fn a_lapsed_seal_is_ended_by_the_next_write() {
        // A lease of zero has always lapsed: the mover died.
        let mut t = MetadataTable::new(3, 4096);
        t.set_inline_limit(100, Duration::ZERO);
        let id = t
            .create_inline("/f", 0, 0, Owner::default(), b"old")
            .unwrap()
            .meta
            .file_id;
        t.seal_inline("/f", id, 1).unwrap();
        // Another mover may take it over.
        t.seal_inline("/f", id, 2).unwrap();
        t.write_inline("/f", id, 0, b"new").unwrap();
        assert_eq!(
            t.drop_inline("/f", id, 2, true),
            Err(Status::Busy),
            "its copy of the bytes is out of date"
        );
        check(&t, "/f", true, b"new");
    }

    #[test]
    fn delete_rename_and_replicas_carry_the_bytes() {
        let mut t = table();
        let made = create(&mut t, "/a", b"bytes").unwrap().meta;
        // A rename: the new name with the bytes, then the old name moves out.
        t.insert("/b", made, b"bytes", false).unwrap();
        t.move_out("/a").unwrap();
        check(&t, "/b", true, b"bytes");
        assert!(t.record("/a").is_err());
        assert_eq!(
            t.insert("/c", made, b"", false),
            Err(Status::InvalidArgument)
        );
        let plain = FileMetadata {
            inline: false,
            size: 0,
            ..made
        };
        assert_eq!(
            t.insert("/c", plain, b"x", false),
            Err(Status::InvalidArgument)
        );
        // A record put over an inline one replaces its bytes too.
        t.insert("/b", plain, b"", false).unwrap();
        check(&t, "/b", false, b"");
        let gone = create(&mut t, "/g", b"g").unwrap().meta;
        t.seal_inline("/g", gone.file_id, 9).unwrap();
        t.delete("/g", None).unwrap();
        assert!(t.records().all(|(p, _, _)| p != "/g"));
        assert!(t.is_deleted(gone.file_id));
        let again = create(&mut t, "/g", b"h").unwrap();
        assert!(again.created, "no seal or bytes outlive their record");
    }
}
