//! The page pool's free pages, as extents: runs of pages one after the other in memory,
//! each within one segment, joined with their neighbours as pages come back.
//!
//! Why extents and not a stack of pages: a write of 64 KiB or more takes a run of pages in
//! a row, so that its chunk takes the received bytes with no copy and reads of it go out
//! in place. On a stack only the pages on top could make a run, and a cut chunk's few
//! pages there broke every run after them; here pages join their neighbours in whatever
//! order they come back, and a run comes from any extent long enough.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ptr::NonNull;

use super::PAGE_BYTES;

/// Free pages by extent. The maps key extents by address; the pointers they hold come
/// from the segments' mappings, and an extent never spans two segments.
#[derive(Debug, Default)]
pub(super) struct FreePages {
    /// Extents by the address of their first page: that page, and how many pages.
    by_start: BTreeMap<usize, (NonNull<u8>, usize)>,
    /// The same extents as (pages, address of the first): runs come from the shortest
    /// that holds them, and single pages from the shortest of all, keeping long ones.
    by_len: BTreeSet<(usize, usize)>,
    /// Each segment's first page, by address: no extent spans one's start.
    segment_starts: BTreeMap<usize, NonNull<u8>>,
    /// The runs of `RECENT_RUN_PAGES_MIN` pages or more given back last, newest at the
    /// back, as (address, pages). A run is taken from one of them first, since their bytes
    /// are likely still in the CPU's cache, as an allocator hands out what was freed last:
    /// a transfer buffer given back after its request becomes the next request's. Taken
    /// from the shortest extent instead, 4 MiB Ping payloads over shared memory landed in
    /// memory outside the cache, at 0.75x the bandwidth (rpc-bench, alternated). Entries
    /// whose pages were taken since are skipped when looked at.
    recent: VecDeque<(usize, usize)>,
    pages: usize,
}

/// How many given-back runs `FreePages::recent` remembers: a window of transfers in
/// flight, and more.
const RECENT_RUNS: usize = 64;

/// The shortest run `FreePages::recent` remembers: a buffer's (single pages of cut chunks
/// would push out the runs buffers are taken from).
const RECENT_RUN_PAGES_MIN: usize = crate::limits::PAGE_RUN_BUFFER_MIN / PAGE_BYTES;

impl FreePages {
    /// How many pages are free.
    pub(super) fn len(&self) -> usize {
        self.pages
    }

    /// Adds every page of a fresh segment of `pages` pages at `base`.
    pub(super) fn add_segment(&mut self, base: NonNull<u8>, pages: usize) {
        self.segment_starts.insert(base.as_ptr() as usize, base);
        self.give_pages(base, pages);
    }

    /// Whether a segment begins at `page`.
    pub(super) fn starts_segment(&self, page: NonNull<u8>) -> bool {
        self.segment_starts.contains_key(&(page.as_ptr() as usize))
    }

    /// Gives back `count` pages in a row from `first`, which no extent holds: an extent
    /// per segment they lie in (mappings side by side are still two).
    pub(super) fn give_run(&mut self, first: NonNull<u8>, count: usize) {
        if count == 0 {
            return;
        }
        if count >= RECENT_RUN_PAGES_MIN {
            if self.recent.len() == RECENT_RUNS {
                self.recent.pop_front();
            }
            self.recent.push_back((first.as_ptr() as usize, count));
        }
        self.give_pages(first, count);
    }

    /// `give_run` without remembering the run.
    fn give_pages(&mut self, first: NonNull<u8>, count: usize) {
        let start = first.as_ptr() as usize;
        let end = start + count * PAGE_BYTES;
        let split = self.segment_starts.range(start + 1..end).next();
        if let Some((&at, &base)) = split {
            let head = (at - start) / PAGE_BYTES;
            self.give_extent(first, head);
            self.give_pages(base, count - head);
        } else {
            self.give_extent(first, count);
        }
    }

