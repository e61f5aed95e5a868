//! Running a plan: the cluster (the one given, or one started for the run), the client
//! processes (started here, or MPI ranks), the targets, and the report.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, SystemTime};

use benchfs_bench::io500;
use benchfs_bench::report::{self, Meta, Report};
use benchfs_bench::run::{self, Outcome, Phase, Plan, TargetKind, TargetSpec};
use benchfs_bench::storage::Storage;
use benchfs_bench::sync::{FileBarrier, Ranks};

use super::args::{Common, WorkerArgs};
use super::external;
use crate::cli::cluster::{self, ClusterCommand, DownArgs, Target, UpArgs};
use crate::cli::cluster::{DEFAULT_DIR, DOWN_TIMEOUT_SECS};
use crate::cli::{commit, local_error, CliError};

/// A swept point's cluster settings, by parameter name.
pub type Point = BTreeMap<String, String>;

/// What one plan measured, with the settings of the cluster it ran on.
pub struct Measured {
    /// The plan.
    pub plan: Plan,
    /// Rank 0's outcome.
    pub outcome: Outcome,
    /// The cluster's settings.
    pub config: BTreeMap<String, String>,
}

/// Runs `phases` as `common` says, prints the table and writes the report; under a
/// launcher, only rank 0 reports.
pub fn run(
    common: &Common,
    name: &str,
    phases: Vec<Phase>,
    point: &Point,
) -> Result<Option<Report>, CliError> {
    let load_before = report::load_average();
    let started = SystemTime::now();
    let Some(measured) = measure(common, phases, point)? else {
        return Ok(None);
    };
    let report = build_report(vec![measured], load_before, started);
    emit(common, name, &report)?;
    Ok(Some(report))
}

