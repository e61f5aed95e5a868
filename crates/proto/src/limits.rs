//! Every bound BenchFS enforces, in one place, with the relations between them checked at
//! compile time.

use std::time::Duration;

/// Smallest chunk: one page, the O_DIRECT alignment unit.
pub const CHUNK_SIZE_MIN: u64 = 4 * 1024;
/// Largest chunk. Bigger chunks starve parallelism and pin too much registered memory.
pub const CHUNK_SIZE_MAX: u64 = 64 * 1024 * 1024;
/// Virtual nodes per server on the placement ring, as in CHFS.
pub const VIRTUAL_NODES_DEFAULT: u32 = 150;
/// Most virtual nodes per server; the ring of a 4096-server job stays under 64 MiB.
pub const VIRTUAL_NODES_MAX: u32 = 1024;
/// Most copies of one chunk or metadata record.
pub const REPLICAS_MAX: u32 = 8;
/// Longest node id.
pub const NODE_ID_LEN_MAX: usize = 64;
/// Most io_uring operations in flight per server.
pub const QUEUE_DEPTH_MAX: u32 = 4096;
/// Most requests in flight on one connection.
pub const INFLIGHT_MAX: u32 = 65536;
/// Largest payload carried inline in an Active Message; above it data moves by RDMA.
pub const INLINE_PAYLOAD_MAX: u64 = 1024 * 1024;
/// Longest RPC timeout.
pub const RPC_TIMEOUT_MAX: Duration = Duration::from_secs(3600);
/// Longest busy-poll window before the event loop sleeps.
pub const BUSY_POLL_MAX: Duration = Duration::from_millis(100);
/// Most entries in the client's metadata cache.
pub const METADATA_CACHE_ENTRIES_MAX: u64 = 100_000_000;
/// Largest client chunk cache, in MiB.
pub const CHUNK_CACHE_MB_MAX: u64 = 1024 * 1024;
/// Longest path, in bytes, including the leading '/' (Linux PATH_MAX less the NUL).
pub const PATH_LEN_MAX: usize = 4095;
/// Longest single path component, in bytes (Linux NAME_MAX).
pub const NAME_LEN_MAX: usize = 255;

const _: () = assert!(CHUNK_SIZE_MIN.is_power_of_two() && CHUNK_SIZE_MAX.is_power_of_two());
const _: () = assert!(CHUNK_SIZE_MIN <= CHUNK_SIZE_MAX);
const _: () = assert!(INLINE_PAYLOAD_MAX <= CHUNK_SIZE_MAX);
const _: () = assert!(VIRTUAL_NODES_DEFAULT <= VIRTUAL_NODES_MAX);
const _: () = assert!(NAME_LEN_MAX < PATH_LEN_MAX);
