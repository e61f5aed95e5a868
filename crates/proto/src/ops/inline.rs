//! Bodies of the operations on inline files: records that hold their file's bytes
//! ([`FileMetadata::inline`]). A record's bytes travel with a u16 length prefix after the
//! path, at most [`INLINE_BYTES_MAX`], and every decoder checks them against the record:
//! an inline record comes with exactly `size` bytes, any other with none.

use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{bool_byte, path_field, PathRequest, Rpc};
use crate::frame::OpCode;
use crate::limits::INLINE_BYTES_MAX;
use crate::meta::{FileMetadata, FileMetadataWire};
use crate::ops::{Message, MetadataReply};
use crate::wire::{DecodeError, Reader, Writer};

wire_header!(/// `CreateInlineRequest`, before the path and the bytes.
    CreateInlineHeader = 20, { mode: U32, chunk_size: U64, uid: U32, gid: U32 });
wire_header!(/// `CreateInlineReply`, before the bytes.
    CreateInlineReplyHeader = 73, { meta: FileMetadataWire, created: u8 });
wire_header!(/// `WriteInlineRequest`, before the path and the bytes.
    WriteInlineHeader = 16, { file_id: U64, offset: U64 });
wire_header!(/// `SealInlineRequest`, before the path.
    SealInlineHeader = 16, { file_id: U64, token: U64 });
wire_header!(/// `DropInlineRequest`, before the path.
    DropInlineHeader = 17, { file_id: U64, token: U64, moved: u8 });

rpc!(/// Look up a path for an open: the record and, for an inline file, its bytes.
    MetadataOpen, MetadataOpen, PathRequest, RecordReply);
rpc!(/// Create a file holding `data` in its record, or write `data` at offset 0 of the
    /// inline file the path names.
    MetadataCreateInline, MetadataCreateInline, CreateInlineRequest, CreateInlineReply);
rpc!(/// Write bytes into an inline file's record.
    MetadataWriteInline, MetadataWriteInline, WriteInlineRequest, MetadataReply);
rpc!(/// Freeze an inline file's bytes for a move to chunk 0 and hand them out.
    MetadataSealInline, MetadataSealInline, SealInlineRequest, RecordReply);
rpc!(/// End a move to chunk 0: drop the sealed bytes from the record, or keep them.
    MetadataDropInline, MetadataDropInline, DropInlineRequest, MetadataReply);

/// Reads the bytes a record comes with and checks them against it: an inline record's
/// `size` bytes, or none.
pub(super) fn record_data(r: &mut Reader<'_>, meta: &FileMetadata) -> Result<Vec<u8>, DecodeError> {
    let data = r.str16("data", INLINE_BYTES_MAX as usize)?;
    let expected = if meta.inline { meta.size } else { 0 };
    if data.len() as u64 != expected {
        return Err(DecodeError::BadField {
            field: "data",
            reason: "not the record's inline bytes",
        });
    }
    Ok(data.to_vec())
}

/// Reads bytes to write, at most [`INLINE_BYTES_MAX`].
fn bytes_field(r: &mut Reader<'_>) -> Result<Vec<u8>, DecodeError> {
    Ok(r.str16("data", INLINE_BYTES_MAX as usize)?.to_vec())
}

/// A record and, when it is inline, the bytes it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordReply {
    /// The record.
    pub meta: FileMetadata,
    /// Its bytes when `meta.inline` (exactly `meta.size` of them), else empty.
    pub data: Vec<u8>,
}

impl Message for RecordReply {
    fn encode(&self, w: &mut Writer) {
        self.meta.encode(w);
        w.str16(&self.data);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let meta = FileMetadata::decode(r)?;
        let data = record_data(r, &meta)?;
        Ok(RecordReply { meta, data })
    }
}

/// Create the file `path` holding `data`, as a deferred open with O_CREAT makes it at
/// close: if the path names an inline file already, `data` is written at its offset 0
/// instead (its mode and owner stay; with no `data` nothing changes, times included, as
/// an open with O_CREAT of a file that exists changes nothing); any other record is
/// `Exists`, and bytes past the server's inline limit are `NeedsChunks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateInlineRequest {
    /// The path.
    pub path: String,
    /// Permission bits of a new file.
    pub mode: u32,
    /// Chunk size of a new file, as [`super::CreateRequest::chunk_size`].
    pub chunk_size: u64,
    /// Owner of a new file.
    pub uid: u32,
    /// Group of a new file.
    pub gid: u32,
    /// The bytes from offset 0, at most [`INLINE_BYTES_MAX`].
    pub data: Vec<u8>,
}

