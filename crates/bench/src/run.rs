//! The plan of a run and its execution by every rank: phases in order, each between two
//! barriers, each rank's share left as a file for rank 0, which aggregates it, reads the
//! servers' counters, and builds the results.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use benchfs_client::blocking::BenchFS;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::error::{io_error, BenchError, Result};
use crate::ior::{self, IorSpec};
use crate::limits::{self, Limits};
use crate::mdtest::{self, MdOp, MdSpec};
use crate::phase::{Efficiency, Kind, PhaseResult, RankPhase};
use crate::report::{ServerCounters, ServerSnapshot};
use crate::storage::Storage;
use crate::sync::{FileBarrier, Ranks};

/// One timed phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Phase {
    /// Every rank writes its share of an IOR-like workload.
    IorWrite(IorSpec),
    /// Every rank reads back what it wrote.
    IorRead(IorSpec),
    /// One mdtest-like operation over every rank's files.
    Md {
        /// The workload.
        spec: MdSpec,
        /// The operation.
        md: MdOp,
    },
    /// Rank 0 walks the whole workspace, stating every file (IO500's find, by one
    /// process, whose size test needs each file's attributes): its rate is files examined
    /// per second. It moves no data, so its bytes are 0.
    Find,
}

impl Phase {
    /// Its name in results ("ior-easy-write", "mdtest-hard-stat", "find").
    pub fn name(&self) -> String {
        match self {
            Phase::IorWrite(s) => format!("{}-write", s.name),
            Phase::IorRead(s) => format!("{}-read", s.name),
            Phase::Md { spec, md } => format!("{}-{}", spec.name, md.name()),
            Phase::Find => "find".into(),
        }
    }

    /// Bandwidth or metadata.
    pub fn kind(&self) -> Kind {
        match self {
            Phase::IorWrite(_) | Phase::IorRead(_) => Kind::Bandwidth,
            Phase::Md { .. } | Phase::Find => Kind::Metadata,
        }
    }

    /// Whether it changes the workspace.
    pub fn writes(&self) -> bool {
        matches!(
            self,
            Phase::IorWrite(_)
                | Phase::Md {
                    md: MdOp::Create | MdOp::Remove,
                    ..
                }
        )
    }

    fn validate(&self) -> Result<()> {
        match self {
            Phase::IorWrite(s) | Phase::IorRead(s) => s.validate(),
            Phase::Md { spec, .. } => spec.validate(),
            Phase::Find => Ok(()),
        }
    }
}

/// What a run measures on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TargetKind {
    /// The native client of a cluster, found as the command line finds it.
    Native {
        /// `benchfs cluster` directory.
        cluster: Option<PathBuf>,
        /// Registry directory.
        registry: Option<PathBuf>,
        /// Job secret file.
        secret_file: Option<PathBuf>,
    },
    /// A directory: a FUSE mount, or a local file system as the baseline.
    Posix {
        /// The directory; the run works in a new subdirectory of it.
        dir: PathBuf,
    },
}

/// A target with the label its results carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetSpec {
    /// "benchfs", "local", "fuse", ...
    pub label: String,
    /// Where.
    pub kind: TargetKind,
}

/// Everything every rank needs to run its part; rank 0 writes it, the others read it (or
/// derive the same plan from the same command line under a launcher).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Phases, in order, per repetition.
    pub phases: Vec<Phase>,
    /// Targets, one after the other.
    pub targets: Vec<TargetSpec>,
    /// Repetitions of the phase list.
    pub reps: u32,
    /// Time limit of each write or create phase (stonewalling); reads read what was written.
    pub stonewall_secs: Option<f64>,
    /// Seed of random orders and verify patterns.
    pub seed: u64,
    /// Leave the files in place.
    pub keep: bool,
    /// Measure the transport and store limits on native targets.
    pub limits: bool,
    /// Payload of the network probe (at most the cluster's chunk size).
    pub network_payload: u64,
    /// Name of the directory each target's run works in (under its root): a fresh one,
    /// made by the run, unless `reuse`.
    pub workspace: String,
    /// The workspace is an earlier run's, kept with `keep`: a read-only plan reads it
    /// and leaves it as it is.
    pub reuse: bool,
    /// How long a rank waits at a barrier for the others.
    pub barrier_timeout_secs: u64,
}

