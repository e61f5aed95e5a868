//! The memory store's chunk memory: [`PagePool`], pages of pre-faulted memory recycled
//! from chunk to chunk, and [`PageChunk`], one chunk as a table of those pages.
//!
//! Why: a chunk that was a fresh heap allocation cost a page fault, and the kernel's
//! clearing of a page, for every 4 KiB written (40% of a write phase). Pages here are
//! faulted in once, a whole segment at a time (aligned to and, as far as the kernel has
//! them free, advised transparent huge pages: see [`huge_page_prefix`]), and a removed or
//! cut chunk gives its pages back to the pool for the next one. A store that keeps writing and deleting
//! therefore takes no page faults once its pool has grown to its working set, and while
//! it grows, the next segment is faulted in ahead on another thread (see [`PagePool`]).
//!
//! **Invariant:** every byte of a chunk's pages that lies at or past the chunk's length,
//! or that no write has covered, is zero; a page the table does not hold reads as zeros.
//! So growing a chunk (a write past its end, a truncate up) never has to clear anything.
//! **Invariant:** a page belongs to at most one chunk or to the free list, never both;
//! pages are handed out by value ([`Page`] is not `Clone`).
//! **Free pages** are kept as extents of pages in a row (`free.rs`), so pages that come
//! back in any order make runs again: a large write takes one with no copy and is read in
//! place, and single pages come from the shortest extent.
//! **Invariant:** a page lent to a send ([`ChunkView`]) is never handed to another chunk
//! while the send may still read it: a page given back while a view covers it waits on a
//! list of its own, and returns to the free list once none does (so no more waits than
//! the views out cover). A view retired ([`ChunkView::retire`]: a peer may still read it
//! at any time) keeps its pages out of the free list for good: they are never given to
//! another chunk, and the pool's memory shrinks by them.
//! **Drop order:** the segments are unmapped when the pool drops. Pages are only held by
//! the chunks of the store that owns the pool, and that store drops its chunks first; a
//! pool dropped with views still out leaks its segments instead. A growth still running
//! then is left to finish and unmaps its segment itself: no pointer into it was ever
//! handed out.

use std::cell::{Cell, RefCell};
use std::io;
use std::ptr::NonNull;
use std::rc::Rc;

use crate::limits::{
    GROW_AHEAD_ROOM_FACTOR, HUGE_PAGE_BYTES, MEMORY_HEADROOM_BYTES, PAGE_BYTES,
    PAGE_SEGMENT_BYTES_MAX,
};
use crate::mapping::{huge_page_prefix, Mapping};
use crate::StoreError;

mod free;

use free::FreePages;

/// One page of a [`PagePool`] segment, owned by whoever holds this value.
struct Page(NonNull<u8>);

impl Page {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `self.0` is the start of a page of a live segment (drop order, above),
        // and this value is its only owner (second invariant).
        unsafe { std::slice::from_raw_parts(self.0.as_ptr(), PAGE_BYTES) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_ptr(), PAGE_BYTES) }
    }
}

/// Pages of pre-faulted memory, mapped in segments as needed and never returned to the
/// kernel while the pool lives: memory a store once used stays ready for its next chunk.
///
/// **Growing ahead:** when a write leaves fewer free pages than half the next segment,
/// that segment is mapped and faulted in on a thread of its own ([`Growth`]), so the
/// event loop that writes chunks need not stop for the kernel's page clearing (tens of
/// milliseconds for a 64 MiB segment, during which every request to the server waited).
/// A write that finds the pool short while a growth runs waits for the rest of it rather
/// than mapping a second segment (a server written faster than one thread faults memory
/// in still waits, for less); one that finds it short with none running maps on its own
/// thread, as before (the first segment, a refused or failed growth). Growing ahead maps
/// at most one segment before the writes need it: never past the capacity, never less
/// than a huge page at a time, and only while the host and the cgroup have several times
/// the segment available (faulting memory that is not there would wake the OOM killer).
/// A prefaulted pool grows ahead too, once writes come within half a segment of its end.
#[derive(Debug)]
pub(crate) struct PagePool {
    segments: RefCell<Vec<Mapping>>,
    free: RefCell<FreePages>,
    mapped_bytes: Cell<usize>,
    /// The store's capacity: segments stop growing past it, so a bounded store maps at
    /// most its capacity plus the rounding of each chunk to whole pages.
    capacity_bytes: u64,
    growth: RefCell<Option<Growth>>,
    /// Whether segments ask for huge pages, as far as they look free ([`huge_page_prefix`]).
    huge_pages: Cell<bool>,
    /// Growing ahead last found too little memory or no thread when the pool would have
    /// grown to this size: not asked again (files read, a thread spawned) until it has.
    ahead_declined_below: Cell<usize>,
    /// The views out ([`ChunkView`]), each of which a send may still be reading.
    lent: Rc<RefCell<Lent>>,
    /// Pages given back while a view covered them (third invariant).
    waiting: RefCell<Vec<NonNull<u8>>>,
}

