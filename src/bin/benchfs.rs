//! `benchfs`: the command-line tool for BenchFS clusters, files and benchmarks.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = benchfs::cli::Cli::parse();
    match benchfs::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("benchfs: {e}");
            }
            ExitCode::FAILURE
        }
    }
}
