//! `benchfsd`: one server process. Loads the configuration, opens the store, listens,
//! publishes its address, serves until SIGTERM or SIGINT, then drains and exits.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use benchfs_store::ChunkStore;
use benchfs_ucx::netif::{self, Interface};
use benchfs_ucx::{Context, Features, Listener, Role, Worker};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::budget::PayloadBudget;
use crate::claim::Fence;
use crate::handler::ServerState;
use crate::rpc::{serve, ServeOptions, REQUEST_POLLS};
use benchfs_config::registry::{self, ServerEntry};
use benchfs_config::secret;
use benchfs_config::{launcher_rank, Backend, ConfigError, NetworkConfig, ServerConfig};

/// Command-line arguments of `benchfsd`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "benchfsd",
    version,
    about = "BenchFS server: one per core of each node of a job"
)]
pub struct Args {
    /// Configuration file; without it, defaults and BENCHFS_* variables apply.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Registry directory (overrides network.registry_dir).
    #[arg(long)]
    pub registry: Option<PathBuf>,
    /// Data directory (overrides node.data_dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Node id (overrides node.node_id).
    #[arg(long)]
    pub node_id: Option<String>,
    /// Listen address (overrides network.bind_addr).
    #[arg(long)]
    pub bind: Option<SocketAddr>,
    /// Chunk store backend (overrides storage.backend).
    #[arg(long)]
    pub backend: Option<String>,
    /// Job secret file (private to its owner; default: $BENCHFS_SECRET_FILE); clients prove
    /// they know the same bytes in the handshake, which never sends them.
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
}

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// The configuration is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The server state could not be opened.
    #[error(transparent)]
    Open(#[from] crate::handler::OpenError),
    /// UCX failed to start.
    #[error("UCX: {0}")]
    Ucx(#[from] benchfs_ucx::UcxError),
    /// The listener could not be made at the configured address (taken, or not this
    /// host's).
    #[error("cannot listen on {addr} (network.bind_addr, --bind): {source}; is another server or program using that address?")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// UCX's error.
        source: benchfs_ucx::UcxError,
    },
    /// The registry could not be written.
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    /// The job secret file is not usable.
    #[error("--secret-file: {0}")]
    Secret(#[from] secret::SecretError),
    /// The node id or the data directory is taken by a running server.
    #[error(transparent)]
    Claim(#[from] crate::claim::ClaimError),
    /// Setting up the runtime, the log or the signal handlers failed.
    #[error("{what}: {source}")]
    Setup {
        /// What was being set up.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The final syncs at a stop failed: what clients were told was written may be lost.
    #[error("stopped without making everything durable ({0}); acknowledged writes may be lost")]
    FinalSync(String),
}

/// Builds the configuration from the file, the environment, the flags and the launcher
/// rank, in that order of precedence (later wins).
pub fn load_config(args: &Args) -> Result<ServerConfig, DaemonError> {
    let mut config = match &args.config {
        Some(path) => ServerConfig::from_file(path)?,
        None => ServerConfig::from_env()?,
    };
    if let Some(dir) = &args.registry {
        config.network.registry_dir = dir.clone();
    }
    if let Some(dir) = &args.data_dir {
        config.node.data_dir = dir.clone();
    }
    if let Some(id) = &args.node_id {
        config.node.node_id = id.clone();
    }
    if let Some(addr) = args.bind {
        config.network.bind_addr = addr;
    }
    if let Some(backend) = &args.backend {
        config.storage.backend =
            backend
                .parse()
                .map_err(|e: benchfs_store::StoreError| ConfigError::Invalid {
                    key: "storage.backend",
                    reason: e.to_string(),
                })?;
        if config.storage.backend == Backend::Memory {
            config.storage.o_direct = false;
        }
    }
    config.validate()?;
    // Only variables that are UTF-8: `std::env::vars` panics on any other.
    let utf8_vars = std::env::vars_os()
        .filter_map(|(key, value)| Some((key.into_string().ok()?, value.into_string().ok()?)));
    if let Some(rank) = launcher_rank(utf8_vars)? {
        config = config.for_rank(rank)?;
        // One port per rank on a node; port 0 lets the OS choose.
        config.network.bind_addr.set_port(0);
        if let Some(metrics) = &mut config.network.metrics_addr {
            metrics.set_port(0);
        }
    }
    Ok(config)
}

fn init_logging(config: &ServerConfig) -> Result<(), DaemonError> {
    let path = config.node.data_dir.join("benchfs.log");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|source| DaemonError::Setup {
            what: "opening benchfs.log",
            source,
        })?;
    let level = match config.node.log_level {
        benchfs_config::LogLevel::Error => tracing::Level::ERROR,
        benchfs_config::LogLevel::Warn => tracing::Level::WARN,
        benchfs_config::LogLevel::Info => tracing::Level::INFO,
        benchfs_config::LogLevel::Debug => tracing::Level::DEBUG,
        benchfs_config::LogLevel::Trace => tracing::Level::TRACE,
    };
    let log = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(std::io::stderr.and(Arc::new(file)))
        .with_filter(LevelFilter::from_level(level));
    let trace = match &config.node.trace_file {
        Some(path) => Some(trace_layer(path)?),
        None => None,
    };
    // A second init (tests in one process) keeps the first subscriber; that is fine.
    let _ = tracing_subscriber::registry()
        .with(log)
        .with(trace)
        .try_init();
    Ok(())
}

/// The layer of `node.trace_file`: everything at trace level, the span of each RPC
/// included, written when the span closes (with its fields: operation, sizes, status,
/// latency). Off by default, so the spans cost a level check.
fn trace_layer<S>(path: &std::path::Path) -> Result<impl Layer<S>, DaemonError>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| DaemonError::Setup {
            what: "opening node.trace_file",
            source,
        })?;
    Ok(tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(Arc::new(file))
        .with_span_events(FmtSpan::CLOSE)
        .with_filter(LevelFilter::TRACE))
}

