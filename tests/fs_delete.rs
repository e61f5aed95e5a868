//! Deletes leak nothing: every chunk a file ever had is freed, also when a server did not
//! get the removal (stopped past the RPC timeout) and its orphan sweep has to finish it.

mod common;

use std::time::{Duration, Instant};

use benchfs::blocking::{BenchFS, OpenFlags};
use benchfs::placement::PlacementKey;
use benchfs_proto::{ops, Status};
use common::files::{errno_of, stats, try_read_file, write_file};
use common::rpc::{call_one, delete_record, insert_record, records};
use common::{pattern, Cluster, ClusterSpec};

/// A disk-backed cluster with a short RPC timeout, so a stopped server fails calls fast.
fn cluster() -> Cluster {
    Cluster::start(ClusterSpec {
        backend: "file",
        ..ClusterSpec::short_timeout()
    })
}

/// [`cluster`] with two copies of every record and chunk.
fn replicated_cluster() -> Cluster {
    Cluster::start(ClusterSpec {
        backend: "file",
        replicas: 2,
        ..ClusterSpec::short_timeout()
    })
}

/// Index of each server in `stats` order, by node id ("node<i>").
fn server_index(node_id: &str) -> usize {
    node_id.trim_start_matches("node").parse().unwrap()
}

/// Bytes and chunks every server holds, by server index.
fn usage(fs: &BenchFS) -> Vec<(u64, u64)> {
    let mut out = vec![(0, 0); 4];
    for (entry, s) in fs.block_on(fs.client().server_stats()) {
        let s = s.unwrap();
        out[server_index(&entry.node_id)] = (s.used_bytes, s.chunks);
    }
    out
}

/// Open descriptors of server `i` on files under its data directory's chunks.
fn open_chunk_fds(cluster: &Cluster, i: usize) -> usize {
    let pid = cluster.children[i].as_ref().unwrap().id();
    let chunks = cluster.data_dir(i).join("chunks");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.starts_with(&chunks))
        .count()
}

