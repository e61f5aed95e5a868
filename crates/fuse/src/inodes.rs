//! Node ids and the paths they stand for. The kernel names files by node id; BenchFS by
//! path. A node id is the record's inode number (the root's is 1, which no record gets),
//! so every mount of a cluster shows the same `st_ino`, and a rename keeps it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use benchfs_proto::path;

/// The root's node id.
pub(crate) const ROOT: u64 = benchfs_proto::meta::ROOT_FILE_ID;

struct Node {
    path: String,
    /// Lookups the kernel holds (it forgets them with FORGET).
    lookups: u64,
    /// When this mount learnt that another client moved the node to `path`: until the
    /// kernel's entries age out, one for the old name may still lead here.
    moved_at: Option<Instant>,
    /// When an open of the node was last refused as stale (`BenchFuse::open`).
    open_refused_at: Option<Instant>,
}

impl Node {
    fn new(path: String, lookups: u64) -> Node {
        Node {
            path,
            lookups,
            moved_at: None,
            open_refused_at: None,
        }
    }

    /// Sets the node's path to `path`, which another client moved it to if it differs.
    fn moved_to(&mut self, path: &str) {
        if !self.path.is_empty() && self.path != path {
            self.moved_at = Some(Instant::now());
        }
        self.path = path.to_string();
    }
}

/// The nodes the kernel knows, by node id.
pub(crate) struct Inodes {
    nodes: Mutex<HashMap<u64, Node>>,
}

impl Inodes {
    pub(crate) fn new() -> Inodes {
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, Node::new("/".into(), 1));
        Inodes {
            nodes: Mutex::new(nodes),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Node>> {
        // A panic elsewhere cannot leave the map half-changed: every change is one call.
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The path of node `ino`, if the kernel still holds it.
    pub(crate) fn path(&self, ino: u64) -> Option<String> {
        self.lock().get(&ino).map(|n| n.path.clone())
    }

    /// Records one more kernel lookup of `ino` at `path`.
    pub(crate) fn remember(&self, ino: u64, path: &str) {
        let mut nodes = self.lock();
        let node = nodes
            .entry(ino)
            .or_insert_with(|| Node::new(String::new(), 0));
        node.moved_to(path);
        node.lookups += 1;
    }

    /// The kernel dropped `count` lookups of `ino`.
    pub(crate) fn forget(&self, ino: u64, count: u64) {
        let mut nodes = self.lock();
        if ino == ROOT {
            return;
        }
        if let Some(node) = nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(count);
            if node.lookups == 0 {
                nodes.remove(&ino);
            }
        }
    }

    /// Node `ino` is at `path` now (another mount renamed it).
    pub(crate) fn relocate(&self, ino: u64, path: &str) {
        if let Some(node) = self.lock().get_mut(&ino) {
            node.moved_to(path);
        }
    }

    /// Whether another client moved node `ino` within `within`.
    pub(crate) fn moved_within(&self, ino: u64, within: Duration) -> bool {
        self.lock()
            .get(&ino)
            .and_then(|n| n.moved_at)
            .is_some_and(|at| at.elapsed() < within)
    }

    /// An open of node `ino` was refused as stale.
    pub(crate) fn refuse_open(&self, ino: u64) {
        if let Some(node) = self.lock().get_mut(&ino) {
            node.open_refused_at = Some(Instant::now());
        }
    }

    /// Whether an open of node `ino` was refused as stale within `within`; forgets it.
    pub(crate) fn take_open_refusal(&self, ino: u64, within: Duration) -> bool {
        self.lock()
            .get_mut(&ino)
            .and_then(|n| n.open_refused_at.take())
            .is_some_and(|at| at.elapsed() < within)
    }

    /// Follows a rename of `from` to `to` in every known path.
    pub(crate) fn renamed(&self, from: &str, to: &str) {
        for node in self.lock().values_mut() {
            if let Some(moved) = path::moved(&node.path, from, to) {
                node.path = moved;
            }
        }
    }
}
