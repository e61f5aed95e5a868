//! One conformance suite, run against every backend: the memory, file, io_uring and
//! tiered stores must give the same answers. The io_uring and tiered cases skip (and say
//! so) where the kernel has no io_uring. The tiered store's memory tier holds four chunks
//! here, so most cases also move chunks between its tiers.

mod common;

use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Wake, Waker};

use benchfs_store::{AnyChunkStore, Backend, ChunkId, ChunkStat, ChunkStore, StoreError};
use common::{buf_from, pattern, read, run, write, Harness, CHUNK, QD};

const ID: ChunkId = ChunkId::new(1, 0);

async fn write_read_offsets(h: Harness) {
    let s = &*h.store;
    write(s, ID, 0, &pattern(1, 1000)).await;
    write(s, ID, 1000, &pattern(2, 5000)).await;
    write(s, ID, 500, &pattern(3, 10)).await;
    let mut expected = pattern(1, 1000);
    expected.extend(pattern(2, 5000));
    expected[500..510].copy_from_slice(&pattern(3, 10));
    assert_eq!(read(s, ID, 0, 6000).await, expected);
    assert_eq!(read(s, ID, 777, 2000).await, expected[777..2777]);
    // Whole chunk, at the last byte.
    let full = pattern(4, CHUNK as usize);
    write(s, ChunkId::new(1, 1), 0, &full).await;
    assert_eq!(read(s, ChunkId::new(1, 1), 0, CHUNK as usize).await, full);
    assert_eq!(
        read(s, ChunkId::new(1, 1), CHUNK - 1, 1).await,
        [full[CHUNK as usize - 1]]
    );
    assert_eq!(s.stat(ID).await.unwrap(), Some(ChunkStat { len: 6000 }));
}

async fn holes_read_zero(h: Harness) {
    let s = &*h.store;
    write(s, ID, 10_000, &pattern(5, 100)).await;
    let got = read(s, ID, 0, 10_100).await;
    assert_eq!(got.len(), 10_100);
    assert!(got[..10_000].iter().all(|&b| b == 0));
    assert_eq!(got[10_000..], pattern(5, 100));
}

async fn read_past_end_and_missing(h: Harness) {
    let s = &*h.store;
    assert_eq!(read(s, ChunkId::new(9, 9), 0, 4096).await, []);
    assert_eq!(read(s, ChunkId::new(9, 9), 100, 10).await, []);
    assert_eq!(s.stat(ChunkId::new(9, 9)).await.unwrap(), None);
    write(s, ID, 0, &pattern(6, 3000)).await;
    assert_eq!(read(s, ID, 2000, 4096).await, pattern(6, 3000)[2000..]);
    assert_eq!(read(s, ID, 3000, 10).await, []);
    assert_eq!(read(s, ID, 50_000, 10).await, []);
    let empty = s.buffer(0).await.unwrap();
    let (n, _) = s.read(ID, 0, empty).await;
    assert_eq!(n.unwrap(), 0);
    let (r, _) = s
        .write(ChunkId::new(9, 9), 5, s.buffer(0).await.unwrap())
        .await;
    r.unwrap();
    assert_eq!(
        s.stat(ChunkId::new(9, 9)).await.unwrap(),
        None,
        "empty write creates nothing"
    );
}

async fn truncate_shrink_grow(h: Harness) {
    let s = &*h.store;
    write(s, ID, 0, &pattern(7, 8000)).await;
    s.truncate(ID, 3000).await.unwrap();
    assert_eq!(s.stat(ID).await.unwrap(), Some(ChunkStat { len: 3000 }));
    assert_eq!(read(s, ID, 0, 8000).await, pattern(7, 8000)[..3000]);
    s.truncate(ID, 9000).await.unwrap();
    let got = read(s, ID, 0, 9000).await;
    assert_eq!(got[..3000], pattern(7, 8000)[..3000]);
    assert!(got[3000..].iter().all(|&b| b == 0), "grown bytes are zero");
    s.truncate(ID, 0).await.unwrap();
    assert_eq!(read(s, ID, 0, 10).await, []);
    // A missing chunk is created.
    s.truncate(ChunkId::new(2, 0), 100).await.unwrap();
    assert_eq!(
        s.stat(ChunkId::new(2, 0)).await.unwrap(),
        Some(ChunkStat { len: 100 })
    );
    assert_eq!(read(s, ChunkId::new(2, 0), 0, 200).await, [0; 100]);
    assert!(matches!(
        s.truncate(ID, CHUNK + 1).await,
        Err(StoreError::OutOfRange { .. })
    ));
    s.truncate(ID, CHUNK).await.unwrap();
    assert_eq!(s.usage().used_bytes, CHUNK + 100);
}

