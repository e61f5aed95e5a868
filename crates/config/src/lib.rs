//! BenchFS configuration and discovery: `benchfs.toml` (parsing, `BENCHFS_*` environment
//! overrides and validation) and the [`registry`] directory where servers publish their
//! addresses. Both servers and clients read them.
//!
//! The file is parsed into a raw, all-optional form with unknown keys rejected, overlaid
//! with environment variables, and then validated into [`ServerConfig`], whose fields are
//! typed and checked. Every error names the key it is about and the reason.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use benchfs_proto::limits;
pub use benchfs_store::{Backend, HugePages};

pub mod registry;
pub mod secret;

/// What went wrong while loading or validating a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file that was being read.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the wrong type.
    #[error("invalid config{}: {message}", origin.as_ref().map(|p| format!(" file {}", p.display())).unwrap_or_default())]
    Parse {
        /// The file being parsed, if the input came from a file.
        origin: Option<PathBuf>,
        /// The parser's message, which names the key and its line.
        message: String,
    },
    /// A `BENCHFS_*` environment variable could not be applied.
    #[error("environment variable {var}: {reason}")]
    Env {
        /// The variable's name.
        var: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A key has a value that parses but is not acceptable.
    #[error("config key {key}: {reason}")]
    Invalid {
        /// The key, as `section.key`.
        key: &'static str,
        /// Why the value was rejected.
        reason: String,
    },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// `storage.huge_pages`: `true`, `false` or `"auto"`.
fn huge_pages(value: toml::Value) -> Result<HugePages, ConfigError> {
    match value {
        toml::Value::Boolean(true) => Ok(HugePages::On),
        toml::Value::Boolean(false) => Ok(HugePages::Off),
        toml::Value::String(word) if word == "auto" => Ok(HugePages::Auto),
        other => Err(invalid(
            "storage.huge_pages",
            format!("{other} is not true, false or \"auto\""),
        )),
    }
}

/// Log verbosity of a server process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Normal operation messages.
    Info,
    /// Developer diagnostics.
    Debug,
    /// Everything, per request.
    Trace,
}

impl LogLevel {
    /// The level's lower-case name, as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

impl std::str::FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "error" => Ok(LogLevel::Error),
            "warn" | "warning" => Ok(LogLevel::Warn),
            "info" => Ok(LogLevel::Info),
            "debug" => Ok(LogLevel::Debug),
            "trace" => Ok(LogLevel::Trace),
            _ => Err(format!(
                "unknown log level {s:?}; expected error, warn, info, debug or trace"
            )),
        }
    }
}

/// The `[node]` section: who this server is and where it keeps its files.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// Stable name of this server; it is the server's identity on the placement ring, so a
    /// server restarted with the same id owns the same keys.
    pub node_id: String,
    /// Directory for chunks, metadata and the log.
    pub data_dir: PathBuf,
    /// Log verbosity.
    pub log_level: LogLevel,
    /// A file that gets detailed tracing output: every event at trace level, and a span
    /// per RPC with its operation, sizes, status and latency. `None`, the default: off.
    pub trace_file: Option<PathBuf>,
}

/// The `[storage]` section: the chunk store.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageConfig {
    /// Which chunk store backend holds the data.
    pub backend: Backend,
    /// Size of one chunk in bytes: a power of two in
    /// [`CHUNK_SIZE_MIN`](limits::CHUNK_SIZE_MIN)..=[`CHUNK_SIZE_MAX`](limits::CHUNK_SIZE_MAX).
    pub chunk_size_bytes: u64,
    /// Open chunk files with O_DIRECT (file and io_uring backends).
    pub o_direct: bool,
    /// Most bytes this server stores; `None` means no limit beyond the device.
    pub capacity_bytes: Option<u64>,
    /// Most io_uring operations in flight at once.
    pub queue_depth: u32,
    /// Bytes of chunks the tiered backend keeps in memory before it writes the least
    /// recently used ones back to `data_dir` (whole chunks: at least one chunk). Other
    /// backends ignore it.
    pub memory_tier_bytes: u64,
    /// Bytes of chunk memory the memory backend (or the tiered backend's memory tier)
    /// faults in at start, so the first writes into it take no page faults; 0 (the
    /// default): faulted in as the store grows. At most the capacity (the memory tier) and
    /// the memory the host has available; the disk backends refuse it.
    pub prefault_bytes: u64,
    /// Whether the memory backend (or the tiered backend's memory tier) asks for
    /// transparent huge pages for chunk memory: they fault in faster than small pages and
    /// shared-memory transfers, which pin each page they touch, cost far less with them;
    /// but on a VM that hands free memory back to its host they cost more to fault in.
    /// Default: [`HugePages::Auto`], huge pages unless on such a VM.
    pub huge_pages: HugePages,
    /// Seconds between sweeps for chunks whose file a server deleted and whose removal
    /// did not reach this one (a stopped server, a client killed mid-delete); 0: none.
    pub orphan_sweep_secs: u64,
    /// Files up to this many bytes (and their chunk size) keep their bytes in their
    /// metadata record: a client defers an O_CREAT open so that create, writes and close
    /// are one request, and reads come with the open. 0: off. At most
    /// [`INLINE_BYTES_MAX`](limits::INLINE_BYTES_MAX) and the chunk size.
    pub inline_bytes: u64,
    /// Faults to inject into the chunk store, for testing what sits above it (`None`:
    /// none; see [`benchfs_store::FaultPlan`]).
    pub inject_faults: Option<benchfs_store::FaultPlan>,
}

/// The `[network]` section: the UCX transport and discovery.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// Address the server listens on (port 0 picks a free port).
    pub bind_addr: SocketAddr,
    /// Payloads above this many bytes go by rendezvous: the receiver pulls them straight
    /// into its own buffer, which on RDMA transports (InfiniBand, RoCE) is RDMA. Smaller
    /// ones travel eagerly with their message and are copied once at the receiver. The key
    /// is `rendezvous_threshold_bytes`; the seed's `rdma_threshold_bytes` is accepted as an
    /// alias.
    pub rendezvous_threshold_bytes: u64,
    /// Directory, visible to every node of the job, where servers publish their addresses.
    pub registry_dir: PathBuf,
    /// Time after which an RPC without a reply fails with a timeout error.
    pub rpc_timeout: Duration,
    /// How long the event loop keeps polling after the last event before it sleeps.
    pub busy_poll: Duration,
    /// Most requests in flight on one connection.
    pub inflight_max: u32,
    /// Payload bytes (request data and read replies) a server holds in transfer buffers at
    /// once; a request past it waits for buffers to free, at most a few milliseconds, then
    /// goes anyway (so a stalled peer cannot hold the others up). 0: no bound.
    pub inflight_payload_bytes: u64,
    /// The UCX network devices the server may use (`UCX_NET_DEVICES`): interface names
    /// (`eth0`) and RDMA ports (`mlx5_0:1`), or `["all"]`. Empty, the default, means the
    /// devices of `bind_addr`: its interface and the RDMA ports behind it, or every device
    /// for a wildcard `bind_addr`. UCX opens a listening socket on each TCP device.
    pub devices: Vec<String>,
    /// Where the server answers `GET /metrics` in the Prometheus text format (TCP,
    /// `IP:port`; port 0 picks a free one). `None`, the default: no endpoint.
    pub metrics_addr: Option<SocketAddr>,
    /// Whether processes on one host talk over shared memory (UCX `sysv`/`posix` for
    /// messages, `cma` for rendezvous) instead of the TCP stack; peers on other hosts use
    /// the network either way. On by default: on one host it measured about twice the
    /// bandwidth of loopback TCP and a third of its round trip.
    pub shared_memory: bool,
}