    /// Gives back `count` pages in a row within one segment from `first`, joining them
    /// with the extents right before and after them in that segment.
    fn give_extent(&mut self, first: NonNull<u8>, count: usize) {
        let (mut start, mut ptr, mut len) = (first.as_ptr() as usize, first, count);
        debug_assert!(
            self.by_start
                .range(..start + count * PAGE_BYTES)
                .next_back()
                .is_none_or(|(&at, &(_, at_len))| at + at_len * PAGE_BYTES <= start),
            "pages given back twice"
        );
        if !self.segment_starts.contains_key(&start) {
            let before = self.by_start.range(..start).next_back();
            if let Some((&at, &(at_ptr, at_len))) = before {
                if at + at_len * PAGE_BYTES == start {
                    self.remove(at, at_len);
                    (start, ptr, len) = (at, at_ptr, at_len + len);
                }
            }
        }
        let end = start + len * PAGE_BYTES;
        if !self.segment_starts.contains_key(&end) {
            if let Some(&(_, after_len)) = self.by_start.get(&end) {
                self.remove(end, after_len);
                len += after_len;
            }
        }
        self.insert(start, ptr, len);
        self.pages += count;
    }

    /// Takes up to `count` pages in a row, from the shortest extent; `None` if none is
    /// free.
    pub(super) fn take_up_to(&mut self, count: usize) -> Option<(NonNull<u8>, usize)> {
        let &(len, start) = self.by_len.first()?;
        let taken = len.min(count);
        Some((self.take_from(start, len, taken), taken))
    }

    /// Takes `count` pages in a row: a run of a buffer's size or more from the newest
    /// given-back run that is still free and holds it, else from the shortest extent that
    /// holds them (so small writes never wear down long runs); `None` if none does.
    pub(super) fn take_run(&mut self, count: usize) -> Option<NonNull<u8>> {
        if count == 0 {
            return None;
        }
        if count >= RECENT_RUN_PAGES_MIN {
            if let Some(run) = self.take_recent(count) {
                return Some(run);
            }
        }
        let &(len, start) = self.by_len.range((count, 0)..).next()?;
        Some(self.take_from(start, len, count))
    }

    /// `count` pages from the start of the newest remembered run at least that long whose
    /// pages are all still free. Taking them splits their extent where it was split before
    /// they came back, so this makes no extent shorter than it was then.
    fn take_recent(&mut self, count: usize) -> Option<NonNull<u8>> {
        let (position, (extent, extent_len)) =
            self.recent
                .iter()
                .enumerate()
                .rev()
                .find_map(|(i, &(at, len))| {
                    if len < count {
                        return None;
                    }
                    self.extent_holding(at, count).map(|extent| (i, extent))
                })?;
        let (at, len) = self.recent.remove(position)?;
        if len > count {
            self.recent
                .push_back((at + count * PAGE_BYTES, len - count));
        }
        Some(self.take_at(extent, extent_len, (at - extent) / PAGE_BYTES, count))
    }

    /// The free extent (address, pages) holding the `count` pages from address `at`.
    fn extent_holding(&self, at: usize, count: usize) -> Option<(usize, usize)> {
        let (&start, &(_, len)) = self.by_start.range(..=at).next_back()?;
        (at + count * PAGE_BYTES <= start + len * PAGE_BYTES).then_some((start, len))
    }

    /// Takes the first `count` pages of the extent of `len` pages at `start`.
    fn take_from(&mut self, start: usize, len: usize, count: usize) -> NonNull<u8> {
        self.take_at(start, len, 0, count)
    }

    /// Takes `count` pages from the `head`th page of the extent of `len` pages at `start`
    /// (`head + count <= len`); the pages before and after stay free as extents.
    fn take_at(&mut self, start: usize, len: usize, head: usize, count: usize) -> NonNull<u8> {
        let (ptr, _) = self.remove(start, len);
        if head > 0 {
            self.insert(start, ptr, head);
        }
        // SAFETY: `head + count <= len` pages from the extent's first: inside its segment.
        let run = unsafe { ptr.add(head * PAGE_BYTES) };
        let tail = len - head - count;
        if tail > 0 {
            // SAFETY: as above, `tail > 0` pages of the extent follow the run.
            let rest = unsafe { run.add(count * PAGE_BYTES) };
            self.insert(start + (head + count) * PAGE_BYTES, rest, tail);
        }
        self.pages -= count;
        run
    }

    fn insert(&mut self, start: usize, ptr: NonNull<u8>, len: usize) {
        self.by_start.insert(start, (ptr, len));
        self.by_len.insert((len, start));
    }

