//! Shared memory between a client and servers on one host (`network.shared_memory`, on by
//! default): the lanes UCX chose are shared-memory ones, not TCP, and turning the setting
//! off gives TCP; a same-host server that dies in the middle of a transfer (killed, or
//! killed and left a zombie) fails the call long before the RPC timeout, and a stopped one
//! within it; a client that takes a reply by get after the server gave up on it reads the
//! file's bytes, never another file's. Network-namespace hosts keep TCP: `tests/hosts.rs`
//! checks every lane there.

mod common;

use std::future::Future;
use std::sync::mpsc;
use std::task::Poll;
use std::time::{Duration, Instant};

use benchfs::blocking::BenchFS;
use benchfs::config::ServerConfig;
use common::{is_shared_memory, pattern, Cluster, ClusterSpec};

/// An RPC timeout far above the failure bounds below, so that a call failing within them
/// was failed by UCX's peer-failure detection, not by the timeout.
const LONG_TIMEOUT_MS: u64 = 60_000;
/// How soon a call must fail once its same-host server died. UCX notices the listener
/// connection's socket closing at once, and its shared-memory keepalive (set to one second)
/// backs that up. A liveness bound with room for a loaded machine, not a measurement.
const DEAD_PEER_BOUND: Duration = Duration::from_secs(5);

/// Whether the environment chose UCX's transports itself, which this test cannot overrule.
fn ucx_overridden() -> bool {
    [
        "UCX_TLS",
        "UCX_MM_ERROR_HANDLING",
        "UCX_CMA_MEMORY_INVALIDATE",
        "UCX_RNDV_SCHEME",
        "UCX_MAX_RNDV_LANES",
    ]
    .iter()
    .any(|key| std::env::var_os(key).is_some())
}

fn transports(fs: &BenchFS) -> Vec<(String, Vec<String>)> {
    fs.block_on(fs.client().server_transports())
        .into_iter()
        .map(|(entry, r)| (entry.node_id, r.expect("connect")))
        .collect()
}

/// Two servers, those in `off` restarted without shared memory; `None` (skipped) when the
/// environment chose UCX's transports.
fn two_servers_turning_shared_memory_off(off: &[usize]) -> Option<Cluster> {
    if ucx_overridden() {
        common::skip("shm", "UCX_* transport settings in the environment");
        return None;
    }
    let mut cluster = Cluster::start(ClusterSpec {
        servers: 2,
        ..ClusterSpec::default()
    });
    for &i in off {
        cluster.stop(i);
        cluster.restart_with_env(i, &[("BENCHFS_NETWORK_SHARED_MEMORY", "false")]);
    }
    Some(cluster)
}

#[test]
fn a_client_offers_no_shared_memory_to_servers_that_turned_it_off() {
    let Some(mut cluster) = two_servers_turning_shared_memory_off(&[0, 1]) else {
        return;
    };
    // The client's own configuration has it on, as one given only the registry has.
    let mut config: ServerConfig = cluster.config();
    config.network.shared_memory = true;
    let fs = BenchFS::connect(&config).expect("connect");
    for (server, lanes) in transports(&fs) {
        assert!(
            !lanes.is_empty() && lanes.iter().all(|t| t.starts_with("tcp/")),
            "{server}: lanes {lanes:?} to a server without shared memory, expected only tcp"
        );
    }
    let data = pattern(3 << 20, 11);
    common::files::write_file(&fs, "/tcp-only", &data);
    assert!(common::files::read_file(&fs, "/tcp-only") == data);
    assert!(
        cluster.all_running(),
        "a server died when the client connected"
    );
}

#[test]
fn a_client_with_shared_memory_refuses_a_server_restarted_without_it() {
    if ucx_overridden() {
        common::skip("shm", "UCX_* transport settings in the environment");
        return;
    }
    let mut cluster = Cluster::start(ClusterSpec {
        servers: 2,
        ..ClusterSpec::default()
    });
    let fs = cluster.client();
    assert!(
        transports(&fs)
            .iter()
            .all(|(_, lanes)| lanes.iter().any(|t| is_shared_memory(t))),
        "the client took no shared memory to begin with"
    );
    cluster.stop(1);
    cluster.restart_with_env(1, &[("BENCHFS_NETWORK_SHARED_MEMORY", "false")]);
    let node1 = Cluster::node_id(1);
    for (entry, result) in fs.block_on(fs.client().server_transports()) {
        match (entry.node_id == node1, result) {
            (true, Ok(lanes)) => panic!("{node1} connected with lanes {lanes:?}"),
            (true, Err(e)) => {
                // Named where it listens now (a restart moves it to a new port).
                let message = e.to_string();
                let now_at = format!("{node1}@{}", cluster.addr(1));
                assert!(
                    message.contains(&now_at) && message.contains("shared memory"),
                    "{message}"
                );
            }
            (false, result) => {
                result.unwrap_or_else(|e| panic!("{}: {e}", entry.node_id));
            }
        }
    }
    assert!(
        cluster.all_running(),
        "a server died when the client called it; see {}",
        cluster.log_path(1).display()
    );
}

