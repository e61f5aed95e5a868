//! Replica checks: whether the replicas of a path's record, and of each chunk of its file,
//! hold the same. Writes go to every replica at once, so replicas can part (two clients'
//! overlapping writes landing in a different order on each, a server back with an empty
//! store that holds none of its chunks until they are written again); a job that
//! measures replication, or trusts it with its only copy, asks here whether they did.

use benchfs_proto::layout::ChunkLayout;
use benchfs_proto::meta::FileMetadata;
use benchfs_proto::ops;
use benchfs_proto::placement::{PlacementKey, ServerIndex};
use benchfs_proto::Status;
use futures_util::{stream, StreamExt};

use super::data::chunk_write;
use super::{fs_err, names_dir, norm, rpc_err, FsClient};
use crate::error::ApiError;
use crate::rpc::{OutPayload, RpcError};

/// Chunks compared at once: each holds a copy from every replica in memory.
const CHUNKS_IN_FLIGHT: usize = 4;

/// What [`FsClient::check_replicas`] found of one path.
#[derive(Debug, Clone)]
pub struct ReplicaCheck {
    /// The path, normalised.
    pub path: String,
    /// The record, as its first replica that holds it has it.
    pub meta: FileMetadata,
    /// Copies each record and chunk has (the cluster's replication, or fewer servers); 0
    /// for the root, which has no record.
    pub replicas: usize,
    /// Chunks compared.
    pub chunks: u64,
    /// Each way the replicas differ, one line each, naming the servers.
    pub differences: Vec<String>,
    /// Each replica that could not be asked, one line each, naming it and why.
    pub unasked: Vec<String>,
    /// Each chunk a repair copied, one line each, naming the servers.
    pub repaired: Vec<String>,
}

impl ReplicaCheck {
    /// Whether every replica answered and held the same.
    pub fn agrees(&self) -> bool {
        self.differences.is_empty() && self.unasked.is_empty()
    }
}

/// One replica's copy of a chunk's range.
struct Copy {
    server: ServerIndex,
    /// The range's bytes, a hole past the chunk's end as zeros.
    bytes: Vec<u8>,
    /// Whether the copy is the file's over the whole range: its server kept its store
    /// since the file was made (what it lacks is a hole), or it holds every byte of the
    /// range (a server restarted since answers no gap in a chunk it made anew: it refuses
    /// the read as `Lost`, and the copy counts as holding nothing).
    whole: bool,
    /// Bytes the server holds of the range.
    held: u64,
}

/// How the replicas of a record or chunk differ, which could not be asked, and what a
/// repair copied.
#[derive(Default)]
struct Findings {
    differences: Vec<String>,
    unasked: Vec<String>,
    repaired: Vec<String>,
}

impl FsClient {
    /// Compares what every replica holds of `path`: the record (its file, kind, size,
    /// owner, mode, cut count and, for a small file, its bytes) and, for a file with
    /// chunks or a symbolic link (its target), each chunk up to the largest size a
    /// replica's record gives. Past a chunk's end a replica holds a hole, zeros, if its
    /// store is older than the file; one whose store began after the file was made lost
    /// what it does not hold (reads do not answer zeros for it), and that differs even
    /// from zeros. The times are not compared:
    /// each server stamps its own. A server that did not answer a call lately is not
    /// asked (it would cost a timeout per path). Fails if no replica holds the path. The
    /// root has no record (`replicas` 0): its check asks every server whether it answers.
    pub async fn check_replicas(&self, path: &str) -> Result<ReplicaCheck, ApiError> {
        self.check_or_repair(path, false).await
    }

    /// [`FsClient::check_replicas`], and each chunk whose copies differ gets, on every
    /// replica, the copy reads are served from: the first replica's in ring order of those
    /// whose copy is the file's whole (see [`FsClient::check_replicas`]). So a server back
    /// with an empty store holds the file's chunks again, holes included, and replicas
    /// that two writes at once left apart agree. Records are the replica repair's (the
    /// servers' sweep), not this. Not atomic with writes: a write to the chunk between its
    /// read here and the copy is undone on the replicas copied to, so repair between a
    /// job's phases.
    pub async fn repair_replicas(&self, path: &str) -> Result<ReplicaCheck, ApiError> {
        self.check_or_repair(path, true).await
    }

