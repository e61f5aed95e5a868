//! `Worker`: one UCX worker per event-loop thread, and the task that drives its progress.
//!
//! **Progress protocol** ([`Worker::run_progress`]): progress in bursts while UCX reports
//! work; when idle, keep polling (yielding to other tasks between polls) for the busy-poll
//! window; then `ucp_worker_arm`. If arming returns `UCS_ERR_BUSY`, events are already
//! pending, so progress again. If it returns `UCS_OK`, sleep until the worker's event fd is
//! readable, a request is started on this worker (see [`Worker::wake_progress`]), or
//! [`PROGRESS_IDLE_TICK`] passes, whichever is first.

use foldhash::{HashMap, HashMapExt};
use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::am::AmQueue;
use crate::context::Context;
use crate::endpoint::{ClosingEndpoint, EndpointInner};
use crate::error::{check, ProgressError, UcxError};
use crate::limits::{
    ARM_BUSY_BACKOFF, ARM_BUSY_SPINS_MAX, IDLE_POLLS_PER_CLOCK_READ, IDLE_POLLS_PER_TURN,
    POLL_WHILE_AWAITING_MAX, PROGRESS_BURST_MAX, PROGRESS_IDLE_TICK, WORKER_CLOSE_DRAIN_MAX,
};
use crate::sys;

/// Held while a reply is awaited; see [`Worker::expect_replies`].
#[derive(Debug)]
pub struct AwaitingReplies(Rc<Cell<usize>>);

impl Drop for AwaitingReplies {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// The packed address of a worker, to give to another process so it can connect with
/// [`Endpoint::connect_address`](crate::Endpoint::connect_address).
///
/// **Boundary:** UCX parses these bytes without a length, so only use addresses that came
/// from a trusted peer of the same job (as UCX itself assumes).
#[derive(Clone, PartialEq, Eq)]
pub struct WorkerAddress(Vec<u8>);

impl WorkerAddress {
    /// Wraps address bytes received from a peer.
    pub fn from_bytes(bytes: Vec<u8>) -> WorkerAddress {
        WorkerAddress(bytes)
    }

    /// The packed address.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for WorkerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WorkerAddress({} bytes)", self.0.len())
    }
}

/// Whether [`Worker::arm`] armed the event fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Armed {
    /// The event fd will become readable on the next event; it is safe to sleep on it.
    Ready,
    /// Events are pending (`UCS_ERR_BUSY`); call [`Worker::progress`] instead of sleeping.
    Busy,
}

/// A UCX worker (`ucp_worker_h`), created in single-thread mode.
///
/// A worker belongs to the thread that created it: it is `!Send`, and everything made from
/// it (endpoints, listeners, AM streams, requests) holds an `Rc<Worker>`.
///
/// **Drop order:** endpoints, listeners, AM streams and requests hold the
/// worker, so the worker is destroyed after all of them; the worker holds its
/// [`Context`], which is destroyed last.
pub struct Worker {
    handle: sys::ucp_worker_h,
    context: Arc<Context>,
    max_am_header: usize,
    /// Per Active Message id, the queue its handler fills.
    pub(crate) am_queues: RefCell<HashMap<u16, Rc<AmQueue>>>,
    /// Endpoints made on this worker, by `ucp_ep_h`, so that an AM's reply endpoint can be
    /// handed out as an [`Endpoint`](crate::Endpoint).
    pub(crate) endpoints: RefCell<HashMap<usize, Weak<EndpointInner>>>,
    /// Endpoints being closed; reaped by `progress`.
    closing: RefCell<Vec<ClosingEndpoint>>,
    progress_waker: Cell<Option<Waker>>,
    kicked: Cell<bool>,
    /// Whether this worker did something since its progress loop last looked: a progress
    /// call that found work, or a request started. The busy-poll window restarts then.
    active: Cell<bool>,
    /// Replies the user awaits; see [`Worker::expect_replies`].
    awaited: Rc<Cell<usize>>,
    /// Operations UCX has not completed yet, abandoned ones included; the worker drains
    /// them before it is destroyed.
    pub(crate) in_flight: Rc<Cell<usize>>,
    stopped: Cell<bool>,
    /// When idle polls give the CPU away, shared by every loop that polls this worker.
    cpu_yield: Cell<CpuYield>,
}

