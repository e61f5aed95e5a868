//! `benchfs bench`: the standard whole-system benchmark. Sequential write and read with
//! large transfers, 4 KiB random-read latency and metadata latency through the client API,
//! each beside the same workload on a local directory (std::fs) in the same run.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::cluster::{self, Target, UpArgs};
use super::CliError;
use benchfs::blocking::{BenchFS, OpenFlags};

/// Arguments of `benchfs bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Use the running cluster in this directory instead of starting one.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Servers of the cluster the benchmark starts.
    #[arg(long, default_value_t = 4)]
    pub servers: usize,
    /// Backend of the cluster the benchmark starts.
    #[arg(long, default_value = "memory")]
    pub backend: String,
    /// MiB written and read sequentially.
    #[arg(long, default_value_t = 512)]
    pub size_mb: u64,
    /// Bytes per sequential transfer.
    #[arg(long, default_value_t = 1 << 20)]
    pub transfer: usize,
    /// Random 4 KiB reads timed.
    #[arg(long, default_value_t = 5000)]
    pub reads: usize,
    /// Files created, stat'ed and removed for the metadata latencies.
    #[arg(long, default_value_t = 2000)]
    pub files: usize,
    /// Local directory for the std::fs baseline (a real disk, not tmpfs).
    #[arg(long, default_value = "/var/tmp/benchfs-bench-local")]
    pub local_dir: PathBuf,
}

/// Percentiles of a latency sample, in microseconds.
struct Latency {
    p50: f64,
    p99: f64,
    mean: f64,
}

