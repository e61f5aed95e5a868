//! `benchfs bench`: the standard whole-system benchmark. Sequential write and read with
//! large transfers, 4 KiB random-read latency and metadata latency through the client API,
//! each beside the same workload on a local directory (std::fs) in the same run. The run
//! works in directories of its own, a new one under --local-dir and one under `/` in
//! BenchFS, and removes those and nothing else.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::cluster::{self, Target, UpArgs};
use super::{local_error, CliError};
use benchfs::blocking::{BenchFS, OpenFlags};
use benchfs::proto::Status;

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
    /// Local directory for the std::fs baseline (a real disk, not tmpfs). The run works
    /// in a new subdirectory of it and removes only that.
    #[arg(long, default_value = "/var/tmp/benchfs-bench-local")]
    pub local_dir: PathBuf,
    /// File holding the job secret of --dir's cluster (default: the file
    /// $BENCHFS_SECRET_FILE names); a cluster the benchmark starts gets it too.
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
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
    match &args.dir {
        Some(dir) => measure(
            &args,
            &Target {
                dir: dir.clone(),
                secret_file: args.secret_file.clone(),
                registry: None,
            },
        ),
        None => with_own_cluster(&args),
    }
}

/// Starts a cluster in a fresh directory of its own, measures, stops it and removes the
/// directory.
fn with_own_cluster(args: &Args) -> Result<(), CliError> {
    let dir = fresh_local_dir(&std::env::temp_dir(), "benchfs-bench-cluster")?;
    let target = Target {
        dir: dir.clone(),
        secret_file: args.secret_file.clone(),
        registry: None,
    };
    let up = UpArgs::new(target.clone(), args.servers, &args.backend);
    let result =
        cluster::run(cluster::ClusterCommand::Up(up)).and_then(|()| measure(args, &target));
    let down = cluster::run(cluster::ClusterCommand::Down(target));
    // Made by this run, with nothing but this run's cluster in it.
    let _ = std::fs::remove_dir_all(&dir);
    result.and(down)
}

/// Creates a directory under `parent` that did not exist before, named after `prefix`.
fn fresh_local_dir(parent: &Path, prefix: &str) -> Result<PathBuf, CliError> {
    for attempt in 0..NAME_ATTEMPTS {
        let dir = parent.join(format!("{prefix}-{}-{attempt}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(local_error("cannot create", &dir, e)),
        }
    }
    Err(format!(
        "cannot create a directory in {}: {NAME_ATTEMPTS} names are taken",
        parent.display()
    )
    .into())
}

/// Creates a BenchFS directory under `/` that did not exist before, named after `prefix`.
fn fresh_remote_dir(fs: &BenchFS, prefix: &str) -> Result<String, CliError> {
    for attempt in 0..NAME_ATTEMPTS {
        let dir = format!("/{prefix}-{}-{attempt}", std::process::id());
        match fs.mkdir(&dir, 0o755) {
            Ok(()) => return Ok(dir),
            Err(e) if e.status() == Some(Status::Exists) => continue,
            Err(e) => return Err(format!("cannot create the benchmark's directory: {e}").into()),
        }
    }
    Err(
        format!("cannot create a BenchFS directory under /: {NAME_ATTEMPTS} names are taken")
            .into(),
    )
}

/// Fresh names tried before giving up (they are taken only by concurrent runs).
const NAME_ATTEMPTS: u32 = 100;

/// Where one run works: a directory of its own in BenchFS and one under --local-dir, each
/// with `seq` (the sequential file) and `md/` (the metadata files). The run removes these
/// and nothing else.
struct Workspace {
    /// The BenchFS directory.
    remote: String,
    /// The local directory.
    local: PathBuf,
    /// The highest ancestor of `local` (--local-dir or above) that this run created.
    created_above: Option<PathBuf>,
}

impl Workspace {
    /// Creates both directories and their `md/` subdirectories.
    fn create(fs: &BenchFS, local_dir: &Path) -> Result<Workspace, CliError> {
        let created_above = local_dir
            .ancestors()
            .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
            .last()
            .map(Path::to_path_buf);
        std::fs::create_dir_all(local_dir)
            .map_err(|e| local_error("cannot create", local_dir, e))?;
        let mut ws = Workspace {
            remote: String::new(),
            local: PathBuf::new(),
            created_above,
        };
        let made = fresh_local_dir(local_dir, "benchfs-bench").and_then(|local| {
            ws.local = local;
            let md = ws.md_local(None);
            std::fs::create_dir(&md).map_err(|e| local_error("cannot create", &md, e))?;
            ws.remote = fresh_remote_dir(fs, "benchfs-bench")?;
            fs.mkdir(&ws.md_remote(None), 0o755)?;
            Ok(())
        });
        match made {
            Ok(()) => Ok(ws),
            Err(e) => {
                let _ = ws.remove(fs, 0);
                Err(e)
            }
        }
    }

    /// The BenchFS sequential file.
    fn seq_remote(&self) -> String {
        format!("{}/seq", self.remote)
    }

    /// The local sequential file.
    fn seq_local(&self) -> PathBuf {
        self.local.join("seq")
    }

    /// The BenchFS metadata directory, or the file `name` in it.
    fn md_remote(&self, name: Option<&str>) -> String {
        match name {
            Some(name) => format!("{}/md/{name}", self.remote),
            None => format!("{}/md", self.remote),
        }
    }

    /// The local metadata directory, or the file `name` in it.
    fn md_local(&self, name: Option<&str>) -> PathBuf {
        let md = self.local.join("md");
        match name {
            Some(name) => md.join(name),
            None => md,
        }
    }

    /// Removes what the run created, ignoring what is already gone: `seq`, the metadata
    /// files (`f0` .. `f<files - 1>`), `md/`, the directories themselves, and --local-dir
    /// (and its ancestors) if this run created it and it is empty now.
    fn remove(&self, fs: &BenchFS, files: usize) -> Result<(), CliError> {
        let remote = if self.remote.is_empty() {
            Ok(())
        } else {
            let _ = fs.unlink(&self.seq_remote());
            for name in fs.readdir(&self.md_remote(None)).unwrap_or_default() {
                if is_metadata_file(&name.name, files) {
                    let _ = fs.unlink(&self.md_remote(Some(&name.name)));
                }
            }
            let _ = fs.rmdir(&self.md_remote(None));
            fs.rmdir(&self.remote)
                .map_err(|e| format!("cannot remove the benchmark's directory: {e}").into())
        };
        let local = self.remove_local(files);
        remote.and(local)
    }

    /// The local half of [`Workspace::remove`].
    fn remove_local(&self, files: usize) -> Result<(), CliError> {
        if self.local.as_os_str().is_empty() {
            return Ok(());
        }
        let _ = std::fs::remove_file(self.seq_local());
        for entry in std::fs::read_dir(self.md_local(None))
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| is_metadata_file(n, files))
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let _ = std::fs::remove_dir(self.md_local(None));
        std::fs::remove_dir(&self.local)
            .map_err(|e| local_error("cannot remove", &self.local, e))?;
        if let Some(top) = &self.created_above {
            for dir in self.local.ancestors().skip(1) {
                if std::fs::remove_dir(dir).is_err() || dir == top {
                    break;
                }
            }
        }
        Ok(())
    }
}