/// The address ranges of the views out, by view, and of the views retired.
#[derive(Debug, Default)]
struct Lent {
    views: Vec<(u64, std::ops::Range<usize>)>,
    next_id: u64,
    /// Ranges of retired views: their pages never return to the free list.
    retired: Vec<std::ops::Range<usize>>,
}

impl Lent {
    /// Whether a view out covers any byte of the page at `page`.
    fn covers(&self, page: NonNull<u8>) -> bool {
        let start = page.as_ptr() as usize;
        self.overlaps(start..start + PAGE_BYTES)
    }

    /// Whether a retired view covers any byte of the page at `page`.
    fn retires(&self, page: NonNull<u8>) -> bool {
        let start = page.as_ptr() as usize;
        self.retired_overlap(start..start + PAGE_BYTES)
    }

    /// Whether a retired view covers any byte of the address range `bytes`.
    fn retired_overlap(&self, bytes: std::ops::Range<usize>) -> bool {
        self.retired
            .iter()
            .any(|view| view.start < bytes.end && bytes.start < view.end)
    }

    /// Whether a view out covers any byte of the address range `bytes`.
    fn overlaps(&self, bytes: std::ops::Range<usize>) -> bool {
        self.views
            .iter()
            .any(|(_, view)| view.start < bytes.end && bytes.start < view.end)
    }
}

impl Drop for PagePool {
    fn drop(&mut self) {
        let lent = self.lent.borrow();
        if !lent.views.is_empty() || !lent.retired.is_empty() {
            // A send may still read them, or a peer (drop order, above).
            drop(lent);
            std::mem::forget(std::mem::take(self.segments.get_mut()));
        }
    }
}

/// Bytes of a chunk read in place, for a send with no copy: while it lives, the pool holds
/// back its pages if they are given back (module invariant), so its bytes are never
/// another chunk's. A write into those pages meanwhile may change them, as a write racing
/// a read may (a client drops what it read ahead of its own writes).
pub struct ChunkView {
    ptr: NonNull<u8>,
    len: usize,
    id: u64,
    lent: Rc<RefCell<Lent>>,
}

impl ChunkView {
    /// Keeps the view's pages from ever going to another chunk, or back to the free list:
    /// for a view whose send was given up on while its peer may still read it (by shared
    /// memory, when it runs again). The pages stay the chunk's while it holds them.
    pub fn retire(self) {
        let view = std::mem::ManuallyDrop::new(self);
        {
            let mut lent = view.lent.borrow_mut();
            if let Some(at) = lent.views.iter().position(|(id, _)| *id == view.id) {
                let (_, range) = lent.views.swap_remove(at);
                lent.retired.push(range);
            }
        }
        // SAFETY: read once from a value that is never used or dropped again.
        drop(unsafe { std::ptr::read(&view.lent) });
    }

    /// Bytes in the view.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl AsRef<[u8]> for ChunkView {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr + len` lies in pages of a live segment (drop order, above)
        // that no other chunk can take while this view lives (module invariant); the
        // store changes them only from this thread, never while a slice of them is held.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for ChunkView {
    fn drop(&mut self) {
        let mut lent = self.lent.borrow_mut();
        if let Some(at) = lent.views.iter().position(|(id, _)| *id == self.id) {
            lent.views.swap_remove(at);
        }
    }
}

impl std::fmt::Debug for ChunkView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkView").field("len", &self.len).finish()
    }
}

/// A segment being mapped and faulted in on another thread.
#[derive(Debug)]
struct Growth {
    bytes: usize,
    thread: std::thread::JoinHandle<io::Result<FreshSegment>>,
}

/// A segment of `bytes`, faulted in, as much of it in huge pages as `huge_pages` and the
/// kernel's free memory allow.
fn map_segment(bytes: usize, huge_pages: bool) -> io::Result<Mapping> {
    Mapping::aligned_populated(bytes, huge_page_prefix(bytes, huge_pages))
}

/// A segment the growth thread mapped, on its way to the pool.
struct FreshSegment(Mapping);

// SAFETY: no pointer into a fresh segment exists until the pool adopts it on its own
// thread: the growth thread only maps and populates it, and hands over the whole value.
unsafe impl Send for FreshSegment {}

impl PagePool {
    /// An empty pool for a store of `capacity_bytes` (`u64::MAX`: unbounded), of small
    /// pages until [`PagePool::use_huge_pages`]; maps nothing until the first page is
    /// needed.
    pub(crate) fn new(capacity_bytes: u64) -> PagePool {
        PagePool {
            segments: RefCell::new(Vec::new()),
            free: RefCell::new(FreePages::default()),
            mapped_bytes: Cell::new(0),
            capacity_bytes,
            growth: RefCell::new(None),
            huge_pages: Cell::new(false),
            ahead_declined_below: Cell::new(0),
            lent: Rc::new(RefCell::new(Lent::default())),
            waiting: RefCell::new(Vec::new()),
        }
    }

