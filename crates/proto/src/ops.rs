//! Operation bodies and the [`Rpc`] trait that ties each operation id to its request and
//! reply types. Adding an operation is one [`OpCode`] variant, one `Rpc` impl here and one
//! match arm in the server's dispatcher.
//!
//! A body is a fixed-size header, a `#[repr(C)]` zerocopy struct of little-endian fields
//! with its size asserted at compile time, followed by the variable part (strings,
//! directory entries), if any. Bodies with no fixed field (the
//! handshake request, a lone path) are all variable part; `Empty` is no bytes at all.

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::frame::OpCode;
use crate::meta::{EntryKind, FileMetadata, FileMetadataWire, SizeUpdate};
use crate::wire::{DecodeError, Reader, Writer};

/// Longest path a body may carry (Linux PATH_MAX less the NUL).
pub const PATH_LEN_MAX: usize = 4095;
/// Longest name a body may carry (Linux NAME_MAX).
pub const NAME_LEN_MAX: usize = 255;
/// Longest node id or job secret in a handshake.
pub const TOKEN_LEN_MAX: usize = 256;
/// Most entries in one readdir reply; sized so a full page fits in BODY_LEN_MAX.
pub const READDIR_PAGE_MAX: u32 = 128;
/// Most inode numbers one `FilesExist` request asks about.
pub const FILE_IDS_MAX: usize = 1024;

/// Bytes [`Message::to_bytes`] reserves up front: a record and a path of some length.
const ENCODE_CAPACITY: usize = 256;
// A reply names each asked number at most twice (named and deleted).
const _: () = assert!(8 + 2 * FILE_IDS_MAX * 8 <= crate::frame::BODY_LEN_MAX as usize);

const _: () = assert!(
    (READDIR_PAGE_MAX as usize) * (2 + NAME_LEN_MAX + crate::meta::FILE_METADATA_LEN) + 8
        <= crate::frame::BODY_LEN_MAX as usize
);

/// A request or reply body with a fixed-width little-endian encoding.
pub trait Message: Sized {
    /// Appends the encoding.
    fn encode(&self, w: &mut Writer);
    /// Decodes from the reader; the caller checks that nothing is left over.
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError>;

    /// The encoding as a new buffer.
    fn to_bytes(&self) -> Vec<u8> {
        // Room for most messages at once: growing the buffer field by field took a
        // twentieth of a client's time per create.
        let mut w = Writer::with_capacity(ENCODE_CAPACITY);
        self.encode(&mut w);
        w.into_vec()
    }

    /// Decodes a whole buffer; trailing bytes are an error.
    fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let m = Self::decode(&mut r)?;
        r.finish()?;
        Ok(m)
    }
}

/// One operation: its id and the types of its request and reply bodies.
pub trait Rpc {
    /// The wire id.
    const OP: OpCode;
    /// The request body.
    type Request: Message;
    /// The reply body (sent when the status is `Ok`; error replies have an empty body).
    type Reply: Message;
}

