//! [`block_on`]: the event loop of a thread whose work comes from its UCX worker.
//!
//! tokio's `LocalSet::block_on` polls the future it drives only between turns of the
//! runtime, each costing an `epoll_wait`, and every wake of that future writes the
//! runtime's eventfd; `tokio::task::yield_now` holds a task back until the next such turn.
//! A progress task that yields after each poll therefore paid a system call per poll, and
//! a reply reached the blocked caller only after two more. Here the loop turns the local
//! set itself: each turn polls the driven future if something woke it, then runs the tasks
//! that are ready, the progress task among them (it asks for the next turn instead of
//! yielding to the runtime, see [`yield_turn`]). The runtime gets the thread back (its
//! event queue, timers, the tasks that yielded to it) every [`TURNS_PER_VISIT`] turns and
//! whenever no task asks for another turn, when it sleeps in `epoll_wait` as before.
//! The future's first poll comes before all that, in the runtime's and the set's context
//! only: an operation that asks no server (an open that defers its create) ends there,
//! with no turn at all, and so does one call alone, whose future wakes itself to be
//! polled again at once and then waits for its reply in that poll.
//!
//! **Contract:** a `LocalSet` driven by [`block_on`] is only ever driven by it: a progress
//! task that asked for the next turn waits for the next `block_on` on its thread.
//!
//! **Contract:** its tasks yield with [`yield_turn`], never `tokio::task::yield_now`
//! (clippy refuses it in the workspace). tokio keeps a yielded task's waker in the
//! scheduler state of the runtime's current `block_on` until the runtime next looks at its
//! events, and drops it, unwoken, if that `block_on` returns first. tokio's own `block_on`
//! always looks before it polls its future again; this loop polls it on later turns of
//! one visit, so the driven future could end first: a client's progress task that yielded
//! so just before a call ended slept for good, and every later call of the client timed
//! out. tokio's cooperative budget defers a task the same way once it used 128 resources
//! in one poll; the tasks here use a few per poll.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use tokio::runtime::Runtime;
use tokio::task::LocalSet;

/// Turns of the local set between two visits to the runtime's event queue: about 10 µs of
/// busy polling, the longest a timer or a socket then waits.
const TURNS_PER_VISIT: u32 = 32;

thread_local! {
    /// Whether [`block_on`] drives this thread's loop.
    static DRIVEN: Cell<bool> = const { Cell::new(false) };
    /// Tasks that asked for the next turn.
    static NEXT_TURN: RefCell<Vec<Waker>> = const { RefCell::new(Vec::new()) };
    /// The emptied list of the last turn, kept for its capacity: allocating the list
    /// anew at every turn cost a client a fiftieth of its time per create.
    static SPARE_TURN: RefCell<Vec<Waker>> = const { RefCell::new(Vec::new()) };
}