    /// Whether segments mapped from now on ask for huge pages.
    pub(crate) fn use_huge_pages(&self, on: bool) {
        self.huge_pages.set(on);
    }

    /// What [`PagePool::use_huge_pages`] last set.
    pub(crate) fn huge_pages(&self) -> bool {
        self.huge_pages.get()
    }

    /// A view of `len` bytes at `ptr`, which lie in pages of a chunk one after the other;
    /// `None` if they cross from one segment into another (two mappings that happen to
    /// lie side by side are still two).
    fn lend(&self, ptr: NonNull<u8>, len: usize) -> Option<ChunkView> {
        self.reclaim_waiting();
        if !self.within_one_segment(ptr, len) {
            return None;
        }
        let mut lent = self.lent.borrow_mut();
        let id = lent.next_id;
        lent.next_id += 1;
        let start = ptr.as_ptr() as usize;
        lent.views.push((id, start..start + len));
        Some(ChunkView {
            ptr,
            len,
            id,
            lent: Rc::clone(&self.lent),
        })
    }

    /// Whether `len` bytes from `ptr` lie in one segment.
    fn within_one_segment(&self, ptr: NonNull<u8>, len: usize) -> bool {
        let start = ptr.as_ptr() as usize;
        self.segments.borrow().iter().any(|segment| {
            let base = segment.ptr().as_ptr() as usize;
            base <= start && start + len <= base + segment.len()
        })
    }

    /// Pages given back that no view covers any more, to the free list.
    fn reclaim_waiting(&self) {
        let mut waiting = self.waiting.borrow_mut();
        if waiting.is_empty() {
            return;
        }
        let lent = self.lent.borrow();
        let mut free = self.free.borrow_mut();
        waiting.retain(|&page| {
            if lent.retires(page) {
                return false;
            }
            let keep = lent.covers(page);
            if !keep {
                free.give_run(page, 1);
            }
            keep
        });
    }

    /// Bytes mapped so far, in use or free.
    pub(crate) fn mapped_bytes(&self) -> usize {
        self.mapped_bytes.get()
    }

    /// Makes sure pages for `bytes` of data are free, mapping them now if they are not.
    /// Grows nothing ahead: what a prefault maps is already ahead of the writes. The
    /// caller checked the memory (the whole prefault against all that is available, the
    /// servers of a host together, before any starts), so no share of it applies here.
    pub(crate) fn prefault(&self, bytes: u64) -> Result<(), StoreError> {
        let pages = usize::try_from(bytes.div_ceil(PAGE_BYTES as u64)).map_err(|_| {
            StoreError::NoSpace {
                needed: bytes,
                available: 0,
            }
        })?;
        self.ensure_free(pages, MemoryCheck::Done)
    }

    /// Makes sure `pages` pages are free for a write that takes them, then starts growing
    /// ahead if the pool runs low (see the type's docs).
    fn reserve(&self, pages: usize) -> Result<(), StoreError> {
        self.ensure_free(pages, MemoryCheck::Share)?;
        self.grow_ahead(pages);
        Ok(())
    }

    /// Makes sure `pages` pages are free: from a growth that finished or, if none did and
    /// pages are missing, from the running growth or a segment mapped now (sized by
    /// [`fit_to_memory`] unless `check` says the caller did that).
    fn ensure_free(&self, pages: usize, check: MemoryCheck) -> Result<(), StoreError> {
        self.reclaim_waiting();
        self.adopt_growth(false);
        if self.free.borrow().len() < pages {
            self.adopt_growth(true);
        }
        let missing = pages.saturating_sub(self.free.borrow().len());
        if missing > 0 {
            let needed = missing * PAGE_BYTES;
            let wanted = self.next_segment_bytes().max(needed);
            let bytes = match check {
                MemoryCheck::Share => fit_to_memory(wanted, needed)?,
                MemoryCheck::Done => wanted,
            };
            let segment = map_segment(bytes, self.huge_pages.get()).map_err(|source| {
                if source.kind() == io::ErrorKind::OutOfMemory {
                    StoreError::NoSpace {
                        needed: needed as u64,
                        available: 0,
                    }
                } else {
                    StoreError::Io {
                        op: "mmap page pool",
                        source,
                    }
                }
            })?;
            self.add_segment(segment);
        }
        Ok(())
    }

