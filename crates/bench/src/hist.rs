//! Latency histograms per operation (HdrHistogram, nanoseconds, three significant
//! digits), their exchange between ranks, and their summaries.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Longest latency recorded exactly: an hour. Longer ones count as an hour.
const LATENCY_MAX_NS: u64 = 3_600_000_000_000;

/// Percentiles of the latency curve kept in results and plotted.
pub const CURVE_PERCENTILES: [f64; 10] =
    [0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99, 100.0];

/// One rank's or one phase's latencies, per operation name.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    by_op: BTreeMap<String, Histogram<u64>>,
}

/// A histogram as (value in ns, count) pairs, as ranks hand it to rank 0.
pub type Recorded = Vec<[u64; 2]>;

fn empty() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3).expect("constant bounds are valid")
}

impl Latencies {
    /// Records one operation that took `nanos`.
    pub fn record(&mut self, op: &str, nanos: u64) {
        let h = match self.by_op.get_mut(op) {
            Some(h) => h,
            None => self.by_op.entry(op.to_owned()).or_insert_with(empty),
        };
        h.saturating_record(nanos.clamp(1, LATENCY_MAX_NS));
    }

    /// Every histogram as recorded pairs.
    pub fn export(&self) -> BTreeMap<String, Recorded> {
        self.by_op
            .iter()
            .map(|(op, h)| {
                let pairs = h
                    .iter_recorded()
                    .map(|v| [v.value_iterated_to(), v.count_at_value()])
                    .collect();
                (op.clone(), pairs)
            })
            .collect()
    }

    /// Adds another rank's recorded pairs.
    pub fn merge(&mut self, other: &BTreeMap<String, Recorded>) {
        for (op, pairs) in other {
            let h = self.by_op.entry(op.clone()).or_insert_with(empty);
            for &[value, count] in pairs {
                // Values come from a histogram with the same bounds; clamp anyway, since
                // they were read back from a file.
                let _ = h.record_n(value.clamp(1, LATENCY_MAX_NS), count);
            }
        }
    }

    /// The summary of every operation.
    pub fn summaries(&self) -> BTreeMap<String, LatencySummary> {
        self.by_op
            .iter()
            .filter(|(_, h)| !h.is_empty())
            .map(|(op, h)| (op.clone(), LatencySummary::of(h)))
            .collect()
    }
}

/// Latency of one operation over a phase, in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Operations timed.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Slowest.
    pub max_us: f64,
    /// (percentile, µs) at [`CURVE_PERCENTILES`], for plots.
    pub curve: Vec<[f64; 2]>,
}

fn us(nanos: u64) -> f64 {
    nanos as f64 / 1000.0
}

impl LatencySummary {
    fn of(h: &Histogram<u64>) -> LatencySummary {
        LatencySummary {
            count: h.len(),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.5)),
            p90_us: us(h.value_at_quantile(0.9)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            curve: CURVE_PERCENTILES
                .iter()
                .map(|&p| [p, us(h.value_at_quantile(p / 100.0))])
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_ranks_give_the_percentiles_of_all_samples() {
        let mut a = Latencies::default();
        let mut b = Latencies::default();
        for i in 1..=500u64 {
            a.record("write", i * 1000);
            b.record("write", (500 + i) * 1000);
        }
        let mut all = Latencies::default();
        all.merge(&a.export());
        all.merge(&b.export());
        let s = &all.summaries()["write"];
        assert_eq!(s.count, 1000);
        assert!((s.p50_us - 500.0).abs() < 1.0, "p50 {}", s.p50_us);
        assert!((s.p99_us - 990.0).abs() < 1.5, "p99 {}", s.p99_us);
        assert!((s.max_us - 1000.0).abs() < 1.0, "max {}", s.max_us);
        assert!((s.mean_us - 500.5).abs() < 1.0, "mean {}", s.mean_us);
    }

    #[test]
    fn absurd_values_are_clamped_not_lost() {
        let mut l = Latencies::default();
        l.record("stat", 0);
        l.record("stat", u64::MAX);
        let s = &l.summaries()["stat"];
        assert_eq!(s.count, 2);
        assert!(s.max_us >= 3.5e9);
    }
}
