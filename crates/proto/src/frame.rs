//! The fixed frame header that opens every request and reply, and the operation ids.
//!
//! A message is one UCX Active Message. The AM header is a [`FrameHeader`], followed by the
//! `body_len` bytes of operation body when they fit in the transport's AM header limit; the
//! AM data is the payload, preceded by the body when it did not fit. So a payload always
//! starts the AM data when the body rides in the header, and a rendezvous receive lands it
//! straight in a chunk-store buffer. Payloads above the rendezvous threshold go by UCX
//! rendezvous, which is RDMA on RDMA transports.

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::wire::DecodeError;

/// "BFS1" in little-endian: the first four bytes of every frame.
pub const MAGIC: u32 = u32::from_le_bytes(*b"BFS1");
/// The protocol version this build speaks; peers must match exactly.
pub const VERSION: u16 = 27;
/// Largest operation body (paths, names, descriptors); readdir pages are sized below it.
pub const BODY_LEN_MAX: u32 = 64 * 1024;
/// Largest payload a frame may declare: one whole chunk of the largest chunk size.
pub const PAYLOAD_LEN_MAX: u64 = 64 * 1024 * 1024;

/// Set in `flags` on replies.
pub const FLAG_REPLY: u16 = 1;
/// Active Message id of requests.
pub const REQUEST_AM_ID: u16 = 10;
/// Active Message id of replies.
pub const REPLY_AM_ID: u16 = 11;

/// Every operation, with its wire id.
///
/// **Invariant:** this is the only list of operation ids; two operations cannot share a
/// number without a compile error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum OpCode {
    /// Connection handshake: magic, version, job secret.
    Hello = 1,
    /// Round trip with an optional payload that the server discards.
    Ping = 2,
    /// Read part of a chunk.
    ReadChunk = 3,
    /// Write part of a chunk.
    WriteChunk = 4,
    /// Look up the metadata of a path.
    MetadataLookup = 5,
    /// Create a file record.
    MetadataCreateFile = 6,
    /// Create a directory record.
    MetadataCreateDir = 7,
    /// Remove a record.
    MetadataDelete = 8,
    /// List this server's share of a directory.
    Readdir = 9,
    /// Cut a file's chunks on one server.
    TruncateFile = 10,
    /// Grow or set a file's size.
    UpdateSize = 11,
    /// Flush the server's store and metadata to stable storage.
    Fsync = 12,
    /// Store a record as given (rename destination, replica).
    MetadataInsert = 13,
    /// Server counters.
    Stats = 14,
    /// Remove every chunk of a file held by this server.
    RemoveChunks = 15,
    /// Which of some inode numbers this server holds a record of (a peer's orphan sweep).
    FilesExist = 16,
    /// Proof of the job secret for the challenge of the connection's `Hello`.
    Auth = 17,
    /// Create a symbolic link's record (its target is then written as its data).
    MetadataCreateSymlink = 18,
    /// Change a record's mode, owner or times.
    SetAttr = 19,
    /// Measure the server's own chunk store: write, read back and remove scratch data.
    StoreProbe = 20,
    /// Look up a path for an open: its record and, for an inline file, its bytes.
    MetadataOpen = 21,
    /// Create a file with its bytes in the record, or write them into an existing inline
    /// file (a deferred open's create, writes and close in one request).
    MetadataCreateInline = 22,
    /// Write bytes into an inline file's record.
    MetadataWriteInline = 23,
    /// Freeze an inline file's bytes and hand them out, to be moved to chunk 0.
    MetadataSealInline = 24,
    /// The sealed bytes are in chunk 0: drop them from the record (or abandon the move).
    MetadataDropInline = 25,
    /// Which records a server holds at some paths (a peer's replica repair pass).
    CompareRecords = 26,
    /// Of some inode numbers, which this server names; it refuses any record of the others
    /// until the seal is lifted ([`OpCode::UnsealFiles`]).
    SealFiles = 27,
    /// Lifts [`OpCode::SealFiles`]' refusal: another server still named one of the files.
    UnsealFiles = 28,
    /// [`OpCode::SealFiles`] for good, journaled: the files' chunks are about to go.
    SealFilesForGood = 29,
    /// Remove the records below a directory that were last changed before a time: what an
    /// interrupted directory rename left under a name that is made anew.
    PurgeUnder = 30,
    /// Claim the range an append writes: grow a file's size by a length, from at least a
    /// floor.
    ClaimAppend = 31,
    /// Where this server's record of a file is (a handle of a file renamed since it was
    /// opened finds its path again).
    LocateFile = 32,
    /// Look up the parent of a path being created. A parent that is missing, or not a
    /// directory, has its name marked, so a directory made there later first removes what
    /// a create left below it (its client died before it could remove the record it made
    /// under the missing parent).
    MetadataLookupParent = 33,
    /// A directory's entries changed (a create, a removal, a rename into or out of it):
    /// its modification and change times move to now.
    TouchDir = 34,
    /// Put a record's size and cut count back, unless it changed since: the undo of a size
    /// change that failed on another replica.
    RestoreSize = 35,
}