/// Prints the report and writes its directory.
pub fn emit(common: &Common, name: &str, report: &Report) -> Result<(), CliError> {
    let out = common
        .out
        .clone()
        .unwrap_or_else(|| super::default_out(name));
    outln!(
        "# benchfs bench {name}: {}",
        report
            .meta
            .config
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    outln!("# workload: {}", report.plan.workload());
    if let Some(l) = &report.limits {
        // A sweep measures them at every point; each result's own is in results.csv.
        let whose = match report.is_sweep() {
            true => "limits at the sweep's first point (each point's in results.csv)",
            false => "limits",
        };
        outln!(
            "{whose}: round trip p50 {:.1} µs, network {:.0} MiB/s ({} KiB pings, all ranks to all servers){}",
            l.rtt_p50_us,
            l.network_mib_s,
            l.network_payload >> 10,
            match (l.store_write_mib_s, l.store_read_mib_s) {
                (Some(w), Some(r)) => format!(", stores write {w:.0} MiB/s, read {r:.0} MiB/s"),
                _ => String::new(),
            }
        );
    }
    crate::cli::print_out(&report.table())?;
    for (target, note) in &report.meta.cache_notes {
        outln!("{target}: {note}");
    }
    for note in &report.meta.host_notes {
        outln!("host: {note}");
    }
    for note in report.server_notes() {
        outln!("servers: {note}");
    }
    for s in &report.io500 {
        outln!(
            "IO500 {}: score {:.3} = sqrt(bandwidth {:.3} GiB/s × metadata {:.3} kIOPS); {}",
            s.target,
            s.score,
            s.bandwidth_gib_s,
            s.metadata_kiops,
            s.note
        );
    }
    let plots = report.write(&out)?;
    outln!(
        "report: {} ({} plots)",
        out.join("index.html").display(),
        plots.len()
    );
    Ok(())
}

/// The report of one or more measured plans.
pub fn build_report(measured: Vec<Measured>, load_before: [f64; 3], started: SystemTime) -> Report {
    let (host, kernel, cores, memory_gib) = report::host_facts();
    let mut results = Vec::new();
    let mut servers = Vec::new();
    let mut cache_notes = BTreeMap::new();
    let mut limits = None;
    // A setting that came out differently at different points (a sweep's rdma_threshold
    // follows its chunk size) is named with each result, and as "varies" in the header.
    let first = &measured[0].config;
    let varying: Vec<&String> = first
        .keys()
        .filter(|key| {
            measured
                .iter()
                .any(|m| m.config.get(*key) != first.get(*key))
        })
        .collect();
    let mut config = first.clone();
    for key in &varying {
        config.insert((*key).clone(), "varies".into());
    }
    for m in &measured {
        results.extend(m.outcome.results.iter().cloned().map(|mut result| {
            for key in &varying {
                if let Some(value) = m.config.get(*key) {
                    result.point.entry((*key).clone()).or_insert(value.clone());
                }
            }
            result
        }));
        servers.extend(m.outcome.servers.iter().cloned());
        cache_notes.extend(m.outcome.notes.clone());
        if limits.is_none() {
            limits.clone_from(&m.outcome.limits);
        }
    }
    let targets: Vec<String> = measured[0]
        .plan
        .targets
        .iter()
        .map(|t| t.label.clone())
        .collect();
    let io500 = targets
        .iter()
        .filter_map(|t| io500::score(t, &results))
        .collect();
    Report {
        meta: Meta {
            command: std::env::args().collect(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            commit: commit().to_owned(),
            date_utc: report::rfc3339(started),
            host,
            kernel,
            cores,
            memory_gib,
            load_before,
            load_after: report::load_average(),
            config,
            cache_notes,
            host_notes: report::host_notes(Path::new(report::VIRTIO_DEVICES_DIR)),
        },
        plan: measured[0].plan.clone(),
        limits,
        summary: report::summarize(&results),
        results,
        servers,
        io500,
    }
}

/// Measures `phases`: the whole run on rank 0 (`Some`), this rank's part under a launcher
/// (`None` on the other ranks).
pub fn measure(
    common: &Common,
    phases: Vec<Phase>,
    point: &Point,
) -> Result<Option<Measured>, CliError> {
    check_local_dirs(common)?;
    check_ior_bin(common, &phases)?;
    if let Some(ranks) = Ranks::from_env()?.filter(|r| r.size > 1) {
        return measure_launched(common, phases, ranks);
    }
    let mut plan = super::plan(common, phases, fresh_name("benchfs-bench"));
    plan.validate_workload()?;
    let cluster = match (&common.dir, &common.registry) {
        (None, None) if common.posix.is_none() => Some(OwnCluster::start(common, point)?),
        _ => None,
    };
    let target = cluster
        .as_ref()
        .map_or_else(|| target_of(common), |c| c.target.clone());
    let config = settings(common, &target, &mut plan)?;
    plan.targets = targets(common, &target);
    let run_dir = match &common.run_dir {
        Some(d) => d.join(&plan.workspace),
        None => std::env::temp_dir().join(fresh_name("benchfs-bench-run")),
    };
    let clients = common.clients.max(1);
    let outcome = run_local(&plan, &run_dir, clients).and_then(|mut outcome| {
        if let (Some(bin), None) = (&common.ior_bin, &common.posix) {
            let client = target.config()?;
            let mpi = external::Mpi {
                clients,
                rdma_threshold: client.network.rendezvous_threshold_bytes,
            };
            let ran = external::run(
                bin,
                &plan.phases,
                plan.reps,
                &client.network.registry_dir,
                mpi,
                &plan.workspace,
                outcome.limits.as_ref(),
            )?;
            outcome.results.extend(ran);
        }
        Ok(outcome)
    });
    let _ = std::fs::remove_dir_all(&run_dir);
    let stopped = cluster.map_or(Ok(()), OwnCluster::stop);
    let mut outcome = outcome?;
    stopped?;
    for r in &mut outcome.results {
        r.point.clone_from(point);
    }
    for s in &mut outcome.servers {
        s.point.clone_from(point);
    }
    Ok(Some(Measured {
        plan,
        outcome,
        config,
    }))
}

/// Under mpirun or srun: every rank runs this; they meet in a run directory shared by all
/// hosts (named after the job), and rank 0 reports.
fn measure_launched(
    common: &Common,
    phases: Vec<Phase>,
    ranks: Ranks,
) -> Result<Option<Measured>, CliError> {
    if common.dir.is_none() && common.registry.is_none() && common.posix.is_none() {
        return Err("under mpirun or srun, give the cluster with --registry or --dir (the ranks do not start one)".into());
    }
    let job = job_id()
        .ok_or("cannot tell this job's id from the launcher's environment; give --run-dir")?;
    let target = target_of(common);
    let mut plan = super::plan(common, phases, format!("benchfs-bench-{job}"));
    let config = settings(common, &target, &mut plan)?;
    plan.targets = targets(common, &target);
    let run_dir = match (&common.run_dir, &common.registry) {
        (Some(d), _) => d.join(&plan.workspace),
        (None, Some(r)) => r.join("bench-runs").join(&plan.workspace),
        (None, None) => common
            .dir
            .clone()
            .unwrap_or_default()
            .join("bench-runs")
            .join(&plan.workspace),
    };
    let outcome = run::execute(&plan, ranks, &run_dir, &connect)?;
    if ranks.rank != 0 {
        return Ok(None);
    }
    Ok(Some(Measured {
        plan,
        outcome,
        config,
    }))
}

/// The job's id from the launcher, the same on every rank.
fn job_id() -> Option<String> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let Some(job) = var("SLURM_JOB_ID") {
        return Some(format!(
            "{job}.{}",
            var("SLURM_STEP_ID").unwrap_or_default()
        ));
    }
    [
        "PMIX_NAMESPACE",
        "OMPI_MCA_orte_ess_jobid",
        "OMPI_MCA_ess_base_jobid",
        "PBS_JOBID",
    ]
    .iter()
    .find_map(|k| var(k))
    .map(|v| {
        v.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    })
}

/// A name no earlier run took: the process and the time.
fn fresh_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}-{}-{:x}", std::process::id(), nanos & 0xffff_ffff)
}

