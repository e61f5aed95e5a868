//! Every bound and default that more than one crate uses, defined once here with the
//! relations between them checked at compile time. Other crates import these; bounds only
//! one crate cares about (the store's buffer pool, the UCX binding's queues) stay in that
//! crate's own `limits` module, which imports what it shares from here.
//!
//! Naming: `*_MIN`/`*_MAX` are the bounds a value is checked against, `*_DEFAULT` the
//! value `benchfs.toml` falls back to (the `Default` of `benchfs_config::ServerConfig`).

use std::time::Duration;

// ---- Chunks and the chunk store ([storage]) ----

/// Smallest chunk: one page, the O_DIRECT alignment unit.
pub const CHUNK_SIZE_MIN: u64 = 4 * 1024;
/// Largest chunk. Bigger chunks starve parallelism and pin too much registered memory.
pub const CHUNK_SIZE_MAX: u64 = 64 * 1024 * 1024;
/// Largest file size: a file's size is an `off_t` to the C API and FUSE (Linux's limit).
pub const FILE_SIZE_MAX: u64 = i64::MAX as u64;
/// Default chunk size (`storage.chunk_size`): 4 MiB.
pub const CHUNK_SIZE_DEFAULT: u64 = 4 * 1024 * 1024;

/// Whether `bytes` is a chunk size: a power of two from [`CHUNK_SIZE_MIN`] to `max`.
pub fn is_chunk_size(bytes: u64, max: u64) -> bool {
    bytes.is_power_of_two() && (CHUNK_SIZE_MIN..=max).contains(&bytes)
}
/// Most io_uring operations in flight per store (`storage.queue_depth`).
pub const QUEUE_DEPTH_MAX: u32 = 4096;
/// Default io_uring operations in flight per store (`storage.queue_depth`), for servers
/// and for stores opened with `StoreConfig::new` alike.
pub const QUEUE_DEPTH_DEFAULT: u32 = 128;

/// Most bytes one `StoreProbe` may write (and read back): enough to get past a device's
/// caches on a short probe, small enough to finish well within the default RPC timeout on
/// a disk of a few hundred MB/s.
pub const STORE_PROBE_BYTES_MAX: u64 = 1 << 30;

// ---- Inline files ([storage]) ----

/// Default `storage.inline_bytes`: a file of at most this many bytes, made by one deferred
/// open (create, write and close in one request), keeps its bytes in its metadata record
/// instead of chunk 0. 4 KiB covers mdtest-hard's 3901-byte files and one page.
pub const INLINE_BYTES_DEFAULT: u64 = 4 * 1024;
/// Largest `storage.inline_bytes`, the most bytes a record holds: a request carrying them
/// with the longest path still fits one body. A file that grows past its record's limit
/// moves its bytes to chunk 0, written zero-padded to `min(INLINE_BYTES_MAX, chunk size)`
/// so that a copy left there by a move that failed part way never shows through.
pub const INLINE_BYTES_MAX: u64 = 32 * 1024;

// ---- Transport ([network]) ----

/// Default rendezvous threshold (`network.rendezvous_threshold_bytes`, also spelt
/// `rdma_threshold_bytes`): payloads up to it travel eagerly with their message and are
/// copied at the receiver; larger ones go by rendezvous, which the receiver pulls straight
/// into its own buffer. On RDMA transports (InfiniBand, RoCE) rendezvous is RDMA.
pub const RENDEZVOUS_THRESHOLD_DEFAULT: u64 = 32 * 1024;
/// Largest rendezvous threshold, and so the largest payload ever sent eagerly: eager data
/// is copied through UCX's buffers at both ends, which stops paying off well below this.
pub const RENDEZVOUS_THRESHOLD_MAX: u64 = 1024 * 1024;
/// Default time after which an RPC without a reply fails (`network.rpc_timeout`).
pub const RPC_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Shortest RPC timeout: a call may end up to two checks (20 ms each) past its timeout,
/// and the windows of twice the timeout (a seal's lease, the settle window) assume a call
/// has ended by then.
pub const RPC_TIMEOUT_MIN: Duration = Duration::from_millis(100);
/// Longest RPC timeout.
pub const RPC_TIMEOUT_MAX: Duration = Duration::from_secs(3600);
/// Default busy-poll window before the event loop sleeps (`network.busy_poll_us`).
pub const BUSY_POLL_DEFAULT: Duration = Duration::from_micros(200);
/// Longest busy-poll window before the event loop sleeps.
pub const BUSY_POLL_MAX: Duration = Duration::from_millis(100);
/// Default for the most requests in flight on one connection (`network.inflight_max`).
pub const INFLIGHT_DEFAULT: u32 = 1024;
/// Largest value `network.inflight_max` may take.
pub const INFLIGHT_MAX: u32 = 65536;
/// Default for the payload bytes a server holds in transfer buffers at once
/// (`network.inflight_payload_bytes`): a few chunks' worth, so the buffers stay within a
/// cache-sized working set (measured in ARCHITECTURE.md, "Payload budget").
pub const INFLIGHT_PAYLOAD_BYTES_DEFAULT: u64 = 8 * 1024 * 1024;
/// Largest value `network.inflight_payload_bytes` may take.
pub const INFLIGHT_PAYLOAD_BYTES_MAX: u64 = 1 << 40;