impl Plan {
    /// The workloads its phases run, each once, and the repetitions, in a line: what
    /// the command line chose and the defaults it left.
    pub fn workload(&self) -> String {
        let mut shapes: Vec<String> = Vec::new();
        for phase in &self.phases {
            let shape = match phase {
                Phase::IorWrite(spec) | Phase::IorRead(spec) => spec.describe(),
                Phase::Md { spec, .. } => spec.describe(),
                Phase::Find => continue,
            };
            if !shapes.contains(&shape) {
                shapes.push(shape);
            }
        }
        shapes.push(format!("reps={}", self.reps));
        shapes.join("; ")
    }

    /// Checks every phase's shape and the targets.
    pub fn validate(&self) -> Result<()> {
        if self.targets.is_empty() {
            return Err("a run needs at least one target".into());
        }
        self.validate_workload()
    }

    /// Checks what [`Plan::validate`] does but the targets, which a caller may know only
    /// once the cluster it starts for them is up: a bad shape is refused before that.
    pub fn validate_workload(&self) -> Result<()> {
        check_workspace_name(&self.workspace)?;
        if self.phases.is_empty() || self.reps == 0 {
            return Err("a run needs at least one phase and one repetition".into());
        }
        if self.reuse && self.phases.iter().any(Phase::writes) {
            return Err(
                "a run on an earlier run's workspace only reads: no write, create or remove phase"
                    .into(),
            );
        }
        if self
            .stonewall_secs
            .is_some_and(|s| !(s > 0.0 && s.is_finite()))
        {
            return Err("the time limit must be a positive number of seconds".into());
        }
        self.check_phase_order()?;
        self.phases.iter().try_for_each(Phase::validate)
    }

    /// Refuses a phase named twice (a repetition is `reps`, and the report would take the
    /// two as one), and, in a fresh workspace, a phase that reads files no phase before it
    /// made or that one before it removed.
    fn check_phase_order(&self) -> Result<()> {
        // Per workload: whether its files are there at this point of the list.
        let mut present: BTreeMap<String, bool> = BTreeMap::new();
        for (at, phase) in self.phases.iter().enumerate() {
            let name = phase.name();
            if self.phases[..at].iter().any(|p| p.name() == name) {
                return Err(format!(
                    "phase {name} is listed twice: repeat the phase list with the repetitions setting instead"
                )
                .into());
            }
            let (workload, makes) = match phase {
                Phase::IorWrite(s) => (&s.name, Some(true)),
                Phase::IorRead(s) => (&s.name, None),
                Phase::Md { spec, md } => match md {
                    MdOp::Create => (&spec.name, Some(true)),
                    MdOp::Remove => (&spec.name, Some(false)),
                    MdOp::Stat | MdOp::Read => (&spec.name, None),
                },
                Phase::Find => continue,
            };
            let there = self.reuse || present.get(workload).copied().unwrap_or(false);
            if !there && makes != Some(true) {
                let why = match present.contains_key(workload) {
                    true => "a phase before it removed them",
                    false => "no phase before it makes them in this run's fresh workspace",
                };
                return Err(format!(
                    "phase {name} needs the files of {workload}, but {why}: list the phase that writes them first, or read an earlier run's files (kept with --keep) with --workspace NAME"
                )
                .into());
            }
            if let Some(makes) = makes {
                present.insert(workload.clone(), makes);
            }
        }
        Ok(())
    }

