//! The RPC layer against real `benchfsd` processes over real UCX on loopback: every
//! operation, payloads around the rendezvous threshold, many calls in flight on one
//! connection, a server killed and restarted, and malformed frames from a raw UCX peer.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use benchfs::api::OpenFlags;
use benchfs::client::rpc::{ClientOptions, Connection, RpcClient};
use benchfs::client::rpc::{OutPayload, RpcError, REPLY_AM_ID, REQUEST_AM_ID};
use benchfs::config::ServerConfig;
use benchfs_proto::frame::{BODY_LEN_MAX, FLAG_REPLY, MAGIC, PAYLOAD_LEN_MAX, VERSION};
use benchfs_proto::meta::{EntryKind, SizeUpdate};
use benchfs_proto::ops::{self, ChunkIo, Empty, HelloRequest, RemoteBuffer};
use benchfs_proto::{Frame, Message, OpCode, Status};
use benchfs_ucx::{AmProto, AmStream, Context, Endpoint, Features, Listener, Worker};
use common::{pattern, Cluster, ClusterSpec};
use futures_util::future::join_all;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Chunk size of every test cluster.
const CHUNK: u64 = 4 << 20;
/// Payloads above this go by rendezvous, on both sides.
const THRESHOLD: usize = 32 * 1024;
/// RPC timeout of the servers and of the test clients.
const RPC_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a failing call may take: the RPC timeout plus a generous margin. A liveness
/// bound on error paths, not a performance assertion.
const FAIL_BOUND: Duration = Duration::from_millis(1500 + 5000);
/// Safety net: a test that hangs fails here instead of stalling the whole run.
const TEST_DEADLINE: Duration = Duration::from_secs(50);

fn spec(servers: usize) -> ClusterSpec {
    ClusterSpec {
        servers,
        backend: "memory",
        chunk_size: CHUNK,
        replicas: 1,
        rpc_timeout_ms: RPC_TIMEOUT.as_millis() as u64,
        rdma_threshold: THRESHOLD as u64,
    }
}

/// A current-thread runtime and a `LocalSet`, kept across `block_on` calls so that a
/// client's progress tasks outlive one call (the property test needs that).
struct Rt {
    runtime: tokio::runtime::Runtime,
    local: tokio::task::LocalSet,
}

impl Rt {
    fn new() -> Rt {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Rt {
            runtime,
            local: tokio::task::LocalSet::new(),
        }
    }

    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.local
            .block_on(&self.runtime, async {
                tokio::time::timeout(TEST_DEADLINE, future).await
            })
            .expect("the test hung: an RPC neither completed nor failed")
    }
}

/// A new RPC client presenting `secret`; call inside `Rt::block_on`.
fn rpc_client(secret: &[u8]) -> Rc<RpcClient> {
    let context = Context::new(Features::ALL).unwrap();
    let options = ClientOptions {
        rpc_timeout: RPC_TIMEOUT,
        rdma_threshold: THRESHOLD,
        busy_poll: Duration::from_micros(50),
        inflight_max: 1024,
        secret: secret.to_vec(),
        name: "rpc-tests".into(),
    };
    RpcClient::start(&context, options).unwrap()
}

/// The status of a call that must fail with one.
fn status_of<T: std::fmt::Debug>(result: Result<T, RpcError>) -> Status {
    match result {
        Err(RpcError::Status { status, .. }) => status,
        other => panic!("expected an error status, got {other:?}"),
    }
}

fn chunk_io(file_id: u64, index: u64, offset: u64, len: usize) -> ChunkIo {
    ChunkIo {
        file_id,
        index,
        offset,
        len: len as u64,
        remote: None,
    }
}

/// Writes `data` at `offset` of a chunk and checks the reply.
async fn write(conn: &Connection, file_id: u64, index: u64, offset: u64, data: Vec<u8>) {
    let len = data.len();
    let r = conn
        .call_with::<ops::WriteChunk>(&chunk_io(file_id, index, offset, len), data)
        .await
        .unwrap();
    assert_eq!(r.reply.len, len as u64);
    assert!(r.payload.is_empty());
}

/// Reads up to `len` bytes at `offset` of a chunk; checks the reply's length matches the data.
async fn read(conn: &Connection, file_id: u64, index: u64, offset: u64, len: usize) -> Vec<u8> {
    let r = conn
        .call_with::<ops::ReadChunk>(&chunk_io(file_id, index, offset, len), Vec::new())
        .await
        .unwrap();
    assert_eq!(r.reply.len, r.payload.len() as u64);
    r.payload
}

async fn stats(conn: &Connection) -> ops::StatsReply {
    conn.call::<ops::Stats>(&Empty).await.unwrap()
}

/// A server that still works: a ping and a chunk write and read, on `conn`.
async fn assert_serves(conn: &Connection, seed: u64) {
    conn.call::<ops::Ping>(&Empty).await.unwrap();
    let data = pattern(THRESHOLD + 7, seed);
    write(conn, 0xfeed, seed, 0, data.clone()).await;
    assert!(
        read(conn, 0xfeed, seed, 0, data.len()).await == data,
        "read back differs"
    );
}

