//! Liveness of the io_uring store's completion polling: many tasks on one current-thread
//! runtime share a ring of depth 4, some drop their operations mid-flight, and every
//! operation must still finish. A missed wakeup (a completion in the CQ whose future is
//! never woken, or a submitter waiting for a place that is never woken) shows as a hang,
//! which the run's bound turns into a failure. Skips (and says so) without io_uring.
//!
//! Runs come in rounds that end with every task joined, so an op left asleep at the
//! tail of a round has nothing after it to wake it by chance.

mod common;

use std::rc::Rc;
use std::time::Duration;

use benchfs_store::{AnyChunkStore, Backend, ChunkId, ChunkStore};
use common::{buf_from, pattern, read, run, Harness};

/// Bound on one whole run; only a hang comes near it.
const RUN_TIMEOUT: Duration = Duration::from_secs(20);
/// Rounds per run; each round ends with all its tasks joined.
const ROUNDS: u64 = 400;
/// Tasks in a wide round (every fiftieth); the others use 2 to 8, so many rounds end
/// with a few ops in flight and nothing behind them.
const TASKS_WIDE: u64 = 256;
/// Steps per task per round.
const STEPS: u64 = 4;

/// A small deterministic generator (xorshift64*), so a failing schedule's choices repeat.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// One task's round: writes it reads back on its own chunk, writes it abandons (by a
/// tiny timeout, or by losing a `select!` against a sleep) on chunks it never checks,
/// and `sync`s, with yields and short sleeps between. Abandoned writes keep running in
/// the kernel, so aligned (O_DIRECT) and unaligned (buffered) ones get separate chunks:
/// a direct write racing a buffered one over the same pages fails page cache
/// invalidation, which the kernel reports as EIO at the next fsync.
// A plain tokio runtime, not benchfs_ucx::block_on: its yield_now is the one to stress.
#[allow(clippy::disallowed_methods)]
async fn task(store: Rc<AnyChunkStore>, round: u64, index: u64) {
    let s = &*store;
    let mut rng = Rng::new(round << 32 | index);
    let checked = ChunkId::new(1 + index, 0);
    for step in 0..STEPS {
        // 4096-aligned sizes and offsets take the O_DIRECT path, the rest buffered I/O.
        let (offset, len, scratch) = if rng.below(2) == 0 {
            (4096 * rng.below(4), 4096, ChunkId::new(1 + index, 1))
        } else {
            let offset = rng.below(8000);
            (
                offset,
                1 + rng.below(3000) as usize,
                ChunkId::new(1 + index, 2),
            )
        };
        let data = pattern(round * 1000 + index * 10 + step, len);
        match rng.below(6) {
            0 | 1 => {
                let buf = buf_from(s, &data).await;
                let (result, _) = s.write(checked, offset, buf).await;
                result.unwrap();
                assert_eq!(read(s, checked, offset, len).await, data);
            }
            2 => {
                let buf = buf_from(s, &data).await;
                let micros = rng.below(300);
                let write = s.write(scratch, offset, buf);
                if let Ok((result, _)) =
                    tokio::time::timeout(Duration::from_micros(micros), write).await
                {
                    result.unwrap();
                }
            }
            3 => {
                let buf = buf_from(s, &data).await;
                let micros = rng.below(300);
                tokio::select! {
                    (result, _) = s.write(scratch, offset, buf) => result.unwrap(),
                    () = tokio::time::sleep(Duration::from_micros(micros)) => {}
                }
            }
            4 => {
                let buf = s.buffer(len).await.unwrap();
                let micros = rng.below(300);
                tokio::select! {
                    (result, _) = s.read(scratch, offset, buf) => { result.unwrap(); }
                    () = tokio::time::sleep(Duration::from_micros(micros)) => {}
                }
            }
            _ => s.sync().await.unwrap(),
        }
        match rng.below(3) {
            0 => tokio::task::yield_now().await,
            1 => tokio::time::sleep(Duration::from_micros(rng.below(200))).await,
            _ => {}
        }
    }
}

async fn stress(h: Harness) {
    let store = h.store;
    let rounds = async {
        for round in 0..ROUNDS {
            let tasks = if round % 50 == 0 {
                TASKS_WIDE
            } else {
                2 + round % 7
            };
            let handles: Vec<_> = (0..tasks)
                .map(|index| tokio::task::spawn_local(task(store.clone(), round, index)))
                .collect();
            for handle in handles {
                handle.await.unwrap();
            }
        }
    };
    if tokio::time::timeout(RUN_TIMEOUT, rounds).await.is_err() {
        panic!("stress run still pending after {RUN_TIMEOUT:?}: an op missed its wakeup");
    }
}

#[test]
fn buffered_ops_all_complete() {
    run(Backend::IoUring, false, None, stress);
}

#[test]
fn direct_ops_all_complete() {
    run(Backend::IoUring, true, None, stress);
}