    /// The size of the next segment: double the pool (from one huge page up to
    /// [`PAGE_SEGMENT_BYTES_MAX`]), but no more than the capacity leaves; 0 at capacity.
    fn next_segment_bytes(&self) -> usize {
        let mapped = self.mapped_bytes.get();
        let doubling = mapped.clamp(HUGE_PAGE_BYTES, PAGE_SEGMENT_BYTES_MAX);
        let capacity_left = self.capacity_bytes.saturating_sub(mapped as u64);
        let capped = usize::try_from(capacity_left).map_or(doubling, |left| doubling.min(left));
        capped.next_multiple_of(PAGE_BYTES)
    }

    /// Starts mapping the next segment on another thread if, once `taking` pages are
    /// taken, fewer than half of it would be free, none is being mapped, the capacity
    /// leaves room, and the memory is there.
    fn grow_ahead(&self, taking: usize) {
        if self.growth.borrow().is_some() {
            return;
        }
        let bytes = self.next_segment_bytes();
        let free_after = self.free.borrow().len().saturating_sub(taking);
        let mapped = self.mapped_bytes.get();
        if bytes < HUGE_PAGE_BYTES
            || free_after * PAGE_BYTES >= bytes / 2
            || mapped < self.ahead_declined_below.get()
        {
            return;
        }
        let room = memory_room().unwrap_or(u64::MAX);
        if room / GROW_AHEAD_ROOM_FACTOR < bytes as u64 {
            self.ahead_declined_below.set(mapped + bytes);
            return;
        }
        let huge_pages = self.huge_pages.get();
        let thread = std::thread::Builder::new()
            .name("benchfs-pages".into())
            .spawn(move || map_segment(bytes, huge_pages).map(FreshSegment));
        match thread {
            Ok(thread) => *self.growth.borrow_mut() = Some(Growth { bytes, thread }),
            Err(error) => {
                tracing::debug!(%error, "no thread to grow the page pool ahead");
                self.ahead_declined_below.set(mapped + bytes);
            }
        }
    }

    /// Adds the running growth's segment to the pool if it is done or `wait` is set. After
    /// a growth that failed, the pool grows no further ahead until it has grown on the
    /// writer's thread, which reports the error if it fails there too.
    fn adopt_growth(&self, wait: bool) {
        let done = self
            .growth
            .borrow()
            .as_ref()
            .is_some_and(|growth| wait || growth.thread.is_finished());
        if !done {
            return;
        }
        let Some(growth) = self.growth.borrow_mut().take() else {
            return;
        };
        match growth.thread.join() {
            Ok(Ok(FreshSegment(segment))) => {
                self.add_segment(segment);
                return;
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, bytes = growth.bytes, "growing the page pool ahead failed")
            }
            Err(_) => tracing::error!(bytes = growth.bytes, "the page pool's growth panicked"),
        }
        self.ahead_declined_below
            .set(self.mapped_bytes.get() + growth.bytes);
    }

    /// Puts every page of a fresh segment on the free list.
    fn add_segment(&self, segment: Mapping) {
        let (base, bytes) = (segment.ptr(), segment.len());
        self.free.borrow_mut().add_segment(base, bytes / PAGE_BYTES);
        self.segments.borrow_mut().push(segment);
        let mapped = self.mapped_bytes.get() + bytes;
        self.mapped_bytes.set(mapped);
        tracing::debug!(bytes, mapped_bytes = mapped, "page pool grew");
    }

    /// Waits for a running growth and adds its segment: what a test does to see the pool
    /// as the next write would, however long the other thread took.
    #[cfg(test)]
    pub(crate) fn finish_growth(&self) {
        self.adopt_growth(true);
    }

    /// `pages` free pages one after the other in memory, for a store buffer a chunk can
    /// take as its pages with no copy ([`PageChunk::adopt`]); `None` when no free extent
    /// holds that many. Maps nothing itself (a read's buffer must not grow the pool), but
    /// grows ahead as a write would. Their bytes are whatever their last chunk left.
    pub(crate) fn take_run(&self, pages: usize) -> Option<NonNull<u8>> {
        self.reclaim_waiting();
        self.adopt_growth(false);
        let first = self.free.borrow_mut().take_run(pages);
        // A run no extent holds counts against the free pages, so that the pool grows
        // to segments that hold it (a pool of one 2 MiB segment never grew for 4 MiB
        // buffers, which then all came from the buffer pool).
        let fits_a_segment = pages * PAGE_BYTES <= PAGE_SEGMENT_BYTES_MAX;
        self.grow_ahead(if first.is_none() && fits_a_segment {
            pages
        } else {
            0
        });
        first
    }

    /// Gives back `pages` pages in a row from `first` (taken by [`PagePool::take_run`],
    /// or a chunk's): to the free extents, or those a view covers to the waiting list.
    pub(crate) fn give_run(&self, first: NonNull<u8>, pages: usize) {
        let start = first.as_ptr() as usize;
        let bytes = start..start + pages * PAGE_BYTES;
        let held_back = {
            let lent = self.lent.borrow();
            lent.overlaps(bytes.clone()) || lent.retired_overlap(bytes)
        };
        if !held_back {
            self.free.borrow_mut().give_run(first, pages);
            return;
        }
        for i in 0..pages {
            // SAFETY: within the run the caller gives back.
            self.give(Page(unsafe { first.add(i * PAGE_BYTES) }));
        }
    }

    /// Gives back `pages`, a run at a time where they lie in a row.
    fn give_all(&self, pages: impl IntoIterator<Item = Page>) {
        let mut run: Option<(NonNull<u8>, usize)> = None;
        for Page(page) in pages {
            match run {
                Some((first, n))
                    if first.as_ptr().wrapping_add(n * PAGE_BYTES) == page.as_ptr()
                        && !self.free.borrow().starts_segment(page) =>
                {
                    run = Some((first, n + 1));
                }
                _ => {
                    if let Some((first, n)) = run.replace((page, 1)) {
                        self.give_run(first, n);
                    }
                }
            }
        }
        if let Some((first, n)) = run {
            self.give_run(first, n);
        }
    }

    /// `count` free pages, each holding whatever its last chunk left: in a row when one
    /// extent holds them all (reads of them then go out in place), else from the shortest
    /// extents, a run at a time; fewer if fewer are free.
    fn take_pages(&self, count: usize) -> Vec<Page> {
        let mut free = self.free.borrow_mut();
        let mut pages = Vec::with_capacity(count);
        let mut push_run = |first: NonNull<u8>, n: usize| {
            // SAFETY: pages of a run `free` handed out, within one segment.
            pages.extend((0..n).map(|i| Page(unsafe { first.add(i * PAGE_BYTES) })));
        };
        if let Some(first) = free.take_run(count) {
            push_run(first, count);
        } else {
            let mut left = count;
            while let Some((first, n)) = free.take_up_to(left) {
                push_run(first, n);
                left -= n;
                if left == 0 {
                    break;
                }
            }
        }
        pages
    }

    /// Returns a page to the free list, or to the waiting list while a view covers it;
    /// a page a retired view covers goes to neither.
    fn give(&self, page: Page) {
        let lent = self.lent.borrow();
        if lent.retires(page.0) {
            return;
        }
        if lent.covers(page.0) {
            self.waiting.borrow_mut().push(page.0);
        } else {
            self.free.borrow_mut().give_run(page.0, 1);
        }
    }
}