/// Starts the Prometheus endpoint when `network.metrics_addr` is set, and writes the
/// address it listens on to `data_dir/metrics.addr` (port 0, or a launcher's rank, lets
/// the OS choose the port). Done before the server publishes itself, so the file is this
/// run's once the server is in the registry.
async fn start_metrics(
    config: &ServerConfig,
    state: &Rc<ServerState>,
) -> Result<Option<tokio::task::JoinHandle<()>>, DaemonError> {
    let Some(addr) = config.network.metrics_addr else {
        return Ok(None);
    };
    let bind = |source| DaemonError::Setup {
        what: "listening on network.metrics_addr",
        source,
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(bind)?;
    let bound = listener.local_addr().map_err(bind)?;
    let path = config.node.data_dir.join(METRICS_ADDR_FILE);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{bound}\n"))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|source| DaemonError::Setup {
            what: "writing metrics.addr",
            source,
        })?;
    tracing::info!(%bound, "metrics endpoint listening (network.metrics_addr)");
    let serve = crate::prometheus::serve(listener, Rc::clone(state));
    Ok(Some(tokio::task::spawn_local(serve)))
}

/// The file in the data directory that names the address the metrics endpoint listens on.
pub const METRICS_ADDR_FILE: &str = "metrics.addr";

/// The address clients should use: the bound one, or for a wildcard bind, this host's
/// first non-loopback IPv4 address (loopback when there is none).
fn advertised_addr(bound: SocketAddr) -> SocketAddr {
    if !bound.ip().is_unspecified() {
        return bound;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let ip = (host.trim(), bound.port())
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.find(|a| a.is_ipv4() && !a.ip().is_loopback()))
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    SocketAddr::new(ip, bound.port())
}

/// A server's UCX context: SO_REUSEADDR on the listener, shared memory with processes on
/// this host when `shared_memory` says, and only the network devices of [`net_devices`].
fn ucx_context(network: &NetworkConfig, shared_memory: bool) -> Result<Arc<Context>, DaemonError> {
    // A restarted server binds the port it had while old connections sit in TIME_WAIT.
    // UCT keys go without their component's prefix: UCX_TCP_CM_REUSEADDR is CM_REUSEADDR
    // (TCP_CM_REUSEADDR is not applied, and UCX warns "invalid configuration").
    let mut overrides = vec![("CM_REUSEADDR", "y".to_string())];
    overrides.extend(
        benchfs_ucx::transport_config(shared_memory, Role::Server)
            .into_iter()
            .map(|(key, value)| (key, value.to_string())),
    );
    if let Some(devices) = net_devices(network)? {
        overrides.push(("NET_DEVICES", devices.join(",")));
    }
    let overrides: Vec<(&str, &str)> = overrides.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Ok(Context::with_config(Features::ALL, &overrides)?)
}

