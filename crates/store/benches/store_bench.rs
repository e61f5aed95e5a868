//! Throughput of each chunk store: 4 KiB random writes and reads (IOPS) and 1 MiB and
//! 4 MiB sequential writes and reads (MB/s), at a fixed queue depth over a file set.
//!
//! A plain `main` (no criterion): each workload runs for a fixed time and prints one line
//! `store_bench backend=.. direct=.. workload=.. bs=.. qd=.. secs=.. ops=.. iops=.. mbps=..`
//! (the tiered backend adds `tier_mib=..`, its memory tier, once per `--tiers` fraction of
//! the file set). Arguments (or env `BENCH_*`): `--dir` (default `target/store-bench`),
//! `--size-mib` (256), `--qd` (32), `--secs` (3), `--backends` (`memory,file,iouring`),
//! `--direct` (`off,on`), `--tiers` (`1,0.5`: a tier that holds the whole set, and one
//! that holds half of it). `scripts/fio-compare.sh` runs it beside fio.
//!
//! With the memory backend in the list it first measures page faults on the memory
//! store's write path, the seed's store beside today's, in the same process: minor faults
//! (getrusage, this thread) and time to write the set, remove it and write it again
//! (`store_bench faults impl=.. round=cold|steady minflt=.. secs=.. mbps=..`).

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use benchfs_store::StoreError;
use benchfs_store::{AnyChunkStore, Backend, ChunkBuf, ChunkId, ChunkStore, StoreConfig};

/// The chunk size a server uses by default.
const CHUNK_SIZE: u64 = benchfs_store::limits::CHUNK_SIZE_DEFAULT;
const FILE_ID: u64 = 1;

struct Args {
    dir: PathBuf,
    size_mib: u64,
    qd: u32,
    secs: f64,
    backends: Vec<Backend>,
    direct: Vec<bool>,
    tiers: Vec<f64>,
}

fn parse_args() -> Args {
    let mut args = Args {
        dir: PathBuf::from(env_or("BENCH_DIR", "target/store-bench")),
        size_mib: env_or("BENCH_SIZE_MIB", "256").parse().expect("size-mib"),
        qd: env_or("BENCH_QD", "32").parse().expect("qd"),
        secs: env_or("BENCH_SECS", "3").parse().expect("secs"),
        backends: parse_list(&env_or("BENCH_BACKENDS", "memory,file,iouring"), |s| {
            s.parse().expect("backend")
        }),
        direct: parse_list(&env_or("BENCH_DIRECT", "off,on"), parse_on_off),
        tiers: parse_list(&env_or("BENCH_TIERS", "1,0.5"), |s| {
            s.parse().expect("tiers")
        }),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // cargo bench passes `--bench`; ignore it and anything unknown.
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => args.dir = PathBuf::from(value()),
            "--size-mib" => args.size_mib = value().parse().expect("size-mib"),
            "--qd" => args.qd = value().parse().expect("qd"),
            "--secs" => args.secs = value().parse().expect("secs"),
            "--backends" => args.backends = parse_list(&value(), |s| s.parse().expect("backend")),
            "--direct" => args.direct = parse_list(&value(), parse_on_off),
            "--tiers" => args.tiers = parse_list(&value(), |s| s.parse().expect("tiers")),
            _ => {}
        }
    }
    assert!(
        args.size_mib * 1024 * 1024 >= CHUNK_SIZE,
        "size-mib must be at least 4"
    );
    args
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

fn parse_list<T>(s: &str, f: impl Fn(&str) -> T) -> Vec<T> {
    s.split(',').filter(|s| !s.is_empty()).map(f).collect()
}

fn parse_on_off(s: &str) -> bool {
    match s {
        "on" | "1" | "true" => true,
        "off" | "0" | "false" => false,
        _ => panic!("direct must be on or off, not {s:?}"),
    }
}

#[derive(Clone, Copy)]
struct Workload {
    name: &'static str,
    bs: usize,
    write: bool,
    random: bool,
}

/// In the order fio-compare.sh runs them: big sequential writes first lay the set out.
const WORKLOADS: [Workload; 6] = [
    Workload {
        name: "seqwrite4m",
        bs: 4 << 20,
        write: true,
        random: false,
    },
    Workload {
        name: "seqread4m",
        bs: 4 << 20,
        write: false,
        random: false,
    },
    Workload {
        name: "seqwrite1m",
        bs: 1 << 20,
        write: true,
        random: false,
    },
    Workload {
        name: "seqread1m",
        bs: 1 << 20,
        write: false,
        random: false,
    },
    Workload {
        name: "randwrite4k",
        bs: 4096,
        write: true,
        random: true,
    },
    Workload {
        name: "randread4k",
        bs: 4096,
        write: false,
        random: true,
    },
];

