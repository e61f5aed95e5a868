//! `benchfsd`: the BenchFS server daemon.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    benchfs_ucx::keep_freed_heap_memory();
    match benchfs_server::daemon::run(benchfs_server::daemon::Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("benchfsd: {e}");
            }
            ExitCode::FAILURE
        }
    }
}
