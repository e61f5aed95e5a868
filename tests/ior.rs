//! IOR and mdtest with `-a BENCHFS`: IOR 4.0.0 is built from its public source tarball
//! with `scripts/build-ior.sh` against libbenchfs installed by `make install`, then run
//! under `mpirun -np 2` against a 4-server cluster. Any data-check error fails the test.
//! Without the tarball (or MPI) the test says loudly that it skipped.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::install::{installed_prefix, ROOT};
use common::{Cluster, ClusterSpec};

/// The IOR source: $BENCHFS_IOR_SOURCE, else the peers' tarball beside the project, or
/// beside the repository this one was cloned from (CI runs in a fresh clone).
fn ior_source() -> Option<PathBuf> {
    if let Some(source) = std::env::var_os("BENCHFS_IOR_SOURCE") {
        return Some(PathBuf::from(source));
    }
    let beside = |root: &Path| root.join("../shared/peers/ior-4.0.0.tar.gz");
    let origin = Command::new("git")
        .args(["-C", ROOT, "remote", "get-url", "origin"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    std::iter::once(beside(Path::new(ROOT)))
        .chain(origin.filter(|o| o.is_dir()).map(|o| beside(&o)))
        .find(|p| p.exists())
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// IOR built with the BENCHFS backend (once per run), or why the tests cannot have it.
fn ior_build() -> Result<&'static Path, &'static str> {
    static BUILT: OnceLock<Result<PathBuf, &'static str>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let source = ior_source()
                .ok_or("no IOR source: ../shared/peers/ior-4.0.0.tar.gz beside the project or its origin, or $BENCHFS_IOR_SOURCE")?;
            if !have("mpicc") || !have("mpirun") {
                return Err("no MPI (mpicc, mpirun): run scripts/install-deps.sh");
            }
            // The library IOR links is this tree's, installed anew each run even when
            // IOR itself is not rebuilt: an older one may speak an older wire version.
            installed_prefix();
            Ok(build_ior(&source))
        })
        .as_deref()
        .map_err(|e| *e)
}

/// Builds IOR with the BENCHFS backend into `target/tmp/ior`, again only when the backend
/// or the patch changed (libbenchfs is linked shared, so a new library needs no rebuild).
fn build_ior(source: &Path) -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ior");
    let inputs: String = [
        "contrib/ior/aiori-BENCHFS.c",
        "contrib/ior/ior-4.0.0-benchfs.patch",
    ]
    .iter()
    .map(|f| std::fs::read_to_string(Path::new(ROOT).join(f)).unwrap())
    .collect();
    let stamp = out.join("inputs.stamp");
    if out.join("bin/ior").is_file()
        && out.join("bin/mdtest").is_file()
        && std::fs::read_to_string(&stamp).is_ok_and(|s| s == inputs)
    {
        return out;
    }
    let result = Command::new(Path::new(ROOT).join("scripts/build-ior.sh"))
        .arg(source)
        .arg(&out)
        .env("BENCHFS_PREFIX", installed_prefix())
        .output()
        .expect("build-ior.sh runs");
    assert!(
        result.status.success(),
        "build-ior.sh failed:\n{}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    std::fs::write(&stamp, inputs).unwrap();
    out
}

/// Runs `program args` under `mpirun -np 2` and returns its output; fails the test on a
/// non-zero exit or on any sign of wrong data in the output.
fn mpirun(program: &Path, args: &[String]) -> String {
    let out = Command::new("timeout")
        .arg("600")
        .arg("mpirun")
        .args(["--oversubscribe", "-np", "2"])
        .arg(program)
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        // The installed library, not an older one in cargo's target directory.
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("mpirun runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let command = format!("mpirun -np 2 {} {}", program.display(), args.join(" "));
    assert!(
        out.status.success(),
        "{command} failed ({}):\n{text}",
        out.status
    );
    for bad in [
        "Incorrect data",
        "ERROR",
        "WARNING: read",
        "inconsistent file size",
        "not supported",
        "statfs",
    ] {
        assert!(!text.contains(bad), "{command} reported {bad:?}:\n{text}");
    }
    check_fs_size_lines(&command, &text);
    text
}

/// IOR's and mdtest's headers show the file system's size from the backend's statfs:
/// "FS: 21.3 GiB   Used FS: 0.1%   Inodes: 4096.0 Mi   Used Inodes: 0.0%" (IOR pads the
/// key). Each such line must give a size above zero and percentages that are numbers.
fn check_fs_size_lines(command: &str, text: &str) {
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("Used FS:")).collect();
    assert!(
        !lines.is_empty(),
        "{command} printed no file system size:\n{text}"
    );
    for line in lines {
        let size = line
            .split_once(':')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok());
        assert!(size.is_some_and(|s| s > 0.0), "{command}: {line:?}");
        for (_, rest) in line.match_indices("Used ").map(|(i, _)| line.split_at(i)) {
            let percent = rest
                .split_once(':')
                .and_then(|(_, v)| v.trim_start().split('%').next())
                .and_then(|n| n.parse::<f64>().ok());
            assert!(
                percent.is_some_and(|p| (0.0..=100.0).contains(&p)),
                "{command}: {line:?}"
            );
        }
    }
}