#[test]
fn every_operation_round_trips() {
    let cluster = Cluster::start(spec(1));
    let addr = cluster.addr(0);
    Rt::new().block_on(async {
        let client = rpc_client(b"");
        let conn = client.connect(addr).await.unwrap();

        // Hello: done by connect, and again by hand; a wrong secret is refused.
        let hello = conn.hello().unwrap().clone();
        assert_eq!(
            (
                hello.node_id.as_str(),
                hello.chunk_size,
                hello.rdma_threshold
            ),
            ("node0", CHUNK, THRESHOLD as u64)
        );
        let again = conn
            .call::<ops::Hello>(&HelloRequest {
                client: "again".into(),
                secret: Vec::new(),
            })
            .await
            .unwrap();
        assert_eq!(again, hello);
        let wrong = conn
            .call::<ops::Hello>(&HelloRequest {
                client: "intruder".into(),
                secret: b"guess".to_vec(),
            })
            .await;
        assert_eq!(status_of(wrong), Status::PermissionDenied);

        // Ping, without and with a payload (eager and rendezvous) that the server discards.
        conn.call::<ops::Ping>(&Empty).await.unwrap();
        for len in [100, THRESHOLD + 1] {
            let r = conn
                .call_with::<ops::Ping>(&Empty, pattern(len, 1))
                .await
                .unwrap();
            assert!(r.payload.is_empty());
        }
        let before = stats(&conn).await;
        assert_eq!(
            (
                before.metadata_records,
                before.chunks,
                before.used_bytes,
                before.malformed
            ),
            (0, 0, 0, 0)
        );
        assert_eq!(before.capacity_bytes, 0, "the memory store is unbounded");

        // Metadata records.
        let create = |path: &str, mode| ops::CreateRequest {
            path: path.into(),
            mode,
        };
        let lookup = |path: &str| ops::PathRequest { path: path.into() };
        let dir = conn
            .call::<ops::MetadataCreateDir>(&create("/d", 0o755))
            .await
            .unwrap()
            .meta;
        assert_eq!(
            (dir.kind, dir.mode, dir.size),
            (EntryKind::Directory, 0o755, 0)
        );
        let file = conn
            .call::<ops::MetadataCreateFile>(&create("/d/f", 0o640))
            .await
            .unwrap()
            .meta;
        assert_eq!(
            (file.kind, file.mode, file.size, file.chunk_size),
            (EntryKind::File, 0o640, 0, CHUNK)
        );
        assert_ne!(file.file_id, dir.file_id);
        assert_eq!(
            status_of(
                conn.call::<ops::MetadataCreateFile>(&create("/d/f", 0o600))
                    .await
            ),
            Status::Exists
        );
        assert_eq!(
            status_of(
                conn.call::<ops::MetadataCreateDir>(&create("/d", 0o700))
                    .await
            ),
            Status::Exists
        );
        assert_eq!(
            conn.call::<ops::MetadataLookup>(&lookup("/d/f"))
                .await
                .unwrap()
                .meta,
            file
        );
        assert_eq!(
            conn.call::<ops::MetadataLookup>(&lookup("/d"))
                .await
                .unwrap()
                .meta,
            dir
        );
        assert_eq!(
            status_of(conn.call::<ops::MetadataLookup>(&lookup("/missing")).await),
            Status::NotFound
        );

        // Size updates: grow-only never shrinks; exact sets.
        let size = |size, how| ops::UpdateSizeRequest {
            path: "/d/f".into(),
            size,
            how,
        };
        assert_eq!(
            conn.call::<ops::UpdateSize>(&size(100, SizeUpdate::AtLeast))
                .await
                .unwrap()
                .meta
                .size,
            100
        );
        assert_eq!(
            conn.call::<ops::UpdateSize>(&size(50, SizeUpdate::AtLeast))
                .await
                .unwrap()
                .meta
                .size,
            100
        );
        assert_eq!(
            conn.call::<ops::UpdateSize>(&size(10, SizeUpdate::Exact))
                .await
                .unwrap()
                .meta
                .size,
            10
        );
        assert_eq!(
            conn.call::<ops::MetadataLookup>(&lookup("/d/f"))
                .await
                .unwrap()
                .meta
                .size,
            10
        );
        let on_dir = ops::UpdateSizeRequest {
            path: "/d".into(),
            size: 1,
            how: SizeUpdate::Exact,
        };
        assert_eq!(
            status_of(conn.call::<ops::UpdateSize>(&on_dir).await),
            Status::IsDir
        );

        // Insert (rename's destination) and delete, with and without the expected kind.
        let insert = |exclusive| ops::InsertRequest {
            path: "/d/g".into(),
            meta: file,
            exclusive,
        };
        conn.call::<ops::MetadataInsert>(&insert(true))
            .await
            .unwrap();
        assert_eq!(
            status_of(conn.call::<ops::MetadataInsert>(&insert(true)).await),
            Status::Exists
        );
        conn.call::<ops::MetadataInsert>(&insert(false))
            .await
            .unwrap();
        assert_eq!(
            conn.call::<ops::MetadataLookup>(&lookup("/d/g"))
                .await
                .unwrap()
                .meta
                .file_id,
            file.file_id
        );
        let delete = |path: &str, expect| ops::DeleteRequest {
            path: path.into(),
            expect,
        };
        assert_eq!(
            status_of(
                conn.call::<ops::MetadataDelete>(&delete("/d/g", Some(EntryKind::Directory)))
                    .await
            ),
            Status::NotDir
        );
        assert_eq!(
            status_of(
                conn.call::<ops::MetadataDelete>(&delete("/d", Some(EntryKind::File)))
                    .await
            ),
            Status::IsDir
        );
        let deleted = conn
            .call::<ops::MetadataDelete>(&delete("/d/g", Some(EntryKind::File)))
            .await
            .unwrap()
            .meta;
        assert_eq!(deleted.file_id, file.file_id);
        assert_eq!(
            status_of(conn.call::<ops::MetadataLookup>(&lookup("/d/g")).await),
            Status::NotFound
        );
        assert_eq!(
            status_of(
                conn.call::<ops::MetadataDelete>(&delete("/d/g", None))
                    .await
            ),
            Status::NotFound
        );
        assert_eq!(stats(&conn).await.metadata_records, 2);

        // Readdir, three entries a page, resuming after the last name of each page.
        let mut names: Vec<String> = (0..10).map(|i| format!("e{i:02}")).collect();
        for name in &names {
            conn.call::<ops::MetadataCreateFile>(&create(&format!("/d/{name}"), 0o644))
                .await
                .unwrap();
        }
        names.push("f".into());
        let mut listed = Vec::new();
        let mut pages = Vec::new();
        let mut after = None;
        loop {
            let req = ops::ReaddirRequest {
                dir: "/d".into(),
                after: after.take(),
                limit: 3,
            };
            let page = conn.call::<ops::Readdir>(&req).await.unwrap();
            pages.push(page.entries.len());
            after = page.entries.last().map(|(name, _)| name.clone());
            listed.extend(page.entries);
            if page.done {
                break;
            }
            assert!(pages.len() < 10, "readdir never said done");
        }
        assert_eq!(pages, [3, 3, 3, 2]);
        assert_eq!(
            listed.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
            names
        );
        assert_eq!(listed.last().unwrap().1.file_id, file.file_id);
        let root = conn
            .call::<ops::Readdir>(&ops::ReaddirRequest {
                dir: "/".into(),
                after: None,
                limit: 0,
            })
            .await
            .unwrap();
        assert_eq!(
            (root.entries.len(), root.done),
            (1, true),
            "limit 0 is served as 1; / holds only d"
        );
        assert_eq!(root.entries[0].0, "d");
        assert_eq!(stats(&conn).await.metadata_records, 12);

        // Chunks: write, read (short at the chunk's end, empty when absent), truncate.
        let id = file.file_id;
        let first = pattern(100, 2);
        let second = pattern(50, 3);
        write(&conn, id, 0, 0, first.clone()).await;
        write(&conn, id, 1, 1000, second.clone()).await;
        assert_eq!(read(&conn, id, 0, 0, 100).await, first);
        assert_eq!(
            read(&conn, id, 0, 0, 4096).await,
            first,
            "a read stops at the chunk's end"
        );
        assert_eq!(read(&conn, id, 0, 30, 20).await, first[30..50]);
        let hole_then_data = read(&conn, id, 1, 0, 1050).await;
        assert!(hole_then_data[..1000].iter().all(|&b| b == 0));
        assert_eq!(hole_then_data[1000..], second);
        assert!(
            read(&conn, id, 7, 0, 100).await.is_empty(),
            "an absent chunk reads empty"
        );
        let s = stats(&conn).await;
        assert_eq!((s.chunks, s.used_bytes), (2, 1150));

        let truncate = |index, len| ops::TruncateChunkRequest {
            file_id: id,
            index,
            len,
        };
        conn.call::<ops::TruncateChunk>(&truncate(0, 40))
            .await
            .unwrap();
        assert_eq!(read(&conn, id, 0, 0, 100).await, first[..40]);
        conn.call::<ops::TruncateChunk>(&truncate(0, 60))
            .await
            .unwrap();
        let extended = read(&conn, id, 0, 0, 100).await;
        assert_eq!((&extended[..40], extended.len()), (&first[..40], 60));
        assert!(
            extended[40..].iter().all(|&b| b == 0),
            "an extended chunk reads zeros"
        );
        assert_eq!(
            status_of(
                conn.call::<ops::TruncateChunk>(&truncate(0, CHUNK + 1))
                    .await
            ),
            Status::InvalidArgument
        );
        assert_eq!(stats(&conn).await.used_bytes, 60 + 1050);

        conn.call::<ops::Fsync>(&Empty).await.unwrap();

        let remove = ops::RemoveChunksRequest { file_id: id };
        assert_eq!(
            conn.call::<ops::RemoveChunks>(&remove).await.unwrap().count,
            2
        );
        assert_eq!(
            conn.call::<ops::RemoveChunks>(&remove).await.unwrap().count,
            0
        );
        assert!(read(&conn, id, 0, 0, 100).await.is_empty());
        let after = stats(&conn).await;
        assert_eq!(
            (after.chunks, after.used_bytes, after.metadata_records),
            (0, 0, 12)
        );
        assert!(after.requests > before.requests + 40, "{after:?}");
        assert_eq!(after.malformed, 0, "no request here was malformed");
    });
}

