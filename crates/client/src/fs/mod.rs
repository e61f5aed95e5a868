//! The file-system client: path operations, open files, chunked I/O, replication and
//! caches, as async methods on [`FsClient`] (one per thread). [`crate::api::BenchFS`] wraps it
//! in a blocking API.
//!
//! **Consistency (close-to-open, like NFS):** `open` always asks the metadata owner, so it
//! sees every change closed or fsynced before it (an O_CREAT open that `inline` defers asks
//! at its close, with the create); a file's size is pushed to its metadata
//! owner on `close`, `fsync` and `stat` of a file this client has open, not on every write.
//! Chunk data goes to the servers before `write` returns, or with write-behind (`pipeline`)
//! before `close` and `fsync` return, and before the size that covers it is published, so
//! readers that open after the writer closed see it. Read-ahead (`read_ahead`) keeps what
//! it fetched per handle, so a handle opened later never sees bytes from before its open.
//! Cached metadata serves only parent checks and path walks (a `stat` asks the owner); it
//! expires after `cache_ttl_secs` (0: kept until this client changes the path). A create,
//! removal or rename moves its directory's times (`dir_times`).
//!
//! The methods are split by job: `routing` (servers, connections, replicas), `handles`
//! (open files), `data` (pread/pwrite and lending), `pipeline` (write-behind),
//! `read_ahead`, `inline` (files kept in their records, the deferred create), `namespace`
//! (records and directory operations), `dir_times`, `cache` and `fanout` (listing across servers),
//! `space` (statfs).

mod attrs;
mod cache;
mod data;
mod dir_times;
mod fanout;
mod handles;
mod inline;
mod lost;
mod namespace;
mod pipeline;
mod read_ahead;
mod routing;
mod sizes;
mod space;
mod tree;
mod verify;

use foldhash::HashMap;
use std::cell::{Cell, OnceCell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use benchfs_config::registry::{self, RegistryError, ServerEntry};
use benchfs_config::ServerConfig;
use benchfs_proto::meta::{EntryKind, FileMetadata, Owner};
use benchfs_proto::ops;
use benchfs_proto::path;
use benchfs_proto::placement::{PlacementRing, ServerIndex};
use benchfs_proto::Status;
use benchfs_ucx::{Context, Features, Role};
use futures_util::future::join_all;

use crate::error::ApiError;
use crate::rpc::{ClientOptions, OutPayload, RpcClient, RpcError};
use cache::{ChunkCache, MetadataCache};
use handles::OpenFile;
pub use handles::WriteEnds;
pub use inline::CATCH_UP_AFTER;
use pipeline::Pipeline;
pub use pipeline::PipelineCounters;
pub use routing::CallCounters;
use routing::ServerSlot;
pub use space::FsSpace;
pub use verify::ReplicaCheck;

/// A file handle number, as `open` returns it.
pub type Fd = u64;

/// Where `seek` counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whence {
    /// From the start of the file.
    Start,
    /// From the current position.
    Current,
    /// From the end of the file.
    End,
}

/// A directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's name.
    pub name: String,
    /// Its metadata.
    pub meta: FileMetadata,
}

/// The per-thread file-system client.
pub struct FsClient {
    rpc: Rc<RpcClient>,
    ring: PlacementRing,
    servers: Vec<ServerSlot>,
    replicas: usize,
    files: RefCell<HashMap<Fd, OpenFile>>,
    next_fd: Cell<Fd>,
    meta_cache: RefCell<MetadataCache>,
    chunk_cache: RefCell<ChunkCache>,
    registry_dir: std::path::PathBuf,
    /// Whether this client's transports include shared memory (decided at start).
    offers_shared_memory: bool,
    call_counters: Cell<CallCounters>,
    /// Chunk size asked for in each file create; 0 takes the servers' configured size.
    create_chunk_size: Cell<u64>,
    /// Owner of the records this client creates.
    owner: Cell<Owner>,
    /// Write-behind and read-ahead.
    pipeline: Pipeline,
    /// Most bytes of a file this client keeps in its record (`storage.inline_bytes`; 0:
    /// off): opens with O_CREAT are deferred, and small files made in one request.
    inline_limit: u64,
    /// When this client last moved each directory's times (`dir_times`).
    dirs_touched: RefCell<HashMap<String, std::time::Instant>>,
    /// The root's metadata, which no server holds: made at its first use, since its times
    /// read every membership marker of the registry (see [`FsClient::root`]).
    root: OnceCell<FileMetadata>,
    /// Chunk reads that came back shorter than asked (a hole, or a file cut since the
    /// handle looked): a handle's read that met one checks the file's size.
    short_reads: Cell<u64>,
}

