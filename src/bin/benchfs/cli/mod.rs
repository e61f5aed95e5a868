//! The `benchfs` command line: argument parsing and the subcommands behind it.
//!
//! Subcommands print their results on stdout; that is their job, so this module (and only
//! this module among the library's) may print.
#![allow(clippy::print_stdout)]

mod bench;
pub mod cluster;
pub mod files;
mod mount;
mod placement_stats;
mod rpc_bench;
mod staged;

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
    /// The standard benchmark: sequential bandwidth and small-I/O and metadata latency,
    /// beside the same workload on a local directory.
    Bench(bench::Args),
    /// RPC round-trip latency and pipelined bandwidth of `Ping` against local servers,
    /// with busy polling on and off side by side.
    RpcBench(rpc_bench::Args),
    /// Start, inspect or stop a local cluster.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Mount the file system with FUSE, so unmodified programs use it.
    Mount(mount::Args),
    /// File commands (ls, stat, mkdir, rm, put, get, cat).
    #[command(flatten)]
    File(files::FileCommand),
}

/// An error from a subcommand, printed as one line.
pub type CliError = Box<dyn std::error::Error>;

/// An error about a local file: what was being done, the file, and the system's reason.
pub(crate) fn local_error(what: &str, path: &Path, e: std::io::Error) -> CliError {
    format!("{what} {}: {e}", path.display()).into()
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::PlacementStats(args) => placement_stats::run(args),
        Command::Bench(args) => bench::run(args),
        Command::RpcBench(args) => rpc_bench::run(args),
        Command::Cluster(c) => cluster::run(c),
        Command::Mount(args) => mount::run(args),
        Command::File(c) => files::run(c),
    }
}
