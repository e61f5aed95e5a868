//! RPC peers that fail: a server killed with calls in flight and restarted, a stopped
//! server and the timeout of a call to it, a server that stalls in the middle of a
//! rendezvous reply, a stopped client whose unfinished transfers must not hold the
//! server's in-flight slots, and requests past their deadline (before their payload, and
//! a write whose payload came late).

mod common;

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use benchfs::client::rpc::{RpcError, REPLY_AM_ID, REQUEST_AM_ID};
use benchfs::config::ServerConfig;
use benchfs_proto::frame::FRAME_HEADER_LEN;
use benchfs_proto::ops::{self, Empty};
use benchfs_proto::{Frame, Message, OpCode, Status};
use benchfs_ucx::{AmProto, AmStream, Endpoint, Listener, Worker};
use common::rpc::{
    assert_serves, chunk_io, chunk_write, is_unreachable, raw_header, read, request, rpc_client,
    spec, ucx_context, write, RawPeer, Rt, CHUNK, THRESHOLD,
};
use common::{pattern, Cluster, ClusterSpec, FAIL_BOUND, RPC_TIMEOUT};
use futures_util::future::join_all;

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
                            let req = chunk_write(3, i, 0, len);
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
fn a_call_to_a_stopped_server_times_out_at_its_timeout_and_an_idle_client_is_not_timed_out() {
    let cluster = Cluster::start(spec(1));
    let rt = Rt::new();
    let conn = rt.block_on(async { rpc_client(b"").connect(cluster.addr(0)).await.unwrap() });
    // Calls are checked by one task on the client's runtime; a client that sat outside it
    // for longer than the timeout must not find its next call timed out at once.
    for _ in 0..2 {
        rt.block_on(conn.call::<ops::Ping>(&Empty)).unwrap();
        std::thread::sleep(RPC_TIMEOUT + Duration::from_millis(200));
    }
    rt.block_on(conn.call::<ops::Ping>(&Empty)).unwrap();

    cluster.signal(0, "STOP");
    let started = Instant::now();
    let result = rt.block_on(conn.call::<ops::Ping>(&Empty));
    let took = started.elapsed();
    cluster.signal(0, "CONT");
    assert!(
        matches!(result, Err(RpcError::Timeout { .. })),
        "{result:?}"
    );
    assert!(
        took >= RPC_TIMEOUT,
        "timed out after {took:?}, before its timeout"
    );
    assert!(
        took < RPC_TIMEOUT + Duration::from_millis(500),
        "timed out only after {took:?}"
    );
    rt.block_on(conn.call::<ops::Ping>(&Empty)).unwrap();
}

#[test]
fn a_request_its_caller_gave_up_on_is_refused_when_a_stopped_server_resumes() {
    // A server stopped with SIGSTOP finds the requests queued for it when it resumes. Their
    // callers gave up and may have undone the call on the other replicas (a size change
    // that one replica failed is put back on the others), so a late create or size change
    // applied now would part the replicas.
    let cluster = Cluster::start(spec(1));
    let rt = Rt::new();
    let conn = rt.block_on(async { rpc_client(b"").connect(cluster.addr(0)).await.unwrap() });
    let create = |path: &str| ops::CreateRequest {
        path: path.into(),
        mode: 0o644,
        chunk_size: 0,
        uid: 0,
        gid: 0,
    };
    let lookup = |path: &str| {
        let request = ops::PathRequest { path: path.into() };
        rt.block_on(conn.call::<ops::MetadataLookup>(&request))
    };
    rt.block_on(conn.call::<ops::MetadataCreateFile>(&create("/in-time")))
        .unwrap();

    cluster.signal(0, "STOP");
    let late = rt.block_on(conn.call::<ops::MetadataCreateFile>(&create("/late")));
    assert!(matches!(late, Err(RpcError::Timeout { .. })), "{late:?}");
    cluster.signal(0, "CONT");
    // The connection stayed open, so the server reads the queued create when it resumes,
    // before this ping sent after it.
    rt.block_on(conn.call::<ops::Ping>(&Empty)).unwrap();
    let status = lookup("/late").map(|_| ()).map_err(|e| e.status());
    assert_eq!(status, Err(Status::NotFound), "a late create was applied");
    assert!(lookup("/in-time").is_ok());
    let said = log_once_it_says(&cluster, 0, "came after its caller gave up");
    assert!(said.is_ok(), "the refusal is not in the server's log");
}

