//! File metadata as it is stored and sent: plain values with a fixed 64-byte encoding.

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::wire::{DecodeError, Reader, Writer};

/// Nanoseconds since the Unix epoch, now: the clock records' times are stamped from.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Whether a record is a file, a directory or a symbolic link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntryKind {
    /// A regular file.
    File = 1,
    /// A directory.
    Directory = 2,
    /// A symbolic link: a file whose bytes are its target, so its record stays fixed-size
    /// and the target moves with the same chunk code as any data.
    Symlink = 3,
}

impl EntryKind {
    /// Decodes a wire value.
    pub fn from_wire(value: u8) -> Option<EntryKind> {
        match value {
            1 => Some(EntryKind::File),
            2 => Some(EntryKind::Directory),
            3 => Some(EntryKind::Symlink),
            _ => None,
        }
    }
}

/// Who owns a new record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// How a size update applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SizeUpdate {
    /// Grow to at least the given size (a write that ended there); never shrinks, so
    /// updates from concurrent writers commute.
    AtLeast = 1,
    /// Set exactly (truncate).
    Exact = 2,
    /// [`SizeUpdate::AtLeast`] unless the record was cut since the caller looked (its
    /// cut count is no longer the request's): then the time alone moves, and the caller
    /// tells whether its writes came before the cut or after it.
    AtLeastUncut = 3,
}

impl SizeUpdate {
    /// Decodes a wire value.
    pub fn from_wire(value: u8) -> Option<SizeUpdate> {
        match value {
            1 => Some(SizeUpdate::AtLeast),
            2 => Some(SizeUpdate::Exact),
            3 => Some(SizeUpdate::AtLeastUncut),
            _ => None,
        }
    }
}

/// The metadata of one file or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMetadata {
    /// Cluster-unique inode number; chunks are keyed by it, so a rename moves no data.
    pub file_id: u64,
    /// File, directory or symbolic link.
    pub kind: EntryKind,
    /// Size in bytes (0 for directories, the target's length for a symbolic link).
    pub size: u64,
    /// Permission bits (and set-id and sticky bits); the kind gives the file type.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Chunk size the file was created with; later configuration changes leave it alone.
    pub chunk_size: u64,
    /// Last modification, nanoseconds since the Unix epoch.
    pub mtime_ns: u64,
    /// Last status change, nanoseconds since the Unix epoch.
    pub ctime_ns: u64,
    /// Last access as last set: reads do not move it (as a `noatime` mount).
    pub atime_ns: u64,
    /// When the file was created, nanoseconds since the Unix epoch; nothing changes it.
    /// Readers hold it against a server's store birth to tell a chunk the server lost
    /// (written before the store began) from a hole.
    pub birth_ns: u64,
    /// Whether the record itself holds the file's `size` bytes (a small file made by one
    /// deferred open), so the file has no chunks. Only files; a file stops being inline
    /// when it grows past its server's limit, and never becomes inline again.
    pub inline: bool,
    /// How many times a truncate set the file's size to another one (and cut its
    /// chunks), wrapping at 2^16 and skipping 0 ([`next_cut_gen`]). An append's chunk
    /// writes carry the count its claim saw, and a chunk server drops what such a write
    /// would land past a later cut (the record ordered the append before it); a writer's
    /// size update made with an older count grows the file only once the writer checked
    /// its bytes outlived the cut ([`SizeUpdate::AtLeastUncut`]). Replicas agree on it: a
    /// truncate asks every replica for the count after the newest one they hold.
    pub cut_gen: u16,
}

/// Whether cut count `a` ([`FileMetadata::cut_gen`]) comes before `b`, by serial number
/// arithmetic (RFC 1982): the counts wrap at 2^16, and no write is 2^15 cuts behind.
pub fn cut_gen_older(a: u16, b: u16) -> bool {
    (b.wrapping_sub(a) as i16) > 0
}

/// The cut count after `g`. It skips 0, which stands for "never cut" (a record from
/// before counts were kept, or no count given).
pub fn next_cut_gen(g: u16) -> u16 {
    match g.wrapping_add(1) {
        0 => 1,
        n => n,
    }
}

