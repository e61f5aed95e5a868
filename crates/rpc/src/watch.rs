//! The deadlines and connection failures of a client's calls in flight, checked by one task
//! every [`CHECK_INTERVAL`] rather than by a timer per call: a call's timeout and its
//! periodic failure check were two tokio timers registered and cleared per call, a fifth of
//! an 8-byte round trip over shared memory (1.93 → 1.63 µs p50 with the checker instead).
//! A configured timeout is at least `benchfs_proto::limits::RPC_TIMEOUT_MIN`, so the
//! slack below stays small beside it.
//!
//! A call that gets no reply ends between its timeout and about two [`CHECK_INTERVAL`]s
//! past it (each check sleeps an interval after the last; more if its thread stops driving
//! the runtime), or within about one interval after its connection failed. A reply already
//! in hand when the check fires still wins: a call looks at its verdict only after its own
//! work found nothing to return.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Weak;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use benchfs_ucx::{Endpoint, UcxError};

/// How often the calls in flight are checked: a call's deadline is set at the first check
/// that sees it and found at the first check after it, so a call may end up to about two
/// intervals past its timeout.
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_millis(20);

/// Longest time a call is given, whatever its timeout says (a year).
const DEADLINE_MAX: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why a watched call was stopped.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Its deadline passed.
    TimedOut,
    /// Its connection failed; no reply can come any more.
    Failed(UcxError),
}

struct WatchedCall {
    timeout: Duration,
    /// Set by the first check that sees the call, which comes at most one interval after
    /// it started: a call never ends before its timeout, and at most two intervals after.
    deadline: Option<Instant>,
    connection: Endpoint,
    waker: Option<Waker>,
    verdict: Option<Verdict>,
}

/// The calls in flight of one client, and the waker of the task that checks them.
///
/// Calls sit in a slab (a vector and its free slots), and a call's deadline is set by the
/// checker rather than from a clock read of its own: a hash map and a clock read per call
/// were a tenth of a round trip.
#[derive(Default)]
pub(crate) struct CallWatch {
    calls: RefCell<Vec<Option<WatchedCall>>>,
    free: RefCell<Vec<usize>>,
    live: Cell<usize>,
    /// The checker's waker while it is idle (no call in flight).
    checker: Cell<Option<Waker>>,
}

impl CallWatch {
    fn add(&self, timeout: Duration, connection: Endpoint) -> usize {
        let call = WatchedCall {
            timeout,
            deadline: None,
            connection,
            waker: None,
            verdict: None,
        };
        let mut calls = self.calls.borrow_mut();
        let slot = match self.free.borrow_mut().pop() {
            Some(slot) => {
                calls[slot] = Some(call);
                slot
            }
            None => {
                calls.push(Some(call));
                calls.len() - 1
            }
        };
        drop(calls);
        self.live.set(self.live.get() + 1);
        if let Some(checker) = self.checker.take() {
            checker.wake();
        }
        slot
    }

    fn remove(&self, slot: usize) {
        if let Some(call) = self.calls.borrow_mut().get_mut(slot) {
            if call.take().is_some() {
                self.live.set(self.live.get() - 1);
                self.free.borrow_mut().push(slot);
            }
        }
    }

    /// The call's verdict if it has one; else keeps `waker` to wake it with one.
    fn verdict_or_wait(&self, slot: usize, waker: &Waker) -> Option<Verdict> {
        let mut calls = self.calls.borrow_mut();
        let call = calls.get_mut(slot)?.as_mut()?;
        if let Some(verdict) = call.verdict.take() {
            return Some(verdict);
        }
        benchfs_ucx::keep_waker(&mut call.waker, waker);
        None
    }

    /// Gives a verdict to each call past its deadline or on a failed connection, and wakes it.
    fn check(&self, now: Instant) {
        let mut woken = Vec::new();
        for call in self.calls.borrow_mut().iter_mut().flatten() {
            if call.verdict.is_some() {
                continue;
            }
            // Capped: an overflow here would end the checker, and every later call with it.
            let deadline = *call
                .deadline
                .get_or_insert_with(|| now + call.timeout.min(DEADLINE_MAX));
            call.verdict = if now >= deadline {
                Some(Verdict::TimedOut)
            } else {
                call.connection.failure().map(Verdict::Failed)
            };
            if call.verdict.is_some() {
                woken.extend(call.waker.take());
            }
        }
        // Woken outside the borrow: a waker may poll its call at once.
        woken.into_iter().for_each(Waker::wake);
    }

    /// Runs `call` until it ends or is stopped, whichever is first; `connection` is the one
    /// whose failure stops it. The call is pinned by the caller: taken by value, it would
    /// sit in this future twice (an async fn keeps its argument and the pinned copy apart),
    /// and every future above it would grow by as much, to be copied at each await.
    pub(crate) async fn run<T>(
        &self,
        timeout: Duration,
        connection: &Endpoint,
        mut call: Pin<&mut impl Future<Output = T>>,
    ) -> Result<T, Verdict> {
        let slot = self.add(timeout, connection.clone());
        let _watched = Unwatch { watch: self, slot };
        poll_fn(|cx| match call.as_mut().poll(cx) {
            Poll::Ready(output) => Poll::Ready(Ok(output)),
            Poll::Pending => match self.verdict_or_wait(slot, cx.waker()) {
                Some(verdict) => Poll::Ready(Err(verdict)),
                None => Poll::Pending,
            },
        })
        .await
    }
}

impl Drop for CallWatch {
    /// Wakes an idle checker, which then finds the watch gone and ends.
    fn drop(&mut self) {
        if let Some(checker) = self.checker.take() {
            checker.wake();
        }
    }
}

/// Removes a call from the watch however it ends.
struct Unwatch<'a> {
    watch: &'a CallWatch,
    slot: usize,
}

impl Drop for Unwatch<'_> {
    fn drop(&mut self) {
        self.watch.remove(self.slot);
    }
}

/// Checks the calls of `watch` every [`CHECK_INTERVAL`] while any is in flight, and sleeps
/// without a timer while none is; ends when the watch is gone.
pub(crate) async fn check_calls(watch: Weak<CallWatch>) {
    loop {
        let idle = poll_fn(|cx: &mut Context<'_>| {
            let Some(watch) = watch.upgrade() else {
                return Poll::Ready(false);
            };
            if watch.live.get() == 0 {
                watch.checker.set(Some(cx.waker().clone()));
                return Poll::Pending;
            }
            Poll::Ready(true)
        });
        if !idle.await {
            return;
        }
        tokio::time::sleep(CHECK_INTERVAL).await;
        match watch.upgrade() {
            Some(watch) => watch.check(Instant::now()),
            None => return,
        }
    }
}
