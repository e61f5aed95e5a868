//! [`Mapping`]: anonymous private memory, every page faulted in when it is made and
//! unmapped on drop. The one place the store maps memory: the buffer pool (`buf.rs`) and
//! the memory store's pages (`pages.rs`) both live in mappings made here.

use std::io;
use std::ptr::NonNull;

use crate::limits::HUGE_PAGE_BYTES;

/// An anonymous private mapping of `len` bytes, unmapped on drop.
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    /// `len` bytes, every page faulted in now (`MAP_POPULATE`), at a kernel-chosen address.
    pub(crate) fn populated(len: usize) -> io::Result<Mapping> {
        let ptr = map(len, libc::MAP_POPULATE)?;
        Ok(Mapping { ptr, len })
    }

    /// `len` bytes starting on a huge-page boundary, every page faulted in now. Where
    /// transparent huge pages are on for every mapping (`enabled = always`), the kernel
    /// can back it with huge pages; this asks for none (no `MADV_HUGEPAGE`).
    ///
    /// Faulting in now is the point: the kernel clears each page as it first maps it, and
    /// doing that here, in one call per mapping, keeps it off the paths that use the
    /// memory later. Why no `MADV_HUGEPAGE`: with huge pages free it populated 256 MiB in
    /// 23 ms against 80 ms for small pages, but on a host whose memory was fragmented (its
    /// page cache full) the direct compaction that advice asks for (`defrag = madvise`)
    /// took 580 ms, slower than small pages by seven times; the system's own THP policy
    /// decides instead.
    pub(crate) fn aligned_populated(len: usize) -> io::Result<Mapping> {
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
        mapping.populate()?;
        Ok(mapping)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_mapping_is_aligned_zeroed_and_writable() {
        for len in [4096, HUGE_PAGE_BYTES, 3 * HUGE_PAGE_BYTES + 8192] {
            let mapping = Mapping::aligned_populated(len).unwrap();
            assert_eq!(mapping.ptr().as_ptr() as usize % HUGE_PAGE_BYTES, 0);
            assert_eq!(mapping.len(), len);
            // SAFETY: the mapping is `len` readable and writable bytes owned here.
            let bytes = unsafe { std::slice::from_raw_parts_mut(mapping.ptr().as_ptr(), len) };
            assert!(bytes.iter().all(|&b| b == 0));
            bytes.fill(0xa5);
            assert_eq!(bytes[len - 1], 0xa5);
        }
    }
}
