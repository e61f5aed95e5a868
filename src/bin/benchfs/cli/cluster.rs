//! `benchfs cluster up|status|down`: a local cluster of real `benchfsd` processes on
//! loopback, kept in one directory (config, registry, data, logs, pids).

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::bench::parse_size;
use super::{local_error, CliError};
use benchfs::blocking::BenchFS;
use benchfs::config::secret;
use benchfs::config::{Backend, ServerConfig};
use benchfs::registry;

/// Where a local cluster keeps its files unless told otherwise.
pub const DEFAULT_DIR: &str = "/tmp/benchfs-cluster";

/// Which cluster a command talks to, and the job secret it presents.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The cluster directory (from `benchfs cluster up --dir`). A relative path is taken
    /// from the current directory, and the cluster's config records it absolute, so the
    /// cluster can be used from anywhere.
    #[arg(long, default_value = DEFAULT_DIR, value_parser = absolute_dir)]
    pub dir: PathBuf,
    /// File holding the job secret (mode 0600 or stricter); default: the file
    /// $BENCHFS_SECRET_FILE names. `cluster up` starts the servers with it.
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// The registry of servers started by a job launcher (`mpirun`/`srun benchfsd
    /// --registry DIR`), used instead of a cluster directory with the defaults and
    /// BENCHFS_* variables.
    #[arg(long, value_name = "DIR")]
    pub registry: Option<PathBuf>,
}

/// `--dir` as an absolute path.
fn absolute_dir(arg: &str) -> Result<PathBuf, String> {
    std::path::absolute(arg).map_err(|e| format!("{arg}: {e}"))
}

impl Target {
    /// The cluster's configuration, with its registry.
    pub fn config(&self) -> Result<ServerConfig, CliError> {
        if let Some(registry) = &self.registry {
            let mut config = ServerConfig::from_env()?;
            config.network.registry_dir = registry.clone();
            return Ok(config);
        }
        let path = self.dir.join("benchfs.toml");
        if !path.exists() {
            return Err(format!(
                "no cluster in {} (run `benchfs cluster up --dir {}`)",
                self.dir.display(),
                self.dir.display()
            )
            .into());
        }
        Ok(ServerConfig::from_file(path)?)
    }

    /// The job secret file in use: `--secret-file`, else `BENCHFS_SECRET_FILE`.
    pub fn secret_path(&self) -> Option<PathBuf> {
        secret::secret_file(self.secret_file.as_deref())
    }

    /// A client connected to the cluster.
    pub fn connect(&self) -> Result<BenchFS, CliError> {
        self.connect_with(&self.config()?)
    }

    /// A client connected with `config` (the cluster's, perhaps adjusted), presenting the
    /// job secret if one is given.
    pub fn connect_with(&self, config: &ServerConfig) -> Result<BenchFS, CliError> {
        let secret = match self.secret_path() {
            Some(path) => secret::read_secret(&path)?,
            None => Vec::new(),
        };
        BenchFS::connect_with_secret(config, secret)
            .map_err(|e| format!("cannot connect to the cluster {}: {e}", self.describe()).into())
    }

    /// The cluster as messages name it: its registry, or its directory.
    pub fn describe(&self) -> String {
        match &self.registry {
            Some(registry) => format!("with registry {}", registry.display()),
            None => format!("in {}", self.dir.display()),
        }
    }
}

/// `benchfs cluster` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Start N servers on loopback and wait until all are published. A directory that
    /// holds an earlier cluster's data needs --resume (start that cluster again) or --wipe
    /// (discard its data).
    Up(UpArgs),
    /// Show each server's counters.
    Status(Target),
    /// Stop the servers: SIGTERM (and SIGCONT, so a stopped server takes it), then
    /// SIGKILL to those still running after --timeout.
    Down(DownArgs),
    /// Wait until N servers are published and every one answers (for job scripts that
    /// start servers with mpirun or srun).
    Wait(WaitArgs),
}

/// Arguments of `benchfs cluster wait`.
#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// Number of servers to wait for.
    #[arg(long)]
    pub servers: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Which cluster.
    #[command(flatten)]
    pub target: Target,
}

/// Arguments of `benchfs cluster down`.
#[derive(Debug, clap::Args)]
pub struct DownArgs {
    /// Seconds to wait for the servers to stop before killing them: a clean stop syncs
    /// the store (a tiered server writes its memory tier back first), which a kill loses.
    #[arg(long, default_value_t = DOWN_TIMEOUT_SECS)]
    pub timeout: u64,
    /// Which cluster.
    #[command(flatten)]
    pub target: Target,
}

/// How long `cluster down` waits for a clean stop by default, in seconds.
pub const DOWN_TIMEOUT_SECS: u64 = 60;

/// Arguments of `benchfs cluster up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Number of servers.
    #[arg(long, default_value_t = 4, conflicts_with = "resume")]
    pub servers: usize,
    /// Chunk store backend: memory, file, iouring or tiered.
    #[arg(long, default_value = "memory", conflicts_with = "resume")]
    pub backend: String,
    /// Chunk size in bytes (k, m, g suffixes: powers of 1024).
    #[arg(long, conflicts_with = "resume", value_parser = parse_size)]
    pub chunk_size: Option<u64>,
    /// Copies of each chunk and record (at most --servers).
    #[arg(long, default_value_t = 1, conflicts_with = "resume")]
    pub replicas: u32,
    /// RPC timeout in milliseconds.
    #[arg(long, conflicts_with = "resume")]
    pub rpc_timeout_ms: Option<u64>,
    /// RDMA threshold in bytes (default: the config's, or the chunk size when that is
    /// smaller).
    #[arg(long, conflicts_with = "resume", value_parser = parse_size)]
    pub rdma_threshold: Option<u64>,
    /// Busy-poll window in microseconds.
    #[arg(long, conflicts_with = "resume")]
    pub busy_poll_us: Option<u64>,
    /// Largest file kept in its metadata record, in bytes (`storage.inline_bytes`; 0:
    /// inline files off).
    #[arg(long, conflicts_with = "resume", value_parser = parse_size)]
    pub inline_bytes: Option<u64>,
    /// Bytes of chunk memory each server faults in at start (`storage.prefault_bytes`;
    /// memory and tiered backends), so the first writes take no page faults.
    #[arg(long, conflicts_with = "resume", value_parser = parse_size)]
    pub prefault_bytes: Option<u64>,
    /// Start the stopped cluster in --dir again on its data and configuration: the same
    /// node ids, data directories and backend.
    #[arg(long, conflicts_with = "wipe")]
    pub resume: bool,
    /// Discard the data of an earlier cluster in --dir and start a new, empty one.
    #[arg(long)]
    pub wipe: bool,
    /// Which cluster.
    #[command(flatten)]
    pub target: Target,
}