impl OpCode {
    /// Every operation.
    pub const ALL: [OpCode; 35] = [
        OpCode::Hello,
        OpCode::Ping,
        OpCode::ReadChunk,
        OpCode::WriteChunk,
        OpCode::MetadataLookup,
        OpCode::MetadataCreateFile,
        OpCode::MetadataCreateDir,
        OpCode::MetadataDelete,
        OpCode::Readdir,
        OpCode::TruncateFile,
        OpCode::UpdateSize,
        OpCode::Fsync,
        OpCode::MetadataInsert,
        OpCode::Stats,
        OpCode::RemoveChunks,
        OpCode::FilesExist,
        OpCode::Auth,
        OpCode::MetadataCreateSymlink,
        OpCode::SetAttr,
        OpCode::StoreProbe,
        OpCode::MetadataOpen,
        OpCode::MetadataCreateInline,
        OpCode::MetadataWriteInline,
        OpCode::MetadataSealInline,
        OpCode::MetadataDropInline,
        OpCode::CompareRecords,
        OpCode::SealFiles,
        OpCode::UnsealFiles,
        OpCode::SealFilesForGood,
        OpCode::PurgeUnder,
        OpCode::ClaimAppend,
        OpCode::LocateFile,
        OpCode::MetadataLookupParent,
        OpCode::TouchDir,
        OpCode::RestoreSize,
    ];

    /// Decodes a wire id.
    pub fn from_wire(id: u16) -> Option<OpCode> {
        OpCode::ALL.iter().copied().find(|op| *op as u16 == id)
    }

    /// The operation's name in snake case, as metrics and `benchfs stats` label it.
    pub fn name(self) -> &'static str {
        match self {
            OpCode::Hello => "hello",
            OpCode::Ping => "ping",
            OpCode::ReadChunk => "read_chunk",
            OpCode::WriteChunk => "write_chunk",
            OpCode::MetadataLookup => "metadata_lookup",
            OpCode::MetadataLookupParent => "metadata_lookup_parent",
            OpCode::MetadataCreateFile => "metadata_create_file",
            OpCode::MetadataCreateDir => "metadata_create_dir",
            OpCode::MetadataDelete => "metadata_delete",
            OpCode::Readdir => "readdir",
            OpCode::TruncateFile => "truncate_file",
            OpCode::UpdateSize => "update_size",
            OpCode::Fsync => "fsync",
            OpCode::MetadataInsert => "metadata_insert",
            OpCode::Stats => "stats",
            OpCode::RemoveChunks => "remove_chunks",
            OpCode::FilesExist => "files_exist",
            OpCode::Auth => "auth",
            OpCode::MetadataCreateSymlink => "metadata_create_symlink",
            OpCode::SetAttr => "set_attr",
            OpCode::StoreProbe => "store_probe",
            OpCode::MetadataOpen => "metadata_open",
            OpCode::MetadataCreateInline => "metadata_create_inline",
            OpCode::MetadataWriteInline => "metadata_write_inline",
            OpCode::MetadataSealInline => "metadata_seal_inline",
            OpCode::MetadataDropInline => "metadata_drop_inline",
            OpCode::CompareRecords => "compare_records",
            OpCode::SealFiles => "seal_files",
            OpCode::UnsealFiles => "unseal_files",
            OpCode::SealFilesForGood => "seal_files_for_good",
            OpCode::PurgeUnder => "purge_under",
            OpCode::ClaimAppend => "claim_append",
            OpCode::LocateFile => "locate_file",
            OpCode::TouchDir => "touch_dir",
            OpCode::RestoreSize => "restore_size",
        }
    }

    /// Whether a request of this operation may carry a payload (at most a chunk, which
    /// the server receives into a store buffer).
    pub fn takes_payload(self) -> bool {
        matches!(self, OpCode::WriteChunk | OpCode::Ping)
    }
}