#[test]
fn handshake_checks_the_job_secret() {
    let secrets = tempfile::tempdir_in(common::test_root()).unwrap();
    let secret_file = secrets.path().join("secret");
    std::fs::write(&secret_file, b"job-42-secret").unwrap();
    let cluster = Cluster::start_with_args(
        spec(1),
        &["--secret-file".into(), secret_file.display().to_string()],
    );
    let addr = cluster.addr(0);
    Rt::new().block_on(async {
        for wrong in [&b""[..], b"job-42-secreT", b"job-42-secret\n"] {
            let refused = rpc_client(wrong).connect(addr).await;
            assert_eq!(
                status_of(refused),
                Status::PermissionDenied,
                "secret {wrong:?}"
            );
        }
        let conn = rpc_client(b"job-42-secret").connect(addr).await.unwrap();
        assert_serves(&conn, 1).await;

        // A peer that skipped the handshake could create files on a server with a secret:
        // every request before a successful Hello must be refused.
        let raw = RawPeer::connect(addr);
        let body = ops::CreateRequest {
            path: "/sneaky".into(),
            mode: 0o644,
        }
        .to_bytes();
        raw.send(
            request(OpCode::MetadataCreateFile, 7, &body, 0),
            Vec::new(),
            AmProto::Eager,
        )
        .await;
        let (frame, _) = raw
            .reply(7, FAIL_BOUND)
            .await
            .expect("an answer to the request");
        assert_eq!(frame.status, Status::PermissionDenied.to_wire());
        let lookup = conn
            .call::<ops::MetadataLookup>(&ops::PathRequest {
                path: "/sneaky".into(),
            })
            .await;
        assert_eq!(status_of(lookup), Status::NotFound, "nothing was created");
    });
}

