//! Replica repair: replicas of a record left different by a double fault (a call that
//! failed on one replica and whose undo failed too) come back together within a few sweep
//! rounds once the path has settled: a record one replica lacks is copied there, a delete
//! one missed wins, of two records that differ (two files, a size, attributes, inline
//! bytes) the later one wins on both, and a server back with an empty data directory gets
//! its records back. The divergent states are made by hand on the servers, as those faults
//! leave them.

mod common;

use std::time::{Duration, Instant};

use benchfs::blocking::{BenchFS, OpenFlags};
use benchfs::placement::PlacementKey;
use benchfs_proto::meta::{now_ns, FileMetadata, SizeUpdate};
use benchfs_proto::ops;
use common::files::{read_file, try_read_file, write_file};
use common::rpc::{call_one, delete_record, insert_record, record_ids, records};
use common::{pattern, Cluster, ClusterSpec, RPC_TIMEOUT};

/// A path's record is compared only after it has been left alone this long.
const SETTLE: Duration = RPC_TIMEOUT.saturating_mul(2);
/// Bound on convergence: the settle time, then a sweep round (1 s) or two, on a loaded
/// machine. A failure bound, not a performance figure.
const CONVERGE_BOUND: Duration = Duration::from_secs(30);

fn spec() -> ClusterSpec {
    ClusterSpec {
        servers: 3,
        replicas: 2,
        backend: "file",
        ..ClusterSpec::short_timeout()
    }
}

