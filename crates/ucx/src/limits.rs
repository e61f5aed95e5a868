//! Bounds on every queue this crate owns, in one place.

use std::time::Duration;

/// Connection requests a [`Listener`](crate::Listener) holds before it rejects new ones.
pub const LISTENER_BACKLOG_MAX: usize = 1024;

/// Default bound on received, not yet drained Active Messages per handler id.
pub const AM_QUEUE_CAPACITY_DEFAULT: usize = 64 * 1024;

/// Eager data at least this long is kept in UCX's buffer (`UCP_AM_RECV_ATTR_FLAG_DATA`)
/// until the receiver takes it, instead of being copied out in the callback: large
/// payloads then cost one copy into their destination, not two.
pub const EAGER_HOLD_MIN: usize = 16 * 1024;

/// `ucp_worker_progress` calls in one burst before the progress task yields to others.
pub const PROGRESS_BURST_MAX: u32 = 64;

/// `ucp_worker_progress` calls an idle busy-polling loop makes in one turn of its local
/// set before it lets the other tasks run.
pub const IDLE_POLLS_PER_TURN: u32 = 4;

/// Idle polls between two reads of the clock in the busy-poll window: a read
/// (`clock_gettime`) cost about a tenth of a polling server's time, and the window may
/// overrun by these few polls.
pub const IDLE_POLLS_PER_CLOCK_READ: u32 = 8;

/// Longest the progress task sleeps on the event fd before progressing anyway. This bounds
/// the cost of a missed wakeup and lets UCX's keepalive run on idle workers, so that a dead
/// peer fails pending requests even when no event arrives.
pub const PROGRESS_IDLE_TICK: Duration = Duration::from_millis(50);

/// Times in a row a worker may find nothing to progress yet refuse to sleep
/// (`ucp_worker_arm` busy) before its progress task sleeps [`ARM_BUSY_BACKOFF`]: UCX 1.13
/// stays busy this way while a keepalive to a stopped shared-memory peer cannot be sent.
pub const ARM_BUSY_SPINS_MAX: u32 = 8;

/// How long the progress task sleeps after [`ARM_BUSY_SPINS_MAX`] busy arms in a row.
pub const ARM_BUSY_BACKOFF: Duration = Duration::from_millis(1);

/// Longest a worker with busy polling on keeps polling while its user awaits replies
/// ([`Worker::expect_replies`](crate::Worker::expect_replies)) before it sleeps anyway:
/// a reply that takes longer is not worth a core.
pub const POLL_WHILE_AWAITING_MAX: Duration = Duration::from_millis(2);

/// How long dropping a [`Worker`](crate::Worker) progresses to finish closing endpoints
/// before destroying it anyway.
pub const WORKER_CLOSE_DRAIN_MAX: Duration = Duration::from_millis(500);

const _: () = assert!(LISTENER_BACKLOG_MAX > 0);
const _: () = assert!(AM_QUEUE_CAPACITY_DEFAULT > 0);
const _: () = assert!(PROGRESS_BURST_MAX > 0);
const _: () = assert!(IDLE_POLLS_PER_CLOCK_READ > 0);
const _: () = assert!(IDLE_POLLS_PER_TURN > 0);
const _: () = assert!(ARM_BUSY_SPINS_MAX > 0);
