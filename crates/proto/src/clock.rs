//! The clock of request deadlines: each host's `CLOCK_MONOTONIC_COARSE`, in microseconds.
//!
//! A request carries the time, on its server's clock, after which the server must not
//! start it: by then its caller has given up, and may already have undone the call's
//! change on the other replicas (a server stopped with SIGSTOP, or stalled, would
//! otherwise apply it when it resumes, after the undo). Replies carry the server's clock,
//! from which the caller keeps a lower bound of the server's clock offset to its own.
//!
//! The coarse clock, not the precise one: it costs a fifth as much (about 5 ns against
//! 24 ns here in a loop, more from a cold cache), read once per request on a server and
//! about once and a fraction on a client, against a 1.1 µs round trip.
//! It lags the precise clock by up to one tick, which [`deadline_margin`] covers on the
//! caller's side and [`passed`] on the server's.

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

/// The coarse clock's tick: how far a reading may lag the precise clock.
pub fn tick() -> Duration {
    static TICK: OnceLock<Duration> = OnceLock::new();
    *TICK.get_or_init(|| {
        clock_getres(ClockId::CLOCK_MONOTONIC_COARSE)
            .map_or(Duration::from_millis(10), Duration::from)
    })
}

/// Whether a request stamped `deadline_us` (0: none) must not be started at `now_us`, a
/// reading of [`now_us`]: a server goes by the latest time its clock may be, its reading
/// plus one tick.
pub fn passed(deadline_us: u64, now_us: u64) -> bool {
    deadline_us != 0 && now_us + tick().as_micros() as u64 > deadline_us
}

/// How much earlier than its caller gives up a request's deadline is set: two ticks of
/// the caller's coarse clock (the call's start and a reply's arrival may each be read a
/// tick early, the second putting the offset bound a tick high) and 5 ms of slack.
pub fn deadline_margin() -> Duration {
    2 * tick() + Duration::from_millis(5)
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
        assert!(passed(before, after) && !passed(0, after));
        assert!(!passed(after + 1_000_000, after));
    }
}