/// The `[cache]` section: client-side caches.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// Entries in the client's metadata LRU cache (0 turns it off).
    pub metadata_cache_entries: u64,
    /// MiB of client-side chunk read cache (0 turns it off).
    pub chunk_cache_mb: u64,
    /// Seconds a cached entry stays valid (1 by default); 0 means entries are valid until
    /// the client itself changes the file (close-to-open consistency).
    pub cache_ttl_secs: u64,
}

/// The `[replication]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicationConfig {
    /// Copies of each chunk and metadata record, on distinct servers in ring order.
    pub replicas: u32,
}

/// The `[placement]` section: the consistent-hashing ring.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacementConfig {
    /// Virtual nodes per server on the ring.
    pub virtual_nodes: u32,
}

/// The `[client]` section: how a client moves file data.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// Most bytes of writes a client keeps on their way to the servers after the calls
    /// that made them returned (write-behind); their errors surface at a later write,
    /// fsync or close. 0 turns it off: every write then waits for its servers.
    pub write_behind_bytes: u64,
    /// Most bytes an open handle fetches ahead of the reads it sees going sequentially
    /// (read-ahead). 0 turns it off.
    pub read_ahead_bytes: u64,
}

/// A validated BenchFS configuration, shared by the server and the client.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// `[node]`.
    pub node: NodeConfig,
    /// `[storage]`.
    pub storage: StorageConfig,
    /// `[network]`.
    pub network: NetworkConfig,
    /// `[cache]`.
    pub cache: CacheConfig,
    /// `[replication]`.
    pub replication: ReplicationConfig,
    /// `[placement]`.
    pub placement: PlacementConfig,
    /// `[client]`.
    pub client: ClientConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            node: NodeConfig {
                node_id: "node0".to_string(),
                data_dir: PathBuf::from("/tmp/benchfs"),
                log_level: LogLevel::Info,
                trace_file: None,
            },
            storage: StorageConfig {
                backend: Backend::IoUring,
                chunk_size_bytes: limits::CHUNK_SIZE_DEFAULT,
                o_direct: false,
                capacity_bytes: None,
                queue_depth: limits::QUEUE_DEPTH_DEFAULT,
                memory_tier_bytes: benchfs_store::limits::MEMORY_TIER_BYTES_DEFAULT,
                prefault_bytes: 0,
                huge_pages: HugePages::Auto,
                orphan_sweep_secs: limits::ORPHAN_SWEEP_SECS_DEFAULT,
                inline_bytes: limits::INLINE_BYTES_DEFAULT,
                inject_faults: None,
            },
            network: NetworkConfig {
                bind_addr: SocketAddr::from(([0, 0, 0, 0], 50051)),
                rendezvous_threshold_bytes: limits::RENDEZVOUS_THRESHOLD_DEFAULT,
                registry_dir: PathBuf::from("/tmp/benchfs-registry"),
                rpc_timeout: limits::RPC_TIMEOUT_DEFAULT,
                busy_poll: limits::BUSY_POLL_DEFAULT,
                inflight_max: limits::INFLIGHT_DEFAULT,
                inflight_payload_bytes: limits::INFLIGHT_PAYLOAD_BYTES_DEFAULT,
                devices: Vec::new(),
                metrics_addr: None,
                shared_memory: true,
            },
            cache: CacheConfig {
                metadata_cache_entries: limits::METADATA_CACHE_ENTRIES_DEFAULT,
                chunk_cache_mb: limits::CHUNK_CACHE_MB_DEFAULT,
                cache_ttl_secs: limits::CACHE_TTL_SECS_DEFAULT,
            },
            replication: ReplicationConfig {
                replicas: limits::REPLICAS_DEFAULT,
            },
            placement: PlacementConfig {
                virtual_nodes: limits::VIRTUAL_NODES_DEFAULT,
            },
            client: ClientConfig {
                write_behind_bytes: limits::WRITE_BEHIND_BYTES_DEFAULT,
                read_ahead_bytes: limits::READ_AHEAD_BYTES_DEFAULT,
            },
        }
    }
}

// The raw file form. Every key is optional so a file states only what it changes;
// `deny_unknown_fields` turns a misspelt key into an error instead of a silent default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    node: RawNode,
    #[serde(default)]
    storage: RawStorage,
    #[serde(default)]
    network: RawNetwork,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    replication: RawReplication,
    #[serde(default)]
    placement: RawPlacement,
    #[serde(default)]
    client: RawClient,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    node_id: Option<NodeIdValue>,
    data_dir: Option<String>,
    log_level: Option<String>,
    trace_file: Option<String>,
}

// Older configs wrote `node_id = 3`; both spellings name the same server.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum NodeIdValue {
    Name(String),
    Number(u64),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    backend: Option<String>,
    chunk_size: Option<i64>,
    o_direct: Option<bool>,
    capacity: Option<i64>,
    queue_depth: Option<i64>,
    memory_tier_bytes: Option<i64>,
    prefault_bytes: Option<i64>,
    /// `true`, `false` or `"auto"`.
    huge_pages: Option<toml::Value>,
    orphan_sweep_secs: Option<i64>,
    inline_bytes: Option<i64>,
    inject_faults: Option<String>,
    /// Legacy spelling of `backend = "iouring"` (true) or `"file"` (false).
    use_iouring: Option<bool>,
    /// Legacy spelling of `capacity` in GiB; 0 means unlimited.
    max_storage_gb: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    bind_addr: Option<String>,
    rendezvous_threshold_bytes: Option<i64>,
    /// The seed's spelling of `rendezvous_threshold_bytes`.
    rdma_threshold_bytes: Option<i64>,
    registry_dir: Option<String>,
    rpc_timeout: Option<i64>,
    busy_poll_us: Option<i64>,
    inflight_max: Option<i64>,
    inflight_payload_bytes: Option<i64>,
    devices: Option<Vec<String>>,
    metrics_addr: Option<String>,
    shared_memory: Option<bool>,
    /// Legacy spelling of `rpc_timeout`.
    timeout_secs: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    metadata_cache_entries: Option<i64>,
    chunk_cache_mb: Option<i64>,
    cache_ttl_secs: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplication {
    replicas: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlacement {
    virtual_nodes: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    write_behind_bytes: Option<i64>,
    read_ahead_bytes: Option<i64>,
}

/// This process's `BENCHFS_*` environment variables. Others are skipped whatever they
/// hold (`std::env::vars` panics on any variable that is not UTF-8, however unrelated);
/// one of ours that is not UTF-8 is an error naming it.
pub fn benchfs_vars() -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = Vec::new();
    for (key, value) in std::env::vars_os() {
        let Some(key) = key.to_str().filter(|k| k.starts_with("BENCHFS_")) else {
            continue;
        };
        let value = value.into_string().map_err(|_| ConfigError::Env {
            var: key.to_owned(),
            reason: "not UTF-8".into(),
        })?;
        vars.push((key.to_owned(), value));
    }
    Ok(vars)
}

