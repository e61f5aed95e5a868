//! IO500: its phases in the official order with the official shapes, and its score as
//! IO500 computes it: the geometric mean of the bandwidth phases (GiB/s) and that of the
//! metadata phases (kIOPS), then the square root of their product.

use serde::{Deserialize, Serialize};

use crate::ior::IorSpec;
use crate::mdtest::{MdOp, MdSpec};
use crate::phase::{Kind, PhaseResult};
use crate::run::Phase;

/// IO500's phases, in the order it runs them.
pub const ORDER: [&str; 12] = [
    "ior-easy-write",
    "mdtest-easy-write",
    "ior-hard-write",
    "mdtest-hard-write",
    "find",
    "ior-easy-read",
    "mdtest-easy-stat",
    "ior-hard-read",
    "mdtest-hard-stat",
    "mdtest-easy-delete",
    "mdtest-hard-read",
    "mdtest-hard-delete",
];

/// What every IO500 output of ours says.
pub const NOT_OFFICIAL: &str =
    "not an official IO500 submission: sizes and time limits are this run's, not the rules'";

/// The IO500 phases over the given shapes, in [`ORDER`].
pub fn phases(easy: &IorSpec, hard: &IorSpec, md_easy: &MdSpec, md_hard: &MdSpec) -> Vec<Phase> {
    let md = |spec: &MdSpec, md: MdOp| Phase::Md {
        spec: spec.clone(),
        md,
    };
    vec![
        Phase::IorWrite(easy.clone()),
        md(md_easy, MdOp::Create),
        Phase::IorWrite(hard.clone()),
        md(md_hard, MdOp::Create),
        Phase::Find,
        Phase::IorRead(easy.clone()),
        md(md_easy, MdOp::Stat),
        Phase::IorRead(hard.clone()),
        md(md_hard, MdOp::Stat),
        md(md_easy, MdOp::Remove),
        md(md_hard, MdOp::Read),
        md(md_hard, MdOp::Remove),
    ]
}

/// One phase's figure in IO500's unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Io500Phase {
    /// The phase.
    pub name: String,
    /// GiB/s or kIOPS.
    pub value: f64,
    /// "GiB/s" or "kIOPS".
    pub unit: String,
}

/// An IO500 score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Io500Score {
    /// The target it was measured on.
    pub target: String,
    /// Every phase, in [`ORDER`].
    pub phases: Vec<Io500Phase>,
    /// Geometric mean of the bandwidth phases, GiB/s.
    pub bandwidth_gib_s: f64,
    /// Geometric mean of the metadata phases, kIOPS.
    pub metadata_kiops: f64,
    /// √(bandwidth × metadata).
    pub score: f64,
    /// [`NOT_OFFICIAL`].
    pub note: String,
}

fn geometric_mean(values: &[f64]) -> f64 {
    if values.iter().any(|&v| v <= 0.0) {
        return 0.0;
    }
    (values.iter().map(|v| v.ln()).sum::<f64>() / values.len() as f64).exp()
}

