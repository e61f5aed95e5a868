//! Owned, 4096-aligned byte buffers, and the pool of registered buffers behind the
//! io_uring store.
//!
//! A [`ChunkBuf`] moves by value into a store call and comes back with the result, so an
//! in-flight io_uring operation always owns the memory the kernel writes to. Moving a
//! `ChunkBuf` never moves its bytes.

use std::alloc::{self, Layout};
use std::cell::RefCell;
use std::fmt;
use std::io;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::rc::Rc;

use crate::limits::{ALIGN, POOL_LARGE_BYTES_MAX, POOL_SMALL_SLOTS_MAX, POOL_SMALL_SLOT_BYTES};
use crate::mapping::{huge_page_prefix, Mapping};
use crate::pages::PagePool;
use crate::StoreError;

/// An owned byte buffer aligned to [`ALIGN`] (4096) bytes, fit for O_DIRECT.
///
/// It has a length (`len`, the bytes a write sends or a read may fill) and a fixed
/// capacity (a multiple of 4096). Heap buffers start zeroed; a pool slot keeps whatever its
/// last user left (initialized memory, never exposed by the stores: reads return how many
/// bytes they filled). A buffer from
/// an io_uring store's pool returns to the pool when dropped; any other buffer is freed.
/// Buffers are not `Send`: each store lives on one thread.
pub struct ChunkBuf {
    ptr: NonNull<u8>,
    len: usize,
    capacity: usize,
    owner: Owner,
}

enum Owner {
    /// Allocated with `Layout::from_size_align(capacity, ALIGN)`.
    Heap,
    /// A slot of this pool, starting at `ptr`.
    Pool(Rc<BufPool>),
    /// `capacity / ALIGN` pages in a row of a memory store's page pool, which the store
    /// takes as a chunk's pages with no copy ([`ChunkBuf::into_pages`]), or which go back.
    Pages(Rc<PagePool>),
    /// Nothing: what a store gives back for a buffer whose pages it took.
    Empty,
}

impl ChunkBuf {
    /// A zeroed, unregistered buffer of `len` bytes.
    ///
    /// # Panics
    /// If `len` rounded up to 4096 overflows `isize`, as `Vec` does.
    pub fn with_len(len: usize) -> ChunkBuf {
        let capacity = len
            .max(1)
            .checked_next_multiple_of(ALIGN)
            .expect("ChunkBuf capacity overflow");
        let layout = Layout::from_size_align(capacity, ALIGN).expect("ChunkBuf capacity overflow");
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            alloc::handle_alloc_error(layout)
        };
        ChunkBuf {
            ptr,
            len,
            capacity,
            owner: Owner::Heap,
        }
    }

    /// A buffer of `len` bytes over the pages in a row at `first`, taken from `pool` with
    /// [`PagePool::take_run`], which get back there when it drops.
    pub(crate) fn from_pages(first: NonNull<u8>, len: usize, pool: Rc<PagePool>) -> ChunkBuf {
        ChunkBuf {
            ptr: first,
            len,
            capacity: len.div_ceil(ALIGN) * ALIGN,
            owner: Owner::Pages(pool),
        }
    }

    /// A buffer of no bytes that holds no memory.
    pub(crate) fn empty() -> ChunkBuf {
        ChunkBuf {
            ptr: NonNull::dangling(),
            len: 0,
            capacity: 0,
            owner: Owner::Empty,
        }
    }

    /// The first page and the length of a buffer made of `pool`'s pages, whose pages up to
    /// the length the caller now owns (the rest go back); any other buffer back unchanged.
    pub(crate) fn into_pages(self, pool: &Rc<PagePool>) -> Result<(NonNull<u8>, usize), ChunkBuf> {
        if !matches!(&self.owner, Owner::Pages(p) if Rc::ptr_eq(p, pool)) {
            return Err(self);
        }
        let used = self.len.div_ceil(ALIGN);
        // SAFETY: `used <= capacity / ALIGN`: the pages past the length, in the run.
        pool.give_run(
            unsafe { self.ptr.add(used * ALIGN) },
            self.capacity / ALIGN - used,
        );
        let taken = (self.ptr, self.len);
        // Not dropped: its pages are the caller's now; only the pool's handle goes.
        let mut this = std::mem::ManuallyDrop::new(self);
        this.owner = Owner::Empty;
        Ok(taken)
    }

    /// Bytes in use.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether `len` is zero.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes allocated; a multiple of 4096.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Sets the length. Bytes between the old and new length keep whatever they held
    /// (zeros, or data from an earlier use of this buffer).
    ///
    /// # Panics
    /// If `len > capacity()`.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.capacity,
            "set_len({len}) beyond capacity {}",
            self.capacity
        );
        self.len = len;
    }

    /// Shortens the buffer to `len` bytes; does nothing if it is already shorter.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// The first `len` bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `capacity >= len` initialised bytes that this buffer owns.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The first `len` bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Whether this buffer is a slot of an io_uring store's registered pool.
    pub fn is_registered(&self) -> bool {
        matches!(self.owner, Owner::Pool(_))
    }

    /// Address of the first byte, for handing to the kernel.
    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Whether this buffer is a slot of `pool`.
    pub(crate) fn in_pool(&self, pool: &Rc<BufPool>) -> bool {
        matches!(&self.owner, Owner::Pool(p) if Rc::ptr_eq(p, pool))
    }
}