// ---- Client caches ([cache]) ----

/// Default entries in the client's metadata cache (`cache.metadata_cache_entries`).
pub const METADATA_CACHE_ENTRIES_DEFAULT: u64 = 1000;
/// Most entries in the client's metadata cache.
pub const METADATA_CACHE_ENTRIES_MAX: u64 = 100_000_000;
/// Default client chunk cache, in MiB (`cache.chunk_cache_mb`).
pub const CHUNK_CACHE_MB_DEFAULT: u64 = 100;
/// Largest client chunk cache, in MiB.
pub const CHUNK_CACHE_MB_MAX: u64 = 1024 * 1024;
/// Largest read the client's chunk cache keeps. A larger read is bound by bandwidth, so
/// a hit saves little of it, while keeping it costs every read a copy into fresh memory:
/// IOR's 1 MiB reads through the C API, cache on, ran at half the native client's speed,
/// a quarter of their CPU spent clearing the cache's new pages. Larger reads go straight
/// into the caller's buffer.
pub const CHUNK_CACHE_SPAN_MAX: u64 = 64 * 1024;
/// Default lifetime of a cached entry, in seconds (`cache.cache_ttl_secs`); 0 keeps
/// entries until the client itself changes the file. One second, as a FUSE mount's
/// default attribute timeout: a directory another client removed is not trusted for
/// longer where nothing else refuses a create below it (servers restarted empty forget
/// the seals a removal leaves), and a creating client asks for each directory about once
/// a second.
pub const CACHE_TTL_SECS_DEFAULT: u64 = 1;
/// Seconds between a server's sweeps for chunks of deleted files (0: no sweep).
pub const ORPHAN_SWEEP_SECS_DEFAULT: u64 = 60;
/// Longest time between orphan sweeps.
pub const ORPHAN_SWEEP_SECS_MAX: u64 = 86_400;

/// How far apart (ns) the stores of one cluster's servers may begin when the cluster
/// starts: a store that began later than another by more than this lost what that one
/// holds (a restart), so its "not found" is checked with that one.
pub const BORN_APART_NS: u64 = 5_000_000_000;

// ---- Client data path ([client]) ----

/// Default bytes of writes a client keeps in flight behind the calls that made them
/// (`client.write_behind_bytes`): none. On one host, over shared memory and TCP alike, a
/// 16 MiB window made IOR's hard write (47008-byte pieces of a shared file, 2 ranks, 4
/// servers) half as fast as none and its easy write no faster (ARCHITECTURE.md); turn it
/// on where servers are across a network, and measure.
pub const WRITE_BEHIND_BYTES_DEFAULT: u64 = 0;
/// Most bytes of writes a client keeps in flight: each is a copy of the caller's bytes.
pub const WRITE_BEHIND_BYTES_MAX: u64 = 1 << 30;
/// Default bytes an open handle fetches ahead of sequential reads (`client.read_ahead_bytes`):
/// none. On one host over shared memory, where a round trip is small next to the copy the
/// fetched bytes take into the caller's buffer, one client read 0.89x as fast with a
/// 16 MiB window as without; turn it on where servers are across a network.
pub const READ_AHEAD_BYTES_DEFAULT: u64 = 0;
/// Most bytes an open handle fetches ahead of sequential reads.
pub const READ_AHEAD_BYTES_MAX: u64 = 1 << 30;

// ---- Placement and replication ----

/// Default copies of one chunk or metadata record (`replication.replicas`).
pub const REPLICAS_DEFAULT: u32 = 1;
/// Most copies of one chunk or metadata record.
pub const REPLICAS_MAX: u32 = 8;
/// Virtual nodes per server on the placement ring, as in CHFS.
pub const VIRTUAL_NODES_DEFAULT: u32 = 150;
/// Most virtual nodes per server; the ring of a 4096-server job stays under 64 MiB.
pub const VIRTUAL_NODES_MAX: u32 = 1024;

