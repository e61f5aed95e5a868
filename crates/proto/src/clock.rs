//! The clock of request deadlines: each host's `CLOCK_MONOTONIC_COARSE`, in microseconds.
//!
//! A request carries the time, on its server's clock, after which the server must not
//! start it: by then its caller has given up, and may already have undone the call's
//! change on the other replicas (a server stopped with SIGSTOP, or stalled, would
//! otherwise apply it when it resumes, after the undo). Replies carry the server's clock,
//! from which the caller keeps a lower bound of the server's clock offset to its own.
//!
//! The coarse clock, not the precise one: it costs a fifth as much (about 5 ns against
//! 24 ns here), read once per request on each side, against a 1.6 µs round trip. It lags
//! the precise clock by up to one tick, which [`deadline_margin`] covers.

use std::sync::OnceLock;
use std::time::Duration;

use nix::time::{clock_getres, clock_gettime, ClockId};

/// Now on this host's deadline clock, in microseconds (never 0, which means "no
/// deadline" on the wire).
pub fn now_us() -> u64 {
    // Cannot fail for a clock id the kernel has had since 2.6.32; 1 keeps "now" non-zero.
    clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE).map_or(1, |t| {
        let us = t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000;
        us.max(1)
    })
}

/// How much earlier than its caller gives up a request's deadline is set: two ticks of
/// the coarse clock (each side's reading may lag by one) and 5 ms for the drift of the
/// clock offset between two samples.
pub fn deadline_margin() -> Duration {
    static MARGIN: OnceLock<Duration> = OnceLock::new();
    *MARGIN.get_or_init(|| {
        let tick = clock_getres(ClockId::CLOCK_MONOTONIC_COARSE)
            .map_or(Duration::from_millis(10), Duration::from);
        2 * tick + Duration::from_millis(5)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_clock_moves_forward_and_its_margin_covers_two_ticks() {
        let before = now_us();
        std::thread::sleep(Duration::from_millis(30));
        let after = now_us();
        assert!(after >= before + 20_000, "{before} -> {after}");
        let margin = deadline_margin();
        assert!(margin >= Duration::from_millis(5) && margin < Duration::from_millis(50));
    }
}
