//! `benchfs rpc-bench`: `Ping` round-trip latency and pipelined one-way bandwidth against a
//! freshly started local `benchfsd`, once per busy-poll setting, side by side in one run.
//!
//! Each busy-poll setting gets its own server process and its own client, both configured
//! with that setting, so "polling on" and "polling off" are measured the same way. Results
//! are printed as `key=value` records (one per line, first word is the record type) and
//! then as a table; `scripts/rpc-vs-ucx-perftest.sh` parses the records.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use super::cluster::benchfsd_path;
use super::{commit, CliError};
use benchfs::blocking::{ApiError, BenchFS, FsClient};
use benchfs::client::rpc::OutPayload;
use benchfs::config::ServerConfig;
use benchfs::{limits, registry};
use benchfs_bench::report;

/// Byte every payload is filled with, so that its pages are resident before timing starts.
const PAYLOAD_FILL: u8 = 0xA5;
/// Most payload bytes pre-built for one bandwidth round.
const ROUND_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Most pings in one bandwidth round.
const ROUND_PINGS_MAX: usize = 65_536;
/// A latency figure stops after this many bandwidth budgets even if `--pings` is not reached.
const RTT_BUDGET_FACTOR: f64 = 10.0;
/// How long a server may take to publish its address.
const SERVER_START_MAX: Duration = Duration::from_secs(30);
/// How long a server may take to drain after SIGTERM before it is killed.
const SERVER_STOP_MAX: Duration = Duration::from_secs(5);

const _: () = assert!(ROUND_BYTES_MAX as u64 >= limits::CHUNK_SIZE_MAX);

/// Arguments of `benchfs rpc-bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Busy-poll windows to compare, in microseconds, comma-separated (0 = sleep as soon as
    /// idle). Each gets its own server; server and client use the same value.
    #[arg(long, value_delimiter = ',', default_value = "0,50")]
    pub busy_poll_us: Vec<u64>,
    /// Round trips timed per latency figure.
    #[arg(long, default_value_t = 20_000)]
    pub pings: usize,
    /// Untimed round trips before each latency figure.
    #[arg(long, default_value_t = 1_000)]
    pub warmup: usize,
    /// Payload sizes of the bandwidth figures, in bytes (k, m, g suffixes), comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = parse_payload_size,
        default_value = "8,4096,32768,65536,1048576,4194304"
    )]
    pub sizes: Vec<usize>,
    /// Pings in flight during a bandwidth figure.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Seconds of timed pings per bandwidth figure; a latency figure stops after ten times
    /// that even short of --pings (its line says how many it made).
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,
    /// Payloads above this many bytes go by rendezvous (default: the config default).
    #[arg(long)]
    pub rdma_threshold: Option<u64>,
    /// Busy-poll window of the client only, in microseconds (default: the server's), to
    /// tell which side's polling matters.
    #[arg(long)]
    pub client_busy_poll_us: Option<u64>,
    /// Copy each payload from the caller's buffer into a send buffer, as the async
    /// `FsClient::write` does with a borrowed slice. By default one shared buffer is sent
    /// again and again with no copy, as ucx_perftest does and as the blocking API's
    /// writes do (they lend the caller's slice), so the figures are the RPC layer's own.
    #[arg(long)]
    pub copy_payload: bool,
    /// Send the bandwidth figures' payloads from this many bytes of distinct buffers in
    /// turn instead of one buffer again and again: one buffer stays in the CPU's cache,
    /// while a file's chunks come from memory as large as the file (0: one buffer; k, m,
    /// g suffixes).
    #[arg(long, default_value = "0", value_parser = parse_set_size)]
    pub payload_set_bytes: usize,
}

/// Latency of one payload size.
#[derive(Debug, Clone)]
struct RttFigure {
    payload_bytes: usize,
    pings: usize,
    p50_ns: u64,
    p99_ns: u64,
    mean_ns: u64,
    max_ns: u64,
}

/// Bandwidth of one payload size.
#[derive(Debug, Clone)]
struct BwFigure {
    payload_bytes: usize,
    pings: usize,
    elapsed: Duration,
}