#[test]
fn payloads_around_the_rendezvous_threshold_round_trip() {
    let cluster = Cluster::start(spec(1));
    let addr = cluster.addr(0);
    Rt::new().block_on(async {
        let conn = rpc_client(b"").connect(addr).await.unwrap();
        let sizes = [
            1,
            THRESHOLD - 1,
            THRESHOLD,
            THRESHOLD + 1,
            1 << 20,
            CHUNK as usize,
        ];
        for (index, &len) in sizes.iter().enumerate() {
            let data = pattern(len, index as u64 + 10);
            write(&conn, 1, index as u64, 0, data.clone()).await;
            let back = read(&conn, 1, index as u64, 0, len).await;
            assert_eq!(back.len(), len);
            assert!(back == data, "{len} bytes came back different");
        }
        // Ending exactly at the chunk's end, above and below the threshold, over old data.
        for (i, len) in [THRESHOLD + 1, THRESHOLD - 1].into_iter().enumerate() {
            let offset = CHUNK - len as u64;
            let data = pattern(len, 99 + i as u64);
            write(&conn, 1, 5, offset, data.clone()).await;
            assert!(read(&conn, 1, 5, offset, len).await == data);
        }
        let whole = read(&conn, 1, 5, 0, CHUNK as usize).await;
        let original = pattern(CHUNK as usize, 15);
        let tail = CHUNK as usize - (THRESHOLD + 1);
        assert!(
            whole[..tail] == original[..tail],
            "bytes before the overwrite changed"
        );
        let s = stats(&conn).await;
        assert_eq!(s.chunks, sizes.len() as u64);

        // One shared buffer sent by several calls at once, with no copy, eager and
        // rendezvous: each chunk gets the whole buffer intact.
        for (round, len) in [THRESHOLD - 1, 1 << 20].into_iter().enumerate() {
            let shared: Rc<[u8]> = pattern(len, 40 + round as u64).into();
            let indexes: Vec<u64> = (0..4).map(|i| 30 + 10 * round as u64 + i).collect();
            let writes = indexes.iter().map(|&index| {
                let payload = OutPayload::Shared(Rc::clone(&shared));
                let conn = &conn;
                async move {
                    conn.call_with::<ops::WriteChunk>(&chunk_io(1, index, 0, len), payload)
                        .await
                }
            });
            for r in join_all(writes).await {
                assert_eq!(r.unwrap().reply.len, len as u64);
            }
            for index in indexes {
                assert!(read(&conn, 1, index, 0, len).await == shared[..]);
            }
        }

        // A body too long for the AM header opens the AM data instead; the server must
        // split body and payload there too, eager and rendezvous.
        let peer = RawPeer::connect(addr);
        for (i, (len, proto)) in [(100, AmProto::Eager), (THRESHOLD * 3, AmProto::Rndv)]
            .into_iter()
            .enumerate()
        {
            let id = 10 + i as u64;
            let index = 20 + i as u64;
            let payload = pattern(len, id);
            let body = chunk_io(1, index, 8, len).to_bytes();
            let header = raw_header(
                OpCode::WriteChunk as u16,
                id,
                0,
                body.len() as u32,
                len as u64,
            );
            peer.send(header, [body, payload.clone()].concat(), proto)
                .await;
            let (reply, body) = peer.reply(id, FAIL_BOUND).await.expect("no reply");
            assert_eq!(Status::from_wire(reply.status), Some(Status::Ok));
            assert_eq!(
                ops::ChunkIoReply::from_bytes(&body).unwrap().len,
                len as u64
            );
            assert!(read(&conn, 1, index, 8, len).await == payload);
        }
    });
}

#[test]
fn many_concurrent_calls_on_one_connection() {
    let cluster = Cluster::start(spec(1));
    let addr = cluster.addr(0);
    Rt::new().block_on(async {
        let conn = rpc_client(b"").connect(addr).await.unwrap();
        let conn = &conn;
        let calls = (0..256u64).map(|i| async move {
            match i % 4 {
                0 => {
                    conn.call::<ops::Ping>(&Empty).await.unwrap();
                }
                1 => {
                    let r = conn
                        .call_with::<ops::Ping>(&Empty, pattern(THRESHOLD * 2, i))
                        .await
                        .unwrap();
                    assert!(r.payload.is_empty());
                }
                _ => {
                    // Eager and rendezvous writes, each read back by the same future.
                    let len = if i % 4 == 2 {
                        1000 + i as usize
                    } else {
                        THRESHOLD + 1 + i as usize
                    };
                    let data = pattern(len, i);
                    write(conn, 2, i, 64, data.clone()).await;
                    let back = read(conn, 2, i, 64, len).await;
                    assert!(back == data, "call {i}: read back differs");
                }
            }
            Empty
        });
        assert_eq!(join_all(calls).await.len(), 256);
        assert_eq!(stats(conn).await.chunks, 128);
    });
}

/// Whether `e` says "the server did not answer" (what a dead server must look like).
fn is_unreachable(e: &RpcError) -> bool {
    matches!(e, RpcError::Timeout { .. } | RpcError::Transport { .. })
}