/// The environment variables that [`ServerConfig::from_env_and_str`] reads:
/// `BENCHFS_<SECTION>_<KEY>`, with the kind of value each takes.
const ENV_KEYS: &[(&str, &str, EnvKind)] = &[
    ("node", "node_id", EnvKind::Str),
    ("node", "data_dir", EnvKind::Str),
    ("node", "log_level", EnvKind::Str),
    ("node", "trace_file", EnvKind::Str),
    ("storage", "backend", EnvKind::Str),
    ("storage", "chunk_size", EnvKind::Int),
    ("storage", "o_direct", EnvKind::Bool),
    ("storage", "capacity", EnvKind::Int),
    ("storage", "queue_depth", EnvKind::Int),
    ("storage", "memory_tier_bytes", EnvKind::Int),
    ("storage", "prefault_bytes", EnvKind::Int),
    ("storage", "huge_pages", EnvKind::BoolOrAuto),
    ("storage", "orphan_sweep_secs", EnvKind::Int),
    ("storage", "inline_bytes", EnvKind::Int),
    ("storage", "inject_faults", EnvKind::Str),
    ("network", "bind_addr", EnvKind::Str),
    ("network", "rendezvous_threshold_bytes", EnvKind::Int),
    ("network", "rdma_threshold_bytes", EnvKind::Int),
    ("network", "registry_dir", EnvKind::Str),
    ("network", "rpc_timeout", EnvKind::Int),
    ("network", "busy_poll_us", EnvKind::Int),
    ("network", "inflight_max", EnvKind::Int),
    ("network", "inflight_payload_bytes", EnvKind::Int),
    ("network", "devices", EnvKind::List),
    ("network", "metrics_addr", EnvKind::Str),
    ("network", "shared_memory", EnvKind::Bool),
    ("cache", "metadata_cache_entries", EnvKind::Int),
    ("cache", "chunk_cache_mb", EnvKind::Int),
    ("cache", "cache_ttl_secs", EnvKind::Int),
    ("replication", "replicas", EnvKind::Int),
    ("placement", "virtual_nodes", EnvKind::Int),
    ("client", "write_behind_bytes", EnvKind::Int),
    ("client", "read_ahead_bytes", EnvKind::Int),
];

/// Keys with two spellings, as `(section, key, alias)`: an environment variable for either
/// one replaces what the file gave under both, and two variables that disagree are an error.
const KEY_ALIASES: &[(&str, &str, &str)] = &[(
    "network",
    "rendezvous_threshold_bytes",
    "rdma_threshold_bytes",
)];

/// The rendezvous threshold's key, as errors name it.
const RENDEZVOUS_KEY: &str = "network.rendezvous_threshold_bytes";

