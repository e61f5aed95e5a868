//! The tiered store's own promises, beyond the conformance suite: data past the memory
//! tier reads back, evicted chunks come back right, `sync` puts every dirty chunk in its
//! file, and a store dropped without `sync` loses only the chunks it never wrote back. The memory tier holds four chunks (`common::MEMORY_TIER`). Skips where the kernel
//! has no io_uring.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use benchfs_store::TieredChunkStore;
use benchfs_store::{AnyChunkStore, Backend, ChunkId, ChunkStat, ChunkStore, StoreError};
use common::{buf_from, pattern, read, run, run_in, write, Harness, SmallDisk, CHUNK, MEMORY_TIER};

const SLOTS: usize = (MEMORY_TIER / CHUNK) as usize;

fn tiered(h: &Harness) -> &TieredChunkStore {
    match &*h.store {
        AnyChunkStore::Tiered(s) => s,
        other => panic!("not a tiered store: {other:?}"),
    }
}

/// The chunk's file under `data_dir`, if there is one.
fn chunk_file(data_dir: &Path, id: ChunkId) -> Option<Vec<u8>> {
    let path = data_dir
        .join("chunks")
        .join(format!("{:016x}", id.file_id))
        .join(format!("{:016x}", id.index));
    std::fs::read(path).ok()
}

#[test]
fn data_past_the_memory_tier_reads_back() {
    run(Backend::Tiered, false, None, |h| async move {
        let s = &*h.store;
        // Three tiers' worth of whole chunks, then a partial rewrite of each.
        let chunks = 3 * SLOTS as u64;
        for index in 0..chunks {
            write(
                s,
                ChunkId::new(1, index),
                0,
                &pattern(index, CHUNK as usize),
            )
            .await;
            assert!(tiered(&h).resident_chunks().0 <= SLOTS);
        }
        for index in 0..chunks {
            write(s, ChunkId::new(1, index), 100 * index, &pattern(99, 1000)).await;
        }
        for index in 0..chunks {
            let mut want = pattern(index, CHUNK as usize);
            let at = 100 * index as usize;
            want[at..at + 1000].copy_from_slice(&pattern(99, 1000));
            let id = ChunkId::new(1, index);
            assert!(read(s, id, 0, CHUNK as usize).await == want, "{id}");
        }
        assert_eq!(tiered(&h).resident_chunks(), (SLOTS, SLOTS));
        assert_eq!(s.usage().used_bytes, chunks * CHUNK);
    });
}

#[test]
fn an_evicted_chunk_reads_back_and_takes_partial_writes_and_cuts() {
    run(Backend::Tiered, false, None, |h| async move {
        let s = &*h.store;
        let a = ChunkId::new(2, 0);
        write(s, a, 5000, &pattern(1, 3000)).await;
        // Fill the tier with others: `a`, the least recently used, is written back.
        for index in 1..=SLOTS as u64 {
            write(s, ChunkId::new(2, index), 0, &pattern(index, 10)).await;
        }
        let mut want = [vec![0; 5000], pattern(1, 3000)].concat();
        let on_disk = chunk_file(&h.config.data_dir, a);
        assert!(on_disk.as_ref() == Some(&want), "evicted chunk in its file");
        assert_eq!(read(s, a, 0, CHUNK as usize).await, want, "read from disk");
        // A chunk on disk takes its writes there, whether the tier has a slot free or not.
        write(s, a, 7000, &pattern(2, 1000)).await;
        assert_eq!(tiered(&h).resident_chunks().0, SLOTS);
        assert!(s.remove(ChunkId::new(2, 1)).await.unwrap());
        write(s, a, 8000, &pattern(2, 2000)[1000..]).await;
        assert_eq!(tiered(&h).resident_chunks().0, SLOTS - 1);
        want.resize(9000, 0);
        want[7000..].copy_from_slice(&pattern(2, 2000));
        assert!(
            chunk_file(&h.config.data_dir, a).as_ref() == Some(&want),
            "on disk"
        );
        assert_eq!(read(s, a, 0, CHUNK as usize).await, want);
        assert_eq!(s.stat(a).await.unwrap(), Some(ChunkStat { len: 9000 }));
        // And shrinks, evicted again, to exactly its new length on disk.
        s.truncate(a, 6000).await.unwrap();
        for index in 1..=SLOTS as u64 {
            write(s, ChunkId::new(3, index), 0, &pattern(index, 10)).await;
        }
        let on_disk = chunk_file(&h.config.data_dir, a);
        assert!(on_disk.as_deref() == Some(&want[..6000]), "cut on disk too");
        assert_eq!(read(s, a, 0, CHUNK as usize).await, want[..6000]);
    });
}