async fn remove_and_remove_file(h: Harness) {
    let s = &*h.store;
    for index in 0..5 {
        write(s, ChunkId::new(3, index), 0, &pattern(index, 100)).await;
    }
    write(s, ChunkId::new(4, 0), 0, b"other").await;
    assert!(s.remove(ChunkId::new(3, 2)).await.unwrap());
    assert!(!s.remove(ChunkId::new(3, 2)).await.unwrap());
    assert_eq!(read(s, ChunkId::new(3, 2), 0, 100).await, []);
    assert_eq!(s.remove_file(3).await.unwrap(), 4);
    assert_eq!(s.remove_file(3).await.unwrap(), 0);
    assert_eq!(s.remove_file(77).await.unwrap(), 0);
    assert_eq!(s.list().await.unwrap(), [ChunkId::new(4, 0)]);
    assert_eq!(read(s, ChunkId::new(4, 0), 0, 5).await, b"other");
    let usage = s.usage();
    assert_eq!((usage.used_bytes, usage.chunks), (5, 1));
    // Writing after removal starts from scratch.
    write(s, ChunkId::new(3, 0), 10, b"x").await;
    assert_eq!(read(s, ChunkId::new(3, 0), 0, 100).await.len(), 11);
}

async fn list_and_stat(h: Harness) {
    let s = &*h.store;
    assert_eq!(s.list().await.unwrap(), []);
    let ids = [
        ChunkId::new(5, 1),
        ChunkId::new(0, 0),
        ChunkId::new(5, 0),
        ChunkId::new(u64::MAX, u64::MAX),
    ];
    for (i, id) in ids.iter().enumerate() {
        write(s, *id, 0, &pattern(i as u64, i + 1)).await;
    }
    let mut sorted = ids.to_vec();
    sorted.sort();
    assert_eq!(s.list().await.unwrap(), sorted);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            s.stat(*id).await.unwrap(),
            Some(ChunkStat { len: i as u64 + 1 })
        );
    }
    assert_eq!(s.usage().chunks, 4);
    assert_eq!(s.usage().used_bytes, 1 + 2 + 3 + 4);
    let of_5 = [(0, ChunkStat { len: 3 }), (1, ChunkStat { len: 1 })];
    assert_eq!(s.file_chunks(5).await.unwrap(), of_5);
    let of_max = [(u64::MAX, ChunkStat { len: 4 })];
    assert_eq!(s.file_chunks(u64::MAX).await.unwrap(), of_max);
    assert_eq!(s.file_chunks(4).await.unwrap(), []);
}

async fn out_of_range(h: Harness) {
    let s = &*h.store;
    let buf = s.buffer(10).await.unwrap();
    let (r, buf) = s.write(ID, CHUNK - 9, buf).await;
    assert!(
        matches!(r, Err(StoreError::OutOfRange { offset, len: 10, chunk_size: CHUNK }) if offset == CHUNK - 9)
    );
    let (r, buf) = s.write(ID, u64::MAX, buf).await;
    assert!(matches!(r, Err(StoreError::OutOfRange { .. })));
    let (r, _) = s.read(ID, CHUNK, buf).await;
    assert_eq!(r.unwrap_err().errno(), libc::EINVAL);
    assert!(matches!(
        s.buffer(CHUNK as usize + 1).await,
        Err(StoreError::OutOfRange { .. })
    ));
    assert_eq!(s.list().await.unwrap(), [], "failed writes create nothing");
}

async fn buffer_sizes(h: Harness) {
    let s = &*h.store;
    let sizes = [1, 7, 511, 4095, 4096, 4097, 65_535, CHUNK as usize];
    for (i, &len) in sizes.iter().enumerate() {
        let id = ChunkId::new(6, i as u64);
        let buf = s.buffer(len).await.unwrap();
        assert_eq!(buf.len(), len);
        assert!(buf.capacity() >= len && buf.capacity() % 4096 == 0);
        let data = pattern(i as u64, len);
        write(s, id, CHUNK - len as u64, &data).await;
        assert_eq!(read(s, id, CHUNK - len as u64, len).await, data);
    }
}

