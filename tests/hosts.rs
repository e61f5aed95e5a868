//! BenchFS on K hosts: K = 4 network namespaces joined by veth pairs to a bridge in a
//! namespace of its own (`scripts/netns-hosts.sh`), one `benchfsd` in each, and the
//! `benchfs` command line in a fifth, the client's. Shared memory is on (the default) and
//! UCX's transports are its defaults, yet UCX talks TCP between them: every lane it chose,
//! on every client and server, is checked to be tcp on that namespace's own veth. The
//! namespaces share one kernel, but UCX offers shared memory only to peers in its own IPC
//! namespace, and every host has one of its own (`netns-hosts.sh exec`). Data goes end to end (put, get, byte comparison, ls, chunks on
//! every host); then host h3's cable is pulled (its port on the bridge goes down) and the
//! test shows what the contract says (README: Consistency and durability):
//!
//! - replicas = 2: get returns the exact bytes (reads fail over to the other replica), ls
//!   and stat work (fewer than `replicas` silent servers hide no entry), and a put of a new
//!   file fails naming h3's address, since a record and every chunk go to all their
//!   replicas and all must take them (`FsClient::write_all`, `create_record`); a failed
//!   create is undone, so the file is not listed, and the same put works once h3 is back;
//! - replicas = 1: get of a file with chunks on h3, and ls, fail with a message naming h3's
//!   address and a non-zero exit status, and get leaves no local file;
//! - with the cable back, reads work again.
//!
//! Every command runs within a liveness bound; nothing is timed. Every process runs under
//! `ip netns exec` and every address is one that exists only inside the namespaces, so no
//! traffic touches this machine's own network. The namespaces, links and servers are
//! removed even when an assertion fails (drop guards). Needs root and iproute2; otherwise
//! the test says SKIPPED and passes.

mod common;

use std::cell::Cell;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::cli::Run;
use common::netns::{self, Host, Hosts};
use common::note;

/// Hosts with a server each.
const K: usize = 4;
/// The host whose cable is pulled: h3.
const DOWN: usize = 2;
/// Small chunks, so that a file of a few MiB spreads over every host.
const CHUNK: usize = 256 << 10;
/// 48 full chunks and a partial one: placed by the file's inode number, which differs
/// from run to run, they leave one of 4 hosts without a chunk about once in 300000 runs
/// (16 did so once in 30).
const FILE_LEN: usize = 48 * CHUNK + 12_345;
/// The RPC timeout of servers and clients: short, so a silent host costs little.
const RPC_TIMEOUT_MS: u64 = 3000;
/// How long one command may take. A liveness bound (a hang fails the test instead of
/// stalling it), not a measurement. Generous: a client that has no connection yet to a
/// server that does not answer tries to connect once for each chunk read waiting on it, one
/// after another, an RPC timeout each, so a get with h3 unplugged takes several timeouts.
const CLI_BOUND: Duration = Duration::from_secs(60);
/// How long servers may take to publish their addresses or to stop. A liveness bound.
const SERVER_BOUND: Duration = Duration::from_secs(30);

/// Waits for `child` to exit, at most `bound`; kills it (and returns `None`) after that.
fn wait_bounded(child: &mut Child, bound: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process's environment: nothing from the caller's but PATH (no stray `BENCHFS_*` or
/// `UCX_*` setting, so UCX may use every transport it has), and UCX told to say which
/// lanes it chose.
fn ucx_env(command: &mut Command, ucx_log: &Path) {
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_BACKTRACE", "1")
        // At level info UCX prints every endpoint configuration it makes (see `lanes`),
        // into a file of its own, not on stdout where `ls` prints.
        .env("UCX_LOG_LEVEL", "info")
        .env("UCX_LOG_FILE", ucx_log);
}

/// The lanes UCX chose for its endpoints, as `transport/device`. At log level info UCX
/// (1.13) prints each endpoint configuration when it first makes it, every lane named by
/// what it is used for:
/// `ucp_worker.c:1763 UCX  INFO  ep_cfg[1]: rma_am(tcp/veth-client) am(tcp/veth-client)`.
/// Shared memory would show as `posix/memory`, `sysv/memory` or `cma/memory`, the wrong
/// device as `tcp/lo`. This is UCX's own account of what it uses, for every connection,
/// so it is the direct evidence; a socket count could not tell a shm lane from none.
fn lanes(ucx_log: &str) -> Vec<String> {
    ucx_log
        .lines()
        .filter_map(|line| line.split_once("ep_cfg[").map(|(_, rest)| rest))
        .flat_map(|rest| rest.split('(').skip(1))
        .filter_map(|lane| lane.split_once(')').map(|(inside, _)| inside))
        .flat_map(str::split_whitespace)
        .map(str::to_string)
        .collect()
}

/// The lanes that are not tcp on `dev`.
fn foreign_lanes<'a>(lanes: &'a [String], dev: &str) -> Vec<&'a String> {
    let tcp = format!("tcp/{dev}");
    lanes.iter().filter(|l| **l != tcp).collect()
}