/// Whether [`PagePool::ensure_free`] sizes a new segment by the memory available.
#[derive(Clone, Copy)]
enum MemoryCheck {
    /// A write's: at most a share of the room ([`fit_to_memory`]).
    Share,
    /// A prefault's, checked by its caller.
    Done,
}

/// The memory this process may still fault in (host and cgroups, see
/// [`available_memory`](crate::memory::available_memory)) less [`MEMORY_HEADROOM_BYTES`]
/// for the rest of the server; `None` where nothing says.
pub fn memory_room() -> Option<u64> {
    crate::memory::available_memory().map(|bytes| bytes.saturating_sub(MEMORY_HEADROOM_BYTES))
}

/// How much to map for a segment of `wanted` bytes of which a write needs `needed`: all of
/// it while it is at most a [`GROW_AHEAD_ROOM_FACTOR`]th of the room, else only `needed`
/// if that fits the same share, else `NoSpace`. Faulting in memory that is not there
/// would not fail: the kernel's OOM killer would end the server (a job's memory limit is
/// the usual bound), and with it every chunk it holds. The share, not all the room: the
/// servers of one host check the same room at once.
fn fit_to_memory(wanted: usize, needed: usize) -> Result<usize, StoreError> {
    let Some(room) = memory_room() else {
        return Ok(wanted);
    };
    let share = room / GROW_AHEAD_ROOM_FACTOR;
    if wanted as u64 <= share {
        Ok(wanted)
    } else if needed as u64 <= share {
        Ok(needed)
    } else {
        Err(StoreError::NoSpace {
            needed: needed as u64,
            available: share,
        })
    }
}

/// The first of `pages` if every one is there (`Some`) and each lies right after the one
/// before it in memory; `None` otherwise, or for no pages.
fn in_a_row(mut pages: impl Iterator<Item = Option<NonNull<u8>>>) -> Option<NonNull<u8>> {
    let first = pages.next()??;
    let mut expected = first.as_ptr();
    for page in pages {
        // Address arithmetic only, to compare.
        expected = expected.wrapping_add(PAGE_BYTES);
        if page?.as_ptr() != expected {
            return None;
        }
    }
    Some(first)
}

/// One chunk: its length and a table of its pages, index `i` holding bytes
/// `i * PAGE_BYTES ..`; `None` where nothing was written (a hole, read as zeros).
#[derive(Default)]
pub(crate) struct PageChunk {
    len: usize,
    pages: Vec<Option<Page>>,
}

