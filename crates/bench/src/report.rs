//! The results of a run as a researcher keeps them: a table on stdout, and a directory
//! with the whole report as JSON, one CSV row per phase and repetition, the plots, and a
//! markdown and an HTML page that embed them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use benchfs_proto::ops::StatsReply;
use serde::{Deserialize, Serialize};

use crate::error::{io_error, BenchError, Result};
use crate::hist::{Latencies, LatencySummary};
use crate::io500::Io500Score;
use crate::limits::Limits;
use crate::phase::{Kind, PhaseResult};
use crate::run::Plan;

/// Where and when a run ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// The command line.
    pub command: Vec<String>,
    /// BenchFS's version.
    pub version: String,
    /// The source commit, when known.
    pub commit: String,
    /// Start, UTC, RFC 3339.
    pub date_utc: String,
    /// Host name.
    pub host: String,
    /// Kernel release.
    pub kernel: String,
    /// Online CPUs.
    pub cores: usize,
    /// Memory, GiB.
    pub memory_gib: f64,
    /// Load average (1, 5, 15 min) before the run.
    pub load_before: [f64; 3],
    /// Load average after the run.
    pub load_after: [f64; 3],
    /// The cluster's settings (chunk size, backend, ...), as the command line knew them.
    pub config: BTreeMap<String, String>,
    /// How each target's reads avoided caches.
    pub cache_notes: BTreeMap<String, String>,
    /// What of the host bends the figures (see [`host_notes`]).
    #[serde(default)]
    pub host_notes: Vec<String>,
}

/// One server's counters at a point of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerCounters {
    /// Node id.
    pub node: String,
    /// Address.
    pub addr: String,
    /// Requests served since it started (`None`: it did not answer).
    pub requests: Option<u64>,
    /// Requests since the previous snapshot.
    pub requests_in_phase: Option<u64>,
    /// Metadata records held.
    pub metadata_records: Option<u64>,
    /// Chunks held.
    pub chunks: Option<u64>,
    /// Bytes held.
    pub used_bytes: Option<u64>,
    /// Requests refused as malformed.
    pub malformed: Option<u64>,
    /// Requests in the server now, and the most at once since it started.
    pub queue_depth: Option<[u64; 2]>,
    /// Per operation, since the server started.
    pub ops: Vec<OpCounters>,
    /// Why it did not answer, when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One server's counters of one operation, since it started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpCounters {
    /// The operation's wire name.
    pub op: String,
    /// Requests taken.
    pub requests: u64,
    /// Requests not answered with success.
    pub errors: u64,
    /// Payload bytes received.
    pub bytes_in: u64,
    /// Payload bytes sent.
    pub bytes_out: u64,
    /// Median latency in the server, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Slowest, µs.
    pub max_us: f64,
}

fn op_counters(s: &StatsReply) -> Vec<OpCounters> {
    s.ops
        .iter()
        .map(|o| OpCounters {
            op: o.op.name().to_owned(),
            requests: o.requests,
            errors: o.errors,
            bytes_in: o.bytes_in,
            bytes_out: o.bytes_out,
            p50_us: o.latency_p50_ns as f64 / 1000.0,
            p99_us: o.latency_p99_ns as f64 / 1000.0,
            max_us: o.latency_max_ns as f64 / 1000.0,
        })
        .collect()
}

impl ServerCounters {
    /// From a `Stats` reply, or why there was none.
    pub fn new<E: std::fmt::Display>(
        node: &str,
        addr: &str,
        reply: Result<StatsReply, E>,
    ) -> ServerCounters {
        let (stats, error) = match reply {
            Ok(stats) => (Some(stats), None),
            Err(e) => (None, Some(e.to_string())),
        };
        ServerCounters {
            node: node.to_owned(),
            addr: addr.to_owned(),
            requests: stats.as_ref().map(|s| s.requests),
            requests_in_phase: None,
            metadata_records: stats.as_ref().map(|s| s.metadata_records),
            chunks: stats.as_ref().map(|s| s.chunks),
            used_bytes: stats.as_ref().map(|s| s.used_bytes),
            malformed: stats.as_ref().map(|s| s.malformed),
            queue_depth: stats.as_ref().map(|s| [s.queue_depth, s.queue_depth_max]),
            ops: stats.as_ref().map(op_counters).unwrap_or_default(),
            error,
        }
    }
}