impl UpArgs {
    /// A new cluster of `servers` servers on `backend` in `target`'s directory, with the
    /// default settings.
    pub fn new(target: Target, servers: usize, backend: &str) -> UpArgs {
        UpArgs {
            servers,
            backend: backend.to_string(),
            chunk_size: None,
            replicas: 1,
            rpc_timeout_ms: None,
            rdma_threshold: None,
            busy_poll_us: None,
            inline_bytes: None,
            prefault_bytes: None,
            resume: false,
            wipe: false,
            target,
        }
    }
}

/// Runs a `benchfs cluster` subcommand.
pub fn run(command: ClusterCommand) -> Result<(), CliError> {
    let launched = match &command {
        ClusterCommand::Up(args) => args.target.registry.is_some(),
        ClusterCommand::Down(args) => args.target.registry.is_some(),
        _ => false,
    };
    if launched {
        return Err("cluster up and down manage a local cluster in --dir; servers found by --registry were started by a launcher (mpirun, srun), which stops them".into());
    }
    match command {
        ClusterCommand::Up(args) => up(&args),
        ClusterCommand::Status(target) => status(&target),
        ClusterCommand::Down(args) => down(&args),
        ClusterCommand::Wait(args) => wait(&args),
    }
}

/// The `benchfsd` binary installed beside this one.
pub(crate) fn benchfsd_path() -> Result<PathBuf, CliError> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or("cannot locate the benchfs binary's directory")?;
    // Examples and tests live one level below the binaries.
    for candidate in [dir.join("benchfsd"), dir.join("../benchfsd")] {
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    Err(format!("benchfsd not found next to {}", exe.display()).into())
}

/// `benchfs cluster up`: a new cluster, or with --resume the stopped one in the directory.
fn up(args: &UpArgs) -> Result<(), CliError> {
    let dir = &args.target.dir;
    // Settings are checked first, so a refused start leaves no directory behind.
    let settings = match args.resume {
        true => None,
        false => Some(check_settings(args)?),
    };
    let _locked = match settings.is_some() || dir.join("benchfs.toml").exists() {
        true => Some(lock_cluster_dir(dir)?),
        // No cluster to resume: the error comes below, and nothing is made for it.
        false => None,
    };
    let running = running_nodes(dir)?;
    if !running.is_empty() && !args.resume {
        return Err(format!(
            "a cluster is already running in {dir} (benchfs cluster down --dir {dir}; \
             `benchfs cluster up --resume --dir {dir}` starts the servers of it that stopped)",
            dir = dir.display(),
        )
        .into());
    }
    let secret_file = up_secret(args, !running.is_empty())?;
    let nodes = if let Some(settings) = &settings {
        prepare_new(args, settings)?
    } else {
        let nodes: Vec<String> = resume_nodes(dir)?
            .into_iter()
            .filter(|node| !running.contains(node))
            .collect();
        if nodes.is_empty() {
            return Err(format!(
                "every server of the cluster in {} is running",
                dir.display()
            )
            .into());
        }
        let config = ServerConfig::from_file(dir.join("benchfs.toml"))?;
        check_prefault_fits(config.storage.prefault_bytes, nodes.len())?;
        check_resume_env(&dir.join("benchfs.toml"), &config)?;
        nodes
    };
    remove_stale_entries(dir, &nodes, running.is_empty(), args.resume)?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| local_error("cannot create", &logs, e))?;
    record_secret(dir, secret_file.as_deref())?;
    let started = spawn_servers(dir, &nodes, secret_file.as_deref())?;
    let waited = wait_for_servers(dir, &nodes, &started);
    // `pids` lists every server of the cluster that runs: those that were running, and
    // those a failed start left running (it listed only the ones started here).
    if !running.is_empty() || waited.is_err() {
        let listed = write_pids_in_node_order(dir);
        waited?;
        listed?;
    }
    let backend = ServerConfig::from_file(dir.join("benchfs.toml"))?
        .storage
        .backend;
    let also = match running.len() {
        0 => String::new(),
        1 => " (1 was running)".to_string(),
        n => format!(" ({n} were running)"),
    };
    outln!(
        "cluster {}: {}{also}, backend {backend}, dir {}",
        if args.resume { "resumed" } else { "up" },
        servers(nodes.len()),
        dir.display()
    );
    if args.resume && backend == Backend::Memory {
        outln!("note: the memory backend keeps nothing across a restart; the servers started are empty");
    }
    Ok(())
}

/// Refuses a directory holding an earlier cluster's data (unless --wipe), writes a new
/// cluster's `benchfs.toml` (`settings`, checked) into the directory [`lock_cluster_dir`]
/// made, and returns the node ids to start.
fn prepare_new(args: &UpArgs, settings: &str) -> Result<Vec<String>, CliError> {
    let dir = &args.target.dir;
    let data = dir.join("data");
    if holds_data(&data)? {
        if !args.wipe {
            return Err(format!(
                "{dir} holds the data of an earlier cluster ({data}); start that cluster \
                 again on its data with `benchfs cluster up --resume --dir {dir}`, or \
                 discard the data with `benchfs cluster up --wipe --dir {dir}`",
                dir = dir.display(),
                data = data.display()
            )
            .into());
        }
        wipe(&data)?;
    }
    let config_path = dir.join("benchfs.toml");
    std::fs::write(&config_path, settings)
        .map_err(|e| local_error("cannot write", &config_path, e))?;
    let nodes: Vec<String> = (0..args.servers).map(|i| format!("node{i}")).collect();
    let nodes_path = dir.join(NODES_FILE);
    let listed: String = nodes.iter().map(|node| format!("{node}\n")).collect();
    std::fs::write(&nodes_path, listed).map_err(|e| local_error("cannot write", &nodes_path, e))?;
    Ok(nodes)
}

/// Takes cluster directory `dir`'s lock (creating `dir`), held until the returned file
/// drops, waiting while another `cluster up` or `cluster down` holds it: two `cluster up`
/// runs at once each started some of the servers and both failed, and a `cluster down`
/// during a `cluster up` missed the servers not started yet and reported a clean stop.
fn lock_cluster_dir(dir: &Path) -> Result<File, CliError> {
    std::fs::create_dir_all(dir).map_err(|e| local_error("cannot create", dir, e))?;
    let path = dir.join(LOCK_FILE);
    let lock = File::create(&path).map_err(|e| local_error("cannot create", &path, e))?;
    match lock.try_lock() {
        Ok(()) => return Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!(
                    "benchfs: waiting for another `benchfs cluster` command on {} (it holds {})",
                    dir.display(),
                    path.display()
                );
            }
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(local_error("cannot lock", &path, e)),
    }
    lock.lock()
        .map_err(|e| local_error("cannot lock", &path, e))?;
    Ok(lock)
}

