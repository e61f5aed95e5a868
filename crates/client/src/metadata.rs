//! [`MetadataManager`]: a client's view of where metadata lives, by path.
//!
//! A manager knows the ring of nodes and stores and fetches a path's record on the node
//! that owns it. Connected to a cluster ([`MetadataManager::connect`]), it goes through the
//! file system itself, so there is one namespace: storing a record creates the file (or
//! updates it) on its owning servers, and the servers, not the caller, hand out inode
//! numbers, so no two files ever share chunks. With no cluster ([`MetadataManager::new`]),
//! the nodes are names added with [`MetadataManager::add_node`] and each keeps its records
//! in memory: a simulation of placement for tests and design studies, with the same ring
//! the servers use.
//!
//! ```
//! use benchfs_client::metadata::{CachePolicy, FileMetadata, MetadataManager};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let manager = MetadataManager::new(CachePolicy::default());
//! manager.add_node("node1".to_string());
//! let metadata = FileMetadata::new(1, "/data/file.txt".to_string(), 1024);
//! manager.store_file_metadata(metadata).await?;
//! let retrieved = manager.get_file_metadata("/data/file.txt").await?;
//! assert_eq!(retrieved.size, 1024);
//! # Ok::<(), benchfs_client::ApiError>(())
//! # }).unwrap();
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use foldhash::HashMap;

use benchfs_config::ServerConfig;
use benchfs_proto::limits::{
    CACHE_TTL_SECS_DEFAULT, CHUNK_SIZE_DEFAULT, METADATA_CACHE_ENTRIES_DEFAULT,
    VIRTUAL_NODES_DEFAULT,
};
use benchfs_proto::meta::{self, EntryKind};
use benchfs_proto::placement::{PlacementKey, PlacementRing};
use benchfs_proto::Status;

use crate::api::{BenchFS, FILE_MODE_DEFAULT};
use crate::error::ApiError;
use crate::flags::OpenFlags;
use crate::fs::norm;

/// How a connected manager caches the records it fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    /// Records kept; 0 turns the cache off, so every lookup asks the owner.
    pub entries: u64,
    /// How long a cached record is trusted; `None` until this client changes the path.
    pub ttl: Option<Duration>,
}

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy {
            entries: METADATA_CACHE_ENTRIES_DEFAULT,
            ttl: ttl_of(CACHE_TTL_SECS_DEFAULT),
        }
    }
}

impl CachePolicy {
    /// The policy of a configuration's `[cache]` section.
    pub fn from_config(config: &ServerConfig) -> CachePolicy {
        CachePolicy {
            entries: config.cache.metadata_cache_entries,
            ttl: ttl_of(config.cache.cache_ttl_secs),
        }
    }
}

/// A `cache_ttl_secs` value as a TTL: 0 is none (kept until this client changes the path).
fn ttl_of(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// A path and its metadata record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMetadata {
    /// The absolute path.
    pub path: String,
    /// The inode number. A cluster assigns its own when it creates the file.
    pub file_id: u64,
    /// File or directory.
    pub kind: EntryKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Last modification, in nanoseconds since the Unix epoch.
    pub mtime_ns: u64,
    /// Last status change, in nanoseconds since the Unix epoch.
    pub ctime_ns: u64,
}

impl FileMetadata {
    /// A regular file's record, mode [`FILE_MODE_DEFAULT`], changed now.
    pub fn new(file_id: u64, path: String, size: u64) -> FileMetadata {
        let now = meta::now_ns();
        FileMetadata {
            path,
            file_id,
            kind: EntryKind::File,
            size,
            mode: FILE_MODE_DEFAULT,
            mtime_ns: now,
            ctime_ns: now,
        }
    }

    /// The record of `path` as a server keeps it.
    pub fn from_record(path: String, record: &meta::FileMetadata) -> FileMetadata {
        FileMetadata {
            path,
            file_id: record.file_id,
            kind: record.kind,
            size: record.size,
            mode: record.mode,
            mtime_ns: record.mtime_ns,
            ctime_ns: record.ctime_ns,
        }
    }

    fn record(&self) -> meta::FileMetadata {
        meta::FileMetadata {
            file_id: self.file_id,
            kind: self.kind,
            size: self.size,
            mode: self.mode,
            uid: 0,
            gid: 0,
            chunk_size: CHUNK_SIZE_DEFAULT,
            mtime_ns: self.mtime_ns,
            ctime_ns: self.ctime_ns,
            atime_ns: self.mtime_ns,
            birth_ns: self.ctime_ns,
            inline: false,
            cut_gen: 0,
        }
    }
}