fn latency(mut nanos: Vec<u64>) -> Latency {
    nanos.sort_unstable();
    let at = |q: f64| nanos[((nanos.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    Latency {
        p50: at(0.5),
        p99: at(0.99),
        mean: nanos.iter().sum::<u64>() as f64 / nanos.len() as f64 / 1000.0,
    }
}

fn timed(mut op: impl FnMut() -> Result<(), CliError>) -> Result<u64, CliError> {
    let start = Instant::now();
    op()?;
    Ok(start.elapsed().as_nanos() as u64)
}

fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
}

/// A cheap, deterministic sequence for random offsets.
fn next_random(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Runs the benchmark and prints the report.
pub fn run(args: Args) -> Result<(), CliError> {
    if args.transfer == 0 || args.size_mb == 0 || args.reads == 0 || args.files == 0 {
        return Err("sizes and counts must be positive".into());
    }
    let (target, started) = match &args.dir {
        Some(dir) => (Target { dir: dir.clone() }, false),
        None => {
            let dir = std::env::temp_dir().join(format!("benchfs-bench-{}", std::process::id()));
            let up = UpArgs {
                servers: args.servers,
                backend: args.backend.clone(),
                chunk_size: None,
                replicas: 1,
                rpc_timeout_ms: None,
                rdma_threshold: None,
                busy_poll_us: None,
                target: Target { dir: dir.clone() },
            };
            cluster::run(cluster::ClusterCommand::Up(up))?;
            (Target { dir }, true)
        }
    };
    let result = measure(&args, &target);
    if started {
        cluster::run(cluster::ClusterCommand::Down(target.clone()))?;
        let _ = std::fs::remove_dir_all(&target.dir);
    }
    result
}

fn measure(args: &Args, target: &Target) -> Result<(), CliError> {
    let mut config = target.config()?;
    // Every operation goes to the servers: the latencies are of the file system, not of
    // the client's caches.
    config.cache.metadata_cache_entries = 0;
    config.cache.chunk_cache_mb = 0;
    let fs = BenchFS::connect(&config)?;
    let servers = fs.client().servers().len();
    std::fs::create_dir_all(&args.local_dir)?;
    let local = args.local_dir.join("seq");

    println!("# benchfs bench");
    println!(
        "servers={servers} backend={} chunk_size={} rendezvous_threshold={} transfer={} size={} MiB",
        config.storage.backend,
        config.storage.chunk_size_bytes,
        config.network.rendezvous_threshold_bytes,
        args.transfer,
        args.size_mb
    );
    let _ = fs.mkdir("/bench", 0o755);
    sequential(&fs, args, &local)?;
    random_reads(&fs, args, &local)?;
    metadata(&fs, args)?;
    fs.unlink("/bench/seq")?;
    let _ = std::fs::remove_dir_all(&args.local_dir);
    Ok(())
}

/// Sequential write then read of `/bench/seq` and of `local`, close included in both.
fn sequential(fs: &BenchFS, args: &Args, local: &Path) -> Result<(), CliError> {
    let total = args.size_mb << 20;
    let block = vec![0xa5u8; args.transfer];
    let chunks = || {
        (0..total)
            .step_by(args.transfer)
            .map(move |at| (total - at).min(args.transfer as u64) as usize)
    };
    let start = Instant::now();
    let fd = fs.create("/bench/seq", 0o644)?;
    for n in chunks() {
        fs.write(fd, &block[..n])?;
    }
    fs.close(fd)?;
    let bfs_write = mb_per_s(total, start.elapsed());
    let start = Instant::now();
    let mut file = std::fs::File::create(local)?;
    for n in chunks() {
        file.write_all(&block[..n])?;
    }
    drop(file);
    let local_write = mb_per_s(total, start.elapsed());

    let mut buf = vec![0u8; args.transfer];
    let start = Instant::now();
    let fd = fs.open("/bench/seq", OpenFlags::READ, 0)?;
    let mut read = 0u64;
    loop {
        let n = fs.read(fd, &mut buf)?;
        if n == 0 {
            break;
        }
        read += n as u64;
    }
    fs.close(fd)?;
    if read != total {
        return Err(format!("read back {read} bytes of {total}").into());
    }
    let bfs_read = mb_per_s(total, start.elapsed());
    let start = Instant::now();
    let mut file = std::fs::File::open(local)?;
    let mut read = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        read += n as u64;
    }
    let local_read = mb_per_s(read, start.elapsed());

    println!(
        "{:<26} {:>12} {:>12} {:>8}",
        "workload", "benchfs", "local", "ratio"
    );
    for (name, bfs, loc) in [
        ("seq write MB/s", bfs_write, local_write),
        ("seq read MB/s", bfs_read, local_read),
    ] {
        println!("{name:<26} {bfs:>12.1} {loc:>12.1} {:>8.2}", bfs / loc);
    }
    Ok(())
}

/// 4 KiB random reads over the first 64 MiB of the file (or the whole file).
fn random_reads(fs: &BenchFS, args: &Args, local: &Path) -> Result<(), CliError> {
    let span = (args.size_mb << 20).min(64 << 20) / 4096;
    let mut x = 0x2545_f491_4f6c_dd1d;
    let mut small = [0u8; 4096];
    let fd = fs.open("/bench/seq", OpenFlags::READ, 0)?;
    let mut bfs = Vec::with_capacity(args.reads);
    for _ in 0..args.reads {
        let off = next_random(&mut x) % span * 4096;
        bfs.push(timed(|| {
            fs.pread(fd, &mut small, off).map(drop).map_err(Into::into)
        })?);
    }
    fs.close(fd)?;
    let mut file = std::fs::File::open(local)?;
    let mut loc = Vec::with_capacity(args.reads);
    for _ in 0..args.reads {
        let off = next_random(&mut x) % span * 4096;
        loc.push(timed(|| {
            file.seek(SeekFrom::Start(off))?;
            file.read_exact(&mut small)?;
            Ok(())
        })?);
    }
    print_latency("4 KiB random read", latency(bfs), latency(loc));
    Ok(())
}

/// Metadata latencies: create (open with CREATE, then close), stat, unlink.
fn metadata(fs: &BenchFS, args: &Args) -> Result<(), CliError> {
    let _ = fs.mkdir("/bench/md", 0o755);
    let md_local = args.local_dir.join("md");
    std::fs::create_dir_all(&md_local)?;
    let names: Vec<String> = (0..args.files).map(|i| format!("f{i}")).collect();
    let phase = |bfs_op: &dyn Fn(&str) -> Result<(), CliError>,
                 local_op: &dyn Fn(&Path) -> Result<(), CliError>|
     -> Result<(Vec<u64>, Vec<u64>), CliError> {
        let mut times = (Vec::new(), Vec::new());
        for name in &names {
            let path = format!("/bench/md/{name}");
            times.0.push(timed(|| bfs_op(&path))?);
            times.1.push(timed(|| local_op(&md_local.join(name)))?);
        }
        Ok(times)
    };
    let creates = phase(
        &|path| {
            let fd = fs.open(path, OpenFlags::CREATE | OpenFlags::WRITE, 0o644)?;
            fs.close(fd).map_err(Into::into)
        },
        &|path| std::fs::File::create(path).map(drop).map_err(Into::into),
    )?;
    let stats = phase(
        &|path| fs.stat(path).map(drop).map_err(Into::into),
        &|path| std::fs::metadata(path).map(drop).map_err(Into::into),
    )?;
    let unlinks = phase(&|path| fs.unlink(path).map_err(Into::into), &|path| {
        std::fs::remove_file(path).map_err(Into::into)
    })?;
    print_latency("create+close", latency(creates.0), latency(creates.1));
    print_latency("stat", latency(stats.0), latency(stats.1));
    print_latency("unlink", latency(unlinks.0), latency(unlinks.1));
    Ok(())
}

fn print_latency(name: &str, bfs: Latency, local: Latency) {
    println!(
        "{:<26} p50 {:>8.1} us  p99 {:>8.1} us  mean {:>8.1} us   (local p50 {:.1} us, p99 {:.1} us)",
        name, bfs.p50, bfs.p99, bfs.mean, local.p50, local.p99
    );
}