impl Drop for ChunkBuf {
    fn drop(&mut self) {
        match &self.owner {
            Owner::Heap => {
                let layout = Layout::from_size_align(self.capacity, ALIGN)
                    .expect("the layout was valid at allocation");
                // SAFETY: `ptr` came from `alloc_zeroed` with this very layout.
                unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) }
            }
            Owner::Pool(pool) => pool.release(self.ptr),
            Owner::Pages(pool) => pool.give_run(self.ptr, self.capacity / ALIGN),
            Owner::Empty => {}
        }
    }
}

impl Deref for ChunkBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl DerefMut for ChunkBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl fmt::Debug for ChunkBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkBuf")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .field("registered", &self.is_registered())
            .finish()
    }
}

/// One size class of pool slots, laid out back to back from `offset`.
struct SlotClass {
    offset: usize,
    slot_bytes: usize,
    slots: usize,
    free: RefCell<Vec<usize>>,
}

impl SlotClass {
    fn new(offset: usize, slot_bytes: usize, slots: usize) -> SlotClass {
        SlotClass {
            offset,
            slot_bytes,
            slots,
            free: RefCell::new((0..slots).rev().collect()),
        }
    }

    fn bytes(&self) -> usize {
        self.slot_bytes * self.slots
    }
}

impl fmt::Debug for BufPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufPool")
            .field("bytes", &self.mapping.len())
            .field("small_free", &self.small.free.borrow().len())
            .field("large_free", &self.large.free.borrow().len())
            .finish()
    }
}

/// Fixed-size buffers carved from ONE mapping, so the whole region can be registered
/// with io_uring (and later UCX) once. Two size classes: small slots for small requests,
/// chunk-sized slots for the rest.
///
/// Nominally `pub` only because [`IoEngine`](crate::IoEngine) takes it; this module is
/// private, so nothing outside the crate can name it.
pub struct BufPool {
    mapping: Mapping,
    small: SlotClass,
    large: SlotClass,
}

impl BufPool {
    /// Maps `small_slots` slots of `small_bytes` followed by `large_slots` of `large_bytes`,
    /// with `huge_pages` in transparent huge pages as far as the kernel has free blocks for
    /// them ([`huge_page_prefix`]).
    pub(crate) fn new(
        small_slots: usize,
        small_bytes: usize,
        large_slots: usize,
        large_bytes: usize,
        huge_pages: bool,
    ) -> io::Result<Rc<BufPool>> {
        assert!(small_bytes.is_multiple_of(ALIGN) && large_bytes.is_multiple_of(ALIGN));
        assert!(small_slots > 0 && large_slots > 0);
        let small = SlotClass::new(0, small_bytes, small_slots);
        let large = SlotClass::new(small.bytes(), large_bytes, large_slots);
        let len = small.bytes() + large.bytes();
        let mapping = Mapping::aligned_populated(len, huge_page_prefix(len, huge_pages))?;
        Ok(Rc::new(BufPool {
            mapping,
            small,
            large,
        }))
    }

    /// The pool a store of `chunk_size` with `queue_depth` operations in flight uses: small
    /// slots for small requests and chunk-sized ones for the rest, within the limits, in
    /// huge pages if `huge_pages` (see [`BufPool::new`]).
    pub(crate) fn for_chunks(
        chunk_size: u64,
        queue_depth: usize,
        huge_pages: bool,
    ) -> Result<Rc<BufPool>, StoreError> {
        let large_bytes = (chunk_size as usize).next_multiple_of(ALIGN);
        BufPool::new(
            (2 * queue_depth).clamp(1, POOL_SMALL_SLOTS_MAX),
            POOL_SMALL_SLOT_BYTES,
            (POOL_LARGE_BYTES_MAX / large_bytes).clamp(1, queue_depth.max(1)),
            large_bytes,
            huge_pages,
        )
        .map_err(|source| StoreError::Io {
            op: "mmap buffer pool",
            source,
        })
    }

