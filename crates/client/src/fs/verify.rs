//! Replica checks: whether the replicas of a path's record, and of each chunk of its file,
//! hold the same. Writes go to every replica at once, so replicas can part (two clients'
//! overlapping writes landing in a different order on each, a server back with an empty
//! store that holds none of its chunks until they are written again); a job that
//! measures replication, or trusts it with its only copy, asks here whether they did.

use benchfs_proto::meta::{EntryKind, FileMetadata};
use benchfs_proto::ops::{self, Rpc};
use benchfs_proto::placement::{PlacementKey, ServerIndex};
use benchfs_proto::Status;
use futures_util::future::join_all;
use futures_util::{stream, StreamExt};

use super::data::chunk_write;
use super::{fs_err, norm, rpc_err, FsClient};
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
    /// Copies each record and chunk has (the cluster's replication, or fewer servers).
    pub replicas: usize,
    /// Chunks compared.
    pub chunks: u64,
    /// Each way the replicas differ, or a replica could not be asked, one line each,
    /// naming the servers.
    pub differences: Vec<String>,
    /// Each chunk a repair copied, one line each, naming the servers.
    pub repaired: Vec<String>,
}

impl ReplicaCheck {
    /// Whether every replica answered and held the same.
    pub fn agrees(&self) -> bool {
        self.differences.is_empty()
    }
}

impl FsClient {
    /// Compares what every replica holds of `path`: the record (its file, kind, size,
    /// owner, mode, cut count and, for a small file, its bytes) and, for a file with
    /// chunks, each chunk up to the largest size a replica's record gives (bytes past a
    /// replica's chunk end count as zeros, as reads return a hole). The times are not
    /// compared: each server stamps its own. Fails if no replica holds the path. The root
    /// has no record, and agrees.
    pub async fn check_replicas(&self, path: &str) -> Result<ReplicaCheck, ApiError> {
        self.check_or_repair(path, false).await
    }

    /// [`FsClient::check_replicas`], and each chunk whose copies differ gets the copy of
    /// the first replica (in ring order, as reads ask them) that kept its store since the
    /// file was made, on every replica: a server back with an empty store holds the file's
    /// chunks again, and replicas that two writes at once left apart agree. Records are the
    /// replica repair's (the servers' sweep), not this. Not atomic with writes: a write to
    /// the chunk between its read here and the copy is undone on the replicas copied to,
    /// so repair between a job's phases.
    pub async fn repair_replicas(&self, path: &str) -> Result<ReplicaCheck, ApiError> {
        self.check_or_repair(path, true).await
    }

