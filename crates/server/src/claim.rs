//! Claiming a node id and a data directory before a server opens anything: a second
//! `benchfsd` with a node id that is already served, or on a data directory another one
//! holds, refuses to start and names the one that runs. Without this, a duplicate
//! overwrote the registry entry (clients then read zeros from its empty store) and, on a
//! shared data directory, rewrote the running server's journal.

use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use benchfs_config::registry::{self, ServerEntry};
use benchfs_config::ServerConfig;
use benchfs_rpc::RpcError;
use benchfs_ucx::Context;

/// Longest a start-up waits for the server a registry entry names to answer.
const PROBE_TIMEOUT_MAX: Duration = Duration::from_secs(3);

/// Why a node id or a data directory cannot be claimed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimError {
    /// A live server already serves this node id.
    #[error("node {node_id} is already served by the benchfsd at {addr} (registry entry {}); stop it or start this one with another node id", entry.display())]
    NodeInUse {
        /// The node id.
        node_id: String,
        /// Where the running server answers.
        addr: std::net::SocketAddr,
        /// Its registry file.
        entry: PathBuf,
    },
    /// Another process holds the data directory.
    #[error("data_dir {} is in use by another benchfsd (it holds {}); give each server its own data directory", dir.display(), lock.display())]
    DataDirInUse {
        /// The data directory.
        dir: PathBuf,
        /// Its lock file.
        lock: PathBuf,
    },
    /// Another server hands out inode numbers with this store's tag (a chance of about
    /// one in 2^32 for each pair of stores).
    #[error("the inode numbers of this store (tag {tag:08x}) would collide with those of node {other}, which has the same tag; restart this server (a memory store draws another tag), or start it on a new data directory")]
    InodeTagInUse {
        /// The tag.
        tag: u32,
        /// The server that has it.
        other: String,
    },
    /// The registry entry of this server's node id came to name another server: one
    /// started with the same node id at the same moment, or took it over while this one
    /// was stopped or hung. This one stops, so that one server answers for the node id.
    #[error("node {node_id}: the registry entry {} now names the benchfsd at {by}, not this one at {ours}; stopped serving so that one server answers for the node id (another started with it at the same moment, or took it over while this one was stopped or hung)", entry.display())]
    Replaced {
        /// The node id.
        node_id: String,
        /// Where this server listened.
        ours: std::net::SocketAddr,
        /// Where the server the entry names listens.
        by: std::net::SocketAddr,
        /// The registry entry.
        entry: PathBuf,
    },
    /// The lock file could not be made.
    #[error("lock file {}: {source}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The data directory's lock, held for the life of the server (released on exit, even by
/// kill -9, since the kernel drops the lock with the file).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// How long a start waits for the data directory's lock: a server killed just now holds it
/// until the kernel has torn the process down (longer for a large memory store), and a
/// `kill -9` followed at once by `cluster up --resume` failed on it.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
/// How often a start waiting for the lock tries it again.
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

