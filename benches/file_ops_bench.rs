//! File operations through the blocking client (`benchfs::blocking::BenchFS`) against a
//! local cluster of real `benchfsd` processes: two servers on the memory backend, started
//! with `benchfs cluster up` in a temporary directory and stopped with `benchfs cluster
//! down` when the benchmark ends, also when it panics.
//!
//! Metadata operations (create = open with CREATE then close, stat, unlink) report
//! operations per second; writes and reads of 4 KiB, 1 MiB and 4 MiB (one `pwrite` or
//! `pread` at offset 0 of an open file) report bytes per second. The client's metadata
//! and chunk caches are off, as in `benchfs bench`, so every call goes to the servers.
#![allow(missing_docs)] // criterion_group! generates undocumented items.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use benchfs::blocking::{BenchFS, OpenFlags};
use benchfs::config::ServerConfig;
use criterion::{
    black_box, criterion_group, criterion_main, measurement::WallTime, BenchmarkGroup, BenchmarkId,
    Criterion, Throughput,
};

/// Mode of every file the benchmark creates.
const MODE: u32 = 0o644;
/// The transfer sizes of the write and read benchmarks: one small, two large.
const SIZES: [(&str, usize); 3] = [("4KiB", 4 << 10), ("1MiB", 1 << 20), ("4MiB", 4 << 20)];

/// A local cluster in a temporary directory; dropping it stops its servers (and then
/// removes the directory).
struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts two servers on the memory backend and waits until both are published.
    fn up() -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("benchfs-bench")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("cannot create the cluster directory");
        // The guard exists before any server does: servers that a failing `up` left
        // running are stopped too.
        let cluster = Cluster { dir };
        if let Err(e) = cluster.cli(&["up", "--servers", "2", "--backend", "memory"]) {
            panic!("{e}");
        }
        cluster
    }

    /// Runs `benchfs cluster <args> --dir <dir>`, keeping its output off the report.
    fn cli(&self, args: &[&str]) -> Result<(), String> {
        let output = Command::new(env!("CARGO_BIN_EXE_benchfs"))
            .arg("cluster")
            .args(args)
            .arg("--dir")
            .arg(self.dir.path())
            // No job secret: the servers and the client below present none.
            .env_remove("BENCHFS_SECRET_FILE")
            .output()
            .map_err(|e| format!("cannot run benchfs: {e}"))?;
        if output.status.success() {
            return Ok(());
        }
        Err(format!(
            "benchfs cluster {} failed ({}):\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }

    /// A client with the cluster's configuration (as the CLI connects), caches off.
    fn connect(&self) -> BenchFS {
        let mut config = ServerConfig::from_file(self.dir.path().join("benchfs.toml"))
            .expect("cannot read the cluster's benchfs.toml");
        config.cache.metadata_cache_entries = 0;
        config.cache.chunk_cache_mb = 0;
        BenchFS::connect(&config).expect("cannot connect to the cluster")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.cli(&["down"]).is_ok() {
            return;
        }
        // `benchfs cluster down` did not run: kill the servers it would have stopped.
        kill_all(&self.dir.path().join("pids"));
    }
}

/// Sends SIGKILL to every pid listed in `pids` (one a line).
fn kill_all(pids: &Path) {
    let list = std::fs::read_to_string(pids).unwrap_or_default();
    for pid in list.lines().filter(|l| l.trim().parse::<u32>().is_ok()) {
        let _ = Command::new("kill").arg("-KILL").arg(pid.trim()).status();
    }
}

/// `count` paths never used before in this run, numbered from `next`.
fn fresh_paths(prefix: &str, next: &mut u64, count: u64) -> Vec<String> {
    let paths = (*next..*next + count)
        .map(|i| format!("/{prefix}-{i}"))
        .collect();
    *next += count;
    paths
}

/// Creates each of `paths` (open with CREATE, then close).
fn create_all(fs: &BenchFS, paths: &[String]) {
    for path in paths {
        let fd = fs
            .open(path, OpenFlags::CREATE | OpenFlags::WRITE, MODE)
            .expect("create");
        fs.close(fd).expect("close");
    }
}

/// Unlinks each of `paths`.
fn unlink_all(fs: &BenchFS, paths: &[String]) {
    for path in paths {
        fs.unlink(path).expect("unlink");
    }
}

/// A group with short warm-up and measurement times, so the whole run stays short.
fn group<'a>(c: &'a mut Criterion, name: &str, samples: usize) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(samples);
    group
}

