//! `benchfs placement-stats`: load balance and key movement of the placement ring.

use std::time::Instant;

use benchfs::limits::VIRTUAL_NODES_MAX;
use benchfs::placement::{LoadStats, PlacementKey, PlacementRing};

/// The most servers a run simulates.
const SERVERS_MAX: usize = 65_536;
/// The most ring points (servers times virtual nodes) a run builds: three rings of 16 M
/// points of 16 bytes each are about 800 MB, and seconds to build.
const POINTS_MAX: u64 = 16 << 20;

/// Arguments of `benchfs placement-stats`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Servers on the ring.
    #[arg(long, default_value_t = 1024)]
    servers: usize,
    /// Keys to place.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Virtual nodes per server.
    #[arg(long, default_value_t = benchfs::limits::VIRTUAL_NODES_DEFAULT)]
    vnodes: u32,
}

/// `count` simulated node ids, `node{i}`.
fn node_ids(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("node{i}")).collect()
}

fn ring<'a>(
    ids: impl Iterator<Item = &'a String>,
    vnodes: u32,
) -> Result<PlacementRing, super::CliError> {
    Ok(PlacementRing::new(ids, vnodes)?)
}

/// Refuses a simulation out of bounds, naming the flags.
fn check(args: &Args) -> Result<(), super::CliError> {
    if !(2..=SERVERS_MAX).contains(&args.servers) {
        return Err(format!(
            "--servers {}: simulate from 2 to {SERVERS_MAX} servers",
            args.servers
        )
        .into());
    }
    if !(1..=VIRTUAL_NODES_MAX).contains(&args.vnodes) {
        return Err(format!(
            "--vnodes {}: give from 1 to {VIRTUAL_NODES_MAX} virtual nodes per server",
            args.vnodes
        )
        .into());
    }
    let points = args.servers as u64 * u64::from(args.vnodes);
    if points > POINTS_MAX {
        return Err(format!(
            "--servers {} with --vnodes {} is {points} ring points; simulate at most \
             {POINTS_MAX} (fewer servers or virtual nodes)",
            args.servers, args.vnodes
        )
        .into());
    }
    if args.keys == 0 {
        return Err("--keys 0: place at least 1 key".into());
    }
    Ok(())
}

/// Prints load max/mean, stddev/mean and the moved fraction on a join and a leave.
pub fn run(args: Args) -> Result<(), super::CliError> {
    check(&args)?;
    let n = args.servers;
    // n + 1 ids: the ring of n, and the one a server joins.
    let ids = node_ids(n + 1);
    let base = ring(ids[..n].iter(), args.vnodes)?;
    let load = LoadStats::measure(&base, args.keys);
    let joined = ring(ids.iter(), args.vnodes)?;
    let left = ring(
        ids[..n]
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != n / 2)
            .map(|(_, id)| id),
        args.vnodes,
    )?;
    let join = LoadStats::moved_fraction(&base, &joined, args.keys);
    let leave = LoadStats::moved_fraction(&base, &left, args.keys);

    let lookups = 1_000_000u64;
    let start = Instant::now();
    let mut sink = 0u64;
    for i in 0..lookups {
        sink = sink.wrapping_add(u64::from(base.owner(PlacementKey::Chunk {
            file_id: i,
            index: 0,
        })));
    }
    let ns = start.elapsed().as_nanos() as f64 / lookups as f64;

    outln!(
        "placement: servers={n} vnodes={} keys={} hash=xxh3-64",
        args.vnodes,
        args.keys
    );
    outln!("load max/mean      {:.3}", load.max_over_mean);
    outln!("load stddev/mean   {:.3}", load.stddev_over_mean);
    outln!(
        "moved on join      {:.5} (ideal 1/(n+1) = {:.5}, ratio {:.2})",
        join,
        1.0 / (n + 1) as f64,
        join * (n + 1) as f64
    );
    outln!(
        "moved on leave     {:.5} (ideal 1/n = {:.5}, ratio {:.2})",
        leave,
        1.0 / n as f64,
        leave * n as f64
    );
    outln!("lookup             {ns:.1} ns (checksum {})", sink % 7);
    Ok(())
}
