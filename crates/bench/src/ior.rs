//! IOR-like bandwidth: each rank writes, then reads, `segments` blocks of `block` bytes in
//! `transfer`-byte calls, to a file of its own or to one shared file (block `s` of rank `r`
//! at `(s * ranks + r) * block`, as IOR lays it out).

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{read_by, BenchError, Result};
use crate::hist::Latencies;
use crate::pattern;
use crate::phase::RankPhase;
use crate::run::RankCtx;

/// The shape of an IOR-like workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IorSpec {
    /// Its name, also its directory in the run's workspace ("ior-easy").
    pub name: String,
    /// Bytes per call.
    pub transfer: u64,
    /// Bytes per block; a multiple of `transfer`.
    pub block: u64,
    /// Blocks per rank.
    pub segments: u64,
    /// A file per rank, or one shared file.
    pub file_per_process: bool,
    /// Calls in a random order (seeded per rank) instead of sequentially.
    pub random: bool,
    /// fsync before close, timed with the write phase (IOR -e).
    pub fsync: bool,
    /// Write a checkable pattern and check every byte read (IOR -W -R).
    pub verify: bool,
}

/// IO500's ior-hard transfer (and block) size.
pub const IO500_HARD_TRANSFER: u64 = 47_008;

impl IorSpec {
    /// IO500's ior-easy shape: a file per rank, 2 MiB transfers, `block` bytes per rank.
    pub fn easy(block: u64) -> IorSpec {
        IorSpec {
            name: "ior-easy".into(),
            transfer: 2 << 20,
            block,
            segments: 1,
            file_per_process: true,
            random: false,
            fsync: true,
            verify: false,
        }
    }

    /// IO500's ior-hard shape: one shared file, 47008-byte transfers and blocks,
    /// `segments` of them per rank.
    pub fn hard(segments: u64) -> IorSpec {
        IorSpec {
            name: "ior-hard".into(),
            transfer: IO500_HARD_TRANSFER,
            block: IO500_HARD_TRANSFER,
            segments,
            file_per_process: false,
            random: false,
            fsync: true,
            verify: false,
        }
    }

    /// The shape in a line, as a report's header quotes it.
    pub fn describe(&self) -> String {
        format!(
            "{} -t {} -b {} -s {} {} {}{}{}",
            self.name,
            self.transfer,
            self.block,
            self.segments,
            if self.file_per_process {
                "file-per-process"
            } else {
                "shared-file"
            },
            if self.random { "random" } else { "sequential" },
            if self.fsync { " fsync" } else { "" },
            if self.verify {
                pattern::VERIFY_NOTE
            } else {
                ""
            },
        )
    }

    /// Checks the shape, naming what is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.transfer == 0 || self.block == 0 || self.segments == 0 {
            return Err(format!(
                "{}: transfer, block and segments must be positive",
                self.name
            )
            .into());
        }
        if !self.block.is_multiple_of(self.transfer) {
            return Err(format!(
                "{}: block {} is not a multiple of transfer {}",
                self.name, self.block, self.transfer
            )
            .into());
        }
        if self.transfer > 1 << 30 {
            return Err(format!("{}: transfer {} is above 1 GiB", self.name, self.transfer).into());
        }
        self.segments
            .checked_mul(self.block)
            .and_then(|b| b.checked_mul(1 << 20))
            .ok_or_else(|| BenchError(format!("{}: block × segments is too large", self.name)))?;
        Ok(())
    }

    /// Calls per rank.
    pub fn transfers(&self) -> u64 {
        self.segments * (self.block / self.transfer)
    }

    /// Bytes per rank.
    pub fn bytes_per_rank(&self) -> u64 {
        self.segments * self.block
    }

    /// The file rank `rank` works on, under the workspace `work`.
    pub fn file(&self, work: &str, rank: u32) -> String {
        if self.file_per_process {
            format!("{work}/{}/file.{rank:08}", self.name)
        } else {
            format!("{work}/{}/file", self.name)
        }
    }

    /// The offset of call `i` of rank `rank` of `ranks`.
    pub fn offset(&self, i: u64, rank: u32, ranks: u32) -> u64 {
        let per_block = self.block / self.transfer;
        let (segment, within) = (i / per_block, i % per_block);
        let block = if self.file_per_process {
            segment
        } else {
            segment * u64::from(ranks) + u64::from(rank)
        };
        block * self.block + within * self.transfer
    }

    /// The key of the verify pattern of the file of `rank`.
    fn file_key(&self, rank: u32) -> u64 {
        if self.file_per_process {
            u64::from(rank)
        } else {
            u64::MAX
        }
    }

    /// The order of rank `rank`'s calls: sequential, or a seeded shuffle.
    fn order(&self, seed: u64, rank: u32) -> Vec<u64> {
        let mut order: Vec<u64> = (0..self.transfers()).collect();
        if self.random {
            let mut x = seed ^ (u64::from(rank) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            for i in (1..order.len()).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                order.swap(i, (x % (i as u64 + 1)) as usize);
            }
        }
        order
    }
}