impl Worker {
    /// Creates a worker on `context`, single-threaded (`UCS_THREAD_MODE_SINGLE`).
    pub fn new(context: &Arc<Context>) -> Result<Rc<Worker>, UcxError> {
        let params = sys::ucp_worker_params_t {
            field_mask: sys::UCP_WORKER_PARAM_FIELD_THREAD_MODE as u64,
            thread_mode: sys::UCS_THREAD_MODE_SINGLE,
            ..Default::default()
        };
        let mut handle: sys::ucp_worker_h = std::ptr::null_mut();
        // SAFETY: the context is alive (we hold an Arc for the worker's lifetime); params
        // and handle are valid for the call.
        let status = unsafe { sys::ucp_worker_create(context.handle(), &params, &mut handle) };
        check("ucp_worker_create", status)?;
        let mut attr = sys::ucp_worker_attr_t {
            field_mask: sys::UCP_WORKER_ATTR_FIELD_MAX_AM_HEADER as u64,
            ..Default::default()
        };
        // SAFETY: handle is the worker just created; attr is a valid out-parameter.
        let status = unsafe { sys::ucp_worker_query(handle, &mut attr) };
        if let Err(error) = check("ucp_worker_query", status) {
            // SAFETY: nothing else references the new worker yet.
            unsafe { sys::ucp_worker_destroy(handle) };
            return Err(error);
        }
        Ok(Rc::new(Worker {
            handle,
            context: Arc::clone(context),
            max_am_header: attr.max_am_header,
            am_queues: RefCell::new(HashMap::new()),
            endpoints: RefCell::new(HashMap::new()),
            closing: RefCell::new(Vec::new()),
            progress_waker: Cell::new(None),
            kicked: Cell::new(false),
            active: Cell::new(true),
            awaited: Rc::new(Cell::new(0)),
            in_flight: Rc::new(Cell::new(0)),
            stopped: Cell::new(false),
            cpu_yield: Cell::default(),
        }))
    }

    pub(crate) fn handle(&self) -> sys::ucp_worker_h {
        self.handle
    }

    /// The context this worker was made from.
    pub fn context(&self) -> &Arc<Context> {
        &self.context
    }

    /// The largest Active Message header this worker can send (`max_am_header`).
    pub fn max_am_header(&self) -> usize {
        self.max_am_header
    }

    /// This worker's address, for peers to connect with
    /// [`Endpoint::connect_address`](crate::Endpoint::connect_address).
    pub fn address(&self) -> Result<WorkerAddress, UcxError> {
        let mut address: *mut sys::ucp_address_t = std::ptr::null_mut();
        let mut length: usize = 0;
        // SAFETY: the worker is alive; address and length are out-parameters.
        let status = unsafe { sys::ucp_worker_get_address(self.handle, &mut address, &mut length) };
        check("ucp_worker_get_address", status)?;
        // SAFETY: UCX returned `length` readable bytes at `address`.
        let bytes = unsafe { std::slice::from_raw_parts(address as *const u8, length) }.to_vec();
        // SAFETY: address came from ucp_worker_get_address on this worker; released once.
        unsafe { sys::ucp_worker_release_address(self.handle, address) };
        Ok(WorkerAddress(bytes))
    }

    /// Runs one `ucp_worker_progress` and returns how many events it handled. Completion
    /// callbacks and Active Message handlers run inside this call. Events restart the
    /// progress loop's busy-poll window, whoever made the call.
    pub fn progress(&self) -> u32 {
        // SAFETY: the worker is alive and used only from its own thread (`Worker: !Send`).
        let count = unsafe { sys::ucp_worker_progress(self.handle) };
        if count != 0 {
            self.note_activity();
        }
        self.reap();
        count
    }

