//! Throughput of each chunk store: 4 KiB random writes and reads (IOPS) and 1 MiB and
//! 4 MiB sequential writes and reads (MB/s), at a fixed queue depth over a file set.
//!
//! A plain `main` (no criterion): each workload runs for a fixed time and prints one line
//! `store_bench backend=.. direct=.. workload=.. bs=.. qd=.. secs=.. ops=.. iops=.. mbps=..`.
//! Arguments (or env `BENCH_*`): `--dir` (default `target/store-bench`), `--size-mib`
//! (256), `--qd` (32), `--secs` (3), `--backends` (`memory,file,iouring`), `--direct`
//! (`off,on`). `scripts/fio-compare.sh` runs it beside fio.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use benchfs_store::{AnyChunkStore, Backend, ChunkId, ChunkStore, StoreConfig, StoreError};

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
        for &backend in &args.backends {
            for &direct in &args.direct {
                if backend == Backend::Memory && direct {
                    continue;
                }
                run_backend(&args, backend, direct).await;
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

async fn run_backend(args: &Args, backend: Backend, direct: bool) {
    let dir = args
        .dir
        .join(format!("{backend}-direct{}", u8::from(direct)));
    let _ = std::fs::remove_dir_all(&dir);
    let size = args.size_mib * 1024 * 1024;
    let config = StoreConfig {
        backend,
        data_dir: dir.clone(),
        chunk_size: CHUNK_SIZE,
        o_direct: direct,
        capacity_bytes: (backend == Backend::Memory).then_some(size),
        queue_depth: args.qd,
        memory_tier_bytes: benchfs_store::limits::MEMORY_TIER_BYTES_DEFAULT,
    };
    let store = match AnyChunkStore::open(&config) {
        Ok(store) => Rc::new(store),
        Err(e @ StoreError::Unsupported { .. }) => {
            println!(
                "# skipped backend={backend} direct={}: {e}",
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
        buf = back;
    }
    drop(buf);
    store.sync().await.expect("sync");
    for workload in WORKLOADS {
        let (ops, elapsed) = run_workload(&store, workload, size, args.qd, args.secs).await;
        let secs = elapsed.as_secs_f64();
        println!(
            "store_bench backend={backend} direct={} workload={} bs={} qd={} secs={secs:.2} ops={ops} iops={:.0} mbps={:.1}",
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
                    buf = back;
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