/// The root directory's inode number. The root has no record; no server hands this number
/// out, and a mount's root node id is the same.
pub const ROOT_FILE_ID: u64 = 1;

/// Encoded size of [`FileMetadata`].
pub const FILE_METADATA_LEN: usize = 72;

/// Encoded size of a [`FileMetadata`] from before it had a birth time (wire version 9 and
/// older, metadata journals written by them): the same fields without `birth_ns`.
pub const FILE_METADATA_LEN_V1: usize = 64;

/// Bit of [`FileMetadataWire::flags`]: the record holds the file's bytes
/// ([`FileMetadata::inline`]).
pub const META_FLAG_INLINE: u8 = 1;

/// [`FileMetadata`] as it lies on the wire and in the journal.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct FileMetadataWire {
    /// Inode number.
    pub file_id: U64,
    /// [`EntryKind`] as a byte.
    pub kind: u8,
    /// [`META_FLAG_INLINE`]; no other bit is defined.
    pub flags: u8,
    /// [`FileMetadata::cut_gen`] (zero in records from before it was kept).
    pub cut_gen: U16,
    /// Permission bits.
    pub mode: U32,
    /// Size in bytes.
    pub size: U64,
    /// Chunk size, a power of two.
    pub chunk_size: U64,
    /// Last modification, ns since the epoch.
    pub mtime_ns: U64,
    /// Last status change, ns since the epoch.
    pub ctime_ns: U64,
    /// Last access, ns since the epoch.
    pub atime_ns: U64,
    /// Owner.
    pub uid: U32,
    /// Group.
    pub gid: U32,
    /// Creation, ns since the epoch.
    pub birth_ns: U64,
}

const _: () = assert!(std::mem::size_of::<FileMetadataWire>() == FILE_METADATA_LEN);