#[test]
fn servers_with_and_without_shared_memory_call_each_other() {
    let Some(mut cluster) = two_servers_turning_shared_memory_off(&[1]) else {
        return;
    };
    // Files whose chunks lie on one server and records on the other: each server's orphan
    // sweep (every second in test clusters) asks its peer about them.
    let fs = cluster.client();
    let files: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| (format!("/mixed-{i}"), pattern(100_000, i)))
        .collect();
    for (path, data) in &files {
        common::files::write_file(&fs, path, data);
    }
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        cluster.all_running(),
        "a server died when a peer with shared memory called it; see {}",
        cluster.log_path(1).display()
    );
    for (path, data) in &files {
        assert!(common::files::read_file(&fs, path) == *data, "{path}");
    }
}

#[test]
fn same_host_connections_use_shared_memory_unless_turned_off() {
    if ucx_overridden() {
        common::skip("shm", "UCX_* transport settings in the environment");
        return;
    }
    let cluster = Cluster::start(ClusterSpec {
        servers: 2,
        ..ClusterSpec::default()
    });
    let fs = cluster.client();
    for (server, lanes) in transports(&fs) {
        assert!(
            !lanes.is_empty() && lanes.iter().all(|t| is_shared_memory(t)),
            "{server}: lanes {lanes:?}, expected only shared memory (sysv, posix, cma)"
        );
        assert!(
            lanes.iter().any(|t| t == "cma/memory"),
            "{server}: no cma lane for rendezvous in {lanes:?}"
        );
    }
    // Data crosses both ways, eager and by rendezvous, over those lanes.
    let data = pattern(3 << 20, 7);
    common::files::write_file(&fs, "/shm", &data);
    assert!(common::files::read_file(&fs, "/shm") == data);

    let mut config: ServerConfig = cluster.config();
    config.network.shared_memory = false;
    let tcp = BenchFS::connect(&config).expect("connect");
    for (server, lanes) in transports(&tcp) {
        assert!(
            !lanes.is_empty() && lanes.iter().all(|t| t.starts_with("tcp/")),
            "{server}: lanes {lanes:?} with shared_memory = false, expected only tcp"
        );
    }
    assert!(common::files::read_file(&tcp, "/shm") == data);
}

/// Writes 1 MiB blocks to a file spread over every server until a write fails; sends the
/// instant and the error's text once it does.
fn write_until_failure(config: ServerConfig, started: mpsc::Sender<()>) -> (Instant, String) {
    let fs = BenchFS::connect(&config).expect("connect");
    let fd = fs.create("/victim", 0o644).expect("create");
    let block = pattern(1 << 20, 3);
    let mut started = Some(started);
    for round in 0u64.. {
        if let Err(e) = fs.pwrite(fd, &block, (round % 64) << 20) {
            return (Instant::now(), e.to_string());
        }
        if round == 8 {
            started.take().map(|s| s.send(()));
        }
    }
    unreachable!("the loop returns on the first failure")
}

/// Starts two servers, a writer, and hands server 1 to `fault` once data flows; returns
/// how long after the fault the writer's call failed, and its error, which must name
/// server 1 (by node id, or by address where it failed to connect again). The writer uses
/// shared memory as `shared_memory` says (without, its connections are tcp only).
fn fail_mid_transfer(
    spec: ClusterSpec,
    shared_memory: bool,
    fault: impl FnOnce(&mut Cluster),
) -> (Duration, String) {
    let mut cluster = Cluster::start(spec);
    let addr = cluster.addr(1).to_string();
    let mut config = cluster.config();
    config.network.shared_memory = shared_memory;
    let (started, flowing) = mpsc::channel();
    let writer = std::thread::spawn(move || write_until_failure(config, started));
    flowing
        .recv_timeout(Duration::from_secs(60))
        .expect("writes flow");
    let faulted = Instant::now();
    fault(&mut cluster);
    let (failed, error) = writer.join().expect("writer thread");
    assert!(
        error.contains("node1") || error.contains(&addr),
        "error does not name node1 ({addr}): {error}"
    );
    (failed.duration_since(faulted), error)
}

