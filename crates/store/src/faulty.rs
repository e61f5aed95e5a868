//! [`FaultyStore`]: any store, with faults injected by a seeded plan, to test that what
//! sits above a store (the server, the client, replication) never turns a store's failure
//! into wrong bytes or a lost acknowledgement.
//!
//! A plan ([`FaultPlan`], written `seed=7,every=20,kinds=io+nospace+torn+slow`) fails
//! about one operation in `every`, picking the kind from `kinds` by the seeded generator:
//!
//! - `io`: the operation fails with EIO and does nothing;
//! - `nospace`: a write or truncate fails with ENOSPC and does nothing;
//! - `torn`: a write stores only its first half, then fails with EIO (a device that
//!   failed part way);
//! - `slow`: the operation waits `slow_ms` first, then runs.
//!
//! Without a plan the wrapper only forwards (one branch per call): the server always holds
//! one, so the store it measures is the store it tests.

use std::cell::Cell;
use std::fmt;
use std::io;
use std::time::Duration;

use crate::StoreUsage;
use crate::{AnyChunkStore, ChunkBuf, ChunkId, ChunkStat, ChunkStore, ChunkView, StoreError};

/// One kind of injected fault; see [`FaultPlan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// EIO, nothing done.
    Io,
    /// ENOSPC on a write or truncate, nothing done.
    NoSpace,
    /// A write stores its first half, then EIO.
    Torn,
    /// A delay before the operation.
    Slow,
}

impl FaultKind {
    const ALL: [FaultKind; 4] = [
        FaultKind::Io,
        FaultKind::NoSpace,
        FaultKind::Torn,
        FaultKind::Slow,
    ];

    fn name(self) -> &'static str {
        match self {
            FaultKind::Io => "io",
            FaultKind::NoSpace => "nospace",
            FaultKind::Torn => "torn",
            FaultKind::Slow => "slow",
        }
    }
}

/// Which faults to inject, how often, from which seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultPlan {
    /// Seeds the generator: the same plan on the same calls injects the same faults.
    pub seed: u64,
    /// About one operation in `every` gets a fault (at least 1).
    pub every: u64,
    /// The kinds to pick from.
    pub kinds: Vec<FaultKind>,
    /// How long a `slow` fault waits.
    pub slow: Duration,
}

impl std::str::FromStr for FaultPlan {
    type Err = StoreError;

    /// Parses `seed=S,every=N,kinds=K+K…[,slow_ms=M]`; `kinds` defaults to all of them.
    fn from_str(text: &str) -> Result<FaultPlan, StoreError> {
        let bad = |reason: String| StoreError::InvalidConfig {
            field: "fault plan",
            reason,
        };
        let mut plan = FaultPlan {
            seed: 0,
            every: 0,
            kinds: FaultKind::ALL.to_vec(),
            slow: Duration::from_millis(50),
        };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("`{part}` is not key=value")))?;
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| bad(format!("`{key}` wants a number, not `{value}`")))
            };
            match key {
                "seed" => plan.seed = number()?,
                "every" => plan.every = number()?,
                "slow_ms" => plan.slow = Duration::from_millis(number()?),
                "kinds" => {
                    plan.kinds = value
                        .split('+')
                        .map(|k| {
                            FaultKind::ALL
                                .into_iter()
                                .find(|f| f.name() == k)
                                .ok_or_else(|| {
                                    bad(format!("unknown kind `{k}` (io, nospace, torn, slow)"))
                                })
                        })
                        .collect::<Result<_, _>>()?
                }
                _ => {
                    return Err(bad(format!(
                        "unknown key `{key}` (seed, every, kinds, slow_ms)"
                    )))
                }
            }
        }
        if plan.every == 0 {
            return Err(bad("`every` must be at least 1".into()));
        }
        if plan.kinds.is_empty() {
            return Err(bad("`kinds` is empty".into()));
        }
        Ok(plan)
    }
}