impl FileMetadata {
    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == EntryKind::Directory
    }

    /// Whether this is a symbolic link.
    pub fn is_symlink(&self) -> bool {
        self.kind == EntryKind::Symlink
    }

    /// Whether this record holds data in chunks (a file or a symbolic link).
    pub fn has_chunks(&self) -> bool {
        self.kind != EntryKind::Directory
    }

    /// Appends the encoding ([`FileMetadataWire`], [`FILE_METADATA_LEN`] bytes).
    pub fn encode(&self, w: &mut Writer) {
        w.fixed(&self.to_wire());
    }

    /// Decodes the encoding.
    pub fn decode(r: &mut Reader<'_>) -> Result<FileMetadata, DecodeError> {
        FileMetadata::from_wire(&r.fixed()?)
    }

    /// Decodes the older encoding without a birth time ([`FILE_METADATA_LEN_V1`] bytes, the
    /// same layout without its last field), taking the change time as the birth, as
    /// readers did before there was one.
    pub fn decode_v1(r: &mut Reader<'_>) -> Result<FileMetadata, DecodeError> {
        let old: [u8; FILE_METADATA_LEN_V1] = r.fixed()?;
        let mut wire = [0u8; FILE_METADATA_LEN];
        wire[..FILE_METADATA_LEN_V1].copy_from_slice(&old);
        let ctime = std::mem::offset_of!(FileMetadataWire, ctime_ns);
        wire[FILE_METADATA_LEN_V1..].copy_from_slice(&old[ctime..ctime + 8]);
        FileMetadata::decode(&mut Reader::new(&wire))
    }

    /// The wire form.
    pub fn to_wire(&self) -> FileMetadataWire {
        FileMetadataWire {
            file_id: self.file_id.into(),
            kind: self.kind as u8,
            flags: if self.inline { META_FLAG_INLINE } else { 0 },
            cut_gen: self.cut_gen.into(),
            mode: self.mode.into(),
            size: self.size.into(),
            chunk_size: self.chunk_size.into(),
            mtime_ns: self.mtime_ns.into(),
            ctime_ns: self.ctime_ns.into(),
            atime_ns: self.atime_ns.into(),
            uid: self.uid.into(),
            gid: self.gid.into(),
            birth_ns: self.birth_ns.into(),
        }
    }

    /// Checks and converts the wire form.
    pub fn from_wire(w: &FileMetadataWire) -> Result<FileMetadata, DecodeError> {
        let kind = EntryKind::from_wire(w.kind).ok_or(DecodeError::BadField {
            field: "kind",
            reason: "not a file, directory or symbolic link",
        })?;
        if w.flags & !META_FLAG_INLINE != 0 {
            return Err(DecodeError::BadField {
                field: "flags",
                reason: "unknown flag bits",
            });
        }
        let inline = w.flags & META_FLAG_INLINE != 0;
        if inline && kind != EntryKind::File {
            return Err(DecodeError::BadField {
                field: "flags",
                reason: "only a file's record holds its bytes",
            });
        }
        let chunk_size = w.chunk_size.get();
        if !chunk_size.is_power_of_two() {
            return Err(DecodeError::BadField {
                field: "chunk_size",
                reason: "not a power of two",
            });
        }
        Ok(FileMetadata {
            file_id: w.file_id.get(),
            kind,
            size: w.size.get(),
            mode: w.mode.get(),
            chunk_size,
            mtime_ns: w.mtime_ns.get(),
            ctime_ns: w.ctime_ns.get(),
            atime_ns: w.atime_ns.get(),
            uid: w.uid.get(),
            gid: w.gid.get(),
            birth_ns: w.birth_ns.get(),
            inline,
            cut_gen: w.cut_gen.get(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory's record with every field distinct.
    fn sample() -> FileMetadata {
        FileMetadata {
            file_id: 1 << 40 | 5,
            kind: EntryKind::Directory,
            size: 123,
            mode: 0o755,
            chunk_size: 4096,
            mtime_ns: 9,
            ctime_ns: 10,
            atime_ns: 11,
            uid: 1000,
            gid: 100,
            birth_ns: 8,
            inline: false,
            cut_gen: 0x0302,
        }
    }

    #[test]
    fn encoding_is_72_bytes_and_round_trips() {
        let m = sample();
        let mut w = Writer::new();
        m.encode(&mut w);
        let bytes = w.into_vec();
        assert_eq!(bytes.len(), FILE_METADATA_LEN);
        let mut r = Reader::new(&bytes);
        assert_eq!(FileMetadata::decode(&mut r).unwrap(), m);
        // The cut count is bytes 10 and 11, where records from before it held zeros.
        assert_eq!(bytes[10..12], [2, 3]);
        let mut bad = bytes.clone();
        bad[8] = 4;
        assert!(FileMetadata::decode(&mut Reader::new(&bad)).is_err());
        // The inline flag is byte 9, for files only; other flag bits are refused.
        let file = FileMetadata {
            kind: EntryKind::File,
            inline: true,
            ..m
        };
        let mut w = Writer::new();
        file.encode(&mut w);
        let bytes = w.into_vec();
        assert_eq!(bytes[9], META_FLAG_INLINE);
        assert_eq!(
            FileMetadata::decode(&mut Reader::new(&bytes)).unwrap(),
            file
        );
        for (at, value) in [(9, 2u8), (9, 0x81)] {
            let mut bad = bytes.clone();
            bad[at] = value;
            assert!(FileMetadata::decode(&mut Reader::new(&bad)).is_err());
        }
        let mut dir = bytes.clone();
        dir[8] = EntryKind::Directory as u8;
        assert!(FileMetadata::decode(&mut Reader::new(&dir)).is_err());
    }

    #[test]
    fn the_older_encoding_decodes_with_its_change_time_as_birth() {
        let m = FileMetadata {
            kind: EntryKind::File,
            ..sample()
        };
        let mut w = Writer::new();
        m.encode(&mut w);
        let bytes = w.into_vec();
        let old = &bytes[..FILE_METADATA_LEN_V1];
        let mut r = Reader::new(old);
        let got = FileMetadata::decode_v1(&mut r).unwrap();
        assert_eq!(got, FileMetadata { birth_ns: 10, ..m });
        assert_eq!(r.remaining(), 0);
        assert!(FileMetadata::decode_v1(&mut Reader::new(&old[..63])).is_err());
    }
}