#[test]
fn killed_server_fails_calls_and_restarted_server_is_reachable() {
    let mut cluster = Cluster::start(spec(1));
    let old_addr = cluster.addr(0);
    Rt::new().block_on(async {
        let client = rpc_client(b"");
        let conn = Rc::new(client.connect(old_addr).await.unwrap());
        // Writes (eager and rendezvous) and pings keep flowing while the server dies.
        let traffic = tokio::task::spawn_local({
            let conn = Rc::clone(&conn);
            async move {
                for round in 0u64.. {
                    let calls = (0..8u64).map(|i| {
                        let conn = &conn;
                        async move {
                            let len = if i % 2 == 0 { 512 } else { THRESHOLD * 2 };
                            let req = chunk_io(3, i, 0, len);
                            conn.call_with::<ops::WriteChunk>(&req, pattern(len, round))
                                .await?;
                            conn.call::<ops::Ping>(&Empty).await
                        }
                    });
                    if let Some(e) = join_all(calls).await.into_iter().find_map(Result::err) {
                        return (e, Instant::now(), round);
                    }
                }
                unreachable!()
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let killed_at = Instant::now();
        cluster.kill(0);
        let (error, failed_at, rounds) = tokio::time::timeout(FAIL_BOUND, traffic)
            .await
            .expect("calls in flight to a killed server hung")
            .unwrap();
        assert!(rounds > 0, "no call succeeded before the kill");
        assert!(is_unreachable(&error), "{error:?}");
        assert!(
            failed_at - killed_at < FAIL_BOUND,
            "failed after {:?}",
            failed_at - killed_at
        );

        // Later calls on the dead connection, and new connections, fail within the bound.
        for _ in 0..2 {
            let started = Instant::now();
            let error = conn.call::<ops::Ping>(&Empty).await.unwrap_err();
            assert!(is_unreachable(&error), "{error:?}");
            assert!(started.elapsed() < FAIL_BOUND);
        }
        let started = Instant::now();
        let error = client.connect(old_addr).await.unwrap_err();
        assert!(is_unreachable(&error), "{error:?}");
        assert!(started.elapsed() < FAIL_BOUND);

        // The restarted server publishes a new port; a new connection reaches it.
        cluster.restart(0);
        let new_addr = cluster.addr(0);
        let fresh = client.connect(new_addr).await.unwrap();
        assert_eq!(fresh.hello().unwrap().node_id, "node0");
        assert_serves(&fresh, 4).await;
        assert!(
            conn.call::<ops::Ping>(&Empty).await.is_err(),
            "the old connection stays dead"
        );
        assert!(cluster.is_running(0));
    });
}

#[test]
fn file_system_client_reconnects_to_a_restarted_server() {
    let mut cluster = Cluster::start(spec(1));
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
    // Port 0 lets the OS choose; restart_at also lets the next restart reuse that port.
    cluster.restart_at(0, "127.0.0.1:0".parse().unwrap());
    round_trip("/after-new-port");
    let gone = fs.open("/before", OpenFlags::READ, 0).unwrap_err();
    assert_eq!(
        gone.status(),
        Some(Status::NotFound),
        "a memory store starts empty"
    );

    // Killed again and restarted on the address it had: the handle reconnects there too.
    let addr = cluster.addr(0);
    cluster.kill(0);
    assert!(fs.create("/during", 0o644).is_err());
    cluster.restart_at(0, addr);
    assert_eq!(cluster.addr(0), addr);
    round_trip("/after-same-port");
}

/// A header built field by field, independent of `FrameHeader`, so it can say anything.
fn raw_header(op: u16, request_id: u64, flags: u16, body_len: u32, payload_len: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(32);
    h.extend_from_slice(&MAGIC.to_le_bytes());
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&op.to_le_bytes());
    h.extend_from_slice(&request_id.to_le_bytes());
    h.extend_from_slice(&0u16.to_le_bytes());
    h.extend_from_slice(&flags.to_le_bytes());
    h.extend_from_slice(&body_len.to_le_bytes());
    h.extend_from_slice(&payload_len.to_le_bytes());
    h
}

/// A well-formed request header followed by its body, for a payload of `payload_len`.
fn request(op: OpCode, request_id: u64, body: &[u8], payload_len: usize) -> Vec<u8> {
    let mut h = raw_header(
        op as u16,
        request_id,
        0,
        body.len() as u32,
        payload_len as u64,
    );
    h.extend_from_slice(body);
    h
}

/// A UCX peer that speaks the frame format by hand.
struct RawPeer {
    worker: Rc<Worker>,
    ep: Endpoint,
    replies: AmStream,
}

impl RawPeer {
    /// Connects to `addr`; call inside `Rt::block_on`.
    fn connect(addr: SocketAddr) -> RawPeer {
        let context = Context::new(Features::ALL).unwrap();
        let worker = Worker::new(&context).unwrap();
        let replies = worker.set_am_handler(REPLY_AM_ID, 1024).unwrap();
        tokio::task::spawn_local(Rc::clone(&worker).run_progress(Duration::from_micros(50)));
        let ep = Endpoint::connect_socket(&worker, addr).unwrap();
        RawPeer {
            worker,
            ep,
            replies,
        }
    }

    async fn send(&self, header: Vec<u8>, data: Vec<u8>, proto: AmProto) {
        let sent = tokio::time::timeout(
            FAIL_BOUND,
            self.ep.am_send(REQUEST_AM_ID, header, data, proto),
        );
        sent.await
            .expect("a send to a live server hung")
            .expect("send");
    }

    /// The reply to `request_id` (its frame and body), or `None` if none came within `wait`.
    async fn reply(&self, request_id: u64, wait: Duration) -> Option<(Frame, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.replies.recv())
                .await
                .ok()?;
            let frame = Frame::decode(msg.header(), msg.data_len())
                .expect("the server sent a malformed reply");
            assert!(frame.is_reply);
            if frame.request_id == request_id {
                let body = msg.header()[32..].to_vec();
                return Some((frame, body));
            }
        }
    }

    /// Pings by hand and waits for the answer: the server still serves this connection.
    async fn ping(&self, request_id: u64) {
        self.send(
            request(OpCode::Ping, request_id, &[], 0),
            Vec::new(),
            AmProto::Eager,
        )
        .await;
        let (frame, _) = self
            .reply(request_id, FAIL_BOUND)
            .await
            .expect("no answer to a ping");
        assert_eq!(
            (frame.op, frame.status),
            (OpCode::Ping, Status::Ok.to_wire())
        );
    }
}

impl Drop for RawPeer {
    fn drop(&mut self) {
        self.worker.stop_progress();
    }
}

/// What the server must do with one bad frame.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Answer this request id with this status (and count the frame as malformed when the
    /// status is `Protocol`).
    Reply(Status),
    /// Drop it (the request id cannot be read) and count it as malformed.
    Dropped,
}

struct BadFrame {
    what: &'static str,
    header: Vec<u8>,
    data: Vec<u8>,
    proto: AmProto,
    expect: Expect,
}

