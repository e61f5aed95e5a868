//! `benchfs bench` end to end against real clusters: the report directory (JSON, CSV,
//! plots, pages) agrees with the table it printed, a sweep restarts the cluster per point,
//! a verify run catches a corrupted chunk, IO500 runs its phases in order and scores them,
//! stonewalling stops a phase and the reads read what was written, and MPI ranks meet
//! through the registry.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use benchfs::placement::PlacementKey;
use benchfs_bench::io500;
use benchfs_bench::phase::PhaseResult;
use benchfs_bench::report::{figure, Report, CSV_HEADER};
use common::cli::{benchfs, Run};
use common::disk::SmallDisk;
use common::{Cluster, ClusterSpec};

fn arg(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Runs `benchfs bench args --dir <cluster>`.
fn bench(cluster: &Cluster, args: &[&str]) -> Run {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    all.extend(["--dir", arg(cluster.dir.path())]);
    benchfs(&all, &[])
}

/// A cluster of two memory servers.
fn two_servers() -> Cluster {
    Cluster::start(ClusterSpec {
        servers: 2,
        ..Default::default()
    })
}

fn read_report(out: &Path) -> Report {
    let text = std::fs::read_to_string(out.join("report.json")).expect("report.json");
    serde_json::from_str(&text).expect("report.json parses back into a Report")
}

fn out_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(common::test_root()).unwrap()
}

/// The CSV rows, as field lists, checked against the header.
fn csv_rows(out: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(CSV_HEADER));
    let columns = CSV_HEADER.split(',').count();
    lines
        .map(|l| {
            let fields: Vec<String> = l.split(',').map(str::to_owned).collect();
            assert_eq!(fields.len(), columns, "{l}");
            fields
        })
        .collect()
}

fn result<'a>(report: &'a Report, target: &str, phase: &str, rep: u32) -> &'a PhaseResult {
    report
        .results
        .iter()
        .find(|r| r.target == target && r.phase == phase && r.rep == rep)
        .unwrap_or_else(|| panic!("no result {target} {phase} rep {rep}"))
}

/// Every CSV row is one JSON result with the same figures.
fn check_csv_agrees(report: &Report, out: &Path) {
    let rows = csv_rows(out);
    assert_eq!(rows.len(), report.results.len());
    for f in rows {
        let r = result(report, &f[0], &f[2], f[4].parse().unwrap());
        assert_eq!(f[7].parse::<u64>().unwrap(), r.ops, "{f:?}");
        assert_eq!(f[6].parse::<u64>().unwrap(), r.bytes, "{f:?}");
        assert!(
            (f[9].parse::<f64>().unwrap() - r.mib_s).abs() < 1e-3,
            "{f:?}"
        );
        assert!(
            (f[10].parse::<f64>().unwrap() - r.ops_s).abs() < 1e-3,
            "{f:?}"
        );
    }
}

/// Every summary is the mean and sample deviation of its repetitions, and the printed
/// table shows them.
fn check_table_agrees(report: &Report, stdout: &str) {
    for s in &report.summary {
        let values: Vec<f64> = report
            .results
            .iter()
            .filter(|r| r.target == s.target && r.phase == s.phase)
            .map(PhaseResult::value)
            .collect();
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!((s.mean - mean).abs() <= 1e-9 * mean.max(1.0), "{s:?}");
        let cell = if values.len() == 1 {
            // One repetition has no spread, not a spread of zero.
            assert_eq!(s.stddev, None, "{s:?}");
            format!("{} ± -", figure(s.mean))
        } else {
            let sd = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>()
                / (values.len() - 1) as f64)
                .sqrt();
            let stddev = s.stddev.unwrap_or_else(|| panic!("no deviation in {s:?}"));
            assert!((stddev - sd).abs() <= 1e-9 * sd.max(1.0), "{s:?}");
            format!("{} ± {}", figure(s.mean), figure(stddev))
        };
        let row = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(s.phase.as_str()))
            .unwrap_or_else(|| panic!("no row for {} in\n{stdout}", s.phase));
        assert!(row.contains(&cell), "row {row:?} lacks {cell:?}");
    }
}

fn check_plots(out: &Path, names: &[&str]) {
    for name in names {
        let svg = std::fs::read_to_string(out.join("plots").join(format!("{name}.svg"))).unwrap();
        assert!(svg.contains("<svg") && svg.len() > 1000, "{name}.svg");
        let png = std::fs::read(out.join("plots").join(format!("{name}.png"))).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 1000,
            "{name}.png"
        );
    }
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    for name in names {
        assert!(
            html.contains(&format!("plots/{name}.svg")),
            "index.html lacks {name}"
        );
    }
    assert!(std::fs::read_to_string(out.join("summary.md"))
        .unwrap()
        .contains("```"));
}