#[test]
fn ior_and_mdtest_run_on_benchfs_with_data_checks() {
    let ior_dir = match ior_build() {
        Ok(dir) => dir,
        Err(why) => return common::skip("IOR and mdtest with -a BENCHFS", why),
    };
    let cluster = Cluster::start(ClusterSpec::default());
    let registry = format!("--benchfs.registry={}", cluster.registry().display());
    run_ior(&ior_dir.join("bin/ior"), &registry);
    run_mdtest(&ior_dir.join("bin/mdtest"), &registry);

    // Everything IOR and mdtest made was removed again (-e/-r and IOR's own delete).
    let client = cluster.client();
    let left: Vec<String> = client
        .readdir("/")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .filter(|n| n.starts_with("ior-"))
        .collect();
    assert!(left.is_empty(), "IOR left files behind: {left:?}");
}

#[test]
fn ior_refuses_chunk_sizes_it_cannot_use_with_a_clear_error() {
    let ior_dir = match ior_build() {
        Ok(dir) => dir,
        Err(why) => return common::skip("IOR with bad chunk sizes", why),
    };
    let cluster = Cluster::start(ClusterSpec::default());
    let registry = format!("--benchfs.registry={}", cluster.registry().display());
    let servers: u64 = cluster.client().client().servers()[0].settings["chunk_size"]
        .parse()
        .unwrap();
    let above = (servers * 2).to_string();
    for (size, says) in [
        ("abc", "not a size"),
        ("-4096", "not a size"),
        ("128g", "a power of two from 4096"),
        (above.as_str(), "above the servers'"),
    ] {
        let option = format!("--benchfs.chunk_size={size}");
        let args = [
            "-a", "BENCHFS", &registry, &option, "-w", "-t", "4k", "-b", "8k",
        ];
        let out = Command::new("timeout")
            .args(["120", "mpirun", "--oversubscribe", "-np", "1"])
            .arg(ior_dir.join("bin/ior"))
            .args(args)
            .args(["-o", "/chunk-size"])
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            // The installed library, not an older one in cargo's target directory.
            .env_remove("LD_LIBRARY_PATH")
            .output()
            .expect("mpirun runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{option} ran:\n{text}");
        assert!(text.contains(says), "{option}: expected {says:?}:\n{text}");
    }
}

/// `registry` followed by `list`.
fn with_registry(registry: &str, list: &[&str]) -> Vec<String> {
    std::iter::once(registry.to_string())
        .chain(list.iter().map(|s| s.to_string()))
        .collect()
}

fn run_ior(ior: &Path, registry: &str) {
    // Write, then read back with data checks (-W, -R) and reordered readers (-C), so a
    // rank reads what the other wrote; file per process and one shared file, transfer
    // sizes 1 MiB and 47008 bytes (not a divisor of the 64 KiB chunk).
    for (name, transfer, block, shared) in [
        ("fpp-1m", "1m", "4m", false),
        ("shared-1m", "1m", "4m", true),
        ("fpp-47008", "47008", "470080", false),
        ("shared-47008", "47008", "470080", true),
    ] {
        let mut list = vec![
            "-a", "BENCHFS", "-w", "-r", "-W", "-R", "-C", "-e", "-s", "3", "-t", transfer, "-b",
            block,
        ];
        if !shared {
            list.push("-F");
        }
        let path = format!("/ior-{name}");
        list.extend(["-o", &path]);
        let out = mpirun(ior, &with_registry(registry, &list));
        assert!(
            out.lines().any(|l| l.starts_with("write "))
                && out.lines().any(|l| l.starts_with("read ")),
            "ior {name} printed no results:\n{out}"
        );
        common::note(&format!("ior {name}: ok"));
    }
}

fn run_mdtest(mdtest: &Path, registry: &str) {
    // mdtest: create, stat, read (verified, -X, and each write read back through its own
    // handle, --verify-write), remove; one shared directory and one per rank (-u).
    for (name, unique) in [("shared-dir", false), ("dir-per-rank", true)] {
        let dir = format!("/md-{name}");
        let mut list = vec![
            "-a",
            "BENCHFS",
            "-n",
            "50",
            "-F",
            "-C",
            "-T",
            "-E",
            "-r",
            "-w",
            "3901",
            "-e",
            "3901",
            "-X",
            "--verify-write",
            "-d",
            &dir,
        ];
        if unique {
            list.push("-u");
        }
        let out = mpirun(mdtest, &with_registry(registry, &list));
        for phase in ["File creation", "File stat", "File read", "File removal"] {
            assert!(
                out.contains(phase),
                "mdtest {name} printed no {phase:?}:\n{out}"
            );
        }
        common::note(&format!("mdtest {name}: ok"));
    }
}

