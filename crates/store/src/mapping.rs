//! [`Mapping`]: anonymous private memory, every page faulted in when it is made and
//! unmapped on drop. The one place the store maps memory: the buffer pool (`buf.rs`) and
//! the memory store's pages (`pages.rs`) both live in mappings made here.

use std::io;
use std::path::Path;
use std::ptr::NonNull;

use crate::limits::{HUGE_PAGE_BYTES, PAGE_BYTES};

/// An anonymous private mapping of `len` bytes, unmapped on drop.
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    /// `len` bytes starting on a huge-page boundary, every page faulted in now, the first
    /// `huge_prefix` of them (a multiple of a huge page, see [`huge_page_prefix`]) advised
    /// `MADV_HUGEPAGE` first, so that the kernel backs them with transparent huge pages
    /// where THP is `madvise` or `always`; the rest gets small pages, unless the system's
    /// THP is `always`.
    ///
    /// Faulting in now is the point: the kernel clears each page as it first maps it, and
    /// doing that here, in one call per mapping, keeps it off the paths that use the
    /// memory later.
    pub(crate) fn aligned_populated(len: usize, huge_prefix: usize) -> io::Result<Mapping> {
        // Map a huge page more than needed, then cut the unaligned head and the tail.
        let span = len
            .checked_add(HUGE_PAGE_BYTES)
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        let raw = map(span, 0)?;
        let head = raw.as_ptr().align_offset(HUGE_PAGE_BYTES);
        // SAFETY: `head < HUGE_PAGE_BYTES`, so `raw + head .. raw + head + len` lies inside
        // the `span` bytes just mapped.
        let ptr = unsafe { raw.add(head) };
        let mapping = Mapping { ptr, len };
        // SAFETY: the head and the tail are the parts of the fresh mapping `raw..raw+span`
        // outside `mapping`, which nothing else refers to.
        unsafe {
            unmap(raw.as_ptr(), head);
            unmap(ptr.as_ptr().add(len), span - head - len);
        }
        if huge_prefix > 0 {
            mapping.advise_huge_pages(huge_prefix.min(len));
        }
        mapping.populate()?;
        Ok(mapping)
    }

    /// Asks for transparent huge pages for the first `len` bytes. Advice only: a kernel
    /// without THP (`EINVAL`) or with it off maps small pages, which work the same, slower.
    fn advise_huge_pages(&self, len: usize) {
        // SAFETY: the range lies in this mapping; the advice changes no contents.
        let rc = unsafe { libc::madvise(self.ptr.as_ptr().cast(), len, libc::MADV_HUGEPAGE) };
        if rc != 0 {
            tracing::debug!(error = %io::Error::last_os_error(), "no transparent huge pages");
        }
    }

    /// Faults every page in for writing: `MADV_POPULATE_WRITE` (Linux 5.14), else a
    /// write to each page.
    fn populate(&self) -> io::Result<()> {
        // SAFETY: the range is exactly this mapping's; populating changes no contents.
        let rc = unsafe {
            libc::madvise(
                self.ptr.as_ptr().cast(),
                self.len,
                libc::MADV_POPULATE_WRITE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINVAL) {
            // ENOMEM and the like: the memory is not there, and touching it would fault
            // the process instead of failing the call.
            return Err(error);
        }
        for offset in (0..self.len).step_by(crate::limits::ALIGN) {
            // SAFETY: `offset < len`, inside this mapping, which this value owns; writing
            // the zero a fresh anonymous page already holds changes nothing.
            unsafe { self.ptr.as_ptr().add(offset).write_volatile(0) };
        }
        Ok(())
    }

    /// The first byte.
    pub(crate) fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// Bytes mapped.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// How much of a chunk segment of `len` bytes to advise huge pages for, if `wanted`: as
/// many whole huge pages as the kernel has free twice over on the NUMA node with the
/// fewest ([`free_huge_page_bytes`]), none if that cannot be read.
///
/// Why huge pages: a transfer into chunk memory over shared memory (CMA) pins each page it
/// writes, and with 4 KiB pages that pinning (`follow_page_pte`) cost as much as the copy:
/// 1 MiB payloads into a memory server went from 9.2-10.8 to 31-35 GB/s. Why only what
/// looks free: where free memory is fragmented (page cache full), the advice makes the
/// kernel compact memory as it faults each huge page in (THP `defrag = madvise`), which
/// stalls the growth a writer may be waiting for. Others may take those blocks first, so
/// this makes such stalls rare, not impossible.
pub(crate) fn huge_page_prefix(len: usize, wanted: bool) -> usize {
    if !wanted {
        return 0;
    }
    free_huge_page_bytes().map_or(0, |free| huge_page_prefix_of(len, free))
}

/// [`huge_page_prefix`] with `free` bytes free in huge-page blocks.
fn huge_page_prefix_of(len: usize, free: u64) -> usize {
    let half_free = usize::try_from(free / 2).unwrap_or(usize::MAX);
    let prefix = len.min(half_free);
    prefix - prefix % HUGE_PAGE_BYTES
}

/// Bytes free in blocks of a huge page or more on the NUMA node that has the fewest
/// (`/proc/buddyinfo`, all zones): what a mapping can get in huge pages without the
/// kernel compacting memory first, wherever it runs. `None` when that file cannot be read
/// or parsed.
pub fn free_huge_page_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/buddyinfo").ok()?;
    free_huge_page_bytes_in(&info)
}

