//! The last cut of each file this server was told of, so that an append's bytes that
//! arrive after a cut they were ordered before do not land past it.
//!
//! An append claims its range on the record, then writes its chunks; another client may
//! cut the file in between. The record orders the two: a cut moves the record's
//! `cut_gen`, and the append's writes carry the one their claim saw. A write that carries
//! an older count than the last cut here came before that cut, so what it would put past
//! the cut's end is dropped (the cut removed it, in the order the record gave). Without
//! this the bytes would lie past the end, hold space, and read back in the hole a later
//! write far past the end opens.
//!
//! Kept in memory: a server restarted between an append's claim and its write forgets
//! the cut, and the write lands as it did before this existed.

use std::collections::HashMap;

use benchfs_proto::meta::cut_gen_older as older;

/// Where a file was last cut, by chunk index and offset in that chunk, and the record's
/// cut count after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cut {
    gen: u16,
    index: u64,
    len: u64,
}

/// The last cut of each file, by inode number.
#[derive(Debug, Default)]
pub(super) struct Cuts {
    by_file: HashMap<u64, Cut>,
}

impl Cuts {
    /// File `file_id` was cut at `len` bytes into chunk `index`, leaving its record at
    /// cut count `gen`. A cut that comes late (an older count than one seen) changes
    /// nothing.
    pub(super) fn record(&mut self, file_id: u64, gen: u16, index: u64, len: u64) {
        // A count of 0 is a file never cut: no append is older.
        if gen == 0 {
            return;
        }
        let cut = Cut { gen, index, len };
        self.by_file
            .entry(file_id)
            .and_modify(|last| {
                if !older(gen, last.gen) {
                    *last = cut;
                }
            })
            .or_insert(cut);
    }

    /// How many bytes of a write of `len` at `offset` in chunk `index` of file `file_id`,
    /// from its start, may land: all of them unless it is an append claimed at cut count
    /// `append_gen` before the file's last cut here, which removed what lies past it.
    pub(super) fn landing(
        &self,
        file_id: u64,
        append_gen: Option<u16>,
        (index, offset, len): (u64, u64, u64),
    ) -> u64 {
        let Some(gen) = append_gen else {
            return len;
        };
        let Some(cut) = self.by_file.get(&file_id) else {
            return len;
        };
        if !older(gen, cut.gen) || index < cut.index {
            return len;
        }
        if index > cut.index {
            return 0;
        }
        cut.len.saturating_sub(offset).min(len)
    }

    /// Where file `file_id` was last cut here (chunk index, bytes into it), if it was.
    pub(super) fn last(&self, file_id: u64) -> Option<(u64, u64)> {
        self.by_file.get(&file_id).map(|cut| (cut.index, cut.len))
    }

    /// File `file_id`'s chunks are gone for good here.
    pub(super) fn forget(&mut self, file_id: u64) {
        self.by_file.remove(&file_id);
    }

    /// How many files' cuts are kept.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_file.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_append_claimed_before_a_cut_lands_only_short_of_it() {
        let mut cuts = Cuts::default();
        cuts.record(7, 3, 2, 100);
        // Claimed at count 2, before the cut to 100 bytes into chunk 2.
        let before = Some(2);
        assert_eq!(cuts.landing(7, before, (1, 0, 4096)), 4096);
        assert_eq!(cuts.landing(7, before, (2, 0, 4096)), 100);
        assert_eq!(cuts.landing(7, before, (2, 60, 10)), 10);
        assert_eq!(cuts.landing(7, before, (2, 100, 10)), 0);
        assert_eq!(cuts.landing(7, before, (3, 0, 10)), 0);
        // Claimed after the cut, a plain write, or another file: all of it.
        assert_eq!(cuts.landing(7, Some(3), (3, 0, 10)), 10);
        assert_eq!(cuts.landing(7, Some(4), (3, 0, 10)), 10);
        assert_eq!(cuts.landing(7, None, (3, 0, 10)), 10);
        assert_eq!(cuts.landing(8, before, (3, 0, 10)), 10);
    }

    #[test]
    fn the_latest_cut_counts_and_a_late_one_is_ignored() {
        let mut cuts = Cuts::default();
        cuts.record(7, 5, 0, 10);
        cuts.record(7, 4, 0, 0);
        assert_eq!(cuts.landing(7, Some(4), (0, 0, 100)), 10);
        cuts.record(7, 6, 1, 0);
        assert_eq!(cuts.landing(7, Some(4), (0, 0, 100)), 100);
        assert_eq!(cuts.landing(7, Some(4), (1, 0, 100)), 0);
        cuts.forget(7);
        assert_eq!(cuts.landing(7, Some(4), (1, 0, 100)), 100);
        assert_eq!(cuts.len(), 0);
    }

    #[test]
    fn counts_compare_across_the_wrap_and_zero_is_never_kept() {
        let mut cuts = Cuts::default();
        cuts.record(1, 0, 0, 0);
        assert_eq!(cuts.len(), 0);
        cuts.record(1, 2, 0, 0);
        // 65535 comes before 2, across the wrap (which skips 0).
        assert_eq!(benchfs_proto::meta::next_cut_gen(u16::MAX), 1);
        assert_eq!(cuts.landing(1, Some(u16::MAX), (0, 0, 8)), 0);
        assert_eq!(cuts.landing(1, Some(2), (0, 0, 8)), 8);
        assert!(older(u16::MAX, 0));
        assert!(!older(0, u16::MAX));
        assert!(!older(9, 9));
    }
}
