//! BenchFS as a FUSE file system (`benchfs mount`), so programs that cannot be relinked
//! use it through the kernel.
//!
//! Several threads serve `/dev/fuse` at once, each on its own cloned descriptor and with
//! its own BenchFS client. The kernel names files by node id; [`fs::BenchFuse`] keeps the
//! node id → path map and the open handles that every thread shares.

mod attr;
mod fs;
mod handles;
mod inodes;
mod signals;

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use benchfs_config::registry::ServerEntry;
use benchfs_config::ServerConfig;
use benchfs_proto::meta::Owner;
use fuser::{Config, MountOption, SessionACL};

pub use fs::BenchFuse;

/// Attribute and entry timeout when the configuration sets no cache lifetime.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// How file data meets the kernel's page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// No page cache: every read and write goes to the servers with the caller's size
    /// (`-o direct_io`, the default: fastest for large sequential I/O, see docs/fuse.md).
    Direct,
    /// Reads are cached and read ahead; writes go through at once (`-o kernel_cache`).
    Page,
    /// Reads cached, and writes gathered in the page cache until close or fsync
    /// (`-o writeback_cache`).
    Writeback,
}

/// What a mount needs: the servers, and how to present them.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Client configuration (timeouts, replicas, chunk size of new files).
    pub config: ServerConfig,
    /// The servers, read once from the registry and shared by the threads.
    pub servers: Vec<ServerEntry>,
    /// The job secret, if the servers ask for one.
    pub secret: Vec<u8>,
    /// Page cache use.
    pub cache: CacheMode,
    /// Threads serving the kernel, each with its own client.
    pub threads: usize,
    /// Largest write (and read-ahead) the kernel sends at once.
    pub max_write: u32,
    /// How long the kernel may keep a file's attributes.
    pub attr_timeout: Duration,
    /// How long the kernel may keep a name it looked up.
    pub entry_timeout: Duration,
    /// Let other users than the one who mounted in (`allow_other`).
    pub allow_other: bool,
    /// Mount read-only.
    pub read_only: bool,
    /// The cache option given so far, so that two that conflict are refused.
    cache_option: Option<&'static str>,
}

/// Why a mount could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MountError {
    /// An `-o` option this mount does not know or whose value is bad.
    #[error("mount option {option:?}: {reason}")]
    Option {
        /// The option as given.
        option: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A mount whose process died is still attached to the mount point.
    #[error(
        "{0} is a stale mount (its file system process is gone: transport endpoint is not \
         connected); clear it with `fusermount3 -u {0}` (or `umount -l {0}` as root) and mount again"
    )]
    Stale(String),
    /// The mount point is not an empty directory, or cannot be used.
    #[error("mount point {path}: {reason}")]
    MountPoint {
        /// The mount point.
        path: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The kernel or fusermount3 refused the mount, or the session failed.
    #[error("mount {path}: {source}")]
    Fuse {
        /// The mount point.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl Settings {
    /// Settings with the defaults: direct I/O, four threads, 1 MiB writes, and the
    /// configuration's cache lifetime (one second if it sets none) as both timeouts.
    pub fn new(config: ServerConfig, servers: Vec<ServerEntry>, secret: Vec<u8>) -> Settings {
        let timeout = match config.cache.cache_ttl_secs {
            0 => DEFAULT_TIMEOUT,
            s => Duration::from_secs(s),
        };
        let mut config = config;
        // The kernel caches names and attributes; a second, per-thread cache would let
        // one thread act on a directory another thread has since renamed.
        config.cache.metadata_cache_entries = 0;
        config.cache.chunk_cache_mb = 0;
        Settings {
            config,
            servers,
            secret,
            cache: CacheMode::Direct,
            threads: 4,
            max_write: 1 << 20,
            attr_timeout: timeout,
            entry_timeout: timeout,
            allow_other: false,
            read_only: false,
            cache_option: None,
        }
    }

    /// Applies comma-separated `-o` options: `direct_io`, `kernel_cache`,
    /// `writeback_cache`, `threads=N`, `max_write=BYTES`, `attr_timeout=SECS`,
    /// `entry_timeout=SECS`, `allow_other`, `ro`, `rw`.
    pub fn apply_options(&mut self, options: &str) -> Result<(), MountError> {
        for option in options.split(',').filter(|o| !o.is_empty()) {
            let (key, value) = match option.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (option, None),
            };
            let bad = |reason: &str| MountError::Option {
                option: option.to_string(),
                reason: reason.to_string(),
            };
            let cache = match (key, value) {
                ("direct_io", None) => Some(("direct_io", CacheMode::Direct)),
                ("kernel_cache", None) => Some(("kernel_cache", CacheMode::Page)),
                ("writeback_cache", None) => Some(("writeback_cache", CacheMode::Writeback)),
                _ => None,
            };
            if let Some((name, mode)) = cache {
                match self.cache_option.replace(name) {
                    Some(earlier) if earlier != name => {
                        return Err(bad(&format!(
                            "conflicts with {earlier}: a mount uses one cache mode"
                        )))
                    }
                    _ => self.cache = mode,
                }
                continue;
            }
            match (key, value) {
                ("allow_other", None) => self.allow_other = true,
                ("ro", None) => self.read_only = true,
                ("rw", None) => self.read_only = false,
                ("threads", Some(v)) => {
                    self.threads = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=64).contains(n))
                        .ok_or_else(|| bad("expected a thread count from 1 to 64"))?;
                }
                ("max_write", Some(v)) => {
                    self.max_write = v
                        .parse()
                        .ok()
                        .filter(|n: &u32| (4096..=16 << 20).contains(n) && n.is_power_of_two())
                        .ok_or_else(|| bad("expected a power of two from 4096 to 16 MiB"))?;
                }
                ("attr_timeout" | "entry_timeout", Some(v)) => {
                    let secs: f64 = v
                        .parse()
                        .ok()
                        .filter(|s: &f64| s.is_finite() && (0.0..=3600.0).contains(s))
                        .ok_or_else(|| bad("expected seconds from 0 to 3600"))?;
                    let t = Duration::from_secs_f64(secs);
                    if key == "attr_timeout" {
                        self.attr_timeout = t;
                    } else {
                        self.entry_timeout = t;
                    }
                }
                _ => return Err(bad("unknown option (see `benchfs mount --help`)")),
            }
        }
        Ok(())
    }
}