impl Message for CreateInlineRequest {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&CreateInlineHeader {
            mode: self.mode.into(),
            chunk_size: self.chunk_size.into(),
            uid: self.uid.into(),
            gid: self.gid.into(),
        })
        .str16(self.path.as_bytes())
        .str16(&self.data);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let h: CreateInlineHeader = r.fixed()?;
        Ok(CreateInlineRequest {
            path: path_field(r, "path")?,
            data: bytes_field(r)?,
            mode: h.mode.get(),
            chunk_size: h.chunk_size.get(),
            uid: h.uid.get(),
            gid: h.gid.get(),
        })
    }
}

/// The inline file a [`CreateInlineRequest`] made or wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateInlineReply {
    /// The record (inline).
    pub meta: FileMetadata,
    /// Whether the request made the file; if not, it wrote into one that was there.
    pub created: bool,
    /// The file's bytes after a write into an existing file (which the caller does not
    /// know past its own); empty when `created` (they are the request's).
    pub data: Vec<u8>,
}

impl Message for CreateInlineReply {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&CreateInlineReplyHeader {
            meta: self.meta.to_wire(),
            created: u8::from(self.created),
        })
        .str16(&self.data);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let h: CreateInlineReplyHeader = r.fixed()?;
        let meta = FileMetadata::from_wire(&h.meta)?;
        let created = bool_byte(h.created, "created")?;
        if !meta.inline {
            return Err(DecodeError::BadField {
                field: "meta",
                reason: "not an inline record",
            });
        }
        let data = if created {
            let data = bytes_field(r)?;
            if !data.is_empty() {
                return Err(DecodeError::BadField {
                    field: "data",
                    reason: "bytes with a created file",
                });
            }
            data
        } else {
            record_data(r, &meta)?
        };
        Ok(CreateInlineReply {
            meta,
            created,
            data,
        })
    }
}

/// Write `data` at `offset` of the inline file `file_id`, named `path`: `Stale` if the path
/// names another file, `NeedsChunks` if the record holds no bytes or the end would pass
/// the server's inline limit. A gap before `offset` reads as zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteInlineRequest {
    /// The path.
    pub path: String,
    /// The file meant.
    pub file_id: u64,
    /// Where the bytes go; `offset + data.len()` is at most [`INLINE_BYTES_MAX`].
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

impl Message for WriteInlineRequest {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&WriteInlineHeader {
            file_id: self.file_id.into(),
            offset: self.offset.into(),
        })
        .str16(self.path.as_bytes())
        .str16(&self.data);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let h: WriteInlineHeader = r.fixed()?;
        let path = path_field(r, "path")?;
        let data = bytes_field(r)?;
        let offset = h.offset.get();
        if offset.saturating_add(data.len() as u64) > INLINE_BYTES_MAX {
            return Err(DecodeError::BadField {
                field: "offset",
                reason: "the write ends past INLINE_BYTES_MAX",
            });
        }
        Ok(WriteInlineRequest {
            path,
            file_id: h.file_id.get(),
            offset,
            data,
        })
    }
}

/// Begin moving inline file `file_id`'s bytes to chunk 0: the server freezes them under
/// `token` for a lease (writes to them wait, `Busy`) and answers them. A record that holds
/// no bytes answers with none (nothing to move); one sealed by another live token is
/// `Busy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealInlineRequest {
    /// The path.
    pub path: String,
    /// The file meant.
    pub file_id: u64,
    /// The mover's name for this move, chosen at random.
    pub token: u64,
}

impl Message for SealInlineRequest {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&SealInlineHeader {
            file_id: self.file_id.into(),
            token: self.token.into(),
        })
        .str16(self.path.as_bytes());
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let h: SealInlineHeader = r.fixed()?;
        Ok(SealInlineRequest {
            path: path_field(r, "path")?,
            file_id: h.file_id.get(),
            token: h.token.get(),
        })
    }
}

/// End a move begun with [`SealInlineRequest`] under `token`: with `moved`, the bytes are in
/// chunk 0 (on every replica), so the record drops them and stops being inline; without,
/// the seal is lifted and the record keeps them. A seal that is gone (lapsed and the bytes
/// written since, or taken by another mover) is `Busy`; a record that holds no bytes
/// any more answers as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropInlineRequest {
    /// The path.
    pub path: String,
    /// The file meant.
    pub file_id: u64,
    /// The token of the seal.
    pub token: u64,
    /// Whether the bytes reached chunk 0.
    pub moved: bool,
}

impl Message for DropInlineRequest {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&DropInlineHeader {
            file_id: self.file_id.into(),
            token: self.token.into(),
            moved: u8::from(self.moved),
        })
        .str16(self.path.as_bytes());
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let h: DropInlineHeader = r.fixed()?;
        Ok(DropInlineRequest {
            path: path_field(r, "path")?,
            file_id: h.file_id.get(),
            token: h.token.get(),
            moved: bool_byte(h.moved, "moved")?,
        })
    }
}
