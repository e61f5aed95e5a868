//! The file system's size and room, as statfs(2) reports them: what a mount's `df`, the C
//! API's `benchfs_statvfs` and so IOR's and mdtest's headers show.

use std::net::IpAddr;

use benchfs_proto::ops::StatsReply;

use super::{norm, FsClient};
use crate::error::ApiError;

/// Free space reported for servers whose store nothing bounds (the convention of
/// object-store mounts: effectively unbounded).
const UNBOUNDED_BYTES: u64 = 1 << 60;

/// Block size the space is counted in.
const SPACE_BLOCK: u64 = 4096;

/// The file system's space, in the units of `struct statvfs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    /// Size of a block, in bytes.
    pub block_size: u64,
    /// Blocks in all: what the servers hold plus their room, over the replica count.
    pub blocks: u64,
    /// Blocks free (all of them available to any user: there are no reserved blocks).
    pub blocks_free: u64,
    /// Inodes in all: records are not bounded, so the records in use plus `files_free`.
    pub files: u64,
    /// Inodes free: as many as a 32-bit reader can take.
    pub files_free: u64,
}

impl FsClient {
    /// The space of the file system `path` lies in, as statfs(2) reports it; `path` must
    /// exist. Every server is asked; one that does not answer fails the call, naming it.
    pub async fn statfs(&self, path: &str) -> Result<FsSpace, ApiError> {
        let path = norm(path)?;
        self.stat(&path).await?;
        let mut answers = Vec::new();
        for (entry, answer) in self.stats_for("statfs", &path).await {
            answers.push((entry.addr.ip(), answer?));
        }
        Ok(space_of(&answers, self.replicas()))
    }
}

/// The space of the servers' `Stats` answers, each from the host at its address, over
/// `replicas` copies of every byte and record. A server's room is its own capacity left,
/// or its host's free memory or disk where that is less; the servers of one host share
/// that memory and, as a rule, that disk, so a host's room is the sum of its servers'
/// rooms, but no more than the largest free space any of them found binding (counting
/// each server's, several servers of one host read as that many times its free memory).
pub(super) fn space_of(answers: &[(IpAddr, StatsReply)], replicas: usize) -> FsSpace {
    // Per host: the sum of the rooms, and the free space shared by them, if any bound one.
    let mut hosts: std::collections::BTreeMap<_, (u64, Option<u64>)> = Default::default();
    let (mut used, mut records) = (0u64, 0u64);
    for (host, s) in answers {
        used = used.saturating_add(s.used_bytes);
        records = records.saturating_add(s.metadata_records);
        let room = s.room_bytes.min(UNBOUNDED_BYTES);
        let own_left = match s.capacity_bytes {
            0 => None,
            capacity => Some(capacity.saturating_sub(s.used_bytes)),
        };
        let (sum, shared) = hosts.entry(*host).or_default();
        *sum = sum.saturating_add(room);
        if own_left.is_none_or(|left| room < left) {
            *shared = Some(shared.map_or(room, |free: u64| free.max(room)));
        }
    }
    let free = hosts
        .values()
        .map(|&(sum, shared)| shared.map_or(sum, |free| sum.min(free)))
        .fold(0u64, u64::saturating_add)
        .min(UNBOUNDED_BYTES);
    let replicas = replicas.max(1) as u64;
    let files_free = u64::from(u32::MAX);
    FsSpace {
        block_size: SPACE_BLOCK,
        blocks: used.saturating_add(free) / SPACE_BLOCK / replicas,
        blocks_free: free / SPACE_BLOCK / replicas,
        files: (records / replicas).saturating_add(files_free),
        files_free,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn answer(host: u8, used: u64, room: u64) -> (IpAddr, StatsReply) {
        let stats = StatsReply {
            used_bytes: used,
            room_bytes: room,
            metadata_records: 1,
            ..Default::default()
        };
        (IpAddr::V4(Ipv4Addr::new(10, 0, 0, host)), stats)
    }

    /// Total and free bytes, and records.
    fn bytes(answers: &[(IpAddr, StatsReply)]) -> (u64, u64, u64) {
        let space = space_of(answers, 1);
        (
            space.blocks * SPACE_BLOCK,
            space.blocks_free * SPACE_BLOCK,
            space.files - space.files_free,
        )
    }

    #[test]
    fn servers_of_one_host_share_its_room_and_nothing_reads_as_exabytes() {
        let gib = 1 << 30;
        // Two servers on host 1 both see its 10 GiB; host 2's one server sees 4 GiB.
        let answers = [
            answer(1, gib, 10 * gib),
            answer(1, 2 * gib, 10 * gib),
            answer(2, 0, 4 * gib),
        ];
        assert_eq!(bytes(&answers), (17 * gib, 14 * gib, 3));
        // Servers with capacities of their own, under what the host has free: each its own
        // room, the total their capacities, however unevenly they are filled.
        let capped = |used: u64| {
            let (host, mut stats) = answer(1, used, 3 * gib - used);
            stats.capacity_bytes = 3 * gib;
            (host, stats)
        };
        assert_eq!(bytes(&[capped(0), capped(0), capped(0)]).0, 9 * gib);
        assert_eq!(
            bytes(&[capped(gib), capped(2 * gib), capped(0)]),
            (9 * gib, 6 * gib, 3)
        );
        // A capacity the host's free space undercuts: that free space, shared.
        let mut short = capped(0);
        short.1.room_bytes = gib;
        assert_eq!(bytes(&[short.clone(), short]).1, gib);
        // A store nothing bounds reads as the mount convention's "unbounded", no more.
        let (total, free, _) = bytes(&[answer(1, 8192, u64::MAX), answer(2, 8192, u64::MAX)]);
        assert_eq!((total, free), (UNBOUNDED_BYTES + 16384, UNBOUNDED_BYTES));
    }

    #[test]
    fn replicas_divide_the_space_and_the_records() {
        let gib = 1 << 30;
        let answers = [answer(1, 2 * gib, 6 * gib), answer(2, 2 * gib, 6 * gib)];
        let one = space_of(&answers, 1);
        let two = space_of(&answers, 2);
        assert_eq!(
            (one.blocks, one.blocks_free),
            (2 * two.blocks, 2 * two.blocks_free)
        );
        assert_eq!(two.blocks * SPACE_BLOCK, 8 * gib);
        assert_eq!(two.files - two.files_free, 1);
        assert_eq!(space_of(&answers, 0), one, "no replica count reads as one");
    }
}