impl std::fmt::Debug for PageChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.pages.iter().flatten().count();
        f.debug_struct("PageChunk")
            .field("len", &self.len)
            .field("pages", &held)
            .finish()
    }
}

impl PageChunk {
    /// Bytes in the chunk, holes included.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Copies `data` in at `offset`, taking pages from `pool` for the parts not yet
    /// held, and grows the chunk to cover it. Fails, changing nothing, only if the pool
    /// cannot map the pages it lacks.
    pub(crate) fn write(
        &mut self,
        pool: &PagePool,
        offset: usize,
        data: &[u8],
    ) -> Result<(), StoreError> {
        let end = offset + data.len();
        if data.is_empty() {
            return Ok(());
        }
        let (first, last) = (offset / PAGE_BYTES, (end - 1) / PAGE_BYTES);
        if self.pages.len() <= last {
            self.pages.resize_with(last + 1, || None);
        }
        let missing = self.pages[first..=last]
            .iter()
            .filter(|p| p.is_none())
            .count();
        pool.reserve(missing)?;
        let mut fresh = pool.take_pages(missing).into_iter();
        let mut at = offset;
        for chunk in data.chunk_by_pages(offset) {
            let within = at % PAGE_BYTES;
            let slot = &mut self.pages[at / PAGE_BYTES];
            if slot.is_none() {
                let mut page = fresh.next().expect("reserved above");
                // A recycled page holds its last chunk's bytes: clear what this write
                // does not cover (first invariant).
                let bytes = page.bytes_mut();
                bytes[..within].fill(0);
                bytes[within + chunk.len()..].fill(0);
                *slot = Some(page);
            }
            if let Some(page) = slot {
                page.bytes_mut()[within..within + chunk.len()].copy_from_slice(chunk);
            }
            at += chunk.len();
        }
        self.len = self.len.max(end);
        Ok(())
    }

    /// Takes `len` bytes at `offset` (a page boundary) from pages in a row at `first`
    /// (from [`PagePool::take_run`], holding the bytes in their first `len`) as the
    /// chunk's own, with no copy, and gives the pages they replace back to `pool`. The last
    /// page's bytes past `len` are made the chunk's: copied from the page it replaces, or
    /// zero (first invariant).
    ///
    /// # Safety
    /// `first` starts `len.div_ceil(PAGE_BYTES)` pages of `pool` in a row that the caller
    /// owns and hands over.
    pub(crate) unsafe fn adopt(
        &mut self,
        pool: &PagePool,
        offset: usize,
        first: NonNull<u8>,
        len: usize,
    ) {
        debug_assert!(offset.is_multiple_of(PAGE_BYTES));
        let count = len.div_ceil(PAGE_BYTES);
        let start = offset / PAGE_BYTES;
        if self.pages.len() < start + count {
            self.pages.resize_with(start + count, || None);
        }
        let mut replaced = Vec::new();
        for i in 0..count {
            // SAFETY: page `i` of the run the caller hands over.
            let mut page = Page(unsafe { first.add(i * PAGE_BYTES) });
            let slot = &mut self.pages[start + i];
            let tail = len - i * PAGE_BYTES;
            if tail < PAGE_BYTES {
                let bytes = page.bytes_mut();
                match slot {
                    Some(old) => bytes[tail..].copy_from_slice(&old.bytes()[tail..]),
                    None => bytes[tail..].fill(0),
                }
            }
            replaced.extend(slot.replace(page));
        }
        pool.give_all(replaced);
        self.len = self.len.max(offset + len);
    }

    /// Copies up to `out.len()` bytes at `offset` into `out`; returns how many: short at
    /// the end of the chunk, 0 at or past it.
    pub(crate) fn read(&self, offset: usize, out: &mut [u8]) -> usize {
        let n = self.len.saturating_sub(offset).min(out.len());
        let mut at = offset;
        for chunk in out[..n].chunk_by_pages_mut(offset) {
            let within = at % PAGE_BYTES;
            match self.pages.get(at / PAGE_BYTES) {
                Some(Some(page)) => {
                    chunk.copy_from_slice(&page.bytes()[within..within + chunk.len()])
                }
                _ => chunk.fill(0),
            }
            at += chunk.len();
        }
        n
    }

    /// Up to `len` bytes at `offset` in place, if they lie in pages held one after the
    /// other in memory (a write of a fresh range takes them so): `None` for a hole, pages
    /// apart, nothing to read, or a pool that lends no more for now.
    pub(crate) fn view(&self, pool: &PagePool, offset: usize, len: usize) -> Option<ChunkView> {
        let n = self.len.saturating_sub(offset).min(len);
        if n == 0 {
            return None;
        }
        let (first, last) = (offset / PAGE_BYTES, (offset + n - 1) / PAGE_BYTES);
        let pages = self.pages.get(first..=last)?;
        let start = in_a_row(pages.iter().map(|page| page.as_ref().map(|page| page.0)))?;
        // SAFETY: `offset % PAGE_BYTES < PAGE_BYTES`, within the first page.
        let ptr = unsafe { start.add(offset % PAGE_BYTES) };
        pool.lend(ptr, n)
    }

