//! Observability against real servers: per-operation requests, errors, bytes and latency
//! in `Stats`; `benchfs stats` as tables and JSON; the Prometheus endpoint, also against
//! junk and idle connections; the store probe on every backend and its refusals; the
//! trace file's RPC spans.

mod common;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use benchfs::blocking::BenchFS;
use benchfs::proto::limits::STORE_PROBE_BYTES_MAX;
use benchfs::proto::ops::{self, Message, OpStats, StatsReply, StoreProbeReply};
use benchfs::proto::OpCode;
use common::cli::benchfs;
use common::files::{errno_of, read_file, stats, write_file, CHUNK};
use common::{pattern, Cluster, ClusterSpec};

/// A cluster of `servers` on `backend` with no orphan sweep, whose questions to peers
/// would add to the counts.
fn spec(servers: usize, backend: &'static str) -> ClusterSpec {
    ClusterSpec {
        servers,
        backend,
        orphan_sweep_secs: 0,
        ..ClusterSpec::default()
    }
}

/// Starts `spec.servers` servers, server `i` with the environment `env(i)` (configuration
/// overrides), and waits until all are published; the log of a server that exits first
/// is the error.
fn start_with_env(
    spec: ClusterSpec,
    env: impl Fn(usize) -> Vec<(String, String)>,
) -> Result<Cluster, String> {
    let servers = spec.servers;
    let mut cluster = Cluster::start(ClusterSpec { servers: 0, ..spec });
    cluster.spec.servers = servers;
    for i in 0..servers {
        let log = std::fs::File::create(cluster.log_path(i)).unwrap();
        let child = cluster
            .server_command(&Cluster::node_id(i), &cluster.data_dir(i))
            .envs(env(i))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn benchfsd");
        cluster.children.push(Some(child));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let published = benchfs::registry::read(&cluster.registry()).map_or(0, |e| e.len());
        if published >= servers {
            return Ok(cluster);
        }
        for i in 0..servers {
            if !cluster.is_running(i) {
                let log = std::fs::read_to_string(cluster.log_path(i)).unwrap_or_default();
                return Err(format!("server {i} exited before publishing:\n{log}"));
            }
        }
        if Instant::now() > deadline {
            return Err("servers did not come up".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One environment variable for every server.
fn env1(key: &str, value: &str) -> Vec<(String, String)> {
    vec![(key.to_string(), value.to_string())]
}

/// The servers' entries for `op`, added up; zeros where no server has seen it.
fn total(all: &[StatsReply], op: OpCode) -> OpStats {
    let mut sum = OpStats {
        op,
        requests: 0,
        errors: 0,
        bytes_in: 0,
        bytes_out: 0,
        latency_p50_ns: 0,
        latency_p90_ns: 0,
        latency_p99_ns: 0,
        latency_p999_ns: 0,
        latency_max_ns: 0,
        latency_sum_ns: 0,
    };
    for s in all.iter().filter_map(|s| s.op(op)) {
        sum.requests += s.requests;
        sum.errors += s.errors;
        sum.bytes_in += s.bytes_in;
        sum.bytes_out += s.bytes_out;
        sum.latency_sum_ns += s.latency_sum_ns;
        sum.latency_max_ns = sum.latency_max_ns.max(s.latency_max_ns);
    }
    sum
}

/// (requests, errors, bytes in, bytes out) of `op` between two snapshots of every server.
fn delta(before: &[StatsReply], after: &[StatsReply], op: OpCode) -> (u64, u64, u64, u64) {
    let (b, a) = (total(before, op), total(after, op));
    (
        a.requests - b.requests,
        a.errors - b.errors,
        a.bytes_in - b.bytes_in,
        a.bytes_out - b.bytes_out,
    )
}

/// Every server's counters once `done` holds of them. A server counts a request just
/// after its reply went, so the reply of the last one can reach the client first.
fn stats_once(fs: &BenchFS, done: impl Fn(&[StatsReply]) -> bool) -> Vec<StatsReply> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all = stats(fs);
        if done(&all) || Instant::now() > deadline {
            return all;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A latency summary that is consistent with itself and not zero.
#[track_caller]
fn check_latency(s: &OpStats) {
    let q = [
        s.latency_p50_ns,
        s.latency_p90_ns,
        s.latency_p99_ns,
        s.latency_p999_ns,
    ];
    assert!(q[0] > 0, "{s:?}");
    assert!(q.windows(2).all(|w| w[0] <= w[1]), "{s:?}");
    // Quantiles never exceed the exact maximum.
    assert!(q[3] <= s.latency_max_ns, "{s:?}");
    assert!(s.latency_sum_ns >= s.latency_max_ns, "{s:?}");
    assert!(s.latency_sum_ns >= s.requests, "{s:?}");
}

#[test]
fn stats_count_operations_bytes_errors_and_latency() {
    const FILES: usize = 10;
    // Two chunks of 64 KiB each: one whole, one part.
    const LEN: usize = 100_000;
    let cluster = Cluster::start(spec(2, "memory"));
    let fs = cluster.client();
    let before = stats(&fs);
    for i in 0..FILES {
        write_file(&fs, &format!("/f{i}"), &pattern(LEN, i as u64));
    }
    for i in 0..FILES {
        assert!(read_file(&fs, &format!("/f{i}")) == pattern(LEN, i as u64));
    }
    assert_eq!(errno_of(fs.stat("/missing")), libc::ENOENT);
    let after = stats_once(&fs, |all| {
        delta(&before, all, OpCode::MetadataLookup).1 >= 1
    });
    let bytes = (FILES * LEN) as u64;
    assert_eq!(
        delta(&before, &after, OpCode::MetadataCreateFile),
        (FILES as u64, 0, 0, 0)
    );
    assert_eq!(
        delta(&before, &after, OpCode::WriteChunk),
        (2 * FILES as u64, 0, bytes, 0)
    );
    let (reads, read_errors, read_in, read_out) = delta(&before, &after, OpCode::ReadChunk);
    assert!(reads >= 2 * FILES as u64, "{reads} chunk reads");
    assert_eq!((read_errors, read_in, read_out), (0, 0, bytes));
    let (lookups, lookup_errors, _, _) = delta(&before, &after, OpCode::MetadataLookup);
    assert_eq!(lookup_errors, 1, "the lookup of /missing, out of {lookups}");
    // The first snapshot's own Stats requests, one per server, were counted.
    assert!(delta(&before, &after, OpCode::Stats).0 >= 2);
    for s in &after {
        assert!(s.queue_depth >= 1, "this Stats request is in flight");
        assert!(s.queue_depth_max >= s.queue_depth);
        assert!(s.ops.len() <= OpCode::ALL.len());
        for op in &s.ops {
            assert!(op.errors <= op.requests, "{op:?}");
            check_latency(op);
        }
    }
}

/// The output of `benchfs <args> --dir <the cluster's directory>`.
fn cli(cluster: &Cluster, args: &[&str]) -> common::cli::Run {
    let mut all = args.to_vec();
    all.extend(["--dir", cluster.dir.path().to_str().unwrap()]);
    benchfs(&all, &[])
}

/// `write_chunk`'s requests per server in `benchfs stats` tables: the per-server
/// tables open with `<node> (<address>)` and list one operation per row.
fn table_writes(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut server = None;
    for line in text.lines() {
        // A server's header: `node0 (127.0.0.1:40777) over sysv/memory, cma/memory`.
        if !line.starts_with(' ') && line.contains(") over ") {
            server = line.split_whitespace().next().map(str::to_string);
        }
        let cells: Vec<&str> = line.split_whitespace().collect();
        if let (Some(s), ["write_chunk", requests, ..]) = (&server, cells.as_slice()) {
            out.insert(s.clone(), requests.parse().unwrap());
        }
    }
    out
}

#[test]
fn benchfs_stats_tables_and_json_agree_with_the_servers() {
    let mut cluster = Cluster::start(ClusterSpec {
        rpc_timeout_ms: common::RPC_TIMEOUT.as_millis() as u64,
        ..spec(2, "memory")
    });
    let fs = cluster.client();
    // Twelve files of two chunks: chunks go where their file's inode number hashes, which
    // differs from run to run, and with six one server got none about once in 32 runs.
    let files = 12;
    for i in 0..files {
        write_file(&fs, &format!("/s{i}"), &pattern(70_000, i));
    }
    let json: serde_json::Value =
        serde_json::from_str(&cli(&cluster, &["stats", "--json"]).ok()).unwrap();
    let tables = cli(&cluster, &["stats"]).ok();
    let by_config = cli(
        &cluster,
        &[
            "stats",
            "--json",
            "--config",
            cluster.config_path.to_str().unwrap(),
        ],
    )
    .ok();
    assert!(serde_json::from_str::<serde_json::Value>(&by_config).is_ok());
    let rpc = stats(&fs);
    let servers = json["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 2);
    let mut json_writes = BTreeMap::new();
    for (entry, s) in servers.iter().zip(&rpc) {
        let name = entry["server"].as_str().unwrap().to_string();
        assert_eq!(entry["records"], s.metadata_records, "{name}");
        assert_eq!(entry["chunks"], s.chunks, "{name}");
        assert_eq!(entry["used_bytes"], s.used_bytes, "{name}");
        let ops = entry["ops"].as_array().unwrap();
        let write = ops.iter().find(|o| o["op"] == "write_chunk").unwrap();
        let own = s.op(OpCode::WriteChunk).unwrap();
        assert_eq!(write["requests"], own.requests, "{name}");
        assert_eq!(write["bytes_in"], own.bytes_in, "{name}");
        assert!(write["latency_ns"]["p50"].as_u64().unwrap() > 0);
        // The transports of this client's connection, as UCX named its lanes.
        let transports = entry["transports"].as_array().unwrap();
        assert!(
            !transports.is_empty() && transports.iter().all(|t| t.as_str().unwrap().contains('/')),
            "{name}: {transports:?}"
        );
        // The server's row of the first table: name, address, records, chunks.
        let row: Vec<&str> = tables
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cells| cells.first() == Some(&name.as_str()))
            .unwrap();
        assert_eq!(row[2], s.metadata_records.to_string(), "{tables}");
        assert_eq!(row[3], s.chunks.to_string(), "{tables}");
        json_writes.insert(name, own.requests);
    }
    assert_eq!(
        json_writes.values().sum::<u64>(),
        2 * files,
        "{files} files of two chunks"
    );
    assert_eq!(table_writes(&tables), json_writes, "{tables}");

    // A server that does not answer: reported, and the command fails.
    cluster.kill(1);
    let run = cli(&cluster, &["stats", "--json"]);
    assert!(!run.success);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(json["servers"][1]["error"].is_string(), "{}", run.stdout);
    assert!(json["servers"][0]["ops"].is_array(), "{}", run.stdout);
    assert!(
        run.stderr.contains("1 of 2 servers did not answer"),
        "{}",
        run.stderr
    );
}

/// The address server `i` serves metrics on, from the file it writes.
fn metrics_addr(cluster: &Cluster, i: usize) -> SocketAddr {
    let text = std::fs::read_to_string(cluster.data_dir(i).join("metrics.addr")).unwrap();
    text.trim().parse().unwrap()
}

/// Sends `request` and reads the response until the server closes; what arrived (a
/// reset after a refusal is fine: the test checks what it needs).
fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let _ = stream.write_all(request);
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn get(addr: SocketAddr, path: &str) -> String {
    http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
    )
}

/// The samples of a Prometheus text body: `name{labels}` to value.
fn samples(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').unwrap();
            (key.to_string(), value.parse().unwrap())
        })
        .collect()
}

/// The body of a successful scrape, checking its status line and content type.
#[track_caller]
fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let response = get(addr, "/metrics");
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    samples(body)
}

/// Whether the server closed `stream` (end of file or reset) within the read timeout.
fn closed_by_server(mut stream: TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn prometheus_endpoint_counts_and_survives_junk_and_idle_connections() {
    let mut cluster = start_with_env(spec(1, "memory"), |_| {
        env1("BENCHFS_NETWORK_METRICS_ADDR", "127.0.0.1:0")
    })
    .unwrap();
    let addr = metrics_addr(&cluster, 0);
    let fs = cluster.client();
    for i in 0..5 {
        write_file(&fs, &format!("/m{i}"), &pattern(70_000, i));
    }
    let _ = fs.stat("/missing");
    let rpc = stats_once(&fs, |all| total(all, OpCode::MetadataLookup).errors >= 1);
    let s = &rpc[0];
    let m = scrape(addr);
    let write = s.op(OpCode::WriteChunk).unwrap();
    let op = |name: &str| m[&format!("{name}{{op=\"write_chunk\"}}")];
    assert_eq!(write.requests, 10);
    assert_eq!(op("benchfs_requests_total"), write.requests as f64);
    assert_eq!(op("benchfs_errors_total"), 0.0);
    assert_eq!(op("benchfs_bytes_in_total"), 350_000.0);
    assert_eq!(op("benchfs_request_duration_seconds_count"), 10.0);
    assert!(op("benchfs_request_duration_seconds_sum") > 0.0);
    assert!(m["benchfs_request_duration_seconds{op=\"write_chunk\",quantile=\"0.99\"}"] > 0.0);
    assert_eq!(m["benchfs_errors_total{op=\"metadata_lookup\"}"], 1.0);
    assert_eq!(m["benchfs_metadata_records"], s.metadata_records as f64);
    assert_eq!(m["benchfs_store_used_bytes"], s.used_bytes as f64);
    assert_eq!(m["benchfs_store_chunks"], s.chunks as f64);
    assert!(m["benchfs_queue_depth_max"] >= 1.0);
    assert_eq!(m["benchfs_info{node_id=\"node0\"}"], 1.0);

    // Other paths and methods, and junk.
    assert!(get(addr, "/").starts_with("HTTP/1.1 404"));
    assert!(get(addr, "/metrics/x").starts_with("HTTP/1.1 404"));
    assert!(http(addr, b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    assert!(http(addr, b"\x00\x01\xffjunk\r\n\r\n").starts_with("HTTP/1.1 400"));
    let _ = http(addr, &vec![0xab; 64 * 1024]);
    let _ = http(addr, b"");

    // More idle and half-sent connections than the endpoint serves at once: a scrape still
    // gets its answer (once the idle ones time out), and each idle one is closed.
    let idle: Vec<TcpStream> = (0..12)
        .map(|i| {
            let mut stream = TcpStream::connect(addr).unwrap();
            if i % 2 == 0 {
                stream.write_all(b"GET /met").unwrap();
            }
            stream
        })
        .collect();
    let again = scrape(addr);
    assert_eq!(
        again[&"benchfs_requests_total{op=\"write_chunk\"}".to_string()],
        10.0
    );
    for stream in idle {
        assert!(closed_by_server(stream), "an idle connection was left open");
    }
    assert!(cluster.is_running(0), "the server survived");
    assert_eq!(stats(&fs)[0].op(OpCode::WriteChunk).unwrap().requests, 10);
    assert!(scrape(addr).contains_key("benchfs_queue_depth"));
}

/// A store probe of server 0.
fn probe(fs: &BenchFS, bytes: u64, block: u32) -> Result<StoreProbeReply, i32> {
    fs.block_on(fs.client().probe_store(0, bytes, block))
        .map_err(|e| e.errno())
}

/// Probes the store of a one-server cluster on `backend`; false when the backend is not
/// available here.
fn probe_backend(backend: &'static str) -> bool {
    let cluster = match Cluster::try_start(spec(1, backend)) {
        Ok(c) => c,
        Err(e) if backend == "iouring" => {
            common::skip("store probe on iouring", &e);
            return false;
        }
        Err(e) => panic!("{e}"),
    };
    let fs = cluster.client();
    write_file(&fs, "/kept", &pattern(100_000, 1));
    let before = stats(&fs).remove(0);
    let chunk = cluster.spec.chunk_size;
    // Blocks that divide the chunk, and blocks that do not (split at chunk ends).
    for (bytes, block) in [(8 << 20, chunk as u32), (3 << 20, 10_000), (5, 4096)] {
        let r = probe(&fs, bytes, block).unwrap_or_else(|e| panic!("{backend}: errno {e}"));
        assert_eq!(r.bytes, bytes, "{backend}");
        assert!(r.write_ns > 0 && r.read_ns > 0, "{backend}: {r:?}");
    }
    let bad = [
        (0, 4096),
        (STORE_PROBE_BYTES_MAX + 1, 4096),
        (1 << 20, 0),
        (1 << 20, chunk as u32 + 1),
    ];
    for (bytes, block) in bad {
        assert_eq!(
            probe(&fs, bytes, block),
            Err(libc::EINVAL),
            "{bytes} by {block}"
        );
    }
    let after = stats_once(&fs, |all| total(all, OpCode::StoreProbe).requests >= 7);
    let after = &after[0];
    assert_eq!(
        (after.chunks, after.used_bytes),
        (before.chunks, before.used_bytes)
    );
    let probes = after.op(OpCode::StoreProbe).unwrap();
    assert_eq!((probes.requests, probes.errors), (7, 4), "{backend}");
    assert!(read_file(&fs, "/kept") == pattern(100_000, 1), "{backend}");
    true
}

#[test]
fn store_probe_measures_every_backend_and_removes_its_data() {
    for backend in ["memory", "file", "iouring"] {
        probe_backend(backend);
    }
}

#[test]
fn store_probe_refuses_what_the_store_cannot_hold_and_a_bad_server() {
    let cluster = start_with_env(spec(1, "memory"), |_| {
        env1("BENCHFS_STORAGE_CAPACITY", &(1 << 20).to_string())
    })
    .unwrap();
    let fs = cluster.client();
    write_file(&fs, "/f", &pattern(300_000, 2));
    assert_eq!(probe(&fs, 1 << 20, 4096), Err(libc::ENOSPC));
    assert_eq!(probe(&fs, 512 << 10, 4096).map(|r| r.bytes), Ok(512 << 10));
    let client = fs.client();
    let no_server = fs.block_on(client.probe_store(5, 4096, 4096));
    assert_eq!(no_server.map_err(|e| e.errno()).err(), Some(libc::EINVAL));
    // Two at once: each is measured or refused as busy, and neither leaves data behind.
    let before = stats(&fs).remove(0);
    let (a, b) = fs.block_on(futures_util::future::join(
        client.probe_store(0, 256 << 10, 4096),
        client.probe_store(0, 256 << 10, 4096),
    ));
    for r in [a, b] {
        if let Err(e) = r {
            assert_eq!(e.errno(), libc::EAGAIN, "{e}");
        }
    }
    let after = stats(&fs).remove(0);
    assert_eq!(
        (after.chunks, after.used_bytes),
        (before.chunks, before.used_bytes)
    );
}

#[test]
fn the_trace_file_records_every_rpc_span() {
    let traces = tempfile::tempdir_in(common::test_root()).unwrap();
    let trace_path = traces.path().join("trace.log");
    let cluster = start_with_env(spec(1, "memory"), |_| {
        env1("BENCHFS_NODE_TRACE_FILE", trace_path.to_str().unwrap())
    })
    .unwrap();
    let fs = cluster.client();
    write_file(&fs, "/t", &pattern(70_000, 3));
    let _ = fs.stat("/missing");
    let has = |text: &str, op: &str, more: &str| {
        text.lines().any(|l| {
            l.contains("rpc{") && l.contains(op) && l.contains("latency_ns=") && l.contains(more)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(&trace_path).unwrap_or_default();
        let done = has(&text, "write_chunk", "request_bytes=")
            && has(&text, "metadata_lookup", "NotFound");
        if done || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // A write of the first chunk: its body and a whole chunk.
    let body = ops::ChunkWrite {
        io: ops::ChunkIo {
            file_id: 0,
            index: 0,
            offset: 0,
            len: 0,
        },
        file_birth_ns: 0,
        chunk_held: 0,
        append_cut_gen: None,
        hole_before: false,
    };
    let request_bytes = format!("request_bytes={}", body.to_bytes().len() as u64 + CHUNK);
    assert!(has(&text, "write_chunk", &request_bytes), "{text}");
    assert!(has(&text, "metadata_lookup", "status=NotFound"), "{text}");
    // The spans go to the trace file only: the log (at debug) has none.
    let log = std::fs::read_to_string(cluster.data_dir(0).join("benchfs.log")).unwrap();
    assert!(!log.contains("latency_ns="), "{log}");
}
