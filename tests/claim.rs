//! A second server for a node id or a data directory that a running one holds refuses to
//! start, names the running one, and leaves it alone.

mod common;

use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use benchfs::blocking::{ApiError, BenchFS};
use benchfs::placement::PlacementKey;
use common::files::{read_file, write_file};
use common::{pattern, Cluster, ClusterSpec};

/// Runs benchfsd with the cluster's configuration as `node_id` on `data_dir`, waiting
/// (bounded) for it to exit; panics if it is still running, i.e. if it did not refuse.
fn run_refused(cluster: &Cluster, node_id: &str, data_dir: &Path) -> Output {
    let child = cluster
        .server_command(node_id, data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    exit_within(
        child,
        Duration::from_secs(30),
        &format!("a duplicate of {node_id}"),
    )
}

fn entry_text(cluster: &Cluster, node_id: &str) -> String {
    std::fs::read_to_string(cluster.registry().join(format!("{node_id}.addr"))).unwrap()
}

#[test]
fn a_duplicate_node_id_refuses_to_start_and_leaves_the_original_alone() {
    // Regression: a second benchfsd with a registered node id overwrote the entry (reads
    // then returned zeros from its empty store), and stopping it removed the original's.
    let cluster = Cluster::start(ClusterSpec::backend("file"));
    let fs = cluster.client();
    let data = pattern(300_000, 9);
    write_file(&fs, "/f", &data);
    let before = entry_text(&cluster, "node1");
    let elsewhere = cluster.dir.path().join("elsewhere");
    let out = run_refused(&cluster, "node1", &elsewhere);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the duplicate exits non-zero");
    let addr = before.split_whitespace().nth(1).unwrap();
    assert!(
        stderr.contains("already served") && stderr.contains(addr),
        "the message names the running server: {stderr}"
    );
    assert_eq!(
        entry_text(&cluster, "node1"),
        before,
        "the entry is untouched"
    );
    assert!(
        read_file(&cluster.client(), "/f") == data,
        "the data reads back whole"
    );
}

#[test]
fn a_shared_data_dir_refuses_to_start() {
    // A second server on a running one's data directory would have rewritten its journal.
    let cluster = Cluster::start(ClusterSpec::backend("file"));
    let fs = cluster.client();
    write_file(&fs, "/g", &pattern(100_000, 3));
    let journal = cluster.data_dir(0).join("metadata.journal");
    let journal_before = std::fs::read(&journal).unwrap();
    let out = run_refused(&cluster, "node9", &cluster.data_dir(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("in use"), "{stderr}");
    assert!(
        !cluster.registry().join("node9.addr").exists(),
        "the refused server published nothing"
    );
    assert_eq!(std::fs::read(&journal).unwrap(), journal_before);
}

#[test]
fn a_crashed_servers_entry_is_taken_over() {
    let mut cluster = Cluster::start(ClusterSpec::backend("file"));
    let fs = cluster.client();
    let data = pattern(200_000, 4);
    write_file(&fs, "/h", &data);
    // kill -9 leaves the entry behind; the restarted server finds nobody answering there.
    cluster.kill(2);
    assert!(cluster.registry().join("node2.addr").exists());
    cluster.restart(2);
    assert!(read_file(&cluster.client(), "/h") == data);
}

#[test]
fn a_store_whose_inode_tag_a_running_server_has_refuses_to_start() {
    // Inode numbers are a store's tag and a counter; a tag drawn twice (about one chance
    // in 2^32 for a pair of stores) would give two files one number.
    let cluster = Cluster::start(ClusterSpec {
        servers: 1,
        backend: "file",
        ..ClusterSpec::default()
    });
    let data_dir = cluster.dir.path().join("data-node9");
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::write(data_dir.join("born"), "12345\n").unwrap();
    // With its journal: a store whose journal is gone is born again, under a new tag.
    std::fs::write(data_dir.join("metadata.journal"), b"").unwrap();
    let tag = benchfs_proto::placement::inode_tag("node9", 12345);
    std::fs::write(
        cluster.registry().join("other.addr"),
        format!("other 127.0.0.1:9 inode_tag={tag:08x}\n"),
    )
    .unwrap();
    let out = run_refused(&cluster, "node9", &data_dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("{tag:08x}")) && stderr.contains("node other"),
        "{stderr}"
    );
    assert!(!cluster.registry().join("node9.addr").exists());
}

/// Waits (bounded) for `child` to exit and returns its output.
fn exit_within(mut child: std::process::Child, bound: Duration, what: &str) -> Output {
    let deadline = Instant::now() + bound;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} kept running past {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A server the cluster does not know of yet, killed if the test fails before handing it
/// over.
struct KilledOnDrop(Option<std::process::Child>);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A thread that connects to `path`'s server, then writes `data` to it once `stopped`
/// says the server was stopped: the write waits in that connection. It makes one request,
/// at the close: the create with the bytes.
fn write_once_stopped(
    cluster: &Cluster,
    path: &str,
    data: &[u8],
    stopped: mpsc::Receiver<()>,
) -> std::thread::JoinHandle<Result<(), ApiError>> {
    let (connected_tx, connected) = mpsc::channel();
    let writer = std::thread::spawn({
        let (config, path, data) = (cluster.config(), path.to_string(), data.to_vec());
        move || {
            let fs = BenchFS::connect(&config).unwrap();
            assert!(fs.stat(&path).unwrap_err().is_gone());
            connected_tx.send(()).unwrap();
            stopped.recv().unwrap();
            let fd = fs.create(&path, 0o644)?;
            fs.write(fd, &data)?;
            fs.close(fd)
        }
    });
    connected.recv().unwrap();
    writer
}

#[test]
fn a_stopped_server_whose_node_id_was_taken_over_stops_serving_when_it_resumes() {
    // Regression (helper-89): a server SIGSTOPped, replaced by a new one with its node id
    // (whose start-up probe found it silent), went on serving its own clients after
    // SIGCONT, and the two stores drifted apart. And a request that queued while it was
    // stopped was answered before its first check: a write acknowledged into a store that
    // then stopped serving, which the node id's new server never had.
    let mut cluster = Cluster::start(ClusterSpec::backend("file"));
    write_file(&cluster.client(), "/before", &pattern(200_000, 5));
    let queued = (0..)
        .map(|i| format!("/queued{i}"))
        .find(|path| cluster.replicas_of(PlacementKey::Metadata(path))[0] == 1)
        .unwrap();
    let queued_data = pattern(1000, 7);
    let (stopped_tx, stopped) = mpsc::channel::<()>();
    let writer = write_once_stopped(&cluster, &queued, &queued_data, stopped);
    // Busy when it stops, as a loaded server is: polling, not asleep on its timers.
    let busy = Arc::new(AtomicBool::new(true));
    let pinger = std::thread::spawn({
        let (config, path, busy) = (cluster.config(), queued.clone(), busy.clone());
        move || {
            let fs = BenchFS::connect(&config).unwrap();
            while busy.load(Ordering::Relaxed) {
                let _ = fs.stat(&path);
            }
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    cluster.signal(1, "STOP");
    busy.store(false, Ordering::Relaxed);
    stopped_tx.send(()).unwrap();
    let stopped_addr = cluster.addr(1);
    let mut replacement = KilledOnDrop(Some(
        cluster
            .server_command("node1", &cluster.dir.path().join("replacement"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.addr(1) == stopped_addr {
        assert!(Instant::now() < deadline, "the replacement never published");
        std::thread::sleep(Duration::from_millis(20));
    }
    let replacement_entry = entry_text(&cluster, "node1");
    cluster.signal(1, "CONT");
    let stopped = cluster.children[1].take().unwrap();
    let out = exit_within(stopped, Duration::from_secs(5), "the resumed server");
    assert!(!out.status.success(), "it exits non-zero");
    let log = std::fs::read_to_string(cluster.log_path(1)).unwrap();
    let replacement_addr = replacement_entry.split_whitespace().nth(1).unwrap();
    assert!(
        log.contains(&format!("now names the benchfsd at {replacement_addr}")),
        "its log names the server that took the node id over: {log}"
    );
    assert_eq!(
        entry_text(&cluster, "node1"),
        replacement_entry,
        "the replacement's entry is left alone"
    );
    cluster.children[1] = replacement.0.take();
    let fs = cluster.client();
    pinger.join().unwrap();
    match writer.join().unwrap() {
        Ok(()) => assert!(
            read_file(&fs, &queued) == queued_data,
            "the write acknowledged after the take-over is the cluster's"
        ),
        Err(e) => common::note(&format!("the queued write failed: {e}")),
    }
    let data = pattern(300_000, 6);
    write_file(&fs, "/after", &data);
    assert!(read_file(&fs, "/after") == data, "the cluster serves on");
}

#[test]
fn servers_started_with_one_node_id_at_once_leave_one_serving() {
    let cluster = Cluster::start(ClusterSpec {
        servers: 1,
        backend: "file",
        ..ClusterSpec::default()
    });
    let spawn = |dir: &str| {
        cluster
            .server_command("node7", &cluster.dir.path().join(dir))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut twins = [spawn("twin-a"), spawn("twin-b")];
    // Every start-up is over within the probe's bound; every fence check within its own.
    std::thread::sleep(Duration::from_secs(5));
    let running: Vec<bool> = twins
        .iter_mut()
        .map(|c| c.try_wait().unwrap().is_none())
        .collect();
    let published = entry_text(&cluster, "node7");
    for twin in &mut twins {
        let _ = twin.kill();
        let _ = twin.wait();
    }
    assert_eq!(
        running.iter().filter(|&&r| r).count(),
        1,
        "exactly one serves node7 (running: {running:?}, entry {published})"
    );
}
