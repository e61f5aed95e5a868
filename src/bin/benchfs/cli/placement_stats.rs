//! `benchfs placement-stats`: load balance and key movement of the placement ring.

use std::time::Instant;

use benchfs::placement::{LoadStats, PlacementKey, PlacementRing};

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

fn ring(
    servers: impl Iterator<Item = usize>,
    vnodes: u32,
) -> Result<PlacementRing, super::CliError> {
    Ok(PlacementRing::new(
        servers.map(|i| format!("node{i}")),
        vnodes,
    )?)
}

/// Prints load max/mean, stddev/mean and the moved fraction on a join and a leave.
pub fn run(args: Args) -> Result<(), super::CliError> {
    if args.servers < 2 || args.keys == 0 {
        return Err("need at least 2 servers and 1 key".into());
    }
    let n = args.servers;
    let base = ring(0..n, args.vnodes)?;
    let load = LoadStats::measure(&base, args.keys);
    let joined = ring(0..n + 1, args.vnodes)?;
    let left = ring((0..n).filter(|&i| i != n / 2), args.vnodes)?;
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

    println!(
        "placement: servers={n} vnodes={} keys={} hash=xxh3-64",
        args.vnodes, args.keys
    );
    println!("load max/mean      {:.3}", load.max_over_mean);
    println!("load stddev/mean   {:.3}", load.stddev_over_mean);
    println!(
        "moved on join      {:.5} (ideal 1/(n+1) = {:.5}, ratio {:.2})",
        join,
        1.0 / (n + 1) as f64,
        join * (n + 1) as f64
    );
    println!(
        "moved on leave     {:.5} (ideal 1/n = {:.5}, ratio {:.2})",
        leave,
        1.0 / n as f64,
        leave * n as f64
    );
    println!("lookup             {ns:.1} ns (checksum {})", sink % 7);
    Ok(())
}
