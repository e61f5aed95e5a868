//! Operation bodies and the [`Rpc`] trait that ties each operation id to its request and
//! reply types. Adding an operation is one [`OpCode`] variant, one `Rpc` impl here and one
//! match arm in the server's dispatcher.

use crate::frame::OpCode;
use crate::meta::{EntryKind, FileMetadata, SizeUpdate};
use crate::wire::{DecodeError, Reader, Writer};

/// Longest path a body may carry (Linux PATH_MAX less the NUL).
pub const PATH_LEN_MAX: usize = 4095;
/// Longest name a body may carry (Linux NAME_MAX).
pub const NAME_LEN_MAX: usize = 255;
/// Longest packed remote key a body may carry.
pub const RKEY_LEN_MAX: usize = 1024;
/// Longest node id or job secret in a handshake.
pub const TOKEN_LEN_MAX: usize = 256;
/// Most entries in one readdir reply; sized so a full page fits in BODY_LEN_MAX.
pub const READDIR_PAGE_MAX: u32 = 128;

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
        let mut w = Writer::new();
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

rpc!(/// Handshake.
    Hello, Hello, HelloRequest, HelloReply);
rpc!(/// Round trip; an inline payload is discarded by the server.
    Ping, Ping, Empty, Empty);
rpc!(/// Read part of a chunk.
    ReadChunk, ReadChunk, ChunkIo, ChunkIoReply);
rpc!(/// Write part of a chunk.
    WriteChunk, WriteChunk, ChunkIo, ChunkIoReply);
rpc!(/// Look up a path.
    MetadataLookup, MetadataLookup, PathRequest, MetadataReply);
rpc!(/// Create a file record.
    MetadataCreateFile, MetadataCreateFile, CreateRequest, MetadataReply);
rpc!(/// Create a directory record.
    MetadataCreateDir, MetadataCreateDir, CreateRequest, MetadataReply);
rpc!(/// Remove a record.
    MetadataDelete, MetadataDelete, DeleteRequest, MetadataReply);
rpc!(/// List this server's share of a directory.
    Readdir, Readdir, ReaddirRequest, ReaddirReply);
rpc!(/// Cut or extend one chunk.
    TruncateChunk, TruncateChunk, TruncateChunkRequest, Empty);
rpc!(/// Grow or set a file's size.
    UpdateSize, UpdateSize, UpdateSizeRequest, MetadataReply);
rpc!(/// Flush to stable storage.
    Fsync, Fsync, Empty, Empty);
rpc!(/// Store a record as given.
    MetadataInsert, MetadataInsert, InsertRequest, Empty);
rpc!(/// Server counters.
    Stats, Stats, Empty, StatsReply);
rpc!(/// Remove every chunk of a file on this server.
    RemoveChunks, RemoveChunks, RemoveChunksRequest, CountReply);

fn path_field(r: &mut Reader<'_>, field: &'static str) -> Result<String, DecodeError> {
    r.utf8(field, PATH_LEN_MAX)
}

