//! `benchfs cluster up|status|down`: a local cluster of real `benchfsd` processes on
//! loopback, kept in one directory (config, registry, data, logs, pids).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::CliError;
use benchfs::blocking::BenchFS;
use benchfs::config::ServerConfig;
use benchfs::registry;

/// Where a local cluster keeps its files unless told otherwise.
pub const DEFAULT_DIR: &str = "/tmp/benchfs-cluster";

/// Which cluster a command talks to.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The cluster directory (from `benchfs cluster up --dir`).
    #[arg(long, default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
}

impl Target {
    /// The cluster's configuration, with its registry.
    pub fn config(&self) -> Result<ServerConfig, CliError> {
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

    /// A client connected to the cluster.
    pub fn connect(&self) -> Result<BenchFS, CliError> {
        Ok(BenchFS::connect(&self.config()?)?)
    }
}

/// `benchfs cluster` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Start N servers on loopback and wait until all are published.
    Up(UpArgs),
    /// Show each server's counters.
    Status(Target),
    /// Stop the servers (SIGTERM, then SIGKILL after 10 s).
    Down(Target),
}

/// Arguments of `benchfs cluster up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Number of servers.
    #[arg(long, default_value_t = 4)]
    pub servers: usize,
    /// Chunk store backend: memory, file or iouring.
    #[arg(long, default_value = "memory")]
    pub backend: String,
    /// Chunk size in bytes.
    #[arg(long)]
    pub chunk_size: Option<u64>,
    /// Copies of each chunk and record.
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
    /// RPC timeout in milliseconds.
    #[arg(long)]
    pub rpc_timeout_ms: Option<u64>,
    /// RDMA threshold in bytes.
    #[arg(long)]
    pub rdma_threshold: Option<u64>,
    /// Busy-poll window in microseconds.
    #[arg(long)]
    pub busy_poll_us: Option<u64>,
    /// Which cluster.
    #[command(flatten)]
    pub target: Target,
}

/// Runs a `benchfs cluster` subcommand.
pub fn run(command: ClusterCommand) -> Result<(), CliError> {
    match command {
        ClusterCommand::Up(args) => up(&args),
        ClusterCommand::Status(target) => status(&target),
        ClusterCommand::Down(target) => down(&target),
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

fn up(args: &UpArgs) -> Result<(), CliError> {
    if args.servers == 0 || args.servers > 256 {
        return Err("--servers must be 1..=256".into());
    }
    let dir = &args.target.dir;
    if pids(dir).iter().any(|&pid| alive(pid)) {
        return Err(format!(
            "a cluster is already running in {} (benchfs cluster down --dir {})",
            dir.display(),
            dir.display()
        )
        .into());
    }
    let _ = std::fs::remove_dir_all(dir.join("registry"));
    let _ = std::fs::remove_dir_all(dir.join("data"));
    std::fs::create_dir_all(dir.join("logs"))?;
    let config_path = write_config(args)?;
    let daemon = benchfsd_path()?;
    let mut started = Vec::new();
    for i in 0..args.servers {
        let node = format!("node{i}");
        let log = std::fs::File::create(dir.join("logs").join(format!("{node}.log")))?;
        let child = Command::new(&daemon)
            .arg("--config")
            .arg(&config_path)
            .arg("--node-id")
            .arg(&node)
            .arg("--data-dir")
            .arg(dir.join("data").join(&node))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a Ctrl-C aimed at this command leaves servers alone.
            .process_group(0)
            .spawn()?;
        started.push(child.id());
    }
    std::fs::write(
        dir.join("pids"),
        started.iter().map(|p| format!("{p}\n")).collect::<String>(),
    )?;
    wait_for_servers(dir, args.servers)?;
    println!(
        "cluster up: {} servers, backend {}, dir {}",
        args.servers,
        args.backend,
        dir.display()
    );
    Ok(())
}

/// Writes the cluster's `benchfs.toml` and checks that it loads.
fn write_config(args: &UpArgs) -> Result<PathBuf, CliError> {
    let dir = &args.target.dir;
    let mut toml = format!(
        "[node]\ndata_dir = \"{}\"\n[storage]\nbackend = \"{}\"\n[network]\nbind_addr = \"127.0.0.1:0\"\nregistry_dir = \"{}\"\n[replication]\nreplicas = {}\n",
        dir.join("data").display(),
        args.backend,
        dir.join("registry").display(),
        args.replicas
    );
    if let Some(c) = args.chunk_size {
        toml = toml.replace("[storage]\n", &format!("[storage]\nchunk_size = {c}\n"));
    }
    let mut network = String::new();
    if let Some(ms) = args.rpc_timeout_ms {
        network.push_str(&format!("rpc_timeout = {ms}\n"));
    }
    if let Some(t) = args.rdma_threshold {
        network.push_str(&format!("rendezvous_threshold_bytes = {t}\n"));
    }
    if let Some(us) = args.busy_poll_us {
        network.push_str(&format!("busy_poll_us = {us}\n"));
    }
    toml = toml.replace("[network]\n", &format!("[network]\n{network}"));
    let config_path = dir.join("benchfs.toml");
    std::fs::write(&config_path, &toml)?;
    ServerConfig::from_file(&config_path)?;
    Ok(config_path)
}

fn wait_for_servers(dir: &Path, n: usize) -> Result<(), CliError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let published = registry::read(&dir.join("registry"))
            .map(|e| e.len())
            .unwrap_or(0);
        if published >= n {
            return Ok(());
        }
        if Instant::now() > deadline || pids(dir).iter().any(|&p| !alive(p)) {
            let log = std::fs::read_to_string(dir.join("logs/node0.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            return Err(format!(
                "only {published} of {n} servers came up; node0.log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pids(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
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

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

fn down(target: &Target) -> Result<(), CliError> {
    let pids = pids(&target.dir);
    for &pid in &pids {
        signal(pid, "TERM");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let forced: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    for &pid in &forced {
        signal(pid, "KILL");
    }
    let _ = std::fs::remove_file(target.dir.join("pids"));
    println!(
        "cluster down: {} servers stopped ({} forced)",
        pids.len(),
        forced.len()
    );
    Ok(())
}

fn status(target: &Target) -> Result<(), CliError> {
    let fs = target.connect()?;
    println!(
        "{:<10} {:<22} {:>10} {:>8} {:>14} {:>10} {:>9} {:>8}",
        "node", "address", "records", "chunks", "bytes", "requests", "malformed", "swept"
    );
    for (entry, stats) in fs.block_on(fs.client().server_stats()) {
        match stats {
            Ok(s) => println!(
                "{:<10} {:<22} {:>10} {:>8} {:>14} {:>10} {:>9} {:>8}",
                entry.node_id,
                entry.addr,
                s.metadata_records,
                s.chunks,
                s.used_bytes,
                s.requests,
                s.malformed,
                s.orphan_chunks_removed
            ),
            Err(e) => println!("{:<10} {:<22} unreachable: {e}", entry.node_id, entry.addr),
        }
    }
    Ok(())
}
