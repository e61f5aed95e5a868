//! What a connection knows of its server's deadline clock (see [`benchfs_proto::clock`]),
//! to stamp each request with the time, on the server's clock, after which its caller
//! will have given up.
//!
//! Every reply carries the server's time as it sent the reply, `s`; the reply arrives here
//! at `r` or later, so `s - r` is a lower bound of the server's clock offset to this
//! host's, whatever the delays. The best bound seen is kept, loosened over time by the
//! drift two clocks may have. A deadline computed from a lower bound is never later than
//! the moment the caller gives up, so a server never starts a request its caller has
//! given up on; it may refuse one a little early, by the bound's slack (a few
//! microseconds over shared memory, one-way latency elsewhere) and the margin.

use std::cell::Cell;
use std::time::Duration;

/// Most the two hosts' clocks are taken to drift apart, in parts per million (crystal
/// oscillators drift up to about 50 ppm; NTP-disciplined clocks far less).
const DRIFT_PPM: i128 = 100;

/// A lower bound of a server's clock offset to this host's, in microseconds.
#[derive(Debug, Clone, Copy)]
struct Bound {
    offset_us: i128,
    /// When it was measured, on this host's clock.
    at_us: u64,
}

impl Bound {
    /// The bound at `now_us`, loosened by the drift since it was measured, at most by
    /// `cap_us`.
    fn at(self, now_us: u64, cap_us: i128) -> i128 {
        let elapsed = i128::from(now_us.saturating_sub(self.at_us));
        self.offset_us - (elapsed * DRIFT_PPM / 1_000_000).min(cap_us)
    }
}

/// A connection's knowledge of its server's deadline clock.
#[derive(Debug, Default)]
pub(crate) struct ServerClock {
    bound: Cell<Option<Bound>>,
}

impl ServerClock {
    /// Takes the server time `server_us` of a reply that arrived by `now_us`.
    pub(crate) fn sample(&self, server_us: u64, now_us: u64) {
        if server_us == 0 {
            return;
        }
        let offset_us = i128::from(server_us) - i128::from(now_us);
        let tighter = self
            .bound
            .get()
            .is_none_or(|kept| offset_us >= kept.at(now_us, i128::MAX));
        if tighter {
            self.bound.set(Some(Bound {
                offset_us,
                at_us: now_us,
            }));
        }
    }

    /// The deadline, on the server's clock, of a call started at `start_us` that gives up
    /// `timeout` later: earlier by `margin` (the clocks' coarseness). 0 (none) before any
    /// reply measured the clock, or when the timeout leaves no room for the margin and the
    /// drift. The drift taken is capped at half the timeout, so the first call over a
    /// connection idle for hours is not refused on arrival; the cap is reached after
    /// `timeout / 2 / DRIFT_PPM`, over two hours at a 1.5 s timeout.
    pub(crate) fn deadline(&self, start_us: u64, timeout: Duration, margin: Duration) -> u64 {
        let Some(bound) = self.bound.get() else {
            return 0;
        };
        let timeout_us = i128::try_from(timeout.as_micros()).unwrap_or(i128::MAX / 4);
        let margin_us = i128::try_from(margin.as_micros()).unwrap_or(i128::MAX / 4);
        if timeout_us <= 4 * margin_us {
            return 0;
        }
        let offset_us = bound.at(start_us, timeout_us / 2);
        let deadline = i128::from(start_us) + timeout_us + offset_us - margin_us;
        u64::try_from(deadline.max(1)).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(1500);
    const MARGIN: Duration = Duration::from_millis(13);

    #[test]
    fn no_deadline_before_a_reply_measured_the_clock() {
        assert_eq!(ServerClock::default().deadline(5, TIMEOUT, MARGIN), 0);
    }

    #[test]
    fn the_deadline_is_the_give_up_time_on_the_server_clock_less_the_margin() {
        let clock = ServerClock::default();
        // The server's clock is 1 s ahead; the reply took 40 µs to arrive.
        clock.sample(2_000_000, 1_000_040);
        let deadline = clock.deadline(1_000_040, TIMEOUT, MARGIN);
        assert_eq!(deadline, 1_000_040 + 1_500_000 + 999_960 - 13_000);
        // A later, faster reply tightens the bound; a slower one does not loosen it.
        clock.sample(2_000_100, 1_000_110);
        clock.sample(2_000_200, 1_000_900);
        let deadline = clock.deadline(1_000_900, TIMEOUT, MARGIN);
        assert_eq!(deadline, 1_000_900 + 1_500_000 + 999_990 - 13_000);
    }

    #[test]
    fn a_deadline_is_never_later_than_the_give_up_time_whatever_the_delays() {
        // True offset: server = here + 7 s. Replies take from 0 to 30 ms to arrive.
        let offset = 7_000_000u64;
        let clock = ServerClock::default();
        for (sent_here, delay) in [(10_000u64, 30_000u64), (50_000, 0), (90_000, 12_345)] {
            clock.sample(sent_here + offset, sent_here + delay);
            let start = sent_here + delay;
            let give_up_on_server = start + TIMEOUT.as_micros() as u64 + offset;
            assert!(clock.deadline(start, TIMEOUT, MARGIN) <= give_up_on_server);
        }
    }

    #[test]
    fn an_old_bound_loosens_with_drift_but_by_at_most_half_the_timeout() {
        let clock = ServerClock::default();
        clock.sample(1_000_000, 1_000_000);
        let hour = 3_600_000_000u64;
        let fresh = clock.deadline(1_000_000, TIMEOUT, MARGIN) - 1_000_000;
        let after_an_hour = clock.deadline(1_000_000 + hour, TIMEOUT, MARGIN) - (1_000_000 + hour);
        assert_eq!(fresh - after_an_hour, 360_000, "100 ppm of an hour");
        let after_a_day = clock.deadline(1_000_000 + 24 * hour, TIMEOUT, MARGIN);
        assert_eq!(after_a_day - (1_000_000 + 24 * hour), fresh - 750_000);
    }

    #[test]
    fn a_timeout_too_short_for_the_margin_gets_no_deadline() {
        let clock = ServerClock::default();
        clock.sample(1_000, 1_000);
        assert_eq!(clock.deadline(1_000, 4 * MARGIN, MARGIN), 0);
        assert_ne!(clock.deadline(1_000, 5 * MARGIN, MARGIN), 0);
    }
}