    /// Counts a poll that found nothing, and now and then gives the CPU to the kernel
    /// (`sched_yield`) so that a peer sharing this core runs: at every such call while a
    /// yield shows another thread ran, ever more rarely while yields come straight back.
    /// Every loop that busy-polls the worker calls it once every few polls.
    pub fn idle_poll(&self) {
        let mut cpu_yield = self.cpu_yield.get();
        cpu_yield.idle_poll();
        self.cpu_yield.set(cpu_yield);
    }

    /// The worker's event fd, readable after [`Worker::arm`] when there is work. UCX owns
    /// the fd; do not close it.
    pub fn event_fd(&self) -> Result<RawFd, UcxError> {
        let mut fd: RawFd = -1;
        // SAFETY: the worker is alive; fd is an out-parameter.
        let status = unsafe { sys::ucp_worker_get_efd(self.handle, &mut fd) };
        check("ucp_worker_get_efd", status)?;
        Ok(fd)
    }

    /// Arms the event fd (`ucp_worker_arm`). Needs [`Features::WAKEUP`](crate::Features).
    pub fn arm(&self) -> Result<Armed, UcxError> {
        // SAFETY: the worker is alive and used from its own thread.
        let status = unsafe { sys::ucp_worker_arm(self.handle) };
        match status {
            sys::UCS_OK => Ok(Armed::Ready),
            sys::UCS_ERR_BUSY => Ok(Armed::Busy),
            _ => Err(UcxError::new("ucp_worker_arm", status)),
        }
    }

    /// Says that the user awaits a reply (an Active Message) until the guard is dropped.
    /// With busy polling on, the worker then keeps polling past its window, up to
    /// [`POLL_WHILE_AWAITING_MAX`], instead of sleeping and paying a wakeup on arrival.
    pub fn expect_replies(&self) -> AwaitingReplies {
        self.awaited.set(self.awaited.get() + 1);
        AwaitingReplies(Rc::clone(&self.awaited))
    }

    /// Restarts the busy-poll window: work was just started or finished. A flag, not a
    /// time: the progress loop reads the clock when it next looks.
    pub(crate) fn note_activity(&self) {
        self.active.set(true);
    }

    /// Wakes [`Worker::run_progress`] if it sleeps, because new work needs progress (a
    /// request was started) even though no event may arrive on the fd.
    pub fn wake_progress(&self) {
        self.kicked.set(true);
        if let Some(waker) = self.progress_waker.take() {
            waker.wake();
        }
    }

    /// Makes the running [`Worker::run_progress`] return at its next step (or the next one
    /// to start, if none is running).
    pub fn stop_progress(&self) {
        self.stopped.set(true);
        self.wake_progress();
    }