#[test]
fn a_request_is_refused_after_its_deadline_and_served_before_it() {
    let cluster = Cluster::start(spec(1));
    let rt = Rt::new();
    rt.block_on(async {
        let peer = RawPeer::connect(cluster.addr(0));
        for (id, deadline_us, status) in [
            (1, 1, Status::TimedOut),
            (2, u64::MAX, Status::Ok),
            (3, 0, Status::Ok),
        ] {
            let mut header = request(OpCode::Ping, id, &[], 0);
            set_deadline(&mut header, deadline_us);
            peer.send(header, Vec::new(), AmProto::Eager).await;
            let (frame, _) = peer.reply(id, FAIL_BOUND).await.expect("no reply");
            assert_eq!(frame.status, status.to_wire(), "deadline {deadline_us}");
            assert_ne!(frame.clock_us, 0, "a reply carries the server's clock");
        }
    });
}

#[test]
fn a_write_whose_payload_came_after_its_deadline_is_refused_and_not_applied() {
    const LEN: usize = THRESHOLD * 2;
    let cluster = Cluster::start(spec(1));
    let rt = Rt::new();
    rt.block_on(async {
        let peer = RawPeer::connect(cluster.addr(0));
        peer.ping(1).await;
        let body = chunk_write(9, 0, 0, LEN).to_bytes();
        let mut header = request(OpCode::WriteChunk, 2, &body, LEN);
        // The server runs on this host, so its deadline clock is this process's.
        set_deadline(&mut header, benchfs_proto::clock::now_us() + 300_000);
        // The header goes on the socket at once and passes the check before the payload;
        // the payload needs this peer's progress, which the sleep withholds until the
        // deadline has passed, as a stop in the middle of the transfer would.
        let send = peer
            .ep
            .am_send(REQUEST_AM_ID, header, pattern(LEN, 2), AmProto::Rndv);
        std::thread::sleep(Duration::from_millis(800));
        tokio::time::timeout(FAIL_BOUND, send)
            .await
            .expect("the payload never went")
            .expect("send");
        let (frame, _) = peer.reply(2, FAIL_BOUND).await.expect("no reply");
        assert_eq!(frame.status, Status::TimedOut.to_wire());
    });
    let said = log_once_it_says(&cluster, 0, "came after its caller gave up");
    assert!(said.is_ok(), "the refusal is not in the log: {said:?}");
    rt.block_on(async {
        let conn = rpc_client(b"").connect(cluster.addr(0)).await.unwrap();
        let data = read(&conn, 9, 0, 0, LEN).await;
        assert!(
            data.iter().all(|&b| b == 0),
            "a write refused as late was applied ({} bytes read)",
            data.len()
        );
    });
}

/// Sets the deadline of a request `header` built by [`request`] (its frame header's last
/// field).
fn set_deadline(header: &mut [u8], deadline_us: u64) {
    header[FRAME_HEADER_LEN - 8..FRAME_HEADER_LEN].copy_from_slice(&deadline_us.to_le_bytes());
}

/// A raw UCX server on 127.0.0.1 that accepted one client: its request stream, and what
/// must stay alive while it serves.
struct RawServer {
    requests: AmStream,
    _client: Endpoint,
    _listener: Listener,
    _worker: Rc<Worker>,
}