    async fn check_or_repair(&self, given: &str, repair: bool) -> Result<ReplicaCheck, ApiError> {
        let path = norm(given)?;
        if path == "/" {
            // The root has no record: nothing of it is replicated. Its entries lie on
            // every server, so every server is asked whether it answers.
            let everyone: Vec<ServerIndex> = (0..self.servers.len() as ServerIndex).collect();
            let mut unasked = Vec::new();
            for (server, answer) in self.ask_each::<ops::Ping>(&everyone, &ops::Empty).await {
                match answer {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => unasked.push(e.to_string()),
                    None => unasked.push(self.not_asked(server)),
                }
            }
            return Ok(ReplicaCheck {
                path,
                meta: self.root(),
                replicas: 0,
                chunks: 0,
                differences: Vec::new(),
                unasked,
                repaired: Vec::new(),
            });
        }
        let servers = self.replica_set(PlacementKey::Metadata(&path));
        let mut found = Findings::default();
        let (held, failure) = self.records_of(&path, &servers, &mut found).await;
        let Some((first, record)) = held.first() else {
            return Err(match failure {
                // "/file/x" is not a directory's entry, as stat says.
                Some(e) if e.status() == Status::NotFound => {
                    self.why_not_found("verify", &path, e).await
                }
                Some(e) => rpc_err("verify", &path)(e),
                None => fs_err("verify", &path, Status::NotFound),
            });
        };
        if names_dir(given) && !record.meta.is_dir() {
            return Err(fs_err("verify", &path, Status::NotDir));
        }
        for (server, other) in &held[1..] {
            if let Some(what) = record_difference(record, other) {
                found.differences.push(format!(
                    "{} and {} differ in the record's {what}",
                    self.server_name(*first),
                    self.server_name(*server)
                ));
            }
        }
        let meta = record.meta;
        let mut check = ReplicaCheck {
            path,
            meta,
            replicas: servers.len(),
            chunks: 0,
            differences: found.differences,
            unasked: found.unasked,
            repaired: Vec::new(),
        };
        // A symbolic link's target is its chunk 0.
        if !meta.is_dir() && !meta.inline {
            let size = held.iter().map(|(_, r)| r.meta.size).max().unwrap_or(0);
            self.check_chunks(&mut check, size, repair).await;
        }
        Ok(check)
    }

    /// The record each of `servers` holds at `path`, of those that answered with one; a
    /// line in `found` for each other, and why no replica held it (a replica that did not
    /// answer may), if none did.
    async fn records_of(
        &self,
        path: &str,
        servers: &[ServerIndex],
        found: &mut Findings,
    ) -> (Vec<(ServerIndex, ops::RecordReply)>, Option<RpcError>) {
        let req = ops::PathRequest {
            path: path.to_string(),
        };
        let mut held = Vec::new();
        let mut failure: Option<RpcError> = None;
        for (server, record) in self.ask_each::<ops::MetadataOpen>(servers, &req).await {
            match record {
                Some(Ok((reply, _))) => held.push((server, reply)),
                Some(Err(e)) if e.status() == Status::NotFound => {
                    let name = self.server_name(server);
                    found.differences.push(format!("{name}: holds no record"));
                    failure.get_or_insert(e);
                }
                Some(Err(e)) => {
                    found.unasked.push(e.to_string());
                    failure = Some(e);
                }
                None => found.unasked.push(self.not_asked(server)),
            }
        }
        (held, failure)
    }

    /// Compares every chunk of `check.meta`'s file up to `size` across its replicas,
    /// repairing those that differ if `repair`.
    async fn check_chunks(&self, check: &mut ReplicaCheck, size: u64, repair: bool) {
        let meta = check.meta;
        let count = ChunkLayout::new(meta.chunk_size).chunk_count(size);
        let mut found = stream::iter(0..count)
            .map(|index| self.check_chunk(meta, index, size, repair))
            .buffered(CHUNKS_IN_FLIGHT);
        while let Some(chunk) = found.next().await {
            check.differences.extend(chunk.differences);
            check.unasked.extend(chunk.unasked);
            check.repaired.extend(chunk.repaired);
        }
        check.chunks = count;
    }

    /// Reads chunk `index` of file `meta` (up to the file's `size`) from each replica
    /// and names how they differ; with `repair`, writes the reference copy over each that
    /// differs.
    async fn check_chunk(
        &self,
        meta: FileMetadata,
        index: u64,
        size: u64,
        repair: bool,
    ) -> Findings {
        let layout = ChunkLayout::new(meta.chunk_size);
        let start = index * layout.chunk_size();
        let len = layout.chunk_len(size, index);
        let mut found = Findings::default();
        let copies = self.chunk_copies(&meta, index, len, &mut found).await;
        // The copy the others are held against, and a repair copies: the first in ring
        // order (as reads ask them) of those that are the file's whole.
        let Some(reference) = copies.iter().find(|c| c.whole) else {
            if !copies.is_empty() {
                found.differences.push(format!(
                    "chunk {index}: no replica holds the whole of it, and theirs began after \
                     the file was made: its bytes are lost"
                ));
            }
            return found;
        };
        let source = self.server_name(reference.server);
        for copy in &copies {
            let name = self.server_name(copy.server);
            let differ = if !copy.whole {
                format!(
                    "chunk {index}: {name} holds {} of its {len} bytes, and its store began \
                     after the file was made",
                    copy.held
                )
            } else if let Some(at) = reference
                .bytes
                .iter()
                .zip(&copy.bytes)
                .position(|(a, b)| a != b)
            {
                format!(
                    "chunk {index}: {source} and {name} differ from byte {} of the file",
                    start + at as u64
                )
            } else {
                continue;
            };
            if !repair {
                found.differences.push(differ);
                continue;
            }
            match self.copy_chunk(&meta, index, reference, copy).await {
                Ok(()) => found
                    .repaired
                    .push(format!("{differ}: copied from {source} to {name}")),
                Err(e) => found
                    .differences
                    .push(format!("{differ}; the copy failed: {e}")),
            }
        }
        found
    }