const ENV_SECTIONS: &[&str] = &[
    "node",
    "storage",
    "network",
    "cache",
    "replication",
    "placement",
    "client",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EnvKind {
    Str,
    Int,
    Bool,
    /// A boolean or `auto`.
    BoolOrAuto,
    /// Comma-separated strings.
    List,
}

impl ServerConfig {
    /// Reads `path`, applies `BENCHFS_*` environment overrides and checks every value.
    /// Whether `data_dir` is usable is the server's concern: it calls [`Self::validate`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, Some(path), benchfs_vars()?)
    }

    /// Parses TOML text (no environment overrides) and validates it.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Self::parse(text, None, std::iter::empty())
    }

    /// Defaults overlaid with `BENCHFS_*` environment variables, validated.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::parse("", None, benchfs_vars()?)
    }

    /// Parses TOML text, overlays the given `BENCHFS_*` variables and validates.
    pub fn from_env_and_str(
        text: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::parse(text, None, vars)
    }

    fn parse(
        text: &str,
        origin: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let parse_error = |message: String| ConfigError::Parse {
            origin: origin.map(Path::to_path_buf),
            message,
        };
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| parse_error(e.to_string()))?;
        apply_env(&mut table, vars)?;
        let raw: RawConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| parse_error(e.to_string()))?;
        let config = Self::from_raw(raw)?;
        config.validate_values()?;
        Ok(config)
    }

    fn from_raw(raw: RawConfig) -> Result<Self, ConfigError> {
        let mut c = ServerConfig::default();
        c.apply_node(raw.node)?;
        c.apply_storage(raw.storage)?;
        c.apply_network(raw.network)?;
        if let Some(v) = raw.cache.metadata_cache_entries {
            c.cache.metadata_cache_entries = non_negative("cache.metadata_cache_entries", v)?;
        }
        if let Some(v) = raw.cache.chunk_cache_mb {
            c.cache.chunk_cache_mb = non_negative("cache.chunk_cache_mb", v)?;
        }
        if let Some(v) = raw.cache.cache_ttl_secs {
            c.cache.cache_ttl_secs = non_negative("cache.cache_ttl_secs", v)?;
        }
        if let Some(v) = raw.replication.replicas {
            c.replication.replicas = to_u32("replication.replicas", v)?;
        }
        if let Some(v) = raw.placement.virtual_nodes {
            c.placement.virtual_nodes = to_u32("placement.virtual_nodes", v)?;
        }
        if let Some(v) = raw.client.write_behind_bytes {
            c.client.write_behind_bytes = non_negative("client.write_behind_bytes", v)?;
        }
        if let Some(v) = raw.client.read_ahead_bytes {
            c.client.read_ahead_bytes = non_negative("client.read_ahead_bytes", v)?;
        }
        Ok(c)
    }

    /// Takes the `[node]` keys the file gives.
    fn apply_node(&mut self, raw: RawNode) -> Result<(), ConfigError> {
        if let Some(id) = raw.node_id {
            self.node.node_id = match id {
                NodeIdValue::Name(name) => name,
                NodeIdValue::Number(n) => format!("node{n}"),
            };
        }
        if let Some(dir) = raw.data_dir {
            self.node.data_dir = PathBuf::from(dir);
        }
        if let Some(level) = raw.log_level {
            self.node.log_level = level.parse().map_err(|e| invalid("node.log_level", e))?;
        }
        // Empty turns it off, so an environment variable can undo the file's.
        if let Some(path) = raw.trace_file {
            self.node.trace_file = (!path.is_empty()).then(|| PathBuf::from(path));
        }
        Ok(())
    }

    /// Takes the `[storage]` keys the file gives, reconciling the legacy ones.
    fn apply_storage(&mut self, s: RawStorage) -> Result<(), ConfigError> {
        self.storage.backend = match (s.backend, s.use_iouring) {
            (Some(b), None) => b.parse().map_err(|e: benchfs_store::StoreError| {
                invalid("storage.backend", e.to_string())
            })?,
            (None, Some(true)) => Backend::IoUring,
            (None, Some(false)) => Backend::File,
            (None, None) => self.storage.backend,
            (Some(b), Some(u)) => {
                let backend: Backend = b.parse().map_err(|e: benchfs_store::StoreError| {
                    invalid("storage.backend", e.to_string())
                })?;
                if (backend == Backend::IoUring) != u {
                    return Err(invalid(
                        "storage.use_iouring",
                        format!("use_iouring = {u} contradicts backend = \"{backend}\"; keep only backend"),
                    ));
                }
                backend
            }
        };
        if let Some(v) = s.chunk_size {
            self.storage.chunk_size_bytes = non_negative("storage.chunk_size", v)?;
        }
        if let Some(v) = s.o_direct {
            self.storage.o_direct = v;
        }
        self.storage.capacity_bytes = match (s.capacity, s.max_storage_gb) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "storage.max_storage_gb",
                    "give either capacity (bytes) or max_storage_gb, not both",
                ))
            }
            (Some(bytes), None) => Some(non_negative("storage.capacity", bytes)?),
            (None, Some(gib)) => Some(
                non_negative("storage.max_storage_gb", gib)?
                    .checked_mul(1 << 30)
                    .ok_or_else(|| invalid("storage.max_storage_gb", "too large"))?,
            ),
            (None, None) => None,
        }
        .filter(|&bytes| bytes != 0);
        if let Some(v) = s.queue_depth {
            self.storage.queue_depth = to_u32("storage.queue_depth", v)?;
        }
        if let Some(v) = s.memory_tier_bytes {
            self.storage.memory_tier_bytes = non_negative("storage.memory_tier_bytes", v)?;
        }
        if let Some(v) = s.prefault_bytes {
            self.storage.prefault_bytes = non_negative("storage.prefault_bytes", v)?;
        }
        if let Some(v) = s.huge_pages {
            self.storage.huge_pages = huge_pages(v)?;
        }
        if let Some(v) = s.inline_bytes {
            self.storage.inline_bytes = non_negative("storage.inline_bytes", v)?;
        }
        if let Some(v) = s.orphan_sweep_secs {
            self.storage.orphan_sweep_secs = non_negative("storage.orphan_sweep_secs", v)?;
        }
        if let Some(plan) = s.inject_faults {
            let plan = plan.parse().map_err(|e| match e {
                benchfs_store::StoreError::InvalidConfig { reason, .. } => reason,
                other => other.to_string(),
            });
            self.storage.inject_faults =
                Some(plan.map_err(|reason| invalid("storage.inject_faults", reason))?);
        }
        Ok(())
    }

    /// Takes the `[network]` keys the file gives, reconciling the legacy ones.
    fn apply_network(&mut self, n: RawNetwork) -> Result<(), ConfigError> {
        if let Some(addr) = n.bind_addr {
            self.network.bind_addr = addr.parse().map_err(|e| {
                invalid(
                    "network.bind_addr",
                    format!("{addr:?} is not an IP:port address ({e})"),
                )
            })?;
        }
        self.network.rendezvous_threshold_bytes =
            match (n.rendezvous_threshold_bytes, n.rdma_threshold_bytes) {
                (Some(new), Some(old)) if new != old => {
                    return Err(invalid(
                        "network.rdma_threshold_bytes",
                        format!(
                            "rdma_threshold_bytes = {old} contradicts \
                             rendezvous_threshold_bytes = {new}; keep only \
                             rendezvous_threshold_bytes"
                        ),
                    ))
                }
                (Some(v), _) => non_negative(RENDEZVOUS_KEY, v)?,
                (None, Some(v)) => non_negative("network.rdma_threshold_bytes", v)?,
                (None, None) => self.network.rendezvous_threshold_bytes,
            };
        if let Some(dir) = n.registry_dir {
            self.network.registry_dir = PathBuf::from(dir);
        }
        self.network.rpc_timeout = match (n.rpc_timeout, n.timeout_secs) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "network.timeout_secs",
                    "give either rpc_timeout (ms) or timeout_secs, not both",
                ))
            }
            (Some(ms), None) => Duration::from_millis(non_negative("network.rpc_timeout", ms)?),
            (None, Some(secs)) => Duration::from_secs(non_negative("network.timeout_secs", secs)?),
            (None, None) => self.network.rpc_timeout,
        };
        if let Some(v) = n.busy_poll_us {
            self.network.busy_poll =
                Duration::from_micros(non_negative("network.busy_poll_us", v)?);
        }
        if let Some(v) = n.inflight_max {
            self.network.inflight_max = to_u32("network.inflight_max", v)?;
        }
        if let Some(v) = n.inflight_payload_bytes {
            self.network.inflight_payload_bytes =
                non_negative("network.inflight_payload_bytes", v)?;
        }
        if let Some(devices) = n.devices {
            self.network.devices = devices;
        }
        if let Some(v) = n.shared_memory {
            self.network.shared_memory = v;
        }
        // Empty turns it off, so an environment variable can undo the file's.
        match n.metrics_addr.as_deref() {
            None => {}
            Some("") => self.network.metrics_addr = None,
            Some(addr) => {
                self.network.metrics_addr = Some(addr.parse().map_err(|e| {
                    invalid(
                        "network.metrics_addr",
                        format!("{addr:?} is not an IP:port address ({e})"),
                    )
                })?);
            }
        }
        Ok(())
    }

    /// Checks every value and how values relate, without touching the file system.
    pub fn validate_values(&self) -> Result<(), ConfigError> {
        self.validate_node()?;
        self.validate_storage()?;
        self.validate_network()?;
        if self.cache.metadata_cache_entries > limits::METADATA_CACHE_ENTRIES_MAX {
            return Err(invalid(
                "cache.metadata_cache_entries",
                format!("must be at most {}", limits::METADATA_CACHE_ENTRIES_MAX),
            ));
        }
        if self.cache.chunk_cache_mb > limits::CHUNK_CACHE_MB_MAX {
            return Err(invalid(
                "cache.chunk_cache_mb",
                format!("must be at most {}", limits::CHUNK_CACHE_MB_MAX),
            ));
        }
        if !(1..=limits::REPLICAS_MAX).contains(&self.replication.replicas) {
            return Err(invalid(
                "replication.replicas",
                format!(
                    "{} is not in 1..={}",
                    self.replication.replicas,
                    limits::REPLICAS_MAX
                ),
            ));
        }
        if !(1..=limits::VIRTUAL_NODES_MAX).contains(&self.placement.virtual_nodes) {
            return Err(invalid(
                "placement.virtual_nodes",
                format!("must be 1..={}", limits::VIRTUAL_NODES_MAX),
            ));
        }
        self.validate_client()
    }

    /// The write-behind and read-ahead windows.
    fn validate_client(&self) -> Result<(), ConfigError> {
        for (key, value, max) in [
            (
                "client.write_behind_bytes",
                self.client.write_behind_bytes,
                limits::WRITE_BEHIND_BYTES_MAX,
            ),
            (
                "client.read_ahead_bytes",
                self.client.read_ahead_bytes,
                limits::READ_AHEAD_BYTES_MAX,
            ),
        ] {
            if value > max {
                return Err(invalid(key, format!("{value} is above {max} bytes")));
            }
        }
        Ok(())
    }

    /// The node id and data directory.
    fn validate_node(&self) -> Result<(), ConfigError> {
        let id = &self.node.node_id;
        if id.is_empty() || id.len() > limits::NODE_ID_LEN_MAX {
            return Err(invalid(
                "node.node_id",
                format!("must be 1..={} characters", limits::NODE_ID_LEN_MAX),
            ));
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(invalid(
                "node.node_id",
                format!("{id:?} may hold only ASCII letters, digits, '.', '_' and '-'"),
            ));
        }
        // The id names files (the registry's entries and markers, `cluster up`'s data
        // directories): these two would name directories instead.
        if id == "." || id == ".." {
            return Err(invalid(
                "node.node_id",
                format!("{id:?} names a directory; pick a name"),
            ));
        }
        if self.node.data_dir.as_os_str().is_empty() {
            return Err(invalid("node.data_dir", "must not be empty"));
        }
        Ok(())
    }

    /// The chunk store's own checks of its memory settings, reported under their keys.
    fn validate_store_memory(&self) -> Result<(), ConfigError> {
        let store = self.store_config();
        let under = |key: &'static str, e: benchfs_store::StoreError| match e {
            benchfs_store::StoreError::InvalidConfig { reason, .. } => invalid(key, reason),
            other => invalid(key, other.to_string()),
        };
        store
            .check_prefault()
            .map_err(|e| under("storage.prefault_bytes", e))?;
        store
            .check_huge_pages()
            .map_err(|e| under("storage.huge_pages", e))
    }

    /// The chunk size, backend options, queue depth and capacity.
    fn validate_storage(&self) -> Result<(), ConfigError> {
        let chunk = self.storage.chunk_size_bytes;
        if !chunk.is_power_of_two() {
            return Err(invalid(
                "storage.chunk_size",
                format!("{chunk} is not a power of two"),
            ));
        }
        if !(limits::CHUNK_SIZE_MIN..=limits::CHUNK_SIZE_MAX).contains(&chunk) {
            return Err(invalid(
                "storage.chunk_size",
                format!(
                    "{chunk} is outside {}..={} bytes (4 KiB..64 MiB)",
                    limits::CHUNK_SIZE_MIN,
                    limits::CHUNK_SIZE_MAX
                ),
            ));
        }
        if self.storage.o_direct && self.storage.backend == Backend::Memory {
            return Err(invalid(
                "storage.o_direct",
                "O_DIRECT applies to the file, iouring and tiered backends, not memory",
            ));
        }
        if self.storage.orphan_sweep_secs > limits::ORPHAN_SWEEP_SECS_MAX {
            return Err(invalid(
                "storage.orphan_sweep_secs",
                format!("must be at most {}", limits::ORPHAN_SWEEP_SECS_MAX),
            ));
        }
        if !(1..=limits::QUEUE_DEPTH_MAX).contains(&self.storage.queue_depth) {
            return Err(invalid(
                "storage.queue_depth",
                format!("must be 1..={}", limits::QUEUE_DEPTH_MAX),
            ));
        }
        let inline = self.storage.inline_bytes;
        if inline > limits::INLINE_BYTES_MAX.min(chunk) {
            // Name the bound it passed, not both.
            let bound = match inline > limits::INLINE_BYTES_MAX {
                true => format!("{} (the largest a record holds)", limits::INLINE_BYTES_MAX),
                false => format!("chunk_size ({chunk})"),
            };
            return Err(invalid(
                "storage.inline_bytes",
                format!("{inline} is above {bound}"),
            ));
        }
        let tier = self.storage.memory_tier_bytes;
        if self.storage.backend == Backend::Tiered && tier < chunk {
            return Err(invalid(
                "storage.memory_tier_bytes",
                format!("{tier} bytes is less than one chunk ({chunk}): the memory tier holds whole chunks"),
            ));
        }
        self.validate_store_memory()?;
        if let Some(capacity) = self.storage.capacity_bytes {
            if capacity < chunk {
                return Err(invalid(
                    "storage.capacity",
                    format!("{capacity} bytes is less than one chunk ({chunk})"),
                ));
            }
        }
        Ok(())
    }

    /// The rendezvous threshold against the chunk size, and the network bounds.
    fn validate_network(&self) -> Result<(), ConfigError> {
        let chunk = self.storage.chunk_size_bytes;
        // The typed config does not know which spelling the file used, so both are named.
        let threshold = self.network.rendezvous_threshold_bytes;
        if threshold > chunk {
            return Err(invalid(
                RENDEZVOUS_KEY,
                format!(
                    "{threshold} is above chunk_size ({chunk}), so no payload could ever go \
                     by rendezvous (the key is also spelt network.rdma_threshold_bytes)"
                ),
            ));
        }
        if threshold > limits::RENDEZVOUS_THRESHOLD_MAX {
            return Err(invalid(
                RENDEZVOUS_KEY,
                format!(
                    "{threshold} is above the largest eager payload ({}) (the key is also \
                     spelt network.rdma_threshold_bytes)",
                    limits::RENDEZVOUS_THRESHOLD_MAX
                ),
            ));
        }
        if self.network.registry_dir.as_os_str().is_empty() {
            return Err(invalid("network.registry_dir", "must not be empty"));
        }
        if !(limits::RPC_TIMEOUT_MIN..=limits::RPC_TIMEOUT_MAX).contains(&self.network.rpc_timeout)
        {
            return Err(invalid(
                "network.rpc_timeout",
                format!(
                    "must be {}..={} ms",
                    limits::RPC_TIMEOUT_MIN.as_millis(),
                    limits::RPC_TIMEOUT_MAX.as_millis()
                ),
            ));
        }
        if self.network.busy_poll > limits::BUSY_POLL_MAX {
            return Err(invalid(
                "network.busy_poll_us",
                format!("must be at most {} us", limits::BUSY_POLL_MAX.as_micros()),
            ));
        }
        if !(1..=limits::INFLIGHT_MAX).contains(&self.network.inflight_max) {
            return Err(invalid(
                "network.inflight_max",
                format!("must be 1..={}", limits::INFLIGHT_MAX),
            ));
        }
        if self.network.inflight_payload_bytes > limits::INFLIGHT_PAYLOAD_BYTES_MAX {
            return Err(invalid(
                "network.inflight_payload_bytes",
                format!("must be 0..={}", limits::INFLIGHT_PAYLOAD_BYTES_MAX),
            ));
        }
        validate_bind_addr(self.network.bind_addr)?;
        if let Some(metrics) = self.network.metrics_addr {
            let bind = self.network.bind_addr;
            if metrics.port() != 0 && metrics.port() == bind.port() {
                return Err(invalid(
                    "network.metrics_addr",
                    format!("{metrics} has the port of network.bind_addr ({bind})"),
                ));
            }
        }
        validate_devices(&self.network.devices)
    }

    /// Checks every value, then that `data_dir` exists or can be made, and is writable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_values()?;
        let dir = &self.node.data_dir;
        std::fs::create_dir_all(dir).map_err(|e| {
            invalid(
                "node.data_dir",
                format!("cannot create {}: {e}", dir.display()),
            )
        })?;
        // Probes that a failed write left behind (before probes were empty files).
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .as_encoded_bytes()
                    .starts_with(b".benchfs-write-probe-")
                {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        // Unique per call: threads of one process may validate at the same time.
        static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let probe = dir.join(format!(
            ".benchfs-write-probe-{}-{}",
            std::process::id(),
            PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        // An empty file: it needs no block, so a full disk still passes (a server must
        // start on it, or nothing it holds could be read or deleted); one with no inode
        // left refuses it as full, which is writable too.
        let made = std::fs::File::create(&probe);
        let _ = std::fs::remove_file(&probe);
        match made {
            Err(e)
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                ) =>
            {
                Err(invalid(
                    "node.data_dir",
                    format!("{} is not writable: {e}", dir.display()),
                ))
            }
            _ => Ok(()),
        }
    }

    /// The chunk store settings this configuration describes.
    pub fn store_config(&self) -> benchfs_store::StoreConfig {
        benchfs_store::StoreConfig {
            backend: self.storage.backend,
            data_dir: self.node.data_dir.clone(),
            chunk_size: self.storage.chunk_size_bytes,
            o_direct: self.storage.o_direct,
            capacity_bytes: self.storage.capacity_bytes,
            queue_depth: self.storage.queue_depth,
            memory_tier_bytes: self.storage.memory_tier_bytes,
            prefault_bytes: self.storage.prefault_bytes,
            huge_pages: self.storage.huge_pages.resolve(self.storage.backend),
        }
    }
}