macro_rules! rpc {
    ($(#[$doc:meta])* $name:ident, $op:ident, $req:ty, $rep:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name;
        impl Rpc for $name {
            const OP: OpCode = OpCode::$op;
            type Request = $req;
            type Reply = $rep;
        }
    };
}

/// Declares the fixed-size header of a body: `#[repr(C)]`, alignment 1, little-endian
/// fields, and its wire size checked at compile time.
macro_rules! wire_header {
    ($(#[$doc:meta])* $name:ident = $size:expr, { $($field:ident: $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
        #[repr(C)]
        struct $name {
            $($field: $ty),*
        }
        const _: () = assert!(std::mem::size_of::<$name>() == $size);
    };
}

wire_header!(/// `HelloReply`, before the node id.
HelloReplyHeader = 33, {
    chunk_size: U64,
    rdma_threshold: U64,
    born_ns: U64,
    replicas: U32,
    virtual_nodes: U32,
    born_again: u8,
});
wire_header!(/// `ChunkIo`, whole.
    ChunkIoHeader = 32, { file_id: U64, index: U64, offset: U64, len: U64 });
wire_header!(/// `ChunkWrite`, whole.
    ChunkWriteHeader = 51, {
    file_id: U64,
    index: U64,
    offset: U64,
    len: U64,
    file_birth_ns: U64,
    chunk_held: U64,
    flags: u8,
    append_cut_gen: U16,
});
wire_header!(/// `ChunkIoReply`, whole.
    ChunkIoReplyHeader = 9, { len: U64, whole: u8 });
wire_header!(/// `CreateRequest`, before the path.
    CreateHeader = 20, { mode: U32, chunk_size: U64, uid: U32, gid: U32 });
wire_header!(/// `DeleteRequest`, before the path; `expect` 0 is any kind.
    DeleteHeader = 2, { expect: u8, moved: u8 });
wire_header!(/// `PurgeRequest`, before the directory.
    PurgeHeader = 8, { changed_before_ns: U64 });
wire_header!(/// `ReaddirRequest`, before the directory and the resume name.
    ReaddirHeader = 4, { limit: U32 });
wire_header!(/// `ReaddirReply`, before `count` entries.
    ReaddirReplyHeader = 5, { done: u8, count: U32 });
wire_header!(/// `TruncateFileRequest`, whole.
    TruncateFileHeader = 43, {
    file_id: U64, index: U64, len: U64, cut_gen: U16, zero_only: u8, end_index: U64, end_len: U64,
});
wire_header!(/// `UpdateSizeRequest`, before the path.
    UpdateSizeHeader = 19, { file_id: U64, size: U64, how: u8, cut_gen: U16 });
wire_header!(/// `ClaimAppendRequest`, before the path.
    ClaimAppendHeader = 24, { file_id: U64, floor: U64, len: U64 });
wire_header!(/// `RestoreSizeRequest`, before the path.
RestoreSizeHeader = 36, {
    file_id: U64,
    now_size: U64,
    now_cut_gen: U16,
    now_ctime_ns: U64,
    size: U64,
    cut_gen: U16,
});
wire_header!(/// `InsertRequest`, before the path and the bytes.
    InsertHeader = 73, { meta: FileMetadataWire, flags: u8 });
wire_header!(/// `SetAttrRequest`, before the path.
SetAttrHeader = 48, {
    file_id: U64,
    set: U32,
    mode: U32,
    uid: U32,
    gid: U32,
    atime_ns: U64,
    mtime_ns: U64,
    ctime_ns: U64,
});
wire_header!(/// `RemoveChunksRequest`, whole.
    RemoveChunksHeader = 8, { file_id: U64 });
wire_header!(/// `CountReply`, whole.
    CountHeader = 8, { count: U64 });
wire_header!(/// `FileIdsRequest`, before `count` inode numbers.
    FileIdsHeader = 4, { count: U32 });
wire_header!(/// `FileStatesReply`, before the named, then the deleted inode numbers.
    FileStatesHeader = 8, { named: U32, deleted: U32 });
wire_header!(/// `StatsReply`, before `op_count` operation entries.
StatsHeader = 92, {
    metadata_records: U64,
    chunks: U64,
    used_bytes: U64,
    capacity_bytes: U64,
    room_bytes: U64,
    requests: U64,
    malformed: U64,
    orphan_chunks_removed: U64,
    faults_injected: U64,
    queue_depth: U64,
    queue_depth_max: U64,
    op_count: U32,
});
wire_header!(/// One `OpStats` entry of a `StatsReply`, whole.
OpStatsHeader = 82, {
    op: U16,
    requests: U64,
    errors: U64,
    bytes_in: U64,
    bytes_out: U64,
    latency_p50_ns: U64,
    latency_p90_ns: U64,
    latency_p99_ns: U64,
    latency_p999_ns: U64,
    latency_max_ns: U64,
    latency_sum_ns: U64,
});
wire_header!(/// `StoreProbeRequest`, whole.
    StoreProbeHeader = 12, { bytes: U64, block: U32 });
wire_header!(/// `StoreProbeReply`, whole.
    StoreProbeReplyHeader = 24, { bytes: U64, write_ns: U64, read_ns: U64 });

// A stats reply with an entry for every operation fits in one body.
const _: () = assert!(
    std::mem::size_of::<StatsHeader>() + OpCode::ALL.len() * std::mem::size_of::<OpStatsHeader>()
        <= crate::frame::BODY_LEN_MAX as usize
);

rpc!(/// Handshake.
    Hello, Hello, HelloRequest, HelloReply);
rpc!(/// Proof of the job secret, after a `Hello` whose reply held a challenge.
    Auth, Auth, AuthRequest, Empty);
rpc!(/// Round trip; an inline payload is discarded by the server.
    Ping, Ping, Empty, Empty);
rpc!(/// Read part of a chunk.
    ReadChunk, ReadChunk, ChunkIo, ChunkIoReply);
rpc!(/// Write part of a chunk.
    WriteChunk, WriteChunk, ChunkWrite, ChunkIoReply);
rpc!(/// Look up a path.
    MetadataLookup, MetadataLookup, PathRequest, MetadataReply);
rpc!(/// Look up the parent of a path being created, marking its name unless it is a directory.
    MetadataLookupParent, MetadataLookupParent, PathRequest, MetadataReply);
rpc!(/// Move a directory's modification and change times to now, on every replica: its
    /// entries changed.
    TouchDir, TouchDir, PathRequest, MetadataReply);
rpc!(/// Create a file record.
    MetadataCreateFile, MetadataCreateFile, CreateRequest, MetadataReply);
rpc!(/// Create a directory record; the reply says whether stale records may lie below it.
    MetadataCreateDir, MetadataCreateDir, CreateRequest, CreateDirReply);
rpc!(/// Create a symbolic link's record, empty until its target is written.
    MetadataCreateSymlink, MetadataCreateSymlink, CreateRequest, MetadataReply);
rpc!(/// Change a record's mode, owner or times, on every replica.
    SetAttr, SetAttr, SetAttrRequest, MetadataReply);
rpc!(/// Remove a record; the reply is the record removed, with its bytes if inline (so a
    /// failed delete can be undone).
    MetadataDelete, MetadataDelete, DeleteRequest, RecordReply);
rpc!(/// List this server's share of a directory.
    Readdir, Readdir, ReaddirRequest, ReaddirReply);
rpc!(/// Cut a file's chunks on one server.
    TruncateFile, TruncateFile, TruncateFileRequest, Empty);
rpc!(/// Grow or set a file's size.
    UpdateSize, UpdateSize, UpdateSizeRequest, SizeReply);
rpc!(/// Claim the range an append writes; the reply's size ends it.
    ClaimAppend, ClaimAppend, ClaimAppendRequest, SizeReply);
rpc!(/// Undo a size change that failed on another replica, unless the record changed since.
    RestoreSize, RestoreSize, RestoreSizeRequest, MetadataReply);
rpc!(/// Flush to stable storage.
    Fsync, Fsync, Empty, Empty);
rpc!(/// Store a record as given.
    MetadataInsert, MetadataInsert, InsertRequest, Empty);
rpc!(/// Server counters.
    Stats, Stats, Empty, StatsReply);
rpc!(/// Remove every chunk of a file on this server.
    RemoveChunks, RemoveChunks, RemoveChunksRequest, CountReply);
rpc!(/// Which of the given inode numbers this server names, and which it deleted.
    FilesExist, FilesExist, FileIdsRequest, FileStatesReply);
rpc!(/// Which of the given inode numbers this server names (`named`); every other one it
    /// seals (`deleted`): no record of it is stored here until the seal is lifted.
    SealFiles, SealFiles, FileIdsRequest, FileStatesReply);
rpc!(/// Lifts the tentative seals of the given inode numbers (another server names them).
    UnsealFiles, UnsealFiles, FileIdsRequest, Empty);
rpc!(/// [`SealFiles`] for good (journaled, never lifted): the files' chunks may then go.
    SealFilesForGood, SealFilesForGood, FileIdsRequest, FileStatesReply);
rpc!(/// Remove the records below a directory last changed before a time; the reply counts
    /// them.
    PurgeUnder, PurgeUnder, PurgeRequest, CountReply);
rpc!(/// The path of this server's record of a file, if it holds one.
    LocateFile, LocateFile, LocateFileRequest, LocateFileReply);
rpc!(/// Write, read back and remove scratch data through the server's own chunk store.
    StoreProbe, StoreProbe, StoreProbeRequest, StoreProbeReply);

mod repair;
pub use repair::{CompareRecords, CompareReply, CompareRequest, RecordState, COMPARE_RECORDS_MAX};

mod inline;
pub use inline::{
    CreateInlineReply, CreateInlineRequest, DropInlineRequest, MetadataCreateInline,
    MetadataDropInline, MetadataOpen, MetadataSealInline, MetadataWriteInline, RecordReply,
    SealInlineRequest, WriteInlineRequest,
};

fn path_field(r: &mut Reader<'_>, field: &'static str) -> Result<String, DecodeError> {
    r.utf8(field, PATH_LEN_MAX)
}

fn bool_field(r: &mut Reader<'_>, field: &'static str) -> Result<bool, DecodeError> {
    bool_byte(r.u8()?, field)
}

fn bool_byte(byte: u8, field: &'static str) -> Result<bool, DecodeError> {
    match byte {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::BadField {
            field,
            reason: "not 0 or 1",
        }),
    }
}

/// An empty body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Empty;

impl Message for Empty {
    fn encode(&self, _: &mut Writer) {}
    fn decode(_: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Empty)
    }
}