impl RawServer {
    /// Listens, sends its address on `addr_tx`, and accepts one client; call inside
    /// `Rt::block_on`.
    async fn accept_one(addr_tx: &std::sync::mpsc::Sender<SocketAddr>) -> RawServer {
        let context = ucx_context();
        let worker = Worker::new(&context).unwrap();
        let requests = worker.set_am_handler(REQUEST_AM_ID, 64).unwrap();
        let listener = Listener::bind(&worker, "127.0.0.1:0".parse().unwrap()).unwrap();
        tokio::task::spawn_local(Rc::clone(&worker).run_progress(Duration::from_micros(50)));
        addr_tx.send(listener.local_addr()).unwrap();
        let client = listener.accept().await.unwrap();
        RawServer {
            requests,
            _client: client,
            _listener: listener,
            _worker: worker,
        }
    }
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
        let server = RawServer::accept_one(&addr_tx).await;
        loop {
            let msg = server.requests.recv().await;
            let frame = Frame::decode(msg.header(), msg.data_len()).unwrap();
            let ep = msg.reply_endpoint().cloned().unwrap();
            if frame.op == OpCode::Hello {
                let body = ops::HelloReply {
                    node_id: "stalling".into(),
                    chunk_size: CHUNK,
                    rdma_threshold: THRESHOLD as u64,
                    born_ns: 0,
                    born_again: false,
                    replicas: 1,
                    virtual_nodes: 150,
                    challenge: Vec::new(),
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

/// A client that is alive but stopped (SIGSTOP, a debugger) with `requests` of `op` sent,
/// each a rendezvous transfer of `len` bytes that its progress would have to finish.
struct StoppedClient {
    release_tx: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl StoppedClient {
    fn start(addr: SocketAddr, op: OpCode, requests: usize, len: usize) -> StoppedClient {
        let (sent_tx, sent_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = Rt::new();
            rt.block_on(async {
                let peer = RawPeer::connect(addr);
                peer.ping(1).await;
                let body = match op {
                    OpCode::WriteChunk => chunk_write(1, 0, 0, len).to_bytes(),
                    _ => chunk_io(1, 0, 0, len).to_bytes(),
                };
                let payload_len = if op == OpCode::WriteChunk { len } else { 0 };
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
                        OpCode::WriteChunk => (pattern(len, id), AmProto::Rndv),
                        _ => (Vec::new(), AmProto::Eager),
                    };
                    // Not awaited, and no yield: a rendezvous transfer needs this client's
                    // progress to finish, which it stops giving now. Submitting puts each
                    // small header on the socket at once.
                    in_flight.push(peer.ep.am_send(REQUEST_AM_ID, header, data, proto));
                }
                sent_tx.send(()).unwrap();
                // Stopped for good: no more progress, so no rendezvous transfer can finish.
                release_rx.recv().unwrap();
                std::mem::forget(in_flight);
                std::mem::forget(peer);
            })
        });
        sent_rx.recv().unwrap();
        StoppedClient { release_tx, thread }
    }

    /// Lets the client's thread end.
    fn release(self) {
        self.release_tx.send(()).unwrap();
        self.thread.join().unwrap();
    }
}

#[test]
fn a_stopped_client_does_not_hold_a_stopping_server_for_its_transfer_timeout() {
    // A long RPC timeout: the transfer timeout (twice it) is 20 s, the drain bound 5 s.
    let mut cluster = Cluster::start(ClusterSpec {
        rpc_timeout_ms: 10_000,
        ..spec(1)
    });
    let rt = Rt::new();
    rt.block_on(async {
        let conn = rpc_client(b"").connect(cluster.addr(0)).await.unwrap();
        write(&conn, 1, 0, 0, pattern(THRESHOLD * 2, 1)).await;
    });
    let stopped = StoppedClient::start(cluster.addr(0), OpCode::ReadChunk, 4, THRESHOLD * 2);
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let clean = cluster.stop(0);
    let took = started.elapsed();
    stopped.release();
    assert!(clean, "the server did not stop cleanly (or within 20 s)");
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");
    let log = std::fs::read_to_string(cluster.log_path(0)).unwrap();
    assert!(
        log.contains("closing every client connection"),
        "the drain did not close the stopped client: {log}"
    );
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

    let stopped = StoppedClient::start(addr, op, requests, LEN);

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
    stopped.release();
    answered.expect("the server answered nobody while a client was stopped");
    let log = log_once_it_says(
        &cluster,
        0,
        "a client stalled a transfer; closing its connection",
    );
    assert!(
        log.is_ok(),
        "the server never closed the stopped client's connection: {log:?}"
    );
    let back = rt.block_on(read(&conn, 1, 0, 0, LEN));
    assert_eq!(back.len(), LEN);
}

/// Server `i`'s log once it holds `line`, or within [`FAIL_BOUND`] the log without it.
fn log_once_it_says(cluster: &Cluster, i: usize, line: &str) -> Result<String, String> {
    let deadline = Instant::now() + FAIL_BOUND;
    loop {
        let log = std::fs::read_to_string(cluster.log_path(i)).unwrap_or_default();
        if log.contains(line) {
            return Ok(log);
        }
        if Instant::now() > deadline {
            return Err(log);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A server of another protocol version: it answers the handshake with a header of
/// version `VERSION + 1`, as a newer build's would, then keeps the connection open.
fn server_of_another_version(addr_tx: std::sync::mpsc::Sender<SocketAddr>) {
    let rt = Rt::new();
    rt.block_on(async {
        let server = RawServer::accept_one(&addr_tx).await;
        let msg = server.requests.recv().await;
        let frame = Frame::decode(msg.header(), msg.data_len()).unwrap();
        let mut header = Frame::header(frame.op, frame.request_id, 0, true, 0, 0).to_bytes();
        header[4..6].copy_from_slice(&(benchfs_proto::frame::VERSION + 1).to_le_bytes());
        let ep = msg.reply_endpoint().cloned().unwrap();
        ep.am_send(REPLY_AM_ID, header.to_vec(), Vec::new(), AmProto::Eager)
            .await
            .unwrap();
        // Held open until the client gives up, so only the reply can end its call.
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
}

#[test]
fn a_server_of_another_version_is_refused_at_once_and_by_name() {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || server_of_another_version(addr_tx));
    let addr = addr_rx.recv().unwrap();
    let rt = Rt::new();
    let start = Instant::now();
    let err = rt
        .block_on(async { rpc_client(b"").connect(addr).await })
        .map(drop)
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, RpcError::Protocol { .. }), "{err:?}");
    assert!(message.contains("protocol version"), "{message}");
    assert!(message.contains(&addr.to_string()), "{message}");
    // Not the call's timeout: the reply itself ended it.
    assert!(start.elapsed() < RPC_TIMEOUT, "{:?}", start.elapsed());
}