/// Asserts that every lane UCX chose is tcp on `dev`, the one device of `who`'s namespace;
/// returns how many lanes it logged.
#[track_caller]
fn assert_tcp_lanes(ucx_log: &str, dev: &str, who: &str) -> usize {
    let lanes = lanes(ucx_log);
    let foreign = foreign_lanes(&lanes, dev);
    assert!(
        foreign.is_empty(),
        "{who}: UCX chose lanes other than tcp/{dev}: {foreign:?}\n{ucx_log}"
    );
    lanes.len()
}

/// What one `benchfs` command did.
struct Cli {
    run: Run,
    /// Lanes UCX logged (all tcp on the client's veth: checked for every command).
    lanes: usize,
}

/// One `benchfsd` on each host, with `replicas`, listening on `port` at the host's address,
/// and a client configuration; the servers are killed when it is dropped.
struct Cluster<'h> {
    hosts: &'h Hosts,
    dir: PathBuf,
    port: u16,
    servers: Vec<Option<Child>>,
    runs: Cell<u32>,
}

impl<'h> Cluster<'h> {
    /// The configuration of server `host`, or of the client with `None`.
    fn config(&self, replicas: u32, host: Option<&Host>) -> String {
        let mut text = String::new();
        if let Some(h) = host {
            text += &format!(
                "[node]\nnode_id = \"{}\"\ndata_dir = \"{}\"\nlog_level = \"info\"\n",
                h.name,
                self.data_dir(h).display()
            );
        }
        // No orphan sweep: it would only add calls to the silent host.
        text += &format!(
            "[storage]\nbackend = \"file\"\nchunk_size = {CHUNK}\norphan_sweep_secs = 0\n\
             [network]\nregistry_dir = \"{}\"\nrpc_timeout = {RPC_TIMEOUT_MS}\n",
            self.dir.join("registry").display()
        );
        if let Some(h) = host {
            text += &format!("bind_addr = \"{}\"\n", self.addr_of(h));
        }
        text += &format!("[replication]\nreplicas = {replicas}\n[cache]\nchunk_cache_mb = 0\n");
        text
    }

