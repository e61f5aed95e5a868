//! Soak: random file-system operations (create, write, pread, truncate, rename, unlink,
//! mkdir, readdir, fsync) from several clients against a 4-server cluster (file backend,
//! replicas = 2, short RPC timeout) while servers are killed (-9), stopped (SIGSTOP) and
//! shut down cleanly (SIGTERM), and restarted on their data; every answer is checked
//! against an in-memory model, and at the end every file and listing is checked, the
//! space the servers hold is bounded by what the model's files need, and once everything
//! is removed the servers hold nothing.
//!
//! Bounded and reproducible: the default run is [`DEFAULT_OPS`] operations; every choice
//! (operation, path, sizes, bytes, fault, server, duration) comes from one seed, printed
//! at the start. `BENCHFS_SOAK_OPS=<n>` runs longer, `BENCHFS_SOAK_SEED=<s>` replays:
//!
//! ```text
//! BENCHFS_SOAK_SEED=<s> BENCHFS_SOAK_OPS=<n> cargo test -p benchfs --test soak -- --nocapture
//! ```
//!
//! (Which calls a stopped server makes fail also depends on timing, so a replay follows
//! the same operations and faults but may see a few calls fail differently.)
//!
//! The clients are interleaved on this one thread (a handle belongs to one thread), and
//! every operation is a whole open-…-close sequence, so close-to-open consistency is all
//! the model needs: a reader opens after the writer closed (or fsynced). At most one
//! server is faulty at a time.
//!
//! # The model
//!
//! Each path is certainly present (`Yes`), certainly absent (`No`) or either (`Maybe`).
//! A file's content, if it is present, is a [`Content`]: its bytes (`data`), the sizes a
//! reader may see (`sizes`), and alternatives (`alts`): bytes at given offsets that a
//! failed call may have left there. A read must return a length in `sizes` and, at every
//! offset, either `data`'s byte (zero past its end) or the byte of an alternative that
//! covers the offset. Nothing else: a byte that no call ever tried to put there fails the
//! run.
//!
//! * A call that **succeeds** applies exactly: a write sets its bytes and drops the
//!   alternatives under them, once a close or fsync of its handle succeeds (until then it
//!   is only on its way: write-behind); a close (or fsync) after writes publishes the size (for
//!   sure only past every size the model allows: a handle publishes only past the size
//!   it saw at open, which one replica of the record gave); a
//!   truncate sets the size, zeroes past it and drops every alternative past it (a hole
//!   must read as zeros); a create leaves an empty file; unlink makes the path `No`;
//!   rename moves the content; mkdir makes the directory `Yes`.
//! * A call that **fails** because a server did not answer (EIO, ETIMEDOUT) may have
//!   happened in part: a failed write, and a failed close or fsync after writes, adds the
//!   handle's unflushed bytes as alternatives; a failed
//!   truncate or create adds its size and zeros as an alternative where it may have cut;
//!   a failed close or fsync adds the size it would have published; a failed unlink,
//!   mkdir or create makes the path `Maybe`. A failed rename makes both paths `Maybe`,
//!   the destination with either content, and *freezes* them: the new record may have
//!   been written and the old one not yet removed, so both names may reach one file, and
//!   the model does not follow writes through such aliases. A frozen path is only read
//!   and unlinked until its partner is certainly gone.
//! * **Errors about the namespace are exact:** ENOENT is allowed only where the model
//!   allows absence, and a success where the model says `No` fails the run. A `Maybe`
//!   goes back to certain only through a call that reaches every replica: a create
//!   followed by a write and a close that succeed, a truncate, rename, unlink or mkdir
//!   that succeeds, or (with every server up) an unlink that finds nothing.
//! * **Availability:** with one server faulty and two replicas, reading a file and
//!   listing a directory that certainly exist must succeed; with every server up, no call
//!   may fail for want of a server. Any other errno fails the run.
//!
//! A failed create, delete or rename is undone on the replicas that took it, but the undo
//! itself can fail (a second server down, or the same one stopped), and then the two
//! replicas of a record differ: later calls on such a path may fail with ENOENT or with
//! ESTALE (a size update names the file the other replica holds), or read one replica's
//! file; and a create in a missing directory fails with ENOENT yet leaves its record when
//! a fault stops the undo. The model allows that only for `Maybe` paths, which is where a
//! failed call leaves them.
//!
//! When the run finds a bug it panics with the seed, the operation, the model's view of
//! the path and the last 40 operations, copies the servers' logs and the whole operation
//! log to `target/tmp/soak-failed-<seed>-<pid>/`, and prints the replay command.
//!
//! # Known bugs
//!
//! The soak found three bugs, all fixed; their reproductions are regression tests at the
//! end of this file.
//!
//! 1. **Fixed: truncate cut chunks only up to the published size.** `truncate_meta`
//!    (crates/client/src/fs/namespace.rs) cut `chunk_index(new size)..chunk_count(size)`
//!    with the size the metadata owner held, and `open` with O_TRUNC cut nothing when
//!    that size was 0. Chunks past it (a write that failed on one replica and landed on
//!    the other, a writer that never closed) survived, and when the file grew again the
//!    hole read their bytes. Now every server cuts every chunk of the file past the new
//!    end (`TruncateFile`), whatever the size says.
//! 2. **Fixed: a failed rename left two names for one file, and unlinking either lost
//!    the other's data.** `rename` writes the new record on every replica and then
//!    deletes the old one; if that delete fails on a replica the old name survives
//!    there, with the same inode number. `unlink` of one name sent `RemoveChunks` for
//!    the inode to every server without asking whether another record still names it;
//!    now it asks every server first, as the orphan sweep does.
//! 3. **Fixed: the orphan sweep ignored a server that was shut down cleanly.** `sweep_once`
//!    (crates/server/src/sweep.rs) asks only the servers in the registry whether a
//!    record names a file, and a server stopped with SIGTERM withdraws its entry. A file
//!    whose only record is on that server (an unlink that failed there, a rename or
//!    create half done) has a tombstone elsewhere and no record among the servers asked,
//!    so its chunks are freed while the server is away; back, its record reads zeros.
//!    Now a server remembers every peer it has seen in the registry (from the sweep's
//!    start) and skips a round while one of them is missing.
#![allow(clippy::print_stdout)] // The seed, the replay command and a summary go to the
                                // test's output (shown with --nocapture or on failure).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use benchfs::blocking::{ApiError, BenchFS, OpenFlags};
use benchfs_proto::Status;
use common::files::C;
use common::{pattern, Cluster, ClusterSpec};

/// Operations in a default run (`make test`).
const DEFAULT_OPS: usize = 350;
/// Servers in the cluster.
const SERVERS: usize = 4;
/// Client handles, interleaved on the test's thread.
const CLIENTS: usize = 3;
/// Directories the run may create ("/" always exists); two are nested.
const DIRS: [&str; 4] = ["/a", "/b", "/a/c", "/b/d"];
/// File names, under "/" and under every directory of [`DIRS`].
const NAMES: [&str; 5] = ["f0", "f1", "f2", "f3", "f4"];
/// No write reaches past this offset: files of up to a few chunks.
const MAX_EXTENT: usize = 4 * C + C / 2;

