//! The machine's own limits, measured in the same run as the workloads so every result can
//! be read as a share of what the hardware allows: the round trip and the bandwidth of the
//! transport between these clients and these servers (the `Ping` RPC: one UCX Active
//! Message each way, its payload received by the server and dropped), and each server's
//! store (`StoreProbe`, the server's own backend on its own data_dir).

use std::rc::Rc;
use std::time::{Duration, Instant};

use benchfs_client::blocking::BenchFS;
use benchfs_client::rpc::OutPayload;
use benchfs_proto::ops::StoreProbeReply;
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};

use crate::error::{BenchError, Result};
use crate::hist::Latencies;
use crate::phase::RankPhase;

/// What the limits were measured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Median round trip of an empty `Ping` (µs).
    pub rtt_p50_us: f64,
    /// All ranks sending `Ping` payloads to all servers at once (MiB/s).
    pub network_mib_s: f64,
    /// The payload of the bandwidth probe.
    pub network_payload: u64,
    /// Sum over servers of their store's write bandwidth (MiB/s), when probed.
    pub store_write_mib_s: Option<f64>,
    /// Sum over servers of their store's read bandwidth (MiB/s), when probed.
    pub store_read_mib_s: Option<f64>,
}

/// Empty pings each rank times at most.
const RTT_PINGS: usize = 5000;
/// Untimed pings before the timed ones.
const WARMUP_PINGS: usize = 200;
/// How long each probe runs at most.
const PROBE_TIME: Duration = Duration::from_millis(700);
/// Pings in flight per server during the bandwidth probe.
const WINDOW_PER_SERVER: usize = 8;

fn ping_error(e: benchfs_client::ApiError) -> BenchError {
    BenchError(format!("limit probe: {e}"))
}

/// One rank's round trips: empty pings to one server after another.
pub fn round_trips(fs: &BenchFS, rank: u32) -> Result<RankPhase> {
    let client = fs.client();
    let servers = client.servers().len().max(1);
    let mut lat = Latencies::default();
    fs.block_on(async {
        // Untimed: connections made, buffers and caches warm.
        for i in 0..WARMUP_PINGS {
            let server = ((rank as usize + i) % servers) as u32;
            client.ping(server, OutPayload::none()).await?;
        }
        Ok::<(), benchfs_client::ApiError>(())
    })
    .map_err(ping_error)?;
    let mut share = RankPhase::start(rank);
    let deadline = Instant::now() + PROBE_TIME;
    fs.block_on(async {
        for i in 0..RTT_PINGS {
            let server = ((rank as usize + i) % servers) as u32;
            let t = Instant::now();
            client.ping(server, OutPayload::none()).await?;
            lat.record("ping", t.elapsed().as_nanos() as u64);
            share.ops += 1;
            if Instant::now() > deadline {
                break;
            }
        }
        Ok::<(), benchfs_client::ApiError>(())
    })
    .map_err(ping_error)?;
    Ok(share.finish(&lat))
}

/// One rank's share of the bandwidth probe: `payload`-byte pings, 8
/// in flight to every server, for 0.7 s.
pub fn bandwidth(fs: &BenchFS, rank: u32, payload: u64) -> Result<RankPhase> {
    let client = fs.client();
    let data: Rc<[u8]> = vec![0xa5u8; payload as usize].into();
    let mut share = RankPhase::start(rank);
    let deadline = Instant::now() + PROBE_TIME;
    let lanes = (0..client.servers().len() as u32)
        .flat_map(|s| std::iter::repeat_n(s, WINDOW_PER_SERVER))
        .map(|server| {
            let data = Rc::clone(&data);
            async move {
                let mut sent = 0u64;
                while Instant::now() < deadline {
                    client
                        .ping(server, OutPayload::Shared(Rc::clone(&data)))
                        .await?;
                    sent += 1;
                }
                Ok::<u64, benchfs_client::ApiError>(sent)
            }
        });
    let sent = fs.block_on(join_all(lanes));
    for lane in sent {
        let n = lane.map_err(ping_error)?;
        share.ops += n;
        share.bytes += n * payload;
    }
    Ok(share.finish(&Latencies::default()))
}

