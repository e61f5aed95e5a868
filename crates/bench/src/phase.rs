//! What one rank measured in a phase, and the phase's result over all ranks.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::hist::{Latencies, LatencySummary, Recorded};

/// Wall-clock nanoseconds since the Unix epoch: ranks on several hosts compare them, as
/// IOR compares its ranks' timers.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Whether a phase moves bytes or counts operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Measured in MiB/s.
    Bandwidth,
    /// Measured in operations per second.
    Metadata,
}

/// One rank's share of a phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RankPhase {
    /// The rank.
    pub rank: u32,
    /// When it began, after the barrier (ns since the epoch), moved later by the time
    /// of its untimed work ([`RankPhase::untimed`]).
    pub start_ns: u64,
    /// When its last operation ended (ns since the epoch).
    pub end_ns: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Operations done (transfers, or files).
    pub ops: u64,
    /// Whether it stopped at the time limit before its planned work.
    pub stonewalled: bool,
    /// Latency histograms per operation.
    pub latencies: BTreeMap<String, Recorded>,
}

impl RankPhase {
    /// A rank's share that starts now.
    pub fn start(rank: u32) -> RankPhase {
        RankPhase {
            rank,
            start_ns: now_ns(),
            ..RankPhase::default()
        }
    }

    /// Runs `work` outside the share's time: the run's own work between calls, such as
    /// making and checking the verify pattern, which no file system does. Its time moves
    /// the share's start later, as if it had been done before the phase began.
    pub fn untimed<T>(&mut self, work: impl FnOnce() -> T) -> T {
        let t = std::time::Instant::now();
        let out = work();
        self.start_ns += t.elapsed().as_nanos() as u64;
        out
    }

    /// Ends the share now, with its latencies.
    pub fn finish(mut self, latencies: &Latencies) -> RankPhase {
        self.end_ns = now_ns();
        self.latencies = latencies.export();
        self
    }
}

/// How a result compares with what the hardware allows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Efficiency {
    /// The limit, in the result's unit.
    pub limit: f64,
    /// What the limit is.
    pub of: String,
    /// The result as a percentage of the limit.
    pub percent: f64,
}

/// One phase over all ranks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseResult {
    /// The target's label ("benchfs", "local", ...).
    pub target: String,
    /// The phase ("ior-easy-write", "mdtest-hard-stat", ...).
    pub phase: String,
    /// Bandwidth or metadata.
    pub kind: Kind,
    /// Repetition, from 0.
    pub rep: u32,
    /// Ranks that took part.
    pub ranks: u32,
    /// Bytes moved by all ranks.
    pub bytes: u64,
    /// Operations by all ranks.
    pub ops: u64,
    /// From the first rank's start to the last rank's end.
    pub elapsed_s: f64,
    /// `bytes` / `elapsed_s`, MiB/s.
    pub mib_s: f64,
    /// `ops` / `elapsed_s`.
    pub ops_s: f64,
    /// Whether any rank stopped at the time limit.
    pub stonewalled: bool,
    /// Latency per operation.
    pub latency: BTreeMap<String, LatencySummary>,
    /// The histograms behind `latency`, so that a summary over repetitions is one of all
    /// their operations; not kept in the report.
    #[serde(skip)]
    pub recorded: BTreeMap<String, Recorded>,
    /// Against the machine's limit, when one was measured.
    pub efficiency: Option<Efficiency>,
    /// The swept parameters of this point (empty outside a sweep).
    pub point: BTreeMap<String, String>,
}

impl PhaseResult {
    /// The phase's main figure: MiB/s or operations per second.
    pub fn value(&self) -> f64 {
        match self.kind {
            Kind::Bandwidth => self.mib_s,
            Kind::Metadata => self.ops_s,
        }
    }

    /// The unit of [`PhaseResult::value`].
    pub fn unit(&self) -> &'static str {
        match self.kind {
            Kind::Bandwidth => "MiB/s",
            Kind::Metadata => "ops/s",
        }
    }

    /// The result of `ranks`' shares of one phase.
    pub fn aggregate(
        target: &str,
        phase: &str,
        kind: Kind,
        rep: u32,
        ranks: &[RankPhase],
    ) -> PhaseResult {
        let start = ranks.iter().map(|r| r.start_ns).min().unwrap_or(0);
        let end = ranks.iter().map(|r| r.end_ns).max().unwrap_or(0);
        // A phase of no measurable length is a nanosecond, not a division by zero.
        let elapsed_s = end.saturating_sub(start).max(1) as f64 / 1e9;
        let bytes: u64 = ranks.iter().map(|r| r.bytes).sum();
        let ops: u64 = ranks.iter().map(|r| r.ops).sum();
        let mut latencies = Latencies::default();
        for r in ranks {
            latencies.merge(&r.latencies);
        }
        PhaseResult {
            target: target.to_owned(),
            phase: phase.to_owned(),
            kind,
            rep,
            ranks: ranks.len() as u32,
            bytes,
            ops,
            elapsed_s,
            mib_s: bytes as f64 / (1u64 << 20) as f64 / elapsed_s,
            ops_s: ops as f64 / elapsed_s,
            stonewalled: ranks.iter().any(|r| r.stonewalled),
            latency: latencies.summaries(),
            recorded: latencies.export(),
            efficiency: None,
            point: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untimed_work_leaves_the_share_time() {
        let before = std::time::Instant::now();
        let mut share = RankPhase::start(0);
        let started = share.start_ns;
        let pause = std::time::Duration::from_millis(50);
        share.untimed(|| std::thread::sleep(pause));
        let share = share.finish(&Latencies::default());
        let wall = before.elapsed().as_nanos() as u64;
        let pause = pause.as_nanos() as u64;
        assert!(share.start_ns >= started + pause);
        // The share's time is what was left of the wall time: the two clocks differ by
        // their reads, far below a millisecond.
        assert!(share.end_ns - share.start_ns <= wall - pause + 1_000_000);
    }

    #[test]
    fn a_phase_spans_the_first_start_to_the_last_end() {
        let mut a = RankPhase {
            rank: 0,
            start_ns: 1_000_000_000,
            end_ns: 2_000_000_000,
            bytes: 1 << 30,
            ops: 10,
            ..Default::default()
        };
        let b = RankPhase {
            rank: 1,
            start_ns: 1_500_000_000,
            end_ns: 3_000_000_000,
            bytes: 1 << 30,
            ops: 30,
            stonewalled: true,
            ..Default::default()
        };
        let mut l = Latencies::default();
        l.record("write", 5000);
        a.latencies = l.export();
        let r = PhaseResult::aggregate("benchfs", "ior-easy-write", Kind::Bandwidth, 0, &[a, b]);
        assert_eq!(r.elapsed_s, 2.0);
        assert_eq!(r.mib_s, 1024.0);
        assert_eq!(r.ops_s, 20.0);
        assert!(r.stonewalled);
        assert_eq!(r.latency["write"].count, 1);
        assert_eq!(r.value(), 1024.0);
    }
}
