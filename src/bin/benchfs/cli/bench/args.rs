//! The command line of `benchfs bench`.

use std::path::PathBuf;

use benchfs_bench::io500;
use benchfs_bench::ior::IorSpec;
use benchfs_bench::mdtest::{MdOp, MdSpec};
use benchfs_bench::run::Phase;

use super::super::CliError;

/// Most client processes `--clients` starts on one machine. Each is a process of its own
/// with a UCX context; ranks beyond this many are a launcher's (mpirun, srun) to start.
pub const LOCAL_CLIENTS_MAX: u32 = 1024;

/// `--clients`: 1 to [`LOCAL_CLIENTS_MAX`].
fn local_clients(text: &str) -> Result<u32, String> {
    let clients: u32 = text.parse().map_err(|e| format!("{e}"))?;
    match clients {
        0 => Err("at least 1".into()),
        n if n > LOCAL_CLIENTS_MAX => Err(format!(
            "at most {LOCAL_CLIENTS_MAX} client processes on one machine; start more ranks \
             with mpirun or srun (their ranks are the clients)"
        )),
        n => Ok(n),
    }
}

/// Arguments of `benchfs bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The workload.
    #[command(subcommand)]
    pub workload: Workload,
}

/// Workloads.
#[derive(Debug, clap::Subcommand)]
pub enum Workload {
    /// The standard suite (`make run`): ior easy and hard write and read, mdtest easy
    /// create/stat/remove and mdtest hard write/stat/read/remove.
    Suite(SuiteArgs),
    /// IOR-like bandwidth: write then read, a file per process or one shared file.
    Ior(IorArgs),
    /// mdtest-like metadata rates: create, stat, read, remove.
    Mdtest(MdArgs),
    /// The IO500 phases in the official order with the official shapes, and the score.
    Io500(Io500Args),
    /// One workload over a grid of cluster settings, restarting the cluster per point.
    Sweep(super::sweep::SweepArgs),
    /// One rank of a run started by `benchfs bench` (internal).
    #[command(hide = true)]
    Worker(WorkerArgs),
}

/// The options that name a running cluster, which the options of a cluster the benchmark
/// starts conflict with (a hostile run found them ignored there without a word).
const CLUSTER_GIVEN: [&str; 2] = ["dir", "registry"];

