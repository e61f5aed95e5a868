//! Helpers of the tests that speak the RPC protocol: a runtime, RPC clients, chunk calls
//! that check their replies, and a raw UCX peer that builds frames by hand.

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use benchfs::client::rpc::{ClientOptions, Connection, RpcClient};
use benchfs::client::rpc::{RpcError, REPLY_AM_ID, REQUEST_AM_ID};
use benchfs_proto::frame::{FRAME_HEADER_LEN, MAGIC, VERSION};
use benchfs_proto::ops::{self, ChunkIo, ChunkWrite, Empty};
use benchfs_proto::{Frame, OpCode, Status};
use benchfs_ucx::{AmProto, AmStream, Context, Endpoint, Features, Worker};

use super::{pattern, ClusterSpec, FAIL_BOUND, RPC_TIMEOUT};

/// Chunk size of every RPC test cluster.
pub const CHUNK: u64 = 4 << 20;
/// Payloads above this go by rendezvous, on both sides.
pub const THRESHOLD: usize = 32 * 1024;
/// Safety net: a test that hangs fails here instead of stalling the whole run.
pub const TEST_DEADLINE: Duration = Duration::from_secs(50);

/// A cluster of `servers` with [`CHUNK`], [`THRESHOLD`] and the short [`RPC_TIMEOUT`],
/// which the test clients use too.
pub fn spec(servers: usize) -> ClusterSpec {
    ClusterSpec {
        servers,
        backend: "memory",
        chunk_size: CHUNK,
        replicas: 1,
        rpc_timeout_ms: RPC_TIMEOUT.as_millis() as u64,
        rdma_threshold: THRESHOLD as u64,
        // These tests count each server's requests; a sweep's questions would add to them.
        orphan_sweep_secs: 0,
        inject_faults: None,
    }
}

/// A current-thread runtime and a `LocalSet`, kept across `block_on` calls so that a
/// client's progress tasks outlive one call (the property test needs that).
pub struct Rt {
    runtime: tokio::runtime::Runtime,
    local: tokio::task::LocalSet,
}

impl Rt {
    pub fn new() -> Rt {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Rt {
            runtime,
            local: tokio::task::LocalSet::new(),
        }
    }

    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.local
            .block_on(&self.runtime, async {
                tokio::time::timeout(TEST_DEADLINE, future).await
            })
            .expect("the test hung: an RPC neither completed nor failed")
    }
}

/// A UCX context with the transport settings benchfs clients and servers use by default.
pub fn ucx_context() -> std::sync::Arc<Context> {
    Context::with_config(
        Features::ALL,
        &benchfs_ucx::transport_config(true, benchfs_ucx::Role::Client),
    )
    .unwrap()
}

/// A new RPC client presenting `secret`; call inside `Rt::block_on`.
pub fn rpc_client(secret: &[u8]) -> Rc<RpcClient> {
    let context = ucx_context();
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
pub fn status_of<T: std::fmt::Debug>(result: Result<T, RpcError>) -> Status {
    match result {
        Err(RpcError::Status { status, .. }) => status,
        other => panic!("expected an error status, got {other:?}"),
    }
}

/// The request body of a chunk read or write.
pub fn chunk_io(file_id: u64, index: u64, offset: u64, len: usize) -> ChunkIo {
    ChunkIo {
        file_id,
        index,
        offset,
        len: len as u64,
    }
}

/// A chunk write with no file behind it (born after every store, holding nothing), which
/// no server refuses as leaving lost bytes nor keeps its gaps from reads.
pub fn chunk_write(file_id: u64, index: u64, offset: u64, len: usize) -> ChunkWrite {
    ChunkWrite {
        io: chunk_io(file_id, index, offset, len),
        file_birth_ns: u64::MAX,
        chunk_held: 0,
        append_cut_gen: None,
        hole_before: false,
    }
}

/// Writes `data` at `offset` of a chunk and checks the reply.
pub async fn write(conn: &Connection, file_id: u64, index: u64, offset: u64, data: Vec<u8>) {
    let len = data.len();
    let r = conn
        .call_with::<ops::WriteChunk>(&chunk_write(file_id, index, offset, len), data)
        .await
        .unwrap();
    assert_eq!(r.reply.len, len as u64);
    assert!(r.payload.is_empty());
}

/// Reads up to `len` bytes at `offset` of a chunk; checks the reply's length matches the data.
pub async fn read(conn: &Connection, file_id: u64, index: u64, offset: u64, len: usize) -> Vec<u8> {
    let r = conn
        .call_with::<ops::ReadChunk>(&chunk_io(file_id, index, offset, len), Vec::new())
        .await
        .unwrap();
    assert_eq!(r.reply.len, r.payload.len() as u64);
    r.payload
}

/// The server's counters.
pub async fn stats(conn: &Connection) -> ops::StatsReply {
    conn.call::<ops::Stats>(&Empty).await.unwrap()
}

/// A server that still works: a ping and a chunk write and read, on `conn`.
pub async fn assert_serves(conn: &Connection, seed: u64) {
    conn.call::<ops::Ping>(&Empty).await.unwrap();
    let data = pattern(THRESHOLD + 7, seed);
    write(conn, 0xfeed, seed, 0, data.clone()).await;
    assert!(
        read(conn, 0xfeed, seed, 0, data.len()).await == data,
        "read back differs"
    );
}

/// Whether `e` says "the server did not answer" (what a dead server must look like).
pub fn is_unreachable(e: &RpcError) -> bool {
    matches!(e, RpcError::Timeout { .. } | RpcError::Transport { .. })
}

/// A header built field by field, independent of `FrameHeader`, so it can say anything
/// (with no deadline).
pub fn raw_header(
    op: u16,
    request_id: u64,
    flags: u16,
    body_len: u32,
    payload_len: u64,
) -> Vec<u8> {
    let mut h = Vec::with_capacity(FRAME_HEADER_LEN);
    h.extend_from_slice(&MAGIC.to_le_bytes());
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&op.to_le_bytes());
    h.extend_from_slice(&request_id.to_le_bytes());
    h.extend_from_slice(&0u16.to_le_bytes());
    h.extend_from_slice(&flags.to_le_bytes());
    h.extend_from_slice(&body_len.to_le_bytes());
    h.extend_from_slice(&payload_len.to_le_bytes());
    h.extend_from_slice(&0u64.to_le_bytes());
    h
}