/// The 40-byte header of every frame, little-endian, alignment 1.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, PartialEq, Eq)]
#[repr(C)]
pub struct FrameHeader {
    /// [`MAGIC`].
    pub magic: U32,
    /// [`VERSION`].
    pub version: U16,
    /// An [`OpCode`].
    pub op: U16,
    /// Chosen by the client; the reply carries it back.
    pub request_id: U64,
    /// A [`Status`](crate::Status) in replies; 0 in requests.
    pub status: U16,
    /// [`FLAG_REPLY`] and future flags.
    pub flags: U16,
    /// Bytes of operation body at the start of the AM data.
    pub body_len: U32,
    /// Bytes of inline payload after the body.
    pub payload_len: U64,
    /// On the server's [deadline clock](crate::clock): in a request, the time after which
    /// the server must not start it (0: none, as before the handshake measured the
    /// clocks); in a reply, the server's time as it sent the reply.
    pub clock_us: U64,
}

impl FrameHeader {
    /// The same header with `clock_us` set.
    pub fn with_clock(mut self, clock_us: u64) -> FrameHeader {
        self.clock_us = clock_us.into();
        self
    }

    /// The header's wire bytes.
    pub fn to_bytes(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut out = [0u8; FRAME_HEADER_LEN];
        out.copy_from_slice(self.as_bytes());
        out
    }

    /// The header's wire bytes in a buffer with room for `more` bytes after them (a body
    /// that rides in the Active Message header), so that appending it does not grow it.
    pub fn to_vec_with_room(&self, more: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(FRAME_HEADER_LEN + more);
        out.extend_from_slice(self.as_bytes());
        out
    }
}

/// Size of [`FrameHeader`] on the wire.
pub const FRAME_HEADER_LEN: usize = 40;
const _: () = assert!(std::mem::size_of::<FrameHeader>() == FRAME_HEADER_LEN);
const _: () = assert!(std::mem::align_of::<FrameHeader>() == 1);

/// A frame header checked against the protocol and the bytes that came with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// The operation.
    pub op: OpCode,
    /// The request id.
    pub request_id: u64,
    /// The raw status (replies).
    pub status: u16,
    /// Whether this frame is a reply.
    pub is_reply: bool,
    /// Body length in bytes.
    pub body_len: usize,
    /// Inline payload length in bytes.
    pub payload_len: usize,
    /// Whether the body followed the fixed header in the AM header, or is empty (else it
    /// opens the data). When set, the data is all payload.
    pub body_in_header: bool,
    /// A request's deadline or a reply's server time (see [`FrameHeader::clock_us`]).
    pub clock_us: u64,
}

impl Frame {
    /// Encodes a header for a frame with these lengths.
    pub fn header(
        op: OpCode,
        request_id: u64,
        status: u16,
        is_reply: bool,
        body_len: usize,
        payload_len: usize,
    ) -> FrameHeader {
        FrameHeader {
            magic: MAGIC.into(),
            version: VERSION.into(),
            op: (op as u16).into(),
            request_id: request_id.into(),
            status: status.into(),
            flags: if is_reply { FLAG_REPLY } else { 0 }.into(),
            body_len: u32::try_from(body_len).unwrap_or(u32::MAX).into(),
            payload_len: (payload_len as u64).into(),
            clock_us: 0.into(),
        }
    }

    /// The request id of a reply whose header this build cannot decode (another protocol
    /// version, a bad field), so the call it answers fails at once with the reason instead
    /// of waiting out its timeout. `None` unless the fixed header is whole, carries
    /// [`MAGIC`] and has [`FLAG_REPLY`] set: magic, version, op, request id, status and
    /// flags keep their places in every version (**invariant**), so a server of another
    /// version is understood this far.
    pub fn reply_id(header: &[u8]) -> Option<u64> {
        let fixed = header.get(..FRAME_HEADER_LEN)?;
        let h = FrameHeader::read_from_bytes(fixed).ok()?;
        (h.magic.get() == MAGIC && h.flags.get() & FLAG_REPLY != 0).then(|| h.request_id.get())
    }

