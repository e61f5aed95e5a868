//! Each RPC against a real `benchfsd` over real UCX on loopback: every operation with its
//! replies and error statuses, the handshake's job secret, payloads around the rendezvous
//! threshold, and many calls in flight on one connection.

mod common;

use std::net::SocketAddr;
use std::rc::Rc;

use benchfs::client::rpc::{Connection, OutPayload, RpcError};
use benchfs_proto::meta::{EntryKind, FileMetadata, SizeUpdate};
use benchfs_proto::ops::{self, Empty, HelloRequest};
use benchfs_proto::{Message, OpCode, Status};
use benchfs_ucx::AmProto;
use common::rpc::{
    assert_serves, chunk_write, raw_header, read, request, rpc_client, spec, stats, status_of,
    write, RawPeer, Rt, CHUNK, THRESHOLD,
};
use common::{pattern, Cluster, FAIL_BOUND};
use futures_util::future::join_all;

#[test]
fn every_operation_round_trips() {
    let cluster = Cluster::start(spec(1));
    let addr = cluster.addr(0);
    Rt::new().block_on(async {
        let client = rpc_client(b"");
        let conn = client.connect(addr).await.unwrap();
        hello_and_ping(&conn).await;
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
        // Its room is the memory it could still map, not "unbounded": no more than the
        // host has.
        let total_kib = common::host_memory_kib();
        assert!(
            before.room_bytes > 0 && before.room_bytes < total_kib * 1024,
            "room {} of a host with {total_kib} KiB",
            before.room_bytes
        );

        let file = metadata_records(&conn).await;
        assert_eq!(stats(&conn).await.metadata_records, 2);
        readdir_pages(&conn, file).await;
        assert_eq!(stats(&conn).await.metadata_records, 12);
        chunks(&conn, file.file_id).await;

        let after = stats(&conn).await;
        assert_eq!(
            (after.chunks, after.used_bytes, after.metadata_records),
            (0, 0, 12)
        );
        assert!(after.requests > before.requests + 40, "{after:?}");
        assert_eq!(after.malformed, 0, "no request here was malformed");
    });
}

/// Hello (done by connect, and again by hand; a wrong secret is refused), and ping without
/// and with a payload (eager and rendezvous) that the server discards.
async fn hello_and_ping(conn: &Connection) {
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
        })
        .await
        .unwrap();
    assert_eq!(again, hello);
    assert!(
        hello.challenge.is_empty(),
        "a server with no secret sets no challenge"
    );
    // With no challenge given, there is nothing a proof could answer.
    let unasked = conn
        .call::<ops::Auth>(&ops::AuthRequest {
            proof: benchfs_proto::auth::proof(b"guess", b""),
        })
        .await;
    assert_eq!(status_of(unasked), Status::PermissionDenied);

    conn.call::<ops::Ping>(&Empty).await.unwrap();
    for len in [100, THRESHOLD + 1] {
        let r = conn
            .call_with::<ops::Ping>(&Empty, pattern(len, 1))
            .await
            .unwrap();
        assert!(r.payload.is_empty());
    }
}