/// [`free_huge_page_bytes`] from the text of `/proc/buddyinfo`: per node and zone, the
/// count of free blocks of each order (a block of order `n` is `2^n` pages).
fn free_huge_page_bytes_in(info: &str) -> Option<u64> {
    let huge_order = (HUGE_PAGE_BYTES / PAGE_BYTES).trailing_zeros() as usize;
    let mut by_node: Vec<(&str, u64)> = Vec::new();
    for line in info.lines().filter(|l| !l.trim().is_empty()) {
        // "Node 0, zone   Normal   1620  10568 ...": counts follow the zone's name.
        let mut words = line.split_whitespace();
        let node = words.nth(1)?;
        let mut bytes = 0u64;
        for (order, count) in words.skip(2).enumerate() {
            let count: u64 = count.parse().ok()?;
            if order >= huge_order {
                let block = u64::try_from(PAGE_BYTES).ok()?.checked_shl(order as u32)?;
                bytes = bytes.saturating_add(count.saturating_mul(block));
            }
        }
        match by_node.iter_mut().find(|(n, _)| *n == node) {
            Some((_, total)) => *total = total.saturating_add(bytes),
            None => by_node.push((node, bytes)),
        }
    }
    by_node.iter().map(|&(_, bytes)| bytes).min()
}

/// Maps `len` anonymous private read-write bytes with `flags` added.
fn map(len: usize, flags: libc::c_int) -> io::Result<NonNull<u8>> {
    // SAFETY: an anonymous mapping at a kernel-chosen address touches no existing memory.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))
}

