//! The process-wide state: what [`crate::benchfs_init`] read (configuration, servers,
//! secret) shared read-only by every thread's client, and the settings made before it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use benchfs_client::{ApiError, FsClient};
use benchfs_config::registry::{RegistryError, ServerEntry};
use benchfs_config::{secret, ServerConfig};
use benchfs_proto::limits;

use crate::thread::Failure;

/// What every thread's client is made from.
pub(crate) struct Settings {
    /// Bumped by every init, so a thread can tell its client is from an older one.
    pub generation: u64,
    pub config: ServerConfig,
    pub servers: Vec<ServerEntry>,
    pub secret: Vec<u8>,
    /// The process's file mode creation mask at init, which creates and mkdirs apply as
    /// open(2) and mkdir(2) do (read once: reading it costs a file read, and setting it to
    /// read it would race other threads).
    pub umask: u32,
}

/// Settings made by the setters before init; they win over the environment.
#[derive(Default)]
struct Overrides {
    chunk_size: Option<u64>,
    rdma_threshold: Option<u64>,
    rpc_timeout: Option<Duration>,
}

static CURRENT: RwLock<Option<Arc<Settings>>> = RwLock::new(None);
static OVERRIDES: Mutex<Overrides> = Mutex::new(Overrides {
    chunk_size: None,
    rdma_threshold: None,
    rpc_timeout: None,
});
static GENERATION: AtomicU64 = AtomicU64::new(0);
/// The chunk size of new files (0: the servers'); read at every open, so it may change
/// at any time.
static CHUNK_SIZE: AtomicU64 = AtomicU64::new(0);

/// A poisoned lock only means a thread panicked while holding it (the panic was caught
/// and reported); the data under it is whole, so go on with it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The settings of the current init, if any.
pub(crate) fn current() -> Option<Arc<Settings>> {
    CURRENT.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The chunk size new files get (0: the servers').
pub(crate) fn chunk_size() -> u64 {
    CHUNK_SIZE.load(Ordering::Relaxed)
}

fn einval(message: String) -> Failure {
    Failure::new(libc::EINVAL, message)
}

/// An integer setting from the environment, if set.
fn env_u64(var: &str) -> Result<Option<u64>, Failure> {
    match std::env::var(var) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(v)) => Err(einval(format!("{var}={v:?} is not UTF-8"))),
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| einval(format!("{var}={v:?} is not a non-negative integer ({e})"))),
    }
}

/// Reads everything a client needs and makes it current.
pub(crate) fn init(registry: Option<&str>) -> Result<u64, Failure> {
    let mut config = match std::env::var_os("BENCHFS_CONFIG") {
        Some(file) if !file.is_empty() => ServerConfig::from_file(&file),
        _ => ServerConfig::from_env(),
    }
    .map_err(|e| einval(e.to_string()))?;
    let registry = match registry {
        Some(dir) => Some(PathBuf::from(dir)),
        None => std::env::var_os("BENCHFS_REGISTRY")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from),
    };
    if let Some(dir) = registry {
        config.network.registry_dir = dir;
    }
    let env_chunk_size = env_u64("BENCHFS_CHUNK_SIZE")?;
    if let Some(bytes) = env_chunk_size {
        check_chunk_size(bytes)?;
    }
    if let Some(bytes) = env_u64("BENCHFS_RDMA_THRESH")? {
        config.network.rendezvous_threshold_bytes = bytes;
    }
    if let Some(ms) = env_u64("BENCHFS_RPC_TIMEOUT_MSEC")? {
        config.network.rpc_timeout = Duration::from_millis(ms);
    }
    {
        let overrides = lock(&OVERRIDES);
        let chunk_size = overrides.chunk_size.or(env_chunk_size).unwrap_or(0);
        CHUNK_SIZE.store(chunk_size, Ordering::Relaxed);
        if let Some(bytes) = overrides.rdma_threshold {
            config.network.rendezvous_threshold_bytes = bytes;
        }
        if let Some(timeout) = overrides.rpc_timeout {
            config.network.rpc_timeout = timeout;
        }
    }
    config
        .validate_values()
        .map_err(|e| einval(e.to_string()))?;
    let secret = match secret::secret_file(None) {
        Some(file) => secret::read_secret(&file).map_err(|e| {
            let errno = match &e {
                secret::SecretError::Io { source, .. } => source.raw_os_error(),
                _ => None,
            };
            Failure::new(errno.unwrap_or(libc::EACCES), e.to_string())
        })?,
        None => Vec::new(),
    };
    // No registry, or no server in it, is ENOENT: there is nothing to connect to. A
    // registry holding something other than servers' entries is EINVAL.
    let servers = FsClient::published_servers(&config.network.registry_dir).map_err(|e| {
        let errno = match &e {
            ApiError::NoServers { .. } => libc::ENOENT,
            ApiError::Registry(RegistryError::Malformed { .. }) => libc::EINVAL,
            ApiError::Registry(RegistryError::Io { source, .. }) => {
                source.raw_os_error().unwrap_or(libc::EIO)
            }
            _ => e.errno(),
        };
        Failure::new(errno, e.to_string())
    })?;
    let generation = GENERATION.fetch_add(1, Ordering::Relaxed) + 1;
    *CURRENT.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(Settings {
        generation,
        config,
        servers,
        secret,
        umask: process_umask(),
    }));
    Ok(generation)
}

