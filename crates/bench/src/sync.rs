//! Ranks and barriers. A rank learns its number and the job's size from its launcher
//! (mpirun, srun, or `benchfs bench` starting local processes); ranks meet at barriers
//! made of files in a directory they all see (the registry directory of the cluster, or a
//! run directory on one machine), so no MPI library is needed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{io_error, BenchError, Result};

/// Environment variables naming the rank and the size, per launcher, tried in order:
/// `benchfs bench`'s own processes, Open MPI, PMIx, PMI (MPICH, Intel MPI), Slurm.
const LAUNCHERS: [(&str, &str); 5] = [
    ("BENCHFS_BENCH_RANK", "BENCHFS_BENCH_SIZE"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("PMIX_RANK", "PMIX_SIZE"),
    ("PMI_RANK", "PMI_SIZE"),
    ("SLURM_PROCID", "SLURM_NTASKS"),
];

/// This process's place in the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranks {
    /// This process, from 0.
    pub rank: u32,
    /// Processes in the job.
    pub size: u32,
}

impl Ranks {
    /// The rank and size the launcher set, or `None` when no launcher set them.
    pub fn from_env() -> Result<Option<Ranks>> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`Ranks::from_env`] over any lookup (for tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<Ranks>> {
        for (rank_key, size_key) in LAUNCHERS {
            let (Some(rank), Some(size)) = (get(rank_key), get(size_key)) else {
                continue;
            };
            let parse = |key: &str, v: &str| {
                v.trim()
                    .parse::<u32>()
                    .map_err(|_| BenchError(format!("{key}={v:?} is not a number")))
            };
            let ranks = Ranks {
                rank: parse(rank_key, &rank)?,
                size: parse(size_key, &size)?,
            };
            if ranks.size == 0 || ranks.rank >= ranks.size {
                return Err(format!("{rank_key}={rank} is not below {size_key}={size}").into());
            }
            return Ok(Some(ranks));
        }
        Ok(None)
    }
}

/// Barriers through files in one directory: each rank makes `b<k>.<rank>`; rank 0 waits
/// for all of them and makes `b<k>.go`, which the others wait for. A rank that fails
/// writes `abort` with its reason, and every waiting rank stops with that reason.
pub struct FileBarrier {
    dir: PathBuf,
    ranks: Ranks,
    next: u64,
    timeout: Duration,
}

/// Polls sleep this long at first, then [`POLL_SLOW`] once a wait has lasted
/// [`POLL_FAST_FOR`], so a barrier releases within a fraction of a millisecond on one
/// machine without spinning through a long phase of another rank.
const POLL_FAST: Duration = Duration::from_micros(100);
const POLL_FAST_FOR: Duration = Duration::from_millis(50);
const POLL_SLOW: Duration = Duration::from_millis(2);

impl FileBarrier {
    /// Barriers in `dir` (created if missing) for `ranks`, each waiting at most `timeout`.
    pub fn new(dir: &Path, ranks: Ranks, timeout: Duration) -> Result<FileBarrier> {
        std::fs::create_dir_all(dir).map_err(|e| io_error("create", dir, e))?;
        if ranks.rank == 0 {
            // Left by an earlier run in this directory, they would end a wait at once.
            for r in 1..ranks.size {
                let _ = std::fs::remove_file(dir.join(format!("gone.{r}")));
            }
        }
        Ok(FileBarrier {
            dir: dir.to_path_buf(),
            ranks,
            next: 0,
            timeout,
        })
    }

    fn touch(&self, name: &str) -> Result<()> {
        let path = self.dir.join(name);
        std::fs::write(&path, b"").map_err(|e| io_error("create", &path, e))
    }