/// Unmaps `len` bytes at `ptr`; nothing for zero bytes.
///
/// # Safety
/// `ptr..ptr+len` must be mapped and referred to by nothing that outlives this call.
unsafe fn unmap(ptr: *mut u8, len: usize) {
    if len == 0 {
        return;
    }
    // SAFETY: the caller's contract.
    let rc = unsafe { libc::munmap(ptr.cast(), len) };
    if rc != 0 {
        tracing::error!(error = %io::Error::last_os_error(), len, "munmap failed");
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr..ptr+len` is exactly the mapping this value made, and its owners
        // (the buffer pool, the page pool) outlive every pointer into it.
        unsafe { unmap(self.ptr.as_ptr(), self.len) }
    }
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping").field("len", &self.len).finish()
    }
}

/// Where the kernel lists its virtio devices.
pub const VIRTIO_DEVICES_DIR: &str = "/sys/bus/virtio/devices";

/// Whether a virtio balloon under `virtio_devices` (normally [`VIRTIO_DEVICES_DIR`]) offers
/// free page reporting: device id 5, feature bit 5 (`VIRTIO_BALLOON_F_REPORTING`;
/// `features` is one '0'/'1' per bit, bit 0 first). Such a VM's kernel hands the blocks it
/// has free back to the hypervisor, so the first write to fresh memory waits for the
/// hypervisor, and most of all for a huge page, which comes only from such blocks: on our
/// development VM fresh huge pages faulted in at 0.4-0.5 GB/s against 2.3-3 GB/s for small
/// pages, and huge pages the hypervisor still backed at 10-12 GB/s.
pub fn free_page_reporting(virtio_devices: &Path) -> bool {
    const BALLOON_DEVICE_ID: u32 = 5;
    const REPORTING_FEATURE_BIT: usize = 5;
    let Ok(devices) = std::fs::read_dir(virtio_devices) else {
        return false;
    };
    devices.flatten().any(|device| {
        let read = |name: &str| std::fs::read_to_string(device.path().join(name));
        let is_balloon = read("device").is_ok_and(|id| {
            u32::from_str_radix(id.trim().trim_start_matches("0x"), 16) == Ok(BALLOON_DEVICE_ID)
        });
        is_balloon
            && read("features")
                .is_ok_and(|bits| bits.as_bytes().get(REPORTING_FEATURE_BIT) == Some(&b'1'))
    })
}

/// Whether the system backs every anonymous mapping with transparent huge pages
/// (`enabled = always`), so that faulting a segment in takes one fault per huge page:
/// tests that count faults per 4 KiB page skip that count then.
#[cfg(test)]
pub(crate) fn huge_pages_always() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|mode| mode.contains("[always]"))
}

/// Minor page faults the calling thread has taken so far (`getrusage`): what the store's
/// tests count to see where chunk memory is faulted in.
#[cfg(test)]
pub(crate) fn thread_minor_faults() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is a writable `rusage`, which is all getrusage writes.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage: {}", io::Error::last_os_error());
    // SAFETY: getrusage succeeded, so it filled the struct (which started zeroed).
    unsafe { usage.assume_init() }.ru_minflt
}

/// The `VmFlags` of the mapping that holds `addr`, from /proc/self/smaps (`hg`: advised
/// huge pages).
#[cfg(test)]
pub(crate) fn vm_flags(addr: usize) -> Vec<String> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((start, end)) = range.split_once('-') {
                if let (Ok(start), Ok(end)) = (
                    usize::from_str_radix(start, 16),
                    usize::from_str_radix(end, 16),
                ) {
                    inside = (start..end).contains(&addr);
                    continue;
                }
            }
        }
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if inside {
                return flags.split_whitespace().map(str::to_owned).collect();
            }
        }
    }
    panic!("no mapping holds {addr:#x}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A virtio device directory as the kernel shows it.
    fn virtio_device(root: &Path, name: &str, id: &str, features: &str) {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("device"), format!("{id}\n")).unwrap();
        std::fs::write(dir.join("features"), format!("{features}\n")).unwrap();
    }

    #[test]
    fn free_page_reporting_is_a_balloon_with_feature_bit_5() {
        let root = tempfile::tempdir().unwrap();
        // A network device with bit 5 set is not a balloon.
        virtio_device(root.path(), "virtio0", "0x0001", "11000101");
        assert!(!free_page_reporting(root.path()));
        virtio_device(root.path(), "virtio1", "0x0005", "01100000");
        assert!(!free_page_reporting(root.path()), "a balloon without bit 5");
        virtio_device(root.path(), "virtio2", "0x0005", "01100101");
        assert!(free_page_reporting(root.path()));
        assert!(!free_page_reporting(&root.path().join("absent")));
    }

    #[test]
    fn aligned_mapping_is_aligned_zeroed_and_writable() {
        for len in [4096, HUGE_PAGE_BYTES, 3 * HUGE_PAGE_BYTES + 8192] {
            let mapping = Mapping::aligned_populated(len, 0).unwrap();
            assert_eq!(mapping.ptr().as_ptr() as usize % HUGE_PAGE_BYTES, 0);
            assert_eq!(mapping.len(), len);
            // SAFETY: the mapping is `len` readable and writable bytes owned here.
            let bytes = unsafe { std::slice::from_raw_parts_mut(mapping.ptr().as_ptr(), len) };
            assert!(bytes.iter().all(|&b| b == 0));
            bytes.fill(0xa5);
            assert_eq!(bytes[len - 1], 0xa5);
        }
    }

    /// A mapping's huge-page prefix is advised (`hg`), and with none nothing is.
    #[test]
    fn the_huge_page_prefix_is_advised() {
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED huge pages: the kernel has no THP"
            );
            return;
        }
        let len = 4 * HUGE_PAGE_BYTES;
        for prefix in [len, HUGE_PAGE_BYTES, 0] {
            let mapping = Mapping::aligned_populated(len, prefix).unwrap();
            let start = mapping.ptr().as_ptr() as usize;
            let advised = |addr: usize| vm_flags(addr).iter().any(|f| f == "hg");
            assert_eq!(advised(start), prefix > 0, "prefix {prefix}: first page");
            assert_eq!(
                advised(start + len - 1),
                prefix == len,
                "prefix {prefix}: last page"
            );
        }
    }

    #[test]
    fn the_huge_page_prefix_is_whole_huge_pages_of_half_the_free_blocks() {
        let huge = HUGE_PAGE_BYTES;
        let free = |bytes: usize| bytes as u64;
        assert_eq!(huge_page_prefix_of(8 * huge, free(64 * huge)), 8 * huge);
        assert_eq!(huge_page_prefix_of(8 * huge, free(16 * huge)), 8 * huge);
        assert_eq!(huge_page_prefix_of(8 * huge, free(11 * huge)), 5 * huge);
        assert_eq!(huge_page_prefix_of(8 * huge, free(huge)), 0);
        assert_eq!(
            huge_page_prefix_of(8 * huge + 4096, free(u64::MAX as usize)),
            8 * huge
        );
        assert_eq!(huge_page_prefix(8 * huge, false), 0);
    }

    #[test]
    fn free_huge_page_bytes_counts_blocks_of_a_huge_page_or_more_on_the_poorest_node() {
        let huge = HUGE_PAGE_BYTES as u64;
        let one_node = "Node 0, zone      DMA      0      0      0      0      0      0      0      0      1      1      3\n\
                        Node 0, zone   Normal   1620  10568   5705   2587   1483    745    423     70      3    391     74\n";
        // Order 9 is one huge page, order 10 two.
        assert_eq!(
            free_huge_page_bytes_in(one_node),
            Some((1 + 3 * 2 + 391 + 74 * 2) * huge)
        );
        let two_nodes = format!("{one_node}Node 1, zone   Normal   5 5 5 5 5 5 5 5 5 7 1\n");
        assert_eq!(free_huge_page_bytes_in(&two_nodes), Some((7 + 2) * huge));
        // Fewer orders (a smaller MAX_ORDER): no huge blocks counted.
        assert_eq!(
            free_huge_page_bytes_in("Node 0, zone Normal 1 2 3\n"),
            Some(0)
        );
        assert_eq!(free_huge_page_bytes_in("Node 0, zone Normal 1 x 3\n"), None);
        assert_eq!(free_huge_page_bytes_in("Node\n"), None);
        assert_eq!(free_huge_page_bytes_in(""), None);
    }
}