/// What every workload takes: where to run, with how many processes, and where the report
/// goes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Use the running cluster in this directory instead of starting one.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Use the servers published in this registry (started by mpirun/srun) instead.
    #[arg(long, value_name = "DIR", conflicts_with = "dir")]
    pub registry: Option<PathBuf>,
    /// File holding the job secret of the cluster (default: $BENCHFS_SECRET_FILE).
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// Servers of the cluster the benchmark starts (not with --dir or --registry, whose
    /// cluster is as it is).
    #[arg(long, default_value_t = 4, conflicts_with_all = CLUSTER_GIVEN)]
    pub servers: usize,
    /// Backend of the cluster the benchmark starts: memory, file, iouring or tiered.
    #[arg(long, default_value = "memory", conflicts_with_all = CLUSTER_GIVEN)]
    pub backend: String,
    /// Chunk size of the cluster the benchmark starts (bytes; k, m, g suffixes).
    #[arg(long, value_parser = parse_size, conflicts_with_all = CLUSTER_GIVEN)]
    pub chunk_size: Option<u64>,
    /// Rendezvous (RDMA) threshold of the cluster the benchmark starts.
    #[arg(long, value_parser = parse_size, conflicts_with_all = CLUSTER_GIVEN)]
    pub rdma_threshold: Option<u64>,
    /// Replicas of the cluster the benchmark starts.
    #[arg(long, default_value_t = 1, conflicts_with_all = CLUSTER_GIVEN)]
    pub replicas: u32,
    /// Run on this directory (a FUSE mount, a local file system) instead of the native
    /// client; the run works in a new subdirectory of it.
    #[arg(long, value_name = "DIR")]
    pub posix: Option<PathBuf>,
    /// Also run the same phases on this local directory, as the baseline, in the same run.
    #[arg(long, value_name = "DIR")]
    pub baseline: Option<PathBuf>,
    /// Label of the --baseline target in the report.
    #[arg(long, default_value = "local")]
    pub baseline_label: String,
    /// Work in this directory under the target's root instead of a fresh one. With
    /// --keep, a later run of only read phases (ior --phases read, mdtest --phases
    /// stat,read) on the same name reads what this run left, and removes nothing.
    #[arg(long, value_name = "NAME")]
    pub workspace: Option<String>,
    /// Also run the phases with IOR and mdtest from this directory (built with the BENCHFS
    /// backend by scripts/build-ior.sh), through the C API under mpirun, as the target
    /// `ior-capi` of the same report.
    #[arg(long, value_name = "DIR")]
    pub ior_bin: Option<PathBuf>,
    /// Client processes started on this machine, at most 1024 (ignored under mpirun/srun,
    /// whose ranks are the clients).
    #[arg(long, default_value_t = 1, value_parser = local_clients)]
    pub clients: u32,
    /// Repetitions; results show their mean and standard deviation.
    #[arg(long, default_value_t = 1)]
    pub reps: u32,
    /// Time limit of each write or create phase in seconds (stonewalling).
    #[arg(long, value_name = "SECS")]
    pub stonewall: Option<f64>,
    /// Report directory (default bench-results/<UTC time>-<workload>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Leave the files the run wrote in place.
    #[arg(long)]
    pub keep: bool,
    /// Do not measure the network and store limits.
    #[arg(long)]
    pub no_limits: bool,
    /// Seed of random offsets and verify patterns.
    #[arg(long, default_value_t = 0x5eed)]
    pub seed: u64,
    /// Directory the ranks meet in (shared by all hosts under mpirun/srun; default: a new
    /// one under the registry directory, or under /tmp for local processes).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Seconds a rank waits at a barrier for the others.
    #[arg(long, default_value_t = 600)]
    pub barrier_timeout: u64,
}

/// The sizes of the IO500 shapes that the suite, io500 and sweep use.
#[derive(Debug, Clone, clap::Args)]
pub struct Sizes {
    /// Bytes per rank of ior-easy.
    #[arg(long, default_value = "256m", value_parser = parse_size)]
    pub easy_block: u64,
    /// 47008-byte segments per rank of ior-hard.
    #[arg(long, default_value_t = 2000)]
    pub hard_segments: u64,
    /// Files per rank of mdtest-easy.
    #[arg(long, default_value_t = 2000)]
    pub easy_files: u64,
    /// Files per rank of mdtest-hard.
    #[arg(long, default_value_t = 1000)]
    pub hard_files: u64,
}

impl Sizes {
    /// ior-easy, ior-hard, mdtest-easy and mdtest-hard at these sizes.
    pub fn specs(&self) -> (IorSpec, IorSpec, MdSpec, MdSpec) {
        (
            IorSpec::easy(self.easy_block),
            IorSpec::hard(self.hard_segments),
            MdSpec::easy(self.easy_files),
            MdSpec::hard(self.hard_files),
        )
    }
}

/// `benchfs bench suite`.
#[derive(Debug, Clone, clap::Args)]
pub struct SuiteArgs {
    /// The sizes of the IO500 shapes.
    #[command(flatten)]
    pub sizes: Sizes,
    /// Everything else.
    #[command(flatten)]
    pub common: Common,
}