fn bool_field(r: &mut Reader<'_>, field: &'static str) -> Result<bool, DecodeError> {
    match r.u8()? {
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

/// Handshake request: who is calling and the job's secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloRequest {
    /// The caller's name, for logs.
    pub client: String,
    /// The job-scoped secret; empty when the job has none.
    pub secret: Vec<u8>,
}

impl Message for HelloRequest {
    fn encode(&self, w: &mut Writer) {
        w.str16(self.client.as_bytes()).str16(&self.secret);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(HelloRequest {
            client: r.utf8("client", TOKEN_LEN_MAX)?,
            secret: r.str16("secret", TOKEN_LEN_MAX)?.to_vec(),
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
}

impl Message for HelloReply {
    fn encode(&self, w: &mut Writer) {
        w.str16(self.node_id.as_bytes())
            .u64(self.chunk_size)
            .u64(self.rdma_threshold);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(HelloReply {
            node_id: r.utf8("node_id", TOKEN_LEN_MAX)?,
            chunk_size: r.u64()?,
            rdma_threshold: r.u64()?,
        })
    }
}

/// A client buffer the server reaches by RMA: its address, length and packed remote key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteBuffer {
    /// Address in the client's address space.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// The packed UCX remote key.
    pub rkey: Vec<u8>,
}

/// Read or write `len` bytes at `offset` in chunk `index` of file `file_id`. The data rides
/// inline (after the body) or, when `remote` is set, moves by RMA to or from that buffer.
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
    /// The client buffer for RMA, if the data does not ride inline.
    pub remote: Option<RemoteBuffer>,
}

impl Message for ChunkIo {
    fn encode(&self, w: &mut Writer) {
        w.u64(self.file_id)
            .u64(self.index)
            .u64(self.offset)
            .u64(self.len);
        match &self.remote {
            None => {
                w.u8(0);
            }
            Some(b) => {
                w.u8(1).u64(b.addr).u64(b.len).str16(&b.rkey);
            }
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let (file_id, index, offset, len) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        let remote = if bool_field(r, "remote")? {
            let (addr, blen) = (r.u64()?, r.u64()?);
            let rkey = r.str16("rkey", RKEY_LEN_MAX)?.to_vec();
            if blen < len {
                return Err(DecodeError::BadField {
                    field: "remote.len",
                    reason: "shorter than the transfer",
                });
            }
            Some(RemoteBuffer {
                addr,
                len: blen,
                rkey,
            })
        } else {
            None
        };
        Ok(ChunkIo {
            file_id,
            index,
            offset,
            len,
            remote,
        })
    }
}

/// Bytes moved by a chunk read or write (a read's data follows inline or went by RMA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkIoReply {
    /// Bytes read or written.
    pub len: u64,
}

impl Message for ChunkIoReply {
    fn encode(&self, w: &mut Writer) {
        w.u64(self.len);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(ChunkIoReply { len: r.u64()? })
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
}

impl Message for CreateRequest {
    fn encode(&self, w: &mut Writer) {
        w.u32(self.mode).str16(self.path.as_bytes());
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mode = r.u32()?;
        Ok(CreateRequest {
            path: path_field(r, "path")?,
            mode,
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
}

impl Message for DeleteRequest {
    fn encode(&self, w: &mut Writer) {
        w.u8(self.expect.map_or(0, |k| k as u8))
            .str16(self.path.as_bytes());
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let expect = match r.u8()? {
            0 => None,
            k => Some(EntryKind::from_wire(k).ok_or(DecodeError::BadField {
                field: "expect",
                reason: "unknown kind",
            })?),
        };
        Ok(DeleteRequest {
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
        w.u32(self.limit).str16(self.dir.as_bytes());
        match &self.after {
            None => w.u8(0),
            Some(a) => w.u8(1).str16(a.as_bytes()),
        };
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let limit = r.u32()?;
        let dir = path_field(r, "dir")?;
        let after = if bool_field(r, "after")? {
            Some(r.utf8("after", NAME_LEN_MAX)?)
        } else {
            None
        };
        Ok(ReaddirRequest { dir, after, limit })
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
        w.u8(u8::from(self.done)).u32(count);
        for (name, meta) in &self.entries {
            w.str16(name.as_bytes());
            meta.encode(w);
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let done = bool_field(r, "done")?;
        let count = r.u32()?;
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

/// Cut or extend one chunk to `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TruncateChunkRequest {
    /// The file's inode number.
    pub file_id: u64,
    /// The chunk.
    pub index: u64,
    /// The new length.
    pub len: u64,
}

impl Message for TruncateChunkRequest {
    fn encode(&self, w: &mut Writer) {
        w.u64(self.file_id).u64(self.index).u64(self.len);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(TruncateChunkRequest {
            file_id: r.u64()?,
            index: r.u64()?,
            len: r.u64()?,
        })
    }
}

/// Grow or set a file's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateSizeRequest {
    /// The path.
    pub path: String,
    /// The size.
    pub size: u64,
    /// Grow-only or exact.
    pub how: SizeUpdate,
}

impl Message for UpdateSizeRequest {
    fn encode(&self, w: &mut Writer) {
        w.u64(self.size)
            .u8(self.how as u8)
            .str16(self.path.as_bytes());
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let size = r.u64()?;
        let how = SizeUpdate::from_wire(r.u8()?).ok_or(DecodeError::BadField {
            field: "how",
            reason: "unknown size update",
        })?;
        Ok(UpdateSizeRequest {
            path: path_field(r, "path")?,
            size,
            how,
        })
    }
}

/// Store a record as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertRequest {
    /// The path.
    pub path: String,
    /// The record.
    pub meta: FileMetadata,
    /// Fail with `Exists` if the path has a record.
    pub exclusive: bool,
}

impl Message for InsertRequest {
    fn encode(&self, w: &mut Writer) {
        self.meta.encode(w);
        w.u8(u8::from(self.exclusive)).str16(self.path.as_bytes());
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let meta = FileMetadata::decode(r)?;
        let exclusive = bool_field(r, "exclusive")?;
        Ok(InsertRequest {
            path: path_field(r, "path")?,
            meta,
            exclusive,
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
        w.u64(self.file_id);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(RemoveChunksRequest { file_id: r.u64()? })
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
        w.u64(self.count);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(CountReply { count: r.u64()? })
    }
}

/// Server counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsReply {
    /// Metadata records held.
    pub metadata_records: u64,
    /// Chunks held.
    pub chunks: u64,
    /// Bytes held.
    pub used_bytes: u64,
    /// Capacity in bytes, 0 when unbounded.
    pub capacity_bytes: u64,
    /// Requests served since start.
    pub requests: u64,
    /// Requests refused as malformed since start.
    pub malformed: u64,
}

impl Message for StatsReply {
    fn encode(&self, w: &mut Writer) {
        w.u64(self.metadata_records)
            .u64(self.chunks)
            .u64(self.used_bytes)
            .u64(self.capacity_bytes)
            .u64(self.requests)
            .u64(self.malformed);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(StatsReply {
            metadata_records: r.u64()?,
            chunks: r.u64()?,
            used_bytes: r.u64()?,
            capacity_bytes: r.u64()?,
            requests: r.u64()?,
            malformed: r.u64()?,
        })
    }
}