impl std::fmt::Debug for FsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsClient")
            .field("servers", &self.servers.len())
            .finish()
    }
}

/// The process's effective user and group, from `/proc/self/status` (this crate has no
/// unsafe code to call geteuid); root's if that cannot be read.
pub fn process_owner() -> Owner {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|ids| ids.split_whitespace().nth(1))
            .and_then(|id| id.parse().ok())
            .unwrap_or(0)
    };
    Owner {
        uid: effective("Uid:"),
        gid: effective("Gid:"),
    }
}

/// Root directory metadata; "/" has no record on any server. Its times are the cluster's
/// start (the same for every client of it, see [`registry::cluster_born_ns`]), else
/// `earliest_entry` (the earliest store birth the servers' entries give), else now.
fn root_meta(registry_dir: &std::path::Path, earliest_entry: Option<u64>) -> FileMetadata {
    let born_ns = registry::cluster_born_ns(registry_dir)
        .or(earliest_entry)
        .unwrap_or_else(benchfs_proto::meta::now_ns);
    FileMetadata {
        file_id: benchfs_proto::meta::ROOT_FILE_ID,
        kind: EntryKind::Directory,
        size: 0,
        mode: 0o755,
        uid: 0,
        gid: 0,
        chunk_size: benchfs_proto::limits::CHUNK_SIZE_MIN,
        mtime_ns: born_ns,
        ctime_ns: born_ns,
        atime_ns: born_ns,
        birth_ns: born_ns,
        inline: false,
        cut_gen: 0,
    }
}

fn fs_err(op: &'static str, path: &str, status: Status) -> ApiError {
    ApiError::Fs {
        op,
        path: path.to_string(),
        status,
    }
}

fn rpc_err<'a>(op: &'static str, path: &'a str) -> impl Fn(RpcError) -> ApiError + 'a {
    move |source| {
        tracing::debug!(error = %source, op, path, "rpc failed");
        ApiError::Rpc {
            op,
            path: path.to_string(),
            source,
        }
    }
}

/// `path` normalised, or the path error naming it.
pub(crate) fn norm(path: &str) -> Result<String, ApiError> {
    path::normalize(path).map_err(|source| ApiError::Path {
        path: path.to_string(),
        source,
    })
}

/// Whether `path` (as given) ends in a '/' other than the root's, or in a "." component:
/// POSIX lets such a path resolve only to a directory ("/f/." of a file is ENOTDIR).
pub(crate) fn names_dir(path: &str) -> bool {
    path.len() > 1 && (path.ends_with('/') || path.ends_with("/."))
}

/// Whether `path` (as given) ends in a "." component ("/d/." or "/d/./"): it names the
/// directory itself, not an entry of its parent, so calls that make or remove an entry
/// refuse it as Linux does (mkdir EEXIST or ENOENT, rmdir EINVAL, unlink EISDIR, rename
/// EBUSY, open with O_CREAT EISDIR).
pub(crate) fn ends_in_dot(path: &str) -> bool {
    let trimmed = path.trim_end_matches('/');
    trimmed == "." || trimmed.ends_with("/.")
}

impl FsClient {
    /// `NotDir` when `given` names a directory by its form (a trailing '/') but its
    /// record, at `path` (normalised), is not one; lookup errors (`NotFound`) as they come.
    pub(crate) async fn check_dir_form(
        &self,
        op: &'static str,
        given: &str,
        path: &str,
    ) -> Result<(), ApiError> {
        if names_dir(given) && !self.lookup(op, path, false).await?.is_dir() {
            return Err(fs_err(op, path, Status::NotDir));
        }
        Ok(())
    }

    /// Connects to the servers published in `config.network.registry_dir`, presenting
    /// `secret` in every handshake. Call inside a tokio `LocalSet`. A registry directory
    /// that is missing or lists no server is [`ApiError::NoServers`], whose message says
    /// how to start one.
    pub fn connect(config: &ServerConfig, secret: Vec<u8>) -> Result<FsClient, ApiError> {
        if secret.len() > benchfs_proto::ops::TOKEN_LEN_MAX {
            return Err(ApiError::SecretTooLong {
                len: secret.len(),
                max: benchfs_proto::ops::TOKEN_LEN_MAX,
            });
        }
        let entries = FsClient::published_servers(&config.network.registry_dir)?;
        FsClient::new(config, entries, secret)
    }

