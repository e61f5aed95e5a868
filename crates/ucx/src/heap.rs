//! The process heap's settings for UCX's eager receive buffers.
//!
//! An eager message of more than one fragment (over 8 KiB on shared memory, up to the
//! rendezvous threshold) is assembled by UCX in a buffer it takes from `malloc` and frees
//! once received. With glibc's default trim threshold (128 KiB), such frees at the top of
//! the heap give the memory back to the kernel, and the next message faults it in and has
//! it cleared again: 24–32 KiB eager pings ran at 1.9–3.1 GB/s against 8.2–11.2 GB/s with a
//! trim threshold of 256 MiB (`benchfs rpc-bench --sizes 24576,32768`, shared memory), the
//! server's time going to page faults.

use std::sync::Once;

/// Largest allocation served from the heap instead of a mapping of its own: glibc's own
/// ceiling for its dynamic threshold (`DEFAULT_MMAP_THRESHOLD_MAX` on 64-bit).
const MMAP_THRESHOLD: i32 = 32 << 20;

/// Free memory at the top of the heap kept for later allocations: twice the mapping
/// threshold, as glibc sets it when its dynamic threshold moves.
const TRIM_THRESHOLD: i32 = 2 * MMAP_THRESHOLD;

/// Sets glibc's thresholds to where its dynamic adjustment would take them after freeing
/// one 32 MiB mapping, so freed eager buffers stay in the heap. Setting one threshold ends
/// that adjustment, hence both. Once per process, and not when the user tuned malloc
/// (`GLIBC_TUNABLES` naming `glibc.malloc`): their settings win, as `UCX_*` variables do.
pub(crate) fn keep_freed_memory() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let tuned = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc."));
        if tuned {
            return;
        }
        #[cfg(target_env = "gnu")]
        // SAFETY: mallopt only changes the allocator's thresholds; it is thread-safe.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    });
}