    /// Starts a server on every host and waits until all are published.
    fn start(hosts: &'h Hosts, dir: PathBuf, replicas: u32, port: u16) -> Cluster<'h> {
        std::fs::create_dir_all(dir.join("client")).unwrap();
        let mut cluster = Cluster {
            hosts,
            dir,
            port,
            servers: Vec::new(),
            runs: Cell::new(0),
        };
        let client = cluster.config(replicas, None);
        std::fs::write(cluster.dir.join("client/benchfs.toml"), client).unwrap();
        for host in &hosts.hosts {
            let config = cluster.dir.join(format!("{}.toml", host.name));
            std::fs::write(&config, cluster.config(replicas, Some(host))).unwrap();
            let log = File::create(cluster.log(host, "log")).unwrap();
            let mut command = Hosts::exec(host, Path::new(env!("CARGO_BIN_EXE_benchfsd")));
            command.arg("--config").arg(&config);
            ucx_env(&mut command, &cluster.log(host, "ucx.log"));
            let child = command
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawn ip netns exec benchfsd");
            cluster.servers.push(Some(child));
        }
        cluster.wait_published();
        note(&format!(
            "{} servers up with replicas = {replicas}: {}",
            hosts.hosts.len(),
            hosts
                .hosts
                .iter()
                .map(|h| format!("{}@{}", h.name, cluster.addr_of(h)))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        cluster
    }

    fn data_dir(&self, host: &Host) -> PathBuf {
        self.dir.join("data").join(&host.name)
    }

    /// `<dir>/<host>.<what>`: the server's own log (`log`), UCX's (`ucx.log`).
    fn log(&self, host: &Host, what: &str) -> PathBuf {
        self.dir.join(format!("{}.{what}", host.name))
    }

    fn read_log(&self, host: &Host, what: &str) -> String {
        std::fs::read_to_string(self.log(host, what)).unwrap_or_default()
    }

    /// `address:port` of the server on `host`, as clients reach it.
    fn addr_of(&self, host: &Host) -> String {
        format!("{}:{}", host.addr, self.port)
    }

    /// Waits until every server is in the registry, at its host's address.
    fn wait_published(&mut self) {
        let deadline = Instant::now() + SERVER_BOUND;
        let registry = self.dir.join("registry");
        loop {
            let entries = benchfs::registry::read(&registry).unwrap_or_default();
            if entries.len() == self.hosts.hosts.len() {
                for host in &self.hosts.hosts {
                    let entry = entries.iter().find(|e| e.node_id == host.name);
                    let addr = entry.map(|e| e.addr.to_string());
                    assert_eq!(addr, Some(self.addr_of(host)), "{entries:?}");
                }
                return;
            }
            for (i, host) in self.hosts.hosts.iter().enumerate() {
                let child = self.servers[i].as_mut().unwrap();
                if let Some(status) = child.try_wait().unwrap() {
                    let log = self.read_log(host, "log");
                    panic!("benchfsd on {} exited with {status}:\n{log}", host.name);
                }
            }
            assert!(
                Instant::now() < deadline,
                "servers did not publish within {SERVER_BOUND:?}; registry: {entries:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Cluster<'_> {
    /// Runs `benchfs args --dir <client dir>` in the client's namespace, within
    /// [`CLI_BOUND`], and checks the lanes UCX chose.
    fn cli(&self, args: &[&str]) -> Cli {
        let n = self.runs.get() + 1;
        self.runs.set(n);
        let path = |what: &str| self.dir.join(format!("cli{n}.{what}"));
        let mut command = Hosts::exec(&self.hosts.client, Path::new(env!("CARGO_BIN_EXE_benchfs")));
        command.args(args).arg("--dir").arg(self.dir.join("client"));
        ucx_env(&mut command, &path("ucx.log"));
        let started = Instant::now();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(File::create(path("out")).unwrap())
            .stderr(File::create(path("err")).unwrap())
            .spawn()
            .expect("spawn ip netns exec benchfs");
        let Some(status) = wait_bounded(&mut child, CLI_BOUND) else {
            panic!("benchfs {args:?} did not exit within {CLI_BOUND:?}; killed");
        };
        let read = |what: &str| std::fs::read_to_string(path(what)).unwrap_or_default();
        let run = Run {
            args: args.iter().map(|a| a.to_string()).collect(),
            success: status.success(),
            stdout: read("out"),
            stderr: read("err"),
        };
        note(&format!(
            "  benchfs {}: {} after {:.1} s{}",
            args.join(" "),
            if run.success { "ok" } else { "failed" },
            started.elapsed().as_secs_f64(),
            if run.success {
                String::new()
            } else {
                format!(": {}", run.stderr.trim())
            }
        ));
        let lanes = assert_tcp_lanes(&read("ucx.log"), &self.hosts.client.dev, "the client");
        Cli { run, lanes }
    }

    /// Gets `path` into a fresh local file and asserts it holds `local`'s bytes.
    #[track_caller]
    fn assert_get(&self, local: &Path, path: &str) {
        let got = self.dir.join(format!("got{}.bin", self.runs.get() + 1));
        let cli = self.cli(&["get", path, got.to_str().unwrap()]);
        cli.run.ok();
        assert!(cli.lanes > 0, "the client logged no UCX lanes");
        let (want, got) = (std::fs::read(local).unwrap(), std::fs::read(&got).unwrap());
        assert_eq!(got.len(), want.len(), "get {path}: wrong length");
        assert!(
            got == want,
            "get {path}: the bytes differ from what was put"
        );
    }

    /// Asserts that `ls /` lists `name` as a file of `len` bytes.
    #[track_caller]
    fn assert_listed(&self, name: &str, len: usize) {
        let listing = self.cli(&["ls", "/"]).run.ok();
        let len = len.to_string();
        assert!(
            listing
                .lines()
                .any(|l| l.split_whitespace().eq(["-", len.as_str(), name])),
            "ls / does not list {name} ({len} bytes):\n{listing}"
        );
    }

    /// Puts `local` as `path`, gets it back and compares, and sees it in `ls /`.
    #[track_caller]
    fn put_and_check(&self, local: &Path, path: &str) {
        let cli = self.cli(&["put", local.to_str().unwrap(), path]);
        cli.run.ok();
        assert!(cli.lanes > 0, "the client logged no UCX lanes");
        self.assert_get(local, path);
        let len = std::fs::metadata(local).unwrap().len() as usize;
        self.assert_listed(path.trim_start_matches('/'), len);
    }

    /// Chunk files on `host` (`data_dir/chunks/<file>/<index>`, file backend).
    fn chunk_files(&self, host: &Host) -> usize {
        let chunks = self.data_dir(host).join("chunks");
        let Ok(files) = std::fs::read_dir(chunks) else {
            return 0;
        };
        files
            .flatten()
            .map(|f| std::fs::read_dir(f.path()).map_or(0, |c| c.count()))
            .sum()
    }

    /// Asserts that every host holds some of the chunks put so far.
    fn assert_spread(&self) {
        let counts: Vec<(String, usize)> = (self.hosts.hosts.iter())
            .map(|h| (h.name.clone(), self.chunk_files(h)))
            .collect();
        note(&format!("  chunk files per host: {counts:?}"));
        assert!(counts.iter().all(|(_, n)| *n > 0), "{counts:?}");
    }

    /// Stops every server with SIGTERM and asserts each stopped cleanly; then (UCX writes
    /// its log file out at exit) that every server's lanes were tcp on its own veth.
    fn stop(&mut self) {
        for child in self.servers.iter().flatten() {
            let status = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status()
                .unwrap();
            assert!(status.success(), "kill -TERM {}", child.id());
        }
        for (i, host) in self.hosts.hosts.iter().enumerate() {
            let mut child = self.servers[i].take().expect("running");
            let status = wait_bounded(&mut child, SERVER_BOUND);
            assert!(
                status.is_some_and(|s| s.success()),
                "benchfsd on {} did not stop cleanly ({status:?}):\n{}",
                host.name,
                self.read_log(host, "log")
            );
            let lanes = assert_tcp_lanes(&self.read_log(host, "ucx.log"), &host.dev, &host.name);
            assert!(lanes > 0, "{}: UCX logged no lanes", host.name);
        }
        note("  servers stopped; every lane was tcp on its host's veth");
    }
}

impl Drop for Cluster<'_> {
    fn drop(&mut self) {
        for child in self.servers.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for host in &self.hosts.hosts {
                let log = self.read_log(host, "log");
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                note(&format!(
                    "--- {} log (end):\n{}",
                    host.name,
                    tail.join("\n")
                ));
            }
        }
    }
}

/// Asserts that a failed command's message names what failed and `server`.
#[track_caller]
fn assert_names(stderr: &str, what: &str, server: &str) {
    assert!(
        stderr.contains(what) && stderr.contains(server),
        "the error should name {what:?} and the unreachable server {server}: {stderr}"
    );
}

/// Starts a cluster with `replicas`, puts the test file so that its chunks lie on every
/// host (so some live on h3), and unplugs h3.
fn start_and_unplug<'h>(
    hosts: &'h Hosts,
    dir: PathBuf,
    replicas: u32,
    port: u16,
    local: &Path,
) -> Cluster<'h> {
    let cluster = Cluster::start(hosts, dir, replicas, port);
    cluster.put_and_check(local, "/file.bin");
    cluster.assert_spread();
    let down = &hosts.hosts[DOWN];
    note(&format!(
        "unplugging {} ({})",
        down.name,
        cluster.addr_of(down)
    ));
    hosts.set_link(down, false);
    cluster
}

/// replicas = 2: with h3 unplugged reads and ls go on, a new file cannot be written.
fn replicated(hosts: &Hosts, root: &Path, local: &Path) {
    let mut cluster = start_and_unplug(hosts, root.join("replicas2"), 2, 7000, local);
    let down = &hosts.hosts[DOWN];
    cluster.assert_get(local, "/file.bin");
    cluster.assert_listed("file.bin", FILE_LEN);
    let stat = cluster.cli(&["stat", "/file.bin"]).run.ok();
    assert!(stat.contains(&format!("size {FILE_LEN}")), "{stat}");
    // A record and each chunk go to all their replicas, and all must take them. Of 17
    // chunks and a record, each on 2 of the 4 servers, some are h3's (if none were, the
    // put would succeed and this would say so).
    let put = cluster.cli(&["put", local.to_str().unwrap(), "/during.bin"]);
    let err = put.run.failed();
    assert_names(&err, "put", &cluster.addr_of(down));
    if err.contains("open /during.bin") {
        // The create failed: it is undone on the replica that took it (all or none).
        let listing = cluster.cli(&["ls", "/"]).run.ok();
        assert!(
            !listing.contains("during.bin"),
            "a failed create left:\n{listing}"
        );
    } else {
        assert!(err.contains("left incomplete"), "{err}");
    }
    note(&format!("plugging {} back in", down.name));
    hosts.set_link(down, true);
    cluster.assert_get(local, "/file.bin");
    // The path whose put failed takes a put again.
    cluster.put_and_check(local, "/during.bin");
    cluster.stop();
}

/// replicas = 1: with h3 unplugged, what lives only there cannot be read, and says so.
fn unreplicated(hosts: &Hosts, root: &Path, local: &Path) {
    let mut cluster = start_and_unplug(hosts, root.join("replicas1"), 1, 7001, local);
    let down = &hosts.hosts[DOWN];
    let dest = cluster.dir.join("not-there.bin");
    let get = cluster.cli(&["get", "/file.bin", dest.to_str().unwrap()]);
    assert_names(&get.run.failed(), "get /file.bin", &cluster.addr_of(down));
    assert!(!dest.exists(), "a failed get must leave no local file");
    // Every server holds a share of each directory, and h3's has no copy elsewhere.
    let ls = cluster.cli(&["ls", "/"]);
    assert_names(&ls.run.failed(), "readdir /", &cluster.addr_of(down));
    note(&format!("plugging {} back in", down.name));
    hosts.set_link(down, true);
    cluster.assert_get(local, "/file.bin");
    cluster.stop();
}

#[test]
fn k_hosts_on_a_bridge_with_one_link_down() {
    let prefix = format!("bfs-hosts-{}", std::process::id());
    if let Some(why) = netns::unavailable(&format!("{prefix}-probe")) {
        common::skip("tests/hosts.rs (K hosts as network namespaces)", &why);
        return;
    }
    let started = Instant::now();
    // Declared first, dropped last: the servers are gone before the namespaces go.
    let hosts = Hosts::up(K, &prefix);
    let root = tempfile::Builder::new()
        .prefix("benchfs-hosts")
        .tempdir_in(common::test_root())
        .unwrap();
    let local = root.path().join("file.bin");
    std::fs::write(&local, common::pattern(FILE_LEN, 0x5eed)).unwrap();
    note(&format!(
        "{K} hosts and a client in namespaces {prefix}-*: {}",
        (hosts.hosts.iter().chain([&hosts.client]))
            .map(|h| format!("{} {} {}", h.name, h.dev, h.addr))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    replicated(&hosts, root.path(), &local);
    unreplicated(&hosts, root.path(), &local);
    note(&format!("done in {:.0} s", started.elapsed().as_secs_f64()));
}

#[test]
fn lanes_are_read_from_ucx_log_lines() {
    let log = "[1.2] [vm:1:0] parser.c:1916 UCX  INFO  UCX_* env variables: UCX_TLS=tcp\n\
               [1.3] [vm:1:0] ucp_worker.c:1763 UCX  INFO  \
               ep_cfg[1]: rma_am(tcp/veth-h1) am(tcp/veth-h1)\n\
               [1.4] [vm:1:0] ucp_worker.c:1763 UCX  INFO    \
               ep_cfg[2]: tag(posix/memory cma/memory) am(tcp/lo)\n";
    let lanes = lanes(log);
    assert_eq!(
        lanes,
        [
            "tcp/veth-h1",
            "tcp/veth-h1",
            "posix/memory",
            "cma/memory",
            "tcp/lo"
        ]
    );
    // Shared memory and the wrong device are what the check refuses.
    assert_eq!(
        foreign_lanes(&lanes, "veth-h1"),
        ["posix/memory", "cma/memory", "tcp/lo"]
    );
    let tcp_only: String = log.lines().take(2).collect::<Vec<_>>().join("\n");
    assert_eq!(assert_tcp_lanes(&tcp_only, "veth-h1", "h1"), 2);
}
