//! Consistent hashing: the ring that says which server holds a path's metadata and each
//! chunk of a file.
//!
//! Every server contributes `virtual_nodes` points to the ring, at XXH3-64 of
//! `"<node_id>#<i>"`. A key lives on the server owning the first point at or after the
//! key's hash (wrapping), found by binary search. XXH3-64 (seed 0) is a frozen
//! specification since xxHash 0.8.0, defined byte-wise and independent of endianness, so
//! every client and server of a job, whatever its build or CPU, computes the same ring.
//!
//! **Invariant:** the ring depends only on the set of node ids and the virtual node count,
//! never on the order servers were added or their addresses, so a server restarted under
//! the same node id owns exactly the keys it owned before.

use std::collections::BTreeSet;

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// What the ring places: a path's metadata or one chunk of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlacementKey<'a> {
    /// The metadata record of a path (an absolute, normalised path).
    Metadata(&'a str),
    /// Chunk `index` of the file with inode number `file_id`.
    Chunk {
        /// The file's cluster-unique inode number.
        file_id: u64,
        /// The chunk's index in the file.
        index: u64,
    },
}

impl PlacementKey<'_> {
    /// The key's position on the ring.
    pub fn hash(&self) -> u64 {
        match *self {
            PlacementKey::Metadata(path) => xxh3_64(path.as_bytes()),
            PlacementKey::Chunk { file_id, index } => {
                let mut bytes = [0u8; 16];
                bytes[..8].copy_from_slice(&file_id.to_le_bytes());
                bytes[8..].copy_from_slice(&index.to_le_bytes());
                xxh3_64(&bytes)
            }
        }
    }
}

/// Why a ring could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlacementError {
    /// A ring needs at least one server.
    #[error("placement ring has no servers")]
    NoServers,
    /// Two servers gave the same node id.
    #[error("node id {0:?} appears twice")]
    DuplicateNode(String),
    /// The virtual node count is zero.
    #[error("virtual_nodes must be at least 1")]
    NoVirtualNodes,
}

/// The 32-bit tag of one life of a server's store, born at `born_ns`: the high half of
/// every inode number the server hands out while that store lives. A store that starts
/// empty (a memory store, a new data directory) begins a new life with a tag of its own,
/// so it never hands out again a number that an earlier life gave a file whose records
/// and chunks outlive it on other servers; a disk store restarted on its data keeps its
/// birth, its tag and (from its journal) its counter, except a tiered store after an
/// unclean stop, which is born again.
pub fn inode_tag(node_id: &str, born_ns: u64) -> u32 {
    xxh3_64_with_seed(node_id.as_bytes(), born_ns) as u32
}

/// The consistent-hashing ring over a job's servers.
#[derive(Debug, Clone)]
pub struct PlacementRing {
    /// Node ids, sorted; a server's index in this list is its `ServerIndex`.
    nodes: Vec<String>,
    /// Ring points sorted by hash, with the owning server's index. Ties are broken by the
    /// server index so the order is total and the same everywhere.
    points: Vec<(u64, u32)>,
    virtual_nodes: u32,
}

/// A server's position in [`PlacementRing::nodes`].
pub type ServerIndex = u32;

impl PlacementRing {
    /// Builds the ring for these node ids with `virtual_nodes` points each.
    pub fn new<S: AsRef<str>>(
        node_ids: impl IntoIterator<Item = S>,
        virtual_nodes: u32,
    ) -> Result<Self, PlacementError> {
        if virtual_nodes == 0 {
            return Err(PlacementError::NoVirtualNodes);
        }
        let mut set = BTreeSet::new();
        for id in node_ids {
            let id = id.as_ref().to_string();
            if !set.insert(id.clone()) {
                return Err(PlacementError::DuplicateNode(id));
            }
        }
        if set.is_empty() {
            return Err(PlacementError::NoServers);
        }
        let nodes: Vec<String> = set.into_iter().collect();
        let mut points = Vec::with_capacity(nodes.len() * virtual_nodes as usize);
        for (index, node) in nodes.iter().enumerate() {
            let index = ServerIndex::try_from(index).expect("server count fits u32");
            for vnode in 0..virtual_nodes {
                points.push((xxh3_64(format!("{node}#{vnode}").as_bytes()), index));
            }
        }
        points.sort_unstable();
        Ok(PlacementRing {
            nodes,
            points,
            virtual_nodes,
        })
    }