/// Forgets the settings of init `generation` if they are still the current ones (its
/// caller could not connect with them): the library is then as before any init, and
/// threads' clients notice at their next call.
pub(crate) fn forget(generation: u64) {
    let mut current = CURRENT.write().unwrap_or_else(|e| e.into_inner());
    if current.as_ref().is_some_and(|s| s.generation == generation) {
        *current = None;
        GENERATION.fetch_add(1, Ordering::Relaxed);
    }
}

/// This process's umask (`Umask:` of /proc/self/status, Linux >= 4.7); none if unreadable.
fn process_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
            u32::from_str_radix(line.trim(), 8).ok()
        })
        .map_or(0, |mask| mask & 0o777)
}

/// Forgets the current settings and the setters' values; threads' clients notice at
/// their next call.
pub(crate) fn term() {
    *CURRENT.write().unwrap_or_else(|e| e.into_inner()) = None;
    *lock(&OVERRIDES) = Overrides::default();
    CHUNK_SIZE.store(0, Ordering::Relaxed);
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

fn check_chunk_size(bytes: u64) -> Result<(), Failure> {
    if bytes == 0 || limits::is_chunk_size(bytes, limits::CHUNK_SIZE_MAX) {
        Ok(())
    } else {
        Err(einval(format!(
            "chunk size {bytes}: a power of two from {} to {} bytes, or 0 for the servers'",
            limits::CHUNK_SIZE_MIN,
            limits::CHUNK_SIZE_MAX
        )))
    }
}

pub(crate) fn set_chunk_size(bytes: u64) -> Result<(), Failure> {
    check_chunk_size(bytes)?;
    lock(&OVERRIDES).chunk_size = Some(bytes);
    CHUNK_SIZE.store(bytes, Ordering::Relaxed);
    Ok(())
}

fn before_init(what: &str) -> Result<(), Failure> {
    if current().is_some() {
        return Err(Failure::new(
            libc::EBUSY,
            format!("{what} is fixed once benchfs_init has connected; set it before"),
        ));
    }
    Ok(())
}

pub(crate) fn set_rdma_threshold(bytes: u64) -> Result<(), Failure> {
    before_init("the RDMA threshold")?;
    let mut probe = ServerConfig::default();
    probe.network.rendezvous_threshold_bytes = bytes;
    probe.validate_values().map_err(|e| einval(e.to_string()))?;
    lock(&OVERRIDES).rdma_threshold = Some(bytes);
    Ok(())
}

pub(crate) fn set_rpc_timeout_msec(msec: i64) -> Result<(), Failure> {
    before_init("the RPC timeout")?;
    let msec = u64::try_from(msec).map_err(|_| einval(format!("timeout {msec} ms")))?;
    let mut probe = ServerConfig::default();
    probe.network.rpc_timeout = Duration::from_millis(msec);
    probe.validate_values().map_err(|e| einval(e.to_string()))?;
    lock(&OVERRIDES).rpc_timeout = Some(Duration::from_millis(msec));
    Ok(())
}