fn main() {
    let args = parse_args();
    println!(
        "# store_bench cpus={} kernel={} commit={} size_mib={} qd={} secs={} chunk_size={}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        command_output("uname", &["-r"]),
        command_output("git", &["rev-parse", "--short", "HEAD"]),
        args.size_mib,
        args.qd,
        args.secs,
        CHUNK_SIZE,
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        if args.backends.contains(&Backend::Memory) {
            faults::compare(args.size_mib * 1024 * 1024).await;
        }
        for &backend in &args.backends {
            for &direct in &args.direct {
                if backend == Backend::Memory && direct {
                    continue;
                }
                if backend != Backend::Tiered {
                    run_backend(&args, backend, direct, None).await;
                    continue;
                }
                for &fraction in &args.tiers {
                    run_backend(&args, backend, direct, Some(fraction)).await;
                }
            }
        }
    });
}

fn command_output(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// Runs every workload on `backend`; `tier` is the tiered store's memory tier as a
/// fraction of the file set.
async fn run_backend(args: &Args, backend: Backend, direct: bool, tier: Option<f64>) {
    let dir = args
        .dir
        .join(format!("{backend}-direct{}", u8::from(direct)));
    let _ = std::fs::remove_dir_all(&dir);
    let size = args.size_mib * 1024 * 1024;
    // Whole chunks, at least one.
    let tier_bytes = tier.map_or(benchfs_store::limits::MEMORY_TIER_BYTES_DEFAULT, |f| {
        ((size as f64 * f) as u64 / CHUNK_SIZE).max(1) * CHUNK_SIZE
    });
    let tier_field = match tier {
        Some(_) => format!(" tier_mib={}", tier_bytes >> 20),
        None => String::new(),
    };
    let config = StoreConfig {
        backend,
        data_dir: dir.clone(),
        chunk_size: CHUNK_SIZE,
        o_direct: direct,
        capacity_bytes: (backend == Backend::Memory).then_some(size),
        queue_depth: args.qd,
        memory_tier_bytes: tier_bytes,
        prefault_bytes: 0,
        huge_pages: false,
    };
    let store = match AnyChunkStore::open(&config) {
        Ok(store) => Rc::new(store),
        Err(e @ StoreError::Unsupported { .. }) => {
            println!(
                "# skipped backend={backend}{tier_field} direct={}: {e}",
                u8::from(direct)
            );
            return;
        }
        Err(e) => panic!("open {backend}: {e}"),
    };
    // Lay the set out first, untimed, as fio does.
    let mut buf = store.buffer(CHUNK_SIZE as usize).await.expect("buffer");
    buf.as_mut_slice().fill(0x5a);
    for index in 0..size / CHUNK_SIZE {
        let (result, back) = store.write(ChunkId::new(FILE_ID, index), 0, buf).await;
        result.expect("layout write");
        buf = next_buffer(&*store, back, CHUNK_SIZE as usize, |b| b.fill(0x5a)).await;
    }
    drop(buf);
    store.sync().await.expect("sync");
    for workload in WORKLOADS {
        let (ops, elapsed) = run_workload(&store, workload, size, args.qd, args.secs).await;
        let secs = elapsed.as_secs_f64();
        println!(
            "store_bench backend={backend}{tier_field} direct={} workload={} bs={} qd={} secs={secs:.2} ops={ops} iops={:.0} mbps={:.1}",
            u8::from(direct),
            workload.name,
            workload.bs,
            args.qd,
            ops as f64 / secs,
            ops as f64 * workload.bs as f64 / secs / 1e6,
        );
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `qd` workers until the deadline; returns the ops completed and the time taken.
async fn run_workload(
    store: &Rc<AnyChunkStore>,
    workload: Workload,
    size: u64,
    qd: u32,
    secs: f64,
) -> (u64, Duration) {
    let blocks = size / workload.bs as u64;
    let cursor = Rc::new(Cell::new(0u64));
    let ops = Rc::new(Cell::new(0u64));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut workers = Vec::new();
    for worker in 0..qd {
        let (store, cursor, ops) = (Rc::clone(store), Rc::clone(&cursor), Rc::clone(&ops));
        workers.push(tokio::task::spawn_local(async move {
            let mut rng = 0x9e37_79b9_7f4a_7c15u64
                ^ (u64::from(worker) + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
            let mut buf = store.buffer(workload.bs).await.expect("buffer");
            buf.as_mut_slice().fill(0xa5);
            while Instant::now() < deadline {
                let block = if workload.random {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng % blocks
                } else {
                    let block = cursor.get();
                    cursor.set((block + 1) % blocks);
                    block
                };
                let byte = block * workload.bs as u64;
                let id = ChunkId::new(FILE_ID, byte / CHUNK_SIZE);
                let offset = byte % CHUNK_SIZE;
                if workload.write {
                    let (result, back) = store.write(id, offset, buf).await;
                    result.expect("write");
                    buf = next_buffer(&*store, back, workload.bs, |b| b.fill(0xa5)).await;
                } else {
                    let (result, back) = store.read(id, offset, buf).await;
                    assert_eq!(result.expect("read"), workload.bs, "the set is laid out");
                    buf = back;
                }
                ops.set(ops.get() + 1);
            }
        }));
    }
    for worker in workers {
        worker.await.expect("worker");
    }
    (ops.get(), start.elapsed())
}

/// Page faults on the memory store's write path: the seed's store (a `Vec` per chunk,
/// grown and zero-filled per write, freed on removal) beside today's (pages from a pool
/// of pre-faulted, recycled memory), over the same writes in one process.
mod faults {
    use std::collections::BTreeMap;
    use std::time::Instant;

    use benchfs_store::{ChunkId, ChunkStore, InMemoryChunkStore};

    use super::{next_buffer, CHUNK_SIZE};

    /// Bytes per write: the 1 MiB of the sequential workloads.
    const BS: usize = 1 << 20;

    /// Minor page faults this thread has taken.
    fn minor_faults() -> i64 {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: `usage` is a writable `rusage`, which is all getrusage writes.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
        assert_eq!(rc, 0, "getrusage: {}", std::io::Error::last_os_error());
        // SAFETY: getrusage succeeded and filled the struct, which started zeroed.
        unsafe { usage.assume_init() }.ru_minflt
    }

    /// The seed's memory store's write, as it was: the chunk grown with
    /// `try_reserve_exact` and `resize`, then the bytes copied in.
    fn seed_write(
        chunks: &mut BTreeMap<ChunkId, Vec<u8>>,
        id: ChunkId,
        offset: usize,
        data: &[u8],
    ) {
        let chunk = chunks.entry(id).or_default();
        let end = offset + data.len();
        if end > chunk.len() {
            chunk.try_reserve_exact(end - chunk.len()).expect("memory");
            chunk.resize(end, 0);
        }
        chunk[offset..end].copy_from_slice(data);
    }

    fn report(implementation: &str, round: &str, bytes: u64, faults: i64, start: Instant) {
        let secs = start.elapsed().as_secs_f64();
        println!(
            "store_bench faults impl={implementation} round={round} bytes={bytes} minflt={faults} faults_per_mib={:.1} secs={secs:.3} mbps={:.1}",
            faults as f64 / (bytes >> 20) as f64,
            bytes as f64 / secs / 1e6,
        );
    }

    /// Writes `size` bytes twice (cold: fresh memory; steady: after removing the first
    /// set) through each implementation, and prints the faults and time of each round.
    pub async fn compare(size: u64) {
        let data = vec![0x5au8; BS];
        let ids = |size: u64| {
            (0..size / CHUNK_SIZE).flat_map(|index| {
                (0..CHUNK_SIZE as usize / BS).map(move |piece| (ChunkId::new(1, index), piece * BS))
            })
        };
        let mut seed = BTreeMap::new();
        for round in ["cold", "steady"] {
            let (start, before) = (Instant::now(), minor_faults());
            for (id, offset) in ids(size) {
                seed_write(&mut seed, id, offset, &data);
            }
            report("seed-vec", round, size, minor_faults() - before, start);
            seed.clear();
        }
        let store = InMemoryChunkStore::with_chunk_size(CHUNK_SIZE, u64::MAX).expect("store");
        let mut buf = store.buffer(BS).await.expect("buffer");
        buf.as_mut_slice().copy_from_slice(&data);
        for round in ["cold", "steady"] {
            let (start, before) = (Instant::now(), minor_faults());
            for (id, offset) in ids(size) {
                let (result, back) = store.write(id, offset as u64, buf).await;
                result.expect("write");
                buf = next_buffer(&store, back, BS, |b| b.copy_from_slice(&data)).await;
            }
            report("page-pool", round, size, minor_faults() - before, start);
            store.remove_file(1).await.expect("remove");
        }
    }
}

/// The buffer a write gave back, or a fresh one of `len` bytes filled by `fill` when the
/// store took the buffer's memory as the chunk's (the memory store does with its own page
/// buffers, as a server's writes are): each write then pays for a buffer, as a server's.
async fn next_buffer<S: ChunkStore>(
    store: &S,
    back: ChunkBuf,
    len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> ChunkBuf {
    if back.len() == len {
        return back;
    }
    let mut buf = store.buffer(len).await.expect("buffer");
    fill(buf.as_mut_slice());
    buf
}
