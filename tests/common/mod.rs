//! Test fixture: a cluster of real `benchfsd` processes on loopback, in a temporary
//! directory, stopped (SIGKILL) when dropped. [`files`] holds the helpers of the
//! file-system tests, [`rpc`] those of the tests that speak the RPC protocol directly.
// Every test binary compiles this whole module but uses only part of it.
#![allow(dead_code)]

pub mod cli;
pub mod disk;
pub mod files;
pub mod install;
pub mod mount;
pub mod netns;
pub mod rpc;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use benchfs::blocking::BenchFS;
use benchfs::config::ServerConfig;

/// The RPC timeout of the clusters that test failures: short, so a call to a dead or
/// stopped server gives up soon.
pub const RPC_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a failing call may take: the RPC timeout plus a generous margin. A liveness
/// bound on error paths (a hang would take forever), not a performance assertion.
pub const FAIL_BOUND: Duration = Duration::from_millis(1500 + 5000);

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Number of servers.
    pub servers: usize,
    /// memory | file | iouring
    pub backend: &'static str,
    /// Bytes per chunk.
    pub chunk_size: u64,
    /// Copies per chunk and record.
    pub replicas: u32,
    /// RPC timeout.
    pub rpc_timeout_ms: u64,
    /// RDMA threshold.
    pub rdma_threshold: u64,
    /// Seconds between orphan sweeps and replica repair rounds (0: neither). Short in every
    /// test cluster, so that a sweep that removed a live file's chunks, or a repair that
    /// dropped a live record, would fail the tests that read them.
    pub orphan_sweep_secs: u64,
    /// `storage.inject_faults`: the chunk store faults every server injects.
    pub inject_faults: Option<&'static str>,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            servers: 4,
            backend: "memory",
            chunk_size: 64 * 1024,
            replicas: 1,
            // Generous: the whole suite runs clusters in parallel on two cores.
            rpc_timeout_ms: 10_000,
            rdma_threshold: 32 * 1024,
            orphan_sweep_secs: 1,
            inject_faults: None,
        }
    }
}

impl ClusterSpec {
    /// The default cluster on another storage backend.
    pub fn backend(backend: &'static str) -> ClusterSpec {
        ClusterSpec {
            backend,
            ..ClusterSpec::default()
        }
    }

    /// The default cluster with the short [`RPC_TIMEOUT`].
    pub fn short_timeout() -> ClusterSpec {
        ClusterSpec {
            rpc_timeout_ms: RPC_TIMEOUT.as_millis() as u64,
            ..ClusterSpec::default()
        }
    }
}

/// A running cluster.
pub struct Cluster {
    pub spec: ClusterSpec,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub children: Vec<Option<Child>>,
}

impl Cluster {
    /// Starts the servers and waits until all have published their addresses.
    pub fn start(spec: ClusterSpec) -> Cluster {
        let mut cluster = Cluster::prepare(spec);
        for i in 0..cluster.spec.servers {
            let child = cluster.spawn(i);
            cluster.children.push(Some(child));
        }
        cluster.wait_published(cluster.spec.servers);
        cluster
    }