    /// Copies of each record and chunk: the cluster's (its servers publish it), else the
    /// configuration's.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The servers published in the registry `dir`, and in the place of each member of
    /// the cluster that publishes no entry now (restarting, or stopped; see
    /// [`registry::unpublished_members`]) an entry at [`registry::UNPUBLISHED_ADDR`]: the
    /// ring must have every member, or files would go where the clients that know it do
    /// not look, and read back as missing or zeros once it is back. Calls to such a
    /// member fail as to a server that is down until it publishes. A registry that is
    /// missing or lists no server is [`ApiError::NoServers`], whose message says how to
    /// start one.
    pub fn published_servers(dir: &std::path::Path) -> Result<Vec<ServerEntry>, ApiError> {
        let mut entries = match registry::read(dir) {
            Err(RegistryError::Io { path, source, .. })
                if path == dir && source.kind() == std::io::ErrorKind::NotFound =>
            {
                Vec::new()
            }
            other => other?,
        };
        if entries.is_empty() {
            return Err(ApiError::NoServers {
                dir: dir.to_path_buf(),
            });
        }
        for node in registry::unpublished_members(dir, &entries) {
            tracing::warn!(
                node,
                "a member of the cluster publishes no address (stopped, or restarting): calls to it fail until it does"
            );
            entries.push(ServerEntry::new(node, registry::UNPUBLISHED_ADDR));
        }
        Ok(entries)
    }

    /// Connects to the servers listed in `entries`. Call inside a tokio `LocalSet`.
    pub fn new(
        config: &ServerConfig,
        entries: Vec<ServerEntry>,
        secret: Vec<u8>,
    ) -> Result<FsClient, ApiError> {
        if entries.is_empty() {
            return Err(ApiError::NoServers {
                dir: config.network.registry_dir.clone(),
            });
        }
        let replicas = cluster_setting(&entries, "replication.replicas", |e| e.replicas)?
            .unwrap_or(config.replication.replicas);
        let virtual_nodes =
            cluster_setting(&entries, "placement.virtual_nodes", |e| e.virtual_nodes)?
                .unwrap_or(config.placement.virtual_nodes);
        // Files carry their chunk size, and a server refuses chunks larger than its own:
        // servers started with different sizes fail writes with a bare EINVAL.
        cluster_setting(&entries, "storage.chunk_size", published_chunk_size)?;
        let shared_memory = config.network.shared_memory && !shared_memory_refused(&entries);
        let ring = PlacementRing::new(entries.iter().map(|e| e.node_id.as_str()), virtual_nodes)?;
        let mut slots: Vec<Option<ServerSlot>> = (0..entries.len()).map(|_| None).collect();
        for entry in entries {
            let index = ring
                .index_of(&entry.node_id)
                .expect("every entry is on the ring") as usize;
            slots[index] = Some(ServerSlot::new(entry));
        }
        let context = Context::with_config(
            Features::ALL,
            &benchfs_ucx::transport_config(shared_memory, Role::Client),
        )?;
        let options = ClientOptions {
            rpc_timeout: config.network.rpc_timeout,
            rdma_threshold: config.network.rendezvous_threshold_bytes as usize,
            busy_poll: config.network.busy_poll,
            inflight_max: config.network.inflight_max as usize,
            secret,
            name: format!("client-{}", std::process::id()),
        };
        let rpc = RpcClient::start(&context, options)?;
        let ttl = (config.cache.cache_ttl_secs > 0)
            .then(|| Duration::from_secs(config.cache.cache_ttl_secs));
        Ok(FsClient {
            rpc,
            ring,
            servers: slots
                .into_iter()
                .map(|s| s.expect("one slot per ring node"))
                .collect(),
            replicas: replicas as usize,
            files: RefCell::default(),
            next_fd: Cell::new(3),
            meta_cache: RefCell::new(MetadataCache::new(
                config.cache.metadata_cache_entries as usize,
                ttl,
            )),
            chunk_cache: RefCell::new(ChunkCache::new(
                config.cache.chunk_cache_mb.saturating_mul(1 << 20),
                ttl,
            )),
            registry_dir: config.network.registry_dir.clone(),
            offers_shared_memory: shared_memory,
            call_counters: Cell::default(),
            create_chunk_size: Cell::new(0),
            owner: Cell::new(process_owner()),
            pipeline: Pipeline::new(&config.client),
            inline_limit: config.storage.inline_bytes,
            dirs_touched: RefCell::default(),
            root: OnceCell::new(),
            short_reads: Cell::new(0),
        })
    }

