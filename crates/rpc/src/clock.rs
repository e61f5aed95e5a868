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
const DRIFT_PPM: i64 = 100;

/// Replies a connection takes in for each one it samples the clock with, once it has a
/// bound: reading the clock at each arrival was a few percent of a round trip, while the
/// bound, loosened by drift from when it was measured, stays safe however old it is.
const REPLIES_PER_SAMPLE: u32 = 16;

/// A lower bound of a server's clock offset to this host's, in microseconds.
#[derive(Debug, Clone, Copy)]
struct Bound {
    offset_us: i64,
    /// When it was measured, on this host's clock.
    at_us: u64,
}

impl Bound {
    /// How far the clocks may have drifted apart from when the bound was measured until
    /// `until_us`.
    fn drift_us(self, until_us: u64) -> i64 {
        // 64-bit on purpose: a 128-bit division is a library call, a tenth of a round trip.
        let elapsed = i64::try_from(until_us.saturating_sub(self.at_us)).unwrap_or(i64::MAX);
        elapsed / 1_000_000 * DRIFT_PPM + elapsed % 1_000_000 * DRIFT_PPM / 1_000_000
    }
}

/// A connection's knowledge of its server's deadline clock.
#[derive(Debug, Default)]
pub(crate) struct ServerClock {
    bound: Cell<Option<Bound>>,
    /// Replies since the last sample.
    unsampled: Cell<u32>,
    /// Whether the next reply must be sampled, the bound having gone stale.
    remeasuring: Cell<bool>,
}

impl ServerClock {
    /// Whether the reply that just arrived should be sampled: the first, every
    /// [`REPLIES_PER_SAMPLE`]th after it, and the first after [`ServerClock::remeasure`].
    pub(crate) fn wants_sample(&self) -> bool {
        let unsampled = self.unsampled.get() + 1;
        let wanted = self.bound.get().is_none()
            || self.remeasuring.take()
            || unsampled >= REPLIES_PER_SAMPLE;
        self.unsampled.set(if wanted { 0 } else { unsampled });
        wanted
    }

    /// Has the next reply sampled, for a bound gone stale.
    pub(crate) fn remeasure(&self) {
        self.remeasuring.set(true);
    }

    /// Takes the server time `server_us` of a reply that arrived by `now_us`.
    pub(crate) fn sample(&self, server_us: u64, now_us: u64) {
        if server_us == 0 {
            return;
        }
        let offset_us = (server_us as i64).wrapping_sub(now_us as i64);
        let tighter = self
            .bound
            .get()
            .is_none_or(|kept| offset_us >= kept.offset_us.saturating_sub(kept.drift_us(now_us)));
        if tighter {
            self.bound.set(Some(Bound {
                offset_us,
                at_us: now_us,
            }));
        }
    }

    /// Whether the bound is so old that the drift it allows would take more than a
    /// quarter of a call's `timeout` starting at `start_us`: the connection sat idle for
    /// `timeout / 4 / DRIFT_PPM` (an hour at a 1.5 s timeout), and a round trip should
    /// measure the clock again before the call.
    pub(crate) fn is_stale(&self, start_us: u64, timeout: Duration) -> bool {
        self.bound.get().is_some_and(|bound| {
            let timeout_us = i64::try_from(timeout.as_micros()).unwrap_or(i64::MAX);
            bound.drift_us(start_us) > timeout_us / 4
        })
    }

