//! Model test: random op sequences on each backend, checked against a `BTreeMap` of
//! chunk contents after every step.

mod common;

use std::collections::BTreeMap;

use benchfs_store::{Backend, ChunkId, ChunkStat, ChunkStore, StoreError};
use common::{buf_from, read, run, CHUNK};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

#[derive(Clone, Debug)]
enum Op {
    Write {
        id: ChunkId,
        offset: u64,
        len: usize,
        seed: u8,
    },
    Read {
        id: ChunkId,
        offset: u64,
        len: usize,
    },
    Truncate {
        id: ChunkId,
        len: u64,
    },
    Remove {
        id: ChunkId,
    },
    RemoveFile {
        file_id: u64,
    },
    Reopen,
}

fn id() -> impl Strategy<Value = ChunkId> {
    (0..3u64, 0..3u64).prop_map(|(f, i)| ChunkId::new(f, i))
}

/// Offsets and lengths biased to the O_DIRECT boundaries.
fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![0..CHUNK, (0..CHUNK / 4096).prop_map(|b| b * 4096)]
}

fn len() -> impl Strategy<Value = usize> {
    prop_oneof![0..9000usize, (1..4usize).prop_map(|b| b * 4096)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (id(), offset(), len(), any::<u8>()).prop_map(|(id, offset, len, seed)| Op::Write { id, offset, len, seed }),
        3 => (id(), offset(), len()).prop_map(|(id, offset, len)| Op::Read { id, offset, len }),
        1 => (id(), 0..CHUNK + 1).prop_map(|(id, len)| Op::Truncate { id, len }),
        1 => id().prop_map(|id| Op::Remove { id }),
        1 => (0..3u64).prop_map(|file_id| Op::RemoveFile { file_id }),
        1 => Just(Op::Reopen),
    ]
}

type Model = BTreeMap<ChunkId, Vec<u8>>;

fn check(ops: Vec<Op>, backend: Backend, o_direct: bool) {
    run(backend, o_direct, None, |mut h| async move {
        let mut model = Model::new();
        for op in ops {
            apply(&mut h, &mut model, &op).await;
            check_invariants(&h, &model).await;
        }
    });
}

async fn apply(h: &mut common::Harness, model: &mut Model, op: &Op) {
    let s = &*h.store;
    match *op {
        Op::Write {
            id,
            offset,
            len,
            seed,
        } => {
            let data: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8) | 1).collect();
            let buf = buf_from(s, &data).await;
            let (result, _) = s.write(id, offset, buf).await;
            let end = offset as usize + len;
            if end as u64 > CHUNK {
                assert!(
                    matches!(result, Err(StoreError::OutOfRange { .. })),
                    "{op:?}"
                );
            } else {
                result.unwrap();
                if len > 0 {
                    let chunk = model.entry(id).or_default();
                    if chunk.len() < end {
                        chunk.resize(end, 0);
                    }
                    chunk[offset as usize..end].copy_from_slice(&data);
                }
            }
        }
        Op::Read { id, offset, len } => {
            if offset + len as u64 > CHUNK {
                let buf = s.buffer(len.min(CHUNK as usize)).await.unwrap();
                let (result, _) = s.read(id, CHUNK - buf.len() as u64 + 1, buf).await;
                assert!(matches!(result, Err(StoreError::OutOfRange { .. })));
                return;
            }
            let chunk = model.get(&id).map(Vec::as_slice).unwrap_or_default();
            let start = (offset as usize).min(chunk.len());
            let end = (offset as usize + len).min(chunk.len());
            assert_eq!(read(s, id, offset, len).await, chunk[start..end], "{op:?}");
        }
        Op::Truncate { id, len } => {
            let result = s.truncate(id, len).await;
            if len > CHUNK {
                assert!(matches!(result, Err(StoreError::OutOfRange { .. })));
            } else {
                result.unwrap();
                model.entry(id).or_default().resize(len as usize, 0);
            }
        }
        Op::Remove { id } => {
            assert_eq!(s.remove(id).await.unwrap(), model.remove(&id).is_some());
        }
        Op::RemoveFile { file_id } => {
            let before = model.len();
            model.retain(|id, _| id.file_id != file_id);
            let removed = (before - model.len()) as u64;
            assert_eq!(s.remove_file(file_id).await.unwrap(), removed);
        }
        Op::Reopen => {
            if h.config.backend != Backend::Memory {
                h.store.sync().await.unwrap();
                h.reopen();
            }
        }
    }
}

/// The store lists exactly the model's chunks, with the model's lengths and usage.
async fn check_invariants(h: &common::Harness, model: &Model) {
    let s = &*h.store;
    let listed = s.list().await.unwrap();
    assert!(
        listed.iter().eq(model.keys()),
        "{listed:?} vs {:?}",
        model.keys()
    );
    for (id, data) in model {
        assert_eq!(
            s.stat(*id).await.unwrap(),
            Some(ChunkStat {
                len: data.len() as u64
            })
        );
    }
    let usage = s.usage();
    assert_eq!(usage.chunks, model.len() as u64);
    assert_eq!(
        usage.used_bytes,
        model.values().map(|c| c.len() as u64).sum::<u64>()
    );
}

fn drive(backend: Backend, o_direct: bool, cases: u32) {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&prop::collection::vec(op(), 1..40), |ops| {
            check(ops, backend, o_direct);
            Ok(())
        })
        .unwrap();
}

#[test]
fn memory() {
    drive(Backend::Memory, false, 256);
}

#[test]
fn file() {
    drive(Backend::File, false, 64);
}

#[test]
fn file_direct() {
    drive(Backend::File, true, 32);
}

#[test]
fn iouring() {
    drive(Backend::IoUring, false, 64);
}

#[test]
fn iouring_direct() {
    drive(Backend::IoUring, true, 64);
}

/// Nine chunk ids over a memory tier of four: the model also checks eviction, write-back
/// and the reopen after a sync.
#[test]
fn tiered() {
    drive(Backend::Tiered, false, 128);
}