fn target_of(common: &Common) -> Target {
    Target {
        dir: common
            .dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR)),
        secret_file: common.secret_file.clone(),
        registry: common.registry.clone(),
    }
}

/// The targets of the plan: the native cluster (or --posix), then --baseline.
fn targets(common: &Common, target: &Target) -> Vec<TargetSpec> {
    let main = match &common.posix {
        Some(dir) => TargetSpec {
            label: "posix".into(),
            kind: TargetKind::Posix { dir: dir.clone() },
        },
        None => TargetSpec {
            label: "benchfs".into(),
            kind: TargetKind::Native {
                cluster: target.registry.is_none().then(|| target.dir.clone()),
                registry: target.registry.clone(),
                secret_file: target.secret_file.clone(),
            },
        },
    };
    let baseline = common.baseline.as_ref().map(|dir| TargetSpec {
        label: common.baseline_label.clone(),
        kind: TargetKind::Posix { dir: dir.clone() },
    });
    std::iter::once(main).chain(baseline).collect()
}

/// The setting a report names the rendezvous threshold by, as servers publish it.
const RDMA_THRESHOLD: &str = "rdma_threshold";

/// The cluster's settings for the report; the network probe's payload fits its chunks.
fn settings(
    common: &Common,
    target: &Target,
    plan: &mut Plan,
) -> Result<BTreeMap<String, String>, CliError> {
    let mut out = BTreeMap::new();
    out.insert("clients".into(), common.clients.max(1).to_string());
    if common.posix.is_some() {
        plan.limits = false;
        return Ok(out);
    }
    let config = target.config()?;
    plan.network_payload = config.storage.chunk_size_bytes.min(1 << 20);
    let settings = [
        ("backend", config.storage.backend.to_string()),
        ("chunk_size", config.storage.chunk_size_bytes.to_string()),
        (
            RDMA_THRESHOLD,
            config.network.rendezvous_threshold_bytes.to_string(),
        ),
        ("replicas", config.replication.replicas.to_string()),
        ("inline_bytes", config.storage.inline_bytes.to_string()),
        // The client windows: a run with them off is the baseline of one with them on.
        (
            "write_behind_bytes",
            config.client.write_behind_bytes.to_string(),
        ),
        (
            "read_ahead_bytes",
            config.client.read_ahead_bytes.to_string(),
        ),
    ];
    for (key, value) in settings {
        out.insert(key.into(), value);
    }
    let servers = benchfs::blocking::FsClient::published_servers(&config.network.registry_dir)
        .unwrap_or_default();
    // The servers' own settings, as they publish them, over this client's configuration
    // (which, given only the registry, is not the cluster's).
    let published_keys = [
        "backend",
        "chunk_size",
        RDMA_THRESHOLD,
        "inline_bytes",
        "huge_pages",
    ];
    for key in published_keys {
        if let Some(value) = published(&servers, key, |e| e.settings.get(key).cloned()) {
            out.insert(key.into(), value);
        }
    }
    // Requests go by rendezvous past the client's threshold, replies past the servers':
    // a client that differs says so.
    let client_threshold = config.network.rendezvous_threshold_bytes.to_string();
    if out.get(RDMA_THRESHOLD) != Some(&client_threshold) {
        out.insert(format!("client_{RDMA_THRESHOLD}"), client_threshold);
    }
    if let Some(value) = published(&servers, "replicas", |e| e.replicas.map(|n| n.to_string())) {
        out.insert("replicas".into(), value);
    }
    out.insert("servers".into(), servers.len().to_string());
    Ok(out)
}