    /// The deadline, on the server's clock, of a call started at `start_us` that gives up
    /// `timeout` later: earlier by `margin` (the clocks' coarseness) and by the drift the
    /// clocks may have from the bound's measurement to the call's end. 0 (none) before
    /// any reply measured the clock, or when the timeout is at most two margins.
    pub(crate) fn deadline(&self, start_us: u64, timeout: Duration, margin: Duration) -> u64 {
        let Some(bound) = self.bound.get() else {
            return 0;
        };
        let timeout_us = i64::try_from(timeout.as_micros()).unwrap_or(i64::MAX);
        let margin_us = i64::try_from(margin.as_micros()).unwrap_or(i64::MAX);
        if timeout_us <= margin_us.saturating_mul(2) {
            return 0;
        }
        let end_us = start_us.saturating_add(timeout_us as u64);
        let deadline = (end_us as i64)
            .wrapping_add(bound.offset_us)
            .saturating_sub(bound.drift_us(end_us))
            .saturating_sub(margin_us);
        u64::try_from(deadline).unwrap_or(0).max(1)
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
    fn the_deadline_is_the_give_up_time_on_the_server_clock_less_drift_and_margin() {
        let clock = ServerClock::default();
        // The server's clock is 1 s ahead; the reply took 40 µs to arrive.
        clock.sample(2_000_000, 1_000_040);
        let deadline = clock.deadline(1_000_040, TIMEOUT, MARGIN);
        // 100 ppm of the 1.5 s until the call's end is 150 µs.
        assert_eq!(deadline, 1_000_040 + 1_500_000 + 999_960 - 150 - 13_000);
        // A later, faster reply tightens the bound; a slower one does not loosen it.
        clock.sample(2_000_100, 1_000_110);
        clock.sample(2_000_200, 1_000_900);
        let deadline = clock.deadline(1_000_900, TIMEOUT, MARGIN);
        assert_eq!(deadline, 1_000_900 + 1_500_000 + 999_990 - 150 - 13_000);
    }

    #[test]
    fn a_deadline_is_never_later_than_the_give_up_time_whatever_the_delays_and_drift() {
        // Server = here + 7 s, the server's clock running 100 ppm slower than this one.
        // Replies take from 0 to 30 ms to arrive.
        let server_at = |here: u64| 7_000_000 + here - here / 10_000;
        let clock = ServerClock::default();
        let mut here = 10_000u64;
        for delay in [30_000u64, 0, 12_345, 0] {
            clock.sample(server_at(here), here + delay);
            here += delay;
            for idle in [0, 60_000_000, 3_000_000_000] {
                let start = here + idle;
                let give_up = server_at(start + TIMEOUT.as_micros() as u64);
                assert!(
                    clock.deadline(start, TIMEOUT, MARGIN) <= give_up,
                    "{delay} {idle}"
                );
            }
            here += 1_000_000;
        }
    }

    #[test]
    fn a_bound_goes_stale_once_its_drift_would_take_a_quarter_of_the_timeout() {
        let clock = ServerClock::default();
        assert!(!clock.is_stale(1_000, TIMEOUT), "no bound is not stale");
        clock.sample(1_000, 1_000);
        // A quarter of 1.5 s at 100 ppm: 3750 s.
        assert!(!clock.is_stale(1_000 + 3_750_000_000, TIMEOUT));
        assert!(clock.is_stale(1_000 + 3_750_100_000, TIMEOUT));
        clock.sample(3_750_200_000, 3_750_200_000);
        assert!(
            !clock.is_stale(3_750_200_000, TIMEOUT),
            "a new sample refreshes it"
        );
    }

    #[test]
    fn the_first_reply_every_sixteenth_and_one_after_a_remeasure_are_sampled() {
        let clock = ServerClock::default();
        let mut sampled = Vec::new();
        for reply in 0..40 {
            if reply == 20 {
                clock.remeasure();
            }
            if clock.wants_sample() {
                sampled.push(reply);
                clock.sample(1_000 + reply, 1_000);
            }
        }
        assert_eq!(sampled, [0, 16, 20, 36]);
    }

    #[test]
    fn a_timeout_too_short_for_the_margin_gets_no_deadline() {
        let clock = ServerClock::default();
        clock.sample(1_000, 1_000);
        assert_eq!(clock.deadline(1_000, 2 * MARGIN, MARGIN), 0);
        assert_ne!(clock.deadline(1_000, 3 * MARGIN, MARGIN), 0);
    }
}