/// Most entries in `network.devices`.
const DEVICES_MAX: usize = 32;
/// Longest device name: an RDMA device name (at most 63 bytes) and `:port`.
const DEVICE_NAME_LEN_MAX: usize = 72;

/// Refuses an IPv6 `bind_addr`: UCX 1.13's connection manager publishes and dials IPv4
/// here, so a server bound to an IPv6 address came up and no client could reach it.
fn validate_bind_addr(bind_addr: SocketAddr) -> Result<(), ConfigError> {
    if bind_addr.is_ipv6() {
        return Err(invalid(
            "network.bind_addr",
            format!(
                "{bind_addr} is an IPv6 address, which BenchFS does not serve on; give an IPv4 address or 0.0.0.0 (every interface)"
            ),
        ));
    }
    Ok(())
}

/// The shape of `network.devices`; whether the devices exist is the server's concern, at
/// start-up, since the config may be read on another host.
fn validate_devices(devices: &[String]) -> Result<(), ConfigError> {
    const KEY: &str = "network.devices";
    if devices.len() > DEVICES_MAX {
        return Err(invalid(KEY, format!("at most {DEVICES_MAX} devices")));
    }
    for name in devices {
        if name.is_empty() || name.len() > DEVICE_NAME_LEN_MAX {
            return Err(invalid(
                KEY,
                format!("{name:?} must be 1..={DEVICE_NAME_LEN_MAX} characters"),
            ));
        }
        if name
            .chars()
            .any(|c| c == ',' || c == '/' || c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                KEY,
                format!(
                    "{name:?} is not a device name (an interface such as \"eth0\" or an RDMA \
                     port such as \"mlx5_0:1\"; one name per list entry)"
                ),
            ));
        }
    }
    if devices.len() > 1 && devices.iter().any(|d| d == "all") {
        return Err(invalid(KEY, "\"all\" stands alone: it means every device"));
    }
    Ok(())
}

fn non_negative(key: &'static str, value: i64) -> Result<u64, ConfigError> {
    u64::try_from(value).map_err(|_| invalid(key, format!("{value} is negative")))
}

fn to_u32(key: &'static str, value: i64) -> Result<u32, ConfigError> {
    u32::try_from(value).map_err(|_| invalid(key, format!("{value} is not in 0..={}", u32::MAX)))
}