    /// The node ids on the ring, sorted; indexes into this slice are [`ServerIndex`]es.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Virtual nodes per server.
    pub fn virtual_nodes(&self) -> u32 {
        self.virtual_nodes
    }

    /// The index of a node id, if it is on the ring.
    pub fn index_of(&self, node_id: &str) -> Option<ServerIndex> {
        self.nodes
            .binary_search_by(|n| n.as_str().cmp(node_id))
            .ok()
            .map(|i| i as ServerIndex)
    }

    fn first_point(&self, hash: u64) -> usize {
        let at = self.points.partition_point(|&(point, _)| point < hash);
        if at == self.points.len() {
            0
        } else {
            at
        }
    }

    /// The server that owns `key`.
    pub fn owner(&self, key: PlacementKey<'_>) -> ServerIndex {
        self.owner_of_hash(key.hash())
    }

    /// The server that owns the ring position `hash`.
    pub fn owner_of_hash(&self, hash: u64) -> ServerIndex {
        self.points[self.first_point(hash)].1
    }

    /// Up to `n` distinct servers for `key` in ring order, the owner first. Fewer are
    /// returned only when the ring has fewer than `n` servers.
    pub fn replicas(&self, key: PlacementKey<'_>, n: usize) -> Vec<ServerIndex> {
        let n = n.min(self.nodes.len());
        let mut out = Vec::with_capacity(n);
        let start = self.first_point(key.hash());
        for step in 0..self.points.len() {
            if out.len() == n {
                break;
            }
            let server = self.points[(start + step) % self.points.len()].1;
            if !out.contains(&server) {
                out.push(server);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(n: usize, vnodes: u32) -> PlacementRing {
        PlacementRing::new((0..n).map(|i| format!("node{i}")), vnodes).unwrap()
    }

    fn chunk(i: u64) -> PlacementKey<'static> {
        PlacementKey::Chunk {
            file_id: i / 7,
            index: i % 7,
        }
    }

    #[test]
    fn rejects_bad_rings() {
        let none: [&str; 0] = [];
        assert_eq!(
            PlacementRing::new(none, 150).unwrap_err(),
            PlacementError::NoServers
        );
        assert_eq!(
            PlacementRing::new(["a", "b", "a"], 150).unwrap_err(),
            PlacementError::DuplicateNode("a".into())
        );
        assert_eq!(
            PlacementRing::new(["a"], 0).unwrap_err(),
            PlacementError::NoVirtualNodes
        );
    }

    #[test]
    fn hashes_are_stable_across_builds() {
        // Pinned values: a change here means every deployed ring moves its data.
        assert_eq!(xxh3_64(b""), 0x2d06800538d394c2);
        assert_eq!(PlacementKey::Metadata("/a").hash(), xxh3_64(b"/a"));
        let a = ring(8, 150);
        let b = PlacementRing::new((0..8).rev().map(|i| format!("node{i}")), 150).unwrap();
        for i in 0..1000 {
            assert_eq!(
                a.owner(chunk(i)),
                b.owner(chunk(i)),
                "order of joining must not matter"
            );
        }
    }

    #[test]
    fn replicas_are_distinct_and_start_with_owner() {
        let r = ring(5, 150);
        for i in 0..2000 {
            let reps = r.replicas(chunk(i), 3);
            assert_eq!(reps.len(), 3);
            assert_eq!(reps[0], r.owner(chunk(i)));
            let set: BTreeSet<_> = reps.iter().collect();
            assert_eq!(set.len(), 3);
        }
        assert_eq!(
            r.replicas(chunk(1), 9).len(),
            5,
            "capped at the server count"
        );
        assert_eq!(ring(1, 150).replicas(chunk(1), 2), vec![0]);
    }

    #[test]
    fn wraps_around_the_ring() {
        let r = ring(3, 4);
        let last = r.points.last().unwrap().0;
        assert_eq!(r.owner_of_hash(u64::MAX), r.points[0].1);
        if last < u64::MAX {
            assert_eq!(r.owner_of_hash(last + 1), r.points[0].1);
        }
        assert_eq!(r.owner_of_hash(0), r.points[0].1);
        assert_eq!(r.owner_of_hash(last), r.points.last().unwrap().1);
    }

    /// Load spread over 1024 servers and a million keys, with 150 virtual nodes.
    #[test]
    fn load_is_balanced() {
        let servers = 1024;
        let r = ring(servers, 150);
        let stats = LoadStats::measure(&r, 1_000_000);
        assert!(
            stats.max_over_mean < 1.5,
            "max/mean {}",
            stats.max_over_mean
        );
        assert!(
            stats.stddev_over_mean < 0.15,
            "stddev/mean {}",
            stats.stddev_over_mean
        );
    }

    #[test]
    fn join_and_leave_move_about_one_nth() {
        let n = 64;
        let keys = 200_000u64;
        let before = ring(n, 150);
        let after = ring(n + 1, 150);
        let new = after.index_of(&format!("node{n}")).unwrap();
        let mut moved = 0u64;
        for i in 0..keys {
            let old_owner = &before.nodes()[before.owner(chunk(i)) as usize];
            let new_owner = after.owner(chunk(i));
            if old_owner != &after.nodes()[new_owner as usize] {
                moved += 1;
                assert_eq!(
                    new_owner, new,
                    "a key may only move to the server that joined"
                );
            }
        }
        let fraction = moved as f64 / keys as f64;
        let ideal = 1.0 / (n + 1) as f64;
        assert!(
            fraction > ideal * 0.5 && fraction < ideal * 1.5,
            "moved {fraction}, ideal {ideal}"
        );
    }

    #[test]
    fn leave_moves_only_the_leavers_keys() {
        let n = 64;
        let before = ring(n, 150);
        let after = PlacementRing::new((0..n).filter(|&i| i != 5).map(|i| format!("node{i}")), 150)
            .unwrap();
        for i in 0..50_000 {
            let old = &before.nodes()[before.owner(chunk(i)) as usize];
            let new = &after.nodes()[after.owner(chunk(i)) as usize];
            if old != "node5" {
                assert_eq!(old, new, "only keys of the server that left may move");
            }
        }
        let fraction = LoadStats::moved_fraction(&before, &after, 200_000);
        let ideal = 1.0 / n as f64;
        assert!(
            fraction > ideal * 0.5 && fraction < ideal * 1.5,
            "moved {fraction}, ideal {ideal}"
        );
    }
}

/// How evenly a ring spreads keys; see [`LoadStats::measure`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadStats {
    /// Keys on the most loaded server over the mean.
    pub max_over_mean: f64,
    /// Standard deviation of keys per server over the mean.
    pub stddev_over_mean: f64,
}

impl LoadStats {
    /// Places `keys` chunk keys (files of seven chunks) and measures the spread.
    pub fn measure(ring: &PlacementRing, keys: u64) -> LoadStats {
        let mut load = vec![0u64; ring.nodes().len()];
        for i in 0..keys {
            let key = PlacementKey::Chunk {
                file_id: i / 7,
                index: i % 7,
            };
            load[ring.owner(key) as usize] += 1;
        }
        let n = load.len() as f64;
        let mean = keys as f64 / n;
        let max = *load.iter().max().unwrap_or(&0) as f64;
        let var = load.iter().map(|&l| (l as f64 - mean).powi(2)).sum::<f64>() / n;
        LoadStats {
            max_over_mean: max / mean,
            stddev_over_mean: var.sqrt() / mean,
        }
    }

    /// The fraction of `keys` chunk keys whose owner differs between two rings.
    pub fn moved_fraction(before: &PlacementRing, after: &PlacementRing, keys: u64) -> f64 {
        let moved = (0..keys)
            .filter(|&i| {
                let key = PlacementKey::Chunk {
                    file_id: i / 7,
                    index: i % 7,
                };
                before.nodes()[before.owner(key) as usize]
                    != after.nodes()[after.owner(key) as usize]
            })
            .count();
        moved as f64 / keys as f64
    }
}
