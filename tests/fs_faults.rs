//! Servers that fail under a file-system client: stopped and killed servers restarted on
//! their data, a replica standing in for a dead server, dead and stopped servers that make
//! calls fail in time, and a client killed in the middle of a write.

mod common;

use std::fmt::Debug;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use benchfs::blocking::{ApiError, BenchFS, OpenFlags};
use benchfs_proto::Status;
use common::files::{
    assert_unreachable, check_files, read_file, stats, try_read_file, write_file,
    write_fixture_files, C,
};
use common::{pattern, port_outside_ephemeral_range, rpc, Cluster, ClusterSpec, FAIL_BOUND};

/// Stops (SIGTERM) and then kills (SIGKILL) every server in turn, restarting it on its data
/// directory, and checks every closed file after each round.
fn restart_keeps_data(spec: ClusterSpec) {
    let backend = spec.backend;
    let mut cluster = match Cluster::try_start(spec) {
        Ok(c) => c,
        Err(e) if backend == "iouring" => {
            common::skip(
                "restart test on iouring",
                &format!("the cluster did not start (io_uring unavailable?): {e}"),
            );
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let old = cluster.client();
    let mut files = write_fixture_files(&old, 1);
    for i in 0..cluster.spec.servers {
        assert!(
            cluster.stop(i),
            "server {i} did not exit 0 on SIGTERM; see {}",
            cluster.log_path(i).display()
        );
        cluster.restart(i);
    }
    let fs = cluster.client();
    check_files(&fs, &files);
    // New files after the restart must not reuse the ids (and so the chunks) of old ones.
    files.extend(write_fixture_files(&fs, 2));
    check_files(&fs, &files);
    drop(fs);

    for i in 0..cluster.spec.servers {
        cluster.kill(i);
        cluster.restart(i);
    }
    let fs = cluster.client();
    check_files(&fs, &files);
    files.extend(write_fixture_files(&fs, 3));
    check_files(&cluster.client(), &files);
    // A client connected before every restart finds the servers again.
    check_files(&old, &files);
}

#[test]
fn a_client_idle_across_server_restarts_keeps_working() {
    // A client that sat idle while a server restarted sent its next request down the dead
    // connection and failed with ETIMEDOUT after the whole RPC timeout, instead of
    // reconnecting to the restarted server.
    let mut cluster = Cluster::start(ClusterSpec::backend("file"));
    let fs = cluster.client();
    let files = write_fixture_files(&fs, 1);
    assert!(cluster.stop(1));
    cluster.restart(1);
    cluster.kill(2);
    cluster.restart(2);
    for (path, data) in &files {
        match try_read_file(&fs, path) {
            Ok(got) => assert!(got == *data, "{path} read back differently"),
            Err(e) => panic!("{path}: {e}"),
        }
    }
    let data = pattern(C + 1, 2);
    write_file(&fs, "/new", &data);
    assert!(read_file(&cluster.client(), "/new") == data);
}

#[test]
fn restart_keeps_data_file_backend() {
    restart_keeps_data(ClusterSpec::backend("file"));
}

#[test]
fn restart_keeps_data_iouring_backend() {
    restart_keeps_data(ClusterSpec::backend("iouring"));
}

#[test]
fn reads_fail_over_to_a_replica() {
    let mut cluster = Cluster::start(ClusterSpec {
        replicas: 2,
        ..ClusterSpec::short_timeout()
    });
    let old = cluster.client();
    let files = write_fixture_files(&old, 1);
    check_files(&old, &files);
    cluster.kill(1);
    check_files(&cluster.client(), &files);
    check_files(&old, &files);
}

#[test]
fn reads_from_a_dead_server_fail_without_hanging() {
    let mut cluster = Cluster::start(ClusterSpec {
        replicas: 1,
        ..ClusterSpec::short_timeout()
    });
    let files = write_fixture_files(&cluster.client(), 1);
    // A directory whose record outlives node2, for statfs.
    let writer = cluster.client();
    let asked = (0..)
        .map(|i| format!("/space-{i}"))
        .find(|p| writer.client().metadata_owner(p).as_deref() != Some("node2"))
        .unwrap();
    writer.mkdir(&asked, 0o755).unwrap();
    cluster.kill(2);
    let fs = cluster.client();
    // statfs asks every server: the error names the dead one and the path it was asked
    // for (found by a hostile run: it named "/").
    let text = fs.statfs(&asked).unwrap_err().to_string();
    assert!(
        text.contains(&format!("statfs {asked}")) && text.contains("node2"),
        "{text}"
    );
    let mut failed = 0;
    for (path, data) in &files {
        let start = Instant::now();
        let result = try_read_file(&fs, path);
        let took = start.elapsed();
        // A liveness bound, not a timing assertion: a hang would take forever.
        assert!(took < FAIL_BOUND, "{path}: took {took:?}");
        match result {
            Ok(got) => assert!(got == *data, "{path} read back differently"),
            Err(e) => {
                assert_unreachable(path, &e);
                failed += 1;
            }
        }
    }
    // The 1 MiB file has 16 chunks spread over all four servers.
    assert!(failed > 0, "no read touched the dead server");
    // Once the server is back (it is in-memory, so its share is gone), the same client
    // works again: creating, writing and reading a new file touches every server.
    cluster.restart(2);
    let data = pattern(1 << 20, 77);
    write_file(&fs, "/after-restart", &data);
    assert!(read_file(&fs, "/after-restart") == data);
    assert_eq!(stats(&fs).len(), 4);
}

#[test]
fn a_write_to_a_stalled_server_fails_in_time_and_the_client_recovers() {
    // The blocking API lends the caller's slice to UCX without a copy and must not return
    // while a send still reads it. A server that is alive but stopped never completes a
    // rendezvous send, so the call has to give up on the connection at the timeout.
    let mut cluster = Cluster::start(ClusterSpec {
        servers: 1,
        ..ClusterSpec::short_timeout()
    });
    // Write-behind off: a write behind its call copies the slice and lends nothing
    // (tests/write_behind.rs stops a server under writes behind).
    let mut config = cluster.config();
    config.client.write_behind_bytes = 0;
    let fs = BenchFS::connect(&config).unwrap();
    let fd = fs.create("/stalled", 0o644).unwrap();
    let first = pattern(8 * C, 1);
    assert_eq!(fs.pwrite(fd, &first, 0).unwrap(), first.len());

    fails_while_stopped(&cluster, "a write", || fs.pwrite(fd, &pattern(8 * C, 2), 0));

    // A read lends the caller's buffer to receives the same way.
    fs.fsync(fd).unwrap();
    let reader = fs.open("/stalled", OpenFlags::READ, 0).unwrap();
    let mut buf = vec![0xEE; 8 * C];
    fails_while_stopped(&cluster, "a read", || fs.pread(reader, &mut buf, 0));

    // The same client reconnects, writes and reads; the data is whole.
    let last = pattern(8 * C, 3);
    assert_eq!(fs.pwrite(fd, &last, 0).unwrap(), last.len());
    fs.close(fd).unwrap();
    assert_eq!(fs.pread(reader, &mut buf, 0).unwrap(), last.len());
    assert!(buf == last);
    assert!(read_file(&cluster.client(), "/stalled") == last);
    assert!(cluster.all_running());
}

/// Makes `call` while the only server is stopped (SIGSTOP): it must fail as a call to an
/// unreachable server does, and in time.
fn fails_while_stopped<T: Debug>(
    cluster: &Cluster,
    what: &str,
    call: impl FnOnce() -> Result<T, ApiError>,
) {
    cluster.signal(0, "STOP");
    let start = Instant::now();
    let result = call();
    let took = start.elapsed();
    cluster.signal(0, "CONT");
    // A liveness bound, not a timing assertion: a hang would take forever.
    assert!(took < FAIL_BOUND, "{what}: took {took:?}");
    match result {
        Ok(v) => panic!("{what}: expected an error, got Ok({v:?})"),
        Err(e) => assert_unreachable(what, &e),
    }
}

/// Set in the child process of `a_client_killed_mid_write_leaves_servers_healthy`.
const WRITER_ENV: &str = "BFS_IT_WRITER_CONFIG";
/// What the child prints once it is writing (libtest may print other text on that line).
const WRITER_STARTED: &str = "benchfs-writer-started";

#[test]
fn a_client_killed_mid_write_leaves_servers_healthy() {
    if let Some(config) = std::env::var_os(WRITER_ENV) {
        // The child: write a large file, over and over, until killed.
        let config =
            benchfs::config::ServerConfig::from_file(std::path::Path::new(&config)).unwrap();
        let fs = BenchFS::connect(&config).unwrap();
        let data = pattern(1 << 20, 3);
        let fd = fs.create("/victim", 0o644).unwrap();
        fs.write(fd, &data).unwrap();
        let mut out = std::io::stdout();
        writeln!(out, "{WRITER_STARTED}").unwrap();
        out.flush().unwrap();
        loop {
            for i in 0..16u64 {
                fs.pwrite(fd, &data, i << 20).unwrap();
            }
        }
    }
    let cluster = Cluster::start(ClusterSpec::default());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_client_killed_mid_write_leaves_servers_healthy",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WRITER_ENV, &cluster.config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.any(|l| l.map(|l| l.contains(WRITER_STARTED)).unwrap_or(false)));
        // Keep draining so the child never blocks on a full pipe.
        lines.for_each(drop);
    });
    // A liveness bound: the first 1 MiB write takes milliseconds.
    let started = rx.recv_timeout(Duration::from_secs(60)).unwrap_or(false);
    if !started {
        let _ = child.kill();
        panic!("the writer did not start: {:?}", child.wait());
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();

    let fs = cluster.client();
    let data = pattern((1 << 20) + 3, 4);
    write_file(&fs, "/after", &data);
    assert!(read_file(&cluster.client(), "/after") == data);
    // The half-written file is still a file that can be opened, read and removed.
    let size = fs.stat("/victim").unwrap().size;
    assert_eq!(read_file(&fs, "/victim").len() as u64, size);
    fs.unlink("/victim").unwrap();
    assert_eq!(stats(&fs).len(), cluster.spec.servers);
    let mut cluster = cluster;
    assert!(cluster.all_running());
}

#[test]
fn file_system_client_reconnects_to_a_restarted_server() {
    let mut cluster = Cluster::start(rpc::spec(1));
    let fs = cluster.client();
    let data = pattern(100_000, 5);
    let round_trip = |path: &str| {
        let fd = fs.create(path, 0o644).unwrap();
        fs.write(fd, &data).unwrap();
        fs.close(fd).unwrap();
        let fd = fs.open(path, OpenFlags::READ, 0).unwrap();
        let mut back = vec![0u8; data.len() + 1];
        assert_eq!(fs.read(fd, &mut back).unwrap(), data.len());
        assert!(back[..data.len()] == data[..], "{path}: read back differs");
        fs.close(fd).unwrap();
    };
    round_trip("/before");

    // Killed: calls fail within the bound. Restarted on a new port (published in the
    // registry): the same handle finds it.
    cluster.kill(0);
    let started = Instant::now();
    let error = fs.create("/during", 0o644).unwrap_err();
    assert!(
        matches!(error.status(), Some(Status::TimedOut | Status::Unavailable)),
        "{error:?}"
    );
    assert!(started.elapsed() < FAIL_BOUND);
    // Outside the ephemeral range, so that no server of another test takes the port
    // between the kill below and the restart on it.
    cluster.restart_at(0, port_outside_ephemeral_range());
    round_trip("/after-new-port");
    let gone = fs.open("/before", OpenFlags::READ, 0).unwrap_err();
    assert_eq!(
        gone.status(),
        Some(Status::NotFound),
        "a memory store starts empty"
    );

    // Killed again and restarted on the address it had: the handle reconnects there too.
    // Regression: the daemon's SO_REUSEADDR setting never applied (UCX wants
    // CM_REUSEADDR), so a server killed with -9 could not rebind its port for a minute.
    let addr = cluster.addr(0);
    cluster.kill(0);
    assert!(fs.create("/during", 0o644).is_err());
    cluster.restart_at(0, addr);
    assert_eq!(cluster.addr(0), addr);
    round_trip("/after-same-port");
}

#[test]
fn a_silent_replica_costs_one_timeout_not_one_per_chunk() {
    // Regression: with a replica stopped (alive but silent), every read of a chunk it
    // held first waited the whole RPC timeout: 421 s for a 200 MiB file.
    read_with_a_replica_stopped(false, false);
}

#[test]
fn a_silent_replica_costs_one_timeout_for_a_read_of_many_chunks() {
    // Regression, found by a hostile run (`benchfs cat` took 36 s with a 2 s timeout): a
    // read sends its chunks' calls at once, and each that waited for the connection
    // attempt to the silent server tried again after it failed, a timeout each, in turn.
    read_with_a_replica_stopped(false, true);
}

#[test]
fn an_unreachable_replica_is_asked_once_per_file_not_once_per_chunk() {
    // Regression, found on four namespace hosts with one link down: a connection attempt
    // that failed (rather than timed out) did not mark the server suspect, so every
    // chunk's read asked it first again: one transport timeout per chunk, in turn.
    read_with_a_replica_stopped(true, false);
}

/// Stops (SIGSTOP, or kills when `kill`) the server that reads ask first for most chunks
/// of a file, and reads the file with a new client: chunk by chunk, or in one call when
/// `whole`.
fn read_with_a_replica_stopped(kill: bool, whole: bool) {
    use benchfs::placement::PlacementKey;
    let cluster = Cluster::start(ClusterSpec {
        replicas: 2,
        ..ClusterSpec::short_timeout()
    });
    let fs = cluster.client();
    let chunks = 16;
    let data = pattern(chunks * C, 6);
    write_file(&fs, "/r", &data);
    let file_id = fs.stat("/r").unwrap().file_id;
    let ring = cluster.ring();
    let mut first = vec![0usize; cluster.spec.servers];
    for index in 0..chunks as u64 {
        first[ring.replicas(PlacementKey::Chunk { file_id, index }, 2)[0] as usize] += 1;
    }
    let (stopped, held) = first
        .iter()
        .copied()
        .enumerate()
        .max_by_key(|&(_, n)| n)
        .unwrap();
    assert!(
        held > 1,
        "the stopped server reads first for several chunks"
    );
    cluster.signal(stopped, if kill { "KILL" } else { "STOP" });
    let reader = cluster.client();
    let result = (|| -> Result<(), ApiError> {
        let fd = reader.open("/r", OpenFlags::READ, 0)?;
        if whole {
            let mut buf = vec![0u8; chunks * C];
            assert_eq!(reader.pread(fd, &mut buf, 0)?, chunks * C);
            assert!(buf == data, "the file differs");
        }
        let mut buf = vec![0u8; C];
        for i in 0..chunks {
            assert_eq!(reader.pread(fd, &mut buf, (i * C) as u64)?, C);
            assert!(buf[..] == data[i * C..(i + 1) * C], "chunk {i} differs");
        }
        reader.close(fd)
    })();
    let counters = reader.client().call_counters();
    if !kill {
        cluster.signal(stopped, "CONT");
    }
    result.unwrap();
    // One failed call marks the server. A read in one call may have sent several calls
    // to it at once (unless the open already marked it): they fail with the one attempt.
    let most_unreachable = if whole { held as u64 } else { 1 };
    assert!(
        counters.timeouts == u64::from(!kill)
            && (1..=most_unreachable).contains(&counters.unreachable),
        "one failed call marks the server: {counters:?}"
    );
    assert!(
        counters.failovers >= 1,
        "a replica answered for it: {counters:?}"
    );
    // Another client of this process (a FUSE mount's other thread, say) asks the replicas
    // first at once, instead of waiting out a timeout of its own.
    if !kill {
        cluster.signal(stopped, "STOP");
    }
    let second = cluster.client();
    assert!(read_file(&second, "/r") == data);
    let counters = second.client().call_counters();
    if !kill {
        cluster.signal(stopped, "CONT");
    }
    assert_eq!(
        (counters.unreachable, counters.timeouts),
        (0, 0),
        "the server another client marked is asked last: {counters:?}"
    );
}

#[test]
fn a_chunk_a_server_lost_is_never_read_as_zeros() {
    // Regression: a chunk that a server no longer had (a memory store restarted, a data
    // directory lost) read back as zeros with success, even with another replica holding it.
    use benchfs::placement::PlacementKey;
    // A memory store restarted, and a disk server back with an empty data directory.
    for (backend, replicas) in [("memory", 1u32), ("memory", 2), ("file", 1)] {
        let mut cluster = Cluster::start(ClusterSpec {
            replicas,
            ..ClusterSpec::backend(backend)
        });
        let fs = cluster.client();
        let data = pattern(16 * C, 11);
        write_file(&fs, "/lost", &data);
        // A server that holds chunks of the file but none of its metadata records.
        let meta_owners = cluster
            .ring()
            .replicas(PlacementKey::Metadata("/lost"), replicas as usize);
        let holders: Vec<usize> = stats(&fs).iter().map(|s| s.chunks as usize).collect();
        let lost = (0..cluster.spec.servers)
            .find(|&i| holders[i] > 0 && !meta_owners.contains(&(i as u32)))
            .expect("a chunk holder that owns no record");
        cluster.kill(lost);
        std::fs::remove_dir_all(cluster.data_dir(lost)).unwrap();
        cluster.restart(lost);
        let reader = cluster.client();
        // A write and a chmod after the restart change the file's record (its times), but
        // not what the lost chunks held: they must still not read as zeros.
        let fd = reader
            .open("/lost", OpenFlags::WRITE | OpenFlags::APPEND, 0)
            .unwrap();
        reader.write(fd, b"more").unwrap();
        reader.close(fd).unwrap();
        let chmod = benchfs_proto::ops::SetAttrRequest {
            path: "/lost".into(),
            file_id: reader.stat("/lost").unwrap().file_id,
            set: benchfs_proto::ops::set_attr::MODE,
            mode: 0o600,
            uid: 0,
            gid: 0,
            atime_ns: 0,
            mtime_ns: 0,
            ctime_ns: benchfs_proto::meta::now_ns(),
        };
        reader.block_on(reader.client().set_attr(chmod)).unwrap();
        let data = [&data[..], b"more"].concat();
        match try_read_file(&reader, "/lost") {
            Ok(got) => {
                assert_eq!(replicas, 2, "with one copy the lost chunks cannot be read");
                assert!(got == data, "the other replica's bytes, not zeros");
            }
            Err(e) => {
                assert_eq!(replicas, 1, "with two copies the replica answers: {e}");
                assert_eq!(e.errno(), libc::EIO, "{e}");
                let message = e.to_string();
                assert!(
                    message.contains(&format!("read /lost: {}@", Cluster::node_id(lost))),
                    "names the path and the server with its address: {e}"
                );
                assert!(
                    message.contains("store began after the file was made"),
                    "says why the bytes are refused: {e}"
                );
            }
        }
        // A file created after the restart has real holes, and they read as zeros.
        let fd = reader.create("/sparse", 0o644).unwrap();
        reader.pwrite(fd, b"tail", 5 * C as u64).unwrap();
        reader.close(fd).unwrap();
        let got = read_file(&reader, "/sparse");
        assert_eq!(got.len(), 5 * C + 4);
        assert!(got[..5 * C].iter().all(|&b| b == 0) && &got[5 * C..] == b"tail");
    }
}

#[test]
fn a_write_after_a_restart_never_makes_another_clients_bytes_read_as_zeros() {
    // Regression: a writer that opened a file before another client wrote to it skipped
    // those bytes in a chunk a restarted memory server had lost, and the server, making
    // the chunk anew, filled them with zeros that read back with success (from the first
    // replica even while the second held the bytes).
    use benchfs::placement::PlacementKey;
    for replicas in [1u32, 2] {
        let mut cluster = Cluster::start(ClusterSpec {
            replicas,
            ..ClusterSpec::backend("memory")
        });
        let writer = cluster.client();
        // A file whose chunk 0 is first on a server that holds none of its records.
        let (path, lost) = (0..)
            .find_map(|i| {
                let path = format!("/gap{i}");
                let fd = writer.create(&path, 0o644).unwrap();
                writer.close(fd).unwrap();
                let file_id = writer.stat(&path).unwrap().file_id;
                let first = cluster.replicas_of(PlacementKey::Chunk { file_id, index: 0 })[0];
                let records = cluster.replicas_of(PlacementKey::Metadata(&path));
                (!records.contains(&first)).then_some((path, first))
            })
            .unwrap();
        // Opened while the file is empty: the writer knows of no bytes in it.
        let fd = writer.open(&path, OpenFlags::WRITE, 0).unwrap();
        let other = cluster.client();
        let theirs = pattern(100, 3);
        let ofd = other.open(&path, OpenFlags::WRITE, 0).unwrap();
        other.pwrite(ofd, &theirs, 0).unwrap();
        other.close(ofd).unwrap();
        cluster.kill(lost);
        cluster.restart(lost);
        writer.pwrite(fd, b"mine", 200).unwrap();
        writer.close(fd).unwrap();
        let reader = cluster.client();
        let mut want = theirs.clone();
        want.resize(200, 0);
        want.extend_from_slice(b"mine");
        match try_read_file(&reader, &path) {
            Ok(got) => {
                assert_eq!(
                    replicas, 2,
                    "with one copy the other client's bytes are lost"
                );
                let differs = got.iter().zip(&want).position(|(a, b)| a != b);
                assert!(
                    got == want,
                    "the other replica's bytes, not zeros: first difference at {differs:?}"
                );
            }
            Err(e) => {
                assert_eq!(replicas, 1, "with two copies the replica answers: {e}");
                assert_eq!(e.errno(), libc::EIO, "{e}");
                assert!(
                    e.to_string()
                        .contains(&format!("read {path}: {}@", Cluster::node_id(lost))),
                    "names the path and the server: {e}"
                );
            }
        }
        // The bytes written since the restart read back from the restarted server alone.
        let fd = reader.open(&path, OpenFlags::READ, 0).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(reader.pread(fd, &mut buf, 200).unwrap(), 4);
        assert_eq!(&buf, b"mine");
        reader.close(fd).unwrap();
        if replicas == 2 {
            repair_gives_back(&cluster, lost, &path, &want);
        }
    }
}

/// A repair gives server `lost`, restarted empty, the other replica's bytes of chunk 0
/// of `path`, `want`: then it answers them alone.
fn repair_gives_back(cluster: &Cluster, lost: usize, path: &str, want: &[u8]) {
    let dir = cluster.dir.path().to_str().unwrap().to_string();
    let out = common::cli::benchfs(&["verify", "--repair", "--dir", &dir, path], &[]).ok();
    assert!(out.contains(" 0 differences left"), "{out}");
    let file_id = cluster.client().stat(path).unwrap().file_id;
    let held = rpc::Rt::new().block_on(async {
        let conn = rpc::rpc_client(b"")
            .connect(cluster.addr(lost))
            .await
            .unwrap();
        rpc::read(&conn, file_id, 0, 0, want.len()).await
    });
    assert!(
        held == want,
        "the restarted server's chunk after the repair"
    );
}

#[test]
fn listings_work_with_one_replica_of_each_record_down() {
    // Regression: ls, readdir and rmdir's emptiness check asked every server and failed
    // when one was down, though with two copies of every record no entry was missing.
    // On disk, so a server restarted after its turn comes back whole.
    let mut cluster = Cluster::start(ClusterSpec {
        replicas: 2,
        backend: "file",
        ..ClusterSpec::short_timeout()
    });
    let fs = cluster.client();
    fs.mkdir("/d", 0o755).unwrap();
    let names: Vec<String> = (0..20).map(|i| format!("f{i:02}")).collect();
    for name in &names {
        write_file(&fs, &format!("/d/{name}"), name.as_bytes());
    }
    for down in 0..cluster.spec.servers {
        cluster.kill(down);
        let reader = cluster.client();
        let listed: Vec<String> = reader
            .readdir("/d")
            .unwrap_or_else(|e| panic!("server {down} down: {e}"))
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(listed, names, "server {down} down");
        assert_eq!(
            reader.readdir("/").unwrap().len(),
            1,
            "server {down} down: / holds d"
        );
        let e = reader.rmdir("/d").unwrap_err();
        assert_eq!(e.errno(), libc::ENOTEMPTY, "server {down} down: {e}");
        cluster.restart(down);
    }
    // Two servers down may hide entries: the listing fails rather than come back short.
    cluster.kill(0);
    cluster.kill(1);
    let e = cluster.client().readdir("/d").unwrap_err();
    assert_unreachable("readdir with two servers down", &e);
}

#[test]
fn a_memory_server_back_empty_reuses_no_inode_number_and_hides_no_file() {
    // Found by a hostile-user run: a memory server restarted empty counted its inode
    // numbers from 1 again, so a new file took an old file's number, and with it the old
    // file's chunks on the other servers; once the replica repair brought the old record
    // back, it read the new file's bytes with success.
    back_empty_hides_no_file(Duration::from_secs(6));
}

#[test]
fn a_memory_server_back_empty_soon_after_the_cluster_began_hides_no_file() {
    // Found by a hostile-user run: a server whose store began within seconds of the
    // others' was taken for one of a cluster starting, so its "not found" was the answer
    // until the replica repair ran (a file gone from a mount for a while).
    back_empty_hides_no_file(Duration::ZERO);
}

/// Kills a memory server `wait` after its cluster began, restarts it empty, and checks
/// that no file it held is hidden or takes a new file's inode number.
fn back_empty_hides_no_file(wait: Duration) {
    let mut cluster = Cluster::start(ClusterSpec {
        servers: 3,
        replicas: 2,
        backend: "memory",
        ..ClusterSpec::short_timeout()
    });
    let restarted = 1;
    // Paths whose records the restarted server owns: it numbers their files.
    let owned = |prefix: &str, cluster: &Cluster| -> Vec<String> {
        (0..)
            .map(|i| format!("/{prefix}{i}"))
            .filter(|p| {
                cluster.replicas_of(benchfs::placement::PlacementKey::Metadata(p))[0] == restarted
            })
            .take(3)
            .collect()
    };
    let fs = cluster.client();
    let old: Vec<(String, u64, Vec<u8>)> = owned("old", &cluster)
        .into_iter()
        .enumerate()
        .map(|(i, path)| {
            let data = pattern(3 * C, i as u64);
            write_file(&fs, &path, &data);
            let id = fs.stat(&path).unwrap().file_id;
            (path, id, data)
        })
        .collect();
    // Servers whose stores began within seconds of one another are taken to be a new
    // cluster's unless one says it was born again (restarted).
    std::thread::sleep(wait);
    cluster.kill(restarted);
    cluster.restart(restarted);
    let fs = cluster.client();
    for (i, path) in owned("new", &cluster).into_iter().enumerate() {
        write_file(&fs, &path, &pattern(3 * C, 100 + i as u64));
        let id = fs.stat(&path).unwrap().file_id;
        assert!(
            old.iter().all(|(_, old_id, _)| *old_id != id),
            "{path} took inode {id:#x}, an old file's"
        );
    }
    // Before the replica repair brings their records back to the restarted server, the
    // old files are found on their other replica, with their own bytes. (A client took
    // the restarted server's "not found" for the answer: ENOENT for two minutes.)
    for (path, id, data) in &old {
        assert_eq!(fs.stat(path).map(|m| m.file_id).ok(), Some(*id), "{path}");
        assert!(
            read_file(&fs, path) == *data,
            "{path} reads bytes it never held"
        );
    }
    // An open with O_CREAT of an old file opens it, and an exclusive one is refused: the
    // restarted owner made a new file there and its copy replaced the old one's record
    // on the other replica (the sweep then removed the old file's chunks).
    let (path, id, data) = &old[0];
    let fd = fs
        .open(path, OpenFlags::WRITE | OpenFlags::CREATE, 0o644)
        .unwrap();
    fs.close(fd).unwrap();
    let exclusive = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::EXCL;
    let e = fs.open(path, exclusive, 0o644).and_then(|fd| fs.close(fd));
    assert_eq!(e.unwrap_err().errno(), libc::EEXIST);
    assert_eq!(fs.stat(path).unwrap().file_id, *id);
    assert!(read_file(&fs, path) == *data, "{path} was replaced");
    assert_eq!(
        fs.mkdir(&old[1].0, 0o755).unwrap_err().errno(),
        libc::EEXIST
    );
    let missing = fs.stat("/never-made").unwrap_err();
    assert_eq!(missing.errno(), libc::ENOENT, "{missing}");
    let (path, id, data) = &old[2];
    change_an_old_record(&fs, path, *id, data);
}

/// Changes the record of `path` (file `id`, holding `data`), which a restarted server
/// lost, before the repair brings it back there: a truncate, O_TRUNC and a write that
/// grows the file. (Each failed with ENOENT for minutes, after the other replica had
/// taken it: O_TRUNC left the file empty.)
fn change_an_old_record(fs: &BenchFS, path: &str, id: u64, data: &[u8]) {
    fs.truncate(path, 1000).unwrap();
    assert!(read_file(fs, path) == data[..1000], "{path} after truncate");
    let fd = fs
        .open(path, OpenFlags::WRITE | OpenFlags::TRUNC, 0)
        .unwrap();
    let new = pattern(2 * C, 7);
    fs.pwrite(fd, &new, 0).unwrap();
    fs.close(fd).unwrap();
    assert!(read_file(fs, path) == new, "{path} rewritten");
    assert_eq!(fs.stat(path).unwrap().file_id, id);
}

#[test]
fn a_server_of_another_cluster_on_a_dead_servers_port_is_not_used() {
    // Regression (a CI flake): the system gave a killed server's port to a server another
    // test started, with the same node id, and a create meant for the dead one succeeded
    // there: the file went to another cluster.
    let mut ours = Cluster::start(ClusterSpec::short_timeout());
    let path = "/meant-for-a-dead-server";
    let owner = ours.replicas_of(benchfs::placement::PlacementKey::Metadata(path))[0];
    // A port no `bind(0)` of a test running beside this one can take once it is free.
    ours.kill(owner);
    ours.restart_at(owner, port_outside_ephemeral_range());
    let addr = ours.addr(owner);
    ours.kill(owner);
    let mut theirs = Cluster::start(ClusterSpec::default());
    theirs.kill(owner);
    theirs.restart_at(owner, addr);
    let fs = ours.client();
    let e = fs
        .open(path, OpenFlags::WRITE | OpenFlags::CREATE, 0o644)
        .and_then(|fd| fs.write(fd, b"bytes").and_then(|_| fs.close(fd)))
        .unwrap_err();
    assert_unreachable("create on a server of another cluster", &e);
    assert!(e.to_string().contains("not the one"), "{e}");
    let e = theirs.client().stat(path).unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT, "{e}");
}