/// The `BENCHFS_<SECTION>_<KEY>` variables among `vars`, parsed by the key's type.
fn parse_env(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<EnvOverride>, ConfigError> {
    let mut overrides = Vec::new();
    for (var, value) in vars {
        let Some(rest) = var.strip_prefix("BENCHFS_") else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        // Other BENCHFS_* variables (BENCHFS_CONFIG, BENCHFS_REGISTRY, ...) belong to other
        // tools; only those naming a config section are overrides.
        let Some(&section) = ENV_SECTIONS
            .iter()
            .find(|s| rest.strip_prefix(*s).is_some_and(|r| r.starts_with('_')))
        else {
            continue;
        };
        let key = &rest[section.len() + 1..];
        let env_error = |reason: String| ConfigError::Env {
            var: var.clone(),
            reason,
        };
        let Some(&(_, _, kind)) = ENV_KEYS.iter().find(|(s, k, _)| *s == section && *k == key)
        else {
            return Err(env_error(format!("[{section}] has no key {key:?}")));
        };
        let parsed = match kind {
            EnvKind::Str => toml::Value::String(value.clone()),
            EnvKind::Int => toml::Value::Integer(
                value
                    .trim()
                    .parse()
                    .map_err(|e| env_error(format!("{value:?} is not an integer ({e})")))?,
            ),
            EnvKind::List => toml::Value::Array(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_string()))
                    .collect(),
            ),
            EnvKind::Bool | EnvKind::BoolOrAuto => {
                match value.trim().to_ascii_lowercase().as_str() {
                    "1" | "true" | "yes" | "on" => toml::Value::Boolean(true),
                    "0" | "false" | "no" | "off" => toml::Value::Boolean(false),
                    "auto" if kind == EnvKind::BoolOrAuto => toml::Value::String("auto".into()),
                    other if kind == EnvKind::BoolOrAuto => {
                        return Err(env_error(format!("{other:?} is not a boolean or auto")))
                    }
                    other => return Err(env_error(format!("{other:?} is not a boolean"))),
                }
            }
        };
        overrides.push((section, key.to_string(), parsed, var));
    }
    Ok(overrides)
}