/// One metadata request of the scenario.
#[derive(Debug, Clone, Copy)]
enum Meta {
    CreateDir(&'static str, u32),
    CreateFile(&'static str, u32),
    Lookup(&'static str),
    /// Path, file id, size.
    UpdateSize(&'static str, u64, u64, SizeUpdate),
    /// Stores the record as given (rename's destination), exclusively or not.
    Insert(&'static str, FileMetadata, bool),
    /// Removes the record, if it has the expected kind (`None`: any).
    Delete(&'static str, Option<EntryKind>),
}

impl Meta {
    /// Sends the request; returns the record of the reply (an insert replies with none).
    async fn send(self, conn: &Connection) -> Result<Option<FileMetadata>, RpcError> {
        let create = |path: &str, mode| ops::CreateRequest {
            path: path.into(),
            mode,
            chunk_size: 0,
            uid: 0,
            gid: 0,
        };
        Ok(Some(match self {
            Meta::CreateDir(path, mode) => {
                let request = create(path, mode);
                conn.call::<ops::MetadataCreateDir>(&request).await?.meta
            }
            Meta::CreateFile(path, mode) => {
                let request = create(path, mode);
                conn.call::<ops::MetadataCreateFile>(&request).await?.meta
            }
            Meta::Lookup(path) => {
                let request = ops::PathRequest { path: path.into() };
                conn.call::<ops::MetadataLookup>(&request).await?.meta
            }
            Meta::UpdateSize(path, file_id, size, how) => {
                let path = path.into();
                let request = ops::UpdateSizeRequest {
                    path,
                    file_id,
                    size,
                    how,
                    cut_gen: 0,
                };
                conn.call::<ops::UpdateSize>(&request).await?.meta
            }
            Meta::Insert(path, meta, exclusive) => {
                let path = path.into();
                let request = ops::InsertRequest {
                    path,
                    meta,
                    exclusive,
                    settled_only: false,
                    newer_only: false,
                    data: Vec::new(),
                };
                conn.call::<ops::MetadataInsert>(&request).await?;
                return Ok(None);
            }
            Meta::Delete(path, expect) => {
                let path = path.into();
                let request = ops::DeleteRequest {
                    path,
                    expect,
                    moved: false,
                };
                conn.call::<ops::MetadataDelete>(&request).await?.meta
            }
        }))
    }
}

/// What a metadata request must answer.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// This record, whole.
    Record(FileMetadata),
    /// A record of this size.
    Size(u64),
    /// A record of this file.
    FileId(u64),
    /// Success without a record.
    Done,
    /// This error status.
    Fails(Status),
}

/// Sends `request` and checks that it answers `want`.
async fn check(conn: &Connection, request: Meta, want: Want) {
    match (want, request.send(conn).await) {
        (Want::Fails(status), got) => assert_eq!(status_of(got), status, "{request:?}"),
        (_, Err(e)) => panic!("{request:?}: {e}"),
        (Want::Record(meta), Ok(got)) => assert_eq!(got, Some(meta), "{request:?}"),
        (Want::Size(size), Ok(got)) => {
            assert_eq!(got.map(|m| m.size), Some(size), "{request:?}")
        }
        (Want::FileId(id), Ok(got)) => {
            assert_eq!(got.map(|m| m.file_id), Some(id), "{request:?}")
        }
        (Want::Done, Ok(got)) => assert_eq!(got, None, "{request:?}"),
    }
}

/// Creates `/d` and `/d/f`, then looks up, resizes, inserts and deletes records; returns
/// the record of `/d/f` as created.
async fn metadata_records(conn: &Connection) -> FileMetadata {
    let created = |request: Meta| async move {
        let got = request.send(conn).await;
        got.unwrap_or_else(|e| panic!("{request:?}: {e}")).unwrap()
    };
    let dir = created(Meta::CreateDir("/d", 0o755)).await;
    assert_eq!(
        (dir.kind, dir.mode, dir.size),
        (EntryKind::Directory, 0o755, 0)
    );
    let file = created(Meta::CreateFile("/d/f", 0o640)).await;
    assert_eq!(
        (file.kind, file.mode, file.size, file.chunk_size),
        (EntryKind::File, 0o640, 0, CHUNK)
    );
    assert_ne!(file.file_id, dir.file_id);

    use EntryKind::{Directory, File};
    use SizeUpdate::{AtLeast, Exact};
    let id = file.file_id;
    let cases = [
        (Meta::CreateFile("/d/f", 0o600), Want::Fails(Status::Exists)),
        (Meta::CreateDir("/d", 0o700), Want::Fails(Status::Exists)),
        (Meta::Lookup("/d/f"), Want::Record(file)),
        (Meta::Lookup("/d"), Want::Record(dir)),
        (Meta::Lookup("/missing"), Want::Fails(Status::NotFound)),
        // Size updates: grow-only never shrinks; exact sets.
        (Meta::UpdateSize("/d/f", id, 100, AtLeast), Want::Size(100)),
        (Meta::UpdateSize("/d/f", id, 50, AtLeast), Want::Size(100)),
        (Meta::UpdateSize("/d/f", id, 10, Exact), Want::Size(10)),
        (Meta::Lookup("/d/f"), Want::Size(10)),
        (
            Meta::UpdateSize("/d/f", id + 1, 99, Exact),
            Want::Fails(Status::Stale),
        ),
        (Meta::Lookup("/d/f"), Want::Size(10)),
        (
            Meta::UpdateSize("/d", dir.file_id, 1, Exact),
            Want::Fails(Status::IsDir),
        ),
        // Insert (rename's destination) and delete, with and without the expected kind.
        (Meta::Insert("/d/g", file, true), Want::Done),
        (
            Meta::Insert("/d/g", file, true),
            Want::Fails(Status::Exists),
        ),
        (Meta::Insert("/d/g", file, false), Want::Done),
        (Meta::Lookup("/d/g"), Want::FileId(file.file_id)),
        (
            Meta::Delete("/d/g", Some(Directory)),
            Want::Fails(Status::NotDir),
        ),
        (Meta::Delete("/d", Some(File)), Want::Fails(Status::IsDir)),
        (Meta::Delete("/d/g", Some(File)), Want::FileId(file.file_id)),
        (Meta::Lookup("/d/g"), Want::Fails(Status::NotFound)),
        (Meta::Delete("/d/g", None), Want::Fails(Status::NotFound)),
    ];
    for (request, want) in cases {
        check(conn, request, want).await;
    }
    file
}

/// Ten more files in `/d`, listed three entries a page, resuming after the last name of
/// each page; `file` is `/d/f`.
async fn readdir_pages(conn: &Connection, file: FileMetadata) {
    let mut names: Vec<String> = (0..10).map(|i| format!("e{i:02}")).collect();
    for name in &names {
        let request = ops::CreateRequest {
            path: format!("/d/{name}"),
            mode: 0o644,
            chunk_size: 0,
            uid: 0,
            gid: 0,
        };
        conn.call::<ops::MetadataCreateFile>(&request)
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
}

/// `TruncateFile` on chunks 0 (`first`, 100 bytes) and 1 (1050 bytes) of file `id`: a cut
/// shortens the chunk it falls in, removes every later one, and never lengthens.
async fn cuts(conn: &Connection, id: u64, first: &[u8]) {
    let truncate = |index, len| ops::TruncateFileRequest {
        file_id: id,
        index,
        len,
        cut_gen: 0,
        end: None,
    };
    // (index, len): chunk 0 after the cut, and whether chunk 1 is left.
    let cuts = [
        (
            (1, 1100),
            first,
            true,
            "a cut past every end changes nothing",
        ),
        (
            (0, 40),
            &first[..40],
            false,
            "a cut shortens its chunk and removes later ones",
        ),
        (
            (0, 60),
            &first[..40],
            false,
            "a cut never lengthens a chunk",
        ),
    ];
    for ((index, len), want, second_left, what) in cuts {
        conn.call::<ops::TruncateFile>(&truncate(index, len))
            .await
            .unwrap();
        assert_eq!(read(conn, id, 0, 0, 100).await, want, "{what}");
        assert_eq!(
            !read(conn, id, 1, 0, 2000).await.is_empty(),
            second_left,
            "{what}"
        );
    }
    assert_eq!(
        status_of(
            conn.call::<ops::TruncateFile>(&truncate(0, CHUNK + 1))
                .await
        ),
        Status::InvalidArgument
    );
    assert_eq!(stats(conn).await.used_bytes, 40);
}

/// Chunks of file `id`: write, read (short at the chunk's end, empty when absent),
/// truncate, fsync, remove.
async fn chunks(conn: &Connection, id: u64) {
    let first = pattern(100, 2);
    let second = pattern(50, 3);
    write(conn, id, 0, 0, first.clone()).await;
    write(conn, id, 1, 1000, second.clone()).await;
    // (index, offset, len): what a read there returns.
    let reads = [
        ((0, 0, 100), first.clone(), "a read of what was written"),
        (
            (0, 0, 4096),
            first.clone(),
            "a read stops at the chunk's end",
        ),
        (
            (0, 30, 20),
            first[30..50].to_vec(),
            "a read inside the chunk",
        ),
        (
            (1, 0, 1050),
            [&[0; 1000][..], &second].concat(),
            "a hole before the data reads zeros",
        ),
        ((7, 0, 100), Vec::new(), "an absent chunk reads empty"),
    ];
    for ((index, offset, len), want, what) in reads {
        assert_eq!(read(conn, id, index, offset, len).await, want, "{what}");
    }
    let s = stats(conn).await;
    assert_eq!((s.chunks, s.used_bytes), (2, 1150));

    cuts(conn, id, &first).await;

    conn.call::<ops::Fsync>(&Empty).await.unwrap();

    let remove = ops::RemoveChunksRequest { file_id: id };
    assert_eq!(
        conn.call::<ops::RemoveChunks>(&remove).await.unwrap().count,
        1
    );
    assert_eq!(
        conn.call::<ops::RemoveChunks>(&remove).await.unwrap().count,
        0
    );
    assert!(read(conn, id, 0, 0, 100).await.is_empty());
}

/// A one-server cluster whose job secret is `secret` (in a private file, as required).
fn cluster_with_secret(secret: &[u8]) -> (tempfile::TempDir, Cluster) {
    let secrets = tempfile::tempdir_in(common::test_root()).unwrap();
    let secret_file = secrets.path().join("secret");
    std::fs::write(&secret_file, secret).unwrap();
    std::fs::set_permissions(
        &secret_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let cluster = Cluster::start_with_args(
        spec(1),
        &["--secret-file".into(), secret_file.display().to_string()],
    );
    (secrets, cluster)
}

#[test]
fn handshake_checks_the_job_secret() {
    let (_secrets, cluster) = cluster_with_secret(b"job-42-secret");
    let addr = cluster.addr(0);
    Rt::new().block_on(async {
        for wrong in [&b""[..], b"job-42-secreT", b"job-42-secret\n"] {
            let refused = rpc_client(wrong).connect(addr).await.err();
            assert_eq!(
                refused.as_ref().map(RpcError::status),
                Some(Status::PermissionDenied),
                "secret {wrong:?}"
            );
            // It says why, and whether the client had a secret at all.
            let has_secret = !wrong.is_empty();
            assert!(
                matches!(refused, Some(RpcError::SecretRefused { has_secret: h, .. }) if h == has_secret),
                "secret {wrong:?}: {refused:?}"
            );
        }
        let conn = rpc_client(b"job-42-secret").connect(addr).await.unwrap();
        assert_serves(&conn, 1).await;
        // Each refusal is logged with the client's name and the address it came from.
        let log = std::fs::read_to_string(cluster.log_path(0)).unwrap();
        let refusals: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("handshake refused"))
            .collect();
        assert_eq!(refusals.len(), 3, "{log}");
        for line in refusals {
            assert!(line.contains("rpc-tests from 127.0.0.1:"), "{line}");
        }

        // A peer that skipped the handshake could create files on a server with a secret:
        // every request before a successful Hello must be refused.
        let raw = RawPeer::connect(addr);
        let body = ops::CreateRequest {
            path: "/sneaky".into(),
            mode: 0o644,
            chunk_size: 0,
            uid: 0,
            gid: 0,
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
fn a_proof_answers_one_challenge_once() {
    // The secret never crosses the wire: the server challenges, and a proof answers one
    // challenge of one connection, once.
    let (_secrets, cluster) = cluster_with_secret(b"job-42-secret");
    let addr = cluster.addr(0);
    Rt::new().block_on(async {
        let raw = RawPeer::connect(addr);
        let secret = b"job-42-secret";
        let hello = || {
            HelloRequest {
                client: "raw".into(),
            }
            .to_bytes()
        };
        let ask = |id: u64, op: OpCode, body: Vec<u8>| {
            let raw = &raw;
            async move {
                raw.send(request(op, id, &body, 0), Vec::new(), AmProto::Eager)
                    .await;
                raw.reply(id, FAIL_BOUND).await.expect("an answer")
            }
        };
        let auth = |proof: Vec<u8>| ops::AuthRequest { proof }.to_bytes();
        let (_, body) = ask(20, OpCode::Hello, hello()).await;
        let challenge = ops::HelloReply::from_bytes(&body).unwrap().challenge;
        assert_eq!(challenge.len(), benchfs_proto::auth::CHALLENGE_LEN);
        let other = vec![0u8; challenge.len()];
        for (id, proof, what) in [
            (
                21,
                benchfs_proto::auth::proof(secret, &other),
                "a proof of another challenge",
            ),
            (
                22,
                benchfs_proto::auth::proof(secret, &challenge),
                "a used-up challenge",
            ),
        ] {
            let (frame, _) = ask(id, OpCode::Auth, auth(proof)).await;
            assert_eq!(frame.status, Status::PermissionDenied.to_wire(), "{what}");
        }
        let (_, body) = ask(23, OpCode::Hello, hello()).await;
        let fresh = ops::HelloReply::from_bytes(&body).unwrap().challenge;
        assert_ne!(fresh, challenge, "each Hello gets a new challenge");
        let (frame, _) = ask(
            24,
            OpCode::Auth,
            auth(benchfs_proto::auth::proof(secret, &fresh)),
        )
        .await;
        assert_eq!(frame.status, Status::Ok.to_wire());
        let (frame, _) = ask(25, OpCode::Stats, Vec::new()).await;
        assert_eq!(frame.status, Status::Ok.to_wire(), "admitted");
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
        // (index, offset, data): a chunk of each size, then writes to chunk 5 ending
        // exactly at the chunk's end, above and below the threshold, over old data.
        let mut writes: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(index, &len)| (index as u64, 0, pattern(len, index as u64 + 10)))
            .collect();
        for (i, len) in [THRESHOLD + 1, THRESHOLD - 1].into_iter().enumerate() {
            writes.push((5, CHUNK - len as u64, pattern(len, 99 + i as u64)));
        }
        for (index, offset, data) in writes {
            let len = data.len();
            write(&conn, 1, index, offset, data.clone()).await;
            let back = read(&conn, 1, index, offset, len).await;
            assert_eq!(back.len(), len, "chunk {index} at {offset}");
            assert!(
                back == data,
                "{len} bytes at {offset} of chunk {index} came back different"
            );
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

        shared_buffer_round_trips(&conn).await;
        bodies_in_the_am_data_round_trip(addr, &conn).await;
    });
}

/// One shared buffer sent by several calls at once, with no copy, eager and rendezvous:
/// each chunk gets the whole buffer intact.
async fn shared_buffer_round_trips(conn: &Connection) {
    for (round, len) in [THRESHOLD - 1, 1 << 20].into_iter().enumerate() {
        let shared: Rc<[u8]> = pattern(len, 40 + round as u64).into();
        let indexes: Vec<u64> = (0..4).map(|i| 30 + 10 * round as u64 + i).collect();
        let writes = indexes.iter().map(|&index| {
            let payload = OutPayload::Shared(Rc::clone(&shared));
            async move {
                conn.call_with::<ops::WriteChunk>(&chunk_write(1, index, 0, len), payload)
                    .await
            }
        });
        for r in join_all(writes).await {
            assert_eq!(r.unwrap().reply.len, len as u64);
        }
        for index in indexes {
            assert!(read(conn, 1, index, 0, len).await == shared[..]);
        }
    }
}

/// A body too long for the AM header opens the AM data instead; the server must split
/// body and payload there too, eager and rendezvous. `conn` reads the chunks back.
async fn bodies_in_the_am_data_round_trip(addr: SocketAddr, conn: &Connection) {
    let peer = RawPeer::connect(addr);
    for (i, (len, proto)) in [(100, AmProto::Eager), (THRESHOLD * 3, AmProto::Rndv)]
        .into_iter()
        .enumerate()
    {
        let id = 10 + i as u64;
        let index = 20 + i as u64;
        let payload = pattern(len, id);
        let body = chunk_write(1, index, 8, len).to_bytes();
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
        assert!(read(conn, 1, index, 8, len).await == payload);
    }
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

/// A client that sends thousands of requests before it takes a reply: the server answers
/// each at once, and UCX queues the replies it cannot send yet (its shared-memory FIFO and
/// socket buffer fill). Every reply still comes, with its own status, and the server counts
/// every request once it is answered.
#[test]
fn replies_the_server_cannot_send_at_once_all_arrive_and_are_counted() {
    const PINGS: u64 = 5_000;
    const LOOKUPS: u64 = 3_000;
    let cluster = Cluster::start(spec(1));
    let addr = cluster.addr(0);
    Rt::new().block_on(async {
        let conn = rpc_client(b"").connect(addr).await.unwrap();
        let peer = RawPeer::connect(addr);
        let lookup = ops::PathRequest {
            path: "/missing".into(),
        }
        .to_bytes();
        // Sent back to back: each send completes at once, so the peer's progress task does
        // not run (and takes no reply) until the last one is out.
        for id in 1..=PINGS + LOOKUPS {
            let header = match id <= PINGS {
                true => request(OpCode::Ping, id, &[], 0),
                false => request(OpCode::MetadataLookup, id, &lookup, 0),
            };
            peer.send(header, Vec::new(), AmProto::Eager).await;
        }
        // Replies are matched by request id, as clients do, in whatever order they come.
        let deadline = tokio::time::Instant::now() + FAIL_BOUND;
        let mut answered = std::collections::HashSet::new();
        while answered.len() < (PINGS + LOOKUPS) as usize {
            let Some((frame, _)) = peer.next_reply(deadline).await else {
                panic!(
                    "{} of {} requests answered",
                    answered.len(),
                    PINGS + LOOKUPS
                );
            };
            let id = frame.request_id;
            let want = match id <= PINGS {
                true => (OpCode::Ping, Status::Ok),
                false => (OpCode::MetadataLookup, Status::NotFound),
            };
            assert_eq!(
                (frame.op, frame.status),
                (want.0, want.1.to_wire()),
                "request {id}"
            );
            assert!(answered.insert(id), "request {id} answered twice");
        }
        let ops = stats(&conn).await.ops;
        let counted = |op: OpCode| ops.iter().find(|s| s.op == op).map_or(0, |s| s.requests);
        // The handshake pinged nothing; the stats call itself is not yet counted.
        assert_eq!(counted(OpCode::Ping), PINGS);
        assert_eq!(counted(OpCode::MetadataLookup), LOOKUPS);
    });
}

/// Minor page faults of process `pid` so far (`/proc/<pid>/stat`, field 10).
fn minor_faults(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name in parentheses may hold spaces; the fields after it do not.
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    after_name.split(' ').nth(7).unwrap().parse().unwrap()
}

/// Minor page faults the calling thread has taken so far.
fn thread_minor_faults() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is a writable `rusage`, which is all getrusage writes.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage: {}", std::io::Error::last_os_error());
    // SAFETY: getrusage succeeded and filled the struct, which started zeroed.
    unsafe { usage.assume_init() }.ru_minflt as u64
}

#[test]
fn eager_payloads_cost_no_page_faults_in_steady_state() {
    // An eager message of several fragments is assembled by UCX in a heap buffer and freed
    // once taken. With glibc's default thresholds, frees that leave more than 128 KiB free
    // at the top of the heap give it back to the kernel, and with many such buffers in
    // flight every request on the server and every read's reply here faulted its buffer in
    // again: 70-100 thousand faults a side below. `benchfsd` keeps them; this process does
    // as the `benchfs` tool does.
    const ROUNDS: u64 = 200;
    const IN_FLIGHT: u64 = 64;
    let tuned = std::env::vars().any(|(k, v)| {
        k.starts_with("MALLOC_") || (k == "GLIBC_TUNABLES" && v.contains("glibc.malloc."))
    });
    if tuned {
        common::skip("eager page faults", "malloc tuned in the environment");
        return;
    }
    benchfs_ucx::keep_freed_heap_memory();
    let cluster = Cluster::start(spec(1));
    let pid = cluster.children[0].as_ref().unwrap().id();
    let data = pattern(THRESHOLD, 5);
    Rt::new().block_on(async {
        let conn = rpc_client(b"").connect(cluster.addr(0)).await.unwrap();
        let offsets = || (0..IN_FLIGHT).map(|i| i * THRESHOLD as u64);
        let round = || async {
            join_all(offsets().map(|o| write(&conn, 1, 0, o, data.clone()))).await;
            let back = join_all(offsets().map(|o| read(&conn, 1, 0, o, THRESHOLD))).await;
            assert!(back.iter().all(|b| *b == data));
        };
        for _ in 0..20 {
            round().await;
        }
        let (server, client) = (minor_faults(pid), thread_minor_faults());
        for _ in 0..ROUNDS {
            round().await;
        }
        let server = minor_faults(pid) - server;
        let client = thread_minor_faults() - client;
        // Each side assembles ROUNDS * IN_FLIGHT messages of 9 pages.
        assert!(
            server < 4 * ROUNDS && client < 4 * ROUNDS,
            "{} writes and reads of {THRESHOLD} bytes, {IN_FLIGHT} at a time, took {server} \
             page faults in the server and {client} in the client",
            ROUNDS * IN_FLIGHT
        );
    });
}

/// Bytes of `pid`'s mappings advised `MADV_HUGEPAGE` (`hg` in `/proc/<pid>/smaps`).
fn huge_page_advised_bytes(pid: u32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut size_kib = 0;
    let mut advised = 0;
    for line in smaps.lines() {
        if let Some(kib) = line.strip_prefix("Size:") {
            size_kib = kib
                .trim()
                .trim_end_matches(" kB")
                .trim()
                .parse::<u64>()
                .unwrap();
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            if flags.split_whitespace().any(|f| f == "hg") {
                advised += size_kib << 10;
            }
        }
    }
    advised
}

/// A memory server asks for huge pages for the chunks it stores when `storage.huge_pages`
/// is on, and only then.
#[test]
fn memory_servers_ask_for_huge_pages_for_chunks_when_told_to() {
    if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
        common::skip("huge pages", "the kernel has no transparent huge pages");
        return;
    }
    if std::env::var("GLIBC_TUNABLES").is_ok_and(|v| v.contains("glibc.malloc.hugetlb")) {
        common::skip("huge pages", "malloc asks for huge pages itself here");
        return;
    }
    // A server asks for as many huge pages as the kernel has free twice over: with plenty
    // free before and after the write, it asked for the whole chunk.
    let plenty = || benchfs_store::free_huge_page_bytes().is_some_and(|free| free >= 16 * CHUNK);
    // Servers 0 and 1 are told yes and no; server 2 keeps the default, `auto`, which says
    // yes unless this host hands freed memory back to a hypervisor.
    let mut cluster = Cluster::start(spec(3));
    for (i, value) in [(0, "true"), (1, "false")] {
        cluster.kill(i);
        cluster.restart_with_env(i, &[("BENCHFS_STORAGE_HUGE_PAGES", value)]);
    }
    let auto_says = !benchfs_store::free_page_reporting(std::path::Path::new(
        benchfs_store::VIRTIO_DEVICES_DIR,
    ));
    let pids: Vec<u32> = (0..3)
        .map(|i| cluster.children[i].as_ref().unwrap().id())
        .collect();
    let data = pattern(CHUNK as usize, 9);
    let plenty_before = plenty();
    Rt::new().block_on(async {
        for i in 0..3 {
            let conn = rpc_client(b"").connect(cluster.addr(i)).await.unwrap();
            write(&conn, 1, i as u64, 0, data.clone()).await;
        }
    });
    // Each server publishes what it chose.
    let published = benchfs_config::registry::read(&cluster.registry()).unwrap();
    for (i, want) in [(0, true), (1, false), (2, auto_says)] {
        let entry = published
            .iter()
            .find(|e| e.node_id == Cluster::node_id(i))
            .unwrap_or_else(|| panic!("node{i} is not in the registry: {published:?}"));
        assert_eq!(
            entry.settings.get("huge_pages").map(String::as_str),
            Some(if want { "true" } else { "false" }),
            "node{i}"
        );
    }
    if !(plenty_before && plenty()) {
        common::skip("huge pages", "free memory too fragmented for huge pages");
        return;
    }
    let advised = huge_page_advised_bytes(pids[0]);
    assert!(
        advised >= CHUNK,
        "a server with huge pages on advised {advised} bytes for a {CHUNK}-byte chunk"
    );
    assert_eq!(
        huge_page_advised_bytes(pids[1]),
        0,
        "a server with huge pages off"
    );
    let advised = huge_page_advised_bytes(pids[2]);
    assert_eq!(
        advised >= CHUNK,
        auto_says,
        "a default server advised {advised} bytes for a {CHUNK}-byte chunk, where auto says {auto_says}"
    );
}

#[test]
fn a_dropped_client_leaves_no_worker_behind() {
    // Regression: the task that drains replies the router gave back held the client's
    // reply stream, and with it the UCX worker, for as long as the thread's task set lived:
    // a program that made and dropped clients kept a worker, its connections and shared
    // memory for each.
    let cluster = Cluster::start(spec(1));
    let addr = cluster.addr(0);
    Rt::new().block_on(async {
        let client = rpc_client(b"");
        let conn = client.connect(addr).await.unwrap();
        conn.call::<ops::Ping>(&Empty).await.unwrap();
        let worker = Rc::downgrade(client.worker());
        drop(conn);
        drop(client);
        // The client's tasks see it gone and end within a few turns.
        let deadline = std::time::Instant::now() + FAIL_BOUND;
        while worker.strong_count() > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            worker.strong_count(),
            0,
            "the dropped client's worker lives on"
        );
    });
}

#[test]
fn every_call_of_a_client_without_the_secret_says_so() {
    // Regression (hostile run): calls that waited for a connection attempt another call
    // made, which the server refused for want of the job secret, failed with EIO "server
    // unavailable" instead of that refusal.
    let (_secrets, cluster) = cluster_with_secret(b"job-42-secret");
    let fs = cluster.client();
    for name in ["/a", "/b", "/c"] {
        // A deferred create's close sends the record and its parent's lookup at once.
        let fd = fs
            .open(
                &format!("{name}/f"),
                benchfs::blocking::OpenFlags::CREATE | benchfs::blocking::OpenFlags::WRITE,
                0o644,
            )
            .unwrap();
        fs.write(fd, b"data").unwrap();
        let closed = fs.close(fd);
        assert_eq!(common::files::errno_of(closed), libc::EACCES, "{name}/f");
        let e = fs.stat(name).unwrap_err().to_string();
        assert!(e.contains("job secret"), "{name}: {e}");
    }
}

/// One file's record and chunk 0 on one server, changed as clients change them.
struct OneFile<'a> {
    conn: &'a Connection,
    path: String,
    id: u64,
}

impl OneFile<'_> {
    /// Claims `len` bytes for an append; the record after the claim.
    async fn claim(&self, len: u64) -> FileMetadata {
        let req = ops::ClaimAppendRequest {
            path: self.path.clone(),
            file_id: self.id,
            floor: 0,
            len,
        };
        self.conn.call::<ops::ClaimAppend>(&req).await.unwrap().meta
    }

    /// A cut as a client makes it: the exact size, then the chunks with the record's count.
    async fn cut_to(&self, size: u64) -> FileMetadata {
        let req = ops::UpdateSizeRequest {
            path: self.path.clone(),
            file_id: self.id,
            size,
            how: SizeUpdate::Exact,
            cut_gen: 0,
        };
        let meta = self.conn.call::<ops::UpdateSize>(&req).await.unwrap().meta;
        self.cut_chunks(size, meta.cut_gen).await;
        meta
    }

    async fn cut_chunks(&self, len: u64, cut_gen: u16) {
        let cut = ops::TruncateFileRequest {
            file_id: self.id,
            index: 0,
            len,
            cut_gen,
            end: None,
        };
        self.conn.call::<ops::TruncateFile>(&cut).await.unwrap();
    }

    /// The chunk write of an append claimed on record `claimed`.
    async fn append(&self, at: u64, data: Vec<u8>, claimed: FileMetadata) {
        let req = ops::ChunkWrite {
            append_cut_gen: Some(claimed.cut_gen),
            ..chunk_write(self.id, 0, at, data.len())
        };
        let reply = self
            .conn
            .call_with::<ops::WriteChunk>(&req, data.clone())
            .await;
        // Answered in full: the bytes went, and the cut after them removed them.
        assert_eq!(reply.unwrap().reply.len, data.len() as u64);
    }

    async fn bytes(&self) -> Vec<u8> {
        read(self.conn, self.id, 0, 0, 4096).await
    }
}

/// An append claims its range on the record, then writes its chunk; a cut between the two
/// comes after it in the record's order (its cut count), so the chunk server drops what
/// the append's write would put past the cut: no bytes past the end to hold space or to
/// read back in a hole. Appends claimed after the cut, and plain writes, land whole.
#[test]
fn an_append_claimed_before_a_cut_lands_short_of_it() {
    let cluster = Cluster::start(spec(1));
    let addr = cluster.addr(0);
    Rt::new().block_on(async {
        let client = rpc_client(b"");
        let conn = client.connect(addr).await.unwrap();
        let path = "/appended".to_string();
        let create = ops::CreateRequest {
            path: path.clone(),
            mode: 0o644,
            chunk_size: 0,
            uid: 0,
            gid: 0,
        };
        let meta = conn.call::<ops::MetadataCreateFile>(&create).await;
        let meta = meta.unwrap().meta;
        assert_eq!(meta.cut_gen, 0);
        let file = OneFile {
            conn: &conn,
            path,
            id: meta.file_id,
        };

        let first = pattern(1000, 1);
        let claimed = file.claim(1000).await;
        assert_eq!((claimed.size, claimed.cut_gen), (1000, 0));
        let late = file.claim(100).await;
        file.append(0, first.clone(), claimed).await;
        let cut = file.cut_to(10).await;
        assert_eq!((cut.size, cut.cut_gen), (10, 1), "a cut moves the count");
        // The same size moves it too: the chunks past it were cut again.
        assert_eq!(file.cut_to(10).await.cut_gen, 2, "the same size as well");
        // The claim of 100 bytes at 1000 came before the cut; its write comes after.
        file.append(1000, pattern(100, 2), late).await;
        assert!(file.bytes().await == first[..10], "dropped past the cut");
        assert_eq!(
            stats(&conn).await.used_bytes,
            10,
            "nothing held past the cut"
        );

        // Claimed after the cut: lands at the new end.
        let after = file.claim(5).await;
        assert_eq!((after.size, after.cut_gen), (15, 2));
        let five = pattern(5, 3);
        file.append(10, five.clone(), after).await;
        let mut want = [&first[..10], &five].concat();
        assert!(file.bytes().await == want, "claimed after the cut");

        // Claimed before a cut that falls inside its range: lands up to the cut.
        let straddling = file.claim(50).await;
        assert_eq!(file.cut_to(40).await.cut_gen, 3);
        let fifty = pattern(50, 4);
        file.append(15, fifty.clone(), straddling).await;
        want.extend_from_slice(&fifty[..25]);
        assert!(file.bytes().await == want, "straddling the cut");

        // A plain write is no append: the cut does not order it, and it lands whole (its
        // writer publishes the size it reaches).
        write(&conn, file.id, 0, 100, pattern(8, 5)).await;
        assert_eq!(file.bytes().await.len(), 108);
        // Nor does a cut this server was told of late (an older count) undo the newer one.
        file.cut_chunks(4000, 1).await;
        file.append(200, pattern(8, 6), straddling).await;
        assert_eq!(file.bytes().await.len(), 108);
    });
}

/// A growing truncate zeroes only the range between the record's old end and its new
/// one (`TruncateFile` with an end): bytes past the range stay, since appends claimed
/// after the growth land there, and a chunk the range covers whole goes.
#[test]
fn a_growing_truncate_zeroes_its_range_and_keeps_what_lies_past_it() {
    let cluster = Cluster::start(spec(1));
    let addr = cluster.addr(0);
    Rt::new().block_on(async {
        let client = rpc_client(b"");
        let conn = client.connect(addr).await.unwrap();
        let id = 0x9a0;
        let zero = |from: (u64, u64), end: (u64, u64)| ops::TruncateFileRequest {
            file_id: id,
            index: from.0,
            len: from.1,
            cut_gen: 0,
            end: Some(end),
        };
        let (a, b, c) = (pattern(1000, 1), pattern(500, 2), pattern(300, 3));
        write(&conn, id, 0, 0, a.clone()).await;
        write(&conn, id, 1, 0, b.clone()).await;
        write(&conn, id, 2, 0, c.clone()).await;
        // Inside one chunk, with bytes past the range.
        conn.call::<ops::TruncateFile>(&zero((0, 100), (0, 300)))
            .await
            .unwrap();
        let want = [&a[..100], &[0; 200][..], &a[300..]].concat();
        assert!(read(&conn, id, 0, 0, 4096).await == want, "zeroed inside");
        // From chunk 0 to the middle of chunk 2: chunk 0 is shortened, chunk 1 removed,
        // the head of chunk 2 zeroed.
        conn.call::<ops::TruncateFile>(&zero((0, 800), (2, 200)))
            .await
            .unwrap();
        assert!(
            read(&conn, id, 0, 0, 4096).await == want[..800],
            "shortened"
        );
        assert!(read(&conn, id, 1, 0, 4096).await.is_empty(), "removed");
        let tail = [&[0; 200][..], &c[200..]].concat();
        assert!(read(&conn, id, 2, 0, 4096).await == tail, "head zeroed");
        assert_eq!(stats(&conn).await.chunks, 2);
        // A range that ends before it starts is refused.
        let backwards = conn.call::<ops::TruncateFile>(&zero((2, 50), (1, 0))).await;
        assert_eq!(status_of(backwards), Status::InvalidArgument);
    });
}
