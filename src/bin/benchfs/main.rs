//! `benchfs`: the command-line tool for BenchFS clusters, files and benchmarks.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    benchfs_ucx::keep_freed_heap_memory();
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("benchfs: {e}");
            }
            // As a shell reports a process SIGINT ended.
            if benchfs_bench::run::interrupted() {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