/// Handshake request: who is calling. The job secret is never sent; a server that has one
/// answers with a challenge, which the caller proves it knows the secret for with [`Auth`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloRequest {
    /// The caller's name, for logs.
    pub client: String,
}

impl Message for HelloRequest {
    fn encode(&self, w: &mut Writer) {
        w.str16(self.client.as_bytes());
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(HelloRequest {
            client: r.utf8("client", TOKEN_LEN_MAX)?,
        })
    }
}

/// Proof of the job secret: HMAC-SHA256 of the connection's challenge
/// ([`crate::auth::proof`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRequest {
    /// The proof, [`crate::auth::PROOF_LEN`] bytes.
    pub proof: Vec<u8>,
}

impl Message for AuthRequest {
    fn encode(&self, w: &mut Writer) {
        w.str16(&self.proof);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(AuthRequest {
            proof: r.str16("proof", crate::auth::PROOF_LEN)?.to_vec(),
        })
    }
}

/// Handshake reply: the server's identity and data-path settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloReply {
    /// The server's node id (its name on the placement ring).
    pub node_id: String,
    /// The server's chunk size.
    pub chunk_size: u64,
    /// Payloads above this go by RDMA.
    pub rdma_threshold: u64,
    /// When the server's chunk store began (ns since the Unix epoch): its data directory
    /// was made, or, in memory, the process started. A file created before it may have had
    /// chunks here that the store no longer has, so a hole it reports may be a loss.
    pub born_ns: u64,
    /// The store began empty in a later life of the server, rejoining a cluster it served
    /// in (`registry::rejoins`): it is missing what the earlier life held, however close
    /// its `born_ns` lies to the other servers'.
    pub born_again: bool,
    /// The server's `replication.replicas`: clients and servers of a cluster must place
    /// by the same count.
    pub replicas: u32,
    /// The server's `placement.virtual_nodes`, likewise.
    pub virtual_nodes: u32,
    /// Random bytes to prove the job secret for with [`Auth`]; empty when the server has
    /// no secret (then the connection is admitted by this reply).
    pub challenge: Vec<u8>,
}

impl Message for HelloReply {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&HelloReplyHeader {
            chunk_size: self.chunk_size.into(),
            rdma_threshold: self.rdma_threshold.into(),
            born_ns: self.born_ns.into(),
            replicas: self.replicas.into(),
            virtual_nodes: self.virtual_nodes.into(),
            born_again: u8::from(self.born_again),
        })
        .str16(self.node_id.as_bytes())
        .str16(&self.challenge);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let h: HelloReplyHeader = r.fixed()?;
        Ok(HelloReply {
            node_id: r.utf8("node_id", TOKEN_LEN_MAX)?,
            chunk_size: h.chunk_size.get(),
            rdma_threshold: h.rdma_threshold.get(),
            born_ns: h.born_ns.get(),
            replicas: h.replicas.get(),
            virtual_nodes: h.virtual_nodes.get(),
            born_again: bool_byte(h.born_again, "born_again")?,
            challenge: r.str16("challenge", crate::auth::CHALLENGE_LEN)?.to_vec(),
        })
    }
}

/// Read `len` bytes at `offset` in chunk `index` of file `file_id` (and where a
/// [`ChunkWrite`] goes). The data is the reply's payload: eager up to the rendezvous
/// threshold, by rendezvous above it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkIo {
    /// The file's inode number.
    pub file_id: u64,
    /// The chunk's index.
    pub index: u64,
    /// Offset inside the chunk.
    pub offset: u64,
    /// Bytes to move.
    pub len: u64,
}

impl Message for ChunkIo {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&ChunkIoHeader {
            file_id: self.file_id.into(),
            index: self.index.into(),
            offset: self.offset.into(),
            len: self.len.into(),
        });
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let h: ChunkIoHeader = r.fixed()?;
        Ok(ChunkIo {
            file_id: h.file_id.get(),
            index: h.index.get(),
            offset: h.offset.get(),
            len: h.len.get(),
        })
    }
}

/// Write `io.len` bytes at `io.offset` in chunk `io.index` of file `io.file_id`, the data
/// being the payload (eager up to the rendezvous threshold, by rendezvous above it), with
/// what the server needs to tell a gap it would leave from bytes it lost.
///
/// A server whose store began after `file_birth_ns` may have lost bytes the file held
/// (a memory store restarted, a data directory lost). It refuses with `Status::Lost`,
/// writing nothing, a write that would leave part of the chunk's first `chunk_held` bytes
/// unwritten before `io.offset` past the chunk's length: zeros there would read as the
/// file's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkWrite {
    /// Where the bytes go.
    pub io: ChunkIo,
    /// When the file was created (its record's `birth_ns`).
    pub file_birth_ns: u64,
    /// How many of the chunk's bytes, from its start, the file held when the writer
    /// opened it (by the file's own chunk size, which the server may not share).
    pub chunk_held: u64,
    /// For an append's bytes, the [`FileMetadata::cut_gen`] its claim on the record saw:
    /// a server that has since seen a later cut of the file drops what lands past it.
    pub append_cut_gen: Option<u16>,
    /// The writer knows the chunk whole (a replica repair copying another replica's):
    /// from `chunk_held` up to `io.offset` the file holds a hole, not bytes a server that
    /// began after the file may have lost.
    pub hole_before: bool,
}

/// Bit of `ChunkWriteHeader::flags`: the write is an append's ([`ChunkWrite::append_cut_gen`]).
const CHUNK_WRITE_APPEND: u8 = 1;
/// Bit of `ChunkWriteHeader::flags`: [`ChunkWrite::hole_before`].
const CHUNK_WRITE_HOLE_BEFORE: u8 = 2;

impl Message for ChunkWrite {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&ChunkWriteHeader {
            file_id: self.io.file_id.into(),
            index: self.io.index.into(),
            offset: self.io.offset.into(),
            len: self.io.len.into(),
            file_birth_ns: self.file_birth_ns.into(),
            chunk_held: self.chunk_held.into(),
            flags: if self.append_cut_gen.is_some() {
                CHUNK_WRITE_APPEND
            } else {
                0
            } | if self.hole_before {
                CHUNK_WRITE_HOLE_BEFORE
            } else {
                0
            },
            append_cut_gen: self.append_cut_gen.unwrap_or(0).into(),
        });
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let h: ChunkWriteHeader = r.fixed()?;
        if h.flags & !(CHUNK_WRITE_APPEND | CHUNK_WRITE_HOLE_BEFORE) != 0 {
            return Err(DecodeError::BadField {
                field: "flags",
                reason: "unknown flag bits",
            });
        }
        let append_cut_gen = (h.flags & CHUNK_WRITE_APPEND != 0).then(|| h.append_cut_gen.get());
        Ok(ChunkWrite {
            io: ChunkIo {
                file_id: h.file_id.get(),
                index: h.index.get(),
                offset: h.offset.get(),
                len: h.len.get(),
            },
            file_birth_ns: h.file_birth_ns.get(),
            chunk_held: h.chunk_held.get(),
            append_cut_gen,
            hole_before: h.flags & CHUNK_WRITE_HOLE_BEFORE != 0,
        })
    }
}