/// Whether `name` is one of the metadata phase's `files` file names.
fn is_metadata_file(name: &str, files: usize) -> bool {
    name.strip_prefix('f')
        .and_then(|i| i.parse::<usize>().ok())
        .is_some_and(|i| i < files && format!("f{i}") == name)
}

/// Runs every workload against the cluster of `target` in a fresh workspace, then removes
/// the workspace (also when a workload failed).
fn measure(args: &Args, target: &Target) -> Result<(), CliError> {
    let mut config = target.config()?;
    // Every operation goes to the servers: the latencies are of the file system, not of
    // the client's caches.
    config.cache.metadata_cache_entries = 0;
    config.cache.chunk_cache_mb = 0;
    let fs = target.connect_with(&config)?;
    let servers = fs.client().servers().len();

    println!("# benchfs bench");
    println!(
        "servers={servers} backend={} chunk_size={} rendezvous_threshold={} transfer={} size={} MiB",
        config.storage.backend,
        config.storage.chunk_size_bytes,
        config.network.rendezvous_threshold_bytes,
        args.transfer,
        args.size_mb
    );
    let ws = Workspace::create(&fs, &args.local_dir)?;
    let result = sequential(&fs, args, &ws)
        .and_then(|()| random_reads(&fs, args, &ws))
        .and_then(|()| metadata(&fs, args, &ws));
    let removed = ws.remove(&fs, args.files);
    result.and(removed)
}

/// The sizes of the sequential transfers: `transfer` bytes each, the last perhaps less.
fn transfers(args: &Args) -> impl Iterator<Item = usize> + '_ {
    let total = args.size_mb << 20;
    (0..total)
        .step_by(args.transfer)
        .map(move |at| (total - at).min(args.transfer as u64) as usize)
}

