//! Every bound the chunk stores enforce, in one place, with their relations checked at
//! compile time.
//!
//! The chunk-size and queue-depth bounds match the daemon's `benchfs::limits`; this crate
//! cannot depend on the daemon, so the values are repeated here.

/// Alignment of every [`ChunkBuf`](crate::ChunkBuf), and the unit O_DIRECT requests must
/// be aligned to (offset, length and memory address).
pub const ALIGN: usize = 4096;
/// Smallest chunk size a store accepts.
pub const CHUNK_SIZE_MIN: u64 = 4 * 1024;
/// Largest chunk size a store accepts; every request length then fits an io_uring `u32`.
pub const CHUNK_SIZE_MAX: u64 = 64 * 1024 * 1024;
/// Most io_uring operations in flight per store.
pub const QUEUE_DEPTH_MAX: u32 = 4096;
/// Most open chunk files a disk store keeps cached (each holds up to two fds).
pub const FD_CACHE_MAX: usize = 256;
/// Size of one small pool slot; requests up to this size use the small class.
pub const POOL_SMALL_SLOT_BYTES: usize = 64 * 1024;
/// Most small pool slots.
pub const POOL_SMALL_SLOTS_MAX: usize = 256;
/// Most bytes in the large pool class (one chunk-sized slot each).
pub const POOL_LARGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Buffers in flight the memory store's pool is sized for (it has no queue depth).
pub const POOL_QUEUE_DEPTH: usize = 32;
/// Times a request is resubmitted after `EAGAIN` or `EINTR` before the error is returned.
pub const RETRIES_MAX: u32 = 8;
/// Times an op future yields to the scheduler, polling the completion queue, before it
/// sleeps on the eventfd.
pub const SPIN_POLLS_MAX: u8 = 4;

const _: () = assert!(ALIGN.is_power_of_two());
const _: () = assert!(CHUNK_SIZE_MIN.is_power_of_two() && CHUNK_SIZE_MAX.is_power_of_two());
const _: () = assert!(CHUNK_SIZE_MIN >= ALIGN as u64 && CHUNK_SIZE_MIN <= CHUNK_SIZE_MAX);
const _: () = assert!(CHUNK_SIZE_MAX <= u32::MAX as u64);
const _: () = assert!(POOL_SMALL_SLOT_BYTES % ALIGN == 0);
const _: () = assert!(CHUNK_SIZE_MAX as usize <= POOL_LARGE_BYTES_MAX);
// The whole pool is registered as one io_uring buffer, which the kernel caps at 1 GiB.
const _: () = assert!(
    POOL_SMALL_SLOT_BYTES * POOL_SMALL_SLOTS_MAX + POOL_LARGE_BYTES_MAX <= 1024 * 1024 * 1024
);
