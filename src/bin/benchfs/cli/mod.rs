//! The `benchfs` command line: argument parsing and the subcommands behind it.
//!
//! Subcommands print their results on stdout; that is their job, so this module (and only
//! this module among the library's) may print.

/// `println!` for subcommands: ends quietly when the reader went away ([`print_out`]), and
/// returns any other error from the enclosing function.
macro_rules! outln {
    () => {
        $crate::cli::print_out("\n")?
    };
    ($($arg:tt)*) => {
        $crate::cli::print_out(&format!("{}\n", format_args!($($arg)*)))?
    };
}

mod bench;
pub mod cluster;
pub mod files;
mod mount;
mod placement_stats;
mod rpc_bench;
mod staged;
mod stats;

use std::path::Path;

use clap::{Parser, Subcommand};

/// BenchFS: an ad hoc distributed file system and benchmark framework.
#[derive(Debug, Parser)]
#[command(name = "benchfs", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Measure how evenly the placement ring spreads keys and how many move when a server
    /// joins or leaves.
    PlacementStats(placement_stats::Args),
    /// Benchmarks: IOR- and mdtest-like workloads, IO500, the standard suite and sweeps,
    /// with a report directory of JSON, CSV and plots.
    Bench(Box<bench::Args>),
    /// RPC round-trip latency and pipelined bandwidth of `Ping` against local servers,
    /// with busy polling on and off side by side.
    RpcBench(rpc_bench::Args),
    /// Start, inspect or stop a local cluster.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Mount the file system with FUSE, so unmodified programs use it.
    Mount(mount::Args),
    /// Every server's counters, queue depth and per-operation latency (tables, or --json).
    Stats(stats::Args),
    /// File commands (ls, stat, mkdir, rm, put, get, cat, verify).
    #[command(flatten)]
    File(files::FileCommand),
}

/// An error from a subcommand, printed as one line.
pub type CliError = Box<dyn std::error::Error>;

/// Writes `text` to standard output. A reader that went away (`benchfs stats | head -1`)
/// ends the output without an error: what it did not read, it did not want.
pub(crate) fn print_out(text: &str) -> Result<(), CliError> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// An error about a local file: what was being done, the file, and the system's reason.
pub(crate) fn local_error(what: &str, path: &Path, e: std::io::Error) -> CliError {
    format!("{what} {}: {e}", path.display()).into()
}

/// The commit this binary was built from, with `-dirty` when tracked files differed from
/// it (see `build.rs`).
pub(crate) fn commit() -> &'static str {
    env!("BENCHFS_COMMIT")
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::PlacementStats(args) => placement_stats::run(args),
        Command::Bench(args) => bench::run(*args),
        Command::RpcBench(args) => rpc_bench::run(args),
        Command::Cluster(c) => cluster::run(c),
        Command::Mount(args) => mount::run(args),
        Command::Stats(args) => stats::run(&args),
        Command::File(c) => files::run(c),
    }
}