    /// Decodes an AM header (a frame header, optionally followed by the whole body) and
    /// checks it against `data_len`, the bytes of AM data that arrived (or will arrive, for
    /// a rendezvous message).
    pub fn decode(header: &[u8], data_len: usize) -> Result<Frame, DecodeError> {
        let (fixed, body_in_header) = header.split_at(header.len().min(FRAME_HEADER_LEN));
        let h = FrameHeader::read_from_bytes(fixed).map_err(|_| DecodeError::Truncated {
            needed: FRAME_HEADER_LEN,
            available: header.len(),
        })?;
        if h.magic.get() != MAGIC {
            return Err(DecodeError::BadMagic(h.magic.get()));
        }
        if h.version.get() != VERSION {
            return Err(DecodeError::BadVersion {
                got: h.version.get(),
                ours: VERSION,
            });
        }
        let op = OpCode::from_wire(h.op.get()).ok_or(DecodeError::UnknownOp(h.op.get()))?;
        if h.flags.get() & !FLAG_REPLY != 0 {
            return Err(DecodeError::BadField {
                field: "flags",
                reason: "unknown flag bits",
            });
        }
        let body_len = h.body_len.get();
        if body_len > BODY_LEN_MAX {
            return Err(DecodeError::BadField {
                field: "body_len",
                reason: "above BODY_LEN_MAX",
            });
        }
        let payload_len = h.payload_len.get();
        if payload_len > PAYLOAD_LEN_MAX {
            return Err(DecodeError::BadField {
                field: "payload_len",
                reason: "above PAYLOAD_LEN_MAX",
            });
        }
        // An empty body is "in the header" too: then the data is all payload either way,
        // and the receiver can take it as one buffer.
        let body_in_header = !body_in_header.is_empty() || body_len == 0;
        if body_in_header && header.len() - FRAME_HEADER_LEN != body_len as usize {
            return Err(DecodeError::LengthMismatch {
                field: "body_len",
                declared: u64::from(body_len),
                actual: (header.len() - FRAME_HEADER_LEN) as u64,
            });
        }
        let declared = if body_in_header {
            payload_len
        } else {
            u64::from(body_len) + payload_len
        };
        if declared != data_len as u64 {
            return Err(DecodeError::LengthMismatch {
                field: "body_len + payload_len",
                declared,
                actual: data_len as u64,
            });
        }
        Ok(Frame {
            op,
            request_id: h.request_id.get(),
            status: h.status.get(),
            is_reply: h.flags.get() & FLAG_REPLY != 0,
            body_len: body_len as usize,
            payload_len: payload_len as usize,
            body_in_header,
            clock_us: h.clock_us.get(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    fn encode(op: OpCode, body: usize, payload: usize) -> Vec<u8> {
        Frame::header(op, 42, 0, false, body, payload)
            .as_bytes()
            .to_vec()
    }

    #[test]
    fn round_trip() {
        for op in OpCode::ALL {
            let f = Frame::decode(&encode(op, 10, 20), 30).unwrap();
            assert_eq!(
                (f.op, f.request_id, f.body_len, f.payload_len, f.is_reply),
                (op, 42, 10, 20, false)
            );
        }
        let reply = Frame::header(OpCode::Ping, 7, 3, true, 0, 0);
        let f = Frame::decode(reply.as_bytes(), 0).unwrap();
        assert!(f.is_reply);
        assert_eq!(f.status, 3);
    }

    #[test]
    fn a_deadline_travels_in_the_header() {
        let late = Frame::header(OpCode::UpdateSize, 5, 0, false, 0, 0).with_clock(1_000);
        let f = Frame::decode(late.as_bytes(), 0).unwrap();
        assert_eq!(f.clock_us, 1_000);
        let none = Frame::decode(encode(OpCode::UpdateSize, 0, 0).as_slice(), 0).unwrap();
        assert_eq!(none.clock_us, 0);
    }

    #[test]
    fn empty_body_leaves_all_data_to_the_payload() {
        let ping = Frame::header(OpCode::Ping, 9, 0, false, 0, 4096);
        let f = Frame::decode(ping.as_bytes(), 4096).unwrap();
        assert!(f.body_in_header, "an empty body counts as in the header");
        assert_eq!((f.body_len, f.payload_len), (0, 4096));
        let with_body = Frame::header(OpCode::Ping, 9, 0, false, 8, 4096);
        let f = Frame::decode(with_body.as_bytes(), 8 + 4096).unwrap();
        assert!(!f.body_in_header, "a body not in the header opens the data");
    }

    #[test]
    fn a_reply_of_another_version_still_names_its_call() {
        let mut reply = Frame::header(OpCode::Ping, 7, 3, true, 0, 0)
            .as_bytes()
            .to_vec();
        reply[4..6].copy_from_slice(&(VERSION + 1).to_le_bytes());
        assert!(matches!(
            Frame::decode(&reply, 0),
            Err(DecodeError::BadVersion { .. })
        ));
        assert_eq!(Frame::reply_id(&reply), Some(7));
        // Not a reply, not ours, or not whole: nothing to route.
        assert_eq!(Frame::reply_id(&encode(OpCode::Ping, 0, 0)), None);
        let mut foreign = reply.clone();
        foreign[0] ^= 1;
        assert_eq!(Frame::reply_id(&foreign), None);
        assert_eq!(Frame::reply_id(&reply[..31]), None);
    }

    #[test]
    fn rejects_bad_frames() {
        let good = encode(OpCode::Ping, 4, 0);
        assert!(matches!(
            Frame::decode(&good[..31], 4),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            Frame::decode(&[good.clone(), vec![0]].concat(), 0),
            Err(DecodeError::LengthMismatch { .. })
        ));
        let with_body = [good.clone(), vec![1, 2, 3, 4]].concat();
        let f = Frame::decode(&with_body, 0).unwrap();
        assert!(f.body_in_header);
        assert_eq!(f.body_len, 4);
        assert!(matches!(
            Frame::decode(&with_body, 4),
            Err(DecodeError::LengthMismatch { .. })
        ));
        assert!(matches!(
            Frame::decode(&good, 5),
            Err(DecodeError::LengthMismatch { .. })
        ));
        let mut bad = good.clone();
        bad[0] ^= 1;
        assert!(matches!(
            Frame::decode(&bad, 4),
            Err(DecodeError::BadMagic(_))
        ));
        let mut bad = good.clone();
        bad[4] = VERSION as u8 + 1;
        assert_eq!(
            Frame::decode(&bad, 4),
            Err(DecodeError::BadVersion {
                got: VERSION + 1,
                ours: VERSION
            })
        );
        let mut bad = good.clone();
        bad[6] = 0xff;
        assert!(matches!(
            Frame::decode(&bad, 4),
            Err(DecodeError::UnknownOp(_))
        ));
        let huge = Frame::header(OpCode::Ping, 1, 0, false, BODY_LEN_MAX as usize + 1, 0);
        assert!(matches!(
            Frame::decode(huge.as_bytes(), BODY_LEN_MAX as usize + 1),
            Err(DecodeError::BadField { .. })
        ));
        let huge = Frame::header(OpCode::Ping, 1, 0, false, 0, PAYLOAD_LEN_MAX as usize + 1);
        assert!(matches!(
            Frame::decode(huge.as_bytes(), PAYLOAD_LEN_MAX as usize + 1),
            Err(DecodeError::BadField { .. })
        ));
    }

    #[test]
    fn op_ids_are_distinct() {
        for (i, a) in OpCode::ALL.iter().enumerate() {
            assert_eq!(OpCode::from_wire(*a as u16), Some(*a));
            for b in &OpCode::ALL[i + 1..] {
                assert_ne!(*a as u16, *b as u16);
            }
        }
        assert_eq!(OpCode::from_wire(0), None);
    }

    #[test]
    fn op_names_are_distinct_snake_case() {
        for (i, a) in OpCode::ALL.iter().enumerate() {
            let name = a.name();
            assert!(
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}"
            );
            for b in &OpCode::ALL[i + 1..] {
                assert_ne!(name, b.name());
            }
        }
    }

    #[test]
    fn all_is_in_wire_order() {
        // Stats replies list operations by increasing id, which is the order of ALL.
        for pair in OpCode::ALL.windows(2) {
            assert!((pair[0] as u16) < (pair[1] as u16));
        }
    }
}