    fn ior_specs(&self) -> Vec<&IorSpec> {
        let mut seen = BTreeSet::new();
        self.phases
            .iter()
            .filter_map(|p| match p {
                Phase::IorWrite(s) | Phase::IorRead(s) => Some(s),
                _ => None,
            })
            .filter(|s| seen.insert(s.name.clone()))
            .collect()
    }

    fn md_specs(&self) -> Vec<&MdSpec> {
        let mut seen = BTreeSet::new();
        self.phases
            .iter()
            .filter_map(|p| match p {
                Phase::Md { spec, .. } => Some(spec),
                _ => None,
            })
            .filter(|s| seen.insert(s.name.clone()))
            .collect()
    }
}

/// What rank 0 has at the end of a run.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Every phase of every repetition on every target.
    pub results: Vec<PhaseResult>,
    /// The limits of the native target, when measured.
    pub limits: Option<Limits>,
    /// Server counters after each phase on the native target.
    pub servers: Vec<ServerSnapshot>,
    /// How each target's reads avoided client caches.
    pub notes: BTreeMap<String, String>,
}

/// A rank's view while it runs a phase.
pub struct RankCtx<'a> {
    /// The target.
    pub storage: &'a Storage,
    /// Its label, for errors.
    pub label: String,
    /// Which rank of how many.
    pub ranks: Ranks,
    /// The workspace, relative to the target's root.
    pub work: String,
    /// The plan's seed.
    pub seed: u64,
    /// The workspace is an earlier run's, whose seed may not be this one's.
    pub reused: bool,
    deadline: Option<Instant>,
    bar: Option<ProgressBar>,
}

impl RankCtx<'_> {
    /// Whether the phase's time limit has passed.
    pub fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Counts `n` units done on the progress bar (rank 0, on a terminal), and fails once
    /// the run was interrupted ([`interrupt`]), so that it stops between two operations
    /// and removes what it made.
    pub fn progress(&self, n: u64) -> Result<()> {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
        check_interrupted()
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Stops the run in this process at its next operation or barrier, as a failure: its
/// workspace is removed and the other ranks are told to stop. One atomic store, so a
/// signal handler may call it (`benchfs bench` does on SIGINT and SIGTERM).
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Whether [`interrupt`] was called.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Fails if the run was interrupted.
pub(crate) fn check_interrupted() -> Result<()> {
    if interrupted() {
        return Err("interrupted".into());
    }
    Ok(())
}

/// Opens a target for a rank: the command line's way of connecting.
pub type Connect<'a> = dyn Fn(&TargetSpec) -> Result<Storage> + 'a;

/// Runs the plan as rank `ranks.rank`, meeting the other ranks at barriers in `run_dir`.
/// Rank 0 returns the outcome; the others return an empty one. On failure, the other ranks
/// are told to stop, and what this run created on the target is removed.
pub fn execute(
    plan: &Plan,
    ranks: Ranks,
    run_dir: &Path,
    connect: &Connect<'_>,
) -> Result<Outcome> {
    plan.validate()?;
    let timeout = Duration::from_secs(plan.barrier_timeout_secs);
    let mut barrier = FileBarrier::new(run_dir, ranks, timeout)?;
    let mut outcome = Outcome::default();
    let mut result = Ok(());
    for target in &plan.targets {
        result = connect(target).and_then(|storage| {
            let mut runner = Runner::new(plan, target, &storage, ranks, &mut barrier);
            let mut r = runner.run(&mut outcome);
            if let Err(e) = &mut r {
                if ranks.rank == 0 && !plan.keep {
                    // The other ranks stop first, so that nothing writes behind the removal.
                    runner.barrier.abort(&e.0);
                    runner.barrier.wait_until_others_left(LEAVE_WAIT_MAX);
                    if let Err(left) = runner.remove_workspace() {
                        e.0 = format!(
                            "{}; its workspace {} on {} could not be removed ({left})",
                            e.0, plan.workspace, target.label
                        );
                    }
                }
            }
            r
        });
        if let Err(e) = &result {
            barrier.abort(&e.0);
            break;
        }
    }
    if ranks.rank != 0 {
        barrier.leave();
    }
    result.map(|()| outcome)
}

/// Longest rank 0 waits after a failure for the other ranks to stop before it removes
/// the workspace (a rank in the middle of a phase stops at its next operation when
/// interrupted too, else at the next barrier).
const LEAVE_WAIT_MAX: Duration = Duration::from_secs(10);

/// One target's part of a run, for one rank.
struct Runner<'a> {
    plan: &'a Plan,
    target: &'a TargetSpec,
    storage: &'a Storage,
    ranks: Ranks,
    barrier: &'a mut FileBarrier,
    /// Calls or files each workload's write or create phase made, by workload name.
    done: BTreeMap<String, u64>,
    /// Requests of each server at the previous snapshot.
    requests_before: Vec<u64>,
    /// Rank 0 made the workspace in this run: only then does a failure remove it.
    made_workspace: bool,
}

