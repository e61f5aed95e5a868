//! Every decoder meets arbitrary bytes and must answer with a value or an error, never a
//! panic; every encoder's output decodes back to the same value. `BENCHFS_FUZZ_CASES` sets
//! the number of cases of each test (`make fuzz` runs a long one).

use benchfs_proto::frame::FRAME_HEADER_LEN;
use benchfs_proto::meta::{EntryKind, FileMetadata, SizeUpdate};
use benchfs_proto::ops::*;
use benchfs_proto::{Frame, Message, OpCode};
use proptest::prelude::*;

/// Cases per test: `BENCHFS_FUZZ_CASES` when set, else `default`.
fn fuzz_cases(default: u32) -> u32 {
    std::env::var("BENCHFS_FUZZ_CASES").map_or(default, |v| {
        v.parse().expect("BENCHFS_FUZZ_CASES must be a number")
    })
}

fn decode_all(bytes: &[u8]) {
    let _ = Frame::decode(bytes, bytes.len());
    let _ = Frame::decode(
        bytes.get(..FRAME_HEADER_LEN).unwrap_or(bytes),
        bytes.len().saturating_sub(FRAME_HEADER_LEN),
    );
    let _ = HelloRequest::from_bytes(bytes);
    let _ = HelloReply::from_bytes(bytes);
    let _ = ChunkIo::from_bytes(bytes);
    let _ = ChunkWrite::from_bytes(bytes);
    let _ = ChunkIoReply::from_bytes(bytes);
    let _ = PathRequest::from_bytes(bytes);
    let _ = CreateRequest::from_bytes(bytes);
    let _ = DeleteRequest::from_bytes(bytes);
    let _ = MetadataReply::from_bytes(bytes);
    let _ = SizeReply::from_bytes(bytes);
    let _ = ReaddirRequest::from_bytes(bytes);
    let _ = ReaddirReply::from_bytes(bytes);
    let _ = TruncateFileRequest::from_bytes(bytes);
    let _ = UpdateSizeRequest::from_bytes(bytes);
    let _ = ClaimAppendRequest::from_bytes(bytes);
    let _ = RestoreSizeRequest::from_bytes(bytes);
    let _ = LocateFileRequest::from_bytes(bytes);
    let _ = LocateFileReply::from_bytes(bytes);
    let _ = InsertRequest::from_bytes(bytes);
    let _ = RemoveChunksRequest::from_bytes(bytes);
    let _ = CountReply::from_bytes(bytes);
    let _ = StatsReply::from_bytes(bytes);
    let _ = FileIdsRequest::from_bytes(bytes);
    let _ = FileStatesReply::from_bytes(bytes);
    let _ = AuthRequest::from_bytes(bytes);
    let _ = SetAttrRequest::from_bytes(bytes);
    let _ = StoreProbeRequest::from_bytes(bytes);
    let _ = PurgeRequest::from_bytes(bytes);
    let _ = CreateDirReply::from_bytes(bytes);
    let _ = StoreProbeReply::from_bytes(bytes);
    let _ = RecordReply::from_bytes(bytes);
    let _ = CreateInlineRequest::from_bytes(bytes);
    let _ = CreateInlineReply::from_bytes(bytes);
    let _ = WriteInlineRequest::from_bytes(bytes);
    let _ = SealInlineRequest::from_bytes(bytes);
    let _ = DropInlineRequest::from_bytes(bytes);
    let _ = CompareRequest::from_bytes(bytes);
    let _ = CompareReply::from_bytes(bytes);
}

fn meta() -> impl Strategy<Value = FileMetadata> {
    (
        (
            any::<u64>(),
            0usize..3,
            any::<u64>(),
            any::<u32>(),
            12u32..27,
        ),
        (any::<u64>(), any::<u64>(), any::<u64>()),
        (any::<u32>(), any::<u32>(), any::<u64>()),
    )
        .prop_map(
            |(
                (file_id, kind, size, mode, shift),
                (mtime_ns, ctime_ns, atime_ns),
                (uid, gid, birth_ns),
            )| {
                FileMetadata {
                    file_id,
                    kind: [EntryKind::File, EntryKind::Directory, EntryKind::Symlink][kind],
                    size,
                    mode,
                    uid,
                    gid,
                    chunk_size: 1 << shift,
                    mtime_ns,
                    ctime_ns,
                    atime_ns,
                    birth_ns,
                    inline: false,
                    cut_gen: (size % 65536) as u16,
                }
            },
        )
}

/// An inline file's record and its bytes.
fn inline_record() -> impl Strategy<Value = (FileMetadata, Vec<u8>)> {
    (meta(), proptest::collection::vec(any::<u8>(), 0..200)).prop_map(|(m, data)| {
        let meta = FileMetadata {
            kind: EntryKind::File,
            inline: true,
            size: data.len() as u64,
            ..m
        };
        (meta, data)
    })
}

/// A record's bytes with the record, where one byte of the encoding is changed.
fn corrupt_record(meta: FileMetadata, data: &[u8], at: usize, byte: u8) -> Vec<u8> {
    let mut bytes = RecordReply {
        meta,
        data: data.to_vec(),
    }
    .to_bytes();
    let at = at % bytes.len();
    bytes[at] = byte;
    bytes
}