/// Bytes moved by a chunk read or write (a read's data is the reply's payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkIoReply {
    /// Bytes read or written.
    pub len: u64,
    /// A read: the server has held the chunk whole since before its store began again
    /// (a tiered store's chunk files after a crash), so a read that stops short stops
    /// where nothing was written, even in a file older than the store.
    pub whole: bool,
}

impl ChunkIoReply {
    /// A reply of `len` bytes moved, vouching for nothing past them.
    pub fn moved(len: u64) -> ChunkIoReply {
        ChunkIoReply { len, whole: false }
    }
}

impl Message for ChunkIoReply {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&ChunkIoReplyHeader {
            len: self.len.into(),
            whole: u8::from(self.whole),
        });
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let h: ChunkIoReplyHeader = r.fixed()?;
        Ok(ChunkIoReply {
            len: h.len.get(),
            whole: bool_byte(h.whole, "whole")?,
        })
    }
}

/// A request about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRequest {
    /// The path.
    pub path: String,
}

impl Message for PathRequest {
    fn encode(&self, w: &mut Writer) {
        w.str16(self.path.as_bytes());
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(PathRequest {
            path: path_field(r, "path")?,
        })
    }
}

/// Create a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRequest {
    /// The path.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Chunk size for a new file (a power of two within the limits); 0 takes the
    /// server's configured size. Ignored for directories.
    pub chunk_size: u64,
    /// Owner of the new record.
    pub uid: u32,
    /// Group of the new record.
    pub gid: u32,
}

impl Message for CreateRequest {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&CreateHeader {
            mode: self.mode.into(),
            chunk_size: self.chunk_size.into(),
            uid: self.uid.into(),
            gid: self.gid.into(),
        })
        .str16(self.path.as_bytes());
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let h: CreateHeader = r.fixed()?;
        Ok(CreateRequest {
            path: path_field(r, "path")?,
            mode: h.mode.get(),
            chunk_size: h.chunk_size.get(),
            uid: h.uid.get(),
            gid: h.gid.get(),
        })
    }
}

/// Remove a record, if it is of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteRequest {
    /// The path.
    pub path: String,
    /// The kind the caller means (unlink: file, rmdir: directory), or any.
    pub expect: Option<EntryKind>,
    /// The record moved to another path (a rename), so its file lives on: the server
    /// keeps no tombstone of its inode number.
    pub moved: bool,
}

impl Message for DeleteRequest {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&DeleteHeader {
            expect: self.expect.map_or(0, |k| k as u8),
            moved: u8::from(self.moved),
        })
        .str16(self.path.as_bytes());
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let h: DeleteHeader = r.fixed()?;
        let expect = match h.expect {
            0 => None,
            k => Some(EntryKind::from_wire(k).ok_or(DecodeError::BadField {
                field: "expect",
                reason: "unknown kind",
            })?),
        };
        Ok(DeleteRequest {
            moved: bool_byte(h.moved, "moved")?,
            path: path_field(r, "path")?,
            expect,
        })
    }
}

/// A metadata record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataReply {
    /// The record.
    pub meta: FileMetadata,
}

impl Message for MetadataReply {
    fn encode(&self, w: &mut Writer) {
        self.meta.encode(w);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(MetadataReply {
            meta: FileMetadata::decode(r)?,
        })
    }
}

/// A size update's record, and the size it had before the update (a growing truncate
/// zeros only from there: what was claimed up to it stays).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeReply {
    /// The record after the update.
    pub meta: FileMetadata,
    /// Its size before the update.
    pub size_before: u64,
    /// Its cut count before the update.
    pub cut_gen_before: u16,
}

impl Message for SizeReply {
    fn encode(&self, w: &mut Writer) {
        self.meta.encode(w);
        w.fixed(&U64::new(self.size_before))
            .fixed(&U16::new(self.cut_gen_before));
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let meta = FileMetadata::decode(r)?;
        let size_before: U64 = r.fixed()?;
        let cut_gen_before: U16 = r.fixed()?;
        Ok(SizeReply {
            meta,
            size_before: size_before.get(),
            cut_gen_before: cut_gen_before.get(),
        })
    }
}

/// A new directory's record, and whether records nothing showed may lie below its name
/// (a directory left it, or a rename stopped part way there), which the client must
/// remove ([`PurgeUnder`]) before the directory is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateDirReply {
    /// The record.
    pub meta: FileMetadata,
    /// Whether the name is marked.
    pub stale_below: bool,
}

impl Message for CreateDirReply {
    fn encode(&self, w: &mut Writer) {
        self.meta.encode(w);
        w.u8(u8::from(self.stale_below));
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(CreateDirReply {
            meta: FileMetadata::decode(r)?,
            stale_below: bool_field(r, "stale_below")?,
        })
    }
}

/// List a directory's entries held by this server, after `after`, at most `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaddirRequest {
    /// The directory.
    pub dir: String,
    /// Resume after this name (paging).
    pub after: Option<String>,
    /// Most entries wanted; the server caps it at READDIR_PAGE_MAX.
    pub limit: u32,
}

impl Message for ReaddirRequest {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&ReaddirHeader {
            limit: self.limit.into(),
        })
        .str16(self.dir.as_bytes());
        match &self.after {
            None => w.u8(0),
            Some(a) => w.u8(1).str16(a.as_bytes()),
        };
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let limit = r.fixed::<ReaddirHeader>()?.limit.get();
        let dir = path_field(r, "dir")?;
        let after = if bool_field(r, "after")? {
            Some(r.utf8("after", NAME_LEN_MAX)?)
        } else {
            None
        };
        Ok(ReaddirRequest { dir, after, limit })
    }
}

/// The [`PurgeRequest::changed_before_ns`] that seals a name instead of purging below it.
pub const PURGE_SEALS_NAME: u64 = 0;

/// The [`PurgeRequest::changed_before_ns`] that removes nothing (no record changed before
/// the first nanosecond) and lifts the name's seal: an rmdir that sealed a directory it
/// then did not remove.
pub const PURGE_LIFTS_SEAL: u64 = 1;