    async fn check_or_repair(&self, path: &str, repair: bool) -> Result<ReplicaCheck, ApiError> {
        let path = norm(path)?;
        if path == "/" {
            // The root has no record: nothing of it is replicated.
            return Ok(ReplicaCheck {
                path,
                meta: self.root(),
                replicas: self.replicas.min(self.servers.len()),
                chunks: 0,
                differences: Vec::new(),
                repaired: Vec::new(),
            });
        }
        let servers = self.replica_set(PlacementKey::Metadata(&path));
        let (held, mut differences, failure) = self.records_of(&path, &servers).await;
        let Some((first, record)) = held.first() else {
            return Err(match failure {
                Some(e) => rpc_err("verify", &path)(e),
                None => fs_err("verify", &path, Status::NotFound),
            });
        };
        for (server, other) in &held[1..] {
            if let Some(what) = record_difference(record, other) {
                differences.push(format!(
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
            differences,
            repaired: Vec::new(),
        };
        if meta.kind == EntryKind::File && !meta.inline {
            let size = held.iter().map(|(_, r)| r.meta.size).max().unwrap_or(0);
            self.check_chunks(&mut check, size, repair).await;
        }
        Ok(check)
    }

    /// The record each of `servers` holds at `path`: those that answered with one, a line
    /// for each that did not, and why no replica held it (a replica that did not answer
    /// may), if none did.
    async fn records_of(
        &self,
        path: &str,
        servers: &[ServerIndex],
    ) -> (
        Vec<(ServerIndex, ops::RecordReply)>,
        Vec<String>,
        Option<RpcError>,
    ) {
        let req = ops::PathRequest {
            path: path.to_string(),
        };
        let records = self.ask_each::<ops::MetadataOpen>(servers, &req).await;
        let mut differences = Vec::new();
        let mut held = Vec::new();
        let mut failure: Option<RpcError> = None;
        for (&server, record) in servers.iter().zip(records) {
            match record {
                Ok((reply, _)) => held.push((server, reply)),
                Err(e) => {
                    differences.push(match e.status() {
                        Status::NotFound => {
                            format!("{}: holds no record", self.server_name(server))
                        }
                        _ => e.to_string(),
                    });
                    if failure
                        .as_ref()
                        .is_none_or(|f| f.status() == Status::NotFound)
                    {
                        failure = Some(e);
                    }
                }
            }
        }
        (held, differences, failure)
    }

    /// Compares every chunk of `check.meta`'s file up to `size` across its replicas,
    /// repairing those that differ if `repair`.
    async fn check_chunks(&self, check: &mut ReplicaCheck, size: u64, repair: bool) {
        let chunk_size = check.meta.chunk_size.max(1);
        let count = size.div_ceil(chunk_size);
        let meta = check.meta;
        let mut found = stream::iter(0..count)
            .map(|index| self.check_chunk(meta, index, size, repair))
            .buffered(CHUNKS_IN_FLIGHT);
        while let Some(chunk) = found.next().await {
            check.differences.extend(chunk.differences);
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
    ) -> ChunkFindings {
        let chunk_size = meta.chunk_size.max(1);
        let start = index * chunk_size;
        let len = (size - start).min(chunk_size);
        let mut found = ChunkFindings::default();
        let held = self.chunk_copies(&meta, index, len, &mut found).await;
        // The copy the others are held against, and a repair copies: the first in ring
        // order (as reads ask them) of those that kept their store since the file was made.
        let kept = |&(server, _): &(ServerIndex, Vec<u8>)| !self.may_have_lost(server, &meta);
        let Some(reference) = held
            .iter()
            .position(kept)
            .or((!held.is_empty()).then_some(0))
        else {
            return found;
        };
        let (source, bytes) = &held[reference];
        let source_kept = kept(&held[reference]);
        for (server, copy) in &held {
            let Some(at) = bytes.iter().zip(copy).position(|(a, b)| a != b) else {
                continue;
            };
            let differ = format!(
                "chunk {index}: {} and {} differ from byte {} of the file",
                self.server_name(*source),
                self.server_name(*server),
                start + at as u64
            );
            if !repair || !source_kept {
                found.differences.push(differ);
                continue;
            }
            let write = chunk_write(&meta, index, (0, len), len, None);
            let payload = OutPayload::Owned(bytes.clone());
            match self
                .call_on::<ops::WriteChunk>(*server, &write, payload)
                .await
            {
                Ok(_) => found
                    .repaired
                    .push(format!("{differ}: copied to {}", self.server_name(*server))),
                Err(e) => found
                    .differences
                    .push(format!("{differ}; the copy failed: {e}")),
            }
        }
        found
    }

    /// Each replica's copy of the first `len` bytes of chunk `index` of `meta` (a hole
    /// past its chunk's end as zeros); a line in `found` for each that could not be read.
    async fn chunk_copies(
        &self,
        meta: &FileMetadata,
        index: u64,
        len: u64,
        found: &mut ChunkFindings,
    ) -> Vec<(ServerIndex, Vec<u8>)> {
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
        let copies = self.ask_each::<ops::ReadChunk>(&servers, &io).await;
        let mut held = Vec::new();
        for (&server, copy) in servers.iter().zip(copies) {
            match copy {
                Ok((_, mut bytes)) => {
                    bytes.resize(len as usize, 0);
                    held.push((server, bytes));
                }
                Err(e) => found.differences.push(format!("chunk {index}: {e}")),
            }
        }
        held
    }

    /// Asks each of `servers` `req` at once; their answers with payloads, in order.
    async fn ask_each<R: Rpc>(
        &self,
        servers: &[ServerIndex],
        req: &R::Request,
    ) -> Vec<Result<(R::Reply, Vec<u8>), RpcError>> {
        join_all(
            servers
                .iter()
                .map(|&s| self.call_on::<R>(s, req, OutPayload::none())),
        )
        .await
    }

    /// Server `server`'s name, as errors give it.
    fn server_name(&self, server: ServerIndex) -> String {
        self.servers[server as usize].name()
    }
}

/// How the replicas of one chunk differ, and what a repair copied.
#[derive(Default)]
struct ChunkFindings {
    differences: Vec<String>,
    repaired: Vec<String>,
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
