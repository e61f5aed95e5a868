//! Servers under a memory limit they were not told of (a job's cgroup, no
//! `storage.capacity`). A memory server refuses a write past what the limit leaves with
//! ENOSPC naming the path and the server, stays up, keeps what it acknowledged, and takes
//! writes again in space an unlink freed; a tiered server puts such chunks on its disk
//! tier. Before the store checked the memory it maps, the kernel's OOM killer ended the
//! server, and every chunk on it with it.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use benchfs::blocking::{ApiError, BenchFS};
use common::files::{read_file, write_file};
use common::{pattern, skip, Cluster, ClusterSpec};

/// The cgroup's limit: a few 16 MiB files past the store's 64 MiB headroom.
const LIMIT: u64 = 192 * 1024 * 1024;
const FILE: usize = 16 * 1024 * 1024;

/// Tells apart the cgroups of this process's tests, which run at once.
static CGROUPS_MADE: AtomicUsize = AtomicUsize::new(0);

/// A fresh memory cgroup (the v1 controller) under this process's own, removed on drop.
struct MemoryCgroup(PathBuf);

impl MemoryCgroup {
    fn new(limit: u64) -> Result<MemoryCgroup, String> {
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
        let own = cgroups
            .lines()
            .find_map(|line| {
                let mut fields = line.splitn(3, ':');
                let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
                controllers
                    .split(',')
                    .any(|c| c == "memory")
                    .then(|| path.trim_start_matches('/').to_string())
            })
            .ok_or("no cgroup v1 memory controller")?;
        let dir = PathBuf::from("/sys/fs/cgroup/memory")
            .join(own)
            .join(format!(
                "benchfs-test-{}-{}",
                std::process::id(),
                CGROUPS_MADE.fetch_add(1, Ordering::Relaxed)
            ));
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let cgroup = MemoryCgroup(dir);
        std::fs::write(cgroup.0.join("memory.limit_in_bytes"), limit.to_string())
            .map_err(|e| format!("memory.limit_in_bytes: {e}"))?;
        Ok(cgroup)
    }

    /// Moves process `pid` in; what it already holds stays charged where it was.
    fn add(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // The server was killed and waited for; the kernel may take a moment more to let
        // the cgroup go.
        let mut result = Ok(());
        for _ in 0..50 {
            result = std::fs::remove_dir(&self.0);
            if result.is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Err(e) = result {
            skip(
                "removing a test cgroup",
                &format!("{}: {e}", self.0.display()),
            );
        }
    }
}

/// A server in a memory cgroup. Fields drop in order: the server (killed and waited for)
/// leaves the cgroup before the cgroup is removed.
struct LimitedServer {
    cluster: Cluster,
    _cgroup: MemoryCgroup,
}

/// One server of `backend` with 1 MiB chunks and `envs` set, moved into a cgroup limited
/// to [`LIMIT`]; `None` (the case skipped, loudly) where no such cgroup can be made.
fn limited_server(backend: &'static str, envs: &[(&str, &str)]) -> Option<LimitedServer> {
    let cgroup = match MemoryCgroup::new(LIMIT) {
        Ok(cgroup) => cgroup,
        Err(why) => {
            skip("a server under a memory limit", &why);
            return None;
        }
    };
    let mut cluster = Cluster::start(ClusterSpec {
        servers: 1,
        chunk_size: 1 << 20,
        ..ClusterSpec::backend(backend)
    });
    if !envs.is_empty() {
        assert!(cluster.stop(0));
        cluster.restart_with_env(0, envs);
    }
    cgroup.add(cluster.children[0].as_ref().unwrap().id());
    Some(LimitedServer {
        cluster,
        _cgroup: cgroup,
    })
}

/// Creates `path`, writes `data` in writes of `piece` bytes and closes it; the first error
/// (write-behind reports a refused chunk at a later write or the close).
fn try_write_file(fs: &BenchFS, path: &str, data: &[u8], piece: usize) -> Result<(), ApiError> {
    let fd = fs.create(path, 0o644)?;
    let written = data
        .chunks(piece)
        .try_for_each(|part| fs.write(fd, part).map(drop));
    let closed = fs.close(fd);
    written?;
    closed
}

#[test]
fn a_memory_server_at_its_memory_limit_refuses_writes_and_keeps_what_it_holds() {
    let Some(mut limited) = limited_server("memory", &[]) else {
        return;
    };
    let cluster = &mut limited.cluster;
    let fs = cluster.client();

    let mut written = Vec::new();
    let mut refused = None;
    for i in 0..2 * LIMIT as usize / FILE {
        let path = format!("/f{i}");
        let data = pattern(FILE, i as u64);
        match try_write_file(&fs, &path, &data, FILE) {
            Ok(()) => written.push((path, data)),
            Err(e) => {
                refused = Some((path, e));
                break;
            }
        }
    }
    let (path, e) = refused.expect("twice the memory limit written without an error");
    assert!(cluster.is_running(0), "the server was killed: {e}");
    assert_eq!(e.errno(), libc::ENOSPC, "{e}");
    let message = e.to_string();
    assert!(
        message.contains(&path) && message.contains("node0"),
        "the error names neither the path nor the server: {message}"
    );
    assert!(
        !written.is_empty(),
        "nothing fitted under the limit: {message}"
    );
    for (path, data) in &written {
        assert!(read_file(&fs, path) == *data, "{path} changed");
    }

    fs.unlink(&path).unwrap();
    fs.unlink(&written[0].0).unwrap();
    let again = pattern(FILE, 99);
    write_file(&fs, "/again", &again);
    assert!(
        read_file(&fs, "/again") == again,
        "/again reads back other bytes"
    );
    assert!(cluster.is_running(0));
}

#[test]
fn a_tiered_server_at_its_memory_limit_puts_chunks_on_disk() {
    // O_DIRECT: the page cache of buffered writes, dirty until written back, counts
    // against the limit too, and a v1 cgroup full of it is the kernel's to resolve (it may
    // kill); that is the disk's share, not the memory tier's.
    let Some(mut limited) = limited_server("tiered", &[("BENCHFS_STORAGE_O_DIRECT", "true")])
    else {
        return;
    };
    let cluster = &mut limited.cluster;
    let fs = cluster.client();
    let files: Vec<(String, Vec<u8>)> = (0..2 * LIMIT as usize / FILE)
        .map(|i| (format!("/t{i}"), pattern(FILE, 100 + i as u64)))
        .collect();
    // Writes smaller than a chunk: a chunk in memory grows page by page, so the memory
    // can run out under one already there as well as for a new one.
    for (path, data) in &files {
        try_write_file(&fs, path, data, 64 * 1024).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    for (path, data) in &files {
        assert!(
            read_file(&fs, path) == *data,
            "{path} reads back other bytes"
        );
    }
    assert!(cluster.is_running(0));
}
