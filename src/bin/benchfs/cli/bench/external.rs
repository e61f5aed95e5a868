//! IOR and mdtest themselves as a target of a run: the same shapes, run by `mpirun` with
//! the BenchFS backend (`-a BENCHFS`, libbenchfs, the C API), their printed results read
//! back into the report beside the native client's. IOR and mdtest time themselves; their
//! figures carry no latency histograms.

use std::path::Path;
use std::process::Command;

use benchfs_bench::ior::IorSpec;
use benchfs_bench::limits::Limits;
use benchfs_bench::mdtest::{MdOp, MdSpec};
use benchfs_bench::phase::{Kind, PhaseResult};
use benchfs_bench::run::{self, Phase};

use crate::cli::CliError;

/// The label of IOR's and mdtest's results.
pub const LABEL: &str = "ior-capi";

/// How IOR and mdtest are launched: their ranks, and the client setting the C API takes
/// from the environment, the native target's own, so that the two columns of a report
/// (and of a sweep's point) move their bytes alike.
#[derive(Debug, Clone, Copy)]
pub struct Mpi {
    /// MPI ranks.
    pub clients: u32,
    /// Payloads above this many bytes go by rendezvous (`BENCHFS_RDMA_THRESH`).
    pub rdma_threshold: u64,
}

/// Runs every phase of `phases` with IOR or mdtest from `bin` (which holds both), as
/// `mpi.clients` MPI ranks against the servers in `registry`, in names under `workspace`,
/// `reps` times: one launch per IOR shape or mdtest tree and repetition, which runs all
/// of that shape's phases (IOR's write and read), as the native target repeats them. An
/// mdtest launch that creates makes a tree of its repetition's own: one without a remove
/// phase leaves its files, which the next repetition's creates would meet.
pub fn run(
    bin: &Path,
    phases: &[Phase],
    reps: u32,
    registry: &Path,
    mpi: Mpi,
    workspace: &str,
    limits: Option<&Limits>,
) -> Result<Vec<PhaseResult>, CliError> {
    let mut results = Vec::new();
    let mut done: Vec<&str> = Vec::new();
    for phase in phases {
        type Launch<'a> = Box<dyn Fn(u32) -> Result<Vec<PhaseResult>, CliError> + 'a>;
        let (name, launch): (&str, Launch) = match phase {
            Phase::IorWrite(s) | Phase::IorRead(s) => (
                &s.name,
                Box::new(move |_| ior(bin, s, phases, registry, mpi, workspace)),
            ),
            Phase::Md { spec, .. } => (
                &spec.name,
                Box::new(move |rep| mdtest(bin, spec, phases, rep, registry, mpi, workspace)),
            ),
            Phase::Find => continue,
        };
        // The launch for a shape's first phase ran its others too.
        if done.contains(&name) {
            continue;
        }
        done.push(name);
        for rep in 0..reps {
            results.extend(launch(rep)?.into_iter().map(|mut r| {
                r.rep = rep;
                r
            }));
        }
    }
    for r in &mut results {
        if let (Some(l), Some(p)) = (limits, phases.iter().find(|p| p.name() == r.phase)) {
            r.efficiency = run::efficiency(r, p, l);
        }
    }
    Ok(results)
}