/// The nodes of a manager with no cluster, each with its records in memory.
#[derive(Default)]
struct LocalNodes {
    ring: Option<PlacementRing>,
    tables: HashMap<String, BTreeMap<String, meta::FileMetadata>>,
}

impl LocalNodes {
    /// The node owning `path`, if there is a node.
    fn owner(&self, path: &str) -> Option<String> {
        let ring = self.ring.as_ref()?;
        let index = ring.owner(PlacementKey::Metadata(path));
        ring.nodes().get(index as usize).cloned()
    }

    fn owner_or_err(&self, op: &'static str, path: &str) -> Result<String, ApiError> {
        self.owner(path).ok_or_else(|| ApiError::Fs {
            op,
            path: path.to_string(),
            status: Status::Unavailable,
        })
    }
}

/// A client's view of the metadata: the ring of nodes, and records stored and fetched by
/// path on the node that owns it. One per thread, like the client.
pub struct MetadataManager {
    policy: CachePolicy,
    /// The nodes and records of a manager with no cluster. Never borrowed across an await.
    local: RefCell<LocalNodes>,
    /// The cluster of a connected manager.
    cluster: Option<BenchFS>,
}

impl std::fmt::Debug for MetadataManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataManager")
            .field("policy", &self.policy)
            .field("nodes", &self.nodes())
            .finish()
    }
}

impl MetadataManager {
    /// A manager with no cluster: add nodes with [`MetadataManager::add_node`]; records
    /// are kept in memory per node. A local manager has nothing to cache, so the policy
    /// only describes what a connected one would do.
    pub fn new(policy: CachePolicy) -> MetadataManager {
        MetadataManager {
            policy,
            local: RefCell::default(),
            cluster: None,
        }
    }

    /// A manager over the cluster published in `config.network.registry_dir`, caching as
    /// `policy` says.
    pub async fn connect(
        mut config: ServerConfig,
        policy: CachePolicy,
    ) -> Result<MetadataManager, ApiError> {
        config.cache.metadata_cache_entries = policy.entries;
        config.cache.cache_ttl_secs = policy.ttl.map_or(0, |t| t.as_secs().max(1));
        let fs = BenchFS::new(config).await?;
        Ok(MetadataManager {
            policy,
            local: RefCell::default(),
            cluster: Some(fs),
        })
    }

    /// The cache policy.
    pub fn policy(&self) -> CachePolicy {
        self.policy
    }

    /// Adds a node to a local manager's ring, moving the records it now owns to it (as a
    /// rebalancing cluster would); false if it was there already, if the ring refuses it
    /// (see [`PlacementRing::new`]), or if the manager is connected (a cluster's nodes are
    /// the servers in its registry).
    pub fn add_node(&self, node_id: String) -> bool {
        if self.cluster.is_some() {
            return false;
        }
        let mut local = self.local.borrow_mut();
        let mut ids: Vec<String> = local.tables.keys().cloned().collect();
        if ids.contains(&node_id) {
            return false;
        }
        ids.push(node_id.clone());
        match PlacementRing::new(&ids, VIRTUAL_NODES_DEFAULT) {
            Ok(ring) => local.ring = Some(ring),
            Err(e) => {
                tracing::warn!(node = %node_id, error = %e, "node not added to the ring");
                return false;
            }
        }
        let records: Vec<(String, meta::FileMetadata)> =
            local.tables.values_mut().flat_map(std::mem::take).collect();
        local.tables.insert(node_id, BTreeMap::new());
        for (path, record) in records {
            if let Some(owner) = local.owner(&path) {
                local.tables.entry(owner).or_default().insert(path, record);
            }
        }
        true
    }

    /// The nodes in ring order (a connected manager: the registry's servers).
    pub fn nodes(&self) -> Vec<String> {
        match &self.cluster {
            Some(fs) => fs
                .client()
                .servers()
                .into_iter()
                .map(|s| s.node_id)
                .collect(),
            None => self
                .local
                .borrow()
                .ring
                .as_ref()
                .map_or_else(Vec::new, |r| r.nodes().to_vec()),
        }
    }

    /// The node that owns `path`'s record, if there is a node.
    pub fn owner(&self, path: &str) -> Result<Option<String>, ApiError> {
        let path = norm(path)?;
        Ok(match &self.cluster {
            Some(fs) => fs.client().metadata_owner(&path),
            None => self.local.borrow().owner(&path),
        })
    }