fn long_timeout() -> ClusterSpec {
    ClusterSpec {
        servers: 2,
        chunk_size: 1 << 20,
        rpc_timeout_ms: LONG_TIMEOUT_MS,
        ..ClusterSpec::default()
    }
}

#[test]
fn a_killed_same_host_server_fails_the_call_at_once() {
    let (after, error) = fail_mid_transfer(long_timeout(), true, |cluster| cluster.kill(1));
    assert!(
        after < DEAD_PEER_BOUND,
        "the write failed {after:?} after the kill: {error}"
    );
}

#[test]
fn a_killed_server_fails_a_tcp_write_at_once_and_the_client_lives_on() {
    // Over tcp, rendezvous data goes as Active Message fragments: UCX 1.13's tcp put could
    // abort the writing process when a put's acknowledgement met the closing connection.
    // Several kills, each in the middle of a stream of 1 MiB rendezvous writes.
    for _ in 0..3 {
        let (after, error) = fail_mid_transfer(long_timeout(), false, |cluster| cluster.kill(1));
        assert!(
            after < DEAD_PEER_BOUND,
            "the write failed {after:?} after the kill: {error}"
        );
    }
}

#[test]
fn a_killed_server_left_a_zombie_fails_the_call_at_once() {
    // SIGKILL without reaping: the process is a zombie, its pid still exists (so a pid
    // check would call it alive) but its sockets are closed.
    let (after, error) =
        fail_mid_transfer(long_timeout(), true, |cluster| cluster.signal(1, "KILL"));
    assert!(
        after < DEAD_PEER_BOUND,
        "the write failed {after:?} after the kill: {error}"
    );
}

#[test]
fn a_stopped_same_host_server_fails_the_call_within_the_timeout() {
    let spec = ClusterSpec {
        rpc_timeout_ms: 2000,
        ..long_timeout()
    };
    let timeout = Duration::from_millis(spec.rpc_timeout_ms);
    let (after, error) = fail_mid_transfer(spec, true, |cluster| cluster.signal(1, "STOP"));
    assert!(
        after < timeout + DEAD_PEER_BOUND,
        "the write failed {after:?} after SIGSTOP, timeout {timeout:?}: {error}"
    );
}

#[test]
fn a_long_stopped_server_leaves_its_peers_answering() {
    // Regression (found by a hostile-user run): 15-20 s into a SIGSTOP of one server, the
    // others stopped answering too, until it was resumed. Their orphan sweep's worker had
    // a shared-memory endpoint to the stopped server, whose keepalive UCX 1.13 could not
    // send; UCX then refused to sleep (`ucp_worker_arm` busy) and the progress loop spun
    // without ever yielding, starving the server's serving worker.
    if ucx_overridden() {
        common::skip("stopped peer", "the environment chose UCX's transports");
        return;
    }
    let mut cluster = Cluster::start(ClusterSpec {
        servers: 3,
        replicas: 2,
        orphan_sweep_secs: 10,
        rpc_timeout_ms: 3000,
        chunk_size: 4 << 20,
        ..ClusterSpec::default()
    });
    let fs = cluster.client();
    for i in 0..6 {
        common::files::write_file(&fs, &format!("/f{i}"), &pattern(9_000_000, i));
    }
    // As in the report: one server restarted first, then another stopped.
    cluster.kill(1);
    cluster.restart(1);
    std::thread::sleep(Duration::from_secs(25));
    cluster.signal(0, "STOP");
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_secs(2));
        for (entry, stats) in fs.block_on(fs.client().server_stats()) {
            if entry.node_id != "node0" {
                assert!(
                    stats.is_ok(),
                    "{} stopped answering: {stats:?}",
                    entry.node_id
                );
            }
        }
    }
    cluster.signal(0, "CONT");
}

/// CPU time (user and system) process `pid` has used.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which ends in ')': utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse().unwrap())
        .collect();
    let ticks = clock_ticks();
    Duration::from_millis((fields[0] + fields[1]) * 1000 / ticks)
}