/// The example Slurm job, run under mpirun with the environment Slurm would give it: it
/// starts 4 servers, waits for them, runs IOR and mdtest, stops the servers and collects
/// their logs and counters.
#[test]
fn slurm_example_job_runs_its_steps_under_mpirun() {
    let ior_dir = match ior_build() {
        Ok(dir) => dir,
        Err(why) => return common::skip("the example Slurm job", why),
    };
    let prefix = installed_prefix();
    let dir = tempfile::tempdir_in(common::test_root()).unwrap();
    let job_dir = dir.path().join("job");
    let data_dir = dir.path().join("data");
    let out = Command::new("timeout")
        .arg("600")
        .arg(Path::new(ROOT).join("examples/slurm/benchfs-ior.sbatch"))
        .env("SLURM_JOB_ID", format!("test{}", std::process::id()))
        .env("SLURM_JOB_NUM_NODES", "1")
        .env("SLURM_SUBMIT_DIR", dir.path())
        .env("LAUNCHER", "mpirun")
        .env("BENCHFS_PREFIX", prefix)
        .env("IOR_PREFIX", ior_dir)
        .env("SERVERS_PER_NODE", "4")
        .env("CLIENTS_PER_NODE", "2")
        .env("JOB_DIR", &job_dir)
        .env("DATA_DIR", &data_dir)
        .env("IOR_BLOCK", "8m")
        .env("IOR_HARD_SEGMENTS", "100")
        .env("MDTEST_FILES", "100")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        // The installed library, not an older one in cargo's target directory.
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("the job script runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the job failed ({}):\n{text}",
        out.status
    );
    for bad in ["Incorrect data", "ERROR", "unreachable"] {
        assert!(!text.contains(bad), "the job reported {bad:?}:\n{text}");
    }
    let read = |name: &str| std::fs::read_to_string(job_dir.join(name)).unwrap_or_default();
    assert!(read("ior-easy.txt").lines().any(|l| l.starts_with("read ")));
    assert!(read("ior-hard.txt")
        .lines()
        .any(|l| l.starts_with("write ")));
    assert!(read("mdtest.txt").contains("File removal"));
    assert_eq!(
        read("server-stats.txt").matches("-r").count(),
        4,
        "counters of 4 servers:\n{}",
        read("server-stats.txt")
    );
    let logs = std::fs::read_dir(job_dir.join("logs")).unwrap().count();
    assert_eq!(logs, 4, "one log per server");
    let published = benchfs::registry::read(&job_dir.join("registry")).unwrap();
    assert!(published.is_empty(), "stopped servers left {published:?}");
    assert!(!data_dir.exists(), "the job removes its node-local data");
    common::note("example Slurm job: ok");
}

/// Runs `benchfs ARGS --ior-bin BIN` against `cluster`, which must succeed, and returns
/// what it printed and its report.
fn bench_with_ior_bin(
    args: &[&str],
    bin: &Path,
    cluster: &Cluster,
) -> (String, benchfs_bench::report::Report) {
    let out = tempfile::tempdir_in(common::test_root()).unwrap();
    let utf8 = |p: &Path| p.to_str().expect("test paths are UTF-8").to_owned();
    let (bin, dir, out_dir) = (utf8(bin), utf8(cluster.dir.path()), utf8(out.path()));
    let all = [args, &["--ior-bin", &bin, "--dir", &dir, "--out", &out_dir]].concat();
    let stdout = common::cli::benchfs(&all, &[]).ok();
    let report =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap())
            .unwrap();
    (stdout, report)
}

/// The repetition and phase of each `ior-capi` result, in the report's order.
fn capi_runs(report: &benchfs_bench::report::Report) -> Vec<(u32, &str)> {
    report
        .results
        .iter()
        .filter(|r| r.target == "ior-capi")
        .map(|r| (r.rep, r.phase.as_str()))
        .collect()
}