/// Every server's counters after one phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerSnapshot {
    /// Target label.
    pub target: String,
    /// The phase just ended ("start" before the first).
    pub phase: String,
    /// Repetition.
    pub rep: u32,
    /// Per server.
    pub servers: Vec<ServerCounters>,
    /// The swept parameters of the point it was taken at (empty outside a sweep).
    #[serde(default)]
    pub point: BTreeMap<String, String>,
}

/// A phase over its repetitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Target label.
    pub target: String,
    /// Phase.
    pub phase: String,
    /// Bandwidth or metadata.
    pub kind: Kind,
    /// Swept parameters.
    pub point: BTreeMap<String, String>,
    /// Repetitions.
    pub reps: usize,
    /// Mean of the phase's figure.
    pub mean: f64,
    /// Sample standard deviation; none for one repetition, which has no spread to show
    /// (not a spread of zero).
    pub stddev: Option<f64>,
    /// "MiB/s" or "ops/s".
    pub unit: String,
    /// Mean percentage of the limit, when measured.
    pub percent_of_limit: Option<f64>,
    /// Median latency of the phase's main operation over all repetitions (µs).
    pub p50_us: Option<f64>,
    /// 99th percentile of the same.
    pub p99_us: Option<f64>,
    /// The main operation.
    pub op: Option<String>,
    /// Repetitions in which a rank stopped at the time limit (stonewalling); absent in
    /// reports written before it was kept.
    #[serde(default)]
    pub stonewalled_reps: usize,
}

/// The mark of a table cell whose figure comes from stonewalled repetitions.
const STONEWALL_MARK: char = '*';

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Where and when.
    pub meta: Meta,
    /// What was run (the first point's plan in a sweep).
    pub plan: Plan,
    /// The machine's limits.
    pub limits: Option<Limits>,
    /// Every phase of every repetition, target and point.
    pub results: Vec<PhaseResult>,
    /// Means and deviations over repetitions.
    pub summary: Vec<Summary>,
    /// Server counters after every phase.
    pub servers: Vec<ServerSnapshot>,
    /// IO500 scores, when the IO500 phases ran.
    pub io500: Vec<Io500Score>,
}

/// The operation a phase's latency is quoted for: the one it did most.
pub fn main_op(latency: &BTreeMap<String, LatencySummary>) -> Option<&str> {
    latency
        .iter()
        .max_by_key(|(_, l)| l.count)
        .map(|(op, _)| op.as_str())
}