#[test]
fn unlinks_with_a_stopped_server_wait_for_it_once() {
    // Regressions, found by hostile runs: an unlink that succeeds while a server holding
    // no record of the file is stopped took two RPC timeouts (its chunk removal sealed the
    // file on every server, the stopped one timed out, and lifting the seals asked it
    // again), and every later unlink of the process waited a timeout for it too; and
    // moving the time of their directory, whose record the stopped server holds, made
    // each wait a handshake timeout more.
    let cluster = Cluster::start(ClusterSpec::short_timeout());
    let stopped = 0;
    let dir = (0..)
        .map(|i| format!("/dir-{i}"))
        .find(|d| cluster.replicas_of(benchfs::placement::PlacementKey::Metadata(d))[0] == stopped)
        .unwrap();
    cluster.client().mkdir(&dir, 0o755).unwrap();
    let paths: Vec<String> = (0..40).map(|i| format!("{dir}/removed-{i}")).collect();
    let paths: Vec<&String> = paths
        .iter()
        .filter(|p| {
            cluster.replicas_of(benchfs::placement::PlacementKey::Metadata(p))[0] != stopped
        })
        .take(3)
        .collect();
    assert_eq!(paths.len(), 3, "files whose records are elsewhere");
    let fs = cluster.client();
    let data = pattern(4 * C, 8);
    for path in &paths {
        write_file(&fs, path, &data);
    }
    cluster.signal(stopped, "STOP");
    let removed: Vec<_> = paths.iter().map(|path| fs.unlink(path)).collect();
    let counters = fs.client().call_counters();
    cluster.signal(stopped, "CONT");
    for r in removed {
        r.unwrap();
    }
    assert_eq!(
        (counters.timeouts, counters.unreachable),
        (1, 1),
        "one call waited for the stopped server: {counters:?}"
    );
    for path in &paths {
        let e = fs.stat(path).unwrap_err();
        assert_eq!(e.errno(), libc::ENOENT, "{e}");
    }
    // The names take new files, readable from every server once the stopped one is back.
    let again = pattern(4 * C, 9);
    write_file(&fs, paths[0], &again);
    assert!(read_file(&cluster.client(), paths[0]) == again);
}