/// Runs `future` to completion on `runtime`, turning `local`'s tasks in between, as
/// `local.block_on(runtime, future)` does but without a system call per turn (see the
/// module docs). Panics if called from within a runtime, as tokio's `block_on` does.
pub fn block_on<F: Future>(runtime: &Runtime, local: &LocalSet, mut future: F) -> F::Output {
    assert!(
        tokio::runtime::Handle::try_current().is_err(),
        "block_on called from within a runtime"
    );
    let _driven = Driven::enter();
    let woken = Arc::new(WakeFlag {
        woken: AtomicBool::new(false),
        in_turn: AtomicBool::new(false),
        outer: Mutex::new(None),
    });
    let future_waker = Waker::from(Arc::clone(&woken));
    // Pinned where the caller put it: `pin!` moves it, and an operation's future is some
    // KiB, whose copy was a twentieth of an mdtest create.
    // SAFETY: the binding is shadowed, so the future is never moved again; it is dropped
    // in place when this function returns.
    let mut future = unsafe { Pin::new_unchecked(&mut future) };
    // The first poll runs in the runtime's and the set's context only: a call that ends
    // without waiting (an open that asks no server) then costs no turn of the runtime,
    // whose entry, clock reads and waker registration were a fifth of such a call.
    {
        let _runtime = runtime.enter();
        let _local = local.enter();
        let mut cx = Context::from_waker(&future_waker);
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        // A future that woke itself is polled again at once, before the set's tasks: a
        // lone call asks for its second poll so, and at that poll waits for its reply
        // itself (benchfs-rpc's `wait_reply`), so a create or a stat costs no turn of the
        // runtime either (2-rank mdtest-easy creates: a median 7% more, alternated runs).
        if woken.woken.swap(false, Ordering::SeqCst) {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
        }
    }
    // The set's tasks run before the future's next poll, as between any two: a task a
    // poll spawned or woke, or one it yielded to (`yield_turn`), runs first.
    let mut tasks_first = true;
    // Polled inside the local set's context, so that the tasks it spawns and wakes go to the
    // set's own queue.
    let turn = poll_fn(|_| {
        wake_next_turn();
        if std::mem::take(&mut tasks_first) {
            return Poll::Pending;
        }
        if woken.woken.swap(false, Ordering::SeqCst) {
            return future
                .as_mut()
                .poll(&mut Context::from_waker(&future_waker));
        }
        Poll::Pending
    });
    let mut run = pin!(local.run_until(turn));
    runtime.block_on(poll_fn(|cx| {
        woken.enter_turns(cx.waker());
        for _ in 0..TURNS_PER_VISIT {
            if let Poll::Ready(output) = run.as_mut().poll(cx) {
                woken.leave_turns();
                return Poll::Ready(output);
            }
            let more = woken.woken.load(Ordering::SeqCst)
                || NEXT_TURN
                    .try_with(|next| !next.borrow().is_empty())
                    .unwrap_or(false);
            if !more {
                woken.leave_turns();
                // A wake between the check and leaving went to no one: turn again.
                if woken.woken.load(Ordering::SeqCst) {
                    yield_to_runtime(cx);
                }
                return Poll::Pending;
            }
        }
        woken.leave_turns();
        yield_to_runtime(cx);
        Poll::Pending
    }))
}

/// Gives the thread back to the runtime for one poll of its event queue and timers,
/// asking to be polled again right after. `tokio::task::yield_now` does it without the
/// eventfd write that waking the `block_on` future costs.
fn yield_to_runtime(cx: &mut Context<'_>) {
    // The driven future itself, woken within this same `block_on`: not lost.
    #[allow(clippy::disallowed_methods)]
    let _ = pin!(tokio::task::yield_now()).poll(cx);
}

/// Wakes the tasks that asked for the next turn (none once the thread's locals are being
/// destroyed).
fn wake_next_turn() {
    let mut wakers = SPARE_TURN
        .try_with(|spare| std::mem::take(&mut *spare.borrow_mut()))
        .unwrap_or_default();
    if NEXT_TURN
        .try_with(|next| std::mem::swap(&mut *next.borrow_mut(), &mut wakers))
        .is_err()
    {
        return;
    }
    for waker in wakers.drain(..) {
        waker.wake();
    }
    let _ = SPARE_TURN.try_with(|spare| *spare.borrow_mut() = wakers);
}

/// Lets the other ready tasks run, then continues: under [`block_on`] at its next turn
/// (the next `block_on`'s first, if this one ends first), elsewhere after the runtime's
/// next turn (`tokio::task::yield_now`), as also during the destruction of the thread's
/// locals (a client dropped at thread exit still drains its calls).
pub async fn yield_turn() {
    let mut asked = false;
    let waited_for_turn = poll_fn(|cx| {
        if asked {
            return Poll::Ready(true);
        }
        let parked = DRIVEN.get()
            && NEXT_TURN
                .try_with(|next| next.borrow_mut().push(cx.waker().clone()))
                .is_ok();
        if !parked {
            return Poll::Ready(false);
        }
        asked = true;
        Poll::Pending
    })
    .await;
    if !waited_for_turn {
        // Not driven by `block_on`: the caller's runtime turns the tasks.
        #[allow(clippy::disallowed_methods)]
        tokio::task::yield_now().await;
    }
}

/// Marks this thread driven by [`block_on`] until dropped.
struct Driven(bool);

impl Driven {
    fn enter() -> Driven {
        Driven(DRIVEN.replace(true))
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        DRIVEN.set(self.0);
    }
}

/// The driven future's waker: marks it woken, and wakes the runtime only when the loop is
/// not turning (a timer or another thread woke it while the runtime slept).
struct WakeFlag {
    woken: AtomicBool,
    in_turn: AtomicBool,
    outer: Mutex<Option<Waker>>,
}