/// Means and deviations per target, point and phase, in the order they first ran.
pub fn summarize(results: &[PhaseResult]) -> Vec<Summary> {
    let mut keys: Vec<(String, BTreeMap<String, String>, String)> = Vec::new();
    for r in results {
        let key = (r.target.clone(), r.point.clone(), r.phase.clone());
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys.into_iter()
        .map(|(target, point, phase)| {
            let runs: Vec<&PhaseResult> = results
                .iter()
                .filter(|r| r.target == target && r.point == point && r.phase == phase)
                .collect();
            let n = runs.len();
            let mean = runs.iter().map(|r| r.value()).sum::<f64>() / n as f64;
            let stddev = (n > 1).then(|| {
                let var =
                    runs.iter().map(|r| (r.value() - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
                var.sqrt()
            });
            let percents: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.efficiency.as_ref().map(|e| e.percent))
                .collect();
            let first = runs[0];
            let mut all = Latencies::default();
            for r in &runs {
                all.merge(&r.recorded);
            }
            let merged = all.summaries();
            // Results read back from a report keep no histograms: the first repetition's.
            let latency = if merged.is_empty() {
                &first.latency
            } else {
                &merged
            };
            let op = main_op(latency).map(str::to_owned);
            let lat = op.as_ref().and_then(|op| latency.get(op));
            Summary {
                target,
                phase,
                kind: first.kind,
                point,
                reps: n,
                mean,
                stddev,
                unit: first.unit().to_owned(),
                percent_of_limit: (!percents.is_empty())
                    .then(|| percents.iter().sum::<f64>() / percents.len() as f64),
                p50_us: lat.map(|l| l.p50_us),
                p99_us: lat.map(|l| l.p99_us),
                op,
                stonewalled_reps: runs.iter().filter(|r| r.stonewalled).count(),
            }
        })
        .collect()
}

/// The comparison table: a row per phase (and point), a column per target, the ratio
/// of the first target to the second, the first's share of its limit and latency. A
/// figure from stonewalled repetitions is marked, and a line under the table names them.
pub fn table(summary: &[Summary]) -> String {
    let targets: Vec<String> = summary.iter().fold(Vec::new(), |mut v, s| {
        if !v.contains(&s.target) {
            v.push(s.target.clone());
        }
        v
    });
    let mut out = String::new();
    let _ = write!(out, "{:<28} {:>6}", "phase", "unit");
    for t in &targets {
        let _ = write!(out, " {:>20}", format!("{t} (mean ± sd)"));
    }
    if targets.len() > 1 {
        let _ = write!(out, " {:>7}", "ratio");
    }
    let _ = writeln!(out, " {:>9} {:>10} {:>10}", "% limit", "p50 µs", "p99 µs");
    let first = targets.first().cloned().unwrap_or_default();
    let mut stonewalled = Vec::new();
    for s in summary.iter().filter(|s| s.target == first) {
        let name = if s.point.is_empty() {
            s.phase.clone()
        } else {
            format!("{} [{}]", s.phase, point_label(&s.point))
        };
        let _ = write!(out, "{name:<28} {:>6}", s.unit);
        let mut values = Vec::new();
        for t in &targets {
            let other = summary
                .iter()
                .find(|o| &o.target == t && o.phase == s.phase && o.point == s.point);
            values.push(other.map(|o| o.mean));
            let cell = other.map_or("-".to_owned(), |o| {
                let sd = o.stddev.map_or("-".to_owned(), figure);
                let mark = match o.stonewalled_reps {
                    0 => String::new(),
                    n => {
                        stonewalled.push(format!("{name} on {t}: {n} of {}", o.reps));
                        STONEWALL_MARK.to_string()
                    }
                };
                format!("{} ± {sd}{mark}", figure(o.mean))
            });
            let _ = write!(out, " {cell:>20}");
        }
        if targets.len() > 1 {
            let ratio = match (values[0], values[1]) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
                _ => "-".to_owned(),
            };
            let _ = write!(out, " {ratio:>7}");
        }
        let pct = s
            .percent_of_limit
            .map_or("-".to_owned(), |p| format!("{p:.1}%"));
        let lat = |v: Option<f64>| v.map_or("-".to_owned(), figure);
        let _ = writeln!(out, " {pct:>9} {:>10} {:>10}", lat(s.p50_us), lat(s.p99_us));
    }
    if !stonewalled.is_empty() {
        let _ = writeln!(
            out,
            "{STONEWALL_MARK} stopped at the time limit (stonewalled) in some repetitions: {}",
            stonewalled.join(", ")
        );
    }
    out
}

/// The CSV header; [`csv_row`] follows it.
pub const CSV_HEADER: &str = "target,point,phase,kind,rep,ranks,bytes,ops,elapsed_s,mib_s,ops_s,stonewalled,op,p50_us,p90_us,p99_us,p999_us,max_us,limit,percent_of_limit";

fn point_label(point: &BTreeMap<String, String>) -> String {
    point
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";")
}

/// One result as a CSV row (no field holds a comma).
pub fn csv_row(r: &PhaseResult) -> String {
    let op = main_op(&r.latency);
    let lat = op.and_then(|op| r.latency.get(op));
    let f = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.3}"));
    let kind = match r.kind {
        Kind::Bandwidth => "bandwidth",
        Kind::Metadata => "metadata",
    };
    format!(
        "{},{},{},{kind},{},{},{},{},{:.6},{:.3},{:.3},{},{},{},{},{},{},{},{},{}",
        r.target,
        point_label(&r.point),
        r.phase,
        r.rep,
        r.ranks,
        r.bytes,
        r.ops,
        r.elapsed_s,
        r.mib_s,
        r.ops_s,
        r.stonewalled,
        op.unwrap_or(""),
        f(lat.map(|l| l.p50_us)),
        f(lat.map(|l| l.p90_us)),
        f(lat.map(|l| l.p99_us)),
        f(lat.map(|l| l.p999_us)),
        f(lat.map(|l| l.max_us)),
        f(r.efficiency.as_ref().map(|e| e.limit)),
        f(r.efficiency.as_ref().map(|e| e.percent)),
    )
}