impl<'a> Runner<'a> {
    fn new(
        plan: &'a Plan,
        target: &'a TargetSpec,
        storage: &'a Storage,
        ranks: Ranks,
        barrier: &'a mut FileBarrier,
    ) -> Runner<'a> {
        Runner {
            plan,
            target,
            storage,
            ranks,
            barrier,
            done: BTreeMap::new(),
            requests_before: Vec::new(),
            made_workspace: false,
        }
    }

    fn ctx(&self, bar: Option<ProgressBar>, deadline: Option<Instant>) -> RankCtx<'a> {
        RankCtx {
            storage: self.storage,
            label: self.target.label.clone(),
            ranks: self.ranks,
            work: self.plan.workspace.clone(),
            seed: self.plan.seed,
            reused: self.plan.reuse,
            deadline,
            bar,
        }
    }

    fn run(&mut self, outcome: &mut Outcome) -> Result<()> {
        self.setup()?;
        if self.ranks.rank == 0 {
            outcome
                .notes
                .insert(self.target.label.clone(), self.storage.read_cache_note());
        }
        if self.ranks.rank == 0 {
            self.snapshot_servers(outcome, "start", 0);
        }
        let first = outcome.results.len();
        let mut phase_of = Vec::new();
        for rep in 0..self.plan.reps {
            for (index, phase) in self.plan.phases.iter().enumerate() {
                let shares = self.phase(rep, index, phase)?;
                if self.ranks.rank == 0 {
                    // IO500's find is rank 0's alone: the others' empty shares would count
                    // as ranks that took part, and its limit is one process's.
                    let shares = match phase {
                        Phase::Find => &shares[..shares.len().min(1)],
                        _ => &shares[..],
                    };
                    outcome.results.push(PhaseResult::aggregate(
                        &self.target.label,
                        &phase.name(),
                        phase.kind(),
                        rep,
                        shares,
                    ));
                    phase_of.push(index);
                    self.snapshot_servers(outcome, &phase.name(), rep);
                }
            }
        }
        self.cleanup()?;
        // After the phases, not before: the store probe writes and removes a scratch file,
        // and a memory store keeps the pages it grew by, so phases after it wrote into
        // memory already faulted in and ran faster than on a store as a job finds it. And
        // after the workspace is gone, so that the probe's sync flushes only its own
        // writes and the phases' files leave its scratch file room.
        let limits = match self.storage {
            Storage::Native(_) if self.plan.limits => self.measure_limits(outcome)?,
            _ => None,
        };
        if let (0, Some(l)) = (self.ranks.rank, &limits) {
            for (r, &index) in outcome.results[first..].iter_mut().zip(&phase_of) {
                r.efficiency = efficiency(r, &self.plan.phases[index], l);
            }
            outcome.limits = Some(l.clone());
        }
        Ok(())
    }

    /// Rank 0 makes the workspace and the workloads' directories (and the shared files),
    /// then every rank makes its own directories.
    fn setup(&mut self) -> Result<()> {
        let work = &self.plan.workspace;
        if self.plan.reuse {
            if self.ranks.rank == 0 {
                let missing = match self.storage.exists(work) {
                    Ok(true) => None,
                    Ok(false) => Some(BenchError(format!(
                        "no workspace {work} on {} to read",
                        self.target.label
                    ))),
                    Err(e) => Some(e),
                };
                if let Some(e) = missing {
                    self.barrier.abort(&e.0);
                    return Err(e);
                }
            }
            return self.barrier.wait();
        }
        if self.ranks.rank == 0 {
            let made = (|| {
                if let Err(e) = self.storage.mkdir(work) {
                    return Err(match self.storage.exists(work) {
                        Ok(true) => BenchError(format!(
                            "workspace {work} is already on {}: a run works only in a workspace it makes, and removes it when it ends; give another name, or read an earlier run's files with only read phases",
                            self.target.label
                        )),
                        _ => e,
                    });
                }
                self.made_workspace = true;
                for s in self.plan.ior_specs() {
                    self.storage.mkdir(&format!("{work}/{}", s.name))?;
                    if !s.file_per_process {
                        let path = s.file(work, 0);
                        let h = self.storage.create(&path)?;
                        self.storage.close(h, &path)?;
                    }
                }
                for s in self.plan.md_specs() {
                    self.storage.mkdir(&format!("{work}/{}", s.name))?;
                    if !s.unique_dir {
                        self.storage.mkdir(&s.dir(work, 0))?;
                    }
                }
                Ok::<(), BenchError>(())
            })();
            if let Err(e) = made {
                self.barrier.abort(&e.0);
                return Err(e);
            }
        }
        self.barrier.wait()?;
        for s in self.plan.md_specs() {
            if s.unique_dir {
                self.storage.mkdir(&s.dir(work, self.ranks.rank))?;
            }
        }
        self.barrier.wait()
    }

    /// Every rank's shares of one phase (rank 0 gets them all; the others get theirs).
    fn phase(&mut self, rep: u32, index: usize, phase: &Phase) -> Result<Vec<RankPhase>> {
        self.prepare(phase)?;
        let bar = (self.ranks.rank == 0).then(|| progress_bar(self, phase));
        self.barrier.wait()?;
        let deadline = match phase {
            Phase::IorWrite(_)
            | Phase::Md {
                md: MdOp::Create, ..
            } => self
                .plan
                .stonewall_secs
                .map(|s| Instant::now() + Duration::from_secs_f64(s)),
            _ => None,
        };
        let mut ctx = self.ctx(bar.clone(), deadline);
        let share = self.run_share(&mut ctx, phase)?;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let name = format!("{}.{rep}.{index}", self.target.label);
        self.exchange(&name, &share)
    }

    fn prepare(&self, phase: &Phase) -> Result<()> {
        let ctx = self.ctx(None, None);
        match phase {
            Phase::IorRead(s) => ior::prepare_read(&ctx, s),
            Phase::Md {
                spec,
                md: MdOp::Read,
            } => mdtest::prepare_read(&ctx, spec, self.written(&spec.name, spec.files_per_rank)),
            // An earlier repetition's creates left their files: the ones of this
            // repetition would open them, and time another operation.
            Phase::Md {
                spec,
                md: MdOp::Create,
            } => mdtest::prepare_create(&ctx, spec, self.written(&spec.name, 0)),
            _ => Ok(()),
        }
    }

    fn written(&self, name: &str, planned: u64) -> u64 {
        self.done.get(name).copied().unwrap_or(planned)
    }

    fn run_share(&mut self, ctx: &mut RankCtx<'_>, phase: &Phase) -> Result<RankPhase> {
        match phase {
            Phase::IorWrite(s) => {
                let (share, done) = ior::write(ctx, s)?;
                self.done.insert(s.name.clone(), done);
                Ok(share)
            }
            Phase::IorRead(s) => ior::read(ctx, s, self.written(&s.name, s.transfers())),
            Phase::Md { spec, md } => {
                let count = match md {
                    MdOp::Create => spec.files_per_rank,
                    _ => self.written(&spec.name, spec.files_per_rank),
                };
                let (share, done) = mdtest::run(ctx, spec, *md, count)?;
                match md {
                    MdOp::Create => self.done.insert(spec.name.clone(), done),
                    MdOp::Remove => self.done.insert(spec.name.clone(), 0),
                    _ => None,
                };
                Ok(share)
            }
            Phase::Find => find(ctx),
        }
    }

    /// Leaves this rank's share in the run directory and, on rank 0, collects every
    /// rank's once all have left theirs.
    fn exchange<T>(&mut self, name: &str, share: &T) -> Result<Vec<T>>
    where
        T: Serialize + serde::de::DeserializeOwned + Clone,
    {
        let dir = self.barrier.dir().to_path_buf();
        let own = dir.join(format!("{name}.{}.json", self.ranks.rank));
        let json = serde_json::to_vec(share)
            .map_err(|e| BenchError(format!("cannot encode a result: {e}")))?;
        std::fs::write(&own, json).map_err(|e| io_error("write", &own, e))?;
        self.barrier.wait()?;
        if self.ranks.rank != 0 {
            return Ok(vec![share.clone()]);
        }
        (0..self.ranks.size)
            .map(|r| {
                let path = dir.join(format!("{name}.{r}.json"));
                let bytes = std::fs::read(&path).map_err(|e| io_error("read", &path, e))?;
                let _ = std::fs::remove_file(&path);
                serde_json::from_slice(&bytes).map_err(|e| {
                    BenchError(format!(
                        "rank {r}'s result {} is unreadable: {e}",
                        path.display()
                    ))
                })
            })
            .collect()
    }

    /// Every server's store probed (see [`limits::stores`]), unless the stores are memory
    /// or differ, or the probe fails: then none, with a note why.
    fn probe_stores(&self, fs: &BenchFS, outcome: &mut Outcome) -> Option<(f64, f64)> {
        let mut backends: Vec<String> = fs
            .client()
            .servers()
            .iter()
            .map(|s| s.settings.get("backend").cloned().unwrap_or_default())
            .collect();
        backends.sort();
        backends.dedup();
        let label = &self.target.label;
        // Memory stores' probes would swamp the others' in the aggregate.
        if backends.len() > 1 {
            let why = format!(
                "no store limit: the servers' stores differ ({})",
                backends.join(", ")
            );
            add_note(outcome, label, &why);
            return None;
        }
        if backends[..] == ["memory"] {
            // Not a limit: a memory store's write takes the payload's pages and its read
            // sends from the chunk's, with no copy, while the probe's figure swung with
            // whether the store had the pages already (3 to 940 GB/s).
            add_note(outcome, label, "memory stores: the network is the limit");
            return None;
        }
        // A store that refuses the probe (full, failing) costs the run its store limit,
        // not the phases it measured.
        limits::stores(fs, self.plan.network_payload)
            .map_err(|e| add_note(outcome, label, &format!("no store limit ({e})")))
            .ok()
    }

    /// Every rank's round trips and bandwidth to the servers, then rank 0's probe of every
    /// server's store; after the phases (see `run`). A probe that fails on any rank costs
    /// the run its limits (`None`, with a note), not the phases it measured; every rank
    /// still takes each barrier and exchange, so that none waits for another in vain.
    fn measure_limits(&mut self, outcome: &mut Outcome) -> Result<Option<Limits>> {
        let Storage::Native(fs) = self.storage else {
            return Err("limits are measured on a native target".into());
        };
        let rank = self.ranks.rank;
        self.barrier.wait()?;
        let rtt = limits::round_trips(fs, rank)
            .map_err(|e| format!("rank {rank}'s round-trip probe: {e}"));
        let rtt = self.exchange("limit-rtt", &rtt)?;
        self.barrier.wait()?;
        let bw = limits::bandwidth(fs, rank, self.plan.network_payload)
            .map_err(|e| format!("rank {rank}'s network probe: {e}"));
        let bw = self.exchange("limit-network", &bw)?;
        // Rank 0 alone: the stores are the servers', and probing them from every rank
        // would only queue the probes.
        let stores = match self.ranks.rank {
            0 => self.probe_stores(fs, outcome),
            _ => None,
        };
        self.barrier.wait()?;
        let all = |shares: Vec<std::result::Result<RankPhase, String>>| {
            shares
                .into_iter()
                .collect::<std::result::Result<Vec<_>, _>>()
        };
        let (rtt, bw) = match (all(rtt), all(bw)) {
            (Ok(rtt), Ok(bw)) => (rtt, bw),
            (Err(failed), _) | (_, Err(failed)) => {
                add_note(
                    outcome,
                    &self.target.label,
                    &format!("no limits ({failed})"),
                );
                return Ok(None);
            }
        };
        let rtt = PhaseResult::aggregate("", "", Kind::Metadata, 0, &rtt);
        let bw = PhaseResult::aggregate("", "", Kind::Bandwidth, 0, &bw);
        Ok(Some(Limits {
            rtt_p50_us: rtt.latency.get("ping").map_or(0.0, |l| l.p50_us),
            network_mib_s: bw.mib_s,
            network_payload: self.plan.network_payload,
            store_write_mib_s: stores.map(|s| s.0),
            store_read_mib_s: stores.map(|s| s.1),
        }))
    }

    fn snapshot_servers(&mut self, outcome: &mut Outcome, phase: &str, rep: u32) {
        let Storage::Native(fs) = self.storage else {
            return;
        };
        let stats = fs.block_on(fs.client().server_stats());
        let mut servers = Vec::new();
        for (i, (entry, reply)) in stats.into_iter().enumerate() {
            let counters = ServerCounters::new(&entry.node_id, &entry.addr.to_string(), reply);
            let before = self.requests_before.get(i).copied().unwrap_or(0);
            let now = counters.requests;
            let kept = now.unwrap_or(before);
            if i < self.requests_before.len() {
                self.requests_before[i] = kept;
            } else {
                self.requests_before.push(kept);
            }
            servers.push(ServerCounters {
                // A server that did not answer did an unknown amount of work, not none.
                requests_in_phase: now.and_then(|now| now.checked_sub(before)),
                ..counters
            });
        }
        outcome.servers.push(ServerSnapshot {
            target: self.target.label.clone(),
            phase: phase.to_owned(),
            rep,
            servers,
            point: BTreeMap::new(),
        });
    }

    /// Every rank removes its own files, then rank 0 the directories.
    fn cleanup(&mut self) -> Result<()> {
        if self.plan.keep {
            return self.barrier.wait();
        }
        let work = &self.plan.workspace;
        for s in self.plan.ior_specs() {
            if s.file_per_process {
                let _ = self.storage.unlink(&s.file(work, self.ranks.rank));
            }
        }
        for s in self.plan.md_specs() {
            for i in 0..self.done.get(&s.name).copied().unwrap_or(0) {
                let _ = self.storage.unlink(&s.file(work, self.ranks.rank, i));
            }
        }
        self.barrier.wait()?;
        if self.ranks.rank == 0 {
            remove_tree(self.storage, work)?;
        }
        self.barrier.wait()
    }

    /// After a failure: removes what is left of the workspace if this run made it (never
    /// a directory that was there before, nor an earlier run's workspace it reads).
    fn remove_workspace(&self) -> Result<()> {
        if self.made_workspace && self.storage.exists(&self.plan.workspace).unwrap_or(true) {
            remove_tree(self.storage, &self.plan.workspace)?;
        }
        Ok(())
    }
}