    /// Sets the length. Shrinking gives the pages past the new end back to `pool` and
    /// clears the rest of the last page; growing only moves the end (first invariant).
    pub(crate) fn set_len(&mut self, pool: &PagePool, len: usize) {
        if len < self.len {
            let keep = len.div_ceil(PAGE_BYTES);
            if self.pages.len() > keep {
                pool.give_all(self.pages.drain(keep..).flatten());
            }
            if let Some(Some(last)) = self.pages.get_mut(keep.wrapping_sub(1)) {
                last.bytes_mut()[len - (keep - 1) * PAGE_BYTES..].fill(0);
            }
        }
        self.len = len;
    }

    /// Gives every page back to `pool`.
    pub(crate) fn release(self, pool: &PagePool) {
        pool.give_all(self.pages.into_iter().flatten());
    }
}

/// Splitting a byte range at page boundaries, given the chunk offset it starts at.
trait ChunkByPages {
    fn chunk_by_pages(&self, offset: usize) -> impl Iterator<Item = &[u8]>;
}

trait ChunkByPagesMut {
    fn chunk_by_pages_mut(&mut self, offset: usize) -> impl Iterator<Item = &mut [u8]>;
}

impl ChunkByPages for [u8] {
    fn chunk_by_pages(&self, offset: usize) -> impl Iterator<Item = &[u8]> {
        let head = (PAGE_BYTES - offset % PAGE_BYTES).min(self.len());
        let (first, rest) = self.split_at(head);
        std::iter::once(first)
            .filter(|c| !c.is_empty())
            .chain(rest.chunks(PAGE_BYTES))
    }
}

