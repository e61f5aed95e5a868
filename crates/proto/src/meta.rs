//! File metadata as it is stored and sent: plain values with a fixed 48-byte encoding.

use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::wire::{DecodeError, Reader, Writer};

/// Whether a record is a file or a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntryKind {
    /// A regular file.
    File = 1,
    /// A directory.
    Directory = 2,
}

impl EntryKind {
    /// Decodes a wire value.
    pub fn from_wire(value: u8) -> Option<EntryKind> {
        match value {
            1 => Some(EntryKind::File),
            2 => Some(EntryKind::Directory),
            _ => None,
        }
    }
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
}

impl SizeUpdate {
    /// Decodes a wire value.
    pub fn from_wire(value: u8) -> Option<SizeUpdate> {
        match value {
            1 => Some(SizeUpdate::AtLeast),
            2 => Some(SizeUpdate::Exact),
            _ => None,
        }
    }
}

/// The metadata of one file or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMetadata {
    /// Cluster-unique inode number; chunks are keyed by it, so a rename moves no data.
    pub file_id: u64,
    /// File or directory.
    pub kind: EntryKind,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Chunk size the file was created with; later configuration changes leave it alone.
    pub chunk_size: u64,
    /// Last modification, nanoseconds since the Unix epoch.
    pub mtime_ns: u64,
    /// Last status change, nanoseconds since the Unix epoch.
    pub ctime_ns: u64,
}

/// Encoded size of [`FileMetadata`].
pub const FILE_METADATA_LEN: usize = 48;

/// [`FileMetadata`] as it lies on the wire and in the journal.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct FileMetadataWire {
    /// Inode number.
    pub file_id: U64,
    /// [`EntryKind`] as a byte.
    pub kind: u8,
    /// Zero.
    pub reserved: [u8; 3],
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
}

const _: () = assert!(std::mem::size_of::<FileMetadataWire>() == FILE_METADATA_LEN);

impl FileMetadata {
    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == EntryKind::Directory
    }

    /// Appends the 48-byte encoding ([`FileMetadataWire`]).
    pub fn encode(&self, w: &mut Writer) {
        w.fixed(&self.to_wire());
    }

    /// Decodes the 48-byte encoding.
    pub fn decode(r: &mut Reader<'_>) -> Result<FileMetadata, DecodeError> {
        FileMetadata::from_wire(&r.fixed()?)
    }

    /// The wire form.
    pub fn to_wire(&self) -> FileMetadataWire {
        FileMetadataWire {
            file_id: self.file_id.into(),
            kind: self.kind as u8,
            reserved: [0; 3],
            mode: self.mode.into(),
            size: self.size.into(),
            chunk_size: self.chunk_size.into(),
            mtime_ns: self.mtime_ns.into(),
            ctime_ns: self.ctime_ns.into(),
        }
    }

    /// Checks and converts the wire form.
    pub fn from_wire(w: &FileMetadataWire) -> Result<FileMetadata, DecodeError> {
        let kind = EntryKind::from_wire(w.kind).ok_or(DecodeError::BadField {
            field: "kind",
            reason: "not a file or directory",
        })?;
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_48_bytes_and_round_trips() {
        let m = FileMetadata {
            file_id: 1 << 40 | 5,
            kind: EntryKind::Directory,
            size: 123,
            mode: 0o755,
            chunk_size: 4096,
            mtime_ns: 9,
            ctime_ns: 10,
        };
        let mut w = Writer::new();
        m.encode(&mut w);
        let bytes = w.into_vec();
        assert_eq!(bytes.len(), FILE_METADATA_LEN);
        let mut r = Reader::new(&bytes);
        assert_eq!(FileMetadata::decode(&mut r).unwrap(), m);
        let mut bad = bytes.clone();
        bad[8] = 3;
        assert!(FileMetadata::decode(&mut Reader::new(&bad)).is_err());
    }
}