/// The servers saw each phase: their request counters moved, and their per-operation
/// counters took in every byte written. The limits probed their stores.
fn check_server_counters(report: &Report) {
    let limits = report.limits.as_ref().expect("limits measured");
    // The servers saw the phase: their request counters moved by at least one write per
    // chunk.
    let after = report
        .servers
        .iter()
        .find(|s| s.phase == "ior-easy-write")
        .unwrap();
    let requests: u64 = after
        .servers
        .iter()
        .map(|s| s.requests_in_phase.unwrap())
        .sum();
    assert!(requests >= 8, "{requests}");
    // Their per-operation counters took in every byte the phase wrote (the limits' store
    // probe runs inside the store, not over the wire).
    let written: u64 = after
        .servers
        .iter()
        .flat_map(|s| s.ops.iter().filter(|o| o.op == "write_chunk"))
        .map(|o| o.bytes_in)
        .sum();
    assert!(written >= 2 * (4 << 20), "{written}");
    // Memory stores copy nothing on the data path: no store figure is a limit (the probe's
    // swung 3 to 940 GB/s with whether the store had the pages already).
    assert!(
        limits.store_write_mib_s.is_none() && limits.store_read_mib_s.is_none(),
        "{limits:?}"
    );
    assert!(
        report
            .meta
            .cache_notes
            .get("benchfs")
            .is_some_and(|n| n.contains("memory stores: the network is the limit")),
        "{:?}",
        report.meta.cache_notes
    );
    // The store probe comes after the phases: its scratch file grew memory stores by pages
    // that the phases after it wrote into without faulting them in.
    let probes_during_phases: u64 = report
        .servers
        .iter()
        .flat_map(|snapshot| &snapshot.servers)
        .flat_map(|s| s.ops.iter().filter(|o| o.op == "store_probe"))
        .map(|o| o.requests)
        .sum();
    assert_eq!(probes_during_phases, 0, "a store probe ran before a phase");
}

#[test]
fn suite_report_parses_back_and_agrees_with_the_table() {
    let cluster = two_servers();
    let out = out_dir();
    let local = out_dir();
    let args = [
        &["suite"][..],
        &common::cli::TINY_IO500,
        &[
            "--clients",
            "2",
            "--reps",
            "2",
            "--baseline",
            arg(local.path()),
        ],
        &["--out", arg(out.path())],
    ];
    let stdout = bench(&cluster, &args.concat()).ok();
    let report = read_report(out.path());
    // 11 phases, 2 repetitions, 2 targets.
    assert_eq!(report.results.len(), 44);
    assert_eq!(report.summary.len(), 22);
    check_csv_agrees(&report, out.path());
    check_table_agrees(&report, &stdout);
    check_plots(
        out.path(),
        &["bandwidth", "metadata", "latency-benchfs", "latency-local"],
    );

    let write = result(&report, "benchfs", "ior-easy-write", 1);
    assert_eq!((write.ranks, write.bytes), (2, 2 * (4 << 20)));
    assert!(write.latency["write"].count == 4 && write.latency["write"].p50_us > 0.0);
    let hard = result(&report, "benchfs", "mdtest-hard-write", 0);
    assert_eq!((hard.ops, hard.bytes), (40, 40 * 3901));
    let limits = report.limits.as_ref().expect("limits measured");
    assert!(limits.rtt_p50_us > 0.0 && limits.network_mib_s > 0.0);
    assert!(write.efficiency.as_ref().is_some_and(|e| e.percent > 0.0));
    assert!(result(&report, "local", "ior-easy-write", 0)
        .efficiency
        .is_none());
    check_server_counters(&report);
    assert!(report.meta.load_before.iter().all(|l| *l >= 0.0) && !report.meta.commit.is_empty());
    assert_eq!(
        std::fs::read_dir(local.path()).unwrap().count(),
        0,
        "the baseline's files are gone"
    );
}

#[test]
fn sweep_over_two_chunk_sizes_gives_a_point_each() {
    let out = out_dir();
    let stdout = benchfs(
        &[
            "bench",
            "sweep",
            "--param",
            "chunk_size=16k,1m",
            "--workload",
            "ior-easy",
            "--easy-block",
            "4m",
            "--servers",
            "2",
            "--out",
            arg(out.path()),
        ],
        &[],
    )
    .ok();
    // One limits line for several points says whose it is (a hostile run read the first
    // point's as the sweep's).
    assert!(
        stdout.contains("limits at the sweep's first point"),
        "{stdout}"
    );
    let report = read_report(out.path());
    let points: Vec<String> = report
        .results
        .iter()
        .map(|r| format!("{}:{}", r.point["chunk_size"], r.phase))
        .collect();
    assert_eq!(
        points,
        [
            "16k:ior-easy-write",
            "16k:ior-easy-read",
            "1m:ior-easy-write",
            "1m:ior-easy-read"
        ]
    );
    // The rendezvous threshold follows the chunk size (at most one chunk): a hostile run
    // found the first point's threshold reported for the whole sweep.
    assert_eq!(report.meta.config["rdma_threshold"], "varies");
    let thresholds: Vec<&str> = report
        .results
        .iter()
        .map(|r| r.point["rdma_threshold"].as_str())
        .collect();
    assert_eq!(thresholds, ["16384", "16384", "32768", "32768"]);
    // Each point ran on a cluster with its own chunk size: 4 MiB is 256 chunks, then 4;
    // each snapshot names its point.
    let chunks: Vec<(&str, u64)> = report
        .servers
        .iter()
        .filter(|s| s.phase == "ior-easy-write")
        .map(|s| {
            let chunks = s.servers.iter().map(|c| c.chunks.unwrap()).sum();
            (s.point["chunk_size"].as_str(), chunks)
        })
        .collect();
    assert_eq!(chunks, [("16k", 256), ("1m", 4)]);
    assert!(
        stdout.contains("[chunk_size=16k") && stdout.contains("[chunk_size=1m"),
        "{stdout}"
    );
    check_plots(out.path(), &["sweep-bandwidth", "sweep-latency"]);
}