/// What the servers publish for `key`: the value if every server that says agrees, else
/// each value with the servers that gave it.
fn published(
    servers: &[benchfs::config::registry::ServerEntry],
    key: &str,
    value_of: impl Fn(&benchfs::config::registry::ServerEntry) -> Option<String>,
) -> Option<String> {
    let mut said: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for server in servers {
        if let Some(value) = value_of(server) {
            said.entry(value).or_default().push(&server.node_id);
        }
    }
    match said.len() {
        0 => None,
        1 => said.into_keys().next(),
        _ => {
            tracing::warn!(key, ?said, "the servers publish different settings");
            Some(
                said.iter()
                    .map(|(value, nodes)| format!("{value} ({})", nodes.join(" ")))
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        }
    }
}

/// Opens a plan's target for this rank.
pub fn connect(spec: &TargetSpec) -> benchfs_bench::Result<Storage> {
    match &spec.kind {
        TargetKind::Posix { dir } => Ok(Storage::Posix(dir.clone())),
        TargetKind::Native {
            cluster,
            registry,
            secret_file,
        } => {
            let target = Target {
                dir: cluster
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR)),
                secret_file: secret_file.clone(),
                registry: registry.clone(),
            };
            let opened = target.config().and_then(|mut config| {
                // Every operation reaches the servers: the figures are the file system's,
                // not the client's caches'.
                config.cache.metadata_cache_entries = 0;
                config.cache.chunk_cache_mb = 0;
                target.connect_with(&config)
            });
            opened
                .map(|fs| Storage::Native(Box::new(fs)))
                .map_err(|e| e.to_string().into())
        }
    }
}

/// Rank 0 here and ranks 1.. as child processes of this one.
fn run_local(plan: &Plan, run_dir: &Path, clients: u32) -> Result<Outcome, CliError> {
    std::fs::create_dir_all(run_dir).map_err(|e| local_error("cannot create", run_dir, e))?;
    let plan_path = run_dir.join("plan.json");
    std::fs::write(&plan_path, serde_json::to_vec(plan)?)
        .map_err(|e| local_error("cannot write", &plan_path, e))?;
    let mut children = Vec::new();
    for rank in 1..clients {
        if run::interrupted() {
            let why = "interrupted while the client processes started";
            abort(run_dir, clients, why);
            reap(children, run_dir, clients);
            return Err(why.into());
        }
        let spawned = Command::new(std::env::current_exe()?)
            .args(["bench", "worker", "--plan"])
            .arg(&plan_path)
            .arg("--run-dir")
            .arg(run_dir)
            .args(["--rank", &rank.to_string(), "--size", &clients.to_string()])
            // A group of its own: a terminal's Ctrl-C reaches rank 0 alone, which passes it
            // on once (a second one would stop a rank at once, leaving its files).
            .process_group(0)
            .spawn();
        match spawned {
            Ok(child) => children.push((rank, child)),
            Err(e) => {
                abort(run_dir, clients, &format!("cannot start rank {rank}: {e}"));
                reap(children, run_dir, clients);
                return Err(format!("cannot start a client process: {e}").into());
            }
        }
    }
    let watcher = watch(children, run_dir.to_path_buf(), clients);
    let ranks = Ranks {
        rank: 0,
        size: clients,
    };
    let outcome = run::execute(plan, ranks, run_dir, &connect);
    let failed = watcher
        .join()
        .unwrap_or_else(|_| vec!["the watcher of the client processes failed".into()]);
    let outcome = outcome?;
    if let Some(first) = failed.first() {
        return Err(first.clone().into());
    }
    Ok(outcome)
}

fn abort(run_dir: &Path, clients: u32, reason: &str) {
    if let Ok(b) = FileBarrier::new(
        run_dir,
        Ranks {
            rank: 0,
            size: clients.max(1),
        },
        Duration::ZERO,
    ) {
        b.abort(reason);
    }
}

/// Waits for the client processes; passes an interrupt of this process on to them (a
/// `kill -INT` of rank 0 alone, not the terminal's, which reaches them all).
fn reap(mut children: Vec<(u32, Child)>, run_dir: &Path, clients: u32) -> Vec<String> {
    let mut failed = Vec::new();
    let mut passed_on = false;
    while !children.is_empty() {
        if !passed_on && run::interrupted() {
            passed_on = true;
            for (_, child) in &children {
                super::super::cluster::signal(child.id(), nix::sys::signal::Signal::SIGINT);
            }
        }
        let mut i = 0;
        while i < children.len() {
            let rank = children[i].0;
            match children[i].1.try_wait() {
                Ok(None) => {
                    i += 1;
                    continue;
                }
                Ok(Some(status)) if status.success() => {}
                Ok(Some(status)) => {
                    let reason = format!("client process of rank {rank} failed ({status})");
                    abort(run_dir, clients, &reason);
                    failed.push(reason);
                }
                Err(e) => failed.push(format!("cannot wait for rank {rank}: {e}")),
            }
            children.swap_remove(i);
        }
        if !children.is_empty() {
            std::thread::sleep(REAP_POLL);
        }
    }
    failed
}