/// Remove every record below `dir` (at any depth, `dir` itself kept) whose last change
/// (the later of its `ctime_ns` and `mtime_ns`) is before `changed_before_ns`. With
/// `u64::MAX` (a rename about to copy records below `dir`) the name stays marked as one
/// with stale records below it; otherwise (a new directory's purge) the mark is cleared.
///
/// With [`PURGE_SEALS_NAME`] (0: nothing changed before it, so nothing is removed) the
/// server instead seals the name: a create below it is refused (`NotFound`) until a
/// purge of another time names it (a directory made or renamed there again). A rename
/// sends it for the name a directory left, and an rmdir for the directory before it checks
/// that it is empty, so that creates of clients that still see the directory there
/// (cached) fail instead of leaving records under a name nothing shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeRequest {
    /// The directory; never the root.
    pub dir: String,
    /// Records changed at or after this time (the server's clock, ns) stay.
    pub changed_before_ns: u64,
}

impl Message for PurgeRequest {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&PurgeHeader {
            changed_before_ns: self.changed_before_ns.into(),
        })
        .str16(self.dir.as_bytes());
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let changed_before_ns = r.fixed::<PurgeHeader>()?.changed_before_ns.get();
        let dir = path_field(r, "dir")?;
        Ok(PurgeRequest {
            dir,
            changed_before_ns,
        })
    }
}

/// A page of directory entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaddirReply {
    /// Names and records, in name order.
    pub entries: Vec<(String, FileMetadata)>,
    /// Whether this server has no entries after the last one.
    pub done: bool,
}

impl Message for ReaddirReply {
    fn encode(&self, w: &mut Writer) {
        let count = u32::try_from(self.entries.len()).expect("pages are bounded");
        w.fixed(&ReaddirReplyHeader {
            done: u8::from(self.done),
            count: count.into(),
        });
        for (name, meta) in &self.entries {
            w.str16(name.as_bytes());
            meta.encode(w);
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let h: ReaddirReplyHeader = r.fixed()?;
        let done = bool_byte(h.done, "done")?;
        let count = h.count.get();
        if count > READDIR_PAGE_MAX {
            return Err(DecodeError::BadField {
                field: "count",
                reason: "above READDIR_PAGE_MAX",
            });
        }
        let entries = (0..count)
            .map(|_| Ok((r.utf8("name", NAME_LEN_MAX)?, FileMetadata::decode(r)?)))
            .collect::<Result<_, DecodeError>>()?;
        Ok(ReaddirReply { entries, done })
    }
}

/// Cut a file: the server's chunk `index` to at most `len` bytes (removed at 0), and every
/// later chunk of the file removed; or, with `end`, only the bytes from there up to `end`
/// (a growing truncate's range: what lies past it stays).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TruncateFileRequest {
    /// The file's inode number.
    pub file_id: u64,
    /// The chunk the new end falls in.
    pub index: u64,
    /// The new end's offset in that chunk.
    pub len: u64,
    /// The record's [`FileMetadata::cut_gen`] after the cut: an append's write that
    /// carries an older one was claimed before it.
    pub cut_gen: u16,
    /// Where the bytes to remove end (chunk index, offset in it), if not at the file's
    /// end.
    pub end: Option<(u64, u64)>,
}

impl Message for TruncateFileRequest {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&TruncateFileHeader {
            file_id: self.file_id.into(),
            index: self.index.into(),
            len: self.len.into(),
            cut_gen: self.cut_gen.into(),
            zero_only: u8::from(self.end.is_some()),
            end_index: self.end.map_or(0, |e| e.0).into(),
            end_len: self.end.map_or(0, |e| e.1).into(),
        });
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let h: TruncateFileHeader = r.fixed()?;
        Ok(TruncateFileRequest {
            file_id: h.file_id.get(),
            index: h.index.get(),
            len: h.len.get(),
            cut_gen: h.cut_gen.get(),
            end: bool_byte(h.zero_only, "zero_only")?.then(|| (h.end_index.get(), h.end_len.get())),
        })
    }
}

/// Grow or set a file's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateSizeRequest {
    /// The path.
    pub path: String,
    /// The file the caller means: a record naming another one refuses with `Stale`.
    pub file_id: u64,
    /// The size.
    pub size: u64,
    /// Grow-only or exact.
    pub how: SizeUpdate,
    /// For an exact size that changes the record: the cut count the record takes at
    /// least ([`FileMetadata::cut_gen`]), so that replicas whose counts drifted apart (a
    /// truncate some of them missed) agree again; 0 for none. For
    /// [`SizeUpdate::AtLeastUncut`]: the count the caller knew.
    pub cut_gen: u16,
}

impl Message for UpdateSizeRequest {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&UpdateSizeHeader {
            file_id: self.file_id.into(),
            size: self.size.into(),
            how: self.how as u8,
            cut_gen: self.cut_gen.into(),
        })
        .str16(self.path.as_bytes());
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let h: UpdateSizeHeader = r.fixed()?;
        let size = h.size.get();
        let how = SizeUpdate::from_wire(h.how).ok_or(DecodeError::BadField {
            field: "how",
            reason: "unknown size update",
        })?;
        Ok(UpdateSizeRequest {
            path: path_field(r, "path")?,
            file_id: h.file_id.get(),
            size,
            how,
            cut_gen: h.cut_gen.get(),
        })
    }
}

/// Claim the range an append of `len` bytes writes: the record's size grows to
/// `max(size, floor) + len`, so appends from clients at once get ranges one after the
/// other, whatever sizes they knew, and none starts before what the caller itself wrote
/// (`floor`, its unpublished end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimAppendRequest {
    /// The path.
    pub path: String,
    /// The file the caller means: a record naming another one refuses with `Stale`.
    pub file_id: u64,
    /// The least size the range starts at.
    pub floor: u64,
    /// The range's length.
    pub len: u64,
}

impl Message for ClaimAppendRequest {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&ClaimAppendHeader {
            file_id: self.file_id.into(),
            floor: self.floor.into(),
            len: self.len.into(),
        })
        .str16(self.path.as_bytes());
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let h: ClaimAppendHeader = r.fixed()?;
        Ok(ClaimAppendRequest {
            path: path_field(r, "path")?,
            file_id: h.file_id.get(),
            floor: h.floor.get(),
            len: h.len.get(),
        })
    }
}

/// Put a record's size and cut count back to what they were before a change that failed
/// on another replica (`size`, `cut_gen`), only while the record is as the change left it
/// (`now_size`, `now_cut_gen`, and `now_ctime_ns`, which every change moves, one that
/// leaves the size as it was too): a record changed since refuses with `Stale`, so a
/// concurrent change is never undone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSizeRequest {
    /// The path.
    pub path: String,
    /// The file the caller means: a record naming another one refuses with `Stale`.
    pub file_id: u64,
    /// The size the change left.
    pub now_size: u64,
    /// The cut count the change left.
    pub now_cut_gen: u16,
    /// The change time the change left.
    pub now_ctime_ns: u64,
    /// The size to put back.
    pub size: u64,
    /// The cut count to put back.
    pub cut_gen: u16,
}