impl fmt::Display for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds: Vec<&str> = self.kinds.iter().map(|k| k.name()).collect();
        write!(
            f,
            "seed={},every={},kinds={},slow_ms={}",
            self.seed,
            self.every,
            kinds.join("+"),
            self.slow.as_millis()
        )
    }
}

/// A store that injects the faults of an optional [`FaultPlan`]: about one operation in
/// `every` fails with EIO (nothing done), ENOSPC (writes and truncates, nothing done), a
/// torn write (its first half stored, then EIO), or is delayed by `slow`.
#[derive(Debug)]
pub struct FaultyStore<S> {
    inner: S,
    plan: Option<FaultPlan>,
    /// splitmix64 state: a seeded generator of a few lines needs no dependency.
    state: Cell<u64>,
    injected: Cell<u64>,
}

impl FaultyStore<AnyChunkStore> {
    /// [`AnyChunkStore::read_in_place`] when no plan is set: a read in place would skip
    /// the faults a plan injects into reads.
    pub fn read_in_place(&self, id: ChunkId, offset: u64, len: usize) -> Option<ChunkView> {
        match self.plan {
            Some(_) => None,
            None => self.inner.read_in_place(id, offset, len),
        }
    }

    /// [`AnyChunkStore::kept_since_open`].
    pub fn kept_since_open(&self, id: ChunkId) -> bool {
        self.inner.kept_since_open(id)
    }
}