    /// The root's metadata. Made at the first call, not at the client's start: it reads a
    /// marker file per server, which a large job's every rank would otherwise pay at start
    /// on a shared registry.
    fn root(&self) -> FileMetadata {
        *self.root.get_or_init(|| {
            let earliest_entry = self
                .servers
                .iter()
                .filter_map(|slot| registry::born_ns(&slot.entry.borrow()))
                .min();
            root_meta(&self.registry_dir, earliest_entry)
        })
    }

    /// Chunk reads of this client so far that came back shorter than asked: a hole, or a
    /// file another client cut since the reader looked (a mount checks the size then).
    pub fn short_reads(&self) -> u64 {
        self.short_reads.get()
    }

    /// Sets the chunk size of the files this client creates from now on: a power of two
    /// within the limits, or 0 for the servers' configured size. An open that creates
    /// fails ([`ApiError::ChunkSizeAboveServers`]) while it is above the servers'.
    pub fn set_chunk_size(&self, bytes: u64) -> Result<(), ApiError> {
        use benchfs_proto::limits;
        if bytes != 0 && !limits::is_chunk_size(bytes, limits::CHUNK_SIZE_MAX) {
            return Err(ApiError::Fs {
                op: "set_chunk_size",
                path: bytes.to_string(),
                status: Status::InvalidArgument,
            });
        }
        self.create_chunk_size.set(bytes);
        Ok(())
    }

    /// Refuses a create while the chunk size asked for is above the servers' (as their
    /// registry entries say): the servers' refusal carries no reason.
    pub(super) fn check_create_chunk_size(&self) -> Result<(), ApiError> {
        let bytes = self.create_chunk_size.get();
        // 0 is the servers' own size; reading every server's entry per create cost as much
        // as the rest of an open with one server, and grows with the servers.
        if bytes == 0 {
            return Ok(());
        }
        match self.servers_chunk_size().filter(|&servers| bytes > servers) {
            Some(servers) => Err(ApiError::ChunkSizeAboveServers { bytes, servers }),
            None => Ok(()),
        }
    }

    /// The smallest chunk size the servers published, if any did.
    fn servers_chunk_size(&self) -> Option<u64> {
        self.servers
            .iter()
            .filter_map(|s| published_chunk_size(&s.entry.borrow()))
            .min()
    }

    /// The servers, in ring order.
    pub fn servers(&self) -> Vec<ServerEntry> {
        self.servers
            .iter()
            .map(|s| s.entry.borrow().clone())
            .collect()
    }

    /// Counters of every server, in ring order.
    pub async fn server_stats(&self) -> Vec<(ServerEntry, Result<ops::StatsReply, ApiError>)> {
        self.stats_for("stats", "/").await
    }

    /// [`FsClient::server_stats`], for operation `op` on `path`, which a failure names.
    pub(super) async fn stats_for(
        &self,
        op: &'static str,
        path: &str,
    ) -> Vec<(ServerEntry, Result<ops::StatsReply, ApiError>)> {
        let all = self.all_servers().map(|s| async move {
            let r = self
                .call_on::<ops::Stats>(s, &ops::Empty, OutPayload::none())
                .await
                .map(|(r, _)| r);
            (
                self.servers[s as usize].entry.borrow().clone(),
                r.map_err(rpc_err(op, path)),
            )
        });
        join_all(all).await
    }

    /// The transports UCX chose for this client's connection to each server (see
    /// [`Connection::transports`](benchfs_rpc::Connection::transports)), connecting first
    /// where there is no connection yet.
    pub async fn server_transports(&self) -> Vec<(ServerEntry, Result<Vec<String>, ApiError>)> {
        let all = self.all_servers().map(|s| async move {
            let r = self.conn(s).await.map(|conn| conn.transports());
            (
                self.servers[s as usize].entry.borrow().clone(),
                r.map_err(rpc_err("connect", "/")),
            )
        });
        join_all(all).await
    }