/// `benchfs bench ior`.
#[derive(Debug, Clone, clap::Args)]
pub struct IorArgs {
    /// IO500's shape: easy (file per process, 2 MiB transfers) or hard (one shared file,
    /// 47008-byte transfers); options below override it.
    #[arg(long, value_parser = ["easy", "hard"])]
    pub preset: Option<String>,
    /// Bytes per call.
    #[arg(short = 't', long, value_parser = parse_size)]
    pub transfer: Option<u64>,
    /// Bytes per block (a multiple of --transfer).
    #[arg(short = 'b', long, value_parser = parse_size)]
    pub block: Option<u64>,
    /// Blocks per rank.
    #[arg(short = 's', long)]
    pub segments: Option<u64>,
    /// One shared file instead of a file per process.
    #[arg(long)]
    pub shared: bool,
    /// Random offsets.
    #[arg(short = 'z', long)]
    pub random: bool,
    /// No fsync before close.
    #[arg(long)]
    pub no_fsync: bool,
    /// Write a checkable pattern and check every byte read; a wrong byte fails the run.
    #[arg(long)]
    pub verify: bool,
    /// Phases: write, read, or both.
    #[arg(long, value_delimiter = ',', default_value = "write,read")]
    pub phases: Vec<IorPhase>,
    /// Everything else.
    #[command(flatten)]
    pub common: Common,
}

/// An IOR phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IorPhase {
    /// Write.
    Write,
    /// Read back.
    Read,
}

/// `benchfs bench mdtest`.
#[derive(Debug, Clone, clap::Args)]
pub struct MdArgs {
    /// IO500's shape: easy (empty files, a directory per rank) or hard (3901-byte files
    /// in one directory); options below override it.
    #[arg(long, value_parser = ["easy", "hard"])]
    pub preset: Option<String>,
    /// Files per rank.
    #[arg(short = 'n', long)]
    pub files: Option<u64>,
    /// All ranks in one directory.
    #[arg(long)]
    pub shared_dir: bool,
    /// Bytes written to each file and read back.
    #[arg(short = 'w', long, value_parser = parse_size)]
    pub write_bytes: Option<u64>,
    /// Check every byte read back.
    #[arg(long)]
    pub verify: bool,
    /// Phases, in order.
    #[arg(long, value_delimiter = ',', default_value = "create,stat,read,remove")]
    pub phases: Vec<MdPhase>,
    /// Everything else.
    #[command(flatten)]
    pub common: Common,
}

/// An mdtest phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MdPhase {
    /// Create (and write).
    Create,
    /// Stat.
    Stat,
    /// Read back.
    Read,
    /// Remove.
    Remove,
}

/// `benchfs bench io500`.
#[derive(Debug, Clone, clap::Args)]
pub struct Io500Args {
    /// The sizes of the IO500 shapes.
    #[command(flatten)]
    pub sizes: Sizes,
    /// Everything else.
    #[command(flatten)]
    pub common: Common,
}

/// `benchfs bench worker`.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// The plan rank 0 wrote.
    #[arg(long)]
    pub plan: PathBuf,
    /// The directory the ranks meet in.
    #[arg(long)]
    pub run_dir: PathBuf,
    /// This rank.
    #[arg(long)]
    pub rank: u32,
    /// Ranks in all.
    #[arg(long)]
    pub size: u32,
}

/// A size in bytes: a number with an optional k, m, g or t suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_lowercase() {
                'k' => 10,
                'm' => 20,
                'g' => 30,
                't' => 40,
                _ => return Err(format!("{s:?}: the suffix must be k, m, g or t")),
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a size"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

impl Workload {
    /// The options every workload shares.
    pub fn common(&self) -> &Common {
        match self {
            Workload::Suite(a) => &a.common,
            Workload::Ior(a) => &a.common,
            Workload::Mdtest(a) => &a.common,
            Workload::Io500(a) => &a.common,
            Workload::Sweep(a) => &a.common,
            Workload::Worker(_) => unreachable!("a worker has no command-line workload"),
        }
    }

    /// Its name in report directories.
    pub fn name(&self) -> String {
        match self {
            Workload::Suite(_) => "suite".into(),
            Workload::Ior(a) => a.spec().name,
            Workload::Mdtest(a) => a.spec().name,
            Workload::Io500(_) => "io500".into(),
            Workload::Sweep(_) => "sweep".into(),
            Workload::Worker(_) => "worker".into(),
        }
    }