    fn abort_reason(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("abort")).ok()
    }

    /// Says that this rank is done with the run's files, whether it finished or failed
    /// (best effort: a rank that cannot say so costs rank 0 a wait in
    /// [`FileBarrier::wait_until_others_left`]).
    pub fn leave(&self) {
        let _ = self.touch(&format!("gone.{}", self.ranks.rank));
    }

    /// Rank 0: waits, at most `limit`, until every other rank has left, so that what it
    /// removes after a failure is not written again behind it.
    pub fn wait_until_others_left(&self, limit: Duration) {
        let started = Instant::now();
        for r in 1..self.ranks.size {
            let gone = self.dir.join(format!("gone.{r}"));
            while !gone.exists() && started.elapsed() < limit {
                std::thread::sleep(POLL_SLOW);
            }
        }
    }

    /// Tells every rank to stop, with `reason`.
    pub fn abort(&self, reason: &str) {
        let _ = std::fs::write(
            self.dir.join("abort"),
            format!("rank {}: {reason}", self.ranks.rank),
        );
    }

    fn wait_for(&self, name: &str, started: Instant) -> Result<()> {
        let path = self.dir.join(name);
        loop {
            if path.exists() {
                return Ok(());
            }
            if let Some(reason) = self.abort_reason() {
                return Err(format!("stopped: {reason}").into());
            }
            crate::run::check_interrupted()?;
            let waited = started.elapsed();
            if waited > self.timeout {
                return Err(format!(
                    "rank {} waited {} s at a barrier for {}; a rank is gone or stuck",
                    self.ranks.rank,
                    waited.as_secs(),
                    path.display()
                )
                .into());
            }
            std::thread::sleep(if waited < POLL_FAST_FOR {
                POLL_FAST
            } else {
                POLL_SLOW
            });
        }
    }

    /// Waits until every rank has reached this barrier.
    pub fn wait(&mut self) -> Result<()> {
        let k = self.next;
        self.next += 1;
        let started = Instant::now();
        if self.ranks.rank != 0 {
            self.touch(&format!("b{k}.{}", self.ranks.rank))?;
            return self.wait_for(&format!("b{k}.go"), started);
        }
        for r in 1..self.ranks.size {
            self.wait_for(&format!("b{k}.{r}"), started)?;
        }
        self.touch(&format!("b{k}.go"))?;
        if k > 0 {
            // Every rank has left barrier k-1: its files can go.
            for r in 1..self.ranks.size {
                let _ = std::fs::remove_file(self.dir.join(format!("b{}.{r}", k - 1)));
            }
        }
        Ok(())
    }

    /// The directory the barriers use; ranks leave their results in it too.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn launchers_are_read_in_order_and_checked() {
        let slurm = env(&[("SLURM_PROCID", "3"), ("SLURM_NTASKS", "8")]);
        assert_eq!(
            Ranks::from_lookup(slurm).unwrap(),
            Some(Ranks { rank: 3, size: 8 })
        );
        let both = env(&[
            ("SLURM_PROCID", "3"),
            ("SLURM_NTASKS", "8"),
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
        ]);
        assert_eq!(
            Ranks::from_lookup(both).unwrap(),
            Some(Ranks { rank: 1, size: 2 })
        );
        assert_eq!(Ranks::from_lookup(env(&[])).unwrap(), None);
        let bad = env(&[("PMI_RANK", "4"), ("PMI_SIZE", "4")]);
        assert!(Ranks::from_lookup(bad)
            .unwrap_err()
            .0
            .contains("PMI_RANK=4"));
        let junk = env(&[("PMI_RANK", "x"), ("PMI_SIZE", "4")]);
        assert!(Ranks::from_lookup(junk).is_err());
    }

    #[test]
    fn threads_meet_at_barriers_and_an_abort_stops_them() {
        let dir = tempfile::tempdir().unwrap();
        let size = 4;
        let arrived = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let handles: Vec<_> = (0..size)
            .map(|rank| {
                let dir = dir.path().to_path_buf();
                let arrived = arrived.clone();
                std::thread::spawn(move || {
                    let mut b =
                        FileBarrier::new(&dir, Ranks { rank, size }, Duration::from_secs(10))
                            .unwrap();
                    for round in 1..=3u32 {
                        std::thread::sleep(Duration::from_millis(u64::from(rank) * 5));
                        arrived.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        b.wait().unwrap();
                        let seen = arrived.load(std::sync::atomic::Ordering::SeqCst);
                        assert!(seen >= round * size, "left barrier {round} early: {seen}");
                        b.wait().unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let mut lone = FileBarrier::new(
            dir.path(),
            Ranks { rank: 1, size: 2 },
            Duration::from_secs(10),
        )
        .unwrap();
        lone.next = 100;
        FileBarrier::new(
            dir.path(),
            Ranks { rank: 0, size: 2 },
            Duration::from_secs(1),
        )
        .unwrap()
        .abort("disk full");
        let err = lone.wait().unwrap_err().0;
        assert!(err.contains("rank 0: disk full"), "{err}");
    }
}