// ---------------------------------------------------------------------------------------
// Randomness

/// xorshift64*, seeded through splitmix64 so that any seed (0 too) works.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A number in `lo..hi` (`lo < hi`).
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo)
    }

    fn percent(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A write length: mostly small, sometimes a chunk or more (rendezvous, several
    /// chunks at once).
    fn write_len(&mut self) -> usize {
        match self.below(10) {
            0..=3 => self.range(1, 4096),
            4..=7 => self.range(4096, C + 1),
            _ => self.range(C, 2 * C + 17),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The model

/// Whether a path exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exists {
    Yes,
    No,
    Maybe,
}

/// Bytes a failed call may have left at `off`: given bytes, or `len` zeros.
#[derive(Clone, Debug)]
struct Alt {
    off: usize,
    len: usize,
    /// None: zeros.
    bytes: Option<Vec<u8>>,
}

impl Alt {
    fn data(off: usize, bytes: &[u8]) -> Alt {
        Alt {
            off,
            len: bytes.len(),
            bytes: Some(bytes.to_vec()),
        }
    }

    fn zeros(off: usize, len: usize) -> Alt {
        Alt {
            off,
            len,
            bytes: None,
        }
    }

    fn end(&self) -> usize {
        self.off + self.len
    }

    fn covers(&self, pos: usize) -> bool {
        pos >= self.off && pos < self.end()
    }

    fn byte(&self, pos: usize) -> u8 {
        self.bytes.as_ref().map_or(0, |b| b[pos - self.off])
    }

    /// The part of this alternative within `from..to`, if any.
    fn slice(&self, from: usize, to: usize) -> Option<Alt> {
        let (start, end) = (self.off.max(from), self.end().min(to));
        (start < end).then(|| Alt {
            off: start,
            len: end - start,
            bytes: self
                .bytes
                .as_ref()
                .map(|b| b[start - self.off..end - self.off].to_vec()),
        })
    }
}

/// A handle's writes that returned, not yet flushed, and the end of the furthest.
#[derive(Debug, Default)]
struct Written {
    pending: Vec<(usize, Vec<u8>)>,
    end: Option<usize>,
}

/// What a file may hold: see the module documentation.
#[derive(Clone, Debug)]
struct Content {
    data: Vec<u8>,
    sizes: BTreeSet<usize>,
    alts: Vec<Alt>,
}

impl Content {
    fn empty() -> Content {
        Content {
            data: Vec::new(),
            sizes: BTreeSet::from([0]),
            alts: Vec::new(),
        }
    }

    fn max_size(&self) -> usize {
        self.sizes.last().copied().unwrap_or(0)
    }

    /// One past the last byte the file may hold (written bytes, not holes).
    fn extent(&self) -> usize {
        self.alts
            .iter()
            .filter(|a| a.bytes.is_some())
            .map(Alt::end)
            .chain([self.data.len(), self.max_size()])
            .max()
            .unwrap_or(0)
    }

    /// Drops the alternatives in `from..to`.
    fn cut_alts(&mut self, from: usize, to: usize) {
        self.alts = self
            .alts
            .iter()
            .flat_map(|a| [a.slice(0, from), a.slice(to, usize::MAX)])
            .flatten()
            .collect();
    }

    fn write_ok(&mut self, off: usize, bytes: &[u8]) {
        let end = off + bytes.len();
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data[off..end].copy_from_slice(bytes);
        self.cut_alts(off, end);
    }

    fn write_failed(&mut self, off: usize, bytes: &[u8]) {
        self.alts.push(Alt::data(off, bytes));
    }

    /// A handle that wrote up to `end` published its size (`surely`: its close or fsync
    /// succeeded), or may have. A handle publishes only a size past the one it saw at
    /// open, which came from one replica of the record: unless `end` is past every size
    /// the model allows, a replica with a smaller size may keep it even after a close
    /// that succeeded.
    fn published(&mut self, end: usize, surely: bool) {
        let grown: BTreeSet<usize> = self.sizes.iter().map(|&s| s.max(end)).collect();
        if surely && end > self.max_size() {
            self.sizes = grown;
        } else {
            self.sizes.extend(grown);
        }
    }

    /// A truncate (or a create of an existing file, to 0) succeeded: bytes past `size`
    /// are gone, and read as zeros if the file grows again.
    fn truncated(&mut self, size: usize) {
        self.cut_alts(size, usize::MAX);
        self.data.resize(size, 0);
        self.sizes = BTreeSet::from([size]);
    }

    fn truncate_failed(&mut self, size: usize) {
        let extent = self.extent();
        if size < extent {
            self.alts.push(Alt::zeros(size, extent - size));
        }
        self.sizes.insert(size);
    }

    /// The file may instead be `other` (a rename that failed part way).
    fn merge(&mut self, other: &Content) {
        self.write_failed(0, &other.data);
        // Past its bytes, `other` reads as zeros, however far this file grows.
        let len = other.data.len();
        self.alts
            .push(Alt::zeros(len, (MAX_EXTENT + C).saturating_sub(len)));
        self.alts.extend(other.alts.iter().cloned());
        self.sizes.extend(other.sizes.iter().copied());
    }

    fn allows(&self, pos: usize, byte: u8) -> bool {
        byte == self.data.get(pos).copied().unwrap_or(0)
            || self
                .alts
                .iter()
                .any(|a| a.covers(pos) && a.byte(pos) == byte)
    }

    /// Checks `got`, read at offset `at`.
    fn check(&self, got: &[u8], at: usize) -> Result<(), String> {
        let Some(bad) = (0..got.len()).find(|&i| !self.allows(at + i, got[i])) else {
            return Ok(());
        };
        let pos = at + bad;
        let others: Vec<String> = self
            .alts
            .iter()
            .filter(|a| a.covers(pos))
            .map(|a| format!("{:#04x} (alt at {}+{})", a.byte(pos), a.off, a.len))
            .collect();
        let run = (bad..got.len())
            .take_while(|&i| !self.allows(at + i, got[i]))
            .count();
        Err(format!(
            "byte {pos} is {:#04x}, the model allows {:#04x}{}{}; {run} wrong bytes in a row from there; got[{pos}..+16] = {:02x?}",
            got[bad],
            self.data.get(pos).copied().unwrap_or(0),
            if others.is_empty() { "" } else { " or " },
            others.join(", "),
            &got[bad..(bad + 16).min(got.len())],
        ))
    }

    fn describe(&self) -> String {
        let alts: Vec<String> = self
            .alts
            .iter()
            .map(|a| {
                let zeros = if a.bytes.is_none() { " zeros" } else { "" };
                format!("{}+{}{zeros}", a.off, a.len)
            })
            .collect();
        format!(
            "data {} bytes, sizes {:?}, alternatives [{}]",
            self.data.len(),
            self.sizes,
            alts.join(", ")
        )
    }
}

/// One file path.
#[derive(Clone, Debug)]
struct FileState {
    exists: Exists,
    content: Content,
}

/// The whole namespace.
struct Model {
    files: BTreeMap<String, FileState>,
    dirs: BTreeMap<String, Exists>,
    /// Paths frozen by a failed rename, each with its partner.
    frozen: BTreeMap<String, String>,
}

/// The directory `path` is in.
fn parent(path: &str) -> &str {
    match path.rsplit_once('/') {
        Some(("", _)) | None => "/",
        Some((dir, _)) => dir,
    }
}

/// The last component of `path`.
fn name(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, n)| n)
}

impl Model {
    fn new() -> Model {
        let mut files = BTreeMap::new();
        for dir in std::iter::once("").chain(DIRS) {
            for n in NAMES {
                files.insert(
                    format!("{dir}/{n}"),
                    FileState {
                        exists: Exists::No,
                        content: Content::empty(),
                    },
                );
            }
        }
        Model {
            files,
            dirs: DIRS.iter().map(|d| (d.to_string(), Exists::No)).collect(),
            frozen: BTreeMap::new(),
        }
    }

    fn dir(&self, dir: &str) -> Exists {
        if dir == "/" {
            Exists::Yes
        } else {
            self.dirs[dir]
        }
    }

    fn file(&mut self, path: &str) -> &mut FileState {
        self.files.get_mut(path).expect("a path of the model")
    }

    /// Unfreezes the pairs of which one side is certainly gone.
    fn thaw(&mut self) {
        let files = &self.files;
        self.frozen
            .retain(|p, q| files[p].exists != Exists::No && files[q].exists != Exists::No);
    }

    /// The entries of `dir`: name and whether it exists.
    fn children(&self, dir: &str) -> BTreeMap<String, Exists> {
        let files = self.files.iter().map(|(p, f)| (p.as_str(), f.exists));
        let dirs = self.dirs.iter().map(|(p, e)| (p.as_str(), *e));
        files
            .chain(dirs)
            .filter(|(p, _)| parent(p) == dir)
            .map(|(p, e)| (name(p).to_string(), e))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Outcomes of calls

/// What a call came back with, as the model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    NotFound,
    Exists,
    /// A server did not answer (EIO, ETIMEDOUT): the call may have happened in part.
    Unreachable,
}

/// What the model knows about one call, for the log and the error message.
fn outcome<T>(result: &Result<T, ApiError>) -> Result<Outcome, String> {
    let Err(e) = result else {
        return Ok(Outcome::Ok);
    };
    match e.status() {
        Some(Status::NotFound) => Ok(Outcome::NotFound),
        Some(Status::Exists) => Ok(Outcome::Exists),
        Some(Status::Io | Status::TimedOut | Status::Unavailable) => Ok(Outcome::Unreachable),
        _ => Err(format!("unexpected error: {e} (errno {})", e.errno())),
    }
}

fn short<T>(result: &Result<T, ApiError>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(e) => format!("ERR({e})"),
    }
}

// ---------------------------------------------------------------------------------------
// Faults

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FaultKind {
    /// SIGKILL, restarted on its data later.
    Kill,
    /// SIGSTOP, SIGCONT later.
    Stop,
    /// SIGTERM (a clean exit), restarted on its data later.
    Term,
}

#[derive(Clone, Copy, Debug)]
struct Fault {
    kind: FaultKind,
    server: usize,
    /// The operation before which it clears.
    until: usize,
}

// ---------------------------------------------------------------------------------------
// The run

/// Counts for the summary.
#[derive(Default, Debug)]
struct Tally {
    ops: BTreeMap<&'static str, usize>,
    failed_calls: usize,
    faults: BTreeMap<String, usize>,
    bytes_checked: usize,
    /// Bytes the servers held at the end, and the model's bound.
    held_at_end: (u64, u64),
}

struct Soak {
    seed: u64,
    ops: usize,
    rng: Rng,
    cluster: Cluster,
    clients: Vec<BenchFS>,
    model: Model,
    fault: Option<Fault>,
    next_fault: usize,
    /// The operation under way.
    step: usize,
    log: Vec<String>,
    tally: Tally,
}

impl Soak {
    fn new(seed: u64, ops: usize) -> Soak {
        let cluster = Cluster::start(ClusterSpec {
            servers: SERVERS,
            backend: "file",
            replicas: 2,
            ..ClusterSpec::short_timeout()
        });
        let clients = (0..CLIENTS).map(|_| cluster.client()).collect();
        let mut rng = Rng::new(seed);
        let next_fault = rng.range(5, 20);
        Soak {
            seed,
            ops,
            rng,
            cluster,
            clients,
            model: Model::new(),
            fault: None,
            next_fault,
            step: 0,
            log: Vec::new(),
            tally: Tally::default(),
        }
    }

    /// Fails the run with everything needed to understand and replay it.
    fn violation(&self, path: &str, what: &str) -> ! {
        let mut msg = format!(
            "soak seed {} found a bug at operation #{}: {what}\n",
            self.seed, self.step
        );
        if let Some(f) = self.model.files.get(path) {
            let _ = writeln!(
                msg,
                "model of {path}: {:?}, {}{}",
                f.exists,
                f.content.describe(),
                match self.model.frozen.get(path) {
                    Some(p) => format!(", frozen with {p}"),
                    None => String::new(),
                }
            );
        }
        let _ = writeln!(msg, "fault: {:?}", self.fault);
        let _ = writeln!(msg, "last operations:");
        for line in self.log.iter().rev().take(40).rev() {
            let _ = writeln!(msg, "  {line}");
        }
        let _ = write!(
            msg,
            "replay: BENCHFS_SOAK_SEED={} BENCHFS_SOAK_OPS={} cargo test -p benchfs --test soak -- --nocapture; cluster in {}",
            self.seed,
            self.ops,
            self.cluster.dir.path().display()
        );
        let _ = writeln!(msg, "\nserver logs kept in {}", self.keep_logs());
        panic!("{msg}");
    }

    /// Copies the servers' logs out of the cluster's directory, which goes when the
    /// cluster is dropped, and writes the whole operation log next to them; returns
    /// where.
    fn keep_logs(&self) -> String {
        let dir =
            common::test_root().join(format!("soak-failed-{}-{}", self.seed, std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        for i in 0..SERVERS {
            let log = self.cluster.log_path(i);
            let _ = std::fs::copy(&log, dir.join(log.file_name().unwrap_or_default()));
        }
        let _ = std::fs::write(dir.join("operations.log"), self.log.join("\n") + "\n");
        dir.display().to_string()
    }

    /// Appends to the current operation's log line.
    fn note(&mut self, text: impl AsRef<str>) {
        if let Some(line) = self.log.last_mut() {
            line.push_str(text.as_ref());
        }
    }

    /// The model's outcome of a call, noted in the log; an errno the model has no rule
    /// for fails the run, and so does a call that failed for want of a server while every
    /// server was up.
    fn judge<T>(&mut self, path: &str, what: &str, result: &Result<T, ApiError>) -> Outcome {
        let text = format!(" {what}:{}", short(result));
        self.note(text);
        if matches!(result, Err(e) if e.status() == Some(Status::Stale)) {
            // The replicas of the record name different files: only a failed call (whose
            // undo failed too) leaves them so, and it left the path uncertain.
            let uncertain = self.model.frozen.contains_key(path)
                || self.model.files.get(path).map(|f| f.exists) == Some(Exists::Maybe);
            if !uncertain {
                self.violation(
                    path,
                    &format!("{what}: ESTALE on a path no failed call touched"),
                );
            }
            self.tally.failed_calls += 1;
            return Outcome::Unreachable;
        }
        let o = outcome(result).unwrap_or_else(|e| self.violation(path, &format!("{what}: {e}")));
        if o == Outcome::Unreachable {
            self.tally.failed_calls += 1;
            if self.fault.is_none() {
                self.violation(path, &format!("{what} failed with every server up"));
            }
        }
        o
    }
}

// ---------------------------------------------------------------------------------------
// Choosing operations

impl Soak {
    /// Starts the log line of an operation.
    fn log_op(&mut self, op: &'static str, client: usize, what: &str) {
        self.log
            .push(format!("#{} c{client} {op} {what}", self.step));
        *self.tally.ops.entry(op).or_default() += 1;
    }

    /// A file path, mostly one that may exist when `existing`; a frozen one only when
    /// `frozen_ok`. None when every candidate is frozen.
    fn pick_file(&mut self, existing: bool, frozen_ok: bool) -> Option<String> {
        let model = &self.model;
        let all: Vec<&String> = model
            .files
            .keys()
            .filter(|p| frozen_ok || !model.frozen.contains_key(*p))
            .collect();
        let live: Vec<&String> = all
            .iter()
            .copied()
            .filter(|p| model.files[*p].exists != Exists::No)
            .collect();
        let pool = if existing && !live.is_empty() && self.rng.percent(85) {
            live
        } else {
            all
        };
        (!pool.is_empty()).then(|| pool[self.rng.below(pool.len())].clone())
    }

    /// The writes of one handle, (offset, bytes): the first at `first` if given, the
    /// others appending or anywhere up to a chunk past the end (leaving holes).
    fn writes(&mut self, size: usize, first: Option<usize>) -> Vec<(usize, Vec<u8>)> {
        let mut end = size;
        let mut out = Vec::new();
        for i in 0..self.rng.range(1, 4) {
            let off = match first {
                Some(off) if i == 0 => off,
                _ if self.rng.percent(30) => end,
                _ => self.rng.below((end + C).min(MAX_EXTENT)),
            }
            .min(MAX_EXTENT - 1);
            let len = self.rng.write_len().min(MAX_EXTENT - off);
            let bytes = pattern(len, self.rng.next());
            end = end.max(off + len);
            out.push((off, bytes));
        }
        out
    }

    /// One random operation.
    fn one_op(&mut self) {
        match self.rng.below(100) {
            0..=13 => self.op_create(),
            14..=27 => self.op_write(),
            28..=43 => self.op_read(),
            44..=51 => self.op_truncate(),
            52..=59 => self.op_rename(),
            60..=67 => self.op_unlink(),
            68..=72 => self.op_mkdir(),
            73..=82 => self.op_readdir(),
            _ => self.op_fsync(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Operations on files

impl Soak {
    /// Checks an open's outcome against the model; whether it gave a handle.
    fn opened(&mut self, path: &str, what: &str, result: &Result<u64, ApiError>) -> bool {
        let exists = self.model.files[path].exists;
        match self.judge(path, what, result) {
            Outcome::Ok if exists == Exists::No => {
                self.violation(path, "opened a file the model says does not exist")
            }
            Outcome::Ok => true,
            Outcome::NotFound if exists == Exists::Yes => {
                self.violation(path, "ENOENT for a file the model says exists")
            }
            Outcome::NotFound => false,
            Outcome::Unreachable => false,
            Outcome::Exists => self.violation(path, "EEXIST from an open"),
        }
    }

    /// Writes through `fd`, stopping at the first failure. A write that returned is only
    /// on its way (write-behind): its bytes are certain once a close or fsync of the
    /// handle succeeds ([`Soak::settle_writes`]), and mere alternatives if one fails.
    fn do_writes(
        &mut self,
        client: usize,
        fd: u64,
        path: &str,
        writes: &[(usize, Vec<u8>)],
    ) -> Written {
        let mut written = Written::default();
        for (off, bytes) in writes {
            let (off, len) = (*off, bytes.len());
            let result = self.clients[client].pwrite(fd, bytes, off as u64);
            match (
                self.judge(path, &format!("pwrite {off}+{len}"), &result),
                result,
            ) {
                (Outcome::Ok, Ok(n)) if n == len => {
                    written.pending.push((off, bytes.clone()));
                    written.end = Some(written.end.unwrap_or(0).max(off + len));
                }
                (Outcome::Unreachable, _) => {
                    // An earlier write in flight may be what failed.
                    self.settle_writes(path, &mut written, false);
                    self.model.file(path).content.write_failed(off, bytes);
                    break;
                }
                (o, r) => self.violation(path, &format!("pwrite of {len} bytes: {o:?} {r:?}")),
            }
        }
        written
    }

    /// The handle's writes since its last flush reached every replica (`landed`), or may
    /// have in part.
    fn settle_writes(&mut self, path: &str, written: &mut Written, landed: bool) {
        let content = &mut self.model.file(path).content;
        for (off, bytes) in written.pending.drain(..) {
            if landed {
                content.write_ok(off, &bytes);
            } else {
                content.write_failed(off, &bytes);
            }
        }
    }

    /// Closes a handle that wrote up to `written.end`, publishing the size; whether it
    /// closed.
    fn do_close(&mut self, client: usize, fd: u64, path: &str, mut written: Written) -> bool {
        let result = self.clients[client].close(fd);
        let outcome = self.judge(path, "close", &result);
        self.settle_writes(path, &mut written, outcome == Outcome::Ok);
        match (outcome, written.end) {
            (Outcome::Ok, Some(end)) => {
                self.model.file(path).content.published(end, true);
                true
            }
            (Outcome::Ok, None) => true,
            // A record on one replica only (a failed create, unlink or rename) takes the
            // size there and refuses it on the other.
            (Outcome::NotFound, Some(_)) if self.model.files[path].exists == Exists::Yes => {
                self.violation(path, "ENOENT publishing the size of a file that exists")
            }
            (Outcome::Unreachable | Outcome::NotFound, Some(end)) => {
                self.model.file(path).content.published(end, false);
                false
            }
            (o, _) => self.violation(path, &format!("close with nothing to publish: {o:?}")),
        }
    }

    /// Create (truncating), write from offset 0 on, close.
    fn op_create(&mut self) {
        let Some(path) = self.pick_file(false, false) else {
            return self.op_readdir();
        };
        let client = self.rng.below(CLIENTS);
        let writes = self.writes(0, Some(0));
        self.log_op("create", client, &path);
        let parent_exists = self.model.dir(parent(&path));
        let exists = self.model.files[&path].exists;
        let result = self.clients[client].create(&path, 0o644);
        match self.judge(&path, "create", &result) {
            Outcome::Ok if parent_exists == Exists::No => {
                self.violation(&path, "created a file in a directory that does not exist")
            }
            Outcome::Ok => {
                let file = self.model.file(&path);
                if file.exists == Exists::No {
                    file.exists = Exists::Yes;
                    file.content = Content::empty();
                } else {
                    file.content.truncated(0);
                }
            }
            // A record on one replica only (a failed create, unlink or rename) is found,
            // and then cutting its size to 0 fails on the other replica.
            Outcome::NotFound if exists == Exists::Maybe => self.create_failed(&path),
            Outcome::NotFound if parent_exists == Exists::Yes => {
                self.violation(&path, "ENOENT creating a file in a directory that exists")
            }
            // The record made before the parent check failed is removed again; only a
            // fault can stop that.
            Outcome::NotFound if self.fault.is_none() => {}
            Outcome::NotFound | Outcome::Unreachable => self.create_failed(&path),
            Outcome::Exists => self.violation(&path, "EEXIST from a create without EXCL"),
        }
        let Ok(fd) = result else { return };
        let written = self.do_writes(client, fd, &path, &writes);
        let wrote = written.end.is_some();
        // The close published the size on every replica of the record.
        if self.do_close(client, fd, &path, written) && wrote {
            self.model.file(&path).exists = Exists::Yes;
        }
    }

    /// A create that failed may have made the file, or cut it to nothing.
    fn create_failed(&mut self, path: &str) {
        let file = self.model.file(path);
        if file.exists == Exists::No {
            file.exists = Exists::Maybe;
            file.content = Content::empty();
        } else {
            file.content.truncate_failed(0);
        }
    }

    /// Open an existing file for writing, write anywhere, close.
    fn op_write(&mut self) {
        let Some(path) = self.pick_file(true, false) else {
            return self.op_readdir();
        };
        let client = self.rng.below(CLIENTS);
        let size = self.model.files[&path].content.max_size();
        let writes = self.writes(size, None);
        self.log_op("write", client, &path);
        let result = self.clients[client].open(&path, OpenFlags::WRITE, 0);
        if !self.opened(&path, "open", &result) {
            return;
        }
        let fd = result.expect("opened");
        let written = self.do_writes(client, fd, &path, &writes);
        self.do_close(client, fd, &path, written);
    }

    /// Open, write, fsync, then another client reads it all while the writer still has
    /// it open (the fsync published the size), then close.
    fn op_fsync(&mut self) {
        let Some(path) = self.pick_file(true, false) else {
            return self.op_readdir();
        };
        let client = self.rng.below(CLIENTS);
        let reader = (client + 1 + self.rng.below(CLIENTS - 1)) % CLIENTS;
        let size = self.model.files[&path].content.max_size();
        let write = self.writes(size, None).swap_remove(0);
        self.log_op("fsync", client, &path);
        let result = self.clients[client].open(&path, OpenFlags::WRITE, 0);
        if !self.opened(&path, "open", &result) {
            return;
        }
        let fd = result.expect("opened");
        let mut written = self.do_writes(client, fd, &path, std::slice::from_ref(&write));
        if let Some(end) = written.end {
            let synced = self.clients[client].fsync(fd);
            let outcome = self.judge(&path, "fsync", &synced);
            self.settle_writes(&path, &mut written, outcome == Outcome::Ok);
            match outcome {
                Outcome::Ok => {
                    self.model.file(&path).content.published(end, true);
                    self.note(format!(" | c{reader} reads:"));
                    self.read_and_check(reader, &path);
                }
                Outcome::NotFound if self.model.files[&path].exists == Exists::Yes => {
                    self.violation(&path, "ENOENT from fsync of a file that exists")
                }
                Outcome::Unreachable | Outcome::NotFound => {
                    self.model.file(&path).content.published(end, false)
                }
                Outcome::Exists => self.violation(&path, "EEXIST from fsync"),
            }
        }
        self.do_close(client, fd, &path, written);
    }

    /// Open for reading, read it whole, then a few preads, close.
    fn op_read(&mut self) {
        let Some(path) = self.pick_file(true, true) else {
            return self.op_readdir();
        };
        let client = self.rng.below(CLIENTS);
        self.log_op("read", client, &path);
        self.read_and_check(client, &path);
    }
}

// ---------------------------------------------------------------------------------------
// Reads

impl Soak {
    /// A read failed for want of a server: allowed unless the file certainly exists
    /// (one server is faulty at most, and every byte has two copies).
    fn read_unavailable(&mut self, path: &str, what: &str) {
        if self.model.files[path].exists == Exists::Yes {
            self.violation(
                path,
                &format!("{what} of a file that exists failed with one server faulty"),
            );
        }
    }

    /// Opens `path` on `client`, reads it whole and at a few offsets, checks every byte
    /// against the model, and closes it.
    fn read_and_check(&mut self, client: usize, path: &str) {
        let result = self.clients[client].open(path, OpenFlags::READ, 0);
        let unreachable = matches!(outcome(&result), Ok(Outcome::Unreachable));
        if !self.opened(path, "open", &result) {
            if unreachable {
                self.read_unavailable(path, "open");
            }
            return;
        }
        let fd = result.expect("opened");
        if let Some(whole) = self.read_whole(client, fd, path) {
            self.preads(client, fd, path, whole.len());
        }
        let closed = self.clients[client].close(fd);
        if self.judge(path, "close", &closed) != Outcome::Ok {
            self.violation(path, "closing a read handle failed");
        }
    }

    /// Reads to the end in pieces of one random size; checks the size and the bytes.
    fn read_whole(&mut self, client: usize, fd: u64, path: &str) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; self.rng.range(1000, 2 * C + 100)];
        let mut whole = Vec::new();
        loop {
            match self.clients[client].read(fd, &mut buf) {
                Ok(0) => break,
                Ok(n) => whole.extend_from_slice(&buf[..n]),
                Err(e) => {
                    let failed = Err::<(), _>(e);
                    if self.judge(path, "read", &failed) != Outcome::Unreachable {
                        self.violation(path, &format!("read: {failed:?}"));
                    }
                    self.read_unavailable(path, "read");
                    return None;
                }
            }
        }
        self.note(format!(" read:{}", whole.len()));
        self.tally.bytes_checked += whole.len();
        let content = &self.model.files[path].content;
        if !content.sizes.contains(&whole.len()) {
            self.violation(
                path,
                &format!(
                    "read {} bytes; the model allows sizes {:?}",
                    whole.len(),
                    content.sizes
                ),
            );
        }
        if let Err(e) = content.check(&whole, 0) {
            self.violation(path, &format!("read back wrong bytes: {e}"));
        }
        Some(whole)
    }

    /// A few preads at random offsets of a handle whose size is `size`.
    fn preads(&mut self, client: usize, fd: u64, path: &str, size: usize) {
        for _ in 0..self.rng.below(3) {
            let off = self.rng.below(size + 100);
            let len = self.rng.write_len();
            let mut buf = vec![0xa5u8; len];
            let result = self.clients[client].pread(fd, &mut buf, off as u64);
            match (
                self.judge(path, &format!("pread {off}+{len}"), &result),
                result,
            ) {
                (Outcome::Ok, Ok(n)) => {
                    if n != len.min(size.saturating_sub(off)) {
                        self.violation(path, &format!("pread returned {n} bytes; size {size}"));
                    }
                    self.tally.bytes_checked += n;
                    if let Err(e) = self.model.files[path].content.check(&buf[..n], off) {
                        self.violation(path, &format!("pread returned wrong bytes: {e}"));
                    }
                }
                (Outcome::Unreachable, _) => return self.read_unavailable(path, "pread"),
                (o, r) => self.violation(path, &format!("pread: {o:?} {r:?}")),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Operations on the namespace

impl Soak {
    /// Truncate to a random size, mostly shorter.
    fn op_truncate(&mut self) {
        let Some(path) = self.pick_file(true, false) else {
            return self.op_readdir();
        };
        let client = self.rng.below(CLIENTS);
        let max = self.model.files[&path].content.max_size();
        let size = if max > 0 && self.rng.percent(60) {
            self.rng.below(max)
        } else {
            self.rng.below(MAX_EXTENT)
        };
        self.log_op("truncate", client, &format!("{path} to {size}"));
        let exists = self.model.files[&path].exists;
        let result = self.clients[client].truncate(&path, size as u64);
        match self.judge(&path, "truncate", &result) {
            Outcome::Ok if exists == Exists::No => {
                self.violation(&path, "truncated a file the model says does not exist")
            }
            Outcome::Ok => {
                let file = self.model.file(&path);
                file.content.truncated(size);
                file.exists = Exists::Yes;
            }
            Outcome::NotFound if exists == Exists::Yes => {
                self.violation(&path, "ENOENT truncating a file the model says exists")
            }
            Outcome::NotFound | Outcome::Unreachable if exists != Exists::No => {
                self.model.file(&path).content.truncate_failed(size)
            }
            Outcome::NotFound | Outcome::Unreachable => {}
            Outcome::Exists => self.violation(&path, "EEXIST from truncate"),
        }
    }

    /// Rename a file to another file path (replacing it if it exists).
    fn op_rename(&mut self) {
        let (Some(from), Some(to)) = (self.pick_file(true, false), self.pick_file(false, false))
        else {
            return self.op_readdir();
        };
        let client = self.rng.below(CLIENTS);
        self.log_op("rename", client, &format!("{from} -> {to}"));
        if from == to {
            return self.note(" (same path: skipped)");
        }
        let from_exists = self.model.files[&from].exists;
        let to_parent = self.model.dir(parent(&to));
        let result = self.clients[client].rename(&from, &to);
        let nothing = from_exists == Exists::No || to_parent == Exists::No;
        match self.judge(&from, "rename", &result) {
            Outcome::Ok if nothing => {
                self.violation(&from, "a rename the model rules out succeeded")
            }
            Outcome::Ok => {
                let moved = self.model.files[&from].content.clone();
                *self.model.file(&to) = FileState {
                    exists: Exists::Yes,
                    content: moved,
                };
                *self.model.file(&from) = FileState {
                    exists: Exists::No,
                    content: Content::empty(),
                };
            }
            Outcome::NotFound | Outcome::Unreachable if nothing => {}
            Outcome::NotFound if from_exists == Exists::Yes && to_parent == Exists::Yes => {
                self.violation(&from, "ENOENT renaming a file the model says exists")
            }
            Outcome::NotFound | Outcome::Unreachable => self.rename_failed(&from, &to),
            Outcome::Exists => self.violation(&from, "EEXIST from rename"),
        }
    }

    /// A rename that failed: both paths may exist, the destination with either content,
    /// and both are frozen (they may name one file).
    fn rename_failed(&mut self, from: &str, to: &str) {
        let source = self.model.files[from].content.clone();
        let dst = self.model.file(to);
        if dst.exists == Exists::No {
            dst.content = source;
        } else {
            dst.content.merge(&source);
        }
        dst.exists = Exists::Maybe;
        self.model.file(from).exists = Exists::Maybe;
        self.model.frozen.insert(from.to_string(), to.to_string());
        self.model.frozen.insert(to.to_string(), from.to_string());
        self.note(" (frozen)");
    }

    fn op_unlink(&mut self) {
        let Some(path) = self.pick_file(true, true) else {
            return self.op_readdir();
        };
        let client = self.rng.below(CLIENTS);
        self.log_op("unlink", client, &path);
        self.unlink_checked(client, &path);
    }

    fn unlink_checked(&mut self, client: usize, path: &str) {
        let exists = self.model.files[path].exists;
        let result = self.clients[client].unlink(path);
        let gone = FileState {
            exists: Exists::No,
            content: Content::empty(),
        };
        match self.judge(path, "unlink", &result) {
            Outcome::Ok if exists == Exists::No => {
                self.violation(path, "unlinked a file the model says does not exist")
            }
            Outcome::Ok => {
                *self.model.file(path) = gone;
            }
            Outcome::NotFound if exists == Exists::Yes => {
                self.violation(path, "ENOENT unlinking a file the model says exists")
            }
            // With every server up, the removal reached every replica of the record.
            Outcome::NotFound if self.fault.is_none() => *self.model.file(path) = gone,
            Outcome::NotFound => {}
            Outcome::Unreachable if exists == Exists::Yes => {
                self.model.file(path).exists = Exists::Maybe
            }
            Outcome::Unreachable => {}
            Outcome::Exists => self.violation(path, "EEXIST from unlink"),
        }
    }

    fn op_mkdir(&mut self) {
        let client = self.rng.below(CLIENTS);
        let dir = *self.rng.pick(&DIRS);
        self.log_op("mkdir", client, dir);
        let (exists, parent_exists) = (self.model.dir(dir), self.model.dir(parent(dir)));
        let result = self.clients[client].mkdir(dir, 0o755);
        let state = match self.judge(dir, "mkdir", &result) {
            Outcome::Ok if exists == Exists::Yes || parent_exists == Exists::No => {
                self.violation(dir, "a mkdir the model rules out succeeded")
            }
            Outcome::Ok => Exists::Yes,
            Outcome::Exists if exists == Exists::No => {
                self.violation(dir, "EEXIST for a directory the model says does not exist")
            }
            Outcome::NotFound if parent_exists == Exists::Yes => {
                self.violation(dir, "ENOENT making a directory whose parent exists")
            }
            Outcome::Exists => exists,
            Outcome::NotFound if self.fault.is_none() => exists,
            // The record made before the parent check failed may stay.
            Outcome::NotFound | Outcome::Unreachable if exists == Exists::No => Exists::Maybe,
            Outcome::NotFound | Outcome::Unreachable => exists,
        };
        self.model.dirs.insert(dir.to_string(), state);
    }

    fn op_readdir(&mut self) {
        let client = self.rng.below(CLIENTS);
        let dir = if self.rng.percent(30) {
            "/"
        } else {
            *self.rng.pick(&DIRS)
        };
        self.log_op("readdir", client, dir);
        self.readdir_checked(client, dir);
    }

    /// Lists `dir` and checks the names: every name the model says exists, none it says
    /// is gone, and either way for the uncertain ones.
    fn readdir_checked(&mut self, client: usize, dir: &str) {
        let exists = self.model.dir(dir);
        let result = self.clients[client].readdir(dir);
        match self.judge(dir, "readdir", &result) {
            Outcome::Ok if exists == Exists::No => {
                self.violation(dir, "listed a directory the model says does not exist")
            }
            Outcome::Ok => {}
            Outcome::NotFound | Outcome::Unreachable if exists == Exists::Yes => self.violation(
                dir,
                "listing a directory that exists failed (one server faulty at most)",
            ),
            Outcome::NotFound | Outcome::Unreachable => return,
            Outcome::Exists => self.violation(dir, "EEXIST from readdir"),
        }
        let listed: BTreeSet<String> = result
            .expect("listed")
            .into_iter()
            .map(|e| e.name)
            .collect();
        self.note(format!(" {} names", listed.len()));
        let model = self.model.children(dir);
        for (name, exists) in &model {
            let shown = listed.contains(name);
            if (*exists == Exists::Yes && !shown) || (*exists == Exists::No && shown) {
                self.violation(
                    &format!("{}/{name}", dir.trim_end_matches('/')),
                    &format!("readdir {dir} lists {listed:?}: {name} is {exists:?} in the model"),
                );
            }
        }
        if let Some(stray) = listed.iter().find(|n| !model.contains_key(*n)) {
            self.violation(
                dir,
                &format!("readdir {dir} lists {stray}, which no call made"),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Faults

impl Soak {
    /// Starts a fault when one is due, or clears the one under way when its time is up;
    /// checks that no server died on its own.
    fn faults(&mut self) {
        for i in 0..SERVERS {
            let faulty = self.fault.is_some_and(|f| f.server == i);
            if !faulty && !self.cluster.is_running(i) {
                self.violation("/", &format!("server {i} exited on its own"));
            }
        }
        if let Some(fault) = self.fault {
            if self.step >= fault.until {
                self.clear_fault();
                self.next_fault = self.step + self.rng.range(4, 20);
            }
            return;
        }
        if self.step < self.next_fault {
            return;
        }
        let server = self.rng.below(SERVERS);
        let kind = *self
            .rng
            .pick(&[FaultKind::Kill, FaultKind::Stop, FaultKind::Term]);
        // A stopped server costs every call to it the RPC timeout: keep those short.
        let until = self.step
            + match kind {
                FaultKind::Stop => self.rng.range(1, 4),
                FaultKind::Kill | FaultKind::Term => self.rng.range(2, 12),
            };
        self.log
            .push(format!("-- {kind:?} node{server} until #{until}"));
        *self.tally.faults.entry(format!("{kind:?}")).or_default() += 1;
        match kind {
            FaultKind::Kill => self.cluster.kill(server),
            FaultKind::Stop => self.cluster.signal(server, "STOP"),
            FaultKind::Term => {
                if !self.cluster.stop(server) {
                    self.violation("/", &format!("server {server} did not exit 0 on SIGTERM"));
                }
            }
        }
        self.fault = Some(Fault {
            kind,
            server,
            until,
        });
    }

    fn clear_fault(&mut self) {
        let Some(fault) = self.fault.take() else {
            return;
        };
        match fault.kind {
            FaultKind::Stop => self.cluster.signal(fault.server, "CONT"),
            FaultKind::Kill | FaultKind::Term => self.cluster.restart(fault.server),
        }
        self.log.push(format!("-- node{} back", fault.server));
        self.settle();
    }

    /// Waits (bounded) until every server answers a client of its own (so a resumed
    /// server has worked off what it received while stopped), without touching the
    /// clients under test: their stale connections are part of what is tested.
    fn settle(&mut self) {
        let probe = self.cluster.client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answers = probe.block_on(probe.client().server_stats());
            if answers.iter().all(|(_, r)| r.is_ok()) {
                return;
            }
            if Instant::now() > deadline {
                self.violation("/", "a server did not answer 30 s after its fault cleared");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

// ---------------------------------------------------------------------------------------
// The run and the final checks

impl Soak {
    fn run(&mut self) {
        self.log.push("setup: mkdir /a".into());
        self.clients[0].mkdir("/a", 0o755).expect("mkdir /a");
        self.model.dirs.insert("/a".into(), Exists::Yes);
        for step in 0..self.ops {
            self.step = step;
            self.faults();
            self.one_op();
            self.model.thaw();
        }
        self.step = self.ops;
        self.clear_fault();
        self.final_checks();
    }

    /// With every server up: every path read and every directory listed by a fresh
    /// client, the space held bounded, then everything removed and nothing left.
    fn final_checks(&mut self) {
        self.clients.push(self.cluster.client());
        let client = self.clients.len() - 1;
        let paths: Vec<String> = self.model.files.keys().cloned().collect();
        for path in &paths {
            self.log.push(format!("final: read {path}"));
            self.read_and_check(client, path);
        }
        for dir in std::iter::once("/").chain(DIRS) {
            self.log.push(format!("final: readdir {dir}"));
            self.readdir_checked(client, dir);
        }
        self.check_usage(client);
        for path in &paths {
            if self.model.files[path].exists != Exists::No {
                self.log.push(format!("final: unlink {path}"));
                self.unlink_checked(client, path);
            }
        }
        for dir in DIRS.iter().rev() {
            self.log.push(format!("final: rmdir {dir}"));
            let exists = self.model.dir(dir);
            let result = self.clients[client].rmdir(dir);
            match (self.judge(dir, "rmdir", &result), exists) {
                (Outcome::Ok, Exists::Yes | Exists::Maybe)
                | (Outcome::NotFound, Exists::No | Exists::Maybe) => {}
                (o, e) => self.violation(dir, &format!("rmdir: {o:?}; the model says {e:?}")),
            }
        }
        self.wait_empty(client);
    }

    /// The servers hold no more than two copies of what the model's files may hold
    /// (deleted files' chunks go at once or at the next orphan sweep: waited for).
    fn check_usage(&mut self, client: usize) {
        let need: usize = self
            .model
            .files
            .values()
            .filter(|f| f.exists != Exists::No)
            .map(|f| f.content.extent())
            .sum();
        let bound = 2 * need as u64;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let used: u64 = common::files::stats(&self.clients[client])
                .iter()
                .map(|s| s.used_bytes)
                .sum();
            if used <= bound {
                self.tally.held_at_end = (used, bound);
                return;
            }
            if Instant::now() > deadline {
                self.violation(
                    "/",
                    &format!("the servers hold {used} bytes; the model's files need at most {bound} (two copies)"),
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits (bounded: orphan sweeps run every second) until no server holds a record,
    /// a chunk or a byte.
    fn wait_empty(&mut self, client: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let held: Vec<(u64, u64, u64)> = common::files::stats(&self.clients[client])
                .iter()
                .map(|s| (s.metadata_records, s.chunks, s.used_bytes))
                .collect();
            if held.iter().all(|&h| h == (0, 0, 0)) {
                return;
            }
            if Instant::now() > deadline {
                self.violation(
                    "/",
                    &format!("after removing everything the servers still hold (records, chunks, bytes) {held:?}"),
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// `name` from the environment, parsed, or `default`.
fn env_or<T: std::str::FromStr>(name: &str, default: impl FnOnce() -> T) -> T {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
        Err(_) => default(),
    }
}

/// The seed `make test` runs.
const DEFAULT_SEED: u64 = 1;

#[test]
fn random_operations_under_faults_match_the_model() {
    // A fixed seed by default, so `make test` is the same run every time; any other seed
    // (a time-based one for exploring: `BENCHFS_SOAK_SEED=$(date +%s%N)`) on demand.
    let seed = env_or("BENCHFS_SOAK_SEED", || DEFAULT_SEED);
    let ops = env_or("BENCHFS_SOAK_OPS", || DEFAULT_OPS);
    println!(
        "soak: seed {seed}, {ops} operations; replay: BENCHFS_SOAK_SEED={seed} BENCHFS_SOAK_OPS={ops} cargo test -p benchfs --test soak -- --nocapture"
    );
    let started = Instant::now();
    let mut soak = Soak::new(seed, ops);
    soak.run();
    println!(
        "soak: seed {seed} passed in {:.1} s: {:?}",
        started.elapsed().as_secs_f64(),
        soak.tally
    );
}

// ---------------------------------------------------------------------------------------
// Reproductions of the bugs the soak found (see "Known bugs" in the module documentation).

#[test]
fn a_file_with_two_names_keeps_its_chunks_when_one_is_unlinked() {
    // Regression, found by the soak (seeds 2, 3, 9 at 350 operations): the other name
    // read zeros.
    // A rename failed after the new record was written and before the old one was gone
    // from every replica, and both names held the file (a failed rename is now undone,
    // but an undo can fail too; here the second name is written by hand). Unlinking one
    // name freed the file's chunks on every server, and the other read zeros.
    use benchfs::placement::PlacementKey;
    let cluster = Cluster::start(ClusterSpec {
        replicas: 2,
        ..ClusterSpec::default()
    });
    let fs = cluster.client();
    let data = pattern(3 * C, 9);
    common::files::write_file(&fs, "/a", &data);
    let meta = fs.stat("/a").unwrap();
    let servers = fs.client().servers();
    let copies: Vec<_> = cluster
        .replicas_of(PlacementKey::Metadata("/b"))
        .into_iter()
        .map(|i| servers[i].addr)
        .collect();
    common::rpc::insert_record(&copies, "/b", meta);
    let reader = cluster.client();
    assert!(
        common::files::read_file(&reader, "/b") == data,
        "/b names the file"
    );
    reader.unlink("/b").unwrap();
    let got = common::files::read_file(&reader, "/a");
    assert!(
        got == data,
        "/a read {} bytes, first wrong at {:?} (zeros: its chunks were freed)",
        got.len(),
        got.iter().zip(&data).position(|(a, b)| a != b)
    );
}

#[test]
fn the_sweep_keeps_a_file_whose_only_record_is_on_a_stopped_server() {
    // Regression, found by the soak (seed 1000, 2000 operations, at operation #1700, before the fix
    // of bug 2 changed that run's timing).
    // An unlink fails on one replica of the record (killed): the other replica deleted
    // its copy and holds a tombstone, the killed one comes back with the record. Later
    // that server is shut down cleanly (SIGTERM), which withdraws it from the registry.
    // Every other server's orphan sweep then asks only the servers in the registry,
    // finds the tombstone and no record, and frees the file's chunks: when the server is
    // back, the file it names reads zeros.
    use benchfs::placement::PlacementKey;
    let mut cluster = Cluster::start(ClusterSpec {
        backend: "file",
        replicas: 2,
        ..ClusterSpec::short_timeout()
    });
    let fs = cluster.client();
    let data = pattern(8 * C, 12);
    common::files::write_file(&fs, "/f", &data);
    // The record's first replica (the one reads ask first) misses the unlink.
    let owner = cluster.replicas_of(PlacementKey::Metadata("/f"))[0];
    cluster.kill(owner);
    assert!(fs.unlink("/f").is_err(), "the record's owner was down");
    cluster.restart(owner);
    assert!(
        common::files::read_file(&cluster.client(), "/f") == data,
        "the owner still has the record, and every chunk is there"
    );
    assert!(cluster.stop(owner));
    // Bounded wait (sweeps run every second) for the other servers to free chunks.
    let live_chunks = || -> u64 {
        let answers = fs.block_on(fs.client().server_stats());
        answers
            .into_iter()
            .filter_map(|(_, r)| r.ok())
            .map(|s| s.chunks)
            .sum()
    };
    let before = live_chunks();
    let deadline = Instant::now() + Duration::from_secs(10);
    while live_chunks() == before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster.restart(owner);
    // Either the unlink happened (ENOENT) or it did not (the whole file); never zeros.
    match common::files::try_read_file(&cluster.client(), "/f") {
        Err(e) => assert_eq!(e.errno(), libc::ENOENT, "{e}"),
        Ok(got) => assert!(
            got == data,
            "/f read {} bytes, first wrong at {:?} (zeros: its chunks were swept)",
            got.len(),
            got.iter().zip(&data).position(|(a, b)| a != b)
        ),
    }
}

#[test]
fn a_cut_removes_chunks_past_the_published_size() {
    // Regression, found by the soak (seeds 5, 10 and 11 of 350 operations).
    // A writer that never closes leaves chunks past the file's published size (0 here).
    // Truncate and O_TRUNC cut only the chunks below the published size, so those
    // survived, and when the file grew again its hole read the writer's bytes.
    let cluster = Cluster::start(ClusterSpec {
        replicas: 2,
        ..ClusterSpec::default()
    });
    let data = pattern(5 * C + 100, 13);
    for how in ["truncate to 0", "open with O_TRUNC"] {
        let writer = cluster.client();
        let fd = writer
            .open("/f", OpenFlags::WRITE | OpenFlags::CREATE, 0o644)
            .unwrap();
        writer.write(fd, &data).unwrap();
        // The writer dies without closing: its size is never published.
        drop(writer);
        let fs = cluster.client();
        if how == "truncate to 0" {
            fs.truncate("/f", 0).unwrap();
        } else {
            let fd = fs
                .open("/f", OpenFlags::WRITE | OpenFlags::TRUNC, 0o644)
                .unwrap();
            fs.close(fd).unwrap();
        }
        fs.truncate("/f", data.len() as u64).unwrap();
        let got = common::files::read_file(&fs, "/f");
        assert_eq!(got.len(), data.len(), "{how}");
        assert!(
            got.iter().all(|&b| b == 0),
            "{how}: the hole read old bytes, first at {:?}",
            got.iter().position(|&b| b != 0)
        );
        fs.unlink("/f").unwrap();
    }
}