/// The score of `target` from its results (the mean over repetitions of each phase), or
/// `None` when a phase of [`ORDER`] is missing.
pub fn score(target: &str, results: &[PhaseResult]) -> Option<Io500Score> {
    let mut phases = Vec::new();
    for name in ORDER {
        let runs: Vec<&PhaseResult> = results
            .iter()
            .filter(|r| r.target == target && r.phase == name)
            .collect();
        let first = runs.first()?;
        let mean = runs.iter().map(|r| r.value()).sum::<f64>() / runs.len() as f64;
        let (value, unit) = match first.kind {
            Kind::Bandwidth => (mean / 1024.0, "GiB/s"),
            Kind::Metadata => (mean / 1000.0, "kIOPS"),
        };
        phases.push(Io500Phase {
            name: name.to_owned(),
            value,
            unit: unit.to_owned(),
        });
    }
    let of = |unit: &str| -> Vec<f64> {
        phases
            .iter()
            .filter(|p| p.unit == unit)
            .map(|p| p.value)
            .collect()
    };
    let bandwidth_gib_s = geometric_mean(&of("GiB/s"));
    let metadata_kiops = geometric_mean(&of("kIOPS"));
    Some(Io500Score {
        target: target.to_owned(),
        phases,
        bandwidth_gib_s,
        metadata_kiops,
        score: (bandwidth_gib_s * metadata_kiops).sqrt(),
        note: NOT_OFFICIAL.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(phase: &str, value: f64) -> PhaseResult {
        let kind = if phase.starts_with("ior") {
            Kind::Bandwidth
        } else {
            Kind::Metadata
        };
        PhaseResult {
            target: "benchfs".into(),
            phase: phase.into(),
            kind,
            rep: 0,
            ranks: 1,
            bytes: 0,
            ops: 0,
            elapsed_s: 1.0,
            mib_s: if kind == Kind::Bandwidth { value } else { 0.0 },
            ops_s: if kind == Kind::Metadata { value } else { 0.0 },
            stonewalled: false,
            latency: Default::default(),
            recorded: Default::default(),
            efficiency: None,
            point: Default::default(),
        }
    }

    #[test]
    fn the_score_is_the_root_of_the_two_geometric_means() {
        // Bandwidth phases in MiB/s: 2048, 512, 1024, 4096 → 2, 0.5, 1, 4 GiB/s, whose
        // geometric mean is (2·0.5·1·4)^(1/4) = 4^(1/4) = √2.
        // Metadata phases in ops/s: 8 of them at 1000..8000 → 1..8 kIOPS, geometric mean
        // (8!)^(1/8).
        let bw = [
            ("ior-easy-write", 2048.0),
            ("ior-hard-write", 512.0),
            ("ior-easy-read", 1024.0),
            ("ior-hard-read", 4096.0),
        ];
        let mut results: Vec<PhaseResult> = bw.iter().map(|(n, v)| result(n, *v)).collect();
        let md: Vec<&str> = ORDER
            .iter()
            .copied()
            .filter(|n| !n.starts_with("ior"))
            .collect();
        assert_eq!(md.len(), 8);
        for (i, name) in md.iter().enumerate() {
            results.push(result(name, 1000.0 * (i + 1) as f64));
        }
        let s = score("benchfs", &results).unwrap();
        let md_expected = 40320f64.powf(1.0 / 8.0);
        assert!(
            (s.bandwidth_gib_s - 2f64.sqrt()).abs() < 1e-9,
            "{}",
            s.bandwidth_gib_s
        );
        assert!(
            (s.metadata_kiops - md_expected).abs() < 1e-9,
            "{}",
            s.metadata_kiops
        );
        assert!((s.score - (2f64.sqrt() * md_expected).sqrt()).abs() < 1e-9);
        assert_eq!(
            s.phases.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ORDER
        );
        assert!(s.note.contains("not an official"));
    }

    #[test]
    fn repetitions_are_averaged_and_a_missing_or_zero_phase_tells() {
        let mut results: Vec<PhaseResult> = ORDER.iter().map(|n| result(n, 1024.0)).collect();
        results.push(result("ior-easy-write", 3072.0));
        let s = score("benchfs", &results).unwrap();
        assert_eq!(s.phases[0].value, 2.0);
        assert!(score("other", &results).is_none());
        results.retain(|r| r.phase != "find");
        assert!(score("benchfs", &results).is_none());
        results.push(result("find", 0.0));
        assert_eq!(score("benchfs", &results).unwrap().score, 0.0);
    }

    #[test]
    fn the_phases_follow_the_official_order() {
        let p = phases(
            &IorSpec::easy(1 << 20),
            &IorSpec::hard(10),
            &MdSpec::easy(10),
            &MdSpec::hard(10),
        );
        assert_eq!(p.iter().map(Phase::name).collect::<Vec<_>>(), ORDER);
    }
}