/// Bytes each server's store probe writes and reads back.
pub const STORE_PROBE_BYTES: u64 = 128 << 20;

/// Every server's store probed at once (rank 0 only): the aggregate write and read
/// bandwidth in MiB/s (see [`store_aggregate`]).
pub fn stores(fs: &BenchFS, block: u64) -> Result<(f64, f64)> {
    let client = fs.client();
    let block = u32::try_from(block).unwrap_or(u32::MAX);
    let sent = Instant::now();
    let probes = (0..client.servers().len() as u32).map(|s| {
        let probe = client.probe_store(s, STORE_PROBE_BYTES, block);
        async move { (probe.await, sent.elapsed()) }
    });
    let replies = fs.block_on(join_all(probes));
    let probed = replies
        .into_iter()
        .map(|(reply, arrived)| {
            let reply = reply.map_err(|e| BenchError(format!("store probe: {e}")))?;
            Ok((reply, arrived))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(store_aggregate(&probed))
}

/// The aggregate write and read bandwidth (MiB/s) of store probes sent together, each
/// with the time its reply arrived: all bytes over the longest write, and over the time
/// some server was reading (the union of the read passes, each taken to end when its
/// reply came). Each server reads once its own write is done, so the read passes of
/// servers whose writes took different times need not overlap: over the slowest read
/// alone, four servers sharing two cores added up to 3-6 times what the cores can copy.
pub fn store_aggregate(probes: &[(StoreProbeReply, Duration)]) -> (f64, f64) {
    let bytes: u64 = probes.iter().map(|(p, _)| p.bytes).sum();
    let write_ns = probes.iter().map(|(p, _)| p.write_ns).max().unwrap_or(0);
    let mut reads: Vec<(u64, u64)> = probes
        .iter()
        .map(|(p, arrived)| {
            let end = u64::try_from(arrived.as_nanos()).unwrap_or(u64::MAX);
            (end.saturating_sub(p.read_ns), end)
        })
        .collect();
    reads.sort_unstable();
    let (mut reading_ns, mut covered_to) = (0u64, 0u64);
    for (start, end) in reads {
        let from = start.max(covered_to);
        reading_ns += end.saturating_sub(from);
        covered_to = covered_to.max(end);
    }
    let mib_s = |ns: u64| bytes as f64 / f64::from(1u32 << 20) / (ns.max(1) as f64 / 1e9);
    (mib_s(write_ns), mib_s(reading_ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probe of 100 MiB whose write took `write_ms` and read `read_ms`, its reply
    /// arriving `arrived_ms` after the probes were sent.
    fn probe(write_ms: u64, read_ms: u64, arrived_ms: u64) -> (StoreProbeReply, Duration) {
        let reply = StoreProbeReply {
            bytes: 100 << 20,
            write_ns: write_ms * 1_000_000,
            read_ns: read_ms * 1_000_000,
        };
        (reply, Duration::from_millis(arrived_ms))
    }

    #[test]
    fn reads_one_after_another_count_the_time_of_each() {
        // a reads (1.0-1.1 s) while b still writes; b reads (2.0-2.1 s) after: 200 MiB
        // in 0.2 s of reading, not in one server's 0.1 s, nor over the idle second.
        let (write, read) = store_aggregate(&[probe(1000, 100, 1100), probe(2000, 100, 2100)]);
        assert!((write - 100.0).abs() < 1e-9, "{write}");
        assert!((read - 1000.0).abs() < 1e-6, "{read}");
    }

    #[test]
    fn reads_that_overlap_count_once() {
        // 1.0-1.2 s and 1.1-1.3 s: 0.3 s of reading.
        let (_, read) = store_aggregate(&[probe(1000, 200, 1200), probe(1100, 200, 1300)]);
        assert!((read - 200.0 / 0.3).abs() < 1e-6, "{read}");
    }
}