fn bad_frames() -> Vec<BadFrame> {
    let ping = OpCode::Ping as u16;
    let mut out = Vec::new();
    let mut add = |what, header: Vec<u8>, data: Vec<u8>, expect| {
        out.push(BadFrame {
            what,
            header,
            data,
            proto: AmProto::Eager,
            expect,
        });
    };
    let protocol = Expect::Reply(Status::Protocol);
    let invalid = Expect::Reply(Status::InvalidArgument);
    // The request id of each case is its index plus 1000 (set below).
    add(
        "header cut to 20 bytes",
        raw_header(ping, 0, 0, 0, 0)[..20].to_vec(),
        Vec::new(),
        protocol,
    );
    add(
        "header cut to 31 bytes",
        raw_header(ping, 0, 0, 0, 0)[..31].to_vec(),
        Vec::new(),
        protocol,
    );
    add(
        "header cut to 10 bytes",
        raw_header(ping, 0, 0, 0, 0)[..10].to_vec(),
        Vec::new(),
        Expect::Dropped,
    );
    add(
        "empty header, some data",
        Vec::new(),
        vec![7; 64],
        Expect::Dropped,
    );
    add(
        "unknown op 999",
        raw_header(999, 0, 0, 0, 0),
        Vec::new(),
        protocol,
    );
    add("op 0", raw_header(0, 0, 0, 0, 0), Vec::new(), protocol);
    add(
        "payload_len above the data",
        raw_header(ping, 0, 0, 0, 100),
        vec![1; 50],
        protocol,
    );
    add(
        "payload_len below the data",
        raw_header(ping, 0, 0, 0, 10),
        vec![1; 50],
        protocol,
    );
    let mut short_body = raw_header(ping, 0, 0, 8, 0);
    short_body.extend_from_slice(&[0; 4]);
    add(
        "body_len above the body in the header",
        short_body,
        Vec::new(),
        protocol,
    );
    add(
        "body_len + payload_len above the data",
        raw_header(ping, 0, 0, 16, 0),
        vec![0; 8],
        protocol,
    );
    let mut bad_magic = raw_header(ping, 0, 0, 0, 0);
    bad_magic[0] ^= 0xff;
    add("bad magic", bad_magic, Vec::new(), protocol);
    let mut bad_version = raw_header(ping, 0, 0, 0, 0);
    bad_version[4] = 2;
    add("bad version", bad_version, Vec::new(), protocol);
    add(
        "unknown flag bits",
        raw_header(ping, 0, 0x8000, 0, 0),
        Vec::new(),
        protocol,
    );
    add(
        "body_len above BODY_LEN_MAX",
        raw_header(ping, 0, 0, BODY_LEN_MAX + 1, 0),
        Vec::new(),
        protocol,
    );
    add(
        "payload_len above PAYLOAD_LEN_MAX",
        raw_header(ping, 0, 0, 0, PAYLOAD_LEN_MAX + 1),
        Vec::new(),
        protocol,
    );
    add(
        "body_len u32::MAX",
        raw_header(ping, 0, 0, u32::MAX, 0),
        Vec::new(),
        protocol,
    );
    add(
        "payload_len u64::MAX",
        raw_header(ping, 0, 0, 0, u64::MAX),
        Vec::new(),
        protocol,
    );
    // Regression: the server dropped a reply-flagged request silently, uncounted.
    add(
        "reply flag on a request",
        raw_header(ping, 0, FLAG_REPLY, 0, 0),
        Vec::new(),
        protocol,
    );
    add(
        "path length beyond the body",
        request(OpCode::MetadataLookup, 0, &[0xff, 0xff, b'/'], 0),
        Vec::new(),
        protocol,
    );
    add(
        "path not UTF-8",
        request(OpCode::MetadataLookup, 0, &[2, 0, 0xff, 0xfe], 0),
        Vec::new(),
        protocol,
    );
    add(
        "trailing bytes after an empty body",
        request(OpCode::Ping, 0, &[1, 2, 3], 0),
        Vec::new(),
        protocol,
    );
    add(
        "garbage body of a chunk write",
        request(OpCode::WriteChunk, 0, &[9; 13], 0),
        Vec::new(),
        protocol,
    );
    let lookup = ops::PathRequest { path: "/x".into() }.to_bytes();
    add(
        "payload on a lookup",
        request(OpCode::MetadataLookup, 0, &lookup, 10),
        vec![0; 10],
        protocol,
    );
    add(
        "payload on stats, whose body is empty",
        request(OpCode::Stats, 0, &[], 4096),
        vec![0; 4096],
        protocol,
    );
    let mut body = ops::DeleteRequest {
        path: "/x".into(),
        expect: None,
    }
    .to_bytes();
    body[0] = 9;
    add(
        "unknown entry kind",
        request(OpCode::MetadataDelete, 0, &body, 0),
        Vec::new(),
        protocol,
    );
    let big_secret = HelloRequest {
        client: "c".into(),
        secret: vec![1; 300],
    }
    .to_bytes();
    add(
        "oversized handshake secret",
        request(OpCode::Hello, 0, &big_secret, 0),
        Vec::new(),
        protocol,
    );
    let long_after = ops::ReaddirRequest {
        dir: "/".into(),
        after: Some("n".repeat(300)),
        limit: 1,
    }
    .to_bytes();
    add(
        "readdir resume name too long",
        request(OpCode::Readdir, 0, &long_after, 0),
        Vec::new(),
        protocol,
    );
    let write = chunk_io(4, 0, 0, 100).to_bytes();
    add(
        "chunk write shorter than its len",
        request(OpCode::WriteChunk, 0, &write, 50),
        vec![0; 50],
        protocol,
    );
    let past_end = chunk_io(4, 0, CHUNK - 8, 16).to_bytes();
    add(
        "chunk write past chunk_size",
        request(OpCode::WriteChunk, 0, &past_end, 16),
        vec![0; 16],
        invalid,
    );
    let overflow = chunk_io(4, 0, u64::MAX - 4, 16).to_bytes();
    add(
        "chunk write offset + len overflows",
        request(OpCode::WriteChunk, 0, &overflow, 16),
        vec![0; 16],
        invalid,
    );
    let read_past = chunk_io(4, 0, CHUNK, 1).to_bytes();
    add(
        "chunk read past chunk_size",
        request(OpCode::ReadChunk, 0, &read_past, 0),
        Vec::new(),
        invalid,
    );
    let huge_read = chunk_io(4, 0, 0, usize::MAX).to_bytes();
    add(
        "chunk read of u64::MAX bytes",
        request(OpCode::ReadChunk, 0, &huge_read, 0),
        Vec::new(),
        invalid,
    );
    let short_remote = ChunkIo {
        remote: Some(RemoteBuffer {
            addr: 0,
            len: 10,
            rkey: Vec::new(),
        }),
        ..chunk_io(4, 0, 0, 100)
    };
    add(
        "remote buffer shorter than the transfer",
        request(OpCode::WriteChunk, 0, &short_remote.to_bytes(), 0),
        Vec::new(),
        protocol,
    );
    // Rendezvous data whose frame is refused must be released, not leaked or waited on.
    let len = THRESHOLD * 4;
    let mut rndv_bad_magic = raw_header(ping, 0, 0, 0, len as u64);
    rndv_bad_magic[1] ^= 0xff;
    out.push(BadFrame {
        what: "rendezvous data, bad magic",
        header: rndv_bad_magic,
        data: vec![3; len],
        proto: AmProto::Rndv,
        expect: protocol,
    });
    // Regression: a rendezvous payload longer than a chunk was answered `Busy`.
    let whole_chunk_plus_one = CHUNK as usize + 1;
    let too_big = chunk_io(4, 0, 0, whole_chunk_plus_one).to_bytes();
    out.push(BadFrame {
        what: "rendezvous chunk write of chunk_size + 1 bytes",
        header: request(OpCode::WriteChunk, 0, &too_big, whole_chunk_plus_one),
        data: vec![5; whole_chunk_plus_one],
        proto: AmProto::Rndv,
        expect: invalid,
    });
    for (i, frame) in out.iter_mut().enumerate() {
        if frame.header.len() >= 16 {
            frame.header[8..16].copy_from_slice(&(1000 + i as u64).to_le_bytes());
        }
    }
    out
}