/// The chunk files of every server of a file-backend cluster, with their chunk index.
fn chunk_files(cluster: &Cluster) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for i in 0..cluster.spec.servers {
        let Ok(files) = std::fs::read_dir(cluster.data_dir(i).join("chunks")) else {
            continue;
        };
        for file_dir in files.flatten() {
            for chunk in std::fs::read_dir(file_dir.path()).unwrap().flatten() {
                let index = u64::from_str_radix(&chunk.file_name().to_string_lossy(), 16).unwrap();
                out.push((chunk.path(), index));
            }
        }
    }
    out
}

#[test]
fn verify_detects_a_corrupted_chunk() {
    let cluster = Cluster::start(ClusterSpec {
        servers: 2,
        chunk_size: 1 << 20,
        ..ClusterSpec::backend("file")
    });
    let common = [
        "-b",
        "3m",
        "-t",
        "256k",
        "--verify",
        "--no-limits",
        "--workspace",
        "verify-run",
    ];
    let with = |phases: &str, extra: &[&str]| -> Run {
        // A report directory of its own each run: one holding a report is refused.
        let out = out_dir();
        let mut args = vec!["ior", "--phases", phases, "--out", arg(out.path())];
        args.extend_from_slice(&common);
        args.extend_from_slice(extra);
        bench(&cluster, &args)
    };
    let stdout = with("write", &["--keep"]).ok();
    // The header names the shape, defaults included, and that the pattern is not timed.
    assert!(
        stdout.contains(
            "# workload: ior -t 262144 -b 3145728 -s 1 file-per-process sequential fsync \
             verify (pattern work not timed); reps=1"
        ),
        "{stdout}"
    );
    // Untouched, the data reads back and checks.
    with("read", &[]).ok();
    // Against another seed's pattern it does not, and the error says the seed may differ
    // rather than only blaming the file system.
    let stderr = with("read", &["--seed", "7"]).failed();
    assert!(
        stderr.contains("verify failed") && stderr.contains("this --seed (7)"),
        "{stderr}"
    );
    let chunks = chunk_files(&cluster);
    assert_eq!(chunks.len(), 3, "{chunks:?}");
    let (path, index) = &chunks[1];
    let mut bytes = std::fs::read(path).unwrap();
    bytes[1000] ^= 0x40;
    std::fs::write(path, &bytes).unwrap();
    let stderr = with("read", &[]).failed();
    let offset = index * (1 << 20) + 1000;
    assert!(
        stderr.contains("verify failed")
            && stderr.contains(&format!("wrong byte at offset {offset}")),
        "{stderr}"
    );
    assert!(stderr.contains("/verify-run/ior/file.00000000"), "{stderr}");
    // A reading run leaves the earlier run's files alone.
    assert_eq!(chunk_files(&cluster).len(), 3);
    let stderr = with("write", &[]).failed();
    assert!(
        stderr.contains("verify-run"),
        "a writing run refuses a workspace that exists: {stderr}"
    );
}

#[test]
fn mdtest_verify_detects_a_file_changed_between_its_write_and_read() {
    // On a local directory (--posix), so the test can change a file between the phases.
    let cluster = two_servers();
    let dir = tempfile::tempdir().unwrap();
    let common = [
        "mdtest",
        "-n",
        "3",
        "-w",
        "3901",
        "--verify",
        "--no-limits",
        "--posix",
        arg(dir.path()),
        "--workspace",
        "md-verify",
    ];
    let with = |phases: &str, extra: &[&str]| {
        let out = out_dir();
        let mut args = common.to_vec();
        args.extend(["--phases", phases, "--out", arg(out.path())]);
        args.extend_from_slice(extra);
        bench(&cluster, &args)
    };
    let stdout = with("create", &["--keep"]).ok();
    assert!(
        stdout.contains("files-per-rank=3 write-bytes=3901 dir-per-rank verify"),
        "{stdout}"
    );
    with("read", &["--keep"]).ok();
    let files: Vec<_> = walkdir(dir.path())
        .into_iter()
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() == 3901))
        .collect();
    assert_eq!(files.len(), 3, "{files:?}");
    // A file cut short fails the read, naming the rank that read it.
    let whole = std::fs::read(&files[0]).unwrap();
    std::fs::write(&files[0], &whole[..100]).unwrap();
    let stderr = with("read", &["--keep"]).failed();
    assert!(stderr.contains("(read by rank 0)"), "{stderr}");
    std::fs::write(&files[0], &whole).unwrap();
    let mut bytes = std::fs::read(&files[1]).unwrap();
    bytes[3900] ^= 1;
    std::fs::write(&files[1], &bytes).unwrap();
    let stderr = with("read", &[]).failed();
    assert!(
        stderr.contains("verify failed") && stderr.contains("holds bytes that were not written"),
        "{stderr}"
    );
}

