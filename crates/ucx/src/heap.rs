//! The process heap's settings for UCX's eager receive buffers.
//!
//! An eager message of more than one fragment (over 8 KiB on shared memory, up to the
//! rendezvous threshold) is assembled by UCX in a buffer it takes from `malloc` and frees
//! once received. With glibc's default trim threshold (128 KiB), frees that leave more than
//! that free at the top of the heap give it back to the kernel, and the next messages fault
//! it in and have it cleared again: 24–32 KiB eager pings with 16 in flight ran at
//! 1900–2300 MiB/s, and at 9800–11700 MiB/s with the thresholds below (`benchfs rpc-bench
//! --sizes 24576,32768`, shared memory, binaries alternated), the time having gone to page
//! faults.

/// Largest allocation served from the heap instead of a mapping of its own: glibc's ceiling
/// for its own dynamic threshold on 64-bit (`DEFAULT_MMAP_THRESHOLD_MAX`). Chunk-sized
/// buffers (4 MiB by default) stay in the heap too, as glibc's adjustment would put them
/// once one such mapping was freed.
const MMAP_THRESHOLD: i32 = 32 << 20;

/// Free memory at the top of the heap kept for later allocations: twice the mapping
/// threshold, as glibc's own adjustment sets it.
const TRIM_THRESHOLD: i32 = 2 * MMAP_THRESHOLD;

/// The environment variables by which a user tunes glibc's malloc; any of them set leaves
/// the heap as they say.
const USER_TUNING: [&str; 4] = [
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
];

/// Keeps freed memory in the process heap for the next UCX receive buffers: sets glibc's
/// mapping and trim thresholds (32 MiB and 64 MiB; setting one ends glibc's own adjustment
/// of both, hence both). For the processes BenchFS owns (servers, the command-line tool,
/// mounts), called first thing in `main`; a library never calls it, since the heap belongs
/// to its application (which can set `GLIBC_TUNABLES` instead). Does nothing where the user
/// tuned malloc (`GLIBC_TUNABLES` naming `glibc.malloc`, or a `MALLOC_*_` variable), or off
/// 64-bit Linux with glibc.
pub fn keep_freed_heap_memory() {
    let tunables = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc."));
    if tunables || USER_TUNING.iter().any(|v| std::env::var_os(v).is_some()) {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64"))]
    // SAFETY: mallopt only changes the allocator's thresholds, under its own lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}