#[test]
fn a_client_keeps_the_place_of_a_member_that_publishes_no_address() {
    // Regression, found by a hostile run: a client that started while a restarting
    // server's entry was missing from the registry (about 100 ms of `cluster up --resume`,
    // or for good when that server died then) placed files on a ring without it; its
    // writes and reads succeeded, and once the server was back the files read as zeros
    // with success, or as missing.
    let cluster = Cluster::start(ClusterSpec::default());
    let data = pattern(16 * C, 10);
    write_file(&cluster.client(), "/before", &data);
    let entry = benchfs::registry::entry_path(&cluster.registry(), "node1");
    let held = cluster.dir.path().join("node1.addr.held");
    std::fs::rename(&entry, &held).unwrap();
    let fs = BenchFS::connect(&cluster.config()).unwrap();
    // Its chunks on node1 fail to read, naming it; none reads as anything else.
    let e = try_read_file(&fs, "/before").unwrap_err();
    assert_unreachable("a read of chunks on the unpublished member", &e);
    assert!(e.to_string().contains("node1"), "{e}");
    // A file whose record belongs on node1 is not made elsewhere.
    let owned_by_node1 = (0..100)
        .map(|i| format!("/during-{i}"))
        .find(|p| cluster.replicas_of(benchfs::placement::PlacementKey::Metadata(p))[0] == 1)
        .unwrap();
    let e = fs
        .create(&owned_by_node1, 0o644)
        .and_then(|fd| fs.write(fd, b"bytes").and_then(|_| fs.close(fd)))
        .unwrap_err();
    assert_unreachable("a create on the unpublished member", &e);
    // Once it publishes again, the same client finds it: every byte is where it was.
    std::fs::rename(&held, &entry).unwrap();
    assert!(read_file(&fs, "/before") == data);
    let after = pattern(3 * C, 11);
    write_file(&fs, &owned_by_node1, &after);
    assert!(read_file(&cluster.client(), &owned_by_node1) == after);
}