/// The devices UCX may use (`UCX_NET_DEVICES`), so that the server listens only where
/// it was told: `network.devices` when given, else the interface of `bind_addr` and the RDMA
/// ports behind it. `None` (UCX's default, every device) for a wildcard `bind_addr`.
fn net_devices(network: &NetworkConfig) -> Result<Option<Vec<String>>, DaemonError> {
    let interfaces = netif::interfaces().map_err(|source| DaemonError::Setup {
        what: "listing network interfaces",
        source,
    })?;
    let devices = if !network.devices.is_empty() {
        configured_devices(network, &interfaces)?;
        network.devices.clone()
    } else if network.bind_addr.ip().is_unspecified() {
        tracing::warn!(
            bind_addr = %network.bind_addr,
            interfaces = %netif::describe(&interfaces),
            "bind_addr is a wildcard: the listener accepts connections on every interface, \
             and UCX listens on every network device; set network.devices or a specific \
             bind_addr to restrict them"
        );
        return Ok(None);
    } else {
        derived_devices(network, &interfaces)?
    };
    if let Ok(env) = std::env::var("UCX_NET_DEVICES") {
        if env != devices.join(",") {
            tracing::warn!(
                UCX_NET_DEVICES = %env,
                "UCX_NET_DEVICES from the environment is replaced; set network.devices instead"
            );
        }
    }
    // Where UCX's tcp transport will listen: on each device, its first address.
    let tcp: Vec<String> = interfaces
        .iter()
        .filter(|i| devices.contains(&i.name) || devices == ["all"])
        .filter_map(|i| Some(format!("{}={}", i.name, i.tcp_listen_addr()?)))
        .collect();
    if devices == ["all"] {
        tracing::warn!(
            bind_addr = %network.bind_addr,
            ucx_tcp_listens_on = %tcp.join(","),
            "network.devices = [\"all\"]: UCX listens on every network device"
        );
    } else {
        tracing::info!(
            bind_addr = %network.bind_addr,
            devices = %devices.join(","),
            ucx_tcp_listens_on = %tcp.join(","),
            "UCX restricted to network devices"
        );
    }
    Ok(Some(devices))
}

/// The devices of `bind_addr`: its interface and the RDMA ports behind it. The interface
/// must be up, or UCX's tcp transport could not use it.
fn derived_devices(
    network: &NetworkConfig,
    interfaces: &[Interface],
) -> Result<Vec<String>, DaemonError> {
    let bind = network.bind_addr.ip();
    let invalid = |reason: String| {
        DaemonError::Config(ConfigError::Invalid {
            key: "network.bind_addr",
            reason,
        })
    };
    let Some(interface) = interfaces.iter().find(|i| i.addrs.contains(&bind)) else {
        return Err(invalid(format!(
            "{bind} is not an address of this host; its interfaces have {}",
            netif::describe(interfaces)
        )));
    };
    match interface.tcp_listen_addr() {
        None => {
            return Err(invalid(format!(
                "interface {} of {bind} is not up and running, so UCX's tcp transport, \
                 which BenchFS needs, cannot use it",
                interface.name
            )))
        }
        // Peers reach the listener at the bind address and then open their data
        // connections to UCX's own socket, on the interface's first address: a server
        // bound elsewhere came up, published, and was unreachable from a network that
        // routes only the bind address, and it listened where it was not told to.
        Some(first) if first != bind => {
            let devices: Vec<String> = std::iter::once(interface.name.clone())
                .chain(netif::rdma_ports_of(&interface.name))
                .map(|d| format!("{d:?}"))
                .collect();
            return Err(invalid(format!(
                "{bind} is not the first address of interface {}, {first}, and UCX's tcp \
                 transport listens only on an interface's first address: bind {first}, or \
                 set network.devices = [{}] to listen there as well",
                interface.name,
                devices.join(", ")
            )));
        }
        Some(_) => {}
    }
    let mut devices = vec![interface.name.clone()];
    devices.extend(netif::rdma_ports_of(&interface.name));
    Ok(devices)
}

