//! Replica repair: replicas of a record left different by a double fault (a namespace call
//! that failed on one replica and whose undo failed too) come back together within a few
//! sweep rounds once the path has settled when one replica holds no record, and a server
//! back with an empty data directory gets its records back; replicas naming two files are
//! left alone. The divergent states are made by hand on the servers, as those
//! faults leave them.

mod common;

use std::time::{Duration, Instant};

use benchfs::blocking::OpenFlags;
use benchfs::placement::PlacementKey;
use common::files::{read_file, try_read_file, write_file};
use common::rpc::{delete_record, insert_record, record_ids};
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

/// Waits until the replicas of `path` hold `want`, or fails after [`CONVERGE_BOUND`] with
/// what they held.
fn await_records(cluster: &Cluster, path: &str, want: &[Option<u64>]) {
    let deadline = Instant::now() + CONVERGE_BOUND;
    loop {
        let held = record_ids(cluster, path);
        if held == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: replicas still hold {held:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
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
    let chunks = || -> u64 {
        let stats = fs.block_on(fs.client().server_stats());
        stats.into_iter().map(|(_, s)| s.unwrap().chunks).sum()
    };
    assert!(chunks() > 0);
    delete_record(cluster.addr(owner), "/d", false);
    await_records(&cluster, "/d", &[None, None]);
    let e = try_read_file(&cluster.client(), "/d").unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT, "{e}");
    // No record names the file now, and a server holds its tombstone: the orphan sweep
    // frees every chunk.
    let deadline = Instant::now() + CONVERGE_BOUND;
    while chunks() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} chunks of /d were never freed",
            chunks()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn replicas_naming_two_files_are_left_alone_and_both_files_stay_whole() {
    // The copy of /x names another file (/y's) than the owner's, as a rename over /x whose
    // insert and undo each failed on one replica could leave it. Each side may hold a
    // tombstone of the other's file, so the repair cannot tell which should win and drops
    // neither: both files stay whole, and each read of /x is one file or the other.
    let cluster = Cluster::start(spec());
    let fs = cluster.client();
    let first = pattern(150_000, 3);
    let second = pattern(90_000, 4);
    write_file(&fs, "/x", &first);
    write_file(&fs, "/y", &second);
    let x = fs.stat("/x").unwrap();
    let y = fs.stat("/y").unwrap();
    let copy = cluster.replicas_of(PlacementKey::Metadata("/x"))[1];
    insert_record(&[cluster.addr(copy)], "/x", y);
    std::thread::sleep(SETTLE + Duration::from_secs(3));
    assert_eq!(
        record_ids(&cluster, "/x"),
        [Some(x.file_id), Some(y.file_id)]
    );
    let reader = cluster.client();
    let got = read_file(&reader, "/x");
    assert!(
        got == first || got == second,
        "/x read {} bytes of neither file",
        got.len()
    );
    assert!(read_file(&reader, "/y") == second, "/y is untouched");
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