    /// Writes `reference`'s bytes of chunk `index` over `copy`'s. Past what the reference
    /// holds its chunk is a hole: a copy that holds only zeros there gets the bytes the
    /// reference holds and one zero byte at the end, which makes its chunk the file's
    /// whole without filling the hole (a sparse file's hole costs a page per chunk, not a
    /// chunk of zeros).
    async fn copy_chunk(
        &self,
        meta: &FileMetadata,
        index: u64,
        reference: &Copy,
        copy: &Copy,
    ) -> Result<(), RpcError> {
        let len = reference.bytes.len() as u64;
        let held = reference.held.min(len);
        let hole_left = held < len && copy.bytes[held as usize..].iter().all(|&b| b == 0);
        if !hole_left {
            let write = chunk_write(meta, index, (0, len), len, None);
            let payload = OutPayload::Owned(reference.bytes.clone());
            return self
                .call_on::<ops::WriteChunk>(copy.server, &write, payload)
                .await
                .map(drop);
        }
        if held > 0 {
            let write = chunk_write(meta, index, (0, held), held, None);
            let payload = OutPayload::Owned(reference.bytes[..held as usize].to_vec());
            self.call_on::<ops::WriteChunk>(copy.server, &write, payload)
                .await?;
        }
        // The file held no bytes past `held` here: the gap left is the hole.
        let end = ops::ChunkWrite {
            hole_before: true,
            ..chunk_write(meta, index, (len - 1, 1), held, None)
        };
        self.call_on::<ops::WriteChunk>(copy.server, &end, OutPayload::Owned(vec![0]))
            .await
            .map(drop)
    }

    /// Each replica's copy of the first `len` bytes of chunk `index` of `meta`; a line in
    /// `found` for each that could not be read.
    async fn chunk_copies(
        &self,
        meta: &FileMetadata,
        index: u64,
        len: u64,
        found: &mut Findings,
    ) -> Vec<Copy> {
        let io = ops::ChunkIo {
            file_id: meta.file_id,
            index,
            offset: 0,
            len,
        };
        let servers = self.replica_set(PlacementKey::Chunk {
            file_id: meta.file_id,
            index,
        });
        let mut copies = Vec::new();
        for (server, copy) in self.ask_each::<ops::ReadChunk>(&servers, &io).await {
            match copy {
                Some(Ok((_, mut bytes))) => {
                    let held = bytes.len() as u64;
                    bytes.resize(len as usize, 0);
                    copies.push(Copy {
                        server,
                        bytes,
                        whole: !self.may_have_lost(server, meta) || held == len,
                        held,
                    });
                }
                // Bytes a server made the chunk anew without: it holds none of the
                // range for sure, and a repair writes it whole.
                Some(Err(e)) if e.status() == Status::Lost => copies.push(Copy {
                    server,
                    bytes: vec![0; len as usize],
                    whole: false,
                    held: 0,
                }),
                Some(Err(e)) => found.unasked.push(format!("chunk {index}: {e}")),
                None => found
                    .unasked
                    .push(format!("chunk {index}: {}", self.not_asked(server))),
            }
        }
        copies
    }

    /// A server left out for not answering lately, named with why.
    fn not_asked(&self, server: ServerIndex) -> String {
        format!(
            "{} not asked: it did not answer a call lately",
            self.server_name(server)
        )
    }

    /// Server `server`'s name, as errors give it.
    pub(super) fn server_name(&self, server: ServerIndex) -> String {
        self.servers[server as usize].name()
    }
}

/// The first part of the record (and inline bytes) in which `b` differs from `a`, if any.
fn record_difference(a: &ops::RecordReply, b: &ops::RecordReply) -> Option<&'static str> {
    let (x, y) = (&a.meta, &b.meta);
    let fields: [(&'static str, bool); 9] = [
        ("file", x.file_id == y.file_id),
        ("kind", x.kind == y.kind),
        ("size", x.size == y.size),
        ("mode", x.mode == y.mode),
        ("owner", (x.uid, x.gid) == (y.uid, y.gid)),
        ("chunk size", x.chunk_size == y.chunk_size),
        ("cut count", x.cut_gen == y.cut_gen),
        ("inline flag", x.inline == y.inline),
        ("inline bytes", a.data == b.data),
    ];
    fields
        .into_iter()
        .find(|(_, same)| !same)
        .map(|(name, _)| name)
}
