//! What a server measures about the requests it serves: per operation, the requests, the
//! errors, the payload bytes in and out and a latency histogram; and how many requests it
//! is handling at once. `Stats` replies and the Prometheus endpoint read them.
//!
//! **Invariant:** bounded. One entry per [`OpCode`], made the first time the operation
//! is seen, each with a histogram of fixed size (about 30 KiB), so the whole costs at
//! most a few hundred KiB however many requests come.
//!
//! Single-threaded like the rest of the server's state: `Cell`s and a `RefCell` that is
//! never held across an await.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use benchfs_proto::ops::OpStats;
use benchfs_proto::OpCode;
use hdrhistogram::Histogram;

/// Largest latency the histograms tell apart: an hour, in ns. Longer ones count as an
/// hour; no request lives that long (every RPC ends within its timeout).
const LATENCY_NS_MAX: u64 = 3_600 * 1_000_000_000;
/// Significant decimal digits the histograms keep: quantiles within 1%, at about 30 KiB
/// per operation (3 digits would be about 10 times that).
const LATENCY_DIGITS: u8 = 2;

/// One operation's numbers.
#[derive(Debug)]
struct OpMetrics {
    requests: u64,
    errors: u64,
    bytes_in: u64,
    bytes_out: u64,
    latency_sum_ns: u64,
    /// Exact, where the histogram's maximum is rounded to its precision.
    latency_max_ns: u64,
    latency: Histogram<u64>,
}

impl OpMetrics {
    fn new() -> OpMetrics {
        OpMetrics {
            requests: 0,
            errors: 0,
            bytes_in: 0,
            bytes_out: 0,
            latency_sum_ns: 0,
            latency_max_ns: 0,
            latency: Histogram::new_with_bounds(1, LATENCY_NS_MAX, LATENCY_DIGITS)
                .expect("the histogram bounds are valid constants"),
        }
    }

    fn stats(&self, op: OpCode) -> OpStats {
        // A quantile is the top of its histogram bucket, which may lie above the exact
        // maximum; no quantile is reported above it.
        let q = |quantile| {
            self.latency
                .value_at_quantile(quantile)
                .min(self.latency_max_ns)
        };
        OpStats {
            op,
            requests: self.requests,
            errors: self.errors,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            latency_p50_ns: q(0.5),
            latency_p90_ns: q(0.9),
            latency_p99_ns: q(0.99),
            latency_p999_ns: q(0.999),
            latency_max_ns: self.latency_max_ns,
            latency_sum_ns: self.latency_sum_ns,
        }
    }
}

/// How one request ended, as the transport saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Whether the reply said `Ok` and reached the transport; anything else is an error.
    pub ok: bool,
    /// Payload bytes the request brought.
    pub bytes_in: u64,
    /// Payload bytes the reply carried.
    pub bytes_out: u64,
}

impl Outcome {
    /// A request refused or never answered: an error that moved no bytes.
    pub const UNANSWERED: Outcome = Outcome {
        ok: false,
        bytes_in: 0,
        bytes_out: 0,
    };
}

/// The request metrics of one server.
#[derive(Debug)]
pub struct Metrics {
    /// By position in [`OpCode::ALL`].
    ops: RefCell<[Option<Box<OpMetrics>>; OpCode::ALL.len()]>,
    in_flight: Cell<u64>,
    in_flight_max: Cell<u64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            ops: RefCell::new(std::array::from_fn(|_| None)),
            in_flight: Cell::new(0),
            in_flight_max: Cell::new(0),
        }
    }
}

/// A request being handled; counts in the queue depth until dropped, so every way a
/// request ends (early returns included) takes it out again.
#[derive(Debug)]
pub struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let depth = &self.0.in_flight;
        depth.set(depth.get().saturating_sub(1));
    }
}

