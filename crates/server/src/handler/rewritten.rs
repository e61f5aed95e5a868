//! Which bytes of a chunk are known to be the file's, for the chunks a store that began
//! after their file (a memory server restarted, a lost data directory, a tiered store
//! after a crash) made anew: the bytes written since, and the holes past a cut the store
//! took since. The rest of such a chunk, below its end, is zeros the store filled a gap
//! with, where the file may have held bytes the store lost.
//!
//! A write refused as `Status::Lost` covers the bytes its writer knew of (see
//! `leaves_lost_bytes`), but a writer that opened the file before another client wrote
//! to it does not know of that client's bytes: its write past them opened a gap that read
//! back as zeros with success. So every write to such a chunk adds its range here, and a
//! read that reaches into bytes not known is refused (`Status::Lost`): the client asks
//! another replica or fails with EIO naming the server, as for a hole such a server
//! reports (`check_not_lost` in the client). A gap nothing vouches for reads so even when
//! it is a hole (a sparse write into an old file): conservative, as for missing chunks.
//!
//! Known ranges rather than gaps, so that writes landing in any order leave the same
//! set. Kept in memory only: a disk or tiered store restarted after such a life forgets
//! which of those chunks' bytes were written (see ARCHITECTURE.md).

use std::collections::BTreeMap;

use benchfs_store::ChunkId;

/// The known ranges of each chunk a store made after it began, for files older than
/// the store.
#[derive(Debug, Default)]
pub(super) struct Rewritten {
    chunks: BTreeMap<ChunkId, Chunk>,
}

/// One chunk's length and the bytes of it known to be the file's.
#[derive(Debug, Default, PartialEq, Eq)]
struct Chunk {
    len: u64,
    /// Bytes written since the store began, and holes the file holds for sure (past a
    /// cut this server took since, or vouched for by a repair): sorted, disjoint, not
    /// touching `[start, end)` byte ranges.
    known: Vec<(u64, u64)>,
}

impl Rewritten {
    /// Keeps chunk `id`, which a write is about to make, with no byte written yet: past
    /// `last_cut` (chunk index, bytes into it), a cut of its file this store took, the
    /// file holds nothing but what is written since.
    pub(super) fn track(&mut self, id: ChunkId, last_cut: Option<(u64, u64)>) {
        if self.chunks.contains_key(&id) {
            return;
        }
        self.chunks.insert(id, Chunk::default());
        match last_cut {
            Some((index, _)) if id.index > index => self.know(id, 0, u64::MAX),
            Some((index, len)) if id.index == index => self.know(id, len, u64::MAX),
            _ => {}
        }
    }

    /// Bytes `start..end` of chunk `id` were written; the chunk is kept from now on.
    pub(super) fn add(&mut self, id: ChunkId, start: u64, end: u64) {
        let chunk = self.chunks.entry(id).or_default();
        if start < end {
            chunk.len = chunk.len.max(end);
        }
        self.know(id, start, end);
    }

    /// Bytes `start..end` of chunk `id` are the file's for sure (written, or a hole).
    fn know(&mut self, id: ChunkId, start: u64, end: u64) {
        let chunk = self.chunks.entry(id).or_default();
        if start >= end {
            return;
        }
        let ranges = &mut chunk.known;
        // The ranges that touch or overlap the new one merge with it.
        let first = ranges.partition_point(|&(_, e)| e < start);
        let last = ranges.partition_point(|&(s, _)| s <= end);
        let merged = ranges[first..last]
            .iter()
            .fold((start, end), |(s, e), &(rs, re)| (s.min(rs), e.max(re)));
        ranges.splice(first..last, [merged]);
    }

    /// Whether bytes `start..end` of chunk `id`, as far as the chunk goes, are all known;
    /// `true` for a chunk not kept here.
    pub(super) fn covers(&self, id: ChunkId, start: u64, end: u64) -> bool {
        let Some(chunk) = self.chunks.get(&id) else {
            return true;
        };
        let end = end.min(chunk.len);
        if start >= end {
            return true;
        }
        let i = chunk.known.partition_point(|&(_, e)| e <= start);
        chunk
            .known
            .get(i)
            .is_some_and(|&(s, e)| s <= start && end <= e)
    }

    /// Whether chunk `id` is kept here.
    pub(super) fn tracks(&self, id: ChunkId) -> bool {
        self.chunks.contains_key(&id)
    }