/// Waits until `held()` gives `want`, or fails after [`CONVERGE_BOUND`] with what it gave.
fn await_held<T: PartialEq + std::fmt::Debug>(what: &str, want: T, mut held: impl FnMut() -> T) {
    let deadline = Instant::now() + CONVERGE_BOUND;
    loop {
        let now = held();
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: replicas still hold {now:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the replicas of `path` name `want`.
fn await_records(cluster: &Cluster, path: &str, want: &[Option<u64>]) {
    await_held(path, want.to_vec(), || record_ids(cluster, path));
}

/// Total chunks the cluster's servers hold.
fn chunks(fs: &BenchFS) -> u64 {
    let stats = fs.block_on(fs.client().server_stats());
    stats.into_iter().map(|(_, s)| s.unwrap().chunks).sum()
}

/// Waits until the servers hold `want` chunks (the orphan sweep freed the rest).
fn await_chunks(fs: &BenchFS, want: u64) {
    await_held("chunks", want, || chunks(fs));
}

/// Asserts that the replicas of `path` still hold `held`, when this runs within the settle
/// time after `since` (on a machine too loaded to get here in time, there is nothing to
/// assert).
fn assert_untouched_while_unsettled(
    cluster: &Cluster,
    path: &str,
    held: &[Option<u64>],
    since: Instant,
) {
    let now = record_ids(cluster, path);
    if since.elapsed() < SETTLE {
        assert_eq!(now, held, "{path} was repaired before it settled");
    }
}

#[test]
fn a_record_one_replica_lacks_is_copied_there() {
    // A create that one replica did not take, whose undo on the other failed: one replica
    // names the file, the other nothing (and holds no tombstone of it).
    let cluster = Cluster::start(spec());
    let fs = cluster.client();
    let data = pattern(200_000, 1);
    write_file(&fs, "/a", &data);
    let id = fs.stat("/a").unwrap().file_id;
    let [owner, copy] = cluster.replicas_of(PlacementKey::Metadata("/a"))[..] else {
        panic!("two replicas")
    };
    let since = Instant::now();
    delete_record(cluster.addr(copy), "/a", true);
    assert_untouched_while_unsettled(&cluster, "/a", &[Some(id), None], since);
    await_records(&cluster, "/a", &[Some(id), Some(id)]);
    // The copy is whole: with the owner down, the file is found and reads back.
    let mut cluster = cluster;
    cluster.kill(owner);
    assert!(
        read_file(&cluster.client(), "/a") == data,
        "/a read back wrong from its copy"
    );
}

#[test]
fn a_delete_one_replica_missed_wins_and_frees_the_chunks() {
    // An unlink that reached the owner (which deleted the record and keeps a tombstone)
    // and failed on the copy, whose undo (putting the record back) failed too.
    let cluster = Cluster::start(spec());
    let fs = cluster.client();
    write_file(&fs, "/d", &pattern(300_000, 2));
    let owner = cluster.replicas_of(PlacementKey::Metadata("/d"))[0];
    assert!(chunks(&fs) > 0);
    delete_record(cluster.addr(owner), "/d", false);
    await_records(&cluster, "/d", &[None, None]);
    let e = try_read_file(&cluster.client(), "/d").unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT, "{e}");
    // No record names the file now, and a server holds its tombstone: the orphan sweep
    // frees every chunk.
    await_chunks(&fs, 0);
}

#[test]
fn of_replicas_naming_two_files_the_later_record_wins_on_both() {
    // A rename over an existing file whose insert and undo each failed on one replica
    // leaves one replica naming the renamed file (stamped when the rename stored it) and
    // the other the file it replaced. Here the newer record is on the copy of /x and on
    // the copy of /y (whose owner holds an older record of /x's file), so the repair must
    // work in both directions; /x's file, named nowhere then, is freed.
    let cluster = Cluster::start(spec());
    let fs = cluster.client();
    let first = pattern(150_000, 3);
    let second = pattern(90_000, 4);
    write_file(&fs, "/x", &first);
    let only_x = chunks(&fs);
    write_file(&fs, "/y", &second);
    let only_y = chunks(&fs) - only_x;
    let x = records(&cluster, "/x")[0].unwrap();
    let y = records(&cluster, "/y")[0].unwrap();
    assert!(x.ctime_ns < y.ctime_ns, "/y was written after /x");
    let x_copy = cluster.replicas_of(PlacementKey::Metadata("/x"))[1];
    let y_owner = cluster.replicas_of(PlacementKey::Metadata("/y"))[0];
    let renamed = FileMetadata {
        ctime_ns: now_ns(),
        ..y
    };
    insert_record(&[cluster.addr(x_copy)], "/x", renamed);
    insert_record(&[cluster.addr(y_owner)], "/y", x);
    await_records(&cluster, "/x", &[Some(y.file_id); 2]);
    await_records(&cluster, "/y", &[Some(y.file_id); 2]);
    let reader = cluster.client();
    assert!(read_file(&reader, "/x") == second, "/x reads /y's file");
    assert!(read_file(&reader, "/y") == second, "/y is whole");
    await_chunks(&fs, only_y);
}

#[test]
fn a_size_or_attributes_one_replica_missed_are_brought_over() {
    // A size update that reached only the copy of /s, and a chmod that reached only the
    // owner of /m (each whose undo failed): the later record wins on both replicas.
    let cluster = Cluster::start(spec());
    let fs = cluster.client();
    let data = pattern(300_000, 5);
    write_file(&fs, "/s", &data);
    write_file(&fs, "/m", &data);
    let s_copy = cluster.replicas_of(PlacementKey::Metadata("/s"))[1];
    let m_owner = cluster.replicas_of(PlacementKey::Metadata("/m"))[0];
    // Both paths settle first, so only the updates below can keep the repair away.
    std::thread::sleep(SETTLE);
    let since = Instant::now();
    let size = ops::UpdateSizeRequest {
        path: "/s".into(),
        file_id: fs.stat("/s").unwrap().file_id,
        size: 100_000,
        how: SizeUpdate::Exact,
        cut_gen: 0,
    };
    call_one::<ops::UpdateSize>(cluster.addr(s_copy), &size).unwrap();
    let chmod = ops::SetAttrRequest {
        path: "/m".into(),
        file_id: fs.stat("/m").unwrap().file_id,
        set: ops::set_attr::MODE,
        mode: 0o600,
        uid: 0,
        gid: 0,
        atime_ns: 0,
        mtime_ns: 0,
        ctime_ns: now_ns(),
    };
    call_one::<ops::SetAttr>(cluster.addr(m_owner), &chmod).unwrap();
    let field = |path: &str, get: fn(&FileMetadata) -> u64| -> Vec<u64> {
        records(&cluster, path)
            .iter()
            .map(|r| get(&r.expect("both replicas name the file")))
            .collect()
    };
    // A size or attribute change counts as a change of the path: none is repaired over
    // before it has settled, when another call could still be on its way (a round or two
    // run meanwhile).
    std::thread::sleep(SETTLE * 2 / 3);
    let sizes = field("/s", |m| m.size);
    if since.elapsed() < SETTLE {
        assert_eq!(
            sizes,
            [300_000, 100_000],
            "/s was repaired before it settled"
        );
    }
    await_held("/s size", vec![100_000; 2], || field("/s", |m| m.size));
    await_held("/m mode", vec![0o600; 2], || {
        field("/m", |m| u64::from(m.mode))
    });
    assert!(
        read_file(&cluster.client(), "/s") == data[..100_000],
        "/s reads its first 100000 bytes"
    );
}

#[test]
fn inline_bytes_one_replica_missed_are_brought_over() {
    // An inline write that reached only the copy: the bytes differ, the size does not.
    let cluster = Cluster::start(spec());
    let fs = cluster.client();
    let fd = fs
        .open("/i", OpenFlags::WRITE | OpenFlags::CREATE, 0o644)
        .unwrap();
    fs.write(fd, b"old bytes").unwrap();
    fs.close(fd).unwrap();
    let [owner, copy] = cluster.replicas_of(PlacementKey::Metadata("/i"))[..] else {
        panic!("two replicas")
    };
    let write = ops::WriteInlineRequest {
        path: "/i".into(),
        file_id: fs.stat("/i").unwrap().file_id,
        offset: 0,
        data: b"new bytes".to_vec(),
    };
    let written = call_one::<ops::MetadataWriteInline>(cluster.addr(copy), &write).unwrap();
    assert!(written.meta.inline, "/i is inline");
    let open = ops::PathRequest { path: "/i".into() };
    await_held("/i bytes on the owner", b"new bytes".to_vec(), || {
        call_one::<ops::MetadataOpen>(cluster.addr(owner), &open)
            .unwrap()
            .data
    });
}

#[test]
fn a_server_back_with_an_empty_store_gets_its_records_back() {
    // A memory-backend server restarts with nothing. The records it held are copied back
    // from the other replicas, so with the other replica then down, stat still answers.
    let mut cluster = Cluster::start(ClusterSpec {
        backend: "memory",
        ..spec()
    });
    let fs = cluster.client();
    let paths: Vec<String> = (0..24).map(|i| format!("/f{i}")).collect();
    for path in &paths {
        // An O_CREAT open without O_TRUNC makes a small file inline: its bytes live in
        // its record, which is all a repair copies.
        let fd = fs
            .open(path, OpenFlags::WRITE | OpenFlags::CREATE, 0o644)
            .unwrap();
        fs.write(fd, path.as_bytes()).unwrap();
        fs.close(fd).unwrap();
    }
    let ids: Vec<u64> = paths.iter().map(|p| fs.stat(p).unwrap().file_id).collect();
    let lost = 0;
    cluster.kill(lost);
    cluster.restart(lost);
    let held: Vec<(&String, u64)> = paths
        .iter()
        .zip(ids)
        .filter(|(p, _)| {
            cluster
                .replicas_of(PlacementKey::Metadata(p))
                .contains(&lost)
        })
        .collect();
    assert!(!held.is_empty(), "server {lost} held some records");
    for (path, id) in &held {
        await_records(&cluster, path, &[Some(*id); 2]);
    }
    for other in (0..cluster.spec.servers).filter(|&i| i != lost) {
        cluster.kill(other);
    }
    let fs = cluster.client();
    for (path, id) in &held {
        let stat = fs
            .stat(path)
            .unwrap_or_else(|e| panic!("{path} with only server {lost} up: {e}"));
        assert_eq!(stat.file_id, *id, "{path}");
        assert_eq!(stat.size, path.len() as u64, "{path}");
        // Inline files keep their bytes in the record, so those came back too.
        assert_eq!(read_file(&fs, path), path.as_bytes(), "{path}");
    }
}

#[test]
fn a_busy_directory_comes_back_to_a_server_restarted_empty() {
    // Found by a hostile run: every entry made in a directory moves its times, and that
    // counted as a change the repair waits out, so a directory that kept getting entries
    // never settled, never came back to its replica restarted empty, and was gone for good
    // once its other replica restarted too.
    let mut cluster = Cluster::start(ClusterSpec {
        backend: "memory",
        ..spec()
    });
    let fs = cluster.client();
    fs.mkdir("/busy", 0o755).unwrap();
    let id = fs.stat("/busy").unwrap().file_id;
    let lost = cluster.replicas_of(PlacementKey::Metadata("/busy"))[0];
    cluster.kill(lost);
    cluster.restart(lost);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let creator = {
        let (stop, config) = (stop.clone(), cluster.config());
        std::thread::spawn(move || {
            let fs = BenchFS::connect(&config).unwrap();
            let mut made = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Some creates meet the replica that lacks the directory: they may fail.
                let path = format!("/busy/f{made}");
                let created = fs.open(&path, OpenFlags::WRITE | OpenFlags::CREATE, 0o644);
                if let Ok(fd) = created {
                    made += u64::from(fs.close(fd).is_ok());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            made
        })
    };
    await_records(&cluster, "/busy", &[Some(id); 2]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let made = creator.join().unwrap();
    assert!(made > 10, "the directory got {made} entries meanwhile");
}