    /// Like [`Cluster::start`], but a server that exits before publishing its address is an
    /// error (with its log) instead of a panic, so a test can probe for a kernel feature.
    pub fn try_start(spec: ClusterSpec) -> Result<Cluster, String> {
        let mut cluster = Cluster::prepare(spec);
        for i in 0..cluster.spec.servers {
            let child = cluster.spawn(i);
            cluster.children.push(Some(child));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while benchfs::registry::read(&cluster.registry())
            .map(|e| e.len())
            .unwrap_or(0)
            < cluster.spec.servers
        {
            for i in 0..cluster.spec.servers {
                let exited = cluster.children[i]
                    .as_mut()
                    .and_then(|c| c.try_wait().unwrap());
                if let Some(status) = exited {
                    let log = std::fs::read_to_string(cluster.log_path(i)).unwrap_or_default();
                    return Err(format!(
                        "server {i} exited with {status} before publishing:\n{log}"
                    ));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "servers did not come up; see {}",
                    cluster.dir.path().display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(cluster)
    }

    /// Writes the configuration into a fresh temporary directory; starts nothing.
    fn prepare(spec: ClusterSpec) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("benchfs-test")
            .tempdir_in(test_root())
            .unwrap();
        let config_path = dir.path().join("benchfs.toml");
        std::fs::write(
            &config_path,
            format!(
                "[node]\ndata_dir = \"{data}\"\nlog_level = \"debug\"\n[storage]\nbackend = \"{backend}\"\nchunk_size = {chunk}\norphan_sweep_secs = {sweep}\n{faults}\
                 [network]\nbind_addr = \"127.0.0.1:0\"\nregistry_dir = \"{registry}\"\nrpc_timeout = {timeout}\nrdma_threshold_bytes = {threshold}\nbusy_poll_us = 20\n\
                 [replication]\nreplicas = {replicas}\n[cache]\nchunk_cache_mb = 0\n\
                 [client]\nwrite_behind_bytes = {write_behind}\n",
                data = dir.path().join("data").display(),
                backend = spec.backend,
                chunk = spec.chunk_size,
                registry = dir.path().join("registry").display(),
                timeout = spec.rpc_timeout_ms,
                threshold = spec.rdma_threshold,
                replicas = spec.replicas,
                // The suite's clients write behind (off by default), so that every test
                // through `Cluster::client` runs the pipeline; the synchronous path runs
                // in the tests that turn it off, the mount, the CLI and `benchfs bench`.
                write_behind = 16 << 20,
                sweep = spec.orphan_sweep_secs,
                faults = spec
                    .inject_faults
                    .map_or(String::new(), |plan| format!("inject_faults = \"{plan}\"\n")),
            ),
        )
        .unwrap();
        Cluster {
            spec,
            dir,
            config_path,
            children: Vec::new(),
        }
    }

    pub fn node_id(i: usize) -> String {
        format!("node{i}")
    }

    /// The servers holding `key`'s copies (owner first), as cluster indexes.
    pub fn replicas_of(&self, key: benchfs::placement::PlacementKey<'_>) -> Vec<usize> {
        let servers = self.ring().replicas(key, self.spec.replicas as usize);
        servers.into_iter().map(|i| i as usize).collect()
    }

    /// The placement ring of this cluster. Its server indexes follow sorted node ids,
    /// which are the cluster's own indexes (`node0` .. `node<n-1>`, fewer than 11).
    pub fn ring(&self) -> benchfs::placement::PlacementRing {
        let ids: Vec<String> = (0..self.spec.servers).map(Self::node_id).collect();
        benchfs::placement::PlacementRing::new(&ids, self.config().placement.virtual_nodes)
            .expect("ring")
    }

    pub fn registry(&self) -> PathBuf {
        self.dir.path().join("registry")
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join("data").join(Self::node_id(i))
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", Self::node_id(i)))
    }

    fn spawn(&self, i: usize) -> Child {
        self.spawn_with_args(i, &[], &[])
    }

    /// Waits until `n` servers are in the registry.
    pub fn wait_published(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while benchfs::registry::read(&self.registry())
            .map(|e| e.len())
            .unwrap_or(0)
            < n
        {
            assert!(
                Instant::now() < deadline,
                "servers did not come up; see {}",
                self.dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The cluster's configuration, as a client loads it.
    pub fn config(&self) -> ServerConfig {
        ServerConfig::from_file(&self.config_path).unwrap()
    }

    /// A new client.
    pub fn client(&self) -> BenchFS {
        BenchFS::connect(&self.config()).expect("connect")
    }

    /// SIGKILL server `i`, leaving its registry entry behind as a crash would.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Sends `signal` (a name for kill(1), e.g. "STOP") to server `i`.
    pub fn signal(&self, i: usize, signal: &str) {
        let child = self.children[i].as_ref().expect("server running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// SIGTERM server `i` and wait for a clean exit; returns whether it exited 0.
    pub fn stop(&mut self, i: usize) -> bool {
        let child = self.children[i].take().expect("server running");
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        wait_exit(child)
    }

    /// Starts server `i` again on the same data directory and waits for it.
    pub fn restart(&mut self, i: usize) {
        self.restart_with_env(i, &[]);
    }

    /// Starts every server that is stopped or killed again on its data directory, and
    /// waits for them all: [`Cluster::restart`] of one waits for every server, so it
    /// cannot bring back two that are down.
    pub fn restart_stopped(&mut self) {
        for i in 0..self.spec.servers {
            if self.children[i].is_none() {
                let entry = benchfs::registry::entry_path(&self.registry(), &Self::node_id(i));
                let _ = std::fs::remove_file(entry);
                self.children[i] = Some(self.spawn_with_args(i, &[], &[]));
            }
        }
        self.wait_published(self.spec.servers);
    }

    /// [`Cluster::restart`] with `envs` set for the server (`BENCHFS_*` overrides).
    pub fn restart_with_env(&mut self, i: usize, envs: &[(&str, &str)]) {
        assert!(self.children[i].is_none(), "stop or kill it first");
        let entry = benchfs::registry::entry_path(&self.registry(), &Self::node_id(i));
        let _ = std::fs::remove_file(entry);
        self.children[i] = Some(self.spawn_with_args(i, &[], envs));
        self.wait_published(self.spec.servers);
    }
}

impl Cluster {
    /// Whether every server that should be running still is.
    pub fn all_running(&mut self) -> bool {
        self.children
            .iter_mut()
            .flatten()
            .all(|c| c.try_wait().unwrap().is_none())
    }
}

fn wait_exit(mut child: Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lines of each server's log a failed test prints.
const LOG_TAIL_LINES: usize = 40;

impl Drop for Cluster {
    // Captured by the harness, which shows it with the failure.
    #[allow(clippy::print_stderr)]
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A failed test says what its servers last did: the logs go with the directory.
        if std::thread::panicking() {
            for i in 0..self.spec.servers {
                let log = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
                eprintln!("--- the last lines of {}'s log ---", Self::node_id(i));
                tail.iter().for_each(|line| eprintln!("{line}"));
            }
        }
    }
}

/// A free loopback address whose port lies below the kernel's ephemeral range, for a
/// server that must come back on its port after a kill: a port the kernel hands out to
/// `bind(0)` can go to a server another test starts in the meantime. Processes start
/// their search at different ports, so parallel test binaries rarely try the same one.
pub fn port_outside_ephemeral_range() -> std::net::SocketAddr {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, span) = (ephemeral_low / 2, ephemeral_low / 2);
    let start = (std::process::id() % u32::from(span)) as u16;
    (0..span)
        .map(|_| low + start.wrapping_add(NEXT.fetch_add(97, Ordering::Relaxed)) % span)
        .map(|port| std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .find(|addr| std::net::TcpListener::bind(addr).is_ok())
        .expect("a free port below the ephemeral range")
}

/// The host's memory (`MemTotal`), in KiB.
pub fn host_memory_kib() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("MemTotal in /proc/meminfo")
}

/// Where test clusters live: a real disk (O_DIRECT and io_uring need one), not tmpfs.
pub fn test_root() -> PathBuf {
    let root = std::env::var_os("BENCHFS_TEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).to_path_buf());
    std::fs::create_dir_all(&root).unwrap();
    root
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

impl Cluster {
    /// Starts `spec.servers` servers, each given `extra` command-line arguments (for
    /// example `--secret-file`), and waits until all have published their addresses.
    pub fn start_with_args(spec: ClusterSpec, extra: &[String]) -> Cluster {
        let servers = spec.servers;
        let mut cluster = Cluster::start(ClusterSpec { servers: 0, ..spec });
        cluster.spec.servers = servers;
        for i in 0..servers {
            let child = cluster.spawn_with_args(i, extra, &[]);
            cluster.children.push(Some(child));
        }
        cluster.wait_published(servers);
        cluster
    }

    /// `benchfsd` with this cluster's configuration, as node `node_id` on `data_dir`, with
    /// no stdin; the caller adds arguments, environment and where the output goes.
    pub fn server_command(&self, node_id: &str, data_dir: &Path) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_benchfsd"));
        command
            .arg("--config")
            .arg(&self.config_path)
            .arg("--node-id")
            .arg(node_id)
            .arg("--data-dir")
            .arg(data_dir)
            .stdin(Stdio::null());
        command
    }

    /// Starts server `i` with `extra` arguments after the usual ones, and `envs` set.
    fn spawn_with_args(&self, i: usize, extra: &[String], envs: &[(&str, &str)]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .unwrap();
        self.server_command(&Self::node_id(i), &self.data_dir(i))
            .args(extra)
            .envs(envs.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn benchfsd")
    }

    /// Starts server `i` again on the same data directory, listening on `bind` (for
    /// example the address it had before), and waits for it. Nothing is set for it here:
    /// benchfsd itself sets SO_REUSEADDR on its listener (UCX `CM_REUSEADDR`), which is
    /// what lets a server killed with -9 come back at once on its port while the
    /// connections it had linger in TIME_WAIT.
    pub fn restart_at(&mut self, i: usize, bind: std::net::SocketAddr) {
        assert!(self.children[i].is_none(), "stop or kill it first");
        let entry = benchfs::registry::entry_path(&self.registry(), &Self::node_id(i));
        let _ = std::fs::remove_file(entry);
        self.children[i] =
            Some(self.spawn_with_args(i, &["--bind".to_string(), bind.to_string()], &[]));
        let deadline = Instant::now() + Duration::from_secs(30);
        while benchfs::registry::read(&self.registry())
            .map(|e| e.len())
            .unwrap_or(0)
            < self.spec.servers
        {
            if !self.is_running(i) || Instant::now() > deadline {
                let log = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
                let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().join("\n");
                panic!("server {i} did not come back on {bind}; its log ends:\n{tail}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address server `i` published in the registry.
    pub fn addr(&self, i: usize) -> std::net::SocketAddr {
        let id = Self::node_id(i);
        let entries = benchfs::registry::read(&self.registry()).unwrap();
        entries
            .into_iter()
            .find(|e| e.node_id == id)
            .unwrap_or_else(|| panic!("{id} is not in the registry"))
            .addr
    }

    /// Whether server `i` was started and has not exited (a crash or a panic shows here).
    pub fn is_running(&mut self, i: usize) -> bool {
        match self.children[i].as_mut() {
            Some(child) => child.try_wait().unwrap().is_none(),
            None => false,
        }
    }
}

/// Reports a skipped case loudly: straight to the process's stderr, which the test
/// harness does not capture, so it shows even when the test passes.
/// Whether a transport UCX chose (`sysv/memory`, `tcp/lo`, ...) moves data by shared
/// memory, as `Endpoint::uses_shared_memory` tells it.
pub fn is_shared_memory(transport: &str) -> bool {
    transport.ends_with("/memory")
}

pub fn skip(what: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {what}: {why}");
}

/// Prints a line of a test's findings (shown with `--nocapture`).
#[allow(clippy::print_stdout)]
pub fn note(text: &str) {
    println!("{text}");
}