impl WakeFlag {
    fn enter_turns(&self, outer: &Waker) {
        let mut slot = self.outer.lock().unwrap_or_else(|e| e.into_inner());
        crate::keep_waker(&mut slot, outer);
        self.in_turn.store(true, Ordering::SeqCst);
    }

    // SeqCst on both sides of the hand-over (a store then a load of the other flag, here
    // and in `wake_by_ref`): with weaker orders both loads could miss the other's store,
    // and a wake from another thread would reach no one.
    fn leave_turns(&self) {
        self.in_turn.store(false, Ordering::SeqCst);
    }
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        if !self.in_turn.load(Ordering::SeqCst) {
            let outer = self.outer.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(outer) = outer {
                outer.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::time::Duration;

    fn runtime() -> Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn thread_cpu_time() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ts is a valid out-parameter.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    #[test]
    fn a_task_asking_for_every_turn_starves_neither_timers_nor_the_driven_future() {
        let (runtime, local) = (runtime(), LocalSet::new());
        let stop = Rc::new(Cell::new(false));
        let turns = Rc::new(Cell::new(0u64));
        let spinner = {
            let (stop, turns) = (Rc::clone(&stop), Rc::clone(&turns));
            async move {
                while !stop.get() {
                    turns.set(turns.get() + 1);
                    yield_turn().await;
                }
            }
        };
        block_on(&runtime, &local, async {
            let spinning = tokio::task::spawn_local(spinner);
            tokio::time::sleep(Duration::from_millis(20)).await;
            stop.set(true);
            spinning.await.unwrap();
        });
        assert!(turns.get() > 100, "{} turns", turns.get());
        assert!(!DRIVEN.get(), "the thread is marked driven after block_on");
    }

    #[test]
    fn a_task_that_yielded_as_its_block_on_ended_runs_in_the_next_one() {
        let (runtime, local) = (runtime(), LocalSet::new());
        let turns = Rc::new(Cell::new(0u64));
        let spinner = {
            let turns = Rc::clone(&turns);
            async move {
                loop {
                    turns.set(turns.get() + 1);
                    yield_turn().await;
                }
            }
        };
        block_on(&runtime, &local, async {
            tokio::task::spawn_local(spinner);
            yield_turn().await;
        });
        let before = turns.get();
        assert!(before > 0, "the task ran in the first block_on");
        let ran_again = block_on(&runtime, &local, async {
            let changed = async {
                while turns.get() == before {
                    yield_turn().await;
                }
            };
            tokio::time::timeout(Duration::from_secs(5), changed).await
        });
        assert!(ran_again.is_ok(), "the task that yielded was lost");
    }

    #[test]
    fn an_idle_loop_sleeps_in_the_runtime() {
        let (runtime, local) = (runtime(), LocalSet::new());
        let before = thread_cpu_time();
        block_on(&runtime, &local, async {
            // A task that waits on a timer, as an armed progress task waits on its fd.
            tokio::task::spawn_local(tokio::time::sleep(Duration::from_millis(100)))
                .await
                .unwrap();
        });
        let spent = thread_cpu_time() - before;
        assert!(
            spent < Duration::from_millis(50),
            "{spent:?} of CPU in 100 ms of waiting"
        );
    }

    #[test]
    fn the_first_poll_may_spawn_tasks_and_set_timers() {
        let (runtime, local) = (runtime(), LocalSet::new());
        let answer = block_on(&runtime, &local, async {
            let task = tokio::task::spawn_local(async { 7 });
            tokio::time::sleep(Duration::from_millis(1)).await;
            task.await.unwrap()
        });
        assert_eq!(answer, 7);
    }

    #[test]
    #[should_panic(expected = "within a runtime")]
    fn block_on_inside_a_runtime_panics_even_for_a_ready_future() {
        let (outer, inner, local) = (runtime(), runtime(), LocalSet::new());
        outer.block_on(async { block_on(&inner, &local, async { 1 }) });
    }

    #[test]
    fn a_wake_from_another_thread_reaches_the_driven_future() {
        let (runtime, local) = (runtime(), LocalSet::new());
        let (send, receive) = tokio::sync::oneshot::channel();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            send.send(7).unwrap();
        });
        assert_eq!(block_on(&runtime, &local, receive).unwrap(), 7);
        sender.join().unwrap();
    }
}