/// Checks `network.devices` against this host: each exists, and at least one is an
/// interface UCX's tcp transport can use (BenchFS needs it; see `benchfs_ucx`).
fn configured_devices(
    network: &NetworkConfig,
    interfaces: &[Interface],
) -> Result<(), DaemonError> {
    let invalid = |reason: String| {
        DaemonError::Config(ConfigError::Invalid {
            key: "network.devices",
            reason,
        })
    };
    if network.devices == ["all"] {
        return Ok(());
    }
    if let Some(missing) = network
        .devices
        .iter()
        .find(|d| !netif::device_exists(d, interfaces))
    {
        return Err(invalid(format!(
            "this host has no network device {missing:?}; its interfaces are {}",
            netif::describe(interfaces)
        )));
    }
    let usable = interfaces
        .iter()
        .any(|i| network.devices.contains(&i.name) && i.tcp_listen_addr().is_some());
    if !usable {
        return Err(invalid(format!(
            "none of {:?} is an interface that is up with an IP address, so UCX's tcp \
             transport, which BenchFS needs, would have no device; interfaces: {}",
            network.devices,
            netif::describe(interfaces)
        )));
    }
    let bind = network.bind_addr.ip();
    if bind.is_unspecified() {
        tracing::warn!(
            bind_addr = %network.bind_addr,
            "bind_addr is a wildcard: the listener accepts connections on every interface; \
             network.devices restricts only UCX's own listening sockets"
        );
    }
    if let Some(interface) = interfaces.iter().find(|i| i.addrs.contains(&bind)) {
        if !network.devices.contains(&interface.name) {
            tracing::warn!(
                bind_addr = %network.bind_addr,
                interface = %interface.name,
                "network.devices does not include the interface of bind_addr: clients reach \
                 the listener there, then UCX moves the connection to the listed devices"
            );
        }
    }
    Ok(())
}

/// Runs a server until SIGTERM or SIGINT.
pub fn run(args: Args) -> Result<(), DaemonError> {
    let config = load_config(&args)?;
    init_logging(&config)?;
    let secret = match secret::secret_file(args.secret_file.as_deref()) {
        Some(path) => secret::read_secret(&path)?,
        None => Vec::new(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| DaemonError::Setup {
            what: "starting the runtime",
            source,
        })?;
    let local = tokio::task::LocalSet::new();
    benchfs_ucx::block_on(&runtime, &local, serve_until_signal(config, secret))
}

/// Starts the orphan sweep and replica repair, unless `storage.orphan_sweep_secs` is 0.
fn start_sweep(
    config: &ServerConfig,
    state: &Rc<ServerState>,
    context: &Arc<Context>,
) -> Option<tokio::task::JoinHandle<()>> {
    let secs = config.storage.orphan_sweep_secs;
    if secs == 0 {
        tracing::info!("orphan sweep off (storage.orphan_sweep_secs = 0)");
        return None;
    }
    let options = crate::sweep::SweepOptions {
        interval: std::time::Duration::from_secs(secs),
        registry_dir: config.network.registry_dir.clone(),
        rpc_timeout: config.network.rpc_timeout,
        replicas: config.replication.replicas as usize,
        virtual_nodes: config.placement.virtual_nodes,
    };
    let sweep = crate::sweep::run(Rc::clone(state), Arc::clone(context), options);
    Some(tokio::task::spawn_local(sweep))
}

/// Completes at the first SIGTERM or SIGINT.
fn stop_signal() -> Result<impl std::future::Future<Output = ()>, DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let setup = |source| DaemonError::Setup {
        what: "installing signal handlers",
        source,
    };
    let mut term = signal(SignalKind::terminate()).map_err(setup)?;
    let mut int = signal(SignalKind::interrupt()).map_err(setup)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("signal received; draining");
    })
}