#[test]
fn sync_puts_dirty_chunks_in_their_files() {
    run(Backend::Tiered, false, None, |h| async move {
        let s = &*h.store;
        let ids = [ChunkId::new(4, 0), ChunkId::new(4, 1), ChunkId::new(5, 9)];
        for (i, id) in ids.iter().enumerate() {
            write(s, *id, 10 * i as u64, &pattern(i as u64, 4000)).await;
        }
        s.truncate(ChunkId::new(6, 0), 0).await.unwrap();
        // Write-back: nothing the memory tier holds is on disk before a sync.
        for id in ids {
            assert_eq!(chunk_file(&h.config.data_dir, id), None, "{id} before sync");
        }
        s.sync().await.unwrap();
        for (i, id) in ids.iter().enumerate() {
            let want = [vec![0; 10 * i], pattern(i as u64, 4000)].concat();
            let got = chunk_file(&h.config.data_dir, *id);
            assert!(got == Some(want), "{id} after sync");
        }
        let empty = chunk_file(&h.config.data_dir, ChunkId::new(6, 0));
        assert_eq!(empty, Some(Vec::new()), "an empty chunk is a file too");
        // A removed chunk leaves no file behind.
        assert!(s.remove(ids[0]).await.unwrap());
        s.sync().await.unwrap();
        assert_eq!(chunk_file(&h.config.data_dir, ids[0]), None);
    });
}

/// A crash, as far as the store can tell, loses the chunks only memory had, and no change
/// to a chunk the disk had: such a chunk takes its changes on disk, so it never outlives a
/// crash older than an acknowledged write (helper-97: a replica killed with -9 served a
/// chunk as of its last write-back, with success, while the other held the newer bytes).
#[test]
fn a_store_dropped_without_sync_loses_only_the_chunks_never_written_back() {
    run(Backend::Tiered, false, None, |mut h| async move {
        let (a, b, c) = (ChunkId::new(7, 0), ChunkId::new(7, 1), ChunkId::new(7, 2));
        write(&*h.store, a, 0, &pattern(1, 6000)).await;
        write(&*h.store, c, 0, &pattern(4, CHUNK as usize)).await;
        h.store.sync().await.unwrap();
        // `a` in memory and clean: changed in place, then cut.
        write(&*h.store, a, 0, &pattern(2, 8000)).await;
        h.store.truncate(a, 7000).await.unwrap();
        // `c` evicted by the tier's worth of new chunks, then replaced whole.
        for index in 0..SLOTS as u64 {
            write(&*h.store, ChunkId::new(8, index), 0, &pattern(index, 10)).await;
        }
        assert_eq!(
            chunk_file(&h.config.data_dir, c),
            Some(pattern(4, CHUNK as usize))
        );
        write(&*h.store, c, 0, &pattern(5, CHUNK as usize)).await;
        // Only in memory, the most recently used.
        write(&*h.store, b, 0, &pattern(3, 100)).await;
        h.reopen();
        let s = &*h.store;
        assert_eq!(read(s, a, 0, CHUNK as usize).await, pattern(2, 7000));
        assert!(read(s, c, 0, CHUNK as usize).await == pattern(5, CHUNK as usize));
        assert_eq!(s.stat(b).await.unwrap(), None);
    });
}