    /// Chunk `id` was cut to `len` bytes (removed at 0): past them the file holds a hole.
    pub(super) fn cut(&mut self, id: ChunkId, len: u64) {
        if len == 0 {
            self.chunks.remove(&id);
            return;
        }
        let Some(chunk) = self.chunks.get_mut(&id) else {
            return;
        };
        chunk.len = chunk.len.min(len);
        chunk.known.retain_mut(|(s, e)| {
            *e = (*e).min(len);
            *s < *e
        });
        self.know(id, len, u64::MAX);
    }

    /// The chunks of file `file_id` were removed.
    pub(super) fn forget_file(&mut self, file_id: u64) {
        let ids: Vec<ChunkId> = self
            .chunks
            .range(ChunkId::new(file_id, 0)..=ChunkId::new(file_id, u64::MAX))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.chunks.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: ChunkId = ChunkId {
        file_id: 7,
        index: 2,
    };

    #[test]
    fn a_gap_between_writes_is_not_covered_until_written() {
        let mut w = Rewritten::default();
        assert!(w.covers(ID, 0, 100), "a chunk not kept is not asked about");
        w.add(ID, 200, 210);
        assert!(!w.covers(ID, 0, 10));
        assert!(!w.covers(ID, 150, 205));
        assert!(w.covers(ID, 200, 210));
        assert!(
            w.covers(ID, 205, 4096),
            "past the chunk's end is a hole, not a gap"
        );
        assert!(w.covers(ID, 300, 400));
        w.add(ID, 0, 100);
        assert!(w.covers(ID, 0, 100) && !w.covers(ID, 0, 101));
        w.add(ID, 100, 200);
        assert_eq!(w.chunks[&ID].known, vec![(0, 210)], "touching ranges merge");
        assert!(w.covers(ID, 0, 210));
    }

    #[test]
    fn writes_in_any_order_leave_the_same_ranges() {
        let writes = [(0, 10), (30, 40), (5, 35), (50, 60), (60, 61), (45, 46)];
        let mut forward = Rewritten::default();
        let mut backward = Rewritten::default();
        for &(s, e) in &writes {
            forward.add(ID, s, e);
        }
        for &(s, e) in writes.iter().rev() {
            backward.add(ID, s, e);
        }
        assert_eq!(forward.chunks[&ID].known, vec![(0, 40), (45, 46), (50, 61)]);
        assert_eq!(forward.chunks, backward.chunks);
    }

    #[test]
    fn a_chunk_made_past_a_cut_this_store_took_holds_holes_not_lost_bytes() {
        let mut w = Rewritten::default();
        let cut = Some((2, 100));
        w.track(ChunkId::new(7, 1), cut);
        w.add(ChunkId::new(7, 1), 50, 60);
        assert!(
            !w.covers(ChunkId::new(7, 1), 0, 60),
            "before the cut: unknown"
        );
        w.track(ID, cut);
        w.add(ID, 200, 210);
        assert!(!w.covers(ID, 0, 210) && w.covers(ID, 100, 210));
        w.track(ChunkId::new(7, 3), cut);
        w.add(ChunkId::new(7, 3), 200, 210);
        assert!(w.covers(ChunkId::new(7, 3), 0, 210));
        w.track(ChunkId::new(7, 4), None);
        w.add(ChunkId::new(7, 4), 200, 210);
        assert!(!w.covers(ChunkId::new(7, 4), 0, 210), "no cut: unknown");
    }

    #[test]
    fn a_cut_or_removal_forgets_the_bytes_it_dropped() {
        let mut w = Rewritten::default();
        w.add(ID, 0, 10);
        w.add(ID, 20, 30);
        w.cut(ID, 25);
        assert_eq!(w.chunks[&ID].known, vec![(0, 10), (20, u64::MAX)]);
        w.cut(ID, 15);
        assert_eq!(w.chunks[&ID].known, vec![(0, 10), (15, u64::MAX)]);
        assert!(w.covers(ID, 0, 10) && !w.covers(ID, 0, 15));
        w.add(ID, 100, 110);
        assert!(w.covers(ID, 15, 110), "past the cut: a hole, then written");
        w.cut(ID, 5);
        w.add(ChunkId::new(7, 1), 200, 210);
        w.cut(ChunkId::new(7, 1), 100);
        assert!(
            !w.covers(ChunkId::new(7, 1), 50, 60),
            "a cut inside a gap leaves the gap's start"
        );
        w.cut(ID, 0);
        assert!(!w.tracks(ID));
        let other = ChunkId::new(8, 0);
        w.add(ID, 0, 1);
        w.add(ChunkId::new(7, 9), 0, 1);
        w.add(other, 0, 1);
        w.forget_file(7);
        assert!(!w.tracks(ID) && !w.tracks(ChunkId::new(7, 9)) && w.tracks(other));
    }
}