/// A stats reply with an entry for every other operation, its numbers from `a` and `b`.
fn stats_with_ops(a: u64, b: u64) -> StatsReply {
    let ops = OpCode::ALL
        .iter()
        .step_by(2)
        .map(|&op| OpStats {
            op,
            requests: a,
            errors: b,
            bytes_in: a ^ b,
            bytes_out: 1,
            latency_p50_ns: 2,
            latency_p90_ns: 3,
            latency_p99_ns: 4,
            latency_p999_ns: 5,
            latency_max_ns: b,
            latency_sum_ns: a,
        })
        .collect();
    StatsReply {
        queue_depth: a,
        queue_depth_max: b,
        ops,
        ..Default::default()
    }
}

/// A stats reply's bytes with one byte of its operation entries changed.
fn corrupt_stats(a: u64, at: usize, byte: u8) -> Vec<u8> {
    let mut bytes = stats_with_ops(a, a).to_bytes();
    let at = 84 + at % (bytes.len() - 84);
    bytes[at] = byte;
    bytes
}

fn round_trip<M: Message + PartialEq + std::fmt::Debug>(m: &M) -> Result<(), TestCaseError> {
    let bytes = m.to_bytes();
    prop_assert_eq!(&M::from_bytes(&bytes).unwrap(), m);
    for cut in 0..bytes.len() {
        prop_assert!(
            M::from_bytes(&bytes[..cut]).is_err(),
            "a truncated body must not decode"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_cases(500)))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn corrupted_frames_never_panic(op in 0usize..OpCode::ALL.len(), body in 0usize..100, flip in 0usize..FRAME_HEADER_LEN, bit in 0u8..8) {
        let h = Frame::header(OpCode::ALL[op], 1, 0, false, body, 0);
        let mut bytes = zerocopy::IntoBytes::as_bytes(&h).to_vec();
        bytes[flip] ^= 1 << bit;
        let _ = Frame::decode(&bytes, body);
    }

    #[test]
    fn corrupted_stats_never_panic(a in any::<u64>(), at in any::<usize>(), byte in any::<u8>()) {
        let bytes = corrupt_stats(a, at, byte);
        if let Ok(reply) = StatsReply::from_bytes(&bytes) {
            prop_assert!(reply.ops.len() <= OpCode::ALL.len());
            prop_assert!(reply.ops.windows(2).all(|w| (w[0].op as u16) < (w[1].op as u16)));
        }
    }

    #[test]
    fn corrupted_records_keep_their_bytes_in_step(
        (meta, data) in inline_record(),
        at in any::<usize>(),
        byte in any::<u8>(),
    ) {
        let bytes = corrupt_record(meta, &data, at, byte);
        // Whatever decodes is an inline record with exactly its size in bytes, or another
        // with none.
        if let Ok(reply) = RecordReply::from_bytes(&bytes) {
            let expected = if reply.meta.inline { reply.meta.size } else { 0 };
            prop_assert_eq!(reply.data.len() as u64, expected);
        }
        if let Ok(insert) = InsertRequest::from_bytes(&bytes) {
            let expected = if insert.meta.inline { insert.meta.size } else { 0 };
            prop_assert_eq!(insert.data.len() as u64, expected);
        }
    }

    #[test]
    fn inline_bodies_round_trip(
        path in "/[a-z]{0,40}",
        (meta, data) in inline_record(),
        id in any::<u64>(),
        token in any::<u64>(),
        offset in 0u64..1024,
    ) {
        round_trip(&RecordReply { meta, data: data.clone() })?;
        let plain = FileMetadata { inline: false, ..meta };
        round_trip(&RecordReply { meta: plain, data: Vec::new() })?;
        round_trip(&InsertRequest { path: path.clone(), meta, exclusive: false, settled_only: true, newer_only: true, data: data.clone() })?;
        round_trip(&CreateInlineRequest { path: path.clone(), mode: 0o600, chunk_size: 0, uid: 3, gid: 4, data: data.clone() })?;
        round_trip(&CreateInlineReply { meta, created: true, data: Vec::new() })?;
        round_trip(&CreateInlineReply { meta, created: false, data: data.clone() })?;
        round_trip(&WriteInlineRequest { path: path.clone(), file_id: id, offset, data: data.clone() })?;
        round_trip(&SealInlineRequest { path: path.clone(), file_id: id, token })?;
        round_trip(&DropInlineRequest { path: path.clone(), file_id: id, token, moved: true })?;
        // Bytes that disagree with the record are refused.
        let short = RecordReply { meta, data: data[..data.len().saturating_sub(1)].to_vec() };
        prop_assert!(data.is_empty() || RecordReply::from_bytes(&short.to_bytes()).is_err());
        let stray = RecordReply { meta: plain, data: vec![1] };
        prop_assert!(RecordReply::from_bytes(&stray.to_bytes()).is_err());
        let created_with_bytes = CreateInlineReply { meta, created: true, data: vec![1] };
        prop_assert!(CreateInlineReply::from_bytes(&created_with_bytes.to_bytes()).is_err());
        let past = WriteInlineRequest {
            path: path.clone(),
            file_id: id,
            offset: benchfs_proto::limits::INLINE_BYTES_MAX,
            data: vec![1],
        };
        prop_assert!(WriteInlineRequest::from_bytes(&past.to_bytes()).is_err());
    }

    #[test]
    fn messages_round_trip(
        path in "/[a-z]{0,40}",
        m in meta(),
        id in any::<u64>(),
        len in any::<u64>(),
        names in proptest::collection::vec(("[a-z0-9]{1,20}", meta()), 0..20),
    ) {
        round_trip(&PathRequest { path: path.clone() })?;
        round_trip(&CreateRequest { path: path.clone(), mode: 0o644, chunk_size: 1 << 16, uid: 7, gid: 8 })?;
        round_trip(&SetAttrRequest { path: path.clone(), file_id: id, set: set_attr::ALL, mode: 0o600, uid: 1, gid: 2, atime_ns: len, mtime_ns: id, ctime_ns: 3 })?;
        round_trip(&DeleteRequest { path: path.clone(), expect: Some(EntryKind::Directory), moved: true })?;
        round_trip(&MetadataReply { meta: m })?;
        round_trip(&InsertRequest { path: path.clone(), meta: m, exclusive: true, settled_only: false, newer_only: false, data: Vec::new() })?;
        round_trip(&UpdateSizeRequest { path: path.clone(), file_id: id, size: len, how: SizeUpdate::Exact, cut_gen: id as u16 })?;
        round_trip(&UpdateSizeRequest { path: path.clone(), file_id: id, size: len, how: SizeUpdate::AtLeastUncut, cut_gen: id as u16 })?;
        round_trip(&ClaimAppendRequest { path: path.clone(), file_id: id, floor: len, len: id })?;
        round_trip(&LocateFileRequest { file_id: id })?;
        round_trip(&LocateFileReply { path: Some(path.clone()) })?;
        round_trip(&LocateFileReply { path: None })?;
        round_trip(&ChunkIo { file_id: id, index: 3, offset: 5, len: 10 })?;
        round_trip(&ChunkWrite { io: ChunkIo { file_id: id, index: 3, offset: 5, len: 10 }, file_birth_ns: len, chunk_held: id, append_cut_gen: None, hole_before: false })?;
        round_trip(&ChunkWrite { io: ChunkIo { file_id: id, index: 3, offset: 5, len: 10 }, file_birth_ns: len, chunk_held: id, append_cut_gen: Some(id as u16), hole_before: true })?;
        round_trip(&ReaddirRequest { dir: path.clone(), after: Some("x".into()), limit: 7 })?;
        round_trip(&ReaddirReply { entries: names, done: true })?;
        round_trip(&PurgeRequest { dir: path.clone(), changed_before_ns: id })?;
        round_trip(&CreateDirReply { meta: m, stale_below: id % 2 == 0 })?;
        round_trip(&TruncateFileRequest { file_id: id, index: 1, len, cut_gen: id as u16, end: None })?;
        round_trip(&TruncateFileRequest { file_id: id, index: 1, len, cut_gen: 0, end: Some((id, len)) })?;
        round_trip(&SizeReply { meta: m, size_before: len, cut_gen_before: id as u16 })?;
        round_trip(&RestoreSizeRequest { path: path.clone(), file_id: id, now_size: len, now_cut_gen: 3, now_ctime_ns: len, size: id, cut_gen: 2 })?;
        round_trip(&HelloRequest { client: "c".into() })?;
        round_trip(&AuthRequest { proof: vec![1, 2] })?;
        round_trip(&HelloReply { node_id: "node0".into(), chunk_size: 4096, rdma_threshold: 32768, born_ns: id, born_again: id % 2 == 1, replicas: 2, virtual_nodes: 150, challenge: vec![3; 32] })?;
        round_trip(&StatsReply { chunks: id, ..Default::default() })?;
        round_trip(&stats_with_ops(id, len))?;
        round_trip(&StoreProbeRequest { bytes: id, block: len as u32 })?;
        round_trip(&StoreProbeReply { bytes: id, write_ns: len, read_ns: 7 })?;
        round_trip(&FileIdsRequest { file_ids: vec![id, len, 0] })?;
        round_trip(&FileStatesReply { named: vec![id], deleted: vec![len, 0] })?;
        round_trip(&CountReply { count: id })?;
        round_trip(&CompareRequest { records: vec![(path.clone(), id), ("/".into(), len)] })?;
        let states = [None, Some(m)].into_iter().flat_map(|meta| {
            [(false, false), (true, false), (false, true), (true, true)]
                .map(|(settled, deleted)| RecordState { meta, data_hash: meta.map_or(0, |_| len ^ id), settled, deleted })
        });
        round_trip(&CompareReply { states: states.collect() })?;
        let too_many = CompareRequest { records: vec![(path.clone(), id); COMPARE_RECORDS_MAX + 1] };
        prop_assert!(CompareRequest::from_bytes(&too_many.to_bytes()).is_err());
    }
}