/// Waits (bounded) until no server holds a byte or a chunk file open.
fn wait_all_freed(cluster: &Cluster, fs: &BenchFS, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held = usage(fs);
        let fds: Vec<usize> = (0..4).map(|i| open_chunk_fds(cluster, i)).collect();
        if held
            .iter()
            .all(|&(bytes, chunks)| bytes == 0 && chunks == 0)
            && fds == [0; 4]
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still held (bytes, chunks) per server {held:?}, chunk fds {fds:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A server other than the path's metadata owner that holds chunks of the file.
fn chunk_holder_other_than_owner(fs: &BenchFS, path: &str) -> usize {
    let owner = server_index(&fs.client().metadata_owner(path).unwrap());
    usage(fs)
        .iter()
        .enumerate()
        .find(|(i, (_, chunks))| *i != owner && *chunks > 0)
        .map(|(i, _)| i)
        .expect("a 1 MiB file of 64 KiB chunks spreads over several servers")
}

#[test]
fn unlink_frees_chunks_past_the_published_size() {
    // Regression: chunks were found from the published size, so a writer that never
    // closed (killed, or out of space midway) left every chunk behind after rm.
    let cluster = cluster();
    let writer = cluster.client();
    let fd = writer.create("/open", 0o644).unwrap();
    writer.write(fd, &pattern(1 << 20, 3)).unwrap();
    let remover = cluster.client();
    assert_eq!(
        remover.stat("/open").unwrap().size,
        0,
        "nothing published yet"
    );
    assert!(usage(&remover).iter().any(|&(bytes, _)| bytes > 0));
    remover.unlink("/open").unwrap();
    wait_all_freed(&cluster, &remover, "after rm of an unclosed file");
    drop(writer);
}

#[test]
fn a_chunk_server_stopped_during_rm_frees_its_chunks() {
    // Regression: with a chunk server stopped past the RPC timeout, rm failed, the record
    // was gone, and that server kept the chunks and their descriptors forever.
    let cluster = cluster();
    let fs = cluster.client();
    write_file(&fs, "/f", &pattern(1 << 20, 1));
    let stopped = chunk_holder_other_than_owner(&fs, "/f");
    cluster.signal(stopped, "STOP");
    let removed = fs.unlink("/f");
    cluster.signal(stopped, "CONT");
    removed.expect("the record is gone, so the file is deleted; its chunks follow");
    assert!(fs.stat("/f").is_err(), "the file is gone at once");
    // Freed by the removal arriving late or by the sweep, whichever comes first.
    wait_all_freed(&cluster, &fs, "after the server resumed");
}

#[test]
fn the_sweep_frees_chunks_whose_removal_never_arrived() {
    // The removal is lost for good: the server is stopped during rm, then killed, and
    // comes back on its data; only its orphan sweep can free the chunks.
    let mut cluster = cluster();
    let fs = cluster.client();
    write_file(&fs, "/f", &pattern(1 << 20, 1));
    let stopped = chunk_holder_other_than_owner(&fs, "/f");
    cluster.signal(stopped, "STOP");
    fs.unlink("/f").expect("the record is gone");
    cluster.kill(stopped);
    cluster.restart(stopped);
    assert!(
        usage(&fs)[stopped].1 > 0,
        "the restarted server still holds the chunks"
    );
    wait_all_freed(&cluster, &fs, "after the sweep");
    let swept: u64 = stats(&fs).iter().map(|s| s.orphan_chunks_removed).sum();
    assert!(swept > 0, "the restarted server's sweep removed the chunks");
}

#[test]
fn a_metadata_owner_stopped_during_rm_leaves_the_whole_file_or_nothing() {
    let cluster = cluster();
    let fs = cluster.client();
    let data = pattern(1 << 20, 2);
    write_file(&fs, "/g", &data);
    let owner = server_index(&fs.client().metadata_owner("/g").unwrap());
    cluster.signal(owner, "STOP");
    let removed = fs.unlink("/g");
    cluster.signal(owner, "CONT");
    assert!(removed.is_err(), "the owner did not answer");
    // Either the record survived, with every byte, and a second rm finishes the job, or
    // the owner deleted it after all and the sweep frees the chunks.
    let reader = cluster.client();
    match reader.open("/g", OpenFlags::READ, 0) {
        Ok(fd) => {
            let mut buf = vec![0u8; data.len()];
            assert_eq!(reader.read(fd, &mut buf).unwrap(), data.len());
            assert!(buf == data, "a file that survived a failed rm is whole");
            reader.close(fd).unwrap();
            reader.unlink("/g").unwrap();
        }
        Err(e) => assert_eq!(e.errno(), libc::ENOENT, "{e}"),
    }
    wait_all_freed(&cluster, &reader, "after the second rm or the sweep");
}

#[test]
fn the_sweep_keeps_renamed_and_live_files() {
    // A rename moves a record without a tombstone, and a file replaced by a rename is
    // deleted: sweeps on every server (every second) must keep the first and free the
    // second.
    let cluster = cluster();
    let fs = cluster.client();
    let keep = pattern(700_000, 4);
    write_file(&fs, "/a", &keep);
    write_file(&fs, "/b", &pattern(300_000, 5));
    for i in 0..20 {
        let (from, to) = if i % 2 == 0 {
            ("/a", "/c")
        } else {
            ("/c", "/a")
        };
        fs.rename(from, to).unwrap();
    }
    fs.rename("/a", "/b").unwrap();
    // Three sweep rounds on every server.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        common::files::read_file(&fs, "/b") == keep,
        "the renamed file is whole"
    );
    let held: u64 = usage(&fs).iter().map(|&(bytes, _)| bytes).sum();
    assert_eq!(
        held,
        keep.len() as u64,
        "only the live file's bytes are held"
    );
}

#[test]
fn renames_onto_one_name_at_once_leak_no_chunks() {
    // Found by a hostile run: two clients renamed their files onto one name at once. A
    // rename stores its record at the new name, then moves the old name out with no
    // tombstone (the file lives on). Where the second rename's record displaced the first's
    // on a server that still held the first file's old name, no tombstone was left either,
    // and then nothing named the first file and nothing ever freed its chunks.
    let cluster = cluster();
    let fs = cluster.client();
    let owner = |path: &str| server_index(&fs.client().metadata_owner(path).unwrap());
    let sources: Vec<String> = (0..)
        .map(|i| format!("/src{i}"))
        .filter(|path| owner(path) == owner("/t"))
        .take(2)
        .collect();
    write_file(&fs, &sources[0], &pattern(300_000, 1));
    write_file(&fs, &sources[1], &pattern(200_000, 2));
    let first = records(&cluster, &sources[0])[0].expect("a record of the first file");
    let second = records(&cluster, &sources[1])[0].expect("a record of the second file");
    let server = cluster.addr(owner("/t"));
    insert_record(&[server], "/t", first);
    insert_record(&[server], "/t", second);
    delete_record(server, &sources[0], true);
    delete_record(server, &sources[1], true);
    assert!(common::files::read_file(&fs, "/t") == pattern(200_000, 2));
    fs.unlink("/t").unwrap();
    wait_all_freed(&cluster, &fs, "after the unlink and the sweep");
}

#[test]
fn a_record_put_back_after_the_sweep_freed_its_chunks_is_refused() {
    // Regression (soak seed 99): the sweep asked the servers one at a time whether any
    // still named a deleted file, and the undo of an unlink that had timed out on a
    // stopped server put the record back on a server already asked. The chunks went, the
    // record stayed, and the file read as zeros. Now every server seals the file before
    // its chunks go, and a sealed file takes no record again.
    let cluster = replicated_cluster();
    let fs = cluster.client();
    write_file(&fs, "/f", &pattern(1 << 20, 9));
    let record = records(&cluster, "/f")[0].expect("the owner holds /f");
    // An unlink that removed the records and then stopped (its client killed).
    let replicas = cluster.replicas_of(PlacementKey::Metadata("/f"));
    for &i in &replicas {
        delete_record(cluster.addr(i), "/f", false);
    }
    wait_all_freed(&cluster, &fs, "after the sweep");
    // The late undo.
    let undo = ops::InsertRequest {
        path: "/f".into(),
        meta: record,
        exclusive: false,
        settled_only: false,
        newer_only: false,
        data: Vec::new(),
    };
    for &i in &replicas {
        let put_back = call_one::<ops::MetadataInsert>(cluster.addr(i), &undo);
        assert_eq!(
            put_back.map_err(|e| e.status()),
            Err(Status::Stale),
            "server {i} took back a record of a file whose chunks are gone"
        );
    }
    assert_eq!(errno_of(try_read_file(&fs, "/f")), libc::ENOENT);
}

#[test]
fn a_file_another_name_still_holds_keeps_its_chunks_and_can_move() {
    // A rename that failed half way leaves two names of one file. Unlinking one seals the
    // file on the servers that do not name it, tentatively: those seals must be lifted,
    // or the other name could never move to those servers.
    let cluster = replicated_cluster();
    let fs = cluster.client();
    let data = pattern(300_000, 3);
    write_file(&fs, "/a", &data);
    let record = records(&cluster, "/a")[0].expect("the owner holds /a");
    let holders = cluster.replicas_of(PlacementKey::Metadata("/b"));
    let at: Vec<_> = holders.iter().map(|&i| cluster.addr(i)).collect();
    insert_record(&at, "/b", record);
    fs.unlink("/a").unwrap();
    let dest = (0..)
        .map(|i| format!("/c{i}"))
        .find(|p| {
            let to = cluster.replicas_of(PlacementKey::Metadata(p));
            to.iter().any(|s| !holders.contains(s))
        })
        .unwrap();
    fs.rename("/b", &dest).unwrap();
    assert!(
        common::files::read_file(&fs, &dest) == data,
        "{dest} is whole"
    );
}

#[test]
fn a_handle_on_a_file_another_client_removed_reads_no_zeros() {
    // Regression (found by a hostile-user run): a handle still open on a file that
    // another client removed, or renamed another file over, read the removed chunks as a
    // hole: zeros, with success. The removal seals the file on every server for good, and
    // a server answers reads and writes of a sealed file with ESTALE.
    let cluster = cluster();
    let (a, b) = (cluster.client(), cluster.client());
    let data = pattern(300_000, 6);
    for path in ["/g", "/h"] {
        write_file(&a, path, &data);
    }
    write_file(&a, "/other", &pattern(1000, 7));
    let removed = a.open("/g", OpenFlags::READ, 0).unwrap();
    let replaced = a.open("/h", OpenFlags::READ | OpenFlags::WRITE, 0).unwrap();
    b.unlink("/g").unwrap();
    b.rename("/other", "/h").unwrap();
    for (fd, what) in [(removed, "removed"), (replaced, "replaced")] {
        let mut buf = vec![0xa5; data.len()];
        match a.pread(fd, &mut buf, 0) {
            Ok(n) => assert!(
                buf[..n] == data[..n],
                "the {what} file read {n} wrong bytes"
            ),
            Err(e) => assert_eq!(errno_of::<()>(Err(e)), libc::ESTALE, "{what}"),
        }
    }
    // Written behind, the failure comes at the latest with fsync.
    let written = a
        .pwrite(replaced, b"late", 0)
        .and_then(|_| a.fsync(replaced));
    assert_eq!(
        errno_of(written),
        libc::ESTALE,
        "a write to the replaced file"
    );
    let _ = a.close(removed);
    let _ = a.close(replaced);
}

#[test]
fn the_sweep_frees_the_chunks_of_files_whose_records_were_lost() {
    // Found by a hostile-user run: a memory server restarted empty lost the only records
    // of some files; their chunks on the other servers stayed for good (no name to remove
    // them by, and no tombstone for the sweep).
    let mut cluster = Cluster::start(ClusterSpec {
        backend: "memory",
        ..ClusterSpec::short_timeout()
    });
    let fs = cluster.client();
    let chunk_size = cluster.spec.chunk_size;
    let data = pattern(8 * chunk_size as usize, 6);
    let paths: Vec<String> = (0..12).map(|i| format!("/f{i}")).collect();
    for path in &paths {
        write_file(&fs, path, &data);
    }
    let ids: Vec<u64> = paths.iter().map(|p| fs.stat(p).unwrap().file_id).collect();
    let lost = 0;
    let survivors: Vec<(&String, u64)> = paths
        .iter()
        .zip(ids)
        .filter(|(path, _)| cluster.replicas_of(PlacementKey::Metadata(path))[0] != lost)
        .collect();
    assert!(survivors.len() < paths.len(), "server {lost} holds records");
    // The chunks that must stay: those of files whose record survives, on the others.
    let kept = survivors
        .iter()
        .flat_map(|&(_, file_id)| (0..8).map(move |index| PlacementKey::Chunk { file_id, index }))
        .filter(|key| cluster.replicas_of(*key)[0] != lost)
        .count() as u64;
    cluster.kill(lost);
    cluster.restart(lost);
    let fs = cluster.client();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held: u64 = usage(&fs).iter().map(|&(_, chunks)| chunks).sum();
        if held == kept {
            break;
        }
        assert!(
            held > kept,
            "the sweep removed live chunks: {held} < {kept}"
        );
        assert!(
            Instant::now() < deadline,
            "chunks of files with no record left: {held} held, {kept} live"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Files with their records and every chunk are whole.
    for (path, file_id) in survivors {
        let whole = (0..8)
            .all(|index| cluster.replicas_of(PlacementKey::Chunk { file_id, index })[0] != lost);
        if whole {
            let got = try_read_file(&fs, path).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert!(got == data, "{path} differs");
        }
    }
    let swept: u64 = stats(&fs).iter().map(|s| s.orphan_chunks_removed).sum();
    assert!(swept > 0, "the sweep removed the chunks");
}