/// Refuses a workspace name that is not one plain name: it is joined to every target's
/// root (and to local run directories), and a run removes it when it ends, so `.`, `..`
/// or a path would reach directories the run did not make.
fn check_workspace_name(name: &str) -> Result<()> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
        && name.len() <= benchfs_proto::limits::NAME_LEN_MAX;
    match plain {
        true => Ok(()),
        false => Err(format!(
            "workspace {name:?} is not a plain name: one path component, not . or .., without '/'"
        )
        .into()),
    }
}

/// Adds `note` to what the report says of `target`.
fn add_note(outcome: &mut Outcome, target: &str, note: &str) {
    outcome
        .notes
        .entry(target.to_owned())
        .and_modify(|n| *n = format!("{n}; {note}"))
        .or_insert_with(|| note.to_owned());
}

/// The limit a result is measured against: bandwidth against the network probe (and the
/// stores, when probed); metadata against one round trip per operation per rank.
pub fn efficiency(r: &PhaseResult, phase: &Phase, l: &Limits) -> Option<Efficiency> {
    let (limit, of) = match phase.kind() {
        Kind::Bandwidth => {
            let store = match phase {
                Phase::IorWrite(_) => l.store_write_mib_s,
                _ => l.store_read_mib_s,
            };
            match store {
                Some(s) if s < l.network_mib_s => (s, "servers' stores (probe)".to_owned()),
                _ => (
                    l.network_mib_s,
                    format!(
                        "network ({} KiB pings to all servers)",
                        l.network_payload >> 10
                    ),
                ),
            }
        }
        Kind::Metadata => (
            f64::from(r.ranks) * 1e6 / l.rtt_p50_us,
            "one round trip per operation per rank".to_owned(),
        ),
    };
    (limit > 0.0 && limit.is_finite()).then(|| Efficiency {
        limit,
        of,
        percent: 100.0 * r.value() / limit,
    })
}