async fn many_concurrent(h: Harness) {
    let ops = 16 * QD as u64;
    let mut tasks = Vec::new();
    for i in 0..ops {
        let store = Rc::clone(&h.store);
        tasks.push(tokio::task::spawn_local(async move {
            let len = [4096, 1, 65_536, 5000][i as usize % 4];
            let id = ChunkId::new(7, i % 5);
            let offset = if len == 65_536 {
                0
            } else {
                (i / 5) * 4096 % (CHUNK - 8192)
            };
            let id = if len == 65_536 {
                ChunkId::new(8, i)
            } else {
                id
            };
            let data = pattern(i, len);
            write(&*store, ChunkId::new(9, i), 0, &data).await;
            write(&*store, id, offset, &data[..len.min(4096)]).await;
            assert_eq!(read(&*store, ChunkId::new(9, i), 0, len).await, data);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        h.store.list().await.unwrap().len() as u64,
        ops + 5 + ops / 4
    );
}

struct Noop;

impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

fn noop_waker() -> Waker {
    Waker::from(Arc::new(Noop))
}

/// Polls a write once (submitting it) and drops it; the store must keep working and not
/// lose or corrupt anything else.
async fn dropped_futures(h: Harness) {
    let s = &*h.store;
    write(s, ID, 0, &pattern(8, 8192)).await;
    for i in 0..3 * QD as u64 {
        let buf = buf_from(s, &pattern(i, 4096)).await;
        let mut write = pin!(s.write(ChunkId::new(10, i), 0, buf));
        let _ = write.as_mut().poll(&mut Context::from_waker(&noop_waker()));
        let buf = s.buffer(4096).await.unwrap();
        let mut read = pin!(s.read(ID, 0, buf));
        let _ = read.as_mut().poll(&mut Context::from_waker(&noop_waker()));
    }
    assert_eq!(read(s, ID, 0, 8192).await, pattern(8, 8192));
    write(s, ID, 4096, &pattern(9, 4096)).await;
    assert_eq!(read(s, ID, 4096, 4096).await, pattern(9, 4096));
}

async fn unaligned(h: Harness) {
    let s = &*h.store;
    let cases: [(u64, usize); 6] = [
        (0, 4096),
        (1, 4096),
        (4095, 2),
        (8192, 12_288),
        (100, 9000),
        (61_440, 4096),
    ];
    let mut model = vec![0u8; CHUNK as usize];
    let mut end = 0;
    for (i, &(offset, len)) in cases.iter().enumerate() {
        let data = pattern(i as u64 + 20, len);
        write(s, ID, offset, &data).await;
        model[offset as usize..offset as usize + len].copy_from_slice(&data);
        end = end.max(offset as usize + len);
        for &(o, l) in &cases {
            let want = &model[(o as usize).min(end)..(o as usize + l).min(end)];
            assert_eq!(
                read(s, ID, o, l).await,
                want,
                "read {o}+{l} after write {offset}+{len}"
            );
        }
    }
    s.truncate(ID, 5000).await.unwrap();
    assert_eq!(read(s, ID, 4096, 4096).await, model[4096..5000]);
}

async fn reopen(mut h: Harness) {
    if h.config.backend == Backend::Memory {
        return;
    }
    let ids = [
        ChunkId::new(11, 0),
        ChunkId::new(11, 3),
        ChunkId::new(u64::MAX, 0),
    ];
    for (i, id) in ids.iter().enumerate() {
        write(&*h.store, *id, 100 * i as u64, &pattern(i as u64, 5000)).await;
    }
    h.store.truncate(ChunkId::new(12, 0), 7).await.unwrap();
    h.store.sync().await.unwrap();
    let usage = h.store.usage();
    h.reopen();
    let s = &*h.store;
    let mut all = ids.to_vec();
    all.push(ChunkId::new(12, 0));
    all.sort();
    assert_eq!(s.list().await.unwrap(), all);
    assert_eq!(s.usage(), usage);
    for (i, id) in ids.iter().enumerate() {
        let want = [vec![0; 100 * i], pattern(i as u64, 5000)].concat();
        assert_eq!(read(s, *id, 0, 20_000).await, want);
    }
}

async fn capacity(h: Harness) {
    let s = &*h.store;
    write(s, ID, 0, &pattern(1, 6000)).await;
    let before = s.usage();
    assert_eq!(before.capacity_bytes, Some(10_000));
    let buf = buf_from(s, &pattern(2, 5000)).await;
    let (r, buf) = s.write(ChunkId::new(1, 1), 0, buf).await;
    assert!(
        matches!(
            r,
            Err(StoreError::NoSpace {
                needed: 5000,
                available: 4000
            })
        ),
        "{r:?}"
    );
    assert_eq!(r.unwrap_err().errno(), libc::ENOSPC);
    let (r, _) = s.write(ID, 5001, buf).await;
    assert!(
        matches!(r, Err(StoreError::NoSpace { needed: 4001, .. })),
        "{r:?}"
    );
    assert!(matches!(
        s.truncate(ID, 20_000).await,
        Err(StoreError::NoSpace { .. })
    ));
    assert!(matches!(
        s.truncate(ChunkId::new(2, 0), 4001).await,
        Err(StoreError::NoSpace { .. })
    ));
    assert_eq!(s.usage(), before, "nothing changed");
    assert_eq!(s.list().await.unwrap(), [ID]);
    assert_eq!(read(s, ID, 0, 10_000).await, pattern(1, 6000));
    // Overwriting in place needs no room; filling up exactly is fine.
    write(s, ID, 0, &pattern(3, 6000)).await;
    write(s, ChunkId::new(1, 1), 0, &pattern(4, 4000)).await;
    assert_eq!(s.usage().used_bytes, 10_000);
    s.remove(ID).await.unwrap();
    write(s, ChunkId::new(1, 2), 0, &pattern(5, 6000)).await;
}

async fn names_stay_inside(mut h: Harness) {
    if h.config.backend == Backend::Memory {
        return;
    }
    let edge = [
        ChunkId::new(u64::MAX, u64::MAX),
        ChunkId::new(0, u64::MAX),
        ChunkId::new(1 << 63, 0),
    ];
    for id in edge {
        write(&*h.store, id, 0, b"edge").await;
    }
    // The tiered store writes its memory tier to disk on sync.
    h.store.sync().await.unwrap();
    let chunks = h.config.data_dir.join("chunks");
    let mut outside: Vec<_> = std::fs::read_dir(&h.config.data_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    outside.sort();
    // The tiered store marks the directory as one whose crash loses its memory tier.
    let expected: &[&str] = match h.config.backend {
        Backend::Tiered => &["chunks", benchfs_store::TIERED_MARK_FILE],
        _ => &["chunks"],
    };
    assert_eq!(outside, expected, "nothing else is written beside chunks/");
    assert!(chunks.join("ffffffffffffffff/ffffffffffffffff").is_file());
    // Stray names in the layout are skipped at open, never parsed as chunks.
    std::fs::create_dir(chunks.join("not-a-file-id")).unwrap();
    std::fs::create_dir(chunks.join("FFFFFFFFFFFFFFFF")).unwrap();
    std::fs::write(
        chunks.join("0000000000000001"),
        b"a file where a dir belongs",
    )
    .unwrap();
    std::fs::write(chunks.join("ffffffffffffffff/junk"), b"x").unwrap();
    std::fs::write(chunks.join("ffffffffffffffff/000000000000000"), b"x").unwrap();
    std::fs::create_dir(chunks.join("ffffffffffffffff/0000000000000005")).unwrap();
    std::os::unix::fs::symlink("/etc", chunks.join("0000000000000002")).unwrap();
    h.reopen();
    let mut sorted = edge.to_vec();
    sorted.sort();
    assert_eq!(h.store.list().await.unwrap(), sorted);
    assert_eq!(read(&*h.store, ChunkId::new(1, 0), 0, 10).await, []);
    assert_eq!(h.store.remove_file(u64::MAX).await.unwrap(), 1);
    assert!(
        chunks.join("ffffffffffffffff/junk").is_file(),
        "strays are left alone"
    );
}

async fn a_vanished_chunk_fails_rather_than_read_as_a_hole(h: Harness) {
    if h.config.backend == Backend::Memory {
        return;
    }
    let s = &*h.store;
    // More chunks than the store keeps open (and the tiered store in memory), so the
    // first one's file is opened again to read it.
    let chunks = benchfs_store::limits::FD_CACHE_MAX as u64 + 8;
    for index in 0..chunks {
        write(s, ChunkId::new(1, index), 0, &pattern(index, 100)).await;
    }
    s.sync().await.unwrap();
    let chunk_file = |index: u64| {
        h.config
            .data_dir
            .join(format!("chunks/{:016x}/{index:016x}", 1))
    };
    for index in [0, 1] {
        std::fs::remove_file(chunk_file(index)).unwrap();
    }
    let (lost, _) = s.read(ID, 0, s.buffer(100).await.unwrap()).await;
    assert!(
        matches!(lost, Err(StoreError::Vanished { chunk }) if chunk == ID),
        "{lost:?}"
    );
    // A write that would make the chunk anew over its lost bytes fails too.
    let second = ChunkId::new(1, 1);
    let (wrote, _) = s.write(second, 200, buf_from(s, b"new").await).await;
    assert!(
        matches!(wrote, Err(StoreError::Vanished { .. })),
        "{wrote:?}"
    );
    assert_eq!(read(s, ChunkId::new(1, 2), 0, 100).await, pattern(2, 100));
    // Until it is removed: then it is a new chunk.
    s.remove(ID).await.unwrap();
    write(s, ID, 10, b"new").await;
    assert_eq!(read(s, ID, 0, 100).await, [&[0; 10][..], b"new"].concat());
    s.sync().await.unwrap();
}

/// Everything the stores share, run both with and without O_DIRECT for the disk stores.
macro_rules! cases {
    ($backend:expr, $o_direct:expr, [$($case:ident),* $(,)?]) => {
        $(
            #[test]
            fn $case() {
                run($backend, $o_direct, None, super::$case);
            }
        )*
        #[test]
        fn capacity() {
            run($backend, $o_direct, Some(10_000), super::capacity);
        }
    };
}

macro_rules! backend {
    ($module:ident, $backend:expr, $o_direct:expr) => {
        mod $module {
            use super::*;
            cases!(
                $backend,
                $o_direct,
                [
                    write_read_offsets,
                    holes_read_zero,
                    read_past_end_and_missing,
                    truncate_shrink_grow,
                    remove_and_remove_file,
                    list_and_stat,
                    out_of_range,
                    buffer_sizes,
                    many_concurrent,
                    dropped_futures,
                    unaligned,
                    reopen,
                    names_stay_inside,
                    a_vanished_chunk_fails_rather_than_read_as_a_hole,
                ]
            );
        }
    };
}

backend!(memory, Backend::Memory, false);
backend!(file, Backend::File, false);
backend!(file_direct, Backend::File, true);
backend!(iouring, Backend::IoUring, false);
backend!(iouring_direct, Backend::IoUring, true);
backend!(tiered, Backend::Tiered, false);
backend!(tiered_direct, Backend::Tiered, true);

#[test]
fn iouring_pool_buffers_are_registered() {
    run(Backend::IoUring, true, None, |h: Harness| async move {
        let AnyChunkStore::IoUring(s) = &*h.store else {
            unreachable!()
        };
        let (addr, len) = s.registered_region().unwrap();
        let buf = s.buffer(4096).await.unwrap();
        assert!(buf.is_registered());
        let p = buf.as_ptr() as usize;
        assert!(p >= addr as usize && p + buf.capacity() <= addr as usize + len);
        assert_eq!(h.store.registered_region(), Some((addr, len)));
        // Holding every pool slot must not block `buffer`: it falls back to the heap.
        let mut held = Vec::new();
        for _ in 0..600 {
            held.push(s.buffer(4096).await.unwrap());
        }
        assert!(!held.last().unwrap().is_registered());
        drop(held);
        write(s, ID, 0, &pattern(1, 4096)).await;
        assert_eq!(read(s, ID, 0, 4096).await, pattern(1, 4096));
    });
}

#[test]
fn config_errors() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = common::test_dir();
        for backend in Backend::ALL {
            let mut config = benchfs_store::StoreConfig::new(backend, dir.path());
            config.chunk_size = 100;
            let e = AnyChunkStore::open(&config).unwrap_err();
            assert!(
                matches!(
                    e,
                    StoreError::InvalidConfig {
                        field: "chunk_size",
                        ..
                    }
                ),
                "{e}"
            );
            config.chunk_size = CHUNK;
            config.queue_depth = 0;
            assert!(AnyChunkStore::open(&config).is_err());
        }
    });
}