/// Every file under `dir`, depth first.
fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walkdir(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn each_repetition_of_an_mdtest_that_keeps_its_files_creates_new_ones() {
    // A hostile-user run: with create,stat and --reps 2 the second repetition's "creates"
    // opened the files the first one kept, and its rate was mixed into the mean.
    let cluster = two_servers();
    let fs = cluster.client();
    let deletes = || -> u64 {
        common::files::stats(&fs)
            .iter()
            .filter_map(|s| s.op(benchfs::proto::OpCode::MetadataDelete))
            .map(|op| op.requests)
            .sum()
    };
    let before = (deletes(), common::files::total_records(&fs));
    let out = out_dir();
    let args = [
        "mdtest",
        "-n",
        "3",
        "--phases",
        "create,stat",
        "--reps",
        "2",
        "--keep",
        "--clients",
        "1",
        "--no-limits",
        "--out",
        arg(out.path()),
    ];
    bench(&cluster, &args).ok();
    // The first repetition's three files went before the second made its own (untimed),
    // and the second's are kept.
    assert_eq!(deletes() - before.0, 3);
    let made = common::files::total_records(&fs) - before.1;
    assert!(
        (3..=6).contains(&made),
        "{made} records: the files and their directories"
    );
    let report = read_report(out.path());
    for rep in 0..2 {
        assert_eq!(result(&report, "benchfs", "mdtest-write", rep).ops, 3);
    }
}

#[test]
fn io500_runs_every_phase_in_order_and_scores() {
    let cluster = two_servers();
    let out = out_dir();
    let stdout = bench(
        &cluster,
        &[
            &["io500"][..],
            &common::cli::TINY_IO500,
            &["--out", arg(out.path())],
        ]
        .concat(),
    )
    .ok();
    let report = read_report(out.path());
    let phases: Vec<&str> = report.results.iter().map(|r| r.phase.as_str()).collect();
    assert_eq!(phases, io500::ORDER);
    let score = &report.io500[0];
    let recomputed = io500::score("benchfs", &report.results).unwrap();
    // The score printed and saved is IO500's formula over the saved phase results (equal
    // up to the last digit JSON keeps).
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(1.0);
    assert!(
        close(score.score, recomputed.score)
            && close(score.bandwidth_gib_s, recomputed.bandwidth_gib_s)
    );
    assert!(close(score.metadata_kiops, recomputed.metadata_kiops));
    for (a, b) in score.phases.iter().zip(&recomputed.phases) {
        assert!(
            a.name == b.name && a.unit == b.unit && close(a.value, b.value),
            "{a:?} {b:?}"
        );
    }
    assert!(score.score > 0.0 && score.bandwidth_gib_s > 0.0 && score.metadata_kiops > 0.0);
    let find = result(&report, "benchfs", "find", 0);
    assert_eq!(
        (find.ops, find.bytes, find.mib_s),
        (20 + 20 + 2, 0, 0.0),
        "find stats every file and moves no data"
    );
    assert!(
        stdout.contains(&format!("score {:.3}", score.score))
            && stdout.contains(io500::NOT_OFFICIAL),
        "{stdout}"
    );
}

/// Found by a hostile-user run: IO500's find, which rank 0 does alone, was reported as
/// every rank's, and its "% limit" divided by one round trip per operation per rank.
#[test]
fn io500_find_counts_the_one_rank_that_did_it() {
    let cluster = two_servers();
    let out = out_dir();
    bench(
        &cluster,
        &[
            &["io500", "--clients", "2"][..],
            &common::cli::TINY_IO500,
            &["--out", arg(out.path())],
        ]
        .concat(),
    )
    .ok();
    let report = read_report(out.path());
    let limits = report.limits.as_ref().expect("limits were measured");
    let find = result(&report, "benchfs", "find", 0);
    assert_eq!(find.ranks, 1, "{find:?}");
    assert_eq!(
        find.ops,
        2 * 20 + 2 * 20 + 3,
        "every rank's files: {find:?}"
    );
    let efficiency = find.efficiency.as_ref().expect("find's % limit");
    let one_process = 1e6 / limits.rtt_p50_us;
    assert!(
        (efficiency.limit - one_process).abs() <= 1e-9 * one_process,
        "find's limit {} is not one process's {one_process}",
        efficiency.limit
    );
    let create = result(&report, "benchfs", "mdtest-easy-write", 0);
    assert_eq!(create.ranks, 2, "the other phases count every rank");
}

/// Found by a hostile-user run: IOR and mdtest under --ior-bin ran without the time limit
/// and the check of the bytes read, and their column stood beside this run's with a ratio.
#[test]
fn ior_bin_refuses_what_ior_is_not_asked_to_do() {
    let cluster = two_servers();
    let bin = tempfile::tempdir_in(common::test_root()).unwrap();
    for (extra, named) in [
        (&["ior", "--verify"][..], "without --verify"),
        (
            &["mdtest", "-n", "10", "--stonewall", "1"][..],
            "without --stonewall",
        ),
    ] {
        let out = out_dir();
        let mut args = extra.to_vec();
        args.extend([
            "--no-limits",
            "--ior-bin",
            arg(bin.path()),
            "--out",
            arg(out.path()),
        ]);
        let stderr = bench(&cluster, &args).failed();
        assert!(
            stderr.contains("--ior-bin runs IOR and mdtest") && stderr.contains(named),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn stonewalling_stops_writes_and_reads_read_what_was_written() {
    let cluster = two_servers();
    let out = out_dir();
    let stdout = bench(
        &cluster,
        &[
            "ior",
            "-b",
            "8g",
            "-t",
            "1m",
            "--stonewall",
            "0.5",
            "--verify",
            "--no-limits",
            "--out",
            arg(out.path()),
        ],
    )
    .ok();
    // The table marks the write's figure and names it; the read's is whole.
    let row = |phase: &str| stdout.lines().find(|l| l.starts_with(phase)).unwrap_or("");
    assert!(row("ior-write ").contains('*'), "{stdout}");
    assert!(!row("ior-read ").contains('*'), "{stdout}");
    assert!(
        stdout.contains("(stonewalled) in some repetitions: ior-write on benchfs: 1 of 1"),
        "{stdout}"
    );
    let report = read_report(out.path());
    let (write, read) = (
        result(&report, "benchfs", "ior-write", 0),
        result(&report, "benchfs", "ior-read", 0),
    );
    assert!(write.stonewalled && !read.stonewalled);
    assert!(write.bytes > 0 && write.bytes < 8 << 30, "{}", write.bytes);
    assert_eq!(read.bytes, write.bytes);
}

#[test]
fn a_refused_run_leaves_nothing_in_its_working_directory() {
    let cluster = Cluster::start(ClusterSpec {
        servers: 1,
        ..Default::default()
    });
    // Refused in a directory of its own with no --out: the default report directory and
    // the bench-results/ it made above it go again (the checkout kept an empty one).
    let cwd = tempfile::tempdir().unwrap();
    let args = [
        "bench",
        "ior",
        "-b",
        "3m",
        "-t",
        "2m",
        "--dir",
        arg(cluster.dir.path()),
    ];
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_benchfs"));
    command.args(args).current_dir(cwd.path());
    let stderr = common::cli::run_benchfs(&mut command, &args).failed();
    assert!(stderr.contains("not a multiple of transfer"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(cwd.path()).unwrap().collect();
    assert!(left.is_empty(), "a refused run left {left:?}");
}

#[test]
fn bad_workloads_are_refused_by_name() {
    let cluster = Cluster::start(ClusterSpec {
        servers: 1,
        ..Default::default()
    });
    let stderr = bench(&cluster, &["ior", "-b", "3m", "-t", "2m"]).failed();
    assert!(stderr.contains("not a multiple of transfer"), "{stderr}");
    let stderr = bench(&cluster, &["ior", "--stonewall", "0"]).failed();
    assert!(stderr.contains("time limit"), "{stderr}");
    let stderr = bench(&cluster, &["mdtest", "-n", "0"]).failed();
    assert!(stderr.contains("files per rank"), "{stderr}");
    let stderr = bench(
        &cluster,
        &["ior", "--phases", "read", "--workspace", "never-written"],
    )
    .failed();
    assert!(stderr.contains("no workspace never-written"), "{stderr}");
    // Phases that read files no phase before them made (or one removed), and a phase named
    // twice, are refused before anything runs, by name.
    for (phases, why) in [
        ("stat", "no phase before it makes them"),
        ("create,remove,read", "a phase before it removed them"),
        ("create,create", "listed twice"),
    ] {
        let stderr = bench(&cluster, &["mdtest", "-n", "4", "--phases", phases]).failed();
        assert!(stderr.contains(why), "{phases}: {stderr}");
    }
    let stderr = bench(&cluster, &["ior", "--phases", "read"]).failed();
    assert!(
        stderr.contains("ior-read needs the files of ior"),
        "{stderr}"
    );
    let twice = ["--param", "servers=1", "--param", "servers=2"];
    let stderr = benchfs(&[&["bench", "sweep"][..], &twice].concat(), &[]).failed();
    assert!(stderr.contains("servers is given twice"), "{stderr}");
    let stderr = benchfs(&["bench", "sweep", "--param", "colour=red"], &[]).failed();
    assert!(stderr.contains("colour"), "{stderr}");
    // A grid with one impossible point is refused before any point runs (found by a
    // hostile run: the points measured before it were lost, no report written).
    let sweep = benchfs(
        &[
            "bench",
            "sweep",
            "--param",
            "chunk_size=64k,1m",
            "--param",
            "rdma_threshold=4k,1m",
            "--servers",
            "1",
        ],
        &[],
    );
    assert!(!sweep.stdout.contains("sweep point"), "{sweep:?}");
    let stderr = sweep.failed();
    assert!(
        stderr.contains("chunk_size=64k rdma_threshold=1m") && stderr.contains("rendezvous"),
        "{stderr}"
    );
    let stderr = benchfs(&["bench", "ior", "-t", "1q"], &[]).failed();
    assert!(stderr.contains("suffix"), "{stderr}");
    // A hostile run asked for 100000 local clients, and got process after process until
    // the machine had no room for more.
    let stderr = benchfs(&["bench", "ior", "--clients", "100000"], &[]).failed();
    assert!(
        stderr.contains("at most 1024") && stderr.contains("mpirun"),
        "{stderr}"
    );
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            // The parent is the second field after the command name, which ends at the last ')'.
            let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            after_name.split_whitespace().nth(1) == Some(pid.to_string().as_str())
        })
        .collect()
}

/// An interrupt while the `--clients` processes start ends the starting: a hostile run's
/// `timeout 60 benchfs bench ior --clients 100000` went on starting them for minutes after
/// the timeout's SIGTERM.
#[test]
fn an_interrupt_while_the_clients_start_starts_no_more() {
    let cluster = Cluster::start(ClusterSpec {
        servers: 1,
        ..Default::default()
    });
    let out = out_dir();
    let mut bench = std::process::Command::new(env!("CARGO_BIN_EXE_benchfs"))
        .args(["bench", "ior", "-b", "1m", "-t", "1m", "--clients", "1024"])
        .args(["--no-limits", "--dir", arg(cluster.dir.path())])
        .args(["--out", arg(out.path())])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = bench.id();
    let started = Instant::now();
    let mut seen = BTreeSet::new();
    while seen.len() < 8 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "8 client processes did not start within a minute"
        );
        seen.extend(children_of(pid));
        std::thread::sleep(Duration::from_millis(10));
    }
    seen.extend(children_of(pid));
    let before = seen.len();
    let term = nix::unistd::Pid::from_raw(pid as i32);
    nix::sys::signal::kill(term, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = loop {
        seen.extend(children_of(pid));
        if let Some(status) = bench.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "bench did not end after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(!status.success(), "an interrupted run must fail");
    // The signal reaches the run through a thread of its own, and starts go on until that
    // thread has run (a few on a busy machine); without the check, all 1024 would start.
    assert!(
        seen.len() <= before + 32,
        "{} client processes started after SIGTERM",
        seen.len() - before
    );
    let gone = seen
        .iter()
        .all(|p| !Path::new(&format!("/proc/{p}")).exists());
    assert!(gone, "client processes left running: {seen:?}");
}

/// A bad shape is refused before a cluster of the run's own starts, in a sweep and in a
/// single run (a hostile-user run: after its first point's cluster had started).
#[test]
fn a_bad_shape_is_refused_before_a_cluster_starts() {
    let tmp = tempfile::tempdir().unwrap();
    for run in [
        &[
            "bench",
            "sweep",
            "--param",
            "chunk_size=64k",
            "--easy-block",
            "1500k",
        ][..],
        &["bench", "ior", "-b", "1500k"],
    ] {
        let refused = benchfs(
            &[run, &["--servers", "1"]].concat(),
            &[("TMPDIR", tmp.path())],
        );
        assert!(!refused.stdout.contains("sweep point"), "{refused:?}");
        let stderr = refused.failed();
        assert!(
            stderr.contains("not a multiple of transfer"),
            "{run:?}: {stderr}"
        );
        let started: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert!(started.is_empty(), "{run:?} started a cluster: {started:?}");
    }
}

#[test]
fn a_report_that_cannot_be_written_fails_the_run_and_leaves_none() {
    let cluster = Cluster::start(ClusterSpec {
        servers: 1,
        ..Default::default()
    });
    // A report directory that cannot be made fails the run before it measures, not after
    // (found by a hostile run: a long run's figures were lost to a bad --out).
    let local = out_dir();
    let file = local.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let below_file = file.join("report");
    let run = bench(&cluster, &["mdtest", "-n", "5", "--out", arg(&below_file)]);
    assert!(!run.stdout.contains("# benchfs bench"), "{run:?}");
    let stderr = run.failed();
    assert!(
        stderr.contains("report directory") && stderr.contains(arg(&below_file)),
        "{stderr}"
    );
    // A run that fails after making its report directory removes it again.
    let fresh = local.path().join("fresh");
    let missing = local.path().join("no-registry");
    benchfs(
        &[
            "bench",
            "mdtest",
            "-n",
            "5",
            "--registry",
            arg(&missing),
            "--out",
            arg(&fresh),
        ],
        &[],
    )
    .failed();
    assert!(!fresh.exists());
    // A report directory that holds a report already is refused, and the report kept
    // (found by a hostile run: a second run's report took the first's place, beside the
    // first's plots of other phases).
    let first = local.path().join("first");
    bench(&cluster, &["mdtest", "-n", "5", "--out", arg(&first)]).ok();
    let report = std::fs::read(first.join("report.json")).unwrap();
    let stderr = bench(
        &cluster,
        &["ior", "-b", "64k", "-t", "64k", "--out", arg(&first)],
    )
    .failed();
    assert!(
        stderr.contains("not empty") && stderr.contains(arg(&first)),
        "{stderr}"
    );
    assert_eq!(std::fs::read(first.join("report.json")).unwrap(), report);
    // A local directory to run on that does not exist is refused, not made: a mistyped
    // mount point would have the local disk measured under its name.
    let typo = local.path().join("no-such-mount");
    for flag in ["--posix", "--baseline"] {
        let stderr = bench(&cluster, &["mdtest", "-n", "5", flag, arg(&typo)]).failed();
        assert!(
            stderr.contains(flag) && stderr.contains(arg(&typo)),
            "{stderr}"
        );
        assert!(!typo.exists(), "{flag} made {}", typo.display());
    }
    // A report that cannot be written whole (its disk full) leaves no report: nothing
    // cut short that would read as one (found by a hostile run: a truncated report.json).
    let Some(_disk) = SmallDisk::mount(&local.path().join("tiny"), "12k") else {
        return;
    };
    let report = local.path().join("tiny/report");
    let stderr = bench(&cluster, &["mdtest", "-n", "5", "--out", arg(&report)]).failed();
    assert!(stderr.contains("No space left"), "{stderr}");
    assert!(!report.exists(), "{stderr}");
    assert_eq!(
        std::fs::read_dir(local.path().join("tiny"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn a_run_given_only_the_registry_reports_the_clusters_settings() {
    // Found by a review: under --registry the report gave this client's configuration
    // (one replica, the default chunk size and backend), not the cluster's.
    let cluster = Cluster::start(ClusterSpec {
        servers: 2,
        replicas: 2,
        backend: "file",
        chunk_size: 1 << 18,
        rdma_threshold: 1 << 16,
        ..Default::default()
    });
    let out = out_dir();
    let run = benchfs(
        &[
            "bench",
            "mdtest",
            "-n",
            "5",
            "--no-limits",
            "--registry",
            arg(&cluster.registry()),
            "--out",
            arg(out.path()),
        ],
        &[],
    );
    run.ok();
    let config = read_report(out.path()).meta.config;
    let setting = |key: &str| config.get(key).map(String::as_str);
    assert_eq!(setting("replicas"), Some("2"), "{config:?}");
    assert_eq!(setting("backend"), Some("file"), "{config:?}");
    assert_eq!(setting("chunk_size"), Some("262144"), "{config:?}");
    // `auto` gives a disk backend no huge pages, whatever the host.
    assert_eq!(setting("huge_pages"), Some("false"), "{config:?}");
    assert_eq!(setting("servers"), Some("2"), "{config:?}");
    // The servers' rendezvous threshold (their replies'), and this client's (its
    // requests') where it differs: a hostile run found the client's alone, named as the
    // cluster's.
    assert_eq!(setting("rdma_threshold"), Some("65536"), "{config:?}");
    assert_eq!(
        setting("client_rdma_threshold"),
        Some("32768"),
        "{config:?}"
    );
    // The settings of a cluster the run would start are refused for one it is given.
    let registry = cluster.registry();
    for (flag, value) in [
        ("--servers", "8"),
        ("--chunk-size", "1m"),
        ("--replicas", "2"),
    ] {
        let run = ["bench", "mdtest", "--registry", arg(&registry), flag, value];
        let stderr = benchfs(&run, &[]).failed();
        assert!(stderr.contains("cannot be used with"), "{run:?}: {stderr}");
    }
}

#[test]
fn mpi_ranks_meet_through_the_registry() {
    let have_mpirun = std::process::Command::new("sh")
        .args(["-c", "command -v mpirun"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_mpirun {
        common::skip(
            "mpi_ranks_meet_through_the_registry",
            "mpirun is not installed (scripts/install-deps.sh)",
        );
        return;
    }
    let cluster = two_servers();
    let out = out_dir();
    let run = std::process::Command::new("mpirun")
        .args([
            "--oversubscribe",
            "-np",
            "3",
            env!("CARGO_BIN_EXE_benchfs"),
            "bench",
            "mdtest",
            "-n",
            "30",
            "-w",
            "100",
            "--no-limits",
        ])
        .args([
            "--registry",
            arg(&cluster.registry()),
            "--out",
            arg(out.path()),
        ])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        stdout.matches("report:").count(),
        1,
        "only rank 0 reports: {stdout}"
    );
    let report = read_report(out.path());
    let create = result(&report, "benchfs", "mdtest-write", 0);
    assert_eq!((create.ranks, create.ops), (3, 90));
    let fs = cluster.client();
    assert!(
        fs.readdir("/").unwrap().is_empty(),
        "the run removed what it made"
    );
}

#[test]
fn a_report_names_the_commit_the_binary_was_built_from() {
    // Not the source tree's commit at run time: the tree may have moved on since the build,
    // and a compute node may have neither the tree nor git (no git on PATH here).
    let cluster = Cluster::start(ClusterSpec::default());
    let out = out_dir();
    let no_git = tempfile::tempdir_in(common::test_root()).unwrap();
    let run = benchfs(
        &[
            "bench",
            "mdtest",
            "-n",
            "10",
            "--no-limits",
            "--dir",
            arg(cluster.dir.path()),
            "--out",
            arg(out.path()),
        ],
        &[("PATH", no_git.path())],
    );
    assert!(run.success, "{run:?}");
    let built = env!("BENCHFS_COMMIT");
    if built == "unknown" {
        common::skip("report commit", "built outside a git checkout");
        return;
    }
    assert_eq!(read_report(out.path()).meta.commit, built);
}

#[test]
fn a_store_that_refuses_the_probe_costs_the_run_its_store_limit_only() {
    // Found by a review: with the probe after the phases, a store too full for its scratch
    // file failed the whole run and its measured phases went unreported.
    let c = common::cli::ClusterDir::new("full");
    let capacity = Path::new("67108864"); // 64 MiB: less than the probe's 128 MiB
    c.run_with_env(
        &["cluster", "up", "--servers", "1", "--backend", "file"],
        &[("BENCHFS_STORAGE_CAPACITY", capacity)],
    )
    .ok();
    let out = out_dir();
    c.cli(&["bench", "mdtest", "-n", "10", "--out", arg(out.path())]);
    let report = read_report(out.path());
    let limits = report.limits.as_ref().expect("the network limits stand");
    assert!(limits.store_write_mib_s.is_none() && limits.network_mib_s > 0.0);
    assert!(
        report
            .meta
            .cache_notes
            .values()
            .any(|n| n.contains("no store limit")),
        "{:?}",
        report.meta.cache_notes
    );
    assert!(!report.results.is_empty());
}

#[test]
fn a_disk_store_is_probed_for_its_limits() {
    let cluster = Cluster::start(ClusterSpec::backend("file"));
    let out = out_dir();
    bench(&cluster, &["mdtest", "-n", "10", "--out", arg(out.path())]).ok();
    let report = read_report(out.path());
    let limits = report.limits.as_ref().expect("limits measured");
    assert!(
        limits.store_write_mib_s.is_some_and(|w| w > 0.0)
            && limits.store_read_mib_s.is_some_and(|r| r > 0.0),
        "{limits:?}"
    );
}

/// Memory stores and a disk store in one cluster have no one store limit: the memory
/// stores' probes would swamp the disk's in the aggregate (a hostile-user run).
#[test]
fn a_cluster_of_mixed_stores_gets_no_store_limit_and_a_note_why() {
    let mut cluster = Cluster::start(ClusterSpec {
        servers: 2,
        ..Default::default()
    });
    cluster.kill(1);
    cluster.restart_with_env(1, &[("BENCHFS_STORAGE_BACKEND", "file")]);
    let out = out_dir();
    bench(&cluster, &["mdtest", "-n", "10", "--out", arg(out.path())]).ok();
    let report = read_report(out.path());
    let limits = report.limits.as_ref().expect("network limits measured");
    assert!(limits.network_mib_s > 0.0, "{limits:?}");
    assert_eq!(limits.store_write_mib_s, None, "{limits:?}");
    let notes = format!("{:?}", report.meta.cache_notes);
    assert!(
        notes.contains("no store limit: the servers' stores differ (file, memory)"),
        "{notes}"
    );
}

#[test]
fn a_reading_run_blames_a_stopped_server_not_a_missing_workspace() {
    // Found by a hostile-user run: with the server holding the workspace's record stopped,
    // a reading run said there was no workspace to read.
    let cluster = Cluster::start(ClusterSpec {
        servers: 2,
        ..ClusterSpec::short_timeout()
    });
    let run = |phases: &str, extra: &[&str]| -> Run {
        let out = out_dir();
        let mut args = vec!["ior", "--phases", phases, "-b", "1m", "-t", "256k"];
        args.extend([
            "--no-limits",
            "--workspace",
            "kept",
            "--out",
            arg(out.path()),
        ]);
        args.extend_from_slice(extra);
        bench(&cluster, &args)
    };
    run("write", &["--keep"]).ok();
    let owner = cluster.replicas_of(PlacementKey::Metadata("/kept"))[0];
    cluster.signal(owner, "STOP");
    let stderr = run("read", &[]).failed();
    cluster.signal(owner, "CONT");
    assert!(
        !stderr.contains("no workspace") && stderr.contains(&Cluster::node_id(owner)),
        "{stderr}"
    );
    run("read", &[]).ok();
}

/// Found by a hostile-user run: a run refused a workspace that was there (a directory of
/// the user's, another run's kept files) and then removed it as its own, and `.` or `..`
/// as the name reached the directory around the target's root.
#[test]
fn a_run_never_removes_a_directory_it_did_not_make() {
    let cluster = two_servers();
    let fs = cluster.client();
    fs.mkdir("/results", 0o755).unwrap();
    common::files::write_file(&fs, "/results/precious", b"precious");
    let run = |extra: &[&str]| {
        let out = out_dir();
        let mut args = vec!["ior", "-b", "1m", "-t", "256k", "--no-limits"];
        args.extend_from_slice(extra);
        args.extend(["--out", arg(out.path())]);
        bench(&cluster, &args)
    };
    let stderr = run(&["--workspace", "results"]).failed();
    assert!(
        stderr.contains("workspace results is already on benchfs"),
        "{stderr}"
    );
    assert_eq!(
        common::files::read_file(&fs, "/results/precious"),
        b"precious",
        "the failed run removed a directory it did not make: {stderr}"
    );
    // On a local directory, the same, and no name reaches outside the root.
    let around = tempfile::tempdir_in(common::test_root()).unwrap();
    let root = around.path().join("root");
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::write(root.join("data/important"), b"keep").unwrap();
    std::fs::create_dir(around.path().join("victim")).unwrap();
    std::fs::write(around.path().join("victim/v"), b"keep").unwrap();
    let stderr = run(&["--posix", arg(&root), "--workspace", "data"]).failed();
    assert!(stderr.contains("workspace data is already on"), "{stderr}");
    for name in [".", "..", "../victim", "a/b", ""] {
        let stderr = run(&["--posix", arg(&root), "--workspace", name]).failed();
        assert!(
            stderr.contains("is not a plain name"),
            "workspace {name:?}: {stderr}"
        );
    }
    assert_eq!(std::fs::read(root.join("data/important")).unwrap(), b"keep");
    assert_eq!(
        std::fs::read(around.path().join("victim/v")).unwrap(),
        b"keep"
    );
}

#[test]
fn a_failed_run_that_cannot_remove_its_workspace_says_so() {
    // Found by a hostile-user run: a run that failed with a server stopped left its files
    // in BenchFS without a word.
    let cluster = Cluster::start(ClusterSpec {
        servers: 2,
        ..ClusterSpec::short_timeout()
    });
    let owner = cluster.replicas_of(PlacementKey::Metadata("/left"))[0];
    let stopped = 1 - owner;
    cluster.signal(stopped, "STOP");
    let out = out_dir();
    let args = [
        "ior",
        "--phases",
        "write",
        "-b",
        "1m",
        "-t",
        "256k",
        "--no-limits",
        "--workspace",
        "left",
        "--out",
    ];
    let mut args = args.to_vec();
    args.push(arg(out.path()));
    let stderr = bench(&cluster, &args).failed();
    cluster.signal(stopped, "CONT");
    assert!(
        stderr.contains("workspace left on benchfs could not be removed")
            && stderr.contains(&Cluster::node_id(stopped)),
        "{stderr}"
    );
    assert!(
        cluster.client().stat("/left").is_ok(),
        "it was left: {stderr}"
    );
}