impl ChunkByPagesMut for [u8] {
    fn chunk_by_pages_mut(&mut self, offset: usize) -> impl Iterator<Item = &mut [u8]> {
        let head = (PAGE_BYTES - offset % PAGE_BYTES).min(self.len());
        let (first, rest) = self.split_at_mut(head);
        std::iter::once(first)
            .filter(|c| !c.is_empty())
            .chain(rest.chunks_mut(PAGE_BYTES))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: usize = PAGE_BYTES;

    fn read_all(chunk: &PageChunk) -> Vec<u8> {
        let mut out = vec![0xee; chunk.len() + 10];
        let n = chunk.read(0, &mut out);
        out.truncate(n);
        out
    }

    #[test]
    fn recycled_pages_read_as_zeros_where_unwritten() {
        let pool = PagePool::new(u64::MAX);
        let mut dirty = PageChunk::default();
        dirty.write(&pool, 0, &vec![0xff; 3 * P]).unwrap();
        dirty.release(&pool);
        let mut chunk = PageChunk::default();
        chunk.write(&pool, P + 10, &[7; 20]).unwrap();
        let mut want = vec![0; P + 30];
        want[P + 10..].fill(7);
        assert_eq!(read_all(&chunk), want, "recycled page cleared, hole zero");
        assert_eq!(
            chunk.pages.iter().flatten().count(),
            1,
            "the hole holds no page"
        );
    }

    #[test]
    fn shrink_clears_the_tail_and_returns_pages() {
        let pool = PagePool::new(u64::MAX);
        let mut chunk = PageChunk::default();
        chunk.write(&pool, 0, &vec![9; 3 * P]).unwrap();
        let free_before = pool.free.borrow().len();
        chunk.set_len(&pool, P + 5);
        assert_eq!(pool.free.borrow().len(), free_before + 1);
        chunk.set_len(&pool, 3 * P);
        let got = read_all(&chunk);
        assert_eq!(got[..P + 5], vec![9; P + 5][..]);
        assert!(got[P + 5..].iter().all(|&b| b == 0), "grown bytes are zero");
        chunk.set_len(&pool, 0);
        assert!(chunk.pages.is_empty());
    }

    #[test]
    fn reads_and_writes_across_page_boundaries() {
        let pool = PagePool::new(u64::MAX);
        let mut chunk = PageChunk::default();
        let data: Vec<u8> = (0..3 * P + 7).map(|i| (i % 251) as u8).collect();
        chunk.write(&pool, P - 3, &data).unwrap();
        let mut out = vec![0; data.len() + 100];
        assert_eq!(chunk.read(P - 3, &mut out), data.len());
        assert_eq!(out[..data.len()], data[..]);
        assert_eq!(chunk.read(chunk.len(), &mut out), 0);
        assert_eq!(chunk.read(chunk.len() + P, &mut out), 0);
    }

    use crate::mapping::thread_minor_faults as thread_faults;

    /// A pool running low maps its next segment on another thread, so the writer that
    /// then uses it takes no page faults; the first segment, needed at once, is the
    /// control: its faults are the writer's.
    #[test]
    fn a_pool_running_low_grows_ahead_on_another_thread() {
        let pool = PagePool::new(u64::MAX);
        let first_pages = (HUGE_PAGE_BYTES / P) as i64;
        // With huge pages for every mapping, a segment takes one fault per huge page, and
        // counting faults tells nothing.
        let count_faults = !crate::mapping::huge_pages_always();
        let mut chunk = PageChunk::default();
        let first = vec![1; HUGE_PAGE_BYTES * 3 / 4];
        let before = thread_faults();
        chunk.write(&pool, 0, &first).unwrap();
        let faults = thread_faults() - before;
        assert!(
            !count_faults || faults >= first_pages / 2,
            "control: {faults} faults mapping the first segment"
        );
        assert!(
            pool.growth.borrow().is_some(),
            "a quarter of the segment left, and no growth ahead"
        );
        pool.finish_growth();
        assert_eq!(
            pool.mapped_bytes(),
            2 * HUGE_PAGE_BYTES,
            "one segment ahead"
        );
        let data = vec![2; HUGE_PAGE_BYTES];
        let before = thread_faults();
        chunk.write(&pool, HUGE_PAGE_BYTES * 3 / 4, &data).unwrap();
        let faults = thread_faults() - before;
        // The write may start the next growth (a thread, a read of /proc): a few faults.
        assert!(
            faults < first_pages / 10,
            "{faults} faults writing into the segment grown ahead"
        );
        let mut out = vec![0; data.len()];
        assert_eq!(chunk.read(HUGE_PAGE_BYTES * 3 / 4, &mut out), data.len());
        assert_eq!(out, data);
    }

    #[test]
    fn a_pool_grows_ahead_by_huge_pages_and_no_further_than_its_capacity() {
        let capacity = 2 * HUGE_PAGE_BYTES + P;
        let pool = PagePool::new(capacity as u64);
        let mut chunk = PageChunk::default();
        chunk
            .write(&pool, 0, &vec![1; HUGE_PAGE_BYTES - P])
            .unwrap();
        pool.finish_growth();
        assert_eq!(pool.mapped_bytes(), 2 * HUGE_PAGE_BYTES, "grown ahead");
        chunk
            .write(&pool, 0, &vec![1; 2 * HUGE_PAGE_BYTES - P])
            .unwrap();
        assert!(
            pool.growth.borrow().is_none(),
            "a page short of the capacity is no segment to grow ahead"
        );
        chunk.write(&pool, 0, &vec![1; capacity]).unwrap();
        assert_eq!(
            pool.mapped_bytes(),
            capacity,
            "the last page mapped when needed"
        );
    }

    /// A run longer than any free extent grows the pool to a segment that holds it, even
    /// while the free pages alone would be reason enough not to grow.
    #[test]
    fn runs_longer_than_the_segments_grow_the_pool_to_hold_them() {
        let pool = PagePool::new(u64::MAX);
        let run = 2 * HUGE_PAGE_BYTES / P;
        assert!(pool.take_run(run).is_none(), "an empty pool has no run");
        let mut taken = None;
        for _ in 0..4 {
            pool.finish_growth();
            taken = pool.take_run(run);
            if taken.is_some() {
                break;
            }
        }
        let first = taken.expect("the pool never grew a segment that holds the run");
        assert!(
            pool.mapped_bytes() <= 4 * HUGE_PAGE_BYTES,
            "grown past what the run needed: {} bytes mapped",
            pool.mapped_bytes()
        );
        pool.give_run(first, run);
        let mapped = pool.mapped_bytes();
        for _ in 0..3 {
            let first = pool.take_run(run).expect("a run once free is free again");
            pool.give_run(first, run);
            pool.finish_growth();
        }
        assert_eq!(
            pool.mapped_bytes(),
            mapped,
            "no growth while runs are found"
        );
        let too_long = PAGE_SEGMENT_BYTES_MAX / P + 1;
        assert!(pool.take_run(too_long).is_none());
        pool.finish_growth();
        assert_eq!(
            pool.mapped_bytes(),
            mapped,
            "no segment holds it: no growth"
        );
    }

    #[test]
    fn a_bounded_pool_maps_no_more_than_it_needs() {
        let pool = PagePool::new(3 * P as u64);
        let mut chunk = PageChunk::default();
        chunk.write(&pool, 0, &[1; 10]).unwrap();
        assert_eq!(pool.mapped_bytes(), 3 * P, "capped at the capacity");
        chunk.write(&pool, 0, &vec![1; 5 * P]).unwrap();
        assert_eq!(pool.mapped_bytes(), 5 * P, "then only what is missing");
    }
}