    fn remove(&mut self, start: usize, len: usize) -> (NonNull<u8>, usize) {
        self.by_len.remove(&(len, start));
        self.by_start
            .remove(&start)
            .expect("an extent in one map is in both")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: usize = PAGE_BYTES;

    /// Page `i` of a fake segment: the extents only compare addresses.
    fn page(base: &[u8], i: usize) -> NonNull<u8> {
        NonNull::from(&base[i * P])
    }

    #[test]
    fn pages_given_back_in_any_order_make_runs_again() {
        let memory = vec![0u8; 16 * P];
        let mut free = FreePages::default();
        free.add_segment(page(&memory, 0), 16);
        let run = free.take_run(16).unwrap();
        assert_eq!(run, page(&memory, 0));
        assert_eq!(free.len(), 0);
        assert!(free.take_up_to(1).map(|(page, _)| page).is_none());
        // Back one by one, out of order: one extent again.
        for i in [3, 1, 2, 0, 15, 9, 10, 11, 12, 13, 14, 4, 5, 8, 6, 7] {
            free.give_run(page(&memory, i), 1);
        }
        assert_eq!(free.len(), 16);
        assert_eq!(free.by_start.len(), 1);
        assert_eq!(free.take_run(16), Some(page(&memory, 0)));
        // A single page comes from the shortest extent, a run from the shortest that holds
        // it.
        free.give_run(page(&memory, 0), 4);
        free.give_run(page(&memory, 6), 1);
        free.give_run(page(&memory, 8), 8);
        assert_eq!(
            free.take_up_to(1).map(|(page, _)| page),
            Some(page(&memory, 6))
        );
        assert_eq!(free.take_run(3), Some(page(&memory, 0)));
        assert_eq!(free.take_run(5), Some(page(&memory, 8)));
        assert_eq!(free.take_run(4), None);
        assert_eq!(free.len(), 4);
    }

    #[test]
    fn a_run_comes_from_the_runs_given_back_last_while_their_pages_are_free() {
        const R: usize = RECENT_RUN_PAGES_MIN;
        let memory = vec![0u8; 4 * R * P];
        let mut free = FreePages::default();
        free.add_segment(page(&memory, 0), 4 * R);
        let a = free.take_run(R).unwrap();
        let b = free.take_run(R).unwrap();
        let c = free.take_run(R).unwrap();
        assert_eq!([a, b, c], [0, R, 2 * R].map(|i| page(&memory, i)));
        // A alone, and C joined with the free last quarter: the shortest extent is A's,
        // but C came back last.
        free.give_run(a, R);
        free.give_run(c, R);
        assert_eq!(free.take_run(R), Some(c));
        assert_eq!(free.take_run(R), Some(a));
        assert_eq!(free.take_run(R), Some(page(&memory, 3 * R)));
        assert_eq!(free.len(), 0);
        // A run remembered whose pages went another way is passed over.
        free.give_run(b, R);
        free.give_run(a, R);
        assert_eq!(free.take_up_to(1).map(|(page, _)| page), Some(a));
        assert_eq!(free.take_run(R), Some(b));
        // A shorter run takes the front of a remembered one, and the next its rest.
        free.give_run(c, 2 * R);
        assert_eq!(free.take_run(R), Some(c));
        assert_eq!(free.take_run(R), Some(page(&memory, 3 * R)));
        assert_eq!(free.len(), R - 1);
        // Fewer pages than a buffer's come from the shortest extent, as ever.
        free.give_run(c, 2 * R);
        assert_eq!(free.take_run(2), Some(page(&memory, 1)));
    }

    #[test]
    fn an_extent_never_spans_two_segments() {
        let memory = vec![0u8; 8 * P];
        let mut free = FreePages::default();
        // Two segments side by side in memory are still two.
        free.add_segment(page(&memory, 0), 4);
        free.add_segment(page(&memory, 4), 4);
        assert_eq!(free.by_start.len(), 2);
        assert_eq!(free.take_run(5), None);
        let first = free.take_run(4).unwrap();
        let second = free.take_run(4).unwrap();
        free.give_run(second, 4);
        free.give_run(first, 4);
        assert_eq!(free.by_start.len(), 2, "given back, they stay apart");
        // Pages a chunk took from both, given back as one run: split at the boundary.
        let tail = free.take_run(4).unwrap();
        assert_eq!(
            free.take_up_to(1).map(|(page, _)| page),
            Some(page(&memory, 4))
        );
        assert_eq!(tail, page(&memory, 0));
        free.give_run(page(&memory, 0), 3);
        free.give_run(page(&memory, 3), 2);
        assert_eq!(free.len(), 8);
        assert_eq!(free.take_run(5), None, "no run across the boundary");
        assert_eq!(free.by_start.len(), 2);
    }
}