/// How often the client processes are checked for an exit or an interrupt to pass on.
const REAP_POLL: Duration = Duration::from_millis(20);

/// Waits for the client processes in a thread; one that fails stops the others.
fn watch(
    children: Vec<(u32, Child)>,
    run_dir: PathBuf,
    clients: u32,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || reap(children, &run_dir, clients))
}

/// `benchfs bench worker`: one rank of a run that `benchfs bench` started.
pub fn worker(args: &WorkerArgs) -> Result<(), CliError> {
    let bytes = std::fs::read(&args.plan).map_err(|e| local_error("cannot read", &args.plan, e))?;
    let plan: Plan = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not a plan: {e}", args.plan.display()))?;
    let ranks = Ranks {
        rank: args.rank,
        size: args.size,
    };
    if ranks.rank == 0 || ranks.rank >= ranks.size {
        return Err(format!(
            "worker rank {} of {}: workers are ranks 1 and up",
            args.rank, args.size
        )
        .into());
    }
    run::execute(&plan, ranks, &args.run_dir, &connect)?;
    Ok(())
}

/// A cluster started for one run, in a directory of its own, stopped and removed after.
struct OwnCluster {
    target: Target,
    dir: PathBuf,
}

/// The settings of the cluster a run starts for `point`, in `target`.
pub fn up_args(common: &Common, point: &Point, target: Target) -> Result<UpArgs, CliError> {
    let mut up = UpArgs::new(target, common.servers, &common.backend);
    up.chunk_size = common.chunk_size;
    up.rdma_threshold = common.rdma_threshold;
    up.replicas = common.replicas;
    super::sweep::apply(point, &mut up)?;
    Ok(up)
}

impl OwnCluster {
    fn start(common: &Common, point: &Point) -> Result<OwnCluster, CliError> {
        let dir = std::env::temp_dir().join(fresh_name("benchfs-bench-cluster"));
        std::fs::create_dir(&dir).map_err(|e| local_error("cannot create", &dir, e))?;
        let target = Target {
            dir: dir.clone(),
            secret_file: common.secret_file.clone(),
            registry: None,
        };
        let up = up_args(common, point, target.clone())?;
        let own = OwnCluster { target, dir };
        match cluster::run(ClusterCommand::Up(up)) {
            Ok(()) => Ok(own),
            Err(e) => {
                let _ = own.stop();
                Err(e)
            }
        }
    }

    fn stop(self) -> Result<(), CliError> {
        let down = cluster::run(ClusterCommand::Down(DownArgs {
            timeout: DOWN_TIMEOUT_SECS,
            target: self.target.clone(),
        }));
        // Made by this run, with nothing but this run's cluster in it.
        let _ = std::fs::remove_dir_all(&self.dir);
        down
    }
}

/// Refuses --ior-bin with what IOR and mdtest are not asked to do (a time limit, checking
/// the bytes read): their column would stand beside this run's, with a ratio, measured
/// under other rules.
fn check_ior_bin(common: &Common, phases: &[Phase]) -> Result<(), CliError> {
    if common.ior_bin.is_none() {
        return Ok(());
    }
    let verify = phases.iter().any(|p| match p {
        Phase::IorWrite(s) | Phase::IorRead(s) => s.verify,
        Phase::Md { spec, .. } => spec.verify,
        Phase::Find => false,
    });
    let unmatched = match (common.stonewall.is_some(), verify) {
        (false, false) => return Ok(()),
        (true, false) => "--stonewall",
        (false, true) => "--verify",
        (true, true) => "--stonewall and --verify",
    };
    Err(format!(
        "--ior-bin runs IOR and mdtest without {unmatched}, so the two columns would not measure the same: drop one or the other"
    )
    .into())
}

/// Checks that the local directories the run works in (--posix, --baseline) exist: the
/// run makes its own subdirectory in each, and a mistyped mount point made anew would
/// have the local disk measured under the mount's name.
fn check_local_dirs(common: &Common) -> Result<(), CliError> {
    let dirs = [("--posix", &common.posix), ("--baseline", &common.baseline)];
    for (flag, dir) in dirs {
        let Some(dir) = dir else { continue };
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(format!("{flag} {}: not a directory", dir.display()).into()),
            Err(e) => {
                return Err(format!(
                    "{flag} {}: {e} (give an existing directory: a mount point, or one on the disk to compare)",
                    dir.display()
                )
                .into())
            }
        }
    }
    Ok(())
}