impl Message for RestoreSizeRequest {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&RestoreSizeHeader {
            file_id: self.file_id.into(),
            now_size: self.now_size.into(),
            now_cut_gen: self.now_cut_gen.into(),
            now_ctime_ns: self.now_ctime_ns.into(),
            size: self.size.into(),
            cut_gen: self.cut_gen.into(),
        })
        .str16(self.path.as_bytes());
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let h: RestoreSizeHeader = r.fixed()?;
        Ok(RestoreSizeRequest {
            path: path_field(r, "path")?,
            file_id: h.file_id.get(),
            now_size: h.now_size.get(),
            now_cut_gen: h.now_cut_gen.get(),
            now_ctime_ns: h.now_ctime_ns.get(),
            size: h.size.get(),
            cut_gen: h.cut_gen.get(),
        })
    }
}

/// Which attributes a [`SetAttrRequest`] sets (bits of `SetAttrRequest::set`).
pub mod set_attr {
    /// Permission bits.
    pub const MODE: u32 = 1;
    /// Owner.
    pub const UID: u32 = 2;
    /// Group.
    pub const GID: u32 = 4;
    /// Access time.
    pub const ATIME: u32 = 8;
    /// Modification time.
    pub const MTIME: u32 = 16;
    /// Every bit defined.
    pub const ALL: u32 = MODE | UID | GID | ATIME | MTIME;
}

/// Change some of a record's attributes; the change time is always set. The caller
/// chooses every time, so all replicas store the same values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAttrRequest {
    /// The path.
    pub path: String,
    /// The file the caller means: a record naming another one refuses with `Stale`.
    pub file_id: u64,
    /// Which of the fields below apply ([`set_attr`] bits).
    pub set: u32,
    /// Permission bits (only the low 12 bits are kept).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Access time, ns since the epoch.
    pub atime_ns: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: u64,
    /// Change time, ns since the epoch.
    pub ctime_ns: u64,
}

impl Message for SetAttrRequest {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&SetAttrHeader {
            file_id: self.file_id.into(),
            set: self.set.into(),
            mode: self.mode.into(),
            uid: self.uid.into(),
            gid: self.gid.into(),
            atime_ns: self.atime_ns.into(),
            mtime_ns: self.mtime_ns.into(),
            ctime_ns: self.ctime_ns.into(),
        })
        .str16(self.path.as_bytes());
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let h: SetAttrHeader = r.fixed()?;
        let set = h.set.get();
        if set & !set_attr::ALL != 0 {
            return Err(DecodeError::BadField {
                field: "set",
                reason: "unknown attribute bit",
            });
        }
        Ok(SetAttrRequest {
            path: path_field(r, "path")?,
            file_id: h.file_id.get(),
            set,
            mode: h.mode.get(),
            uid: h.uid.get(),
            gid: h.gid.get(),
            atime_ns: h.atime_ns.get(),
            mtime_ns: h.mtime_ns.get(),
            ctime_ns: h.ctime_ns.get(),
        })
    }
}

/// Store a record as given, with its bytes if it is inline (a rename moves a record with
/// its bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertRequest {
    /// The path.
    pub path: String,
    /// The record.
    pub meta: FileMetadata,
    /// Fail with `Exists` if the path has a record.
    pub exclusive: bool,
    /// Fail with `Busy` if a record came to or left the path, or a call tried to, within
    /// the settle window (a replica repair's copy, which must not race a client's call).
    pub settled_only: bool,
    /// Fail with `Exists` unless the path is empty or its record is older than this one
    /// and differs from it (a replica repair's copy: last writer wins, see the server's
    /// `repair` module).
    pub newer_only: bool,
    /// The record's bytes when `meta.inline` (exactly `meta.size` of them), else empty.
    pub data: Vec<u8>,
}

impl Message for InsertRequest {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&InsertHeader {
            meta: self.meta.to_wire(),
            flags: u8::from(self.exclusive)
                | u8::from(self.settled_only) << 1
                | u8::from(self.newer_only) << 2,
        })
        .str16(self.path.as_bytes())
        .str16(&self.data);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let h: InsertHeader = r.fixed()?;
        let meta = FileMetadata::from_wire(&h.meta)?;
        if h.flags & !7 != 0 {
            return Err(DecodeError::BadField {
                field: "flags",
                reason: "unknown bits",
            });
        }
        let path = path_field(r, "path")?;
        Ok(InsertRequest {
            data: inline::record_data(r, &meta)?,
            path,
            meta,
            exclusive: h.flags & 1 != 0,
            settled_only: h.flags & 2 != 0,
            newer_only: h.flags & 4 != 0,
        })
    }
}

/// Remove every chunk of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoveChunksRequest {
    /// The file's inode number.
    pub file_id: u64,
}

impl Message for RemoveChunksRequest {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&RemoveChunksHeader {
            file_id: self.file_id.into(),
        });
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let h: RemoveChunksHeader = r.fixed()?;
        Ok(RemoveChunksRequest {
            file_id: h.file_id.get(),
        })
    }
}

/// A count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountReply {
    /// The count.
    pub count: u64,
}

impl Message for CountReply {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&CountHeader {
            count: self.count.into(),
        });
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let h: CountHeader = r.fixed()?;
        Ok(CountReply {
            count: h.count.get(),
        })
    }
}

/// A file to find the record of, by inode number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocateFileRequest {
    /// The file.
    pub file_id: u64,
}

impl Message for LocateFileRequest {
    fn encode(&self, w: &mut Writer) {
        w.u64(self.file_id);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(LocateFileRequest { file_id: r.u64()? })
    }
}

/// Where a server's record of a file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocateFileReply {
    /// The record's path; `None` if this server holds no record of the file.
    pub path: Option<String>,
}

impl Message for LocateFileReply {
    fn encode(&self, w: &mut Writer) {
        match &self.path {
            Some(path) => w.u8(1).str16(path.as_bytes()),
            None => w.u8(0),
        };
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let path = match bool_field(r, "found")? {
            true => Some(path_field(r, "path")?),
            false => None,
        };
        Ok(LocateFileReply { path })
    }
}

/// Some inode numbers to ask a server about.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileIdsRequest {
    /// At most [`FILE_IDS_MAX`].
    pub file_ids: Vec<u64>,
}

/// What a server knows of the inode numbers it was asked about.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileStatesReply {
    /// Those a record of this server holds.
    pub named: Vec<u64>,
    /// Those whose last record this server deleted (tombstones: an inode number is never
    /// handed out again, so a deleted file stays deleted).
    pub deleted: Vec<u64>,
}

fn id_list(r: &mut Reader<'_>, count: u32) -> Result<Vec<u64>, DecodeError> {
    if count as usize > FILE_IDS_MAX {
        return Err(DecodeError::BadField {
            field: "count",
            reason: "more inode numbers than FILE_IDS_MAX",
        });
    }
    (0..count).map(|_| r.u64()).collect()
}

