//! Every bound the chunk stores enforce, with their relations checked at compile time.
//!
//! The chunk-size and queue-depth bounds and defaults are shared with the configuration and
//! the wire, so they are defined once in [`benchfs_proto::limits`] and re-exported here;
//! the rest are the stores' own.

pub use benchfs_proto::limits::{
    CHUNK_SIZE_DEFAULT, CHUNK_SIZE_MAX, CHUNK_SIZE_MIN, QUEUE_DEPTH_DEFAULT, QUEUE_DEPTH_MAX,
};

/// Alignment of every [`ChunkBuf`](crate::ChunkBuf), and the unit O_DIRECT requests must
/// be aligned to (offset, length and memory address).
pub const ALIGN: usize = 4096;
/// Most open chunk files a disk store keeps cached (each holds up to two fds).
pub const FD_CACHE_MAX: usize = 256;
/// Size of one small pool slot; requests up to this size use the small class.
pub const POOL_SMALL_SLOT_BYTES: usize = 64 * 1024;
/// Most small pool slots.
pub const POOL_SMALL_SLOTS_MAX: usize = 256;
/// Most bytes in the large pool class (one chunk-sized slot each).
pub const POOL_LARGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Requests in flight the memory store's buffer pool is sized for. Not a queue depth, and
/// not [`QUEUE_DEPTH_DEFAULT`]: the memory store has no I/O queue, so `queue_depth` does
/// not apply to it; this only sizes its pool of reusable buffers.
pub const MEMORY_POOL_IN_FLIGHT: usize = 32;
/// Size of one page of the memory store's page pool: the unit in which chunk memory is
/// handed out and recycled, so a small chunk holds little more memory than its bytes.
pub const PAGE_BYTES: usize = ALIGN;
/// A transparent huge page on x86-64 and aarch64 with 4 KiB pages: the alignment the
/// page pool maps its segments at, so the kernel can back them with huge pages.
pub const HUGE_PAGE_BYTES: usize = 2 * 1024 * 1024;
/// Largest segment the page pool maps at once. It grows by doubling from one huge page,
/// so a store holds at most about twice the memory its chunks use, and a large store
/// grows in few mappings.
pub const PAGE_SEGMENT_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Smallest buffer a memory store hands out as pages of its pool (which a write then
/// takes as a chunk's pages): below it, the copy is cheaper than the page table work.
pub const PAGE_RUN_BUFFER_MIN: usize = 64 * 1024;
/// The page pool maps a segment (ahead of need or not) only while the memory available
/// to the server, less [`MEMORY_HEADROOM_BYTES`], is at least this many times it: the
/// servers of one host check the same room at once, and must not exhaust it together.
pub const GROW_AHEAD_ROOM_FACTOR: u64 = 4;
/// Memory the memory store leaves free for the rest of its server (buffers, metadata,
/// UCX) when it maps chunk memory: a write that would leave less fails with `NoSpace`
/// rather than have the kernel's OOM killer end the server.
pub const MEMORY_HEADROOM_BYTES: u64 = 64 * 1024 * 1024;
/// Memory tier of the tiered store when none is configured: 1 GiB, 256 chunks of the
/// default size, a share of a compute node's memory a job can spare beside its own.
pub const MEMORY_TIER_BYTES_DEFAULT: u64 = 1024 * 1024 * 1024;
/// Times a request is resubmitted after `EAGAIN` or `EINTR` before the error is returned.
pub const RETRIES_MAX: u32 = 8;
/// Times an op future yields to the scheduler, polling the completion queue, before it
/// sleeps on the eventfd.
pub const SPIN_POLLS_MAX: u8 = 4;

const _: () = assert!(ALIGN.is_power_of_two());
// Every chunk is whole O_DIRECT blocks, and every request length fits an io_uring `u32`.
const _: () =
    assert!(CHUNK_SIZE_MIN >= ALIGN as u64 && CHUNK_SIZE_MIN.is_multiple_of(ALIGN as u64));
const _: () = assert!(CHUNK_SIZE_MAX <= u32::MAX as u64);
const _: () = assert!(POOL_SMALL_SLOT_BYTES.is_multiple_of(ALIGN));
// Chunks are whole pages, and segments whole huge pages, which are whole pages.
const _: () = assert!(CHUNK_SIZE_MIN.is_multiple_of(PAGE_BYTES as u64));
const _: () = assert!(HUGE_PAGE_BYTES.is_multiple_of(PAGE_BYTES));
const _: () = assert!(PAGE_SEGMENT_BYTES_MAX.is_multiple_of(HUGE_PAGE_BYTES));
const _: () = assert!(CHUNK_SIZE_MAX as usize <= POOL_LARGE_BYTES_MAX);
// The default memory tier holds at least one chunk of any size.
const _: () = assert!(MEMORY_TIER_BYTES_DEFAULT >= CHUNK_SIZE_MAX);
// The whole pool is registered as one io_uring buffer, which the kernel caps at 1 GiB.
const _: () = assert!(
    POOL_SMALL_SLOT_BYTES * POOL_SMALL_SLOTS_MAX + POOL_LARGE_BYTES_MAX <= 1024 * 1024 * 1024
);