/// A figure with three significant digits at least, and no exponent.
pub fn figure(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

impl Report {
    /// Whether the results are a sweep's points.
    pub fn is_sweep(&self) -> bool {
        self.results.iter().any(|r| !r.point.is_empty())
    }

    /// The comparison table of [`Report::summary`]; see [`table`].
    pub fn table(&self) -> String {
        table(&self.summary)
    }

    /// Writes report.json, results.csv, the plots, summary.md and index.html into `dir`
    /// (created if missing); returns the plot files written.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|e| io_error("create", dir, e))?;
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| BenchError(format!("cannot encode the report: {e}")))?;
        write_file(&dir.join("report.json"), &json)?;
        let mut csv = String::from(CSV_HEADER);
        csv.push('\n');
        for r in &self.results {
            csv.push_str(&csv_row(r));
            csv.push('\n');
        }
        write_file(&dir.join("results.csv"), csv.as_bytes())?;
        let plots = crate::plot::all(self, dir)?;
        let rel: Vec<String> = plots
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "svg"))
            .filter_map(|p| p.strip_prefix(dir).ok().map(|p| p.display().to_string()))
            .collect();
        write_file(&dir.join("summary.md"), self.markdown(&rel).as_bytes())?;
        write_file(&dir.join("index.html"), self.html(&rel).as_bytes())?;
        Ok(plots)
    }

    /// A line for each server that stopped answering during the run: the figures after
    /// that ran without it (or with its calls failing), which its counters cannot show.
    pub fn server_notes(&self) -> Vec<String> {
        server_notes(&self.servers)
    }

    fn markdown(&self, plots: &[String]) -> String {
        let m = &self.meta;
        let mut out = format!(
            "# BenchFS benchmark report\n\n{} on {} ({}, {} cores, {:.1} GiB), commit {}, load {:.2} → {:.2}\n\n`{}`\n\n",
            m.date_utc, m.host, m.kernel, m.cores, m.memory_gib, m.commit, m.load_before[0], m.load_after[0], m.command.join(" ")
        );
        if let Some(l) = &self.limits {
            // A sweep measures them at every point; each result's own is in results.csv.
            let whose = match self.is_sweep() {
                true => "Limits measured at the sweep's first point (each point's in results.csv)",
                false => "Limits measured in this run",
            };
            let _ = writeln!(
                out,
                "{whose}: round trip p50 {:.1} µs, network {:.0} MiB/s{}\n",
                l.rtt_p50_us,
                l.network_mib_s,
                store_note(l)
            );
        }
        out.push_str("```\n");
        out.push_str(&self.table());
        out.push_str("```\n\n");
        for (target, note) in &m.cache_notes {
            let _ = writeln!(out, "- {target}: {note}");
        }
        for note in &m.host_notes {
            let _ = writeln!(out, "- host: {note}");
        }
        for note in self.server_notes() {
            let _ = writeln!(out, "- servers: {note}");
        }
        for s in &self.io500 {
            let _ = writeln!(
                out,
                "\nIO500 on {}: score {:.3} (bandwidth {:.3} GiB/s, metadata {:.3} kIOPS); {}",
                s.target, s.score, s.bandwidth_gib_s, s.metadata_kiops, s.note
            );
        }
        out.push('\n');
        for p in plots {
            let _ = writeln!(out, "![{p}]({p})\n");
        }
        out
    }

    fn html(&self, plots: &[String]) -> String {
        // The markdown's text in a <pre>, without its code fences.
        let md: String = self
            .markdown(&[])
            .lines()
            .filter(|l| *l != "```")
            .map(|l| format!("{l}\n"))
            .collect();
        let escaped = md
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        let mut out = String::from("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>BenchFS benchmark report</title>\n<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}pre{background:#f6f6f6;padding:1em;overflow-x:auto}img{max-width:100%;border:1px solid #ddd;margin:1em 0}</style></head><body>\n");
        let _ = writeln!(out, "<pre>{escaped}</pre>");
        for p in plots {
            let _ = writeln!(
                out,
                "<figure><img src=\"{p}\" alt=\"{p}\"><figcaption>{p}</figcaption></figure>"
            );
        }
        out.push_str("</body></html>\n");
        out
    }
}