impl Message for FileStatesReply {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&FileStatesHeader {
            named: (self.named.len() as u32).into(),
            deleted: (self.deleted.len() as u32).into(),
        });
        for id in self.named.iter().chain(&self.deleted) {
            w.u64(*id);
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let h: FileStatesHeader = r.fixed()?;
        Ok(FileStatesReply {
            named: id_list(r, h.named.get())?,
            deleted: id_list(r, h.deleted.get())?,
        })
    }
}

impl Message for FileIdsRequest {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&FileIdsHeader {
            count: (self.file_ids.len() as u32).into(),
        });
        for id in &self.file_ids {
            w.u64(*id);
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let h: FileIdsHeader = r.fixed()?;
        Ok(FileIdsRequest {
            file_ids: id_list(r, h.count.get())?,
        })
    }
}

/// One operation's counters since the server started, in a [`StatsReply`]. Latency runs
/// from the request's frame decoded to its reply handed to the transport (and, for a
/// reply with a payload, sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpStats {
    /// The operation.
    pub op: OpCode,
    /// Requests of it that the server took (decoded frames), answered or not.
    pub requests: u64,
    /// Those answered with a status other than `Ok`, or not answered.
    pub errors: u64,
    /// File bytes that came with the requests: a write's payload, an inline file's bytes
    /// (counted as carried, also where the file turned out to exist and kept its own).
    pub bytes_in: u64,
    /// File bytes that went with the replies: a read's payload, an inline file's bytes.
    pub bytes_out: u64,
    /// Median latency, ns (within 1%).
    pub latency_p50_ns: u64,
    /// 90th percentile latency, ns.
    pub latency_p90_ns: u64,
    /// 99th percentile latency, ns.
    pub latency_p99_ns: u64,
    /// 99.9th percentile latency, ns.
    pub latency_p999_ns: u64,
    /// Largest latency, ns.
    pub latency_max_ns: u64,
    /// Sum of every latency, ns (the mean is this over `requests`).
    pub latency_sum_ns: u64,
}

impl OpStats {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&OpStatsHeader {
            op: (self.op as u16).into(),
            requests: self.requests.into(),
            errors: self.errors.into(),
            bytes_in: self.bytes_in.into(),
            bytes_out: self.bytes_out.into(),
            latency_p50_ns: self.latency_p50_ns.into(),
            latency_p90_ns: self.latency_p90_ns.into(),
            latency_p99_ns: self.latency_p99_ns.into(),
            latency_p999_ns: self.latency_p999_ns.into(),
            latency_max_ns: self.latency_max_ns.into(),
            latency_sum_ns: self.latency_sum_ns.into(),
        });
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let h: OpStatsHeader = r.fixed()?;
        let op = OpCode::from_wire(h.op.get()).ok_or(DecodeError::BadField {
            field: "op",
            reason: "unknown operation",
        })?;
        Ok(OpStats {
            op,
            requests: h.requests.get(),
            errors: h.errors.get(),
            bytes_in: h.bytes_in.get(),
            bytes_out: h.bytes_out.get(),
            latency_p50_ns: h.latency_p50_ns.get(),
            latency_p90_ns: h.latency_p90_ns.get(),
            latency_p99_ns: h.latency_p99_ns.get(),
            latency_p999_ns: h.latency_p999_ns.get(),
            latency_max_ns: h.latency_max_ns.get(),
            latency_sum_ns: h.latency_sum_ns.get(),
        })
    }
}

/// Server counters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatsReply {
    /// Metadata records held.
    pub metadata_records: u64,
    /// Chunks held.
    pub chunks: u64,
    /// Bytes held.
    pub used_bytes: u64,
    /// Capacity in bytes, 0 when unbounded.
    pub capacity_bytes: u64,
    /// Bytes the store could still take now: what the capacity leaves, or less where the
    /// memory it would map (memory backend) or its disk (the others) has less free;
    /// `u64::MAX` when neither bounds it. Servers sharing a host share this room.
    pub room_bytes: u64,
    /// Requests served since start.
    pub requests: u64,
    /// Requests refused as malformed since start.
    pub malformed: u64,
    /// Chunks of files with no record anywhere that the orphan sweep removed since start.
    pub orphan_chunks_removed: u64,
    /// Store faults injected since start (`storage.inject_faults`); 0 in normal use.
    pub faults_injected: u64,
    /// Requests the server is handling now (taken off the transport's queue, not yet
    /// answered), this `Stats` request included.
    pub queue_depth: u64,
    /// The most requests it handled at once since start.
    pub queue_depth_max: u64,
    /// One entry per operation the server has seen, by increasing operation id; at most
    /// one per [`OpCode`].
    pub ops: Vec<OpStats>,
}

impl StatsReply {
    /// The entry of `op`, if the server has seen it.
    pub fn op(&self, op: OpCode) -> Option<&OpStats> {
        self.ops.iter().find(|s| s.op == op)
    }
}

impl Message for StatsReply {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&StatsHeader {
            metadata_records: self.metadata_records.into(),
            chunks: self.chunks.into(),
            used_bytes: self.used_bytes.into(),
            capacity_bytes: self.capacity_bytes.into(),
            room_bytes: self.room_bytes.into(),
            requests: self.requests.into(),
            malformed: self.malformed.into(),
            orphan_chunks_removed: self.orphan_chunks_removed.into(),
            faults_injected: self.faults_injected.into(),
            queue_depth: self.queue_depth.into(),
            queue_depth_max: self.queue_depth_max.into(),
            op_count: (self.ops.len() as u32).into(),
        });
        for entry in &self.ops {
            entry.encode(w);
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let h: StatsHeader = r.fixed()?;
        let count = h.op_count.get();
        if count as usize > OpCode::ALL.len() {
            return Err(DecodeError::BadField {
                field: "op_count",
                reason: "more entries than operations",
            });
        }
        let mut ops: Vec<OpStats> = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let entry = OpStats::decode(r)?;
            // Increasing ids: one entry per operation, so the count stays bounded.
            if ops
                .last()
                .is_some_and(|last| last.op as u16 >= entry.op as u16)
            {
                return Err(DecodeError::BadField {
                    field: "op",
                    reason: "entries not in increasing operation order",
                });
            }
            ops.push(entry);
        }
        Ok(StatsReply {
            metadata_records: h.metadata_records.get(),
            chunks: h.chunks.get(),
            used_bytes: h.used_bytes.get(),
            capacity_bytes: h.capacity_bytes.get(),
            room_bytes: h.room_bytes.get(),
            requests: h.requests.get(),
            malformed: h.malformed.get(),
            orphan_chunks_removed: h.orphan_chunks_removed.get(),
            faults_injected: h.faults_injected.get(),
            queue_depth: h.queue_depth.get(),
            queue_depth_max: h.queue_depth_max.get(),
            ops,
        })
    }
}

