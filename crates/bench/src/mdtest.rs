//! mdtest-like metadata rates: each rank creates (and writes `write_bytes` to), stats,
//! reads back and removes its own files, in a directory of its own or all in one.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{read_by, Result};
use crate::hist::Latencies;
use crate::pattern;
use crate::phase::RankPhase;
use crate::run::RankCtx;

/// The shape of an mdtest-like workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MdSpec {
    /// Its name, also its directory in the run's workspace ("mdtest-easy").
    pub name: String,
    /// Files each rank creates.
    pub files_per_rank: u64,
    /// Each rank in a directory of its own (mdtest -u), or all in one.
    pub unique_dir: bool,
    /// Bytes written to each file at creation and read back (mdtest -w, -e).
    pub write_bytes: u64,
    /// Check every byte read back.
    pub verify: bool,
}

/// IO500's mdtest-hard file size.
pub const IO500_HARD_BYTES: u64 = 3901;

impl MdSpec {
    /// IO500's mdtest-easy shape: empty files, a directory per rank.
    pub fn easy(files_per_rank: u64) -> MdSpec {
        MdSpec {
            name: "mdtest-easy".into(),
            files_per_rank,
            unique_dir: true,
            write_bytes: 0,
            verify: false,
        }
    }

    /// IO500's mdtest-hard shape: 3901-byte files, all ranks in one directory.
    pub fn hard(files_per_rank: u64) -> MdSpec {
        MdSpec {
            name: "mdtest-hard".into(),
            files_per_rank,
            unique_dir: false,
            write_bytes: IO500_HARD_BYTES,
            verify: false,
        }
    }

    /// The shape in a line, as a report's header quotes it.
    pub fn describe(&self) -> String {
        format!(
            "{} files-per-rank={} write-bytes={} {}{}",
            self.name,
            self.files_per_rank,
            self.write_bytes,
            if self.unique_dir {
                "dir-per-rank"
            } else {
                "shared-dir"
            },
            if self.verify {
                pattern::VERIFY_NOTE
            } else {
                ""
            },
        )
    }

    /// Checks the shape, naming what is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.files_per_rank == 0 {
            return Err(format!("{}: files per rank must be positive", self.name).into());
        }
        if self.write_bytes > 1 << 30 {
            return Err(format!(
                "{}: {} bytes per file is above 1 GiB",
                self.name, self.write_bytes
            )
            .into());
        }
        Ok(())
    }

    /// The directory of rank `rank`'s files.
    pub fn dir(&self, work: &str, rank: u32) -> String {
        if self.unique_dir {
            format!("{work}/{}/r{rank:06}", self.name)
        } else {
            format!("{work}/{}/shared", self.name)
        }
    }

    /// File `i` of rank `rank`.
    pub fn file(&self, work: &str, rank: u32, i: u64) -> String {
        format!("{}/f{rank}.{i}", self.dir(work, rank))
    }

    fn file_key(rank: u32, i: u64) -> u64 {
        (u64::from(rank) << 40) ^ i
    }
}

/// Which mdtest phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MdOp {
    /// Create, write `write_bytes`, close.
    Create,
    /// Stat, checking the size.
    Stat,
    /// Open, read `write_bytes`, close.
    Read,
    /// Remove.
    Remove,
}

impl MdOp {
    /// The phase's name suffix, as IO500 names it.
    pub fn name(self) -> &'static str {
        match self {
            MdOp::Create => "write",
            MdOp::Stat => "stat",
            MdOp::Read => "read",
            MdOp::Remove => "delete",
        }
    }
}

/// A rank's share of one mdtest phase over its first `count` files (all of them for
/// create, which returns how many it made before the time limit).
pub fn run(ctx: &mut RankCtx<'_>, spec: &MdSpec, op: MdOp, count: u64) -> Result<(RankPhase, u64)> {
    let mut lat = Latencies::default();
    let mut share = RankPhase::start(ctx.ranks.rank);
    let mut data = vec![0xa5u8; spec.write_bytes as usize];
    let mut done = 0;
    for i in 0..count {
        if op == MdOp::Create && ctx.past_deadline() {
            share.stonewalled = true;
            break;
        }
        let path = spec.file(&ctx.work, ctx.ranks.rank, i);
        let key = MdSpec::file_key(ctx.ranks.rank, i);
        let verify = spec.verify && !data.is_empty();
        if verify && op == MdOp::Create {
            share.untimed(|| pattern::fill(&mut data, ctx.seed, key, 0));
        }
        let t = Instant::now();
        one(ctx, op, &path, &mut data)?;
        lat.record(op.name(), t.elapsed().as_nanos() as u64);
        if verify
            && op == MdOp::Read
            && share.untimed(|| pattern::first_mismatch(&data, ctx.seed, key, 0).is_some())
        {
            return Err(format!(
                "verify failed: {} on {} holds bytes that were not written",
                ctx.storage.display(&path),
                ctx.label
            )
            .into());
        }
        share.ops += 1;
        if matches!(op, MdOp::Create | MdOp::Read) {
            share.bytes += spec.write_bytes;
        }
        done += 1;
        ctx.progress(1)?;
    }
    Ok((share.finish(&lat), done))
}

fn one(ctx: &RankCtx<'_>, op: MdOp, path: &str, data: &mut [u8]) -> Result<()> {
    let storage = ctx.storage;
    match op {
        MdOp::Create => {
            // As mdtest opens its new files: O_CREAT with no O_TRUNC (nothing to cut).
            let h = storage.open_write(path)?;
            if !data.is_empty() {
                storage.write_at(&h, path, data, 0)?;
            }
            storage.close(h, path)
        }
        MdOp::Stat => {
            let size = storage.stat_size(path)?;
            if size != data.len() as u64 {
                return Err(format!(
                    "{} on {} is {size} bytes, {} were written",
                    storage.display(path),
                    ctx.label,
                    data.len()
                )
                .into());
            }
            Ok(())
        }
        MdOp::Read => {
            let h = storage.open_read(path)?;
            if !data.is_empty() {
                storage
                    .read_exact_at(&h, path, data, 0)
                    .map_err(|e| read_by(e, ctx.ranks.rank))?;
            }
            storage.close(h, path)
        }
        MdOp::Remove => storage.unlink(path),
    }
}

/// Untimed, before a create phase: the `left` files of the rank that an earlier
/// repetition made and kept are removed, so that every create makes a new file.
pub fn prepare_create(ctx: &RankCtx<'_>, spec: &MdSpec, left: u64) -> Result<()> {
    for i in 0..left {
        ctx.storage
            .unlink(&spec.file(&ctx.work, ctx.ranks.rank, i))?;
    }
    Ok(())
}

/// Untimed, before a read phase: the baseline's page cache of the rank's files is dropped.
pub fn prepare_read(ctx: &RankCtx<'_>, spec: &MdSpec, count: u64) -> Result<()> {
    for i in 0..count {
        ctx.storage
            .drop_cache(&spec.file(&ctx.work, ctx.ranks.rank, i))?;
    }
    Ok(())
}