fn progress_bar(runner: &Runner<'_>, phase: &Phase) -> ProgressBar {
    let (len, bytes) = match phase {
        Phase::IorWrite(s) | Phase::IorRead(s) => (s.bytes_per_rank(), true),
        Phase::Md { spec, .. } => (spec.files_per_rank, false),
        Phase::Find => (0, false),
    };
    let bar = ProgressBar::new(len);
    let template = if bytes {
        "{prefix:>28} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}"
    } else {
        "{prefix:>28} [{bar:30}] {pos}/{len} {per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(format!("{} {}", runner.target.label, phase.name()));
    bar
}

/// IO500's find by one process: rank 0 walks the workspace, stating each file.
fn find(ctx: &mut RankCtx<'_>) -> Result<RankPhase> {
    let mut lat = crate::hist::Latencies::default();
    let mut share = RankPhase::start(ctx.ranks.rank);
    if ctx.ranks.rank == 0 {
        let mut dirs = vec![ctx.work.clone()];
        while let Some(dir) = dirs.pop() {
            let t = Instant::now();
            let entries = ctx.storage.list(&dir)?;
            lat.record("readdir", t.elapsed().as_nanos() as u64);
            for (name, is_dir) in entries {
                let path = format!("{dir}/{name}");
                if is_dir {
                    dirs.push(path);
                    continue;
                }
                let t = Instant::now();
                ctx.storage.stat_size(&path)?;
                lat.record("stat", t.elapsed().as_nanos() as u64);
                share.ops += 1;
                ctx.progress(1)?;
            }
        }
    }
    Ok(share.finish(&lat))
}

/// Removes `rel` and everything under it.
pub fn remove_tree(storage: &Storage, rel: &str) -> Result<()> {
    for (name, is_dir) in storage.list(rel)? {
        let path = format!("{rel}/{name}");
        if is_dir {
            remove_tree(storage, &path)?;
        } else {
            storage.unlink(&path)?;
        }
    }
    storage.rmdir(rel)
}