fn mpirun(mpi: Mpi, program: &Path, args: &[String]) -> Result<String, CliError> {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe", "-np", &mpi.clients.to_string()])
        .args(["-x", "BENCHFS_RDMA_THRESH"])
        .env("BENCHFS_RDMA_THRESH", mpi.rdma_threshold.to_string())
        .arg(program)
        .args(args);
    let root =
        std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
    if root {
        // Open MPI refuses root unless told; a job run as root here means it.
        cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run mpirun {}: {e}", program.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let tail: Vec<&str> = stdout.lines().rev().take(15).collect();
        return Err(format!(
            "{} failed ({}): {}\n{}",
            program.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
        .into());
    }
    Ok(stdout)
}

fn result(phase: String, kind: Kind, ranks: u32, bytes: u64, ops: u64, rate: f64) -> PhaseResult {
    let mut r = PhaseResult::aggregate(LABEL, &phase, kind, 0, &[]);
    let per_s = match kind {
        Kind::Bandwidth => bytes as f64 / f64::from(1u32 << 20),
        Kind::Metadata => ops as f64,
    };
    r.ranks = ranks;
    r.bytes = bytes;
    r.ops = ops;
    r.elapsed_s = if rate > 0.0 { per_s / rate } else { 0.0 };
    r.mib_s = if kind == Kind::Bandwidth {
        rate
    } else {
        bytes as f64 / f64::from(1u32 << 20) / r.elapsed_s.max(1e-9)
    };
    r.ops_s = if kind == Kind::Metadata {
        rate
    } else {
        ops as f64 / r.elapsed_s.max(1e-9)
    };
    r
}

fn ior(
    bin: &Path,
    spec: &IorSpec,
    phases: &[Phase],
    registry: &Path,
    mpi: Mpi,
    workspace: &str,
) -> Result<Vec<PhaseResult>, CliError> {
    let mut args = vec![
        "-a".to_owned(),
        "BENCHFS".to_owned(),
        format!("--benchfs.registry={}", registry.display()),
        "-t".to_owned(),
        spec.transfer.to_string(),
        "-b".to_owned(),
        spec.block.to_string(),
        "-s".to_owned(),
        spec.segments.to_string(),
        "-o".to_owned(),
        format!("/{workspace}.{}", spec.name),
    ];
    for (on, flag) in [
        (spec.file_per_process, "-F"),
        (spec.random, "-z"),
        (spec.fsync, "-e"),
        (mpi.clients > 1, "-C"),
    ] {
        if on {
            args.push(flag.to_owned());
        }
    }
    let name = spec.name.clone();
    if phases
        .iter()
        .any(|p| matches!(p, Phase::IorWrite(s) if s.name == name))
    {
        args.push("-w".into());
    }
    if phases
        .iter()
        .any(|p| matches!(p, Phase::IorRead(s) if s.name == name))
    {
        args.push("-r".into());
    }
    let out = mpirun(mpi, &bin.join("ior"), &args)?;
    let bytes = spec.bytes_per_rank() * u64::from(mpi.clients);
    let ops = spec.transfers() * u64::from(mpi.clients);
    let mut results = Vec::new();
    // IOR's per-iteration rows: access bw(MiB/s) IOPS Latency(s) block(KiB) xfer(KiB)
    // open(s) wr/rd(s) close(s) total(s) iter.
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() == 11 && (f[0] == "write" || f[0] == "read") {
            let bw: f64 = f[1]
                .parse()
                .map_err(|_| format!("IOR printed an unreadable row: {line}"))?;
            results.push(result(
                format!("{name}-{}", f[0]),
                Kind::Bandwidth,
                mpi.clients,
                bytes,
                ops,
                bw,
            ));
        }
    }
    if results.is_empty() {
        return Err(format!("IOR printed no result rows:\n{out}").into());
    }
    Ok(results)
}

fn mdtest(
    bin: &Path,
    spec: &MdSpec,
    phases: &[Phase],
    rep: u32,
    registry: &Path,
    mpi: Mpi,
    workspace: &str,
) -> Result<Vec<PhaseResult>, CliError> {
    let ops_of: Vec<MdOp> = phases
        .iter()
        .filter_map(|p| match p {
            Phase::Md { spec: s, md } if s.name == spec.name => Some(*md),
            _ => None,
        })
        .collect();
    // The first repetition's tree is the one a later run on this workspace reads.
    let own_tree = (rep > 0 && ops_of.contains(&MdOp::Create)).then(|| format!(".rep{rep}"));
    let tree = format!("/{workspace}.{}{}", spec.name, own_tree.unwrap_or_default());
    let mut args = vec![
        "-a".to_owned(),
        "BENCHFS".to_owned(),
        format!("--benchfs.registry={}", registry.display()),
        "-F".to_owned(),
        "-n".to_owned(),
        spec.files_per_rank.to_string(),
        "-d".to_owned(),
        tree,
    ];
    if spec.unique_dir {
        args.push("-u".into());
    }
    if spec.write_bytes > 0 {
        args.extend([
            "-w".to_owned(),
            spec.write_bytes.to_string(),
            "-e".to_owned(),
            spec.write_bytes.to_string(),
        ]);
    }
    for (op, flag) in [
        (MdOp::Create, "-C"),
        (MdOp::Stat, "-T"),
        (MdOp::Read, "-E"),
        (MdOp::Remove, "-r"),
    ] {
        if ops_of.contains(&op) {
            args.push(flag.into());
        }
    }
    let out = mpirun(mpi, &bin.join("mdtest"), &args)?;
    let files = spec.files_per_rank * u64::from(mpi.clients);
    let mut results = Vec::new();
    for (label, op) in [
        ("File creation", MdOp::Create),
        ("File stat", MdOp::Stat),
        ("File read", MdOp::Read),
        ("File removal", MdOp::Remove),
    ] {
        if !ops_of.contains(&op) {
            continue;
        }
        let mean = mdtest_rate(&out, label)?;
        let bytes = if matches!(op, MdOp::Create | MdOp::Read) {
            files * spec.write_bytes
        } else {
            0
        };
        results.push(result(
            format!("{}-{}", spec.name, op.name()),
            Kind::Metadata,
            mpi.clients,
            bytes,
            files,
            mean,
        ));
    }
    Ok(results)
}

/// The mean rate of one row of mdtest's summary ("File creation  max min mean stddev").
fn mdtest_rate(out: &str, label: &str) -> Result<f64, CliError> {
    let summary = out.split("SUMMARY rate").nth(1).unwrap_or("");
    let line = summary
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .ok_or_else(|| format!("mdtest printed no {label} row:\n{out}"))?;
    let numbers: Vec<f64> = line.trim_start()[label.len()..]
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    Ok(*numbers
        .get(2)
        .ok_or_else(|| format!("mdtest printed an unreadable row: {line}"))?)
}