/// [`Report::server_notes`] of `snapshots`.
fn server_notes(snapshots: &[ServerSnapshot]) -> Vec<String> {
    let mut notes: Vec<String> = Vec::new();
    let mut missed: Vec<&str> = Vec::new();
    for snapshot in snapshots {
        for server in snapshot.servers.iter().filter(|s| s.requests.is_none()) {
            if missed.contains(&server.node.as_str()) {
                continue;
            }
            missed.push(&server.node);
            notes.push(format!(
                "{} ({}) did not answer after {} {} rep {}{}: the figures from then on ran without it",
                server.node,
                server.addr,
                snapshot.target,
                snapshot.phase,
                snapshot.rep,
                server.error.as_ref().map_or(String::new(), |e| format!(" ({e})")),
            ));
        }
    }
    notes
}

fn store_note(l: &Limits) -> String {
    match (l.store_write_mib_s, l.store_read_mib_s) {
        (Some(w), Some(r)) => format!(", stores write {w:.0} MiB/s, read {r:.0} MiB/s"),
        _ => String::new(),
    }
}

/// Writes `path` whole or not at all: a report file cut short (a full disk) would still
/// read as a report.
fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let partial = path.with_file_name(format!(".{name}.partial"));
    let written = std::fs::write(&partial, bytes).and_then(|()| std::fs::rename(&partial, path));
    written.map_err(|e| {
        let _ = std::fs::remove_file(&partial);
        io_error("write", path, e)
    })
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut v = text.split_whitespace().map(|x| x.parse().unwrap_or(0.0));
    [
        v.next().unwrap_or(0.0),
        v.next().unwrap_or(0.0),
        v.next().unwrap_or(0.0),
    ]
}

/// Host facts for [`Meta`]: name, kernel, cores, memory in GiB.
pub fn host_facts() -> (String, String, usize, f64) {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let mem_kib: f64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    (
        read("/proc/sys/kernel/hostname"),
        read("/proc/sys/kernel/osrelease"),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        mem_kib / 1_048_576.0,
    )
}

pub use benchfs_store::VIRTIO_DEVICES_DIR;

/// What of the host bends a run's figures, for the report: a VM that hands the memory its
/// processes free back to the hypervisor (virtio-balloon free page reporting) makes a later
/// first write to that memory wait for the hypervisor. On our development VM fresh tmpfs
/// pages were written at 0.5-0.6 GB/s against 5.5 GB/s for pages a file already held, so a
/// phase that grows a store (a fresh cluster's first write) measures that as much as the file
/// system.
pub fn host_notes(virtio_devices: &Path) -> Vec<String> {
    let mut notes = Vec::new();
    if benchfs_store::free_page_reporting(virtio_devices) {
        notes.push(
            "a VM that hands freed memory back to its hypervisor (virtio free page reporting): \
             first writes into fresh memory, a store's growth among them, run at the \
             hypervisor's speed"
                .to_owned(),
        );
    }
    notes
}

/// (year, month, day, hour, minute, second) in UTC of `t`.
fn civil(t: std::time::SystemTime) -> (i64, u32, u32, u32, u32, u32) {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (rem / 3600) as u32,
        (rem / 60 % 60) as u32,
        (rem % 60) as u32,
    )
}