/// `--ior-bin` with `--reps 2`: one IOR launch per repetition, each one's figures in the
/// report (a hostile-user run found a launch per phase, every one running both phases,
/// the second's figures thrown away, and `--reps` ignored).
#[test]
fn bench_runs_ior_once_per_repetition_and_reports_each() {
    let ior_dir = match ior_build() {
        Ok(dir) => dir,
        Err(why) => return common::skip("benchfs bench --ior-bin --reps", why),
    };
    let cluster = Cluster::start(ClusterSpec::default());
    let bin = tempfile::tempdir_in(common::test_root()).unwrap();
    let launches = bin.path().join("launches");
    let wrapper = format!(
        "#!/bin/sh\necho launch >> {}\nexec {} \"$@\"\n",
        launches.display(),
        ior_dir.join("bin/ior").display()
    );
    let ior = bin.path().join("ior");
    std::fs::write(&ior, wrapper).unwrap();
    std::fs::set_permissions(&ior, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let args = [
        "bench",
        "ior",
        "-t",
        "1m",
        "-b",
        "1m",
        "--clients",
        "1",
        "--reps",
        "2",
    ];
    let (_, report) = bench_with_ior_bin(&args, bin.path(), &cluster);
    let launched = std::fs::read_to_string(&launches).unwrap_or_default();
    assert_eq!(launched.lines().count(), 2, "IOR launches: {launched:?}");
    assert_eq!(
        capi_runs(&report),
        [
            (0, "ior-write"),
            (0, "ior-read"),
            (1, "ior-write"),
            (1, "ior-read"),
        ]
    );
    for s in report.summary.iter().filter(|s| s.target == "ior-capi") {
        assert_eq!(s.reps, 2, "{s:?}");
    }
}

/// `--ior-bin --reps 2` with an mdtest plan that keeps its files: each repetition's
/// creates make files of their own (a hostile-user run: the second launch met the first's
/// files, so its "creates" opened files that were there).
#[test]
fn bench_repeats_an_mdtest_that_keeps_its_files() {
    let ior_dir = match ior_build() {
        Ok(dir) => dir,
        Err(why) => return common::skip("benchfs bench mdtest --ior-bin --reps", why),
    };
    let cluster = Cluster::start(ClusterSpec::default());
    let args = [
        "bench",
        "mdtest",
        "-n",
        "8",
        "--phases",
        "create,stat",
        "--clients",
        "1",
        "--reps",
        "2",
    ];
    let (_, report) = bench_with_ior_bin(&args, &ior_dir.join("bin"), &cluster);
    assert_eq!(
        capi_runs(&report),
        [
            (0, "mdtest-write"),
            (0, "mdtest-stat"),
            (1, "mdtest-write"),
            (1, "mdtest-stat"),
        ]
    );
    // The native target removed its workspace; what is left is the two launches' files.
    fn files_under(fs: &benchfs::blocking::BenchFS, dir: &str) -> usize {
        let entries = fs.readdir(dir).unwrap();
        entries
            .iter()
            .map(|e| {
                let path = format!("{}/{}", dir.trim_end_matches('/'), e.name);
                if e.meta.is_dir() {
                    files_under(fs, &path)
                } else {
                    1
                }
            })
            .sum()
    }
    assert_eq!(files_under(&cluster.client(), "/"), 2 * 8);
}

/// `benchfs bench suite --ior-bin`: IOR and mdtest through the C API are one more target of
/// the report, their figures read from what they printed, beside the native client's.
#[test]
fn bench_reports_ior_and_mdtest_beside_the_native_client() {
    let ior_dir = match ior_build() {
        Ok(dir) => dir,
        Err(why) => return common::skip("benchfs bench --ior-bin", why),
    };
    let cluster = Cluster::start(ClusterSpec::default());
    let args = [
        &["bench", "suite"][..],
        &common::cli::TINY_IO500,
        &["--clients", "2"],
    ]
    .concat();
    let (stdout, report) = bench_with_ior_bin(&args, &ior_dir.join("bin"), &cluster);
    let capi: Vec<&benchfs_bench::phase::PhaseResult> = report
        .results
        .iter()
        .filter(|r| r.target == "ior-capi")
        .collect();
    let phases: Vec<&str> = capi.iter().map(|r| r.phase.as_str()).collect();
    assert_eq!(
        phases,
        [
            "ior-easy-write",
            "ior-easy-read",
            "ior-hard-write",
            "ior-hard-read",
            "mdtest-easy-write",
            "mdtest-easy-stat",
            "mdtest-easy-delete",
            "mdtest-hard-write",
            "mdtest-hard-stat",
            "mdtest-hard-read",
            "mdtest-hard-delete",
        ]
    );
    for r in &capi {
        assert!(r.value() > 0.0 && r.ranks == 2, "{r:?}");
    }
    assert_eq!(capi[0].bytes, 2 * (4 << 20));
    assert!(stdout.contains("ior-capi (mean ± sd)"), "{stdout}");
    let fs = cluster.client();
    assert!(
        fs.readdir("/").unwrap().is_empty(),
        "IOR, mdtest and the run removed what they made"
    );
}