    /// Measures one server's chunk store (`StoreProbe`): the server writes `bytes` in
    /// `block`-sized writes to a scratch file of its own, syncs, reads them back and
    /// removes them, and reports how long writing and reading took. The server refuses 0
    /// bytes, more than [`STORE_PROBE_BYTES_MAX`](benchfs_proto::limits::STORE_PROBE_BYTES_MAX),
    /// a block of 0 or above its chunk size (EINVAL), more than its store has room for
    /// (ENOSPC) and a second probe while one runs (EAGAIN). The call has the client's RPC
    /// timeout, which must allow for the probe.
    pub async fn probe_store(
        &self,
        server: ServerIndex,
        bytes: u64,
        block: u32,
    ) -> Result<ops::StoreProbeReply, ApiError> {
        if server as usize >= self.servers.len() {
            return Err(ApiError::Fs {
                op: "probe_store",
                path: format!("server {server}"),
                status: Status::InvalidArgument,
            });
        }
        let req = ops::StoreProbeRequest { bytes, block };
        self.call_on::<ops::StoreProbe>(server, &req, OutPayload::none())
            .await
            .map(|(reply, _)| reply)
            .map_err(rpc_err("probe_store", "/"))
    }

    /// A payload holding a copy of `data`, as a write sends it.
    pub fn copy_payload(&self, data: &[u8]) -> OutPayload {
        self.rpc.payload(data)
    }

    /// Round trip to one server with a payload it discards (for the RPC benchmark). The
    /// server receives the payload into a store buffer, as a write's, so it may be at
    /// most a chunk.
    pub async fn ping(&self, server: ServerIndex, payload: OutPayload) -> Result<(), ApiError> {
        self.call_on::<ops::Ping>(server, &ops::Empty, payload)
            .await
            .map(drop)
            .map_err(rpc_err("ping", "/"))
    }
}

/// Whether some server in `entries` publishes that it takes no shared memory. A client
/// must then not offer it: UCX 1.13 aborts such a server (`wireup.c`: `ep_addr_index <
/// address->num_ep_addrs`) when a client's lanes include shared memory, and every server
/// the client reached went down. A client given only the registry has the default, on.
fn shared_memory_refused(entries: &[ServerEntry]) -> bool {
    let refused = entries.iter().find(|e| takes_no_shared_memory(e));
    if let Some(entry) = refused {
        tracing::info!(
            server = entry.node_id,
            "a server takes no shared memory: this client connects without it"
        );
    }
    refused.is_some()
}

/// The chunk size `entry` publishes for its server, if it does.
fn published_chunk_size(entry: &ServerEntry) -> Option<u64> {
    entry.settings.get("chunk_size")?.parse().ok()
}

/// Whether `entry` publishes that its server takes no shared memory.
fn takes_no_shared_memory(entry: &ServerEntry) -> bool {
    entry
        .settings
        .get(registry::SHARED_MEMORY_SETTING)
        .map(String::as_str)
        == Some("false")
}

/// A setting every server publishes in its registry entry (`field`): the cluster's value,
/// which a client uses whatever its own configuration says (a client given only the
/// registry would otherwise write one copy where the servers keep two). `None` when no
/// entry says; an error naming two servers when they disagree.
fn cluster_setting<T: Copy + PartialEq + std::fmt::Display>(
    entries: &[ServerEntry],
    key: &'static str,
    field: impl Fn(&ServerEntry) -> Option<T>,
) -> Result<Option<T>, ApiError> {
    let mut said = entries.iter().filter_map(|e| field(e).map(|v| (e, v)));
    let Some((first, value)) = said.next() else {
        return Ok(None);
    };
    match said.find(|&(_, v)| v != value) {
        None => Ok(Some(value)),
        Some((other, v)) => Err(ApiError::Config(benchfs_config::ConfigError::Invalid {
            key,
            reason: format!(
                "the servers in the registry disagree: {} has {value}, {} has {v}",
                first.node_id, other.node_id
            ),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(node: &str, replicas: Option<u32>) -> ServerEntry {
        ServerEntry {
            replicas,
            ..ServerEntry::new(node, "127.0.0.1:1".parse().unwrap())
        }
    }

    #[test]
    fn the_cluster_setting_is_the_one_its_servers_publish() {
        let field = |e: &ServerEntry| e.replicas;
        let key = "replication.replicas";
        let agreed = [entry("a", Some(2)), entry("b", None), entry("c", Some(2))];
        assert_eq!(cluster_setting(&agreed, key, field).unwrap(), Some(2));
        let silent = [entry("a", None), entry("b", None)];
        assert_eq!(cluster_setting(&silent, key, field).unwrap(), None);
        let split = [entry("a", Some(2)), entry("b", Some(1))];
        let err = cluster_setting(&split, key, field).unwrap_err().to_string();
        assert!(
            err.contains(key) && err.contains("a has 2") && err.contains("b has 1"),
            "{err}"
        );
    }
}