// ---- Names ----

/// Longest node id.
pub const NODE_ID_LEN_MAX: usize = 64;
/// Longest path, in bytes, including the leading '/' (Linux PATH_MAX less the NUL).
pub const PATH_LEN_MAX: usize = 4095;
/// Longest single path component, in bytes (Linux NAME_MAX).
pub const NAME_LEN_MAX: usize = 255;

const _: () = assert!(CHUNK_SIZE_MIN.is_power_of_two() && CHUNK_SIZE_MAX.is_power_of_two());
const _: () = assert!(CHUNK_SIZE_DEFAULT.is_power_of_two());
const _: () = assert!(CHUNK_SIZE_MIN <= CHUNK_SIZE_DEFAULT && CHUNK_SIZE_DEFAULT <= CHUNK_SIZE_MAX);
// A probe's blocks are at most a chunk, and the request carries the block size as a u32.
const _: () = assert!(CHUNK_SIZE_MAX <= u32::MAX as u64);
const _: () = assert!(STORE_PROBE_BYTES_MAX >= CHUNK_SIZE_MAX);
const _: () = assert!(QUEUE_DEPTH_DEFAULT >= 1 && QUEUE_DEPTH_DEFAULT <= QUEUE_DEPTH_MAX);
// The threshold may not exceed the chunk size (config checks it), so the defaults must agree.
const _: () = assert!(RENDEZVOUS_THRESHOLD_MAX <= CHUNK_SIZE_MAX);
const _: () = assert!(
    RENDEZVOUS_THRESHOLD_DEFAULT <= RENDEZVOUS_THRESHOLD_MAX
        && RENDEZVOUS_THRESHOLD_DEFAULT <= CHUNK_SIZE_DEFAULT
);
const _: () = assert!(
    RPC_TIMEOUT_DEFAULT.as_nanos() > 0
        && RPC_TIMEOUT_DEFAULT.as_nanos() <= RPC_TIMEOUT_MAX.as_nanos()
);
const _: () = assert!(BUSY_POLL_DEFAULT.as_nanos() <= BUSY_POLL_MAX.as_nanos());
const _: () = assert!(ORPHAN_SWEEP_SECS_DEFAULT <= ORPHAN_SWEEP_SECS_MAX);
const _: () = assert!(INFLIGHT_DEFAULT >= 1 && INFLIGHT_DEFAULT <= INFLIGHT_MAX);
const _: () = assert!(METADATA_CACHE_ENTRIES_DEFAULT <= METADATA_CACHE_ENTRIES_MAX);
const _: () = assert!(CHUNK_CACHE_MB_DEFAULT <= CHUNK_CACHE_MB_MAX);
const _: () = assert!(INFLIGHT_PAYLOAD_BYTES_DEFAULT <= INFLIGHT_PAYLOAD_BYTES_MAX);
const _: () = assert!(REPLICAS_DEFAULT >= 1 && REPLICAS_DEFAULT <= REPLICAS_MAX);
const _: () = assert!(VIRTUAL_NODES_DEFAULT >= 1 && VIRTUAL_NODES_DEFAULT <= VIRTUAL_NODES_MAX);
const _: () = assert!(NAME_LEN_MAX < PATH_LEN_MAX);
const _: () = assert!(INLINE_BYTES_DEFAULT <= INLINE_BYTES_MAX);
// The default is valid with any chunk size (inline_bytes may not exceed it), and a record's
// bytes travel with its longest path and the fixed fields in one body.
const _: () = assert!(INLINE_BYTES_DEFAULT <= CHUNK_SIZE_MIN);
const _: () =
    assert!(INLINE_BYTES_MAX as usize + PATH_LEN_MAX + 256 <= crate::frame::BODY_LEN_MAX as usize);
// The bytes are carried with a u16 length prefix.
const _: () = assert!(INLINE_BYTES_MAX <= u16::MAX as u64);
// The wire format repeats some of these; it must agree.
const _: () = assert!(crate::ops::PATH_LEN_MAX == PATH_LEN_MAX);
const _: () = assert!(crate::ops::NAME_LEN_MAX == NAME_LEN_MAX);
const _: () = assert!(NODE_ID_LEN_MAX <= crate::ops::TOKEN_LEN_MAX);
const _: () = assert!(crate::frame::PAYLOAD_LEN_MAX == CHUNK_SIZE_MAX);