    /// A slot for `len` bytes, or a heap buffer when no slot is free. Reusing slots spares
    /// the page faults a fresh large allocation costs on every request.
    pub(crate) fn take_or_heap(self: &Rc<Self>, len: usize) -> ChunkBuf {
        self.take(len).unwrap_or_else(|| ChunkBuf::with_len(len))
    }

    /// Start and length of the whole region.
    pub(crate) fn region(&self) -> (*const u8, usize) {
        (self.mapping.ptr().as_ptr().cast_const(), self.mapping.len())
    }

    /// A slot of at least `len` bytes, or `None` if `len` fits no class or that class is
    /// empty. The bytes are what the slot's last user left: zeroing a slot per request
    /// cost a tenth of a server's time at 1 MiB requests, and every user overwrites or
    /// truncates what it uses.
    pub(crate) fn take(self: &Rc<Self>, len: usize) -> Option<ChunkBuf> {
        let class = if len <= self.small.slot_bytes {
            &self.small
        } else if len <= self.large.slot_bytes {
            &self.large
        } else {
            return None;
        };
        let slot = class.free.borrow_mut().pop()?;
        let offset = class.offset + slot * class.slot_bytes;
        // SAFETY: `offset + slot_bytes <= mapping.len()` by the layout in `new`.
        let ptr = unsafe { self.mapping.ptr().add(offset) };
        let buf = ChunkBuf {
            ptr,
            len,
            capacity: class.slot_bytes,
            owner: Owner::Pool(Rc::clone(self)),
        };
        Some(buf)
    }

    fn release(&self, ptr: NonNull<u8>) {
        let offset = ptr.as_ptr() as usize - self.mapping.ptr().as_ptr() as usize;
        let class = if offset < self.large.offset {
            &self.small
        } else {
            &self.large
        };
        let slot = (offset - class.offset) / class.slot_bytes;
        assert!(slot < class.slots && (offset - class.offset).is_multiple_of(class.slot_bytes));
        class.free.borrow_mut().push(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_alignment_and_len() {
        for len in [0, 1, 4095, 4096, 4097, 1 << 20] {
            let mut buf = ChunkBuf::with_len(len);
            assert_eq!(buf.as_mut_ptr() as usize % ALIGN, 0);
            assert_eq!(buf.len(), len);
            assert!(buf.capacity() >= len.max(1) && buf.capacity().is_multiple_of(ALIGN));
            assert!(buf.iter().all(|&b| b == 0));
            assert!(!buf.is_registered());
        }
    }

    /// Every slot of a pool is advised huge pages when the kernel has free blocks for them
    /// all; fails with the pool in a plain mapping.
    #[test]
    fn the_pool_asks_for_huge_pages_where_the_kernel_has_them() {
        use crate::limits::{CHUNK_SIZE_DEFAULT, HUGE_PAGE_BYTES};
        use crate::mapping::{free_huge_page_bytes, vm_flags};
        let skip = |why: &str| {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED pool huge pages: {why}");
        };
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            return skip("the kernel has no THP");
        }
        let pool = BufPool::for_chunks(CHUNK_SIZE_DEFAULT, 16, true).unwrap();
        let (start, len) = pool.region();
        if free_huge_page_bytes().unwrap_or(0) < 4 * len as u64 {
            return skip("too few free huge-page blocks");
        }
        let advised = |addr: usize| vm_flags(addr).iter().any(|f| f == "hg");
        let whole = len - len % HUGE_PAGE_BYTES;
        assert!(advised(start as usize), "the first slot is not advised");
        assert!(
            advised(start as usize + whole - 1),
            "the last whole huge page of {len} bytes is not advised"
        );
    }

    #[test]
    fn pool_slots_return() {
        let pool = BufPool::new(2, 4096, 1, 8192, false).unwrap();
        let a = pool.take(10).unwrap();
        let b = pool.take(4096).unwrap();
        assert!(pool.take(1).is_none(), "small class is empty");
        let mut c = pool.take(5000).unwrap();
        assert!(pool.take(8192).is_none(), "large class is empty");
        assert!(pool.take(8193).is_none(), "fits no class");
        assert!(c.in_pool(&pool) && c.capacity() == 8192);
        c.as_mut_slice().fill(7);
        drop(c);
        let c = pool.take(8192).unwrap();
        assert!(
            c.in_pool(&pool) && c.len() == 8192,
            "the freed slot is handed out again"
        );
        drop((a, b));
        assert!(pool.take(1).is_some());
    }
}