/// create, stat and unlink, one operation per iteration. Only the operation is timed:
/// the files create makes are unlinked, and the files unlink removes are created, outside
/// the measurement.
fn metadata(c: &mut Criterion, fs: &BenchFS) {
    let mut group = group(c, "metadata", 30);
    group.throughput(Throughput::Elements(1));
    let mut next = 0;
    group.bench_function("create", |b| {
        b.iter_custom(|iters| {
            let paths = fresh_paths("create", &mut next, iters);
            let start = Instant::now();
            create_all(fs, &paths);
            let elapsed = start.elapsed();
            unlink_all(fs, &paths);
            elapsed
        })
    });
    group.bench_function("unlink", |b| {
        b.iter_custom(|iters| {
            let paths = fresh_paths("unlink", &mut next, iters);
            create_all(fs, &paths);
            let start = Instant::now();
            unlink_all(fs, &paths);
            start.elapsed()
        })
    });
    let stat_path = "/stat-target";
    create_all(fs, &[stat_path.to_string()]);
    group.bench_function("stat", |b| {
        b.iter(|| black_box(fs.stat(stat_path).expect("stat")))
    });
    fs.unlink(stat_path).expect("unlink");
    group.finish();
}

/// One `pwrite` of each size at offset 0 of an open file (overwriting the same bytes).
fn write(c: &mut Criterion, fs: &BenchFS) {
    let mut group = group(c, "write", 20);
    for (name, size) in SIZES {
        let path = format!("/write-{name}");
        let fd = fs.create(&path, MODE).expect("create");
        let data = vec![0x5a_u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| assert_eq!(fs.pwrite(fd, &data, 0).expect("pwrite"), size))
        });
        fs.close(fd).expect("close");
        fs.unlink(&path).expect("unlink");
    }
    group.finish();
}

/// One `pread` of each size at offset 0 of a file written beforehand.
fn read(c: &mut Criterion, fs: &BenchFS) {
    let mut group = group(c, "read", 20);
    for (name, size) in SIZES {
        let path = format!("/read-{name}");
        let fd = fs.create(&path, MODE).expect("create");
        let data: Vec<u8> = (0..size).map(|i| i as u8).collect();
        assert_eq!(fs.pwrite(fd, &data, 0).expect("pwrite"), size);
        fs.close(fd).expect("close");
        let fd = fs.open(&path, OpenFlags::READ, 0).expect("open");
        let mut buf = vec![0_u8; size];
        // Checked once here, since a filtered or listing run never calls the closure.
        assert_eq!(fs.pread(fd, &mut buf, 0).expect("pread"), size);
        assert!(
            buf == data,
            "read {name}: the bytes differ from those written"
        );
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| assert_eq!(fs.pread(fd, &mut buf, 0).expect("pread"), size))
        });
        fs.close(fd).expect("close");
        fs.unlink(&path).expect("unlink");
    }
    group.finish();
}

/// Starts the cluster, runs every group against it, and stops it (the guard's drop).
fn file_ops(c: &mut Criterion) {
    let cluster = Cluster::up();
    let fs = cluster.connect();
    metadata(c, &fs);
    write(c, &fs);
    read(c, &fs);
    // The client goes before its servers.
    drop(fs);
    drop(cluster);
}

criterion_group!(benches, file_ops);
criterion_main!(benches);