/// Locks `data_dir` (`.benchfsd.lock`, an exclusive advisory lock) or says who holds it,
/// once it has stayed held for 2 s (a predecessor killed just now still holds it).
pub fn lock_data_dir(data_dir: &Path) -> Result<DataDirLock, ClaimError> {
    let path = data_dir.join(".benchfsd.lock");
    let lock_error = |source| ClaimError::Lock {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(data_dir).map_err(lock_error)?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(lock_error)?;
    let deadline = std::time::Instant::now() + LOCK_GRACE;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(DataDirLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(LOCK_RETRY);
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(ClaimError::DataDirInUse {
                    dir: data_dir.to_path_buf(),
                    lock: path,
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(lock_error(e)),
        }
    }
}

/// The registry setting that names a server's [`inode_tag`](benchfs_proto::placement::inode_tag).
pub const INODE_TAG_SETTING: &str = "inode_tag";

/// Refuses a store whose inode tag a server in the registry already publishes. (Entries
/// that cannot be read are left to the clients, which refuse them by name.)
pub fn check_inode_tag_free(config: &ServerConfig, tag: u32) -> Result<(), ClaimError> {
    let ours = format!("{tag:08x}");
    let entries = registry::read(&config.network.registry_dir).unwrap_or_default();
    match entries.into_iter().find(|e| {
        e.node_id != config.node.node_id && e.settings.get(INODE_TAG_SETTING) == Some(&ours)
    }) {
        Some(other) => Err(ClaimError::InodeTagInUse {
            tag,
            other: other.node_id,
        }),
        None => Ok(()),
    }
}

/// How often a serving server reads its registry entry back (see [`Fence`]).
pub const FENCE_INTERVAL: Duration = Duration::from_millis(500);

/// How old the last passed check may be when a request comes: an older one (the server
/// was stopped, or its loop held up) is made again before the request is served.
const FENCE_LEASE: Duration = Duration::from_secs(1);

/// Keeps a serving server to its node id: it reads the registry entry back every
/// [`FENCE_INTERVAL`] and is replaced once the entry names another server. The start-up
/// check ([`check_node_free`]) cannot see a server that publishes at the same moment, nor
/// one that takes the node id over while this one is stopped (SIGSTOP) or hung and cannot
/// answer its probe; without this both would serve the node id, each to its own clients,
/// and their stores would drift apart. A request is served only within a second of a
/// passed check ([`Fence::holds`]), so after a stop the requests that queued meanwhile
/// wait for a check first. An entry that is missing or unreadable is left alone (`cluster
/// down` removes entries).
pub struct Fence {
    registry_dir: PathBuf,
    ours: ServerEntry,
    /// When the last check passed, on [`coarse_now`]'s clock.
    checked_at: Cell<Duration>,
    replaced: RefCell<Option<ClaimError>>,
}

impl Fence {
    /// A fence for the server that published `ours`, checked as of now.
    pub fn new(registry_dir: PathBuf, ours: ServerEntry) -> Fence {
        Fence {
            registry_dir,
            ours,
            checked_at: Cell::new(coarse_now()),
            replaced: RefCell::new(None),
        }
    }

    /// Whether this server still serves its node id at `now_us` (a reading of
    /// [`benchfs_proto::clock::now_us`]), checking the registry first when the last check
    /// is older than `FENCE_LEASE`.
    pub fn holds(&self, now_us: u64) -> bool {
        let now = Duration::from_micros(now_us);
        if now.saturating_sub(self.checked_at.get()) <= FENCE_LEASE {
            return true;
        }
        self.check()
    }

    /// Resolves once the registry entry names another server.
    pub async fn until_replaced(&self) {
        let mut ticks = tokio::time::interval(FENCE_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if !self.check() {
                return;
            }
        }
    }

    /// Why the server must stop serving, once the entry named another server.
    pub fn replaced(&self) -> Option<ClaimError> {
        self.replaced.take()
    }

    /// Reads the entry; false (and the error kept) if it names another server.
    fn check(&self) -> bool {
        if self.replaced.borrow().is_some() {
            return false;
        }
        let published = registry::published(&self.registry_dir, &self.ours.node_id);
        if let Some(other) = published.filter(|published| *published != self.ours) {
            let error = ClaimError::Replaced {
                node_id: self.ours.node_id.clone(),
                ours: self.ours.addr,
                by: other.addr,
                entry: registry::entry_path(&self.registry_dir, &self.ours.node_id),
            };
            tracing::error!(%error, "draining");
            *self.replaced.borrow_mut() = Some(error);
            return false;
        }
        self.checked_at.set(coarse_now());
        true
    }
}

/// The monotonic clock at the kernel tick's resolution (see [`benchfs_proto::clock`]).
fn coarse_now() -> Duration {
    Duration::from_micros(benchfs_proto::clock::now_us())
}

/// Fails if the registry names a live server for this node id. An entry whose server does
/// not answer as this node is stale (a crash left it) and is taken over.
pub async fn check_node_free(
    context: &Arc<Context>,
    config: &ServerConfig,
    secret: &[u8],
) -> Result<(), ClaimError> {
    let node_id = &config.node.node_id;
    let Some(entry) = registry::published(&config.network.registry_dir, node_id) else {
        return Ok(());
    };
    if answers_as(context, config, secret, &entry).await {
        return Err(ClaimError::NodeInUse {
            node_id: node_id.clone(),
            addr: entry.addr,
            entry: registry::entry_path(&config.network.registry_dir, node_id),
        });
    }
    tracing::warn!(%node_id, addr = %entry.addr, "taking over a stale registry entry");
    Ok(())
}

/// Whether a server at `entry.addr` completes a handshake as `entry.node_id`, or is live
/// there but refuses the handshake.
async fn answers_as(
    context: &Arc<Context>,
    config: &ServerConfig,
    secret: &[u8],
    entry: &ServerEntry,
) -> bool {
    let timeout = config.network.rpc_timeout.min(PROBE_TIMEOUT_MAX);
    let name = format!("starting-{}", entry.node_id);
    let Ok(rpc) = crate::peer::peer_client(context, secret, timeout, name) else {
        return false;
    };
    match rpc.connect(entry.addr).await {
        Ok(conn) => conn
            .hello()
            .is_some_and(|hello| hello.node_id == entry.node_id),
        // Something live at that address refused our secret: it may be this node, so it is
        // not taken over.
        Err(RpcError::Status { .. }) => true,
        Err(e) => {
            tracing::debug!(error = %e, addr = %entry.addr, "registry entry does not answer");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_let_go_within_the_grace_is_taken_and_one_held_past_it_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_data_dir(dir.path()).unwrap();
        // A holder that exits soon, as a server killed just now does.
        let letting_go = std::thread::spawn(move || {
            std::thread::sleep(LOCK_GRACE / 4);
            drop(held);
        });
        let started = std::time::Instant::now();
        let taken = lock_data_dir(dir.path()).expect("taken once let go");
        assert!(started.elapsed() < LOCK_GRACE, "{:?}", started.elapsed());
        letting_go.join().unwrap();
        match lock_data_dir(dir.path()) {
            Err(ClaimError::DataDirInUse { dir: named, .. }) => assert_eq!(named, dir.path()),
            other => panic!("a held lock: {other:?}"),
        }
        drop(taken);
    }
}