/// A write-back makes a chunk file whole or not at all: what a killed process left of one
/// (the `.partial` file it was written to before its rename) is removed at the next open.
/// The chunks found at open are kept whole, until removed; one made since is not.
#[test]
fn write_backs_leave_whole_chunk_files_and_the_store_knows_the_chunks_it_kept() {
    run(Backend::Tiered, false, None, |mut h| async move {
        let (a, b) = (ChunkId::new(9, 0), ChunkId::new(9, 1));
        write(&*h.store, a, 0, &pattern(1, 5000)).await;
        h.store.sync().await.unwrap();
        assert!(!tiered(&h).kept_since_open(a), "made since open");
        let file_dir = h.config.data_dir.join("chunks").join(format!("{:016x}", 9));
        let names = |dir: &Path| -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(names(&file_dir), [format!("{:016x}", 0)], "no partial file");
        // A write-back a kill cut short.
        let partial = file_dir.join(format!("{:016x}.partial", 1));
        std::fs::write(&partial, pattern(2, 100)).unwrap();
        h.reopen();
        let s = &*h.store;
        assert_eq!(names(&file_dir), [format!("{:016x}", 0)], "partial removed");
        assert_eq!(s.list().await.unwrap(), [a]);
        assert!(tiered(&h).kept_since_open(a));
        assert!(!tiered(&h).kept_since_open(b));
        assert!(s.remove(a).await.unwrap());
        write(s, a, 0, &pattern(3, 10)).await;
        assert!(!tiered(&h).kept_since_open(a), "removed, then made again");
    });
}

/// Regression: with its disk full, a tiered store acknowledged writes into its memory
/// tier that no write-back could then put on disk, and a clean shutdown lost them ("final
/// store sync failed: no space"). Now a write the disk has no room for fails with ENOSPC,
/// and the room held for the rest is the kernel's to count, so another writer of the disk
/// finds it full before a write-back does.
#[test]
fn a_full_disk_refuses_writes_instead_of_losing_them_at_write_back() {
    let Some(disk) = SmallDisk::mount("2m") else {
        return;
    };
    let disk = &disk;
    run_in(&disk.dir, Backend::Tiered, false, None, |h| async move {
        let s = &*h.store;
        // Room for two and a half chunks, well within the memory tier's four.
        let room = 5 * CHUNK / 2;
        let filler = disk.dir.path().join("filler");
        std::fs::write(&filler, vec![7u8; (disk.free_bytes() - room) as usize]).unwrap();
        let ids: Vec<ChunkId> = (0..4).map(|i| ChunkId::new(8, i)).collect();
        for (i, id) in ids[..2].iter().enumerate() {
            write(s, *id, 0, &pattern(i as u64, CHUNK as usize)).await;
        }
        assert!(tiered(&h).disk_held_bytes() >= 2 * CHUNK);
        let buf = buf_from(s, &pattern(2, CHUNK as usize)).await;
        let (refused, _) = s.write(ids[2], 0, buf).await;
        assert!(
            matches!(refused, Err(StoreError::NoSpace { .. })),
            "a third chunk has no room on disk: {refused:?}"
        );
        // Another writer of the disk gets ENOSPC, not the room held for the write-backs.
        let other = std::fs::write(disk.dir.path().join("other"), vec![1u8; CHUNK as usize]);
        assert_eq!(
            other.map_err(|e| e.raw_os_error()),
            Err(Some(libc::ENOSPC)),
            "another writer found room held for write-backs"
        );
        s.sync()
            .await
            .expect("every acknowledged chunk has room on disk");
        assert_eq!(tiered(&h).disk_held_bytes(), 0, "nothing owed after a sync");
        for (i, id) in ids[..2].iter().enumerate() {
            let on_disk = chunk_file(&h.config.data_dir, *id);
            assert!(on_disk == Some(pattern(i as u64, CHUNK as usize)), "{id}");
        }
        // Overwriting what is on disk needs no more room, and room freed is used again.
        write(s, ids[0], 0, &pattern(9, CHUNK as usize)).await;
        std::fs::remove_file(&filler).unwrap();
        write(s, ids[3], 0, &pattern(3, CHUNK as usize)).await;
        s.sync().await.unwrap();
        assert!(chunk_file(&h.config.data_dir, ids[0]) == Some(pattern(9, CHUNK as usize)));
        assert!(chunk_file(&h.config.data_dir, ids[3]) == Some(pattern(3, CHUNK as usize)));
    });
}