/// One environment override: section, key, value, and the variable that gave it.
type EnvOverride = (&'static str, String, toml::Value, String);

/// Applies the `BENCHFS_<SECTION>_<KEY>` variables among `vars` to the configuration
/// `table` (parsed as a file would be), as a server does when it reads its configuration:
/// each overrides the table's value of its key (under both spellings of an aliased key).
/// Fails, changing nothing, on a variable that names no key or whose value does not parse.
pub fn apply_env(
    table: &mut toml::Table,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    // Every override is parsed before any is applied.
    let overrides = parse_env(vars)?;
    // A variable for either spelling of a key overrides the file's value under both.
    for &(section, key, alias) in KEY_ALIASES {
        let find = |k: &str| {
            overrides
                .iter()
                .find(|(s, o, _, _)| *s == section && o == k)
        };
        match (find(key), find(alias)) {
            (Some((_, _, v1, var1)), Some((_, _, v2, var2))) if v1 != v2 => {
                return Err(ConfigError::Env {
                    var: var2.clone(),
                    reason: format!("{v2} contradicts {var1} = {v1}; set only {var1}"),
                });
            }
            (None, None) => continue,
            _ => {}
        }
        if let Some(toml::Value::Table(section_table)) = table.get_mut(section) {
            section_table.remove(key);
            section_table.remove(alias);
        }
    }
    for (section, key, value, var) in overrides {
        let entry = table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(section_table) = entry else {
            return Err(ConfigError::Env {
                var,
                reason: format!("[{section}] in the file is not a table"),
            });
        };
        section_table.insert(key, value);
    }
    Ok(())
}

/// The rank a process was given by the job launcher, from the first of
/// `OMPI_COMM_WORLD_RANK` (Open MPI), `PMI_RANK` (MPICH, Intel MPI, Hydra) and
/// `SLURM_PROCID` (srun) that is set. A set but malformed value is an error.
pub fn launcher_rank(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Option<u32>, ConfigError> {
    const RANK_VARS: [&str; 3] = ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"];
    let vars: std::collections::HashMap<String, String> = vars.into_iter().collect();
    for name in RANK_VARS {
        if let Some(value) = vars.get(name) {
            return value
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| ConfigError::Env {
                    var: name.to_string(),
                    reason: format!("{value:?} is not a rank"),
                });
        }
    }
    Ok(None)
}

impl ServerConfig {
    /// Makes this configuration distinct for launcher rank `rank`: the node id gains
    /// `-r<rank>`, the data directory a `r<rank>` subdirectory and a trace file the suffix
    /// `.r<rank>`, so `mpirun -np N benchfsd` starts N distinct servers from one file.
    pub fn for_rank(mut self, rank: u32) -> Result<Self, ConfigError> {
        self.node.node_id = format!("{}-r{rank}", self.node.node_id);
        self.node.data_dir = self.node.data_dir.join(format!("r{rank}"));
        if let Some(path) = &mut self.node.trace_file {
            path.as_mut_os_string().push(format!(".r{rank}"));
        }
        self.validate()?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn threshold(text: &str, vars: &[(&str, &str)]) -> Result<u64, ConfigError> {
        ServerConfig::from_env_and_str(text, env(vars))
            .map(|c| c.network.rendezvous_threshold_bytes)
    }

    #[test]
    fn rendezvous_threshold_has_two_spellings() {
        let default = limits::RENDEZVOUS_THRESHOLD_DEFAULT;
        assert_eq!(threshold("", &[]).unwrap(), default);
        for key in ["rendezvous_threshold_bytes", "rdma_threshold_bytes"] {
            assert_eq!(
                threshold(&format!("[network]\n{key} = 4096\n"), &[]).unwrap(),
                4096
            );
            let var = format!("BENCHFS_NETWORK_{}", key.to_ascii_uppercase());
            assert_eq!(threshold("", &[(&var, "8192")]).unwrap(), 8192);
        }
        // Both spellings agreeing is fine; disagreeing names both keys.
        let both = "[network]\nrendezvous_threshold_bytes = 4096\nrdma_threshold_bytes = 4096\n";
        assert_eq!(threshold(both, &[]).unwrap(), 4096);
        let both = "[network]\nrendezvous_threshold_bytes = 4096\nrdma_threshold_bytes = 8192\n";
        let msg = threshold(both, &[]).unwrap_err().to_string();
        assert!(
            msg.contains("rdma_threshold_bytes") && msg.contains("rendezvous_threshold_bytes"),
            "{msg}"
        );
    }

    #[test]
    fn rendezvous_threshold_environment() {
        // Either variable overrides the file, whichever spelling the file used.
        let file = "[network]\nrdma_threshold_bytes = 4096\n";
        let new = ("BENCHFS_NETWORK_RENDEZVOUS_THRESHOLD_BYTES", "8192");
        let old = ("BENCHFS_NETWORK_RDMA_THRESHOLD_BYTES", "16384");
        assert_eq!(threshold(file, &[new]).unwrap(), 8192);
        let file = "[network]\nrendezvous_threshold_bytes = 4096\n";
        assert_eq!(threshold(file, &[old]).unwrap(), 16384);
        // Both variables: agreeing is fine, disagreeing names both.
        let same = ("BENCHFS_NETWORK_RDMA_THRESHOLD_BYTES", "8192");
        assert_eq!(threshold(file, &[new, same]).unwrap(), 8192);
        let err = threshold(file, &[new, old]).unwrap_err();
        assert!(matches!(err, ConfigError::Env { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(new.0) && msg.contains(old.0),
            "{msg} should name both variables"
        );
    }

    #[test]
    fn rendezvous_threshold_bounds_name_both_spellings() {
        let text = "[storage]\nchunk_size = 65536\n[network]\nrdma_threshold_bytes = 131072\n";
        let msg = threshold(text, &[]).unwrap_err().to_string();
        assert!(
            msg.contains("network.rendezvous_threshold_bytes")
                && msg.contains("network.rdma_threshold_bytes"),
            "{msg}"
        );
        let above = limits::RENDEZVOUS_THRESHOLD_MAX + 1;
        let text = format!("[network]\nrendezvous_threshold_bytes = {above}\n");
        assert!(threshold(&text, &[]).is_err());
        let text = "[network]\nrendezvous_threshold_bytes = -1\n";
        assert!(threshold(text, &[])
            .unwrap_err()
            .to_string()
            .contains("network.rendezvous_threshold_bytes"));
    }

    fn devices(text: &str, vars: &[(&str, &str)]) -> Result<Vec<String>, ConfigError> {
        ServerConfig::from_env_and_str(text, env(vars)).map(|c| c.network.devices)
    }

    #[test]
    fn network_devices() {
        assert!(
            devices("", &[]).unwrap().is_empty(),
            "empty: derive from bind_addr"
        );
        assert!(devices("[network]\ndevices = []\n", &[])
            .unwrap()
            .is_empty());
        assert_eq!(
            devices("[network]\ndevices = [\"eth0\", \"mlx5_0:1\"]\n", &[]).unwrap(),
            ["eth0", "mlx5_0:1"]
        );
        assert_eq!(
            devices("[network]\ndevices = [\"all\"]\n", &[]).unwrap(),
            ["all"]
        );
        // The environment gives a comma-separated list and replaces the file's.
        let var = ("BENCHFS_NETWORK_DEVICES", "lo, ib0");
        assert_eq!(
            devices("[network]\ndevices = [\"eth0\"]\n", &[var]).unwrap(),
            ["lo", "ib0"]
        );
        for bad in [
            "[\"\"]",
            "[\"eth0,lo\"]",
            "[\"eth 0\"]",
            "[\"../eth0\"]",
            "[\"all\", \"lo\"]",
            "\"eth0\"",
            "[1]",
        ] {
            let err = devices(&format!("[network]\ndevices = {bad}\n"), &[]).unwrap_err();
            assert!(err.to_string().contains("devices"), "{bad}: {err}");
        }
        let many = vec!["\"lo\""; DEVICES_MAX + 1].join(", ");
        let err = devices(&format!("[network]\ndevices = [{many}]\n"), &[]).unwrap_err();
        assert!(err.to_string().contains("network.devices"), "{err}");
    }

    #[test]
    fn metrics_addr_and_trace_file() {
        let c = ServerConfig::from_env_and_str("", env(&[])).unwrap();
        assert_eq!((c.network.metrics_addr, c.node.trace_file), (None, None));
        let file =
            "[node]\ntrace_file = \"/tmp/t.log\"\n[network]\nmetrics_addr = \"127.0.0.1:9100\"\n";
        let c = ServerConfig::from_env_and_str(file, env(&[])).unwrap();
        assert_eq!(
            c.network.metrics_addr,
            Some("127.0.0.1:9100".parse().unwrap())
        );
        assert_eq!(c.node.trace_file, Some(PathBuf::from("/tmp/t.log")));
        // The environment replaces the file's, and empty turns either off.
        let vars = [
            ("BENCHFS_NETWORK_METRICS_ADDR", ""),
            ("BENCHFS_NODE_TRACE_FILE", ""),
        ];
        let c = ServerConfig::from_env_and_str(file, env(&vars)).unwrap();
        assert_eq!((c.network.metrics_addr, c.node.trace_file), (None, None));
        let vars = [("BENCHFS_NETWORK_METRICS_ADDR", "0.0.0.0:0")];
        let c = ServerConfig::from_env_and_str("", env(&vars)).unwrap();
        assert_eq!(c.network.metrics_addr, Some("0.0.0.0:0".parse().unwrap()));
        // A rank gets its own trace file.
        let data = tempfile::tempdir().unwrap();
        let mut c = ServerConfig::from_env_and_str(file, env(&[])).unwrap();
        c.node.data_dir = data.path().to_path_buf();
        let ranked = c.for_rank(3).unwrap();
        assert_eq!(ranked.node.trace_file, Some(PathBuf::from("/tmp/t.log.r3")));
        for bad in ["localhost", "1.2.3.4", "127.0.0.1:99999", "0.0.0.0:50051"] {
            let text = format!("[network]\nmetrics_addr = \"{bad}\"\n");
            let err = ServerConfig::from_env_and_str(&text, env(&[])).unwrap_err();
            assert!(
                err.to_string().contains("network.metrics_addr"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn inline_bytes() {
        let c = ServerConfig::from_env_and_str("", env(&[])).unwrap();
        assert_eq!(c.storage.inline_bytes, limits::INLINE_BYTES_DEFAULT);
        let c = ServerConfig::from_env_and_str("[storage]\ninline_bytes = 0\n", env(&[])).unwrap();
        assert_eq!(c.storage.inline_bytes, 0, "0 turns inline files off");
        let var = ("BENCHFS_STORAGE_INLINE_BYTES", "8192");
        let c =
            ServerConfig::from_env_and_str("[storage]\ninline_bytes = 0\n", env(&[var])).unwrap();
        assert_eq!(c.storage.inline_bytes, 8192);
        let max = limits::INLINE_BYTES_MAX;
        for bad in [
            "[storage]\ninline_bytes = -1\n".to_string(),
            format!("[storage]\ninline_bytes = {}\n", max + 1),
            format!("[storage]\nchunk_size = 4096\ninline_bytes = {}\n", 4097),
        ] {
            let err = ServerConfig::from_env_and_str(&bad, env(&[])).unwrap_err();
            assert!(
                err.to_string().contains("storage.inline_bytes"),
                "{bad}: {err}"
            );
        }
        let text = format!("[storage]\ninline_bytes = {max}\n");
        ServerConfig::from_env_and_str(&text, env(&[])).unwrap();
        // The refusal names the bound passed (a hostile run read "32768 is above 32768").
        let text = format!("[storage]\nchunk_size = 16384\ninline_bytes = {max}\n");
        let err = ServerConfig::from_env_and_str(&text, env(&[])).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("{max} is above chunk_size (16384)")),
            "{err}"
        );
    }

    #[test]
    fn memory_tier_bytes() {
        let tiered = "[storage]\nbackend = \"tiered\"\nchunk_size = 65536\n";
        let c = ServerConfig::from_env_and_str(tiered, env(&[])).unwrap();
        assert_eq!(c.storage.backend, Backend::Tiered);
        let default = benchfs_store::limits::MEMORY_TIER_BYTES_DEFAULT;
        assert_eq!(c.store_config().memory_tier_bytes, default);
        let file = format!("{tiered}memory_tier_bytes = 131072\n");
        let c = ServerConfig::from_env_and_str(&file, env(&[])).unwrap();
        assert_eq!(c.store_config().memory_tier_bytes, 131_072);
        let var = ("BENCHFS_STORAGE_MEMORY_TIER_BYTES", "262144");
        let c = ServerConfig::from_env_and_str(&file, env(&[var])).unwrap();
        assert_eq!(c.storage.memory_tier_bytes, 262_144);
        for bad in ["-1", "65535"] {
            let text = format!("{tiered}memory_tier_bytes = {bad}\n");
            let err = ServerConfig::from_env_and_str(&text, env(&[])).unwrap_err();
            assert!(
                err.to_string().contains("storage.memory_tier_bytes"),
                "{bad}: {err}"
            );
        }
        // Less than a chunk is fine where there is no memory tier.
        let text = "[storage]\nchunk_size = 65536\nmemory_tier_bytes = 4096\n";
        ServerConfig::from_env_and_str(text, env(&[])).unwrap();
    }

    #[test]
    fn prefault_bytes() {
        let memory = "[storage]\nbackend = \"memory\"\nchunk_size = 65536\n";
        let c = ServerConfig::from_env_and_str(memory, env(&[])).unwrap();
        assert_eq!(c.store_config().prefault_bytes, 0);
        let var = ("BENCHFS_STORAGE_PREFAULT_BYTES", "1048576");
        let c = ServerConfig::from_env_and_str(memory, env(&[var])).unwrap();
        assert_eq!(c.store_config().prefault_bytes, 1 << 20);
        let tiered =
            "[storage]\nbackend = \"tiered\"\nchunk_size = 65536\nmemory_tier_bytes = 1048576\n";
        for (text, why) in [
            (format!("{memory}prefault_bytes = -1\n"), "negative"),
            (
                format!("{memory}capacity = 1048576\nprefault_bytes = 2097152\n"),
                "more than",
            ),
            (format!("{tiered}prefault_bytes = 2097152\n"), "more than"),
            // The tier holds whole chunks: 16 of 65536 bytes here.
            (
                "[storage]\nbackend = \"tiered\"\nchunk_size = 65536\nmemory_tier_bytes = 1100000\nprefault_bytes = 1048577\n".to_string(),
                "more than",
            ),
            (
                "[storage]\nbackend = \"iouring\"\nprefault_bytes = 1\n".to_string(),
                "memory and tiered",
            ),
        ] {
            let err = ServerConfig::from_env_and_str(&text, env(&[])).unwrap_err();
            let err = err.to_string();
            assert!(err.contains("storage.prefault_bytes"), "{text}: {err}");
            assert!(err.contains(why), "{text}: {err}");
        }
        let text = format!("{tiered}prefault_bytes = 1048576\n");
        ServerConfig::from_env_and_str(&text, env(&[])).unwrap();
    }

    #[test]
    fn booleans_from_the_environment_take_the_usual_spellings_in_any_case() {
        let var = "BENCHFS_NETWORK_SHARED_MEMORY";
        for (value, want) in [("TRUE", true), ("Yes", true), ("on", true), ("1", true)]
            .into_iter()
            .chain([
                ("False", false),
                ("NO", false),
                ("off", false),
                ("0", false),
            ])
        {
            let c = ServerConfig::from_env_and_str("", env(&[(var, value)])).unwrap();
            assert_eq!(c.network.shared_memory, want, "{value}");
        }
        for value in ["", "2", "maybe"] {
            let err = ServerConfig::from_env_and_str("", env(&[(var, value)])).unwrap_err();
            assert!(err.to_string().contains("not a boolean"), "{value}: {err}");
        }
    }

    #[test]
    fn huge_pages_are_true_false_or_auto_and_auto_asks_the_host() {
        let memory = "[storage]\nbackend = \"memory\"\n";
        let c = ServerConfig::from_env_and_str(memory, env(&[])).unwrap();
        assert_eq!(c.storage.huge_pages, HugePages::Auto);
        let on_this_host = !benchfs_store::free_page_reporting(std::path::Path::new(
            benchfs_store::VIRTIO_DEVICES_DIR,
        ));
        assert_eq!(c.store_config().huge_pages, on_this_host);
        for (value, want) in [("true", true), ("false", false), ("\"auto\"", on_this_host)] {
            let text = format!("{memory}huge_pages = {value}\n");
            let c = ServerConfig::from_env_and_str(&text, env(&[])).unwrap();
            assert_eq!(c.store_config().huge_pages, want, "{value}");
        }
        for (value, want) in [("on", true), ("0", false), ("AUTO", on_this_host)] {
            let var = ("BENCHFS_STORAGE_HUGE_PAGES", value);
            let c = ServerConfig::from_env_and_str(memory, env(&[var])).unwrap();
            assert_eq!(c.store_config().huge_pages, want, "{value}");
        }
        let var = ("BENCHFS_STORAGE_HUGE_PAGES", "sometimes");
        let err = ServerConfig::from_env_and_str(memory, env(&[var])).unwrap_err();
        assert!(err.to_string().contains("not a boolean or auto"), "{err}");
        for value in ["1", "\"yes\""] {
            let text = format!("{memory}huge_pages = {value}\n");
            let err = ServerConfig::from_env_and_str(&text, env(&[])).unwrap_err();
            let err = err.to_string();
            assert!(
                err.contains("storage.huge_pages") && err.contains("auto"),
                "{err}"
            );
        }
        // Auto never asks a disk backend for huge pages; asking for them is an error.
        let c =
            ServerConfig::from_env_and_str("[storage]\nbackend = \"iouring\"\n", env(&[])).unwrap();
        assert!(!c.store_config().huge_pages);
        let text = "[storage]\nbackend = \"tiered\"\nhuge_pages = true\n";
        ServerConfig::from_env_and_str(text, env(&[])).unwrap();
        for backend in ["file", "iouring"] {
            let text = format!("[storage]\nbackend = \"{backend}\"\nhuge_pages = true\n");
            let err = ServerConfig::from_env_and_str(&text, env(&[])).unwrap_err();
            let err = err.to_string();
            assert!(
                err.contains("storage.huge_pages") && err.contains("memory and tiered"),
                "{err}"
            );
        }
    }

    #[test]
    fn defaults_are_the_shared_limits() {
        let c = ServerConfig::default();
        c.validate_values().unwrap();
        assert_eq!(c.storage.chunk_size_bytes, limits::CHUNK_SIZE_DEFAULT);
        assert_eq!(c.storage.queue_depth, limits::QUEUE_DEPTH_DEFAULT);
        assert_eq!(c.store_config().queue_depth, limits::QUEUE_DEPTH_DEFAULT);
        assert_eq!(
            c.store_config(),
            benchfs_store::StoreConfig::new(c.storage.backend, &c.node.data_dir)
        );
    }

    #[test]
    fn client_windows() {
        let c = ServerConfig::from_env_and_str("", env(&[])).unwrap();
        assert_eq!(
            c.client.write_behind_bytes,
            limits::WRITE_BEHIND_BYTES_DEFAULT
        );
        assert_eq!(c.client.read_ahead_bytes, limits::READ_AHEAD_BYTES_DEFAULT);
        let file = "[client]\nwrite_behind_bytes = 0\nread_ahead_bytes = 4096\n";
        let c = ServerConfig::from_env_and_str(file, env(&[])).unwrap();
        assert_eq!(
            (c.client.write_behind_bytes, c.client.read_ahead_bytes),
            (0, 4096)
        );
        let vars = [
            ("BENCHFS_CLIENT_WRITE_BEHIND_BYTES", "1048576"),
            ("BENCHFS_CLIENT_READ_AHEAD_BYTES", "0"),
        ];
        let c = ServerConfig::from_env_and_str(file, env(&vars)).unwrap();
        assert_eq!(
            (c.client.write_behind_bytes, c.client.read_ahead_bytes),
            (1 << 20, 0)
        );
        for (key, value) in [
            ("write_behind_bytes", "-1".to_string()),
            ("read_ahead_bytes", "-1".to_string()),
            (
                "write_behind_bytes",
                (limits::WRITE_BEHIND_BYTES_MAX + 1).to_string(),
            ),
            (
                "read_ahead_bytes",
                (limits::READ_AHEAD_BYTES_MAX + 1).to_string(),
            ),
        ] {
            let text = format!("[client]\n{key} = {value}\n");
            let err = ServerConfig::from_env_and_str(&text, env(&[])).unwrap_err();
            assert!(
                err.to_string().contains(&format!("client.{key}")),
                "{text}: {err}"
            );
        }
        let err = ServerConfig::from_env_and_str("", env(&[("BENCHFS_CLIENT_READ_AHEAD", "1")]))
            .unwrap_err();
        assert!(
            err.to_string().contains("BENCHFS_CLIENT_READ_AHEAD"),
            "{err}"
        );
    }
}