    /// Its phases, in order.
    pub fn phases(&self) -> Result<Vec<Phase>, CliError> {
        Ok(match self {
            Workload::Suite(a) => {
                let (easy, hard, md_easy, md_hard) = a.sizes.specs();
                suite_phases(&easy, &hard, &md_easy, &md_hard)
            }
            Workload::Ior(a) => a.phases(),
            Workload::Mdtest(a) => a.phases(),
            Workload::Io500(a) => {
                let (easy, hard, md_easy, md_hard) = a.sizes.specs();
                io500::phases(&easy, &hard, &md_easy, &md_hard)
            }
            Workload::Sweep(_) | Workload::Worker(_) => return Err("no phases of their own".into()),
        })
    }
}

/// The standard suite's phases.
pub fn suite_phases(
    easy: &IorSpec,
    hard: &IorSpec,
    md_easy: &MdSpec,
    md_hard: &MdSpec,
) -> Vec<Phase> {
    let md = |spec: &MdSpec, md: MdOp| Phase::Md {
        spec: spec.clone(),
        md,
    };
    vec![
        Phase::IorWrite(easy.clone()),
        Phase::IorRead(easy.clone()),
        Phase::IorWrite(hard.clone()),
        Phase::IorRead(hard.clone()),
        md(md_easy, MdOp::Create),
        md(md_easy, MdOp::Stat),
        md(md_easy, MdOp::Remove),
        md(md_hard, MdOp::Create),
        md(md_hard, MdOp::Stat),
        md(md_hard, MdOp::Read),
        md(md_hard, MdOp::Remove),
    ]
}

impl IorArgs {
    /// The workload's shape.
    pub fn spec(&self) -> IorSpec {
        let base = match self.preset.as_deref() {
            Some("hard") => IorSpec::hard(2000),
            Some(_) => IorSpec::easy(256 << 20),
            None => IorSpec {
                name: "ior".into(),
                transfer: 1 << 20,
                block: 64 << 20,
                ..IorSpec::easy(64 << 20)
            },
        };
        let transfer = self.transfer.unwrap_or(base.transfer);
        IorSpec {
            transfer,
            block: self.block.unwrap_or(
                if self.transfer.is_some() && self.preset.as_deref() == Some("hard") {
                    transfer
                } else {
                    base.block
                },
            ),
            segments: self.segments.unwrap_or(base.segments),
            file_per_process: base.file_per_process && !self.shared,
            random: self.random,
            fsync: !self.no_fsync,
            verify: self.verify,
            ..base
        }
    }

    fn phases(&self) -> Vec<Phase> {
        let spec = self.spec();
        self.phases
            .iter()
            .map(|p| match p {
                IorPhase::Write => Phase::IorWrite(spec.clone()),
                IorPhase::Read => Phase::IorRead(spec.clone()),
            })
            .collect()
    }
}

impl MdArgs {
    /// The workload's shape.
    pub fn spec(&self) -> MdSpec {
        let base = match self.preset.as_deref() {
            Some("hard") => MdSpec::hard(1000),
            Some(_) => MdSpec::easy(2000),
            None => MdSpec {
                name: "mdtest".into(),
                ..MdSpec::easy(1000)
            },
        };
        MdSpec {
            files_per_rank: self.files.unwrap_or(base.files_per_rank),
            unique_dir: base.unique_dir && !self.shared_dir,
            write_bytes: self.write_bytes.unwrap_or(base.write_bytes),
            verify: self.verify,
            ..base
        }
    }

    fn phases(&self) -> Vec<Phase> {
        let spec = self.spec();
        self.phases
            .iter()
            .map(|p| Phase::Md {
                spec: spec.clone(),
                md: match p {
                    MdPhase::Create => MdOp::Create,
                    MdPhase::Stat => MdOp::Stat,
                    MdPhase::Read => MdOp::Read,
                    MdPhase::Remove => MdOp::Remove,
                },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes_and_refuse_junk() {
        assert_eq!(parse_size("47008"), Ok(47008));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("2M"), Ok(2 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("1x").is_err());
        assert!(parse_size("m").is_err());
        assert!(parse_size("99999999999t").is_err());
    }
}
