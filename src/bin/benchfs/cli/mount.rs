//! `benchfs mount MOUNTPOINT`: BenchFS through FUSE, for programs that cannot be relinked.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::cluster::Target;
use super::{local_error, CliError};
use benchfs::blocking::BenchFS;
use benchfs::client::{process_owner, FsClient};
use benchfs::config::ServerConfig;
use benchfs::registry::ServerEntry;
use benchfs_fuse::{check_mountpoint, Mount, Settings};

/// How long a detached mount may take to appear.
const MOUNT_WAIT: Duration = Duration::from_secs(60);
/// How long the check before mounting waits for each server.
const REACH_TIMEOUT: Duration = Duration::from_secs(5);

/// `benchfs mount` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The directory to mount on.
    pub mountpoint: PathBuf,
    /// The cluster: `--dir` of a local cluster, or `--registry` of servers a launcher
    /// started.
    #[command(flatten)]
    pub target: Target,
    /// A configuration file for the client side (timeouts, replicas, cache lifetime);
    /// its registry_dir names the servers unless --registry is given.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Mount options, comma-separated: direct_io (default) | kernel_cache |
    /// writeback_cache, threads=N (default 4), max_write=BYTES (default 1 MiB),
    /// attr_timeout=SECS, entry_timeout=SECS, allow_other, ro, rw.
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Serve in the foreground; without it the mount detaches once it is up and logs to
    /// --log.
    #[arg(short, long)]
    pub foreground: bool,
    /// Log file of a detached mount.
    #[arg(long, value_name = "FILE", default_value = "/tmp/benchfs-mount.log")]
    pub log: PathBuf,
}

/// Mounts, then serves (foreground) or returns once the mount is up (detached).
pub fn run(args: Args) -> Result<(), CliError> {
    let config = match &args.config {
        Some(path) => {
            let mut config = ServerConfig::from_file(path)?;
            if let Some(registry) = &args.target.registry {
                config.network.registry_dir = registry.clone();
            }
            config
        }
        None => args.target.config()?,
    };
    let servers = FsClient::published_servers(&config.network.registry_dir)?;
    let secret = match args.target.secret_path() {
        Some(path) => benchfs::config::secret::read_secret(&path)?,
        None => Vec::new(),
    };
    check_reachable(&config, &servers, &secret)?;
    let mut settings = Settings::new(config, servers, secret);
    for options in &args.options {
        settings.apply_options(options)?;
    }
    check_mountpoint(&args.mountpoint)?;
    // A second mount would stack on the first and hide it, handles and all.
    if std::fs::canonicalize(&args.mountpoint).is_ok_and(|m| is_mounted(&m)) {
        return Err(format!(
            "{} already holds a BenchFS mount (unmount it first: fusermount3 -u {})",
            args.mountpoint.display(),
            args.mountpoint.display()
        )
        .into());
    }
    if !args.foreground {
        return detach(&args);
    }
    init_logging();
    // The user who mounts owns the root directory.
    let mount = Mount::new(&args.mountpoint, settings, process_owner())?;
    mount.serve()?;
    Ok(())
}

/// Refuses to mount a cluster none of whose servers answers (a registry of servers not
/// started yet or all dead, another job's): the mount would come up and fail every call.
/// A server that is stopped costs at most [`REACH_TIMEOUT`].
fn check_reachable(
    config: &ServerConfig,
    servers: &[ServerEntry],
    secret: &[u8],
) -> Result<(), CliError> {
    let mut probe = config.clone();
    probe.network.rpc_timeout = probe.network.rpc_timeout.min(REACH_TIMEOUT);
    let fs = BenchFS::with_servers(&probe, servers.to_vec(), secret.to_vec())?;
    let answers = fs.block_on(fs.client().server_transports());
    if answers.iter().any(|(_, answer)| answer.is_ok()) {
        return Ok(());
    }
    let refused = answers
        .iter()
        .all(|(_, answer)| answer.as_ref().is_err_and(|e| e.errno() == libc::EACCES));
    let why: Vec<String> = answers
        .into_iter()
        .filter_map(|(_, answer)| answer.err().map(|e| e.to_string()))
        .collect();
    let (what, hint) = if refused {
        ("let this mount in", "give it the servers' job secret")
    } else {
        ("answered", "start the servers first")
    };
    Err(format!(
        "no server of the registry {} {what}, so nothing would work through the mount; \
         {hint} ({})",
        config.network.registry_dir.display(),
        why.join("; ")
    )
    .into())
}

/// Starts this command again in the foreground, in its own process group with its output
/// in the log, and waits until its mount appears (or it exits).
fn detach(args: &Args) -> Result<(), CliError> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.log)
        .map_err(|e| local_error("open log", &args.log, e))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let mut child = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .arg("--foreground")
        .stdin(Stdio::null())
        .stdout(
            log.try_clone()
                .map_err(|e| local_error("open log", &args.log, e))?,
        )
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start the mount process: {e}"))?;
    let mountpoint = std::fs::canonicalize(&args.mountpoint)
        .map_err(|e| local_error("mount point", &args.mountpoint, e))?;
    let start = Instant::now();
    while start.elapsed() < MOUNT_WAIT {
        if is_mounted(&mountpoint) {
            outln!(
                "mounted {} (pid {}, log {})",
                mountpoint.display(),
                child.id(),
                args.log.display()
            );
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            return Err(format!(
                "the mount process exited ({status}) before {} was mounted; see {}",
                mountpoint.display(),
                args.log.display()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    Err(format!(
        "{} was not mounted within {} s; see {}",
        mountpoint.display(),
        MOUNT_WAIT.as_secs(),
        args.log.display()
    )
    .into())
}

/// Whether a BenchFS mount sits on `mountpoint` (from /proc/self/mountinfo).
pub fn is_mounted(mountpoint: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = mountpoint.to_string_lossy();
    info.lines().any(|line| {
        let mut fields = line.split(' ');
        let point = fields.nth(4);
        // The type is fuse.benchfs through fusermount3, fuse with source benchfs when
        // root mounts directly.
        point == Some(wanted.as_ref())
            && (line.contains(" - fuse.benchfs ") || line.contains(" - fuse benchfs "))
    })
}

fn init_logging() {
    let level = match std::env::var("BENCHFS_LOG").as_deref() {
        Ok("debug") => tracing::Level::DEBUG,
        Ok("trace") => tracing::Level::TRACE,
        Ok("warn") => tracing::Level::WARN,
        _ => tracing::Level::INFO,
    };
    let _ = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .try_init();
}