/// Regression (CI): a write-back gave back the room held for its chunk and took it again
/// in the next system call, and a writer racing it (another process on the disk, or an
/// io_uring write of the store's own in the kernel's workers) took the room in between:
/// the write-back of an acknowledged chunk failed on a full disk. The room is now held in
/// the file the write-back writes, so no writer can take it first.
#[test]
fn a_writer_racing_for_the_last_room_never_takes_a_write_backs() {
    let Some(disk) = SmallDisk::mount("2m") else {
        return;
    };
    let disk = &disk;
    run_in(&disk.dir, Backend::Tiered, false, None, |h| async move {
        let s = &*h.store;
        let ids: Vec<ChunkId> = (0..SLOTS as u64).map(|i| ChunkId::new(9, i)).collect();
        for round in 0..20u64 {
            // Room for the chunks alone, so no more than their room is held for them.
            let filler = disk.dir.path().join("filler");
            let room = SLOTS as u64 * CHUNK;
            std::fs::write(&filler, vec![7u8; (disk.free_bytes() - room) as usize]).unwrap();
            for (i, id) in ids.iter().enumerate() {
                write(s, *id, 0, &pattern(round + i as u64, CHUNK as usize)).await;
            }
            // A writer takes every block the disk has left, and keeps trying.
            let stop = Arc::new(AtomicBool::new(false));
            let thief = {
                let (path, stop) = (disk.dir.path().join("thief"), Arc::clone(&stop));
                std::thread::spawn(move || take_every_free_block(&path, &stop))
            };
            while disk.free_bytes() > 0 {
                std::thread::yield_now();
            }
            let synced = s.sync().await;
            stop.store(true, Ordering::Relaxed);
            thief.join().unwrap();
            synced.unwrap_or_else(|e| panic!("round {round}: a write-back lost its room: {e}"));
            for (i, id) in ids.iter().enumerate() {
                let on_disk = chunk_file(&h.config.data_dir, *id);
                assert!(
                    on_disk == Some(pattern(round + i as u64, CHUNK as usize)),
                    "{id}"
                );
            }
            std::fs::remove_file(disk.dir.path().join("thief")).unwrap();
            std::fs::remove_file(&filler).unwrap();
            for id in &ids {
                s.remove(*id).await.unwrap();
            }
        }
    });
}

/// Appends to `path` until `stop`, whatever ENOSPC says.
fn take_every_free_block(path: &Path, stop: &AtomicBool) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let block = [5u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = file.write_all(&block) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
        }
    }
}

/// The room a chunk written in small appends holds ahead of its length is given back when
/// another chunk finds the disk full without it: a write the disk has room for is never
/// refused for room held and unused.
#[test]
fn room_held_ahead_is_given_back_to_a_write_the_disk_has_room_for() {
    let Some(disk) = SmallDisk::mount("2m") else {
        return;
    };
    let disk = &disk;
    run_in(&disk.dir, Backend::Tiered, false, None, |h| async move {
        let s = &*h.store;
        let (appended, other) = (ChunkId::new(10, 0), ChunkId::new(10, 1));
        let piece = 4096;
        let data = pattern(1, 9 * piece);
        for at in (0..data.len()).step_by(piece) {
            write(s, appended, at as u64, &data[at..at + piece]).await;
        }
        assert!(
            tiered(&h).disk_held_bytes() > data.len() as u64,
            "held ahead"
        );
        let filler = disk.dir.path().join("filler");
        std::fs::write(&filler, vec![7u8; disk.free_bytes() as usize]).unwrap();
        assert_eq!(disk.free_bytes(), 0);
        let small = pattern(2, 2 * piece);
        let buf = buf_from(s, &small).await;
        let (written, _) = s.write(other, 0, buf).await;
        written.expect("room held ahead for another chunk was given back");
        s.sync().await.unwrap();
        assert!(chunk_file(&h.config.data_dir, appended) == Some(data.clone()));
        assert!(chunk_file(&h.config.data_dir, other) == Some(small));
    });
}