/// A rank's write phase: its calls in order until done or the time limit; fsync and close
/// are timed with it. Returns the rank's share and how many calls it made.
pub fn write(ctx: &mut RankCtx<'_>, spec: &IorSpec) -> Result<(RankPhase, u64)> {
    let path = spec.file(&ctx.work, ctx.ranks.rank);
    let storage = ctx.storage;
    let mut lat = Latencies::default();
    let mut share = RankPhase::start(ctx.ranks.rank);
    let t = Instant::now();
    let h = if spec.file_per_process {
        storage.create(&path)?
    } else {
        storage.open_write(&path)?
    };
    lat.record("open", t.elapsed().as_nanos() as u64);
    let mut buf = vec![0xa5u8; spec.transfer as usize];
    let mut done = 0;
    for i in spec.order(ctx.seed, ctx.ranks.rank) {
        if ctx.past_deadline() {
            share.stonewalled = true;
            break;
        }
        let offset = spec.offset(i, ctx.ranks.rank, ctx.ranks.size);
        if spec.verify {
            let key = spec.file_key(ctx.ranks.rank);
            share.untimed(|| pattern::fill(&mut buf, ctx.seed, key, offset));
        }
        let t = Instant::now();
        storage.write_at(&h, &path, &buf, offset)?;
        lat.record("write", t.elapsed().as_nanos() as u64);
        share.bytes += spec.transfer;
        share.ops += 1;
        done += 1;
        ctx.progress(spec.transfer)?;
    }
    if spec.fsync {
        let t = Instant::now();
        storage.fsync(&h, &path)?;
        lat.record("fsync", t.elapsed().as_nanos() as u64);
    }
    let t = Instant::now();
    storage.close(h, &path)?;
    lat.record("close", t.elapsed().as_nanos() as u64);
    Ok((share.finish(&lat), done))
}

/// Untimed, before a read phase: the baseline's page cache of the rank's file is dropped.
pub fn prepare_read(ctx: &RankCtx<'_>, spec: &IorSpec) -> Result<()> {
    let path = spec.file(&ctx.work, ctx.ranks.rank);
    if spec.file_per_process || ctx.ranks.rank == 0 {
        ctx.storage.drop_cache(&path)?;
    }
    Ok(())
}

/// A rank's read phase: the first `written` calls of its write order, each checked when
/// the spec verifies (a wrong byte fails the run, naming the file and offset).
pub fn read(ctx: &mut RankCtx<'_>, spec: &IorSpec, written: u64) -> Result<RankPhase> {
    let path = spec.file(&ctx.work, ctx.ranks.rank);
    let storage = ctx.storage;
    let mut lat = Latencies::default();
    let mut share = RankPhase::start(ctx.ranks.rank);
    let t = Instant::now();
    let h = storage.open_read(&path)?;
    lat.record("open", t.elapsed().as_nanos() as u64);
    let mut buf = vec![0u8; spec.transfer as usize];
    for i in spec
        .order(ctx.seed, ctx.ranks.rank)
        .into_iter()
        .take(written as usize)
    {
        let offset = spec.offset(i, ctx.ranks.rank, ctx.ranks.size);
        let t = Instant::now();
        storage
            .read_exact_at(&h, &path, &mut buf, offset)
            .map_err(|e| read_by(e, ctx.ranks.rank))?;
        lat.record("read", t.elapsed().as_nanos() as u64);
        if spec.verify {
            let key = spec.file_key(ctx.ranks.rank);
            let mismatch = share.untimed(|| pattern::first_mismatch(&buf, ctx.seed, key, offset));
            if let Some(at) = mismatch {
                let _ = storage.close(h, &path);
                // The pattern follows the seed: another run's files are checked against
                // this run's seed, which must be the one they were written with.
                let seed_note = match ctx.reused {
                    true => format!(
                        "; the files are an earlier run's: check that it ran with this --seed ({})",
                        ctx.seed
                    ),
                    false => String::new(),
                };
                return Err(format!(
                    "verify failed: {} on {} holds a wrong byte at offset {} (read by rank {}){seed_note}",
                    storage.display(&path),
                    ctx.label,
                    offset + at as u64,
                    ctx.ranks.rank
                )
                .into());
            }
        }
        share.bytes += spec.transfer;
        share.ops += 1;
        ctx.progress(spec.transfer)?;
    }
    let t = Instant::now();
    storage.close(h, &path)?;
    lat.record("close", t.elapsed().as_nanos() as u64);
    Ok(share.finish(&lat))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_file_blocks_interleave_by_rank_and_cover_the_file_once() {
        let spec = IorSpec {
            block: 4 * 100,
            transfer: 100,
            segments: 3,
            ..IorSpec::hard(3)
        };
        let mut seen = std::collections::BTreeSet::new();
        for rank in 0..4 {
            for i in 0..spec.transfers() {
                assert!(seen.insert(spec.offset(i, rank, 4)));
            }
        }
        let expected: Vec<u64> = (0..48).map(|k| k * 100).collect();
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), expected);
        assert_eq!(spec.offset(4, 1, 4), (4 + 1) * 400);
    }

    #[test]
    fn random_order_is_a_seeded_permutation() {
        let spec = IorSpec {
            random: true,
            block: 1000,
            transfer: 10,
            ..IorSpec::easy(1000)
        };
        let a = spec.order(5, 1);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(a, sorted);
        assert_eq!(a, spec.order(5, 1));
        assert_ne!(a, spec.order(5, 2));
    }

    #[test]
    fn bad_shapes_are_refused_by_name() {
        let e = IorSpec {
            block: 1000,
            transfer: 300,
            ..IorSpec::easy(1000)
        }
        .validate()
        .unwrap_err();
        assert!(e.0.contains("ior-easy") && e.0.contains("multiple"), "{e}");
        assert!(IorSpec {
            transfer: 0,
            ..IorSpec::easy(10)
        }
        .validate()
        .is_err());
        assert!(IorSpec {
            segments: u64::MAX,
            ..IorSpec::hard(1)
        }
        .validate()
        .is_err());
        IorSpec::hard(10).validate().unwrap();
    }
}