/// Sequential write then read of the BenchFS file, close included; MB/s of each.
fn sequential_benchfs(fs: &BenchFS, args: &Args, path: &str) -> Result<(f64, f64), CliError> {
    let total = args.size_mb << 20;
    let block = vec![0xa5u8; args.transfer];
    let start = Instant::now();
    let fd = fs.create(path, 0o644)?;
    for n in transfers(args) {
        fs.write(fd, &block[..n])?;
    }
    fs.close(fd)?;
    let write = mb_per_s(total, start.elapsed());
    let mut buf = vec![0u8; args.transfer];
    let start = Instant::now();
    let fd = fs.open(path, OpenFlags::READ, 0)?;
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
        return Err(format!("read back {read} bytes of {total} from {path}").into());
    }
    Ok((write, mb_per_s(total, start.elapsed())))
}

/// Sequential write then read of the local file, close included; MB/s of each.
fn sequential_local(args: &Args, path: &Path) -> Result<(f64, f64), CliError> {
    let total = args.size_mb << 20;
    let block = vec![0xa5u8; args.transfer];
    let start = Instant::now();
    let mut file = File::create(path).map_err(|e| local_error("cannot create", path, e))?;
    for n in transfers(args) {
        file.write_all(&block[..n])
            .map_err(|e| local_error("cannot write", path, e))?;
    }
    drop(file);
    let write = mb_per_s(total, start.elapsed());
    let mut buf = vec![0u8; args.transfer];
    let start = Instant::now();
    let mut file = File::open(path).map_err(|e| local_error("cannot open", path, e))?;
    let mut read = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| local_error("cannot read", path, e))?;
        if n == 0 {
            break;
        }
        read += n as u64;
    }
    Ok((write, mb_per_s(read, start.elapsed())))
}

/// Sequential write then read in BenchFS and locally, side by side.
fn sequential(fs: &BenchFS, args: &Args, ws: &Workspace) -> Result<(), CliError> {
    let (bfs_write, bfs_read) = sequential_benchfs(fs, args, &ws.seq_remote())?;
    let (local_write, local_read) = sequential_local(args, &ws.seq_local())?;
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
fn random_reads(fs: &BenchFS, args: &Args, ws: &Workspace) -> Result<(), CliError> {
    let span = (args.size_mb << 20).min(64 << 20) / 4096;
    let mut x = 0x2545_f491_4f6c_dd1d;
    let mut small = [0u8; 4096];
    let fd = fs.open(&ws.seq_remote(), OpenFlags::READ, 0)?;
    let mut bfs = Vec::with_capacity(args.reads);
    for _ in 0..args.reads {
        let off = next_random(&mut x) % span * 4096;
        bfs.push(timed(|| {
            fs.pread(fd, &mut small, off).map(drop).map_err(Into::into)
        })?);
    }
    fs.close(fd)?;
    let local = ws.seq_local();
    let mut file = File::open(&local).map_err(|e| local_error("cannot open", &local, e))?;
    let mut loc = Vec::with_capacity(args.reads);
    for _ in 0..args.reads {
        let off = next_random(&mut x) % span * 4096;
        loc.push(timed(|| {
            file.seek(SeekFrom::Start(off))
                .and_then(|_| file.read_exact(&mut small))
                .map_err(|e| local_error("cannot read", &local, e))
        })?);
    }
    print_latency("4 KiB random read", latency(bfs), latency(loc));
    Ok(())
}

/// Metadata latencies: create (open with CREATE, then close), stat, unlink.
fn metadata(fs: &BenchFS, args: &Args, ws: &Workspace) -> Result<(), CliError> {
    let names: Vec<String> = (0..args.files).map(|i| format!("f{i}")).collect();
    let phase = |bfs_op: &dyn Fn(&str) -> Result<(), CliError>,
                 local_op: &dyn Fn(&Path) -> Result<(), CliError>|
     -> Result<(Vec<u64>, Vec<u64>), CliError> {
        let mut times = (Vec::new(), Vec::new());
        for name in &names {
            let path = ws.md_remote(Some(name));
            times.0.push(timed(|| bfs_op(&path))?);
            let local = ws.md_local(Some(name));
            times.1.push(timed(|| local_op(&local))?);
        }
        Ok(times)
    };
    let creates = phase(
        &|path| {
            let fd = fs.open(path, OpenFlags::CREATE | OpenFlags::WRITE, 0o644)?;
            fs.close(fd).map_err(Into::into)
        },
        &|path| {
            File::create(path)
                .map(drop)
                .map_err(|e| local_error("cannot create", path, e))
        },
    )?;
    let stats = phase(
        &|path| fs.stat(path).map(drop).map_err(Into::into),
        &|path| {
            std::fs::metadata(path)
                .map(drop)
                .map_err(|e| local_error("cannot stat", path, e))
        },
    )?;
    let unlinks = phase(&|path| fs.unlink(path).map_err(Into::into), &|path| {
        std::fs::remove_file(path).map_err(|e| local_error("cannot remove", path, e))
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