/// Clock ticks per second of /proc's times.
fn clock_ticks() -> u64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn servers_sleep_while_a_blocking_client_sits_idle() {
    // Found by a hostile run: with UCX 1.13, a server's keepalive to a client that made no
    // call for ~20 s (a blocking client progresses its worker only inside calls) kept the
    // server's worker from arming for good: idle servers woke thousands of times a second
    // (5-7% of a core) and answered every client's metadata 2-30x slower.
    if ucx_overridden() {
        return;
    }
    let cluster = Cluster::start(ClusterSpec {
        servers: 3,
        ..Default::default()
    });
    let fs = cluster.client();
    common::files::write_file(&fs, "/f", &pattern(12 << 20, 5));
    std::thread::sleep(Duration::from_secs(25));
    let pids: Vec<u32> = cluster
        .children
        .iter()
        .map(|c| c.as_ref().unwrap().id())
        .collect();
    let before: Vec<Duration> = pids.iter().map(|&p| cpu_time(p)).collect();
    std::thread::sleep(Duration::from_secs(3));
    // CPU time comes in clock ticks (10 ms here), charged to whoever runs at a tick: on a
    // machine busy with other tests an idle server's sweeps were once charged 60 ms in the
    // 3 s; the fault guarded against cost 150-210 ms.
    for (i, (&pid, before)) in pids.iter().zip(before).enumerate() {
        let spent = cpu_time(pid) - before;
        assert!(
            spent < Duration::from_millis(100),
            "server {i} used {spent:?} of CPU in 3 s of idling, its client idle for 25 s"
        );
    }
    drop(fs);
}

#[test]
fn a_client_that_takes_a_reply_after_the_server_gave_up_never_reads_other_files_bytes() {
    // A same-host client reads a server's replies out of the server's memory itself
    // (get). One that stops taking data (stopped, or an async caller busy elsewhere) past
    // the transfer timeout loses its connection, but it may still read the reply's
    // buffer when it runs again: that buffer must not have become another file's.
    if ucx_overridden() {
        common::skip("late reply", "the environment chose UCX's transports");
        return;
    }
    const CHUNK: usize = 1 << 20;
    let spec = ClusterSpec {
        servers: 1,
        chunk_size: CHUNK as u64,
        rpc_timeout_ms: 1000,
        ..ClusterSpec::default()
    };
    let transfer_timeout = Duration::from_millis(2 * spec.rpc_timeout_ms);
    let cluster = Cluster::start(spec);
    let mut config = cluster.config();
    config.network.rpc_timeout = Duration::from_secs(30);
    // No spinning for the reply inside the read's poll: the progress task takes it in.
    config.network.busy_poll = Duration::ZERO;
    let first = pattern(CHUNK, 1);
    let writer = BenchFS::connect(&config).unwrap();
    common::files::write_file(&writer, "/f", &first);
    let lanes = transports(&writer);
    if !lanes
        .iter()
        .all(|(_, lanes)| lanes.iter().any(|t| t.starts_with("cma/")))
    {
        common::skip(
            "late reply",
            &format!("no cross-memory attach lane: {lanes:?}"),
        );
        return;
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let read = runtime.block_on(async {
        use benchfs::api::OpenFlags;
        let fs = benchfs::api::BenchFS::new(config.clone()).await.unwrap();
        let fd = fs.open("/f", OpenFlags::READ).await.unwrap();
        let mut buf = vec![0u8; CHUNK];
        let mut read = Box::pin(fs.pread(fd, &mut buf, 0));
        // The first poll sends the request; the second takes the reply in (the client's
        // progress task runs after the read's own poll), and the read comes for its bytes
        // only at the third.
        for _ in 0..2 {
            let polled = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await;
            assert!(polled.is_pending(), "the read ended early");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Now the caller is away: the server gives up on the transfer, and another client
        // removes the file and writes others, which take the pages the server's pool got
        // back last.
        let config = config.clone();
        std::thread::spawn(move || {
            std::thread::sleep(transfer_timeout + Duration::from_secs(1));
            let other = BenchFS::connect(&config).unwrap();
            other.unlink("/f").unwrap();
            for i in 0..8 {
                common::files::write_file(&other, &format!("/g{i}"), &pattern(CHUNK, 3));
            }
        })
        .join()
        .unwrap();
        let result = read.await;
        result.map(|n| buf[..n].to_vec())
    });
    let log = std::fs::read_to_string(cluster.log_path(0)).unwrap();
    assert!(
        log.contains("buffers_kept=true"),
        "the server did not give up on the transfer:\n{log}"
    );
    match read {
        Ok(got) => assert!(got == first, "a late reply read bytes the file never held"),
        Err(e) => assert!(e.to_string().contains("node0"), "{e}"),
    }
}