#[test]
fn malformed_frames_get_errors_and_the_server_keeps_serving() {
    let mut cluster = Cluster::start(spec(1));
    let addr = cluster.addr(0);
    let frames = bad_frames();
    Rt::new().block_on(async {
        let conn = rpc_client(b"").connect(addr).await.unwrap();
        let before = stats(&conn).await.malformed;
        let peer = RawPeer::connect(addr);
        peer.ping(1).await;
        let mut counted = 0;
        for (i, frame) in frames.into_iter().enumerate() {
            let id = 1000 + i as u64;
            peer.send(frame.header, frame.data, frame.proto).await;
            match frame.expect {
                Expect::Reply(status) => {
                    let reply = peer.reply(id, FAIL_BOUND).await;
                    let (reply, body) = reply.unwrap_or_else(|| panic!("{}: no reply", frame.what));
                    assert_eq!(
                        Status::from_wire(reply.status),
                        Some(status),
                        "{}",
                        frame.what
                    );
                    assert!(
                        body.is_empty() && reply.payload_len == 0,
                        "{}: an error reply has no body",
                        frame.what
                    );
                    counted += u64::from(status == Status::Protocol);
                }
                Expect::Dropped => counted += 1,
            }
            // The same connection still works after every bad frame.
            peer.ping(2 + i as u64).await;
            assert!(cluster.is_running(0), "{} stopped the server", frame.what);
        }
        assert!(
            peer.reply(0, Duration::from_millis(200)).await.is_none(),
            "a dropped frame was answered"
        );
        let after = stats(&conn).await.malformed;
        assert_eq!(
            after - before,
            counted,
            "every malformed frame is counted once"
        );
        assert_serves(&conn, 7).await;
        assert_serves(&rpc_client(b"").connect(addr).await.unwrap(), 8).await;
    });
    assert!(cluster.is_running(0));
}

/// One request to throw at the server: random bytes, or a header that passes the frame
/// checks with a random body, or a good frame with one byte changed.
fn arbitrary_frame(max_header: usize) -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let random = (
        prop::collection::vec(any::<u8>(), 0..=max_header),
        prop::collection::vec(any::<u8>(), 0..512),
    );
    let op = prop::sample::select(OpCode::ALL.to_vec());
    let body_max = max_header - 32;
    let framed = (
        op.clone(),
        prop::collection::vec(any::<u8>(), 0..=body_max),
        prop::collection::vec(any::<u8>(), 0..512),
    )
        .prop_map(|(op, body, payload)| (request(op, 77, &body, payload.len()), payload));
    let flipped = (
        op,
        prop::collection::vec(any::<u8>(), 0..=body_max),
        0..32usize,
        any::<u8>(),
    )
        .prop_map(|(op, body, at, byte)| {
            let mut header = request(op, 77, &body, 0);
            header[at] = byte;
            (header, Vec::new())
        });
    prop_oneof![random, framed, flipped]
}