/// `t` as RFC 3339 UTC, to the second.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let (y, mo, d, h, mi, s) = civil(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// `t` as a compact UTC stamp for directory names (`20261130T233735Z`).
pub fn utc_stamp(t: std::time::SystemTime) -> String {
    let (y, mo, d, h, mi, s) = civil(t);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phase::RankPhase;
    use std::time::{Duration, UNIX_EPOCH};

    /// One repetition of a phase whose 100 stats each took `micros`.
    fn stats_taking(rep: u32, micros: u64) -> PhaseResult {
        let mut latencies = Latencies::default();
        for _ in 0..100 {
            latencies.record("stat", micros * 1000);
        }
        let rank = RankPhase {
            end_ns: 1_000_000_000,
            ops: 100,
            latencies: latencies.export(),
            ..RankPhase::default()
        };
        PhaseResult::aggregate("benchfs", "mdtest-stat", Kind::Metadata, rep, &[rank])
    }

    #[test]
    fn a_summary_quotes_the_latency_of_every_repetition() {
        let summary = summarize(&[stats_taking(0, 10), stats_taking(1, 1000)]);
        assert_eq!(summary.len(), 1);
        let (p50, p99) = (summary[0].p50_us.unwrap(), summary[0].p99_us.unwrap());
        assert!(
            (9.9..10.1).contains(&p50) && (999.0..1001.0).contains(&p99),
            "p50 {p50} us, p99 {p99} us: the second repetition's stats are missing"
        );
        assert_eq!(summary[0].op.as_deref(), Some("stat"));
    }

    #[test]
    fn a_stonewalled_figure_is_marked_in_the_table_and_named_under_it() {
        let creates = |target: &str, rep: u32, stonewalled: bool| PhaseResult {
            target: target.into(),
            phase: "mdtest-create".into(),
            stonewalled,
            ..stats_taking(rep, 10)
        };
        let clean = summarize(&[creates("benchfs", 0, false), creates("chfs", 0, false)]);
        let table_clean = table(&clean);
        assert!(!table_clean.contains(STONEWALL_MARK), "{table_clean}");
        let results = [
            creates("benchfs", 0, false),
            creates("benchfs", 1, true),
            creates("chfs", 0, false),
            creates("chfs", 1, false),
        ];
        let summary = summarize(&results);
        assert_eq!(summary[0].stonewalled_reps, 1);
        let marked = table(&summary);
        let row = marked.lines().nth(1).unwrap();
        assert_eq!(row.matches(STONEWALL_MARK).count(), 1, "{marked}");
        assert!(
            marked.contains("stonewalled) in some repetitions: mdtest-create on benchfs: 1 of 2"),
            "{marked}"
        );
    }

    #[test]
    fn one_repetition_has_no_deviation_and_two_have_one() {
        let one = summarize(&[stats_taking(0, 10)]);
        assert_eq!(one[0].stddev, None);
        let json = serde_json::to_value(&one[0]).unwrap();
        assert!(json["stddev"].is_null(), "{json}");
        let two = summarize(&[stats_taking(0, 10), stats_taking(1, 10)]);
        assert_eq!(two[0].stddev, Some(0.0));
    }

    #[test]
    fn a_server_that_stops_answering_gets_one_note_naming_when_and_why() {
        let snapshot = |phase: &str, rep: u32, node1: Result<StatsReply, &str>| ServerSnapshot {
            target: "benchfs".into(),
            phase: phase.into(),
            rep,
            servers: vec![
                ServerCounters::new("node0", "10.0.0.1:1", Ok::<_, &str>(StatsReply::default())),
                ServerCounters::new("node1", "10.0.0.2:1", node1),
            ],
            point: BTreeMap::new(),
        };
        let answered = [
            snapshot("start", 0, Ok(StatsReply::default())),
            snapshot("ior-write", 1, Ok(StatsReply::default())),
        ];
        assert!(server_notes(&answered).is_empty());
        let lost = [
            snapshot("ior-read", 1, Ok(StatsReply::default())),
            snapshot("ior-read", 2, Err("no reply from node1 within 3000 ms")),
            snapshot("ior-read", 3, Err("no reply from node1 within 3000 ms")),
        ];
        assert_eq!(lost[1].servers[1].requests, None);
        let notes = server_notes(&lost);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with("node1 (10.0.0.2:1) did not answer after benchfs ior-read rep 2")
                && notes[0].contains("no reply from node1"),
            "{notes:?}"
        );
    }

    #[test]
    fn a_balloon_that_reports_free_pages_gets_a_host_note() {
        // Which devices count is `benchfs_store::free_page_reporting`'s test.
        let root = tempfile::tempdir().unwrap();
        assert!(host_notes(root.path()).is_empty());
        let balloon = root.path().join("virtio0");
        std::fs::create_dir_all(&balloon).unwrap();
        std::fs::write(balloon.join("device"), "0x0005\n").unwrap();
        std::fs::write(balloon.join("features"), "01100101\n").unwrap();
        let notes = host_notes(root.path());
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("free page reporting"), "{notes:?}");
    }

    #[test]
    fn dates_are_utc_civil_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        // 2024-02-29T12:34:56Z, a leap day.
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_709_210_096)),
            "2024-02-29T12:34:56Z"
        );
        assert_eq!(
            utc_stamp(UNIX_EPOCH + Duration::from_secs(1_796_085_455)),
            "2026-12-01T00:37:35Z".replace(['-', ':'], "")
        );
    }
}