impl Metrics {
    /// Counts a request in the queue depth until the guard is dropped.
    pub fn enter(&self) -> InFlight<'_> {
        let depth = self.in_flight.get() + 1;
        self.in_flight.set(depth);
        self.in_flight_max.set(self.in_flight_max.get().max(depth));
        InFlight(self)
    }

    /// Records one request of `op` that took `latency`.
    pub fn record(&self, op: OpCode, outcome: Outcome, latency: Duration) {
        let Some(index) = OpCode::ALL.iter().position(|o| *o == op) else {
            return;
        };
        let mut ops = self.ops.borrow_mut();
        let m = ops[index].get_or_insert_with(|| Box::new(OpMetrics::new()));
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        m.requests += 1;
        m.errors += u64::from(!outcome.ok);
        m.bytes_in = m.bytes_in.saturating_add(outcome.bytes_in);
        m.bytes_out = m.bytes_out.saturating_add(outcome.bytes_out);
        m.latency_sum_ns = m.latency_sum_ns.saturating_add(ns);
        m.latency_max_ns = m.latency_max_ns.max(ns);
        // The histogram's lowest value is 1 ns; longer than its highest counts as that.
        m.latency.saturating_record(ns.max(1));
    }

    /// Every operation seen so far, by increasing operation id.
    pub fn ops(&self) -> Vec<OpStats> {
        let ops = self.ops.borrow();
        OpCode::ALL
            .iter()
            .zip(ops.iter())
            .filter_map(|(op, m)| m.as_ref().map(|m| m.stats(*op)))
            .collect()
    }

    /// Requests being handled now.
    pub fn queue_depth(&self) -> u64 {
        self.in_flight.get()
    }

    /// The most requests handled at once since start.
    pub fn queue_depth_max(&self) -> u64 {
        self.in_flight_max.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(ok: bool, bytes_in: u64, bytes_out: u64) -> Outcome {
        Outcome {
            ok,
            bytes_in,
            bytes_out,
        }
    }

    #[test]
    fn counts_by_operation_in_wire_order() {
        let m = Metrics::default();
        assert!(m.ops().is_empty());
        for us in 1..=100 {
            m.record(
                OpCode::WriteChunk,
                outcome(us != 7, 10, 0),
                Duration::from_micros(us),
            );
        }
        m.record(OpCode::Ping, outcome(true, 0, 5), Duration::ZERO);
        let ops = m.ops();
        assert_eq!(
            ops.iter().map(|s| s.op).collect::<Vec<_>>(),
            [OpCode::Ping, OpCode::WriteChunk]
        );
        let w = ops[1];
        assert_eq!(
            (w.requests, w.errors, w.bytes_in, w.bytes_out),
            (100, 1, 1000, 0)
        );
        assert_eq!(w.latency_max_ns, 100_000);
        assert_eq!(w.latency_sum_ns, 5050 * 1000);
        // Quantiles within the histogram's 1%.
        for (got, want) in [
            (w.latency_p50_ns, 50_000),
            (w.latency_p90_ns, 90_000),
            (w.latency_p99_ns, 99_000),
            (w.latency_p999_ns, 100_000),
        ] {
            assert!(got.abs_diff(want) <= want / 100, "{got} vs {want}");
        }
        // Zero is recorded as the histogram's lowest value, 1 ns, but reported as the
        // exact maximum, 0.
        assert_eq!((ops[0].bytes_out, ops[0].latency_p50_ns), (5, 0));
    }

    #[test]
    fn huge_latencies_saturate() {
        let m = Metrics::default();
        m.record(OpCode::Fsync, outcome(true, 0, 0), Duration::MAX);
        let s = m.ops()[0];
        assert_eq!(s.latency_max_ns, u64::MAX);
        assert!(s.latency_p50_ns >= LATENCY_NS_MAX);
        m.record(
            OpCode::Ping,
            outcome(true, 0, 0),
            Duration::from_nanos(12_345),
        );
        let s = m.ops()[0];
        assert_eq!((s.latency_p999_ns, s.latency_max_ns), (12_345, 12_345));
    }

    #[test]
    fn queue_depth_follows_the_guards() {
        let m = Metrics::default();
        let a = m.enter();
        let b = m.enter();
        assert_eq!((m.queue_depth(), m.queue_depth_max()), (2, 2));
        drop(a);
        let c = m.enter();
        drop(b);
        drop(c);
        assert_eq!((m.queue_depth(), m.queue_depth_max()), (0, 2));
    }
}