/// A well-formed request header followed by its body, for a payload of `payload_len`.
pub fn request(op: OpCode, request_id: u64, body: &[u8], payload_len: usize) -> Vec<u8> {
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
pub struct RawPeer {
    pub worker: Rc<Worker>,
    pub ep: Endpoint,
    replies: AmStream,
}

impl RawPeer {
    /// Connects to `addr`; call inside `Rt::block_on`.
    pub fn connect(addr: SocketAddr) -> RawPeer {
        Self::connect_with(&ucx_context(), addr)
    }

    /// Connects to `addr` with a worker of `context` (one restricted to some network
    /// devices, for example); call inside `Rt::block_on`.
    pub fn connect_with(context: &std::sync::Arc<Context>, addr: SocketAddr) -> RawPeer {
        let worker = Worker::new(context).unwrap();
        let replies = worker.set_am_handler(REPLY_AM_ID, 16 * 1024).unwrap();
        tokio::task::spawn_local(Rc::clone(&worker).run_progress(Duration::from_micros(50)));
        let ep = Endpoint::connect_socket(&worker, addr).unwrap();
        RawPeer {
            worker,
            ep,
            replies,
        }
    }

    pub async fn send(&self, header: Vec<u8>, data: Vec<u8>, proto: AmProto) {
        let sent = tokio::time::timeout(
            FAIL_BOUND,
            self.ep.am_send(REQUEST_AM_ID, header, data, proto),
        );
        sent.await
            .expect("a send to a live server hung")
            .expect("send");
    }

    /// The reply to `request_id` (its frame and body), or `None` if none came within `wait`.
    pub async fn reply(&self, request_id: u64, wait: Duration) -> Option<(Frame, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let (frame, body) = self.next_reply(deadline).await?;
            if frame.request_id == request_id {
                return Some((frame, body));
            }
        }
    }

    /// The next reply to come (its frame and body), or `None` if none came by `deadline`.
    pub async fn next_reply(&self, deadline: tokio::time::Instant) -> Option<(Frame, Vec<u8>)> {
        let msg = tokio::time::timeout_at(deadline, self.replies.recv())
            .await
            .ok()?;
        let frame =
            Frame::decode(msg.header(), msg.data_len()).expect("the server sent a malformed reply");
        assert!(frame.is_reply);
        Some((frame, msg.header()[FRAME_HEADER_LEN..].to_vec()))
    }

    /// Pings by hand and waits for the answer: the server still serves this connection.
    pub async fn ping(&self, request_id: u64) {
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

/// Stores `meta` at `path` on each of `servers` by hand, as an insert that only some
/// replicas took would leave it (replicas that disagree, two names for one file).
pub fn insert_record(servers: &[SocketAddr], path: &str, meta: benchfs_proto::meta::FileMetadata) {
    let insert = ops::InsertRequest {
        path: path.into(),
        meta,
        exclusive: false,
        settled_only: false,
        newer_only: false,
        data: Vec::new(),
    };
    for &addr in servers {
        call_one::<ops::MetadataInsert>(addr, &insert).unwrap();
    }
}

/// What each replica of `path`'s record holds there, owner first: the inode number its
/// record names, or `None`.
pub fn record_ids(cluster: &super::Cluster, path: &str) -> Vec<Option<u64>> {
    records(cluster, path)
        .into_iter()
        .map(|record| record.map(|meta| meta.file_id))
        .collect()
}

/// The record each replica of `path` holds there, owner first, or `None`.
pub fn records(
    cluster: &super::Cluster,
    path: &str,
) -> Vec<Option<benchfs_proto::meta::FileMetadata>> {
    let replicas = cluster.replicas_of(benchfs::placement::PlacementKey::Metadata(path));
    replicas
        .into_iter()
        .map(|i| {
            let request = ops::PathRequest { path: path.into() };
            match call_one::<ops::MetadataLookup>(cluster.addr(i), &request) {
                Ok(reply) => Some(reply.meta),
                Err(e) if e.status() == Status::NotFound => None,
                Err(e) => panic!("lookup of {path} on server {i}: {e}"),
            }
        })
        .collect()
}

/// Sends one request to the server at `addr` alone, as a call that reached only that
/// replica would, and returns its answer.
pub fn call_one<R: ops::Rpc>(addr: SocketAddr, request: &R::Request) -> Result<R::Reply, RpcError> {
    Rt::new().block_on(async {
        let conn = rpc_client(b"").connect(addr).await.unwrap();
        conn.call::<R>(request).await
    })
}

/// Removes the record of `path` from the server at `addr` by hand, as a namespace call
/// that reached only some replicas would: `moved` as a rename's old name (no tombstone),
/// else as an unlink (a tombstone if it was the file's last record there).
pub fn delete_record(addr: SocketAddr, path: &str, moved: bool) {
    let request = ops::DeleteRequest {
        path: path.into(),
        expect: None,
        moved,
    };
    call_one::<ops::MetadataDelete>(addr, &request).unwrap();
}