impl BwFigure {
    fn mib_per_s(&self) -> f64 {
        (self.payload_bytes * self.pings) as f64 / self.elapsed.as_secs_f64() / (1024.0 * 1024.0)
    }

    fn pings_per_s(&self) -> f64 {
        self.pings as f64 / self.elapsed.as_secs_f64()
    }
}

/// All figures of one busy-poll setting.
#[derive(Debug)]
struct Variant {
    busy_poll_us: u64,
    rtt: Vec<RttFigure>,
    bw: Vec<BwFigure>,
}

/// A bandwidth figure's payload size: at least one byte.
fn parse_payload_size(s: &str) -> Result<usize, String> {
    match super::bench::parse_size(s)? {
        0 => Err("a bandwidth figure needs a payload of at least 1 byte".into()),
        n => usize::try_from(n).map_err(|_| format!("{s:?} is too large")),
    }
}

/// The payload set's size: any number of bytes.
fn parse_set_size(s: &str) -> Result<usize, String> {
    usize::try_from(super::bench::parse_size(s)?).map_err(|_| format!("{s:?} is too large"))
}

/// Runs `benchfs rpc-bench`.
pub fn run(args: Args) -> Result<(), CliError> {
    check_args(&args)?;
    let largest = args.largest_size() as u64;
    // The servers' chunks are the default size, or larger if a payload needs it.
    let chunk_size = largest.next_power_of_two().max(limits::CHUNK_SIZE_DEFAULT);
    let rdma_threshold = args
        .rdma_threshold
        .unwrap_or(limits::RENDEZVOUS_THRESHOLD_DEFAULT);
    let (ucx_major, ucx_minor, ucx_release) = benchfs_ucx::ucx_version();
    let [one, five, fifteen] = report::load_average();
    outln!(
        "host nproc={} cpu=\"{}\" loadavg=\"{one:.2} {five:.2} {fifteen:.2}\"",
        report::host_facts().2,
        cpu_model(),
    );
    outln!(
        "build commit={} profile={} ucx={ucx_major}.{ucx_minor}.{ucx_release} ucx_tls={}",
        commit(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        std::env::var("UCX_TLS").unwrap_or_else(|_| "default".into()),
    );
    outln!(
        "config servers=1 backend=memory busy_poll_us={} pings={} warmup={} window={} seconds={} rdma_threshold_bytes={rdma_threshold} chunk_size_bytes={chunk_size} client_busy_poll_us={} copy_payload={} payload_set_bytes={}",
        join(&args.busy_poll_us),
        args.pings,
        args.warmup,
        args.window,
        args.seconds,
        args.client_busy_poll_us.map_or("same".to_string(), |us| us.to_string()),
        args.copy_payload,
        args.payload_set_bytes,
    );
    let mut variants = Vec::new();
    for &busy_poll_us in &args.busy_poll_us {
        let server = Server::start(busy_poll_us, rdma_threshold, chunk_size)?;
        let mut client_config = server.config.clone();
        if let Some(us) = args.client_busy_poll_us {
            client_config.network.busy_poll = Duration::from_micros(us);
        }
        let fs = BenchFS::connect(&client_config)?;
        let transports: Vec<String> = fs
            .block_on(fs.client().server_transports())
            .into_iter()
            .filter_map(|(_, lanes)| lanes.ok())
            .flatten()
            .collect();
        outln!(
            "transport busy_poll_us={busy_poll_us} shared_memory={} lanes={}",
            client_config.network.shared_memory,
            transports.join(",")
        );
        let variant = measure(&fs, busy_poll_us, &args)?;
        drop(fs);
        server.stop();
        variants.push(variant);
    }
    super::print_out(&table(&variants))
}

impl Args {
    /// The largest payload size asked for (0 for none).
    fn largest_size(&self) -> usize {
        self.sizes.iter().copied().max().unwrap_or(0)
    }
}

/// The first value `values` holds twice, if any.
fn repeated<T: Ord + Copy>(values: &[T]) -> Option<T> {
    let mut seen = std::collections::BTreeSet::new();
    values.iter().copied().find(|&v| !seen.insert(v))
}

fn check_args(args: &Args) -> Result<(), CliError> {
    if args.busy_poll_us.is_empty() {
        return Err("--busy-poll-us needs at least one value".into());
    }
    // Each value is a server and a set of figures of its own: one given twice (a repeated
    // flag adds to the list) would be measured twice and printed as two columns.
    if let Some(us) = repeated(&args.busy_poll_us) {
        return Err(format!("--busy-poll-us {us} is given twice").into());
    }
    if let Some(size) = repeated(&args.sizes) {
        return Err(format!("--sizes {size} is given twice").into());
    }
    if let Some(&us) = args
        .busy_poll_us
        .iter()
        .find(|&&us| Duration::from_micros(us) > limits::BUSY_POLL_MAX)
    {
        return Err(format!(
            "--busy-poll-us {us} is above the limit of {} us",
            limits::BUSY_POLL_MAX.as_micros()
        )
        .into());
    }
    if let Some(us) = args
        .client_busy_poll_us
        .filter(|&us| Duration::from_micros(us) > limits::BUSY_POLL_MAX)
    {
        return Err(format!(
            "--client-busy-poll-us {us} is above the limit of {} us",
            limits::BUSY_POLL_MAX.as_micros()
        )
        .into());
    }
    if args.pings == 0 || args.pings > 10_000_000 {
        return Err("--pings must be 1..=10000000".into());
    }
    if args.warmup > 1_000_000 {
        return Err("--warmup must be at most 1000000".into());
    }
    if args.window == 0 || args.window > ServerConfig::default().network.inflight_max as usize {
        return Err(format!(
            "--window must be 1..={}",
            ServerConfig::default().network.inflight_max
        )
        .into());
    }
    if !(args.seconds > 0.0 && args.seconds <= 600.0) {
        return Err("--seconds must be in (0, 600]".into());
    }
    if let Some(&size) = args
        .sizes
        .iter()
        .find(|&&s| s as u64 > limits::CHUNK_SIZE_MAX)
    {
        return Err(format!(
            "payload size {size} is above the largest chunk ({} bytes)",
            limits::CHUNK_SIZE_MAX
        )
        .into());
    }
    let largest = args.largest_size();
    if args.payload_set_bytes > 0 && args.payload_set_bytes < largest {
        return Err(format!(
            "--payload-set-bytes {} holds less than one {largest}-byte payload: give at least that, or 0 for one buffer",
            args.payload_set_bytes
        )
        .into());
    }
    check_memory(args, benchfs::storage::available_memory())
}

/// Refuses a run whose payloads would not fit in `available` bytes of memory (`None`: not
/// known, not checked): the client's payload set (or copies, with `--copy-payload`) and
/// the server's receive buffers, `--window` of the largest size each. Past it the server
/// was killed for memory and the only error was a reset connection.
fn check_memory(args: &Args, available: Option<u64>) -> Result<(), CliError> {
    let Some(available) = available else {
        return Ok(());
    };
    let largest = args.largest_size() as u64;
    let in_flight = (args.window as u64).saturating_mul(largest);
    let copies = if args.copy_payload { in_flight } else { 0 };
    let needed = (args.payload_set_bytes as u64)
        .max(largest)
        .saturating_add(in_flight)
        .saturating_add(copies);
    if needed <= available {
        return Ok(());
    }
    Err(format!(
        "--window {} of {largest}-byte payloads{} needs about {} MiB of memory, and this host \
         has {} MiB available: lower --window, --sizes or --payload-set-bytes",
        args.window,
        if args.payload_set_bytes > 0 {
            format!(" from a {}-byte set", args.payload_set_bytes)
        } else {
            String::new()
        },
        needed >> 20,
        available >> 20,
    )
    .into())
}

/// Measures every figure of one busy-poll setting, printing each record as it is done.
fn measure(fs: &BenchFS, busy_poll_us: u64, args: &Args) -> Result<Variant, CliError> {
    let budget = Duration::from_secs_f64(args.seconds);
    let mut variant = Variant {
        busy_poll_us,
        rtt: Vec::new(),
        bw: Vec::new(),
    };
    for payload_bytes in [0, 8] {
        let r = round_trips(
            fs,
            payload_bytes,
            args.pings,
            args.warmup,
            budget.mul_f64(RTT_BUDGET_FACTOR),
            args.copy_payload,
        )?;
        outln!(
            "rtt busy_poll_us={busy_poll_us} payload_bytes={} pings={} p50_us={:.2} p99_us={:.2} mean_us={:.2} max_us={:.2}",
            r.payload_bytes,
            r.pings,
            us(r.p50_ns),
            us(r.p99_ns),
            us(r.mean_ns),
            us(r.max_ns)
        );
        variant.rtt.push(r);
    }
    for &size in &args.sizes {
        let payloads = Payloads::new(size, args.payload_set_bytes, args.copy_payload);
        let b = bandwidth(fs, &payloads, args.window, budget)?;
        outln!(
            "bw busy_poll_us={busy_poll_us} payload_bytes={} window={} pings={} seconds={:.3} mib_per_s={:.2} pings_per_s={:.0}",
            b.payload_bytes,
            args.window,
            b.pings,
            b.elapsed.as_secs_f64(),
            b.mib_per_s(),
            b.pings_per_s()
        );
        variant.bw.push(b);
    }
    Ok(variant)
}

/// The payload of one ping: `shared` itself, or a copy of it when `copy` is set.
fn ping_payload(client: &FsClient, shared: &Rc<[u8]>, copy: bool) -> OutPayload {
    if copy {
        client.copy_payload(shared)
    } else {
        OutPayload::Shared(Rc::clone(shared))
    }
}

/// One ping at a time; every round trip is timed.
fn round_trips(
    fs: &BenchFS,
    payload_bytes: usize,
    pings: usize,
    warmup: usize,
    budget: Duration,
    copy: bool,
) -> Result<RttFigure, CliError> {
    let client = fs.client();
    let payload: Rc<[u8]> = vec![PAYLOAD_FILL; payload_bytes].into();
    let mut nanos: Vec<u64> = Vec::with_capacity(pings);
    fs.block_on(async {
        for _ in 0..warmup {
            client.ping(0, ping_payload(client, &payload, copy)).await?;
        }
        let deadline = Instant::now() + budget;
        for _ in 0..pings {
            let start = Instant::now();
            client.ping(0, ping_payload(client, &payload, copy)).await?;
            let end = Instant::now();
            nanos.push(end.duration_since(start).as_nanos() as u64);
            if end > deadline {
                break;
            }
        }
        Ok::<(), ApiError>(())
    })?;
    assert!(!nanos.is_empty(), "at least one timed ping");
    nanos.sort_unstable();
    let sum: u128 = nanos.iter().map(|&n| u128::from(n)).sum();
    Ok(RttFigure {
        payload_bytes,
        pings: nanos.len(),
        p50_ns: percentile(&nanos, 50.0),
        p99_ns: percentile(&nanos, 99.0),
        mean_ns: (sum / nanos.len() as u128) as u64,
        max_ns: nanos[nanos.len() - 1],
    })
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u64], pct: f64) -> u64 {
    assert!(!sorted.is_empty() && (0.0..=100.0).contains(&pct));
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The payloads of a bandwidth figure: buffers of one size, sent in turn.
struct Payloads {
    size: usize,
    buffers: Vec<Rc<[u8]>>,
    next: Cell<usize>,
    copy: bool,
}

impl Payloads {
    /// Enough buffers of `size` bytes to fill `set_bytes` (at least one).
    fn new(size: usize, set_bytes: usize, copy: bool) -> Payloads {
        let count = set_bytes.div_ceil(size.max(1)).max(1);
        Payloads {
            size,
            buffers: (0..count)
                .map(|_| vec![PAYLOAD_FILL; size].into())
                .collect(),
            next: Cell::new(0),
            copy,
        }
    }

    /// The next ping's payload.
    fn next(&self, client: &FsClient) -> OutPayload {
        let i = self.next.get();
        self.next.set((i + 1) % self.buffers.len());
        ping_payload(client, &self.buffers[i], self.copy)
    }
}

/// `window` pings in flight at a time for about `budget`, in rounds sized to the rate seen
/// so far; each lane starts a new ping as soon as its last one is answered. One untimed
/// round warms up.
fn bandwidth(
    fs: &BenchFS,
    payloads: &Payloads,
    window: usize,
    budget: Duration,
) -> Result<BwFigure, CliError> {
    let size = payloads.size;
    let round = (ROUND_BYTES_MAX / size.max(1)).clamp(window * 4, ROUND_PINGS_MAX.max(window * 4));
    let left = Cell::new(round.min(window * 8));
    fs.block_on(lanes(fs.client(), payloads, &left, window))?;
    let mut elapsed = Duration::ZERO;
    let mut pings = 0;
    while elapsed < budget {
        let n = if pings == 0 {
            round.min(window * 16)
        } else {
            let rate = pings as f64 / elapsed.as_secs_f64();
            ((budget - elapsed).as_secs_f64() * rate)
                .ceil()
                .clamp(window as f64, round as f64) as usize
        };
        left.set(n);
        let start = Instant::now();
        fs.block_on(lanes(fs.client(), payloads, &left, window))?;
        elapsed += start.elapsed();
        pings += n;
    }
    Ok(BwFigure {
        payload_bytes: size,
        pings,
        elapsed,
    })
}

/// Sends `left` pings of `payloads` with `window` in flight.
async fn lanes(
    client: &FsClient,
    payloads: &Payloads,
    left: &Cell<usize>,
    window: usize,
) -> Result<(), ApiError> {
    let lane = || async {
        while left.get() > 0 {
            left.set(left.get() - 1);
            client.ping(0, payloads.next(client)).await?;
        }
        Ok(())
    };
    join_all((0..window).map(|_| lane()))
        .await
        .into_iter()
        .collect()
}

/// A `benchfsd` started for this run, in its own temporary directory. Dropping it stops
/// the process and removes the directory.
struct Server {
    child: Option<Child>,
    dir: PathBuf,
    config: ServerConfig,
}

impl Server {
    fn start(busy_poll_us: u64, rdma_threshold: u64, chunk_size: u64) -> Result<Server, CliError> {
        let dir = std::env::temp_dir().join(format!(
            "benchfs-rpc-bench-{}-{busy_poll_us}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let quoted = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
        let toml = format!(
            "[node]\ndata_dir = {}\n[storage]\nbackend = \"memory\"\nchunk_size = {chunk_size}\n[network]\nbind_addr = \"127.0.0.1:0\"\nregistry_dir = {}\nbusy_poll_us = {busy_poll_us}\nrdma_threshold_bytes = {rdma_threshold}\n",
            quoted(&dir.join("data")),
            quoted(&dir.join("registry")),
        );
        let config_path = dir.join("benchfs.toml");
        std::fs::write(&config_path, toml)?;
        let config = ServerConfig::from_file(&config_path)?;
        let log = std::fs::File::create(dir.join("benchfsd.log"))?;
        let child = Command::new(benchfsd_path()?)
            .arg("--config")
            .arg(&config_path)
            .arg("--node-id")
            .arg("node0")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut server = Server {
            child: Some(child),
            dir,
            config,
        };
        server.wait_published()?;
        Ok(server)
    }

    fn wait_published(&mut self) -> Result<(), CliError> {
        let deadline = Instant::now() + SERVER_START_MAX;
        loop {
            if registry::read(&self.config.network.registry_dir).is_ok_and(|e| !e.is_empty()) {
                return Ok(());
            }
            let exited = match self.child.as_mut() {
                Some(child) => child.try_wait()?.is_some(),
                None => true,
            };
            if exited || Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.dir.join("benchfsd.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(format!(
                    "benchfsd did not come up; its log ends:\n{}",
                    tail.join("\n")
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited in time.
    fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        super::cluster::signal(child.id(), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + SERVER_STOP_MAX;
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn table(variants: &[Variant]) -> String {
    let Some(first) = variants.first() else {
        return String::new();
    };
    let mut header = format!("{:<26}", "figure");
    for v in variants {
        header.push_str(&format!(" {:>14}", format!("poll={}us", v.busy_poll_us)));
    }
    let mut table = format!("\n{header}\n");
    let mut row = |label: String, cells: Vec<f64>| {
        table.push_str(&format!("{label:<26}"));
        for c in cells {
            table.push_str(&format!(" {c:>14.2}"));
        }
        table.push('\n');
    };
    for (i, r) in first.rtt.iter().enumerate() {
        let size = r.payload_bytes;
        row(
            format!("rtt p50 us ({size} B)"),
            variants.iter().map(|v| us(v.rtt[i].p50_ns)).collect(),
        );
        row(
            format!("rtt p99 us ({size} B)"),
            variants.iter().map(|v| us(v.rtt[i].p99_ns)).collect(),
        );
        row(
            format!("rtt mean us ({size} B)"),
            variants.iter().map(|v| us(v.rtt[i].mean_ns)).collect(),
        );
    }
    for (i, b) in first.bw.iter().enumerate() {
        row(
            format!("bw MiB/s ({})", size_label(b.payload_bytes)),
            variants.iter().map(|v| v.bw[i].mib_per_s()).collect(),
        );
    }
    table
}

fn size_label(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

fn us(nanos: u64) -> f64 {
    nanos as f64 / 1000.0
}

fn join(values: &[u64]) -> String {
    values
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().replace('"', "'"))
        })
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(samples: &[u64], pct: f64, expected: u64) {
        assert_eq!(percentile(samples, pct), expected, "{pct} of {samples:?}");
    }

    #[test]
    fn percentile_nearest_rank() {
        check(&[5], 50.0, 5);
        check(&[5], 99.0, 5);
        check(&[1, 2, 3, 4], 50.0, 2);
        check(&[1, 2, 3, 4], 99.0, 4);
        check(&[1, 2, 3, 4], 0.0, 1);
        check(&(1..=100).collect::<Vec<_>>(), 99.0, 99);
        check(&(1..=100).collect::<Vec<_>>(), 100.0, 100);
    }

    fn args(argv: &[&str]) -> Args {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let argv = std::iter::once("rpc-bench").chain(argv.iter().copied());
        <Cli as clap::Parser>::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn payloads_that_do_not_fit_in_memory_are_refused() {
        const MIB: u64 = 1 << 20;
        // 16 x 1 MiB in flight beside one 1 MiB buffer: 17 MiB.
        let sixteen = args(&["--window", "16", "--sizes", "4k,1m"]);
        assert!(check_memory(&sixteen, Some(17 * MIB)).is_ok());
        let err = check_memory(&sixteen, Some(17 * MIB - 1)).unwrap_err();
        assert!(
            err.to_string().contains("--window 16 of 1048576-byte"),
            "{err}"
        );
        assert!(check_memory(&sixteen, None).is_ok());
        let copied = args(&["--window", "16", "--sizes", "1m", "--copy-payload"]);
        assert!(check_memory(&copied, Some(17 * MIB)).is_err());
        assert!(check_memory(&copied, Some(33 * MIB)).is_ok());
        let set = args(&["--sizes", "1m", "--payload-set-bytes", "1g"]);
        assert!(check_memory(&set, Some(1024 * MIB)).is_err());
        assert!(check_memory(&set, Some(1040 * MIB)).is_ok());
    }

    #[test]
    fn a_value_given_twice_is_refused() {
        let err = check_args(&args(&["--busy-poll-us", "0,50", "--busy-poll-us", "50"]));
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("--busy-poll-us 50 is given twice"),
            "a repeated flag adds to the list"
        );
        let err = check_args(&args(&["--sizes", "4k,4096"])).unwrap_err();
        assert!(
            err.to_string().contains("--sizes 4096 is given twice"),
            "{err}"
        );
        assert!(check_args(&args(&["--busy-poll-us", "0,50", "--sizes", "8,4k"])).is_ok());
    }

    #[test]
    fn size_labels() {
        assert_eq!(size_label(8), "8 B");
        assert_eq!(size_label(4096), "4 KiB");
        assert_eq!(size_label(4 << 20), "4 MiB");
        assert_eq!(size_label(1000), "1000 B");
    }
}