/// Measure the server's chunk store: write `bytes` in `block`-sized writes to a scratch
/// file no real file can be, make them durable, read them back, and remove them. The
/// server refuses 0 bytes, more than [`STORE_PROBE_BYTES_MAX`](crate::limits::STORE_PROBE_BYTES_MAX),
/// a block of 0 or above its chunk size (`InvalidArgument`), more bytes than its store has
/// room for (`NoSpace`), and a probe while another runs (`Busy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreProbeRequest {
    /// Bytes to write and read back.
    pub bytes: u64,
    /// Bytes per write and per read.
    pub block: u32,
}

impl Message for StoreProbeRequest {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&StoreProbeHeader {
            bytes: self.bytes.into(),
            block: self.block.into(),
        });
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let h: StoreProbeHeader = r.fixed()?;
        Ok(StoreProbeRequest {
            bytes: h.bytes.get(),
            block: h.block.get(),
        })
    }
}

/// What a store probe measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreProbeReply {
    /// Bytes written and read back.
    pub bytes: u64,
    /// Time to write them and make them durable (a store sync), ns.
    pub write_ns: u64,
    /// Time to read them back, ns.
    pub read_ns: u64,
}

impl Message for StoreProbeReply {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&StoreProbeReplyHeader {
            bytes: self.bytes.into(),
            write_ns: self.write_ns.into(),
            read_ns: self.read_ns.into(),
        });
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let h: StoreProbeReplyHeader = r.fixed()?;
        Ok(StoreProbeReply {
            bytes: h.bytes.get(),
            write_ns: h.write_ns.get(),
            read_ns: h.read_ns.get(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le(values: &[u64]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn fixed_headers_lead_the_body_as_documented() {
        let io = ChunkIo {
            file_id: 1,
            index: 2,
            offset: 3,
            len: 4,
        };
        assert_eq!(io.to_bytes(), le(&[1, 2, 3, 4]));
        let write = ChunkWrite {
            io: io.clone(),
            file_birth_ns: 5,
            chunk_held: 6,
            append_cut_gen: None,
            hole_before: false,
        };
        let mut plain = le(&[1, 2, 3, 4, 5, 6]);
        plain.extend([0, 0, 0]);
        assert_eq!(write.to_bytes(), plain);
        assert_eq!(ChunkWrite::from_bytes(&write.to_bytes()), Ok(write));
        let hello = HelloReply {
            node_id: "n".into(),
            chunk_size: 4096,
            rdma_threshold: 32768,
            born_ns: 7,
            born_again: true,
            replicas: 2,
            virtual_nodes: 150,
            challenge: vec![9],
        };
        assert_eq!(
            hello.to_bytes(),
            [
                le(&[4096, 32768, 7]),
                vec![2, 0, 0, 0, 150, 0, 0, 0, 1, 1, 0, b'n', 1, 0, 9]
            ]
            .concat()
        );
        let create = CreateRequest {
            path: "/a".into(),
            mode: 0o644,
            chunk_size: 1 << 16,
            uid: 5,
            gid: 6,
        };
        assert_eq!(
            create.to_bytes(),
            [
                0o644u32.to_le_bytes().to_vec(),
                (1u64 << 16).to_le_bytes().to_vec(),
                5u32.to_le_bytes().to_vec(),
                6u32.to_le_bytes().to_vec(),
                vec![2, 0, b'/', b'a']
            ]
            .concat()
        );
        let probe = StoreProbeRequest {
            bytes: 1 << 20,
            block: 4096,
        };
        assert_eq!(
            probe.to_bytes(),
            [le(&[1 << 20]), 4096u32.to_le_bytes().to_vec()].concat()
        );
        // A header cut short is a clean error, never a panic.
        let bytes = io.to_bytes();
        assert!(matches!(
            ChunkIo::from_bytes(&bytes[..31]),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn an_appends_chunk_write_carries_its_claims_cut_count() {
        let append = ChunkWrite {
            io: ChunkIo {
                file_id: 1,
                index: 2,
                offset: 3,
                len: 4,
            },
            file_birth_ns: 5,
            chunk_held: 6,
            append_cut_gen: Some(0x0201),
            hole_before: false,
        };
        // Flag bit 0 after the plain write's fields, then the count.
        let bytes = append.to_bytes();
        assert_eq!(bytes[48..], [1, 1, 2]);
        assert_eq!(ChunkWrite::from_bytes(&bytes), Ok(append.clone()));
        let repair = ChunkWrite {
            hole_before: true,
            append_cut_gen: None,
            ..append
        };
        let bytes = repair.to_bytes();
        assert_eq!(bytes[48], 2, "flag bit 1: the hole before");
        assert_eq!(ChunkWrite::from_bytes(&bytes), Ok(repair));
        let mut unknown = bytes.clone();
        unknown[48] = 4;
        assert!(ChunkWrite::from_bytes(&unknown).is_err());
    }

    fn op_stats(op: OpCode) -> OpStats {
        OpStats {
            op,
            requests: 3,
            errors: 1,
            bytes_in: 10,
            bytes_out: 20,
            latency_p50_ns: 100,
            latency_p90_ns: 200,
            latency_p99_ns: 300,
            latency_p999_ns: 400,
            latency_max_ns: 500,
            latency_sum_ns: 600,
        }
    }

    #[test]
    fn stats_entries_are_bounded_and_ordered() {
        let reply = StatsReply {
            requests: 9,
            queue_depth: 1,
            queue_depth_max: 4,
            ops: vec![op_stats(OpCode::Ping), op_stats(OpCode::WriteChunk)],
            ..Default::default()
        };
        let bytes = reply.to_bytes();
        assert_eq!(bytes.len(), 92 + 2 * 82);
        assert_eq!(StatsReply::from_bytes(&bytes).unwrap(), reply);
        // The same operation twice, or out of order, is refused.
        let twice = StatsReply {
            ops: vec![op_stats(OpCode::Ping), op_stats(OpCode::Ping)],
            ..reply.clone()
        };
        assert!(StatsReply::from_bytes(&twice.to_bytes()).is_err());
        let backwards = StatsReply {
            ops: vec![op_stats(OpCode::WriteChunk), op_stats(OpCode::Ping)],
            ..reply.clone()
        };
        assert!(StatsReply::from_bytes(&backwards.to_bytes()).is_err());
        // A count above the number of operations is refused before any entry is read.
        let mut huge = bytes.clone();
        huge[88..92].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            StatsReply::from_bytes(&huge),
            Err(DecodeError::BadField {
                field: "op_count",
                ..
            })
        ));
        // An unknown operation id is refused.
        let mut unknown = bytes;
        unknown[92..94].copy_from_slice(&999u16.to_le_bytes());
        assert!(StatsReply::from_bytes(&unknown).is_err());
    }
}