#[test]
fn arbitrary_frames_never_stop_the_server() {
    let mut cluster = Cluster::start(spec(1));
    let addr = cluster.addr(0);
    let rt = Rt::new();
    let (peer, conn) = rt.block_on(async {
        (
            RawPeer::connect(addr),
            rpc_client(b"").connect(addr).await.unwrap(),
        )
    });
    let max_header = peer.worker.max_am_header().min(256);
    assert!(
        max_header > 32,
        "the transport's AM header limit is only {max_header} bytes"
    );
    let mut runner = TestRunner::new(Config {
        cases: 32,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&arbitrary_frame(max_header), |(header, data)| {
            rt.block_on(async {
                peer.send(header, data, AmProto::Eager).await;
                conn.call::<ops::Ping>(&Empty).await
            })
            .map_err(|e| TestCaseError::fail(format!("the server stopped answering: {e}")))?;
            Ok(())
        })
        .unwrap();
    rt.block_on(async {
        peer.ping(1).await;
        assert_serves(&conn, 9).await;
    });
    assert!(cluster.is_running(0));
}

/// A server that completes the handshake, then answers the next request with a rendezvous
/// payload and stops making progress until `release` says so, so the transfer never ends.
fn stalling_server(
    payload_len: usize,
    addr_tx: std::sync::mpsc::Sender<SocketAddr>,
    release: std::sync::mpsc::Receiver<()>,
) {
    let rt = Rt::new();
    rt.block_on(async {
        let context = Context::new(Features::ALL).unwrap();
        let worker = Worker::new(&context).unwrap();
        let requests = worker.set_am_handler(REQUEST_AM_ID, 64).unwrap();
        let listener = Listener::bind(&worker, "127.0.0.1:0".parse().unwrap()).unwrap();
        tokio::task::spawn_local(Rc::clone(&worker).run_progress(Duration::from_micros(50)));
        addr_tx.send(listener.local_addr()).unwrap();
        let _accepted = listener.accept().await.unwrap();
        loop {
            let msg = requests.recv().await;
            let frame = Frame::decode(msg.header(), msg.data_len()).unwrap();
            let ep = msg.reply_endpoint().cloned().unwrap();
            if frame.op == OpCode::Hello {
                let body = ops::HelloReply {
                    node_id: "stalling".into(),
                    chunk_size: CHUNK,
                    rdma_threshold: THRESHOLD as u64,
                }
                .to_bytes();
                let mut header =
                    Frame::header(OpCode::Hello, frame.request_id, 0, true, body.len(), 0)
                        .to_bytes()
                        .to_vec();
                header.extend_from_slice(&body);
                ep.am_send(REPLY_AM_ID, header, Vec::new(), AmProto::Eager)
                    .await
                    .unwrap();
                continue;
            }
            let header = Frame::header(frame.op, frame.request_id, 0, true, 0, payload_len)
                .to_bytes()
                .to_vec();
            // Submitting puts the rendezvous header on the wire; then no more progress.
            let _send = ep.am_send(REPLY_AM_ID, header, vec![7u8; payload_len], AmProto::Rndv);
            release.recv().unwrap();
            return;
        }
    });
}

#[test]
fn a_receive_into_a_lent_buffer_ends_when_its_server_stalls_mid_transfer() {
    // The blocking read path lends the caller's buffer to a rendezvous receive and must not
    // return while UCX may still write it. Here the server sent the rendezvous header and
    // then stopped: the call times out, the connection is dropped (as FsClient does), and
    // closing it must end the receive, or the lending scope would wait forever.
    const LEN: usize = 1 << 20;
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || stalling_server(LEN, addr_tx, release_rx));
    let addr = addr_rx.recv().unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    // The client runs on its own thread, so a receive that never ends fails this test
    // instead of hanging it.
    std::thread::spawn(move || {
        let rt = Rt::new();
        let client = rt.block_on(async { rpc_client(b"") });
        let conn = rt.block_on(client.connect(addr)).unwrap();
        let slot = std::cell::RefCell::new(Some(Rc::new(conn)));
        let mut buf = vec![0u8; LEN];
        let start = Instant::now();
        let result = benchfs_ucx::lend_mut(
            &mut buf,
            |loan| {
                let conn = slot.borrow().clone().unwrap();
                let sink = loan.lend_mut(0..LEN).unwrap();
                rt.block_on(conn.call_into::<ops::Ping>(&Empty, Vec::new(), Some(sink)))
                    .map(|r| r.sunk)
            },
            |loan| {
                slot.borrow_mut().take();
                rt.block_on(async {
                    while loan.outstanding() > 0 {
                        tokio::select! {
                            _ = loan.returned() => {}
                            _ = tokio::time::sleep(Duration::from_millis(10)) => {
                                client.worker().progress();
                            }
                        }
                    }
                });
            },
        );
        let _ = done_tx.send((result.map_err(|e| e.status()), start.elapsed()));
    });
    let outcome = done_rx.recv_timeout(FAIL_BOUND + Duration::from_secs(10));
    release_tx.send(()).unwrap();
    let (result, took) = outcome.expect("the lending scope did not end: the receive hung");
    assert_eq!(result, Err(Status::TimedOut));
    assert!(took < FAIL_BOUND, "took {took:?}");
    server.join().unwrap();
}

#[test]
fn a_stopped_client_cannot_hold_the_server_hostage_with_reads() {
    stopped_client_holds_transfers(OpCode::ReadChunk);
}

#[test]
fn a_stopped_client_cannot_hold_the_server_hostage_with_writes() {
    stopped_client_holds_transfers(OpCode::WriteChunk);
}

/// A client that is alive but stops taking data (SIGSTOP, a debugger) leaves every
/// rendezvous transfer with it unfinished: the replies to its reads, or the payloads of
/// its writes. Without a bound those would hold the server's in-flight slots for good,
/// and with more of them than slots the server would answer nobody.
fn stopped_client_holds_transfers(op: OpCode) {
    const LEN: usize = THRESHOLD * 2;
    let requests = ServerConfig::default().network.inflight_max as usize + 44;
    let cluster = Cluster::start(spec(1));
    let addr = cluster.addr(0);
    let rt = Rt::new();
    let conn = rt.block_on(async {
        let conn = rpc_client(b"").connect(addr).await.unwrap();
        write(&conn, 1, 0, 0, pattern(LEN, 1)).await;
        conn
    });

    let (sent_tx, sent_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let stopped = std::thread::spawn(move || {
        let rt = Rt::new();
        rt.block_on(async {
            let peer = RawPeer::connect(addr);
            peer.ping(1).await;
            let body = chunk_io(1, 0, 0, LEN).to_bytes();
            let payload_len = if op == OpCode::WriteChunk { LEN } else { 0 };
            let mut in_flight = Vec::new();
            for id in 0..requests as u64 {
                let header = raw_header(
                    op as u16,
                    100 + id,
                    0,
                    body.len() as u32,
                    payload_len as u64,
                );
                let header = [header, body.clone()].concat();
                let (data, proto) = match op {
                    OpCode::WriteChunk => (pattern(LEN, id), AmProto::Rndv),
                    _ => (Vec::new(), AmProto::Eager),
                };
                // Not awaited, and no yield: a rendezvous transfer needs this client's
                // progress to finish, which it stops giving now. Submitting puts each
                // small header on the socket at once.
                in_flight.push(peer.ep.am_send(REQUEST_AM_ID, header, data, proto));
            }
            sent_tx.send(()).unwrap();
            // Stopped: no more progress, so no rendezvous transfer can finish.
            release_rx.recv().unwrap();
            // Back again: the server must have given up on this connection.
            let deadline = Instant::now() + FAIL_BOUND;
            while !peer.ep.is_failed() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            drop(in_flight);
            peer.ep.is_failed()
        })
    });
    sent_rx.recv().unwrap();

    // The server answers others again once it gives up on the stopped client.
    let deadline = Instant::now() + FAIL_BOUND;
    let answered = rt.block_on(async {
        loop {
            match conn.call::<ops::Ping>(&Empty).await {
                Err(RpcError::Timeout { .. }) if Instant::now() < deadline => continue,
                other => return other,
            }
        }
    });
    release_tx.send(()).unwrap();
    let dropped = stopped.join().unwrap();
    answered.expect("the server answered nobody while a client was stopped");
    assert!(
        dropped,
        "the server never closed the stopped client's connection"
    );
    let back = rt.block_on(read(&conn, 1, 0, 0, LEN));
    assert_eq!(back.len(), LEN);
}