    /// Drives this worker until [`Worker::stop_progress`] is called. Errors from arming the
    /// worker end the loop; requests then stop completing, so treat them as fatal. Run it as a task on a
    /// tokio current-thread runtime with IO and time enabled (inside a `LocalSet`, since
    /// the worker is `!Send`).
    ///
    /// After the last progress call that found work, it keeps polling for `busy_poll`
    /// (yielding to other tasks between polls), then arms the worker and sleeps on the event
    /// fd; see the module docs. A zero `busy_poll` sleeps as soon as the worker is idle.
    pub async fn run_progress(self: Rc<Self>, busy_poll: Duration) -> Result<(), ProgressError> {
        let event_fd = EventFd(self.event_fd()?);
        // SAFETY: the fd is owned by the worker and stays open until ucp_worker_destroy; this
        // AsyncFd is dropped at the end of this function, which holds an Rc to the worker.
        let fd = unsafe { AsyncFd::register_with_interest(event_fd, Interest::READABLE) }
            .map_err(|error| ProgressError::Reactor(error.into_parts().1))?;
        // One timer for the idle tick, reset each time rather than made anew: a fresh
        // timeout per sleep costs the runtime an extra wakeup.
        let tick = tokio::time::sleep(PROGRESS_IDLE_TICK);
        tokio::pin!(tick);
        let mut busy_arms = 0;
        let mut window = PollWindow::new(busy_poll);
        while !self.stopped.get() {
            let mut bursts = 0;
            while bursts < PROGRESS_BURST_MAX && self.progress() != 0 {
                bursts += 1;
            }
            if bursts > 0 {
                busy_arms = 0;
                crate::drive::yield_turn().await;
                continue;
            }
            let awaiting = self.awaited.get() > 0;
            if window.keep_polling(self.active.replace(false), awaiting) {
                self.idle_poll();
                // A turn of the local set costs several polls, and a message that lands
                // during it waits for the next: poll a few more times before giving the
                // turn away (the other tasks wait that much longer, under a microsecond),
                // up to the first that finds an event.
                for _ in 0..IDLE_POLLS_PER_TURN {
                    if self.progress() != 0 {
                        break;
                    }
                }
                crate::drive::yield_turn().await;
                continue;
            }
            let sleep_for = if self.arm()? == Armed::Busy {
                // Nothing to progress, yet UCX will not sleep: let the other tasks run,
                // and past a few turns stop spinning (a keepalive to a stopped peer keeps
                // UCX 1.13 busy for as long as the peer is stopped, and a loop that never
                // yielded starved the server's other worker, and so every request).
                busy_arms += 1;
                if busy_arms < ARM_BUSY_SPINS_MAX {
                    crate::drive::yield_turn().await;
                    continue;
                }
                busy_arms = 0;
                // Still on the event fd too: the interfaces armed before the busy one wake
                // the loop when a message comes, instead of after the backoff.
                ARM_BUSY_BACKOFF
            } else {
                busy_arms = 0;
                PROGRESS_IDLE_TICK
            };
            self.kicked.set(false);
            tick.as_mut().reset(tokio::time::Instant::now() + sleep_for);
            // Ends on an event, a new request, a stop, or the idle tick (a normal end).
            poll_fn(|cx| {
                if self.kicked.replace(false) || self.stopped.get() {
                    return Poll::Ready(());
                }
                if let Poll::Ready(guard) = fd.poll_read_ready(cx) {
                    match guard {
                        Ok(mut guard) => guard.clear_ready(),
                        Err(error) => tracing::warn!(%error, "polling the UCX event fd"),
                    }
                    return Poll::Ready(());
                }
                if tick.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(());
                }
                self.progress_waker.set(Some(cx.waker().clone()));
                Poll::Pending
            })
            .await;
            self.progress_waker.take();
        }
        // Consume the stop request, so that a later run_progress runs again.
        self.stopped.set(false);
        Ok(())
    }

    pub(crate) fn push_closing(&self, closing: ClosingEndpoint) {
        if let Ok(mut list) = self.closing.try_borrow_mut() {
            list.push(closing);
        } else {
            // Only reachable if a close starts inside `reap`; leaking the close request is
            // safe (UCX finishes it when the worker is destroyed).
            tracing::warn!("endpoint close started while reaping; leaving it to worker destroy");
            std::mem::forget(closing);
        }
    }

    /// Frees finished endpoint-close requests. Runs outside UCX
    /// callbacks (after `ucp_worker_progress` returned).
    fn reap(&self) {
        let done = match self.closing.try_borrow_mut() {
            Ok(mut list) if !list.is_empty() => {
                let (done, still): (Vec<_>, Vec<_>) = std::mem::take(&mut *list)
                    .into_iter()
                    .partition(ClosingEndpoint::is_done);
                *list = still;
                done
            }
            _ => Vec::new(),
        };
        drop(done);
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Give endpoint closes, and the operations they cancel, a bounded time to finish,
        // then destroy anyway: ucp_worker_destroy destroys the remaining endpoints itself,
        // but UCX 1.13 can crash destroying a worker with a rendezvous send still pending.
        let deadline = Instant::now() + WORKER_CLOSE_DRAIN_MAX;
        while (!self.closing.borrow().is_empty() || self.in_flight.get() > 0)
            && Instant::now() < deadline
        {
            self.progress();
        }
        if self.in_flight.get() > 0 {
            tracing::debug!(
                count = self.in_flight.get(),
                "operations still in flight at worker destroy"
            );
        }
        let leftover = std::mem::take(&mut *self.closing.borrow_mut());
        if !leftover.is_empty() {
            tracing::debug!(
                count = leftover.len(),
                "endpoints still closing at worker destroy"
            );
        }
        // The error handlers of endpoints still closing may run until the worker is gone.
        let failures: Vec<_> = leftover.into_iter().map(ClosingEndpoint::release).collect();
        // SAFETY: every endpoint, listener, AM stream, remote key and request holds an Rc to
        // this worker, so none is alive; the handle is destroyed once.
        unsafe { sys::ucp_worker_destroy(self.handle) };
        drop(failures);
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

/// The worker's event fd, owned by UCX: this wrapper never closes it.
struct EventFd(RawFd);

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// The busy-poll window of an idle progress loop: it polls for `busy_poll` after the
/// worker's last activity, and while the user awaits replies up to
/// [`POLL_WHILE_AWAITING_MAX`]. The clock is read once per
/// [`IDLE_POLLS_PER_CLOCK_READ`] idle polls: between reads the window is taken as still
/// open, as the last read found it (or the loop would be asleep).
#[derive(Debug)]
struct PollWindow {
    busy_poll: Duration,
    start: Instant,
    idle_polls: u32,
}

impl PollWindow {
    fn new(busy_poll: Duration) -> PollWindow {
        PollWindow {
            busy_poll,
            start: Instant::now(),
            idle_polls: 0,
        }
    }

    /// Whether an idle loop polls again rather than sleep; `active`: the worker did
    /// something since the last call, which restarts the window.
    fn keep_polling(&mut self, active: bool, awaiting: bool) -> bool {
        if self.busy_poll.is_zero() {
            return false;
        }
        if active {
            self.start = Instant::now();
            self.idle_polls = 0;
        }
        self.idle_polls = self.idle_polls.wrapping_add(1);
        if !self.idle_polls.is_multiple_of(IDLE_POLLS_PER_CLOCK_READ) {
            return true;
        }
        let idle = self.start.elapsed();
        idle < self.busy_poll || (awaiting && idle < POLL_WHILE_AWAITING_MAX)
    }
}

/// When an idle progress loop gives the CPU to the kernel (`sched_yield`), not only to the
/// other tasks: a peer sharing our core (client and server of one node on one CPU) runs only
/// then, so our poll can find its message; but where no thread waits for the CPU the call
/// costs about half a microsecond for nothing, a fifth of a round trip. So the loop yields
/// at every idle poll while a yield shows another thread ran (it took long), and backs off
/// to one in [`CpuYield::MAX_POLLS_APART`] while yields come straight back.
#[derive(Debug, Clone, Copy)]
struct CpuYield {
    polls_apart: u32,
    polls: u32,
}

impl Default for CpuYield {
    fn default() -> Self {
        CpuYield {
            polls_apart: 1,
            polls: 0,
        }
    }
}

impl CpuYield {
    /// Longest spacing, in idle polls, of the yields of a loop that has the CPU to itself:
    /// at 16 a polling server spent a tenth of its time in `sched_yield`, and a request
    /// that came meanwhile waited (round trip 1.50 -> 1.18 us at 256); a peer that starts
    /// sharing the core is seen within that many idle turns (each of 1 +
    /// `IDLE_POLLS_PER_TURN` progress calls), some tens of microseconds.
    const MAX_POLLS_APART: u32 = 256;
    /// A yield that took this long ran another thread (an idle one returns in well under a
    /// microsecond).
    const RAN_ANOTHER: Duration = Duration::from_micros(2);

    fn idle_poll(&mut self) {
        if self.yield_due() {
            let start = Instant::now();
            std::thread::yield_now();
            self.yielded(start.elapsed());
        }
    }

    /// Counts an idle poll; true when this one should yield.
    fn yield_due(&mut self) -> bool {
        self.polls += 1;
        if self.polls < self.polls_apart {
            return false;
        }
        self.polls = 0;
        true
    }

    /// Spaces the next yield by how long this one took.
    fn yielded(&mut self, took: Duration) {
        self.polls_apart = if took >= Self::RAN_ANOTHER {
            1
        } else {
            (self.polls_apart * 2).min(Self::MAX_POLLS_APART)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Idle polls before `window` says to sleep.
    fn polls_until_sleep(window: &mut PollWindow, awaiting: bool) -> u32 {
        (1..)
            .find(|_| !window.keep_polling(false, awaiting))
            .unwrap()
    }

    #[test]
    fn the_poll_window_closes_within_a_clock_read_of_its_end() {
        let mut window = PollWindow::new(Duration::from_millis(5));
        assert!(window.keep_polling(true, false));
        std::thread::sleep(Duration::from_millis(6));
        assert!(polls_until_sleep(&mut window, false) <= IDLE_POLLS_PER_CLOCK_READ);
        // Activity opens it again, for as long as it lasts.
        let start = Instant::now();
        assert!(window.keep_polling(true, false));
        polls_until_sleep(&mut window, false);
        assert!(start.elapsed() >= Duration::from_millis(5));
    }

    #[test]
    fn awaited_replies_keep_the_window_open_up_to_the_bound() {
        let mut window = PollWindow::new(Duration::from_micros(1));
        let start = Instant::now();
        assert!(window.keep_polling(true, true));
        polls_until_sleep(&mut window, true);
        assert!(start.elapsed() >= POLL_WHILE_AWAITING_MAX);
    }

    #[test]
    fn no_window_never_polls() {
        let mut window = PollWindow::new(Duration::ZERO);
        assert!(!window.keep_polling(true, true));
        assert!(!window.keep_polling(false, false));
    }

    fn polls_to_next_yield(cpu_yield: &mut CpuYield) -> u32 {
        (1..=CpuYield::MAX_POLLS_APART + 1)
            .find(|_| cpu_yield.yield_due())
            .expect("a yield within the longest spacing")
    }

    #[test]
    fn a_loop_alone_on_its_cpu_yields_ever_more_rarely_up_to_the_bound() {
        let mut cpu_yield = CpuYield::default();
        let mut spacings = Vec::new();
        for _ in 0..11 {
            spacings.push(polls_to_next_yield(&mut cpu_yield));
            cpu_yield.yielded(Duration::from_nanos(400));
        }
        assert_eq!(spacings, [1, 2, 4, 8, 16, 32, 64, 128, 256, 256, 256]);
    }

    #[test]
    fn a_yield_that_ran_another_thread_makes_every_idle_poll_yield_again() {
        let mut cpu_yield = CpuYield::default();
        for _ in 0..5 {
            polls_to_next_yield(&mut cpu_yield);
            cpu_yield.yielded(Duration::from_nanos(400));
        }
        assert_eq!(polls_to_next_yield(&mut cpu_yield), 32);
        cpu_yield.yielded(Duration::from_micros(30));
        assert_eq!(polls_to_next_yield(&mut cpu_yield), 1);
        assert_eq!(polls_to_next_yield(&mut cpu_yield), 1);
    }
}