/// The secret file `cluster up` starts servers with: the one given, checked (private,
/// readable, short enough) before anything starts and made absolute, so the servers need
/// not share this command's working directory; with `--resume`, see [`resumed_secret`].
fn up_secret(args: &UpArgs, running: bool) -> Result<Option<PathBuf>, CliError> {
    let given = match args.target.secret_path() {
        Some(path) => {
            secret::read_secret(&path)?;
            Some(
                std::fs::canonicalize(&path)
                    .map_err(|e| local_error("cannot resolve", &path, e))?,
            )
        }
        None => None,
    };
    if args.resume {
        resumed_secret(&args.target.dir, given, running)
    } else {
        Ok(given)
    }
}

/// The file in a cluster directory naming the job secret file its servers were started
/// with (its absolute path on the first line, as is) and a fingerprint of the secret (an
/// HMAC of a fixed text under it, in hex, on the second); absent when they have none.
/// `--resume` starts the servers with the same secret, never silently without it or with
/// one the running servers do not have.
const SECRET_RECORD: &str = "secret-file";

/// The text whose HMAC under the secret is its fingerprint in [`SECRET_RECORD`].
const FINGERPRINT_TEXT: &[u8] = b"benchfs cluster secret fingerprint";

/// A fingerprint of the secret in `path`: it tells whether two files hold one secret
/// without the record holding the secret.
fn secret_fingerprint(path: &Path) -> Result<String, CliError> {
    let secret = secret::read_secret(path)?;
    let mac = benchfs_proto::auth::proof(&secret, FINGERPRINT_TEXT);
    Ok(mac.iter().map(|b| format!("{b:02x}")).collect())
}

/// Records `secret_file` as the secret the cluster in `dir` runs with.
fn record_secret(dir: &Path, secret_file: Option<&Path>) -> Result<(), CliError> {
    use std::os::unix::ffi::OsStrExt;
    let record = dir.join(SECRET_RECORD);
    let written = match secret_file {
        Some(path) => {
            let mut text = path.as_os_str().as_bytes().to_vec();
            text.push(b'\n');
            text.extend(secret_fingerprint(path)?.as_bytes());
            text.push(b'\n');
            std::fs::write(&record, text)
        }
        None => match std::fs::remove_file(&record) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            other => other,
        },
    };
    written.map_err(|e| local_error("cannot write", &record, e))
}