impl<S: ChunkStore> FaultyStore<S> {
    /// Wraps `inner`; with no plan every call is forwarded unchanged.
    pub fn new(inner: S, plan: Option<FaultPlan>) -> FaultyStore<S> {
        let seed = plan.as_ref().map_or(0, |p| p.seed);
        FaultyStore {
            inner,
            plan,
            state: Cell::new(seed),
            injected: Cell::new(0),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// How many faults were injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.get()
    }

    fn next(&self) -> u64 {
        let s = self.state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        self.state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The fault for this call, if any, among `allowed`; a `slow` one is served here.
    async fn fault(&self, allowed: &[FaultKind]) -> Option<FaultKind> {
        let plan = self.plan.as_ref()?;
        if !self.next().is_multiple_of(plan.every) {
            return None;
        }
        let kind = plan.kinds[(self.next() % plan.kinds.len() as u64) as usize];
        if !allowed.contains(&kind) {
            return None;
        }
        self.injected.set(self.injected.get() + 1);
        if kind == FaultKind::Slow {
            tokio::time::sleep(plan.slow).await;
            return None;
        }
        Some(kind)
    }
}

fn injected_io() -> StoreError {
    StoreError::io("injected fault", io::Error::from_raw_os_error(libc::EIO), 0)
}

fn injected_no_space(needed: u64) -> StoreError {
    StoreError::NoSpace {
        needed,
        available: 0,
    }
}

/// The faults every operation may meet: any operation can fail or be slow.
const FAIL_OR_DELAY: [FaultKind; 2] = [FaultKind::Io, FaultKind::Slow];

impl<S: ChunkStore> ChunkStore for FaultyStore<S> {
    fn chunk_size(&self) -> u64 {
        self.inner.chunk_size()
    }

    async fn buffer(&self, len: usize) -> Result<ChunkBuf, StoreError> {
        self.inner.buffer(len).await
    }

    async fn write(
        &self,
        id: ChunkId,
        offset: u64,
        mut buf: ChunkBuf,
    ) -> (Result<(), StoreError>, ChunkBuf) {
        match self.fault(&FaultKind::ALL).await {
            None => self.inner.write(id, offset, buf).await,
            Some(FaultKind::NoSpace) => (Err(injected_no_space(buf.len() as u64)), buf),
            Some(FaultKind::Torn) if buf.len() > 1 => {
                let len = buf.len();
                buf.set_len(len / 2);
                let (stored, mut buf) = self.inner.write(id, offset, buf).await;
                // A store that took the buffer's memory gives back an empty one.
                if buf.capacity() >= len {
                    buf.set_len(len);
                }
                (stored.and(Err(injected_io())), buf)
            }
            Some(_) => (Err(injected_io()), buf),
        }
    }

    async fn read(
        &self,
        id: ChunkId,
        offset: u64,
        buf: ChunkBuf,
    ) -> (Result<usize, StoreError>, ChunkBuf) {
        match self.fault(&FAIL_OR_DELAY).await {
            None => self.inner.read(id, offset, buf).await,
            Some(_) => (Err(injected_io()), buf),
        }
    }

    async fn truncate(&self, id: ChunkId, len: u64) -> Result<(), StoreError> {
        match self
            .fault(&[FaultKind::Io, FaultKind::NoSpace, FaultKind::Slow])
            .await
        {
            None => self.inner.truncate(id, len).await,
            Some(FaultKind::NoSpace) => Err(injected_no_space(len)),
            Some(_) => Err(injected_io()),
        }
    }

    async fn remove(&self, id: ChunkId) -> Result<bool, StoreError> {
        match self.fault(&FAIL_OR_DELAY).await {
            None => self.inner.remove(id).await,
            Some(_) => Err(injected_io()),
        }
    }

    async fn remove_file(&self, file_id: u64) -> Result<u64, StoreError> {
        match self.fault(&FAIL_OR_DELAY).await {
            None => self.inner.remove_file(file_id).await,
            Some(_) => Err(injected_io()),
        }
    }

    async fn stat(&self, id: ChunkId) -> Result<Option<ChunkStat>, StoreError> {
        self.inner.stat(id).await
    }

    async fn list(&self) -> Result<Vec<ChunkId>, StoreError> {
        self.inner.list().await
    }

    async fn file_chunks(&self, file_id: u64) -> Result<Vec<(u64, ChunkStat)>, StoreError> {
        self.inner.file_chunks(file_id).await
    }

    async fn sync(&self) -> Result<(), StoreError> {
        match self.fault(&FAIL_OR_DELAY).await {
            None => self.inner.sync().await,
            Some(_) => Err(injected_io()),
        }
    }

    fn usage(&self) -> StoreUsage {
        self.inner.usage()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InMemoryChunkStore;

    #[test]
    fn plans_parse_and_print_back() {
        let plan: FaultPlan = "seed=7, every=3,kinds=io+torn,slow_ms=9".parse().unwrap();
        assert_eq!(plan.to_string(), "seed=7,every=3,kinds=io+torn,slow_ms=9");
        assert_eq!(plan.to_string().parse::<FaultPlan>().unwrap(), plan);
        let all: FaultPlan = "every=1".parse().unwrap();
        assert_eq!(all.kinds, FaultKind::ALL);
        for (bad, says) in [
            ("", "`every` must be at least 1"),
            ("every=0", "`every` must be at least 1"),
            ("every=2,kinds=io+fire", "unknown kind `fire`"),
            ("every=2,colour=red", "unknown key `colour`"),
            ("every=two", "`every` wants a number"),
            ("every", "`every` is not key=value"),
        ] {
            let e = bad.parse::<FaultPlan>().unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn every_operation_fails_when_every_is_one() {
        let plan = FaultPlan {
            seed: 1,
            every: 1,
            kinds: vec![FaultKind::Io],
            slow: Duration::ZERO,
        };
        let mut store = FaultyStore::new(InMemoryChunkStore::new(1 << 20), Some(plan));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let e = store.write_chunk(1, 0, 0, b"abc").await.unwrap_err();
            assert_eq!(e.errno(), libc::EIO);
            assert_eq!(
                store.inner().usage().chunks,
                0,
                "a failed write stores nothing"
            );
            assert!(store.remove_file(1).await.is_err());
        });
        assert_eq!(store.injected(), 2);
    }
}