/// What ends the serving: a stop signal, or the registry entry of this server's node id
/// naming another server (the fence, which then holds the error for the exit).
fn stop_or_replaced(
    config: &ServerConfig,
    entry: &ServerEntry,
) -> Result<(Rc<Fence>, impl std::future::Future<Output = ()>), DaemonError> {
    let signal = stop_signal()?;
    let fence = Rc::new(Fence::new(
        config.network.registry_dir.clone(),
        entry.clone(),
    ));
    let replaced = Rc::clone(&fence);
    let stop = async move {
        tokio::select! {
            () = signal => {}
            () = replaced.until_replaced() => {}
        }
    };
    Ok((fence, stop))
}

/// The registry setting that says whether this server's chunk memory takes huge pages.
const HUGE_PAGES_SETTING: &str = "huge_pages";

/// What this server publishes: where it listens, the counts clients place by, the
/// settings a benchmark report names, whether it takes shared memory (a client that
/// offers it to one that does not crashes it inside UCX), and its inode tag (so that no
/// other server starts with it).
fn registry_entry(config: &ServerConfig, addr: SocketAddr, state: &ServerState) -> ServerEntry {
    ServerEntry {
        replicas: Some(config.replication.replicas),
        virtual_nodes: Some(config.placement.virtual_nodes),
        settings: [
            ("backend", config.storage.backend.to_string()),
            ("chunk_size", config.storage.chunk_size_bytes.to_string()),
            ("inline_bytes", config.storage.inline_bytes.to_string()),
            // Replies past it go by rendezvous, whatever a client's own threshold is.
            (
                "rdma_threshold",
                config.network.rendezvous_threshold_bytes.to_string(),
            ),
            // Whether chunk memory takes huge pages, as `storage.huge_pages` came out on
            // this host (`auto` asks it).
            (
                HUGE_PAGES_SETTING,
                config.store_config().huge_pages.to_string(),
            ),
            (
                registry::SHARED_MEMORY_SETTING,
                config.network.shared_memory.to_string(),
            ),
            (
                crate::claim::INODE_TAG_SETTING,
                format!("{:08x}", state.inode_tag()),
            ),
            (registry::BORN_SETTING, state.born().0.to_string()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect(),
        ..ServerEntry::new(config.node.node_id.clone(), addr)
    }
}

/// Publishes this server in the registry, and marks it a member of the cluster life its
/// store began in (a life that rejoins keeps the mark of the one it rejoins).
fn publish(
    config: &ServerConfig,
    addr: SocketAddr,
    state: &ServerState,
) -> Result<ServerEntry, DaemonError> {
    let entry = registry_entry(config, addr, state);
    registry::publish(&config.network.registry_dir, &entry)?;
    let (born_ns, born_again) = state.born();
    if !born_again {
        registry::mark_member(&config.network.registry_dir, &config.node.node_id, born_ns)?;
    }
    Ok(entry)
}

/// The contexts a server serves with (shared memory as `network.shared_memory` says) and
/// calls its peers with (the duplicate check, the orphan sweep: rare, no payloads): over
/// the network only, since UCX 1.13 aborts a peer that takes no shared memory when a
/// caller offers it, and a peer's setting may differ from ours. One context when this
/// server takes none either.
fn ucx_contexts(network: &NetworkConfig) -> Result<(Arc<Context>, Arc<Context>), DaemonError> {
    let serving = ucx_context(network, network.shared_memory)?;
    let peers = if network.shared_memory {
        ucx_context(network, false)?
    } else {
        Arc::clone(&serving)
    };
    Ok((serving, peers))
}

/// How the request loop serves, from the network settings.
fn serve_options(network: &NetworkConfig) -> ServeOptions {
    ServeOptions {
        inflight_max: network.inflight_max as usize,
        rendezvous_threshold: network.rendezvous_threshold_bytes as usize,
        // Twice the RPC timeout: the client has given up on the call by then, and one
        // slow transfer of a busy but live client does not cost it the connection.
        transfer_timeout: network.rpc_timeout.saturating_mul(2),
        payload_budget: PayloadBudget::new(network.inflight_payload_bytes),
        shared_memory: network.shared_memory,
        polls_for_next: match network.busy_poll.is_zero() {
            true => 0,
            false => REQUEST_POLLS,
        },
    }
}

async fn serve_until_signal(config: ServerConfig, secret: Vec<u8>) -> Result<(), DaemonError> {
    // First: a network device that does not exist is a configuration error.
    let (context, peer_context) = ucx_contexts(&config.network)?;
    // Claimed before anything is opened: a duplicate must not touch the running one's data.
    let _data_dir_lock = crate::claim::lock_data_dir(&config.node.data_dir)?;
    crate::claim::check_node_free(&peer_context, &config, &secret).await?;
    let state = Rc::new(ServerState::open(&config, secret)?);
    crate::claim::check_inode_tag_free(&config, state.inode_tag())?;
    state.remove_probe_leftovers().await;
    let metrics = start_metrics(&config, &state).await?;
    let worker = Worker::new(&context)?;
    let progress =
        tokio::task::spawn_local(Rc::clone(&worker).run_progress(config.network.busy_poll));
    let listener = Listener::bind(&worker, config.network.bind_addr)
        .map(Rc::new)
        .map_err(|source| DaemonError::Listen {
            addr: config.network.bind_addr,
            source,
        })?;
    let addr = advertised_addr(listener.local_addr());
    let entry = publish(&config, addr, &state)?;
    tracing::info!(
        node_id = %entry.node_id,
        %addr,
        backend = %config.storage.backend,
        chunk_size = config.storage.chunk_size_bytes,
        huge_pages = %entry.settings.get(HUGE_PAGES_SETTING).map_or("", String::as_str),
        data_dir = %config.node.data_dir.display(),
        // Whether io_uring got its fixed buffers: without them every I/O maps pages.
        registered_bytes = state.store().registered_region().map_or(0, |(_, len)| len),
        "benchfsd serving"
    );
    let sweep = start_sweep(&config, &state, &peer_context);
    let (fence, stop) = stop_or_replaced(&config, &entry)?;
    let options = serve_options(&config.network);
    // A task of the set, like every hot part of the server: the progress task wakes it and
    // it runs in the same turn.
    let serving = tokio::task::spawn_local(serve(
        Rc::clone(&state),
        Rc::clone(&worker),
        Rc::clone(&listener),
        options,
        stop,
        {
            let fence = Rc::clone(&fence);
            move |now_us| fence.holds(now_us)
        },
    ));
    let served = match serving.await {
        Ok(served) => served,
        // Nothing aborts the task, so only a panic ends it early: pass it on.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    // Withdraw first so no new client finds us, then make everything durable.
    let withdrawn = registry::withdraw(&config.network.registry_dir, &entry);
    let synced = final_sync(&state, &config).await;
    if let Some(sweep) = sweep {
        sweep.abort();
    }
    if let Some(metrics) = metrics {
        metrics.abort();
        let _ = std::fs::remove_file(config.node.data_dir.join(METRICS_ADDR_FILE));
    }
    worker.stop_progress();
    let _ = progress.await;
    // Destroying the listener can crash inside UCX while a client is connecting; exiting
    // cannot.
    listener.keep_until_exit();
    served?;
    withdrawn?;
    synced?;
    if let Some(error) = fence.replaced() {
        return Err(error.into());
    }
    tracing::info!("benchfsd stopped cleanly");
    Ok(())
}

/// Makes everything the server acknowledged durable, then marks the stop clean (without
/// the mark, `cluster down` reports the stop as unclean).
async fn final_sync(state: &ServerState, config: &ServerConfig) -> Result<(), DaemonError> {
    let mut failures = Vec::new();
    if let Err(e) = state.sync_remade() {
        failures.push(format!("sync of the chunks made anew: {e}"));
    }
    if let Err(e) = state.store().sync().await {
        failures.push(format!("store sync: {e}"));
    }
    state.abandon_compaction();
    if let Err(e) = state.sync_metadata() {
        failures.push(format!("metadata sync: {e}"));
    }
    if failures.is_empty() {
        if let Err(e) = state.mark_clean_stop(config) {
            failures.push(format!("recording the clean stop: {e}"));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(DaemonError::FinalSync(failures.join("; ")))
    }
}
