//! Node ids and the paths they stand for. The kernel names files by node id; BenchFS by
//! path. A node id is the record's inode number (the root's is 1, which no record gets),
//! so every mount of a cluster shows the same `st_ino`, and a rename keeps it.

use std::collections::HashMap;
use std::sync::Mutex;

use benchfs_proto::path;

/// The root's node id.
pub(crate) const ROOT: u64 = benchfs_proto::meta::ROOT_FILE_ID;

struct Node {
    path: String,
    /// Lookups the kernel holds (it forgets them with FORGET).
    lookups: u64,
}

/// The nodes the kernel knows, by node id.
pub(crate) struct Inodes {
    nodes: Mutex<HashMap<u64, Node>>,
}

impl Inodes {
    pub(crate) fn new() -> Inodes {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                path: "/".into(),
                lookups: 1,
            },
        );
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
        let node = nodes.entry(ino).or_insert_with(|| Node {
            path: String::new(),
            lookups: 0,
        });
        node.path = path.to_string();
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
            node.path = path.to_string();
        }
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