/// Checks that `mountpoint` can be mounted on: an existing directory, not a stale mount
/// left by a killed process (which gives "transport endpoint is not connected").
pub fn check_mountpoint(mountpoint: &Path) -> Result<(), MountError> {
    let shown = mountpoint.display().to_string();
    match std::fs::metadata(mountpoint) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(MountError::MountPoint {
            path: shown,
            reason: "not a directory".into(),
        }),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Err(MountError::Stale(shown)),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(MountError::MountPoint {
            path: shown,
            reason: "no such directory".into(),
        }),
        Err(e) => Err(MountError::MountPoint {
            path: shown,
            reason: e.to_string(),
        }),
    }
}

/// A mounted file system; [`Mount::run`] serves it until it is unmounted.
pub struct Mount {
    session: fuser::Session<BenchFuse>,
    mountpoint: PathBuf,
}

impl Mount {
    /// Mounts BenchFS at `mountpoint`. `owner` owns the root directory.
    pub fn new(mountpoint: &Path, settings: Settings, owner: Owner) -> Result<Mount, MountError> {
        check_mountpoint(mountpoint)?;
        let mut options = vec![
            MountOption::FSName("benchfs".into()),
            MountOption::Subtype("benchfs".into()),
            MountOption::DefaultPermissions,
            MountOption::NoDev,
            MountOption::NoSuid,
        ];
        options.push(if settings.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        });
        let mut config = Config::default();
        config.mount_options = options;
        config.acl = if settings.allow_other {
            SessionACL::All
        } else {
            SessionACL::Owner
        };
        config.n_threads = Some(settings.threads);
        config.clone_fd = true;
        let fs = BenchFuse::new(Arc::new(settings), owner);
        let notifier = fs.notifier_slot();
        let session =
            fuser::Session::new(fs, mountpoint, &config).map_err(|source| MountError::Fuse {
                path: mountpoint.display().to_string(),
                source,
            })?;
        // Set before the session serves its first request, so the slot is empty only here.
        let _ = notifier.set(session.notifier());
        Ok(Mount {
            session,
            mountpoint: mountpoint.to_path_buf(),
        })
    }

    /// Something that unmounts this file system from another thread (a signal handler
    /// thread), which ends [`Mount::run`].
    pub fn unmounter(&mut self) -> fuser::SessionUnmounter {
        self.session.unmount_callable()
    }

    /// Serves the kernel until the file system is unmounted (`fusermount3 -u`, `umount`)
    /// or the process gets SIGTERM, SIGINT or SIGHUP, which unmount it first.
    pub fn serve(mut self) -> Result<(), MountError> {
        let signals = signals::block_termination().map_err(|source| MountError::Fuse {
            path: self.mountpoint.display().to_string(),
            source,
        })?;
        let mut unmounter = self.unmounter();
        let mountpoint = self.mountpoint.clone();
        std::thread::Builder::new()
            .name("benchfs-signals".into())
            .spawn(move || {
                let mut tried = false;
                loop {
                    let signal = signals.wait();
                    tracing::info!(signal, "unmounting on a signal");
                    // fuser's unmounter gives up its mount at its first try, so a later
                    // one unmounts the path itself.
                    let unmounted = match std::mem::replace(&mut tried, true) {
                        false => unmounter.unmount(),
                        true => signals::unmount_path(&mountpoint),
                    };
                    match unmounted {
                        Ok(()) => return,
                        // Busy (a file open in it): the mount serves on, and the next
                        // signal tries again (one that ended this thread left the signals
                        // blocked: every later one was ignored, found by a hostile run).
                        Err(e) => tracing::error!(
                            error = %e,
                            mountpoint = %mountpoint.display(),
                            "unmount failed; still mounted, serving until the next signal or unmount"
                        ),
                    }
                }
            })
            .map_err(|source| MountError::Fuse {
                path: self.mountpoint.display().to_string(),
                source,
            })?;
        self.run()
    }

    /// Serves the kernel until the file system is unmounted.
    pub fn run(self) -> Result<(), MountError> {
        let path = self.mountpoint.display().to_string();
        self.session
            .run()
            .map_err(|source| MountError::Fuse { path, source })
    }
}
