//! `benchfs bench`: IOR- and mdtest-like workloads, the IO500 phases, the standard suite
//! and sweeps over cluster settings, on the native client or a POSIX directory, by one or
//! many processes (local ones it starts, or MPI ranks), with a report directory of JSON,
//! CSV, plots and a summary page. The framework is `benchfs-bench`; this module turns a
//! command line into its plans, starts clusters and processes, and prints.

mod args;
mod external;
mod launch;
mod sweep;

use std::path::PathBuf;

pub(crate) use args::parse_size;
pub use args::Args;
use args::{Common, Workload};
use benchfs_bench::run::Plan;
use benchfs_bench::sync::Ranks;

use super::CliError;

/// Runs `benchfs bench`.
pub fn run(args: Args) -> Result<(), CliError> {
    stop_on_interrupt();
    match args.workload {
        Workload::Worker(w) => launch::worker(&w),
        Workload::Sweep(mut s) => {
            let out = ReportDir::claim(&mut s.common, &format!("sweep-{}", s.workload))?;
            keep_if_written(out, sweep::run(&s))
        }
        other => {
            let mut common = other.common().clone();
            let name = other.name();
            let phases = other.phases()?;
            let out = ReportDir::claim(&mut common, &name)?;
            let ran = launch::run(&common, &name, phases, &std::collections::BTreeMap::new());
            keep_if_written(out, ran.map(drop))
        }
    }
}

/// The report directory of a run that reports (not a rank other than 0), made and
/// checked before the run, so an `--out` that cannot be written fails at once instead
/// of after the measuring.
struct ReportDir {
    /// The directories this run made (and so may remove again): the report directory
    /// first, then those above it that it made too (the default's `bench-results`).
    made: Vec<PathBuf>,
}

impl ReportDir {
    /// Makes and checks the report directory, and fixes it in `common.out` (a default
    /// one's name holds the time, which must not change between here and the report).
    fn claim(common: &mut Common, name: &str) -> Result<Option<ReportDir>, CliError> {
        if Ranks::from_env()?.is_some_and(|r| r.rank != 0) {
            return Ok(None);
        }
        let path = common.out.clone().unwrap_or_else(|| default_out(name));
        let made: Vec<PathBuf> = path
            .ancestors()
            .take_while(|dir| !dir.as_os_str().is_empty() && !dir.exists())
            .map(PathBuf::from)
            .collect();
        let fail = |what: &str, e: std::io::Error| -> CliError {
            format!("report directory {}: {what}: {e}", path.display()).into()
        };
        std::fs::create_dir_all(&path).map_err(|e| fail("cannot create it", e))?;
        // A report written over another run's would leave that run's files (plots of
        // other phases) beside it, read as this run's.
        let held = std::fs::read_dir(&path)
            .map_err(|e| fail("cannot list it", e))?
            .next()
            .is_some();
        if held {
            return Err(format!(
                "report directory {} is not empty (another run's report?): give a new --out, or empty it",
                path.display()
            )
            .into());
        }
        let probe = path.join(".benchfs-write-check");
        std::fs::File::create(&probe).map_err(|e| fail("cannot write in it", e))?;
        let _ = std::fs::remove_file(&probe);
        common.out = Some(path);
        Ok(Some(ReportDir { made }))
    }
}

/// Passes `result` on; if the run failed, a report directory it made is removed again
/// with what the run wrote there (a report that could not be written whole), and so are
/// the directories it made above it, where nothing else came meanwhile.
fn keep_if_written(dir: Option<ReportDir>, result: Result<(), CliError>) -> Result<(), CliError> {
    if let (Err(_), Some(dir)) = (&result, dir) {
        if let Some((report, above)) = dir.made.split_first() {
            let _ = std::fs::remove_dir_all(report);
            for parent in above {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
    result
}

/// SIGINT and SIGTERM stop the run at its next operation as a failure, which removes
/// its workspace and stops a cluster it started; a second one ends the process at once.
fn stop_on_interrupt() {
    use tokio::signal::unix::{signal, SignalKind};
    let caught = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .and_then(|runtime| {
            let signals = runtime.block_on(async {
                Ok::<_, std::io::Error>((
                    signal(SignalKind::interrupt())?,
                    signal(SignalKind::terminate())?,
                ))
            })?;
            Ok((runtime, signals))
        });
    let (runtime, (mut int, mut term)) = match caught {
        Ok(caught) => caught,
        Err(e) => {
            tracing::warn!(%e, "cannot catch SIGINT and SIGTERM: an interrupt leaves the run's files");
            return;
        }
    };
    std::thread::spawn(move || {
        runtime.block_on(async move {
            for _ in 0..2 {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                if benchfs_bench::run::interrupted() {
                    std::process::exit(130);
                }
                #[allow(clippy::print_stderr)]
                {
                    eprintln!("benchfs bench: interrupted; removing the run's files (again to stop at once)");
                }
                benchfs_bench::run::interrupt();
            }
        })
    });
}

/// Where a run's report goes unless --out says: `bench-results/<UTC time>-<workload>`.
fn default_out(name: &str) -> PathBuf {
    PathBuf::from("bench-results").join(format!(
        "{}-{name}",
        benchfs_bench::report::utc_stamp(std::time::SystemTime::now())
    ))
}

/// A plan's fixed part from the command line.
fn plan(common: &Common, phases: Vec<benchfs_bench::run::Phase>, fresh: String) -> Plan {
    let reuse = common.workspace.is_some() && !phases.iter().any(benchfs_bench::run::Phase::writes);
    Plan {
        phases,
        targets: Vec::new(),
        reps: common.reps,
        stonewall_secs: common.stonewall,
        seed: common.seed,
        keep: common.keep || reuse,
        limits: !common.no_limits,
        network_payload: 1 << 20,
        workspace: common.workspace.clone().unwrap_or(fresh),
        reuse,
        barrier_timeout_secs: common.barrier_timeout,
    }
}