/// The secret file `cluster up --resume` starts servers with: the one given, else the one
/// the cluster was started with. Refuses a secret the running servers do not have (another
/// file's, or the recorded file changed since), or one that cannot be read any more.
fn resumed_secret(
    dir: &Path,
    given: Option<PathBuf>,
    running: bool,
) -> Result<Option<PathBuf>, CliError> {
    use std::os::unix::ffi::OsStrExt;
    let record = dir.join(SECRET_RECORD);
    let recorded = match std::fs::read(&record) {
        Ok(bytes) => {
            let mut lines = bytes.split(|&b| b == b'\n');
            let path = PathBuf::from(std::ffi::OsStr::from_bytes(
                lines.next().unwrap_or_default(),
            ));
            let fingerprint = lines
                .next()
                .map(|f| String::from_utf8_lossy(f).into_owned());
            Some((path, fingerprint.filter(|f| !f.is_empty())))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(local_error("cannot read", &record, e)),
    };
    let dir_name = dir.display();
    match (given, recorded) {
        (None, None) => Ok(None),
        (Some(given), None) if running => Err(format!(
            "the running servers of the cluster in {dir_name} have no job secret, so servers \
             started with --secret-file {given} could not serve beside them; stop them first \
             (benchfs cluster down --dir {dir_name})",
            given = given.display()
        )
        .into()),
        (Some(given), None) => Ok(Some(given)),
        (given, Some((path, fingerprint))) => {
            let explicit = given.is_some();
            let chosen = given.unwrap_or(path.clone());
            let now = match secret_fingerprint(&chosen) {
                Ok(now) => now,
                Err(e) if !explicit => {
                    return Err(format!(
                        "the cluster in {dir_name} was started with the job secret in {}, which \
                         cannot be used now ({e}); give the secret with --secret-file",
                        path.display()
                    )
                    .into())
                }
                Err(e) => return Err(e),
            };
            if running && fingerprint.is_some_and(|f| f != now) {
                return Err(format!(
                    "the job secret in {} is not the one the running servers of the cluster in \
                     {dir_name} were started with (from {}{}); give that secret, or stop them \
                     first (benchfs cluster down --dir {dir_name})",
                    chosen.display(),
                    path.display(),
                    if explicit { "" } else { ", changed since" },
                )
                .into());
            }
            Ok(Some(chosen))
        }
    }
}

/// The file in a cluster directory listing its node ids, one a line: `--resume` starts
/// those and no other, whatever else lies in `data/` or the registry (a stray directory
/// or marker started as a server changed the ring, and the files it moved read as missing).
const NODES_FILE: &str = "nodes";

/// The file in a cluster directory whose lock `cluster up` holds while it starts servers
/// and `cluster down` while it stops them.
const LOCK_FILE: &str = ".cluster.lock";

/// Checks the settings of a new cluster without touching its directory; returns its
/// `benchfs.toml`.
pub fn check_settings(args: &UpArgs) -> Result<String, CliError> {
    if args.servers == 0 || args.servers > 256 {
        return Err("--servers must be 1..=256".into());
    }
    if args.replicas as usize > args.servers {
        return Err(format!(
            "--replicas {} needs at least {} servers, but the cluster has {} servers \
             (--servers {}): every copy must be on a different server",
            args.replicas, args.replicas, args.servers, args.servers
        )
        .into());
    }
    let text = config_text(args)?;
    ServerConfig::from_toml_str(&text)
        .map_err(|e| format!("the cluster's settings are not usable: {e}"))?;
    check_prefault_fits(args.prefault_bytes.unwrap_or(0), args.servers)?;
    Ok(text)
}

/// Whether `data` (a cluster's data directory) holds anything: a file, or a node's
/// directory with anything in it. A node's directory may be a file system of its own (a
/// node-local NVMe or tmpfs mounted there), and `data` too: their `lost+found` (from
/// mkfs) is no data.
fn holds_data(data: &Path) -> Result<bool, CliError> {
    let entries = match std::fs::read_dir(data) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(local_error("cannot read", data, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| local_error("cannot read", data, e))?;
        let path = entry.path();
        if entry.file_name() == LOST_FOUND {
            continue;
        }
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            return Ok(true);
        }
        let node = std::fs::read_dir(&path).map_err(|e| local_error("cannot read", &path, e))?;
        for inside in node {
            let inside = inside.map_err(|e| local_error("cannot read", &path, e))?;
            if inside.file_name() != LOST_FOUND {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Where mkfs puts what fsck finds, in the root of a file system.
const LOST_FOUND: &str = "lost+found";

/// Removes the cluster's data under `data`. A directory that is a mount point (a file
/// system mounted for a node's data, or for all of it) is emptied instead, its
/// `lost+found` kept; a symbolic link is removed, not what it names.
fn wipe(data: &Path) -> Result<(), CliError> {
    use std::os::unix::fs::MetadataExt;
    let stat = |path: &Path| {
        std::fs::symlink_metadata(path).map_err(|e| local_error("cannot read", path, e))
    };
    let meta = stat(data)?;
    if meta.file_type().is_symlink() {
        return std::fs::remove_file(data).map_err(|e| local_error("cannot remove", data, e));
    }
    let parent = data.parent().unwrap_or(Path::new("/"));
    let mounted = meta.dev() != stat(parent)?.dev();
    empty_dir(data, meta.dev(), mounted)?;
    match std::fs::remove_dir(data) {
        Err(e) if mounted || e.kind() == ErrorKind::DirectoryNotEmpty => Ok(()),
        removed => removed.map_err(|e| local_error("cannot remove", data, e)),
    }
}

/// Removes everything in `dir`, on device `dev` (the root of a mounted file system if
/// `mounted`, whose `lost+found` stays), but the mount points under it, which are emptied.
fn empty_dir(dir: &Path, dev: u64, mounted: bool) -> Result<(), CliError> {
    use std::os::unix::fs::MetadataExt;
    let entries = std::fs::read_dir(dir).map_err(|e| local_error("cannot read", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| local_error("cannot read", dir, e))?;
        let path = entry.path();
        let meta =
            std::fs::symlink_metadata(&path).map_err(|e| local_error("cannot read", &path, e))?;
        let removed = if !meta.is_dir() {
            std::fs::remove_file(&path)
        } else if meta.dev() != dev {
            empty_dir(&path, meta.dev(), true)?;
            continue;
        } else if mounted && entry.file_name() == LOST_FOUND {
            continue;
        } else {
            std::fs::remove_dir_all(&path)
        };
        removed.map_err(|e| local_error("cannot remove", &path, e))?;
    }
    Ok(())
}

/// The node ids of the stopped cluster in `dir`: one per data directory under `data/`,
/// in order (node0, node1, ..., node10).
fn resume_nodes(dir: &Path) -> Result<Vec<String>, CliError> {
    let nothing = |why: String| -> CliError {
        format!(
            "nothing to resume in {}: {why} (start a new cluster with `benchfs cluster up \
             --dir {}`)",
            dir.display(),
            dir.display()
        )
        .into()
    };
    let config_path = dir.join("benchfs.toml");
    if !config_path.exists() {
        return Err(nothing(format!("{} does not exist", config_path.display())));
    }
    ServerConfig::from_file(&config_path)?;
    if let Some(nodes) = listed_nodes(dir)? {
        return Ok(nodes);
    }
    // A cluster made before its node ids were listed: what its data and markers name.
    let data = dir.join("data");
    let entries = match std::fs::read_dir(&data) {
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        other => Some(other.map_err(|e| local_error("cannot read", &data, e))?),
    };
    let mut nodes = Vec::new();
    for entry in entries.into_iter().flatten() {
        let entry = entry.map_err(|e| local_error("cannot read", &data, e))?;
        if !entry.path().is_dir() {
            continue;
        }
        let name = entry.file_name().into_string().map_err(|name| {
            format!("{} is not a node id (not UTF-8)", data.join(name).display())
        })?;
        nodes.push(name);
    }
    // A server whose data directory was removed still served in the cluster: it starts
    // again on an empty one (and rejoins, as a server back with an empty store does).
    for node in registry::members(&dir.join("registry")) {
        if !nodes.contains(&node) {
            nodes.push(node);
        }
    }
    if nodes.is_empty() {
        return Err(nothing(format!(
            "{} holds no server's data",
            data.display()
        )));
    }
    nodes.sort_by(|a, b| (a.len(), a).cmp(&(b.len(), b)));
    Ok(nodes)
}

/// The node ids `nodes` lists, if the cluster has the file.
fn listed_nodes(dir: &Path) -> Result<Option<Vec<String>>, CliError> {
    let path = dir.join(NODES_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(local_error("cannot read", &path, e)),
    };
    let nodes: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if let Some(bad) = nodes.iter().find(|node| {
        !node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    }) {
        return Err(format!("{} names {bad:?}, which is not a node id", path.display()).into());
    }
    if nodes.is_empty() {
        return Err(format!("{} lists no node", path.display()).into());
    }
    Ok(Some(nodes))
}

/// Starts one `benchfsd` per node id, each on `data/<node id>`, and records their pids.
fn spawn_servers(
    dir: &Path,
    nodes: &[String],
    secret_file: Option<&Path>,
) -> Result<Vec<u32>, CliError> {
    let daemon = benchfsd_path()?;
    let mut started = Vec::new();
    for node in nodes {
        match spawn_server(&daemon, dir, node, secret_file) {
            Ok(pid) => started.push(pid),
            Err(e) => {
                for &pid in &started {
                    signal(pid, Signal::SIGKILL);
                }
                return Err(e);
            }
        }
    }
    let pids_path = dir.join("pids");
    std::fs::write(
        &pids_path,
        started.iter().map(|p| format!("{p}\n")).collect::<String>(),
    )
    .map_err(|e| local_error("cannot write", &pids_path, e))?;
    Ok(started)
}

/// Removes the registry entries that killed servers among `nodes` left behind (all of
/// them if `all`, when no server runs): every server started publishes itself again. A
/// cluster resumed keeps its membership markers, and a new one has a marker for each of
/// its nodes before any starts (its server replaces it with its store's birth), so that
/// a client starting while servers come up, or after one failed to start, keeps the place
/// of each that has not published instead of placing files where the cluster, once
/// whole, does not look.
fn remove_stale_entries(
    dir: &Path,
    nodes: &[String],
    all: bool,
    resume: bool,
) -> Result<(), CliError> {
    let registry = dir.join("registry");
    let removed = match (all, resume) {
        (true, false) => std::fs::remove_dir_all(&registry),
        // The markers of the nodes it starts stay; a stray one (of a node id not the
        // cluster's) would hold a place on every client's ring.
        (true, true) => std::fs::read_dir(&registry).and_then(|items| {
            items.flatten().try_for_each(|item| {
                let name = item.file_name().to_string_lossy().into_owned();
                let ours = name
                    .strip_suffix(".member")
                    .is_some_and(|node| nodes.iter().any(|n| n == node));
                match ours {
                    true => Ok(()),
                    false => std::fs::remove_file(item.path()),
                }
            })
        }),
        (false, _) => nodes.iter().try_for_each(|node| {
            match std::fs::remove_file(registry::entry_path(&registry, node)) {
                Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }),
    };
    match removed {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            return Err(local_error("cannot clear the registry", &registry, e));
        }
        _ => {}
    }
    if all && !resume {
        std::fs::create_dir_all(&registry)
            .map_err(|e| local_error("cannot create", &registry, e))?;
        for node in nodes {
            registry::mark_member(&registry, node, registry::BORN_UNKNOWN)?;
        }
    }
    Ok(())
}

/// Writes `pids` with every running server of the cluster in `dir`, one line each in the
/// order of their node ids (node0, node1, ...), as a cluster started whole has it.
fn write_pids_in_node_order(dir: &Path) -> Result<(), CliError> {
    let by_node: std::collections::HashMap<String, u32> = servers_of(dir)
        .into_iter()
        .filter_map(|pid| Some((node_of(pid)?, pid)))
        .collect();
    let text: String = resume_nodes(dir)?
        .iter()
        .filter_map(|node| by_node.get(node))
        .map(|pid| format!("{pid}\n"))
        .collect();
    let path = dir.join("pids");
    std::fs::write(&path, text).map_err(|e| local_error("cannot write", &path, e))
}

/// Starts the server `node` of the cluster in `dir`, logging to `logs/<node>.log`.
fn spawn_server(
    daemon: &Path,
    dir: &Path,
    node: &str,
    secret_file: Option<&Path>,
) -> Result<u32, CliError> {
    let log_path = dir.join("logs").join(format!("{node}.log"));
    // Appended to: a restart (`--resume`) keeps what the server said before it stopped.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .and_then(|log| Ok((log.try_clone()?, log)))
        .map_err(|e| local_error("cannot create", &log_path, e))?;
    let mut command = Command::new(daemon);
    command
        .arg("--config")
        .arg(dir.join("benchfs.toml"))
        .arg("--node-id")
        .arg(node)
        .arg("--data-dir")
        .arg(dir.join("data").join(node));
    if let Some(secret) = secret_file {
        command.arg("--secret-file").arg(secret);
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(log.0)
        .stderr(log.1)
        // Its own process group: a Ctrl-C aimed at this command leaves servers alone.
        .process_group(0)
        .spawn()
        .map_err(|e| local_error("cannot start", daemon, e))?;
    Ok(child.id())
}

/// A path as a TOML string value.
fn toml_path(path: &Path) -> Result<toml::Value, CliError> {
    match path.to_str() {
        Some(s) => Ok(toml::Value::String(s.to_string())),
        None => Err(format!(
            "{} is not valid UTF-8, so benchfs.toml cannot name it",
            path.display()
        )
        .into()),
    }
}

/// An integer setting as a TOML value.
fn toml_int(flag: &str, value: u64) -> Result<toml::Value, CliError> {
    i64::try_from(value)
        .map(toml::Value::Integer)
        .map_err(|_| format!("{flag} {value} is too large").into())
}

/// The cluster's `benchfs.toml`, serialized by the toml crate (so any directory name,
/// quotes and backslashes included, comes out escaped).
fn config_text(args: &UpArgs) -> Result<String, CliError> {
    use toml::{Table, Value};
    let dir = &args.target.dir;
    let mut node = Table::new();
    node.insert("data_dir".into(), toml_path(&dir.join("data"))?);
    let mut storage = Table::new();
    storage.insert("backend".into(), Value::String(args.backend.clone()));
    if let Some(c) = args.chunk_size {
        storage.insert("chunk_size".into(), toml_int("--chunk-size", c)?);
    }
    for (key, flag, value) in [
        ("inline_bytes", "--inline-bytes", args.inline_bytes),
        ("prefault_bytes", "--prefault-bytes", args.prefault_bytes),
    ] {
        if let Some(v) = value {
            storage.insert(key.into(), toml_int(flag, v)?);
        }
    }
    // No payload above the chunk size exists, and the config refuses a threshold no payload
    // could reach: a small --chunk-size alone takes the threshold down with it.
    let rdma_threshold = args.rdma_threshold.or(args
        .chunk_size
        .filter(|&c| c < benchfs::proto::limits::RENDEZVOUS_THRESHOLD_DEFAULT));
    let mut network = Table::new();
    network.insert("bind_addr".into(), Value::String("127.0.0.1:0".into()));
    network.insert("registry_dir".into(), toml_path(&dir.join("registry"))?);
    for (key, flag, value) in [
        ("rpc_timeout", "--rpc-timeout-ms", args.rpc_timeout_ms),
        (
            "rendezvous_threshold_bytes",
            "--rdma-threshold",
            rdma_threshold,
        ),
        ("busy_poll_us", "--busy-poll-us", args.busy_poll_us),
    ] {
        if let Some(v) = value {
            network.insert(key.into(), toml_int(flag, v)?);
        }
    }
    let mut replication = Table::new();
    replication.insert("replicas".into(), Value::Integer(args.replicas.into()));
    let mut config = Table::new();
    for (section, table) in [
        ("node", node),
        ("storage", storage),
        ("network", network),
        ("replication", replication),
    ] {
        config.insert(section.into(), Value::Table(table));
    }
    // The BENCHFS_* variables set now configure the servers too (over the flags, as the
    // servers apply them): recorded here, a server resumed later without them starts as
    // the others did. Each server's id, data directory and addresses stay the cluster's.
    let owned = owned_keys(&config);
    benchfs::config::apply_env(&mut config, benchfs::config::benchfs_vars()?)?;
    for (section, key, value) in owned {
        if let Some(Value::Table(table)) = config.get_mut(section) {
            match value {
                Some(value) => table.insert(key.into(), value),
                None => table.remove(key),
            };
        }
    }
    Ok(config.to_string())
}

/// Refuses `BENCHFS_*` variables that would change the settings recorded in `path` when
/// the cluster was made: the servers resumed inherit the environment, and would read
/// their data with another placement (another `virtual_nodes`: chunks asked of servers
/// that never held them read as holes) or another backend (an empty memory store).
/// `resumed`: the settings read from `path` with the environment applied.
fn check_resume_env(path: &Path, resumed: &ServerConfig) -> Result<(), CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| local_error("cannot read", path, e))?;
    let recorded: toml::Table = text
        .parse()
        .map_err(|e| format!("cannot parse {}: {e}", path.display()))?;
    // Equal settings pass, however spelled (a variable giving a default the file omits).
    if ServerConfig::from_toml_str(&text)? == *resumed {
        return Ok(());
    }
    let mut with_env = recorded.clone();
    benchfs::config::apply_env(&mut with_env, benchfs::config::benchfs_vars()?)?;
    let mut changed = Vec::new();
    for (section, table) in &with_env {
        let Some(table) = table.as_table() else {
            continue;
        };
        let before = recorded.get(section).and_then(toml::Value::as_table);
        for (key, value) in table {
            let was = before.and_then(|t| t.get(key));
            if was != Some(value) {
                let was = was.map_or("its default".to_string(), ToString::to_string);
                changed.push(format!("{section}.{key} ({was} -> {value})"));
            }
        }
    }
    if changed.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the environment would change settings the cluster was made with ({}), recorded in \
         {}: a resumed server must read its data as it was written; unset those BENCHFS_* \
         variables, or make a new cluster",
        changed.join(", "),
        path.display()
    )
    .into())
}

/// The keys `cluster up` decides for every server (`node_id` is given to each on its
/// command line), with their values in `config`.
fn owned_keys(config: &toml::Table) -> Vec<(&'static str, &'static str, Option<toml::Value>)> {
    [
        ("node", "node_id"),
        ("node", "data_dir"),
        ("network", "bind_addr"),
        ("network", "registry_dir"),
    ]
    .into_iter()
    .map(|(section, key)| {
        let value = config
            .get(section)
            .and_then(|table| table.get(key))
            .cloned();
        (section, key, value)
    })
    .collect()
}

/// Every server of this host faults in its prefault bytes (`each`) at once, and each
/// checks only its own against the memory available, so the total is checked here.
fn check_prefault_fits(each: u64, servers: usize) -> Result<(), CliError> {
    if each == 0 {
        return Ok(());
    }
    let total = each.saturating_mul(servers as u64);
    // Each server's store leaves its headroom free for the rest of the server.
    let headroom = benchfs::storage::limits::MEMORY_HEADROOM_BYTES.saturating_mul(servers as u64);
    match benchfs::storage::available_memory().map(|bytes| bytes.saturating_sub(headroom)) {
        Some(available) if total > available => Err(format!(
            "a prefault of {each} bytes (--prefault-bytes, storage.prefault_bytes) on each \
             of {servers} server(s) is {total} bytes, more than the {available} bytes of \
             memory available beside what each server keeps free"
        )
        .into()),
        _ => Ok(()),
    }
}

/// Waits until every server of `nodes` (started as `pids`) has published its address; a
/// server that exits first, or a wait of 30 s (and 1 s more per 256 MiB each faults in at
/// start), is an error that shows the end of its log.
fn wait_for_servers(dir: &Path, nodes: &[String], pids: &[u32]) -> Result<(), CliError> {
    let prefault =
        ServerConfig::from_file(dir.join("benchfs.toml")).map_or(0, |c| c.storage.prefault_bytes);
    let wait = Duration::from_secs(30 + prefault / (256 << 20));
    let deadline = Instant::now() + wait;
    loop {
        // Checked first: a server that published and then died is not up.
        let dead = pids.iter().position(|&p| !alive(p));
        if dead.is_none() && published_of(dir, nodes).len() >= nodes.len() {
            return Ok(());
        }
        if dead.is_some() || Instant::now() > deadline {
            // Servers that fail together (a bad setting) exit within moments of each
            // other: count the ones still running after those moments.
            std::thread::sleep(Duration::from_millis(500));
            let published = published_of(dir, nodes);
            if published.len() >= nodes.len() && dead.is_none() {
                return Ok(());
            }
            // The one that exited, else the first that has not published.
            let stuck = dead.or_else(|| nodes.iter().position(|n| !published.contains(n)));
            let published = published.len();
            let node = nodes
                .get(stuck.unwrap_or(0))
                .map_or("node0", String::as_str);
            let log_path = dir.join("logs").join(format!("{node}.log"));
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            let why = match dead {
                Some(_) => format!("{node} exited"),
                None => format!(
                    "{node} did not publish its address within {} s",
                    wait.as_secs()
                ),
            };
            // The others may yet publish: say they run, and how to stop them.
            let running = pids.iter().filter(|&&p| alive(p)).count();
            let still = match running {
                0 => String::new(),
                n => format!(
                    "; {n} started here still run (`benchfs cluster down --dir {}` stops them)",
                    dir.display()
                ),
            };
            return Err(format!(
                "only {published} of {} servers came up ({why}){still}; {} ends:\n{}",
                nodes.len(),
                log_path.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The servers among `nodes` (those started here, not any that were running) with an
/// entry in the registry of the cluster in `dir`.
fn published_of(dir: &Path, nodes: &[String]) -> Vec<String> {
    registry::read(&dir.join("registry"))
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.node_id)
        .filter(|node| nodes.contains(node))
        .collect()
}

/// The running servers of the cluster in `dir`: every `benchfsd` whose command line names
/// this cluster's config, whether `cluster up` started it or a user restarted it by hand.
/// (The `pids` file alone is not trusted: a pid of a server long gone may belong to
/// another program by now.)
fn servers_of(dir: &Path) -> Vec<u32> {
    let config = dir.join("benchfs.toml");
    let config = std::fs::canonicalize(&config).unwrap_or(config);
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| alive(pid) && runs_config(pid, &config))
        .collect()
}

/// The node ids of the running servers of the cluster in `dir`; an error if one runs
/// without `--node-id` on its command line (then which ones run cannot be told).
fn running_nodes(dir: &Path) -> Result<Vec<String>, CliError> {
    let pids = servers_of(dir);
    let running: Vec<String> = pids.iter().filter_map(|&pid| node_of(pid)).collect();
    if running.len() < pids.len() {
        return Err(format!(
            "a server of the cluster in {dir} runs without --node-id on its command line, so \
             which of its servers run cannot be told; stop it first (benchfs cluster down --dir {dir})",
            dir = dir.display(),
        )
        .into());
    }
    Ok(running)
}

/// The node id a `benchfsd` process was started with (`--node-id`), if it was given one.
fn node_of(pid: u32) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let value = flag_values(&args, b"--node-id").next()?;
    String::from_utf8(value.to_vec()).ok()
}

/// The values given to `flag` in a command line's `args`, as `--flag value` or
/// `--flag=value`.
fn flag_values<'a>(args: &'a [&'a [u8]], flag: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
    args.iter().enumerate().filter_map(move |(i, arg)| {
        match arg
            .strip_prefix(flag)
            .and_then(|rest| rest.strip_prefix(b"="))
        {
            Some(value) => Some(value),
            None if *arg == flag => args.get(i + 1).copied(),
            None => None,
        }
    })
}

/// Whether process `pid` is a `benchfsd` started with `--config <config>`.
fn runs_config(pid: u32, config: &Path) -> bool {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let daemon = args.first().is_some_and(|a| {
        Path::new(OsStr::from_bytes(a)).file_name() == Some(OsStr::new("benchfsd"))
    });
    let named = |arg: &OsStr| {
        let path = Path::new(arg);
        let path = match std::fs::read_link(format!("/proc/{pid}/cwd")) {
            Ok(cwd) if path.is_relative() => cwd.join(path),
            _ => path.to_path_buf(),
        };
        std::fs::canonicalize(&path).is_ok_and(|p| p == config)
    };
    daemon && flag_values(&args, b"--config").any(|value| named(OsStr::from_bytes(value)))
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.split(") ")
                .nth(1)
                .is_some_and(|rest| rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Sends `sig` to `pid` with the system call itself: a `kill` found through PATH may be
/// missing, and a stop that could not signal said it had stopped the servers.
pub fn signal(pid: u32, sig: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        // A process gone already is what the callers want.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// The processes of `pids` still alive once all are gone or `within` has passed.
fn alive_after(pids: &[u32], within: Duration) -> Vec<u32> {
    let deadline = Instant::now() + within;
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    pids.iter().copied().filter(|&p| alive(p)).collect()
}

fn down(args: &DownArgs) -> Result<(), CliError> {
    let target = &args.target;
    let _locked = match target.dir.join("benchfs.toml").exists() {
        true => Some(lock_cluster_dir(&target.dir)?),
        false => None,
    };
    let pids = servers_of(&target.dir);
    // A mistyped directory is an error, as it is for every other command; a cluster that
    // stopped already is not.
    if pids.is_empty() && !target.dir.join("benchfs.toml").exists() {
        target.config()?;
    }
    let data_dirs: Vec<Option<PathBuf>> = pids.iter().map(|&pid| data_dir_of(pid)).collect();
    for &pid in &pids {
        signal(pid, Signal::SIGTERM);
        // A stopped server (SIGSTOP, a debugger let go) takes the TERM only once it runs:
        // without this it would be killed, losing what a clean stop syncs.
        signal(pid, Signal::SIGCONT);
    }
    let forced = alive_after(&pids, Duration::from_secs(args.timeout));
    for &pid in &forced {
        signal(pid, Signal::SIGKILL);
    }
    let left: Vec<String> = alive_after(&forced, Duration::from_secs(5))
        .iter()
        .map(u32::to_string)
        .collect();
    if !left.is_empty() {
        return Err(format!(
            "cluster down: servers still running after SIGKILL (pids {})",
            left.join(", ")
        )
        .into());
    }
    // Only a cluster `down` has not stopped yet may have servers that exited before it.
    let was_up = std::fs::remove_file(target.dir.join("pids")).is_ok();
    check_stops(target, &pids, &data_dirs, &forced, was_up)?;
    if pids.is_empty() {
        outln!("cluster down: no server of this cluster was running");
    } else {
        outln!(
            "cluster down: {} stopped ({} forced)",
            servers(pids.len()),
            forced.len()
        );
    }
    Ok(())
}

/// The data directory a `benchfsd` process was started with (`--data-dir`), if given.
fn data_dir_of(pid: u32) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let value = flag_values(&args, b"--data-dir").next()?;
    let dir = PathBuf::from(std::ffi::OsStr::from_bytes(value));
    // Relative to the server's working directory, not this command's.
    match std::fs::read_link(format!("/proc/{pid}/cwd")) {
        Ok(cwd) => Some(cwd.join(dir)),
        Err(_) => Some(dir),
    }
}

/// Fails naming each server of `pids` (with `data_dirs`) that `down` stopped, not
/// `forced`, without its clean-stop mark, and, if the cluster `was_up`, each that exited
/// before `down`, when its store loses acknowledged writes with its process (a note when
/// it does not).
fn check_stops(
    target: &Target,
    pids: &[u32],
    data_dirs: &[Option<PathBuf>],
    forced: &[u32],
    was_up: bool,
) -> Result<(), CliError> {
    let mut unclean: Vec<String> = pids
        .iter()
        .zip(data_dirs)
        .filter(|(pid, _)| !forced.contains(pid))
        .filter_map(|(&pid, data_dir)| {
            let data_dir = data_dir.as_ref()?;
            (!stopped_cleanly(data_dir))
                .then(|| unclean_stop(&target.dir, &format!("pid {pid}"), data_dir))
        })
        .collect();
    let exited = match was_up {
        true => exited_uncleanly(&target.dir, data_dirs),
        false => Vec::new(),
    };
    let servers_run = pids.len() + exited.len();
    // Memory and tiered stores lose acknowledged writes with their process; the disk
    // stores keep them in the page cache and their journal.
    let loses_writes = target.config().is_ok_and(|c| {
        matches!(
            c.storage.backend,
            benchfs_store::Backend::Memory | benchfs_store::Backend::Tiered
        )
    });
    if loses_writes {
        unclean.extend(exited);
    } else {
        for report in &exited {
            outln!("cluster down: {report}; its store keeps what it acknowledged");
        }
    }
    if !unclean.is_empty() {
        return Err(format!(
            "cluster down: {} of {} servers stopped without making what they acknowledged \
             durable; writes may be lost:\n  {}",
            unclean.len(),
            servers_run,
            unclean.join("\n  ")
        )
        .into());
    }
    Ok(())
}

/// The servers of the cluster in `cluster` that exited before `cluster down` without a
/// clean stop (killed, crashed), by their data directories (`running` are those of the
/// servers it stopped), each as [`unclean_stop`] reports it.
fn exited_uncleanly(cluster: &Path, running: &[Option<PathBuf>]) -> Vec<String> {
    let nodes = resume_nodes(cluster).unwrap_or_default();
    nodes
        .iter()
        .map(|node| cluster.join("data").join(node))
        .filter(|data_dir| {
            let node = data_dir.file_name();
            !running.iter().flatten().any(|r| r.file_name() == node)
        })
        .filter(|data_dir| data_dir.is_dir() && !stopped_cleanly(data_dir))
        .map(|data_dir| unclean_stop(cluster, "exited before cluster down", &data_dir))
        .collect()
}

/// Whether the server of `data_dir` left its clean-stop mark there when it last stopped.
fn stopped_cleanly(data_dir: &Path) -> bool {
    data_dir
        .join(benchfs_server::handler::CLEAN_STOP_FILE)
        .exists()
}

/// A server that stopped without its clean-stop mark in `data_dir`: its node, `how` (its
/// pid, or how it went), its log and its last words there.
fn unclean_stop(cluster: &Path, how: &str, data_dir: &Path) -> String {
    let node = data_dir
        .file_name()
        .map_or_else(|| how.to_string(), |n| n.to_string_lossy().into_owned());
    let log = cluster.join("logs").join(format!("{node}.log"));
    let last_words = std::fs::read_to_string(&log)
        .ok()
        .and_then(|text| last_words(&text).map(str::to_string))
        .unwrap_or_else(|| "(no log)".into());
    format!("{node} ({how}, log {}): {last_words}", log.display())
}

/// The last line of a server's log, passing over the lines UCX itself writes there
/// ("[1733338471.2] [host:pid:0] file.c:549 UCX  WARN ..."), which a worker's teardown
/// may print after the server's own last words; UCX's last line if there is no other.
fn last_words(log: &str) -> Option<&str> {
    let is_ucx = |l: &str| l.starts_with('[') && l.contains(" UCX ");
    let mut lines = log.lines().map(str::trim).filter(|l| !l.is_empty()).rev();
    let last = lines.clone().next();
    lines.find(|l| !is_ucx(l)).or(last)
}

/// `n` servers, in words: "1 server", "2 servers".
fn servers(n: usize) -> String {
    match n {
        1 => "1 server".to_string(),
        n => format!("{n} servers"),
    }
}

/// `benchfs cluster wait`: polls the registry until it lists `servers` servers and each
/// answers, retrying until `--timeout` (a server killed and started again, a registry
/// entry being replaced, a server still opening its store).
fn wait(args: &WaitArgs) -> Result<(), CliError> {
    let mut config = args.target.config()?;
    let dir = config.network.registry_dir.clone();
    let rpc_timeout = config.network.rpc_timeout;
    // A timeout past any Instant (u64::MAX seconds) waits as good as forever.
    let deadline = Instant::now()
        .checked_add(Duration::from_secs(args.timeout))
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(u64::from(u32::MAX)));
    loop {
        // A stopped server holds a call for the whole RPC timeout: a probe gets at most
        // what is left of --timeout.
        let left = deadline.saturating_duration_since(Instant::now());
        config.network.rpc_timeout = left
            .max(benchfs::proto::limits::RPC_TIMEOUT_MIN)
            .min(rpc_timeout);
        let not_ready = match wait_once(args, &config) {
            Ok(published) => {
                outln!(
                    "{} published in {} and answering",
                    servers(published),
                    dir.display()
                );
                return Ok(());
            }
            Err(not_ready) => not_ready,
        };
        if Instant::now() >= deadline {
            let logs = match &args.target.registry {
                Some(_) => "benchfs.log in each server's data directory".to_string(),
                None => args.target.dir.join("logs").display().to_string(),
            };
            return Err(format!(
                "cluster wait: {not_ready} after {} s; see the servers' logs ({logs})",
                args.timeout
            )
            .into());
        }
        std::thread::sleep(WAIT_POLL.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// How often `cluster wait` looks again.
const WAIT_POLL: Duration = Duration::from_millis(200);

/// One look of `cluster wait`: the number of servers published when at least `--servers`
/// are and each answers, or what is missing.
fn wait_once(args: &WaitArgs, config: &ServerConfig) -> Result<usize, String> {
    let dir = &config.network.registry_dir;
    // Servers started by a launcher make the registry; until the first does, none is in.
    let entries = match dir.exists() {
        true => registry::read(dir).map_err(|e| e.to_string())?,
        false => Vec::new(),
    };
    if entries.len() < args.servers {
        let names: Vec<&str> = entries.iter().map(|e| e.node_id.as_str()).collect();
        return Err(format!(
            "{} of {} servers published in {} ({})",
            entries.len(),
            args.servers,
            dir.display(),
            match names.is_empty() {
                true => "none yet".to_string(),
                false => names.join(", "),
            }
        ));
    }
    let fs = args
        .target
        .connect_with(config)
        .map_err(|e| e.to_string())?;
    let silent: Vec<String> = fs
        .block_on(fs.client().server_stats())
        .into_iter()
        .filter_map(|(entry, stats)| stats.err().map(|e| format!("{} ({e})", entry.node_id)))
        .collect();
    match silent.is_empty() {
        true => Ok(entries.len()),
        false => Err(format!(
            "published but not answering: {}",
            silent.join(", ")
        )),
    }
}

fn status(target: &Target) -> Result<(), CliError> {
    let fs = target.connect()?;
    let mut out = format!(
        "{:<10} {:<22} {:>10} {:>8} {:>14} {:>10} {:>9} {:>8}\n",
        "node", "address", "records", "chunks", "bytes", "requests", "malformed", "swept"
    );
    let mut failed = Vec::new();
    for (entry, stats) in fs.block_on(fs.client().server_stats()) {
        match stats {
            Ok(s) => {
                out += &format!(
                    "{:<10} {:<22} {:>10} {:>8} {:>14} {:>10} {:>9} {:>8}\n",
                    entry.node_id,
                    entry.addr,
                    s.metadata_records,
                    s.chunks,
                    s.used_bytes,
                    s.requests,
                    s.malformed,
                    s.orphan_chunks_removed
                );
                if s.faults_injected > 0 {
                    out += &format!(
                        "{:<10} {} store faults injected (storage.inject_faults)\n",
                        "", s.faults_injected
                    );
                }
            }
            Err(e) => {
                // A server that answered and refused this client is not down.
                let what = if e.errno() == libc::EACCES {
                    "refused"
                } else {
                    "unreachable"
                };
                out += &format!("{:<10} {:<22} {what}: {e}\n", entry.node_id, entry.addr);
                failed.push(format!("{} ({what})", entry.node_id));
            }
        }
    }
    super::print_out(&out)?;
    // Scripts check the exit status: a cluster with a server down is not healthy.
    match failed.is_empty() {
        true => Ok(()),
        false => Err(format!("not serving this client: {}", failed.join(", ")).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_words_pass_over_ucx_lines() {
        let log = "2026-12-04T20:52:33Z  INFO benchfs_server::daemon: stopping\n\
                   2026-12-04T20:52:34Z ERROR benchfs_server::daemon: store sync failed\n\
                   [1796387716.782011] [vm:10486:0]   ucp_worker.c:1900 UCX  WARN  not all eps were closed\n\n";
        assert_eq!(
            last_words(log),
            Some("2026-12-04T20:52:34Z ERROR benchfs_server::daemon: store sync failed")
        );
        let only_ucx = "[1.0] [vm:1:0] select.c:549 UCX  ERROR no transport\n";
        assert_eq!(
            last_words(only_ucx),
            Some("[1.0] [vm:1:0] select.c:549 UCX  ERROR no transport")
        );
        assert_eq!(
            last_words("thread 'main' panicked at x.rs:1:1\n"),
            Some("thread 'main' panicked at x.rs:1:1")
        );
        assert_eq!(last_words("\n  \n"), None);
    }
}