#[test]
fn a_server_that_stopped_answering_costs_one_timeout_then_a_short_handshake_per_call() {
    // Regression, found by a hostile run: `rm` through a mount of a file whose record lay on
    // a stopped server took three whole RPC timeouts (90 s at the default), every time,
    // since each call made a new connection whose handshake waited a timeout too.
    let timeout = Duration::from_secs(6);
    let cluster = Cluster::start(ClusterSpec {
        rpc_timeout_ms: timeout.as_millis() as u64,
        ..ClusterSpec::default()
    });
    let stopped = 0;
    let on_stopped: Vec<String> = (0..200)
        .map(|i| format!("/held-{i}"))
        .filter(|p| {
            cluster.replicas_of(benchfs::placement::PlacementKey::Metadata(p))[0] == stopped
        })
        .take(4)
        .collect();
    assert_eq!(
        on_stopped.len(),
        4,
        "files whose record is on the stopped server"
    );
    let writer = cluster.client();
    for path in &on_stopped {
        write_file(&writer, path, b"kept");
    }
    // Two clients of one process, each connected to the server before it stops.
    let first = cluster.client();
    let other = cluster.client();
    for fs in [&first, &other] {
        fs.stat(&on_stopped[0]).unwrap();
    }
    cluster.signal(stopped, "STOP");
    let timed = |fs: &BenchFS, path: &str| {
        let started = Instant::now();
        let e = fs.stat(path).unwrap_err();
        assert_unreachable(&format!("stat {path} on the stopped server"), &e);
        assert!(e.to_string().contains("node0"), "{e}");
        started.elapsed()
    };
    let waited = timed(&first, &on_stopped[1]);
    assert!(
        waited >= timeout,
        "the first call waits its timeout: {waited:?}"
    );
    // Later calls, of this client or another of the process with a connection made before
    // the server fell silent, ask with a new handshake that fails in about a second.
    let bound = timeout / 2;
    for (fs, path) in [
        (&first, &on_stopped[2]),
        (&other, &on_stopped[3]),
        (&first, &on_stopped[3]),
    ] {
        let waited = timed(fs, path);
        assert!(
            waited < bound,
            "stat {path} waited {waited:?}, not a whole timeout"
        );
    }
    // Back, it is asked again at once and answers.
    cluster.signal(stopped, "CONT");
    for fs in [&first, &other] {
        for path in &on_stopped {
            assert!(read_file(fs, path) == b"kept");
        }
    }
}