    /// Stores a record on the node that owns its path. A connected manager creates the
    /// file if it does not exist (its parent must) and sets its size and, for a file it
    /// creates, its mode; the servers keep their own inode number and times.
    pub async fn store_file_metadata(&self, metadata: FileMetadata) -> Result<(), ApiError> {
        let path = norm(&metadata.path)?;
        let Some(fs) = &self.cluster else {
            let mut local = self.local.borrow_mut();
            let owner = local.owner_or_err("store metadata", &path)?;
            let record = metadata.record();
            local.tables.entry(owner).or_default().insert(path, record);
            return Ok(());
        };
        let flags = OpenFlags::CREATE | OpenFlags::WRITE;
        let fd = fs.open_with_mode(&path, flags, metadata.mode).await?;
        fs.close(fd).await?;
        fs.truncate(&path, metadata.size).await
    }

    /// The record of `path`, from the node that owns it.
    pub async fn get_file_metadata(&self, path: &str) -> Result<FileMetadata, ApiError> {
        let path = norm(path)?;
        let Some(fs) = &self.cluster else {
            let local = self.local.borrow();
            let owner = local.owner_or_err("get metadata", &path)?;
            let record = local.tables.get(&owner).and_then(|t| t.get(&path));
            return match record {
                Some(record) => Ok(FileMetadata::from_record(path, record)),
                None => Err(ApiError::Fs {
                    op: "get metadata",
                    path,
                    status: Status::NotFound,
                }),
            };
        };
        let record = fs.stat(&path).await?;
        Ok(FileMetadata::from_record(path, &record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    fn manager(nodes: &[&str]) -> MetadataManager {
        let m = MetadataManager::new(CachePolicy::default());
        for n in nodes {
            assert!(m.add_node(n.to_string()), "{n} is added once");
        }
        m
    }

    fn check_stored(m: &MetadataManager, path: &str, size: u64) {
        let got = block_on(m.get_file_metadata(path)).unwrap();
        assert_eq!((got.path.as_str(), got.size), (path, size));
    }

    #[test]
    fn records_live_on_the_owner_the_servers_ring_names() {
        let m = manager(&["n0", "n1", "n2"]);
        let ring = PlacementRing::new(["n0", "n1", "n2"], VIRTUAL_NODES_DEFAULT).unwrap();
        for i in 0..100 {
            let path = format!("/d/f{i}");
            let expected = &ring.nodes()[ring.owner(PlacementKey::Metadata(&path)) as usize];
            assert_eq!(m.owner(&path).unwrap().as_deref(), Some(expected.as_str()));
            block_on(m.store_file_metadata(FileMetadata::new(i, path.clone(), i))).unwrap();
            let local = m.local.borrow();
            assert!(
                local.tables[expected].contains_key(&path),
                "{path} on {expected}"
            );
        }
        for i in 0..100 {
            check_stored(&m, &format!("/d/f{i}"), i);
        }
    }

    #[test]
    fn a_new_node_takes_the_records_it_now_owns() {
        let m = manager(&["n0"]);
        for i in 0..50 {
            block_on(m.store_file_metadata(FileMetadata::new(i, format!("/f{i}"), i))).unwrap();
        }
        assert!(m.add_node("n1".into()));
        assert!(!m.add_node("n1".into()), "a node is on the ring once");
        let moved = m.local.borrow().tables["n1"].len();
        assert!(
            moved > 0 && moved < 50,
            "some records move, not all: {moved}"
        );
        for i in 0..50 {
            check_stored(&m, &format!("/f{i}"), i);
        }
    }

    #[test]
    fn errors_name_the_path() {
        let m = MetadataManager::new(CachePolicy::default());
        let e = block_on(m.get_file_metadata("/x")).unwrap_err();
        assert_eq!(e.status(), Some(Status::Unavailable), "no node: {e}");
        assert!(e.to_string().contains("/x"), "{e}");
        m.add_node("n0".into());
        let e = block_on(m.get_file_metadata("/x")).unwrap_err();
        assert_eq!(e.errno(), libc::ENOENT, "{e}");
        let e =
            block_on(m.store_file_metadata(FileMetadata::new(1, "x/..".into(), 1))).unwrap_err();
        assert!(matches!(e, ApiError::Path { .. }), "{e}");
    }
}
