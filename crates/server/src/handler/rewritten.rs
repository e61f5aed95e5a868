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
//! set. A disk store logs them (`REMADE_FILE`) for its later lives, in which its chunk
//! files no longer vouch for their ends either: a tiered store's file of a chunk made
//! anew after a crash held a 4 KiB rewrite, and after a clean restart the lost rest of
//! the chunk read as a hole of zeros.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use benchfs_store::ChunkId;

/// The file in a disk store's data directory that logs what [`Rewritten`] knows (see
/// [`Rewritten::open`]).
pub(super) const REMADE_FILE: &str = "remade-chunks";

/// What is known of each chunk a store made after it began, for files older than the
/// store.
#[derive(Debug, Default)]
pub(super) struct Rewritten {
    chunks: BTreeMap<ChunkId, Chunk>,
    /// Chunks an earlier life of the store made anew that this life has not written to
    /// yet: their file may be gone since (a tiered store's memory tier lost them).
    earlier: BTreeSet<ChunkId>,
    /// Where a disk store logs it for its later lives.
    log: Option<Log>,
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

/// One change to what is known, as [`REMADE_FILE`] holds it: a line each,
/// `t <file> <index>` (tracked, with nothing known: logged before the write that makes
/// the chunk, so that any chunk file a crash leaves is in the log, and after anything an
/// earlier making of the chunk left there), `a <file> <index> <start> <end>` (written,
/// logged once the store took the write: a crash before that leaves the bytes unknown),
/// `k ...` (a hole known) and `c <file> <index> <len>` (cut). A line a crash tore is
/// skipped: its change is the unknown side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Made anew: whatever was known of the chunk before is not.
    Track(ChunkId),
    Add(ChunkId, u64, u64),
    Know(ChunkId, u64, u64),
    Cut(ChunkId, u64),
    /// The chunk's length, with nothing more known (a rewritten log's).
    Len(ChunkId, u64),
}

impl Change {
    fn line(self) -> String {
        match self {
            Change::Track(id) => format!("t {} {}\n", id.file_id, id.index),
            Change::Add(id, s, e) => format!("a {} {} {s} {e}\n", id.file_id, id.index),
            Change::Know(id, s, e) => format!("k {} {} {s} {e}\n", id.file_id, id.index),
            Change::Cut(id, len) => format!("c {} {} {len}\n", id.file_id, id.index),
            Change::Len(id, len) => format!("l {} {} {len}\n", id.file_id, id.index),
        }
    }

    fn parse(line: &str) -> Option<Change> {
        let mut fields = line.split(' ');
        let kind = fields.next()?;
        let numbers: Vec<u64> = fields.map(|f| f.parse().ok()).collect::<Option<_>>()?;
        let id = |n: &[u64]| ChunkId::new(n[0], n[1]);
        match (kind, numbers.len()) {
            ("t", 2) => Some(Change::Track(id(&numbers))),
            ("a", 4) => Some(Change::Add(id(&numbers), numbers[2], numbers[3])),
            ("k", 4) => Some(Change::Know(id(&numbers), numbers[2], numbers[3])),
            ("c", 3) => Some(Change::Cut(id(&numbers), numbers[2])),
            ("l", 3) => Some(Change::Len(id(&numbers), numbers[2])),
            _ => None,
        }
    }
}

/// [`REMADE_FILE`], open to append; no file while nothing is known.
#[derive(Debug)]
struct Log {
    path: PathBuf,
    file: Option<File>,
}

impl Log {
    fn append(&mut self, change: Change) -> io::Result<()> {
        if self.file.is_none() {
            self.file = Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        let file = self.file.as_mut().expect("opened above");
        file.write_all(change.line().as_bytes())
    }

    /// Writes `chunks` whole (through a rename), or removes the file when there are none.
    fn rewrite(&mut self, chunks: &BTreeMap<ChunkId, Chunk>) -> io::Result<()> {
        self.file = None;
        if chunks.is_empty() {
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let mut text = String::new();
        for (&id, chunk) in chunks {
            text.push_str(&Change::Track(id).line());
            text.push_str(&Change::Len(id, chunk.len).line());
            for &(s, e) in &chunk.known {
                text.push_str(&Change::Know(id, s, e).line());
            }
        }
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path)
    }

    fn sync(&self) -> io::Result<()> {
        self.file.as_ref().map_or(Ok(()), File::sync_data)
    }
}

impl Rewritten {
    /// For a disk store in `data_dir` (`None` for memory, which keeps nothing across
    /// lives): what its earlier lives knew, from [`REMADE_FILE`]. The file of such a chunk
    /// holds what was written by the time its change was logged or later (a tiered store
    /// writes a chunk that reached its file there before acknowledging a change), never
    /// less, so what the log knows holds for it; one gone since is made anew at its next
    /// write.
    pub(super) fn open(data_dir: Option<&Path>) -> io::Result<Rewritten> {
        let Some(data_dir) = data_dir else {
            return Ok(Rewritten::default());
        };
        let path = data_dir.join(REMADE_FILE);
        let mut replayed = Rewritten::default();
        match File::open(&path) {
            Ok(file) => {
                for line in BufReader::new(file).lines() {
                    let line = line?;
                    match Change::parse(&line) {
                        Some(change) => replayed.apply(change),
                        None => tracing::warn!(path = %path.display(), line, "torn line skipped"),
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut log = Log { path, file: None };
        log.rewrite(&replayed.chunks)?;
        Ok(Rewritten {
            earlier: replayed.chunks.keys().copied().collect(),
            chunks: replayed.chunks,
            log: Some(log),
        })
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::Track(id) => {
                self.chunks.insert(id, Chunk::default());
            }
            Change::Add(id, start, end) => {
                let chunk = self.chunks.entry(id).or_default();
                if start < end {
                    chunk.len = chunk.len.max(end);
                }
                self.know(id, start, end);
            }
            Change::Know(id, start, end) => self.know(id, start, end),
            Change::Len(id, len) => self.chunks.entry(id).or_default().len = len,
            Change::Cut(id, len) => {
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
        }
    }

    /// Applies `change` and logs it; a change the log could not take is still applied
    /// (only a `Track` must reach the log first: see [`Rewritten::track`]).
    fn change(&mut self, change: Change) {
        self.apply(change);
        if let Some(log) = &mut self.log {
            if let Err(e) = log.append(change) {
                tracing::warn!(path = %log.path.display(), error = %e, "a change to the chunks made anew not logged: a later life reads their bytes as unknown");
            }
        }
    }

    /// Keeps chunk `id`, which a write is about to make, with no byte written yet: past
    /// `last_cut` (chunk index, bytes into it), a cut of its file this store took, the
    /// file holds nothing but what is written since. Fails, keeping nothing, when a disk
    /// store cannot log it (its write must not go ahead: a later life would trust the
    /// chunk's gaps).
    pub(super) fn track(&mut self, id: ChunkId, last_cut: Option<(u64, u64)>) -> io::Result<()> {
        if self.chunks.contains_key(&id) {
            return Ok(());
        }
        if let Some(log) = &mut self.log {
            log.append(Change::Track(id))?;
        }
        self.apply(Change::Track(id));
        match last_cut {
            Some((index, _)) if id.index > index => self.change(Change::Know(id, 0, u64::MAX)),
            Some((index, len)) if id.index == index => {
                self.change(Change::Know(id, len, u64::MAX));
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether chunk `id` was made by an earlier life of the store and not written in
    /// this one.
    pub(super) fn made_earlier(&self, id: ChunkId) -> bool {
        self.earlier.contains(&id)
    }

    /// Chunk `id`, made by an earlier life, is `exists` in the store now: what that
    /// life knew of it holds, or it is gone (and made anew like any other).
    pub(super) fn found(&mut self, id: ChunkId, exists: bool) {
        self.earlier.remove(&id);
        if !exists {
            self.forget(&[id]);
        }
    }

    /// Makes the log durable (at a store's sync).
    pub(super) fn sync(&self) -> io::Result<()> {
        self.log.as_ref().map_or(Ok(()), Log::sync)
    }

    /// Bytes `start..end` of chunk `id` were written; the chunk is kept from now on.
    pub(super) fn add(&mut self, id: ChunkId, start: u64, end: u64) {
        self.change(Change::Add(id, start, end));
    }

    /// Bytes `start..end` of chunk `id` are a hole the file holds.
    pub(super) fn know_hole(&mut self, id: ChunkId, start: u64, end: u64) {
        if start < end {
            self.change(Change::Know(id, start, end));
        }
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

    /// Whether chunk `id` is kept here (made anew in this life or an earlier one).
    pub(super) fn tracks(&self, id: ChunkId) -> bool {
        self.chunks.contains_key(&id)
    }

    /// Chunk `id` was cut to `len` bytes (removed at 0): past them the file holds a hole.
    pub(super) fn cut(&mut self, id: ChunkId, len: u64) {
        if len == 0 {
            self.forget(&[id]);
        } else if self.chunks.contains_key(&id) {
            self.change(Change::Cut(id, len));
        }
    }

    /// The chunks of file `file_id` were removed.
    pub(super) fn forget_file(&mut self, file_id: u64) {
        let ids: Vec<ChunkId> = self
            .chunks
            .range(ChunkId::new(file_id, 0)..=ChunkId::new(file_id, u64::MAX))
            .map(|(id, _)| *id)
            .collect();
        self.forget(&ids);
    }

    fn forget(&mut self, ids: &[ChunkId]) {
        let before = self.chunks.len();
        for id in ids {
            self.chunks.remove(id);
            self.earlier.remove(id);
        }
        if self.chunks.len() == before {
            return;
        }
        if let Some(log) = &mut self.log {
            // Left in the log on a failure: a later life only knows more of the chunk
            // than there is (it is gone; made anew at its next write).
            if let Err(e) = log.rewrite(&self.chunks) {
                tracing::warn!(path = %log.path.display(), error = %e, "the log of chunks made anew not rewritten");
            }
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
        w.track(ChunkId::new(7, 1), cut).unwrap();
        w.add(ChunkId::new(7, 1), 50, 60);
        assert!(
            !w.covers(ChunkId::new(7, 1), 0, 60),
            "before the cut: unknown"
        );
        w.track(ID, cut).unwrap();
        w.add(ID, 200, 210);
        assert!(!w.covers(ID, 0, 210) && w.covers(ID, 100, 210));
        w.track(ChunkId::new(7, 3), cut).unwrap();
        w.add(ChunkId::new(7, 3), 200, 210);
        assert!(w.covers(ChunkId::new(7, 3), 0, 210));
        w.track(ChunkId::new(7, 4), None).unwrap();
        w.add(ChunkId::new(7, 4), 200, 210);
        assert!(!w.covers(ChunkId::new(7, 4), 0, 210), "no cut: unknown");
    }

    #[test]
    fn a_later_life_knows_what_an_earlier_one_logged_and_no_more() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join(REMADE_FILE);
        let mut w = Rewritten::open(Some(dir.path())).unwrap();
        assert!(!list.exists(), "nothing known, no file");
        w.track(ID, None).unwrap();
        w.add(ID, 0, 100);
        w.add(ID, 200, 210);
        let other = ChunkId::new(8, 0);
        w.track(other, None).unwrap();
        w.add(other, 0, 5);
        w.sync().unwrap();
        drop(w);
        // A crash in the middle of an append leaves a torn line.
        let mut text = std::fs::read_to_string(&list).unwrap();
        text.push_str("a 7 2 100");
        std::fs::write(&list, text).unwrap();

        let mut w = Rewritten::open(Some(dir.path())).unwrap();
        assert!(w.covers(ID, 0, 100) && !w.covers(ID, 0, 150) && w.covers(ID, 200, 210));
        assert!(w.made_earlier(ID) && w.made_earlier(other));
        w.found(ID, true);
        assert!(
            !w.made_earlier(ID) && w.covers(ID, 0, 100),
            "its file holds it"
        );
        w.found(other, false);
        assert!(!w.tracks(other), "gone since: made anew at its next write");
        w.forget_file(7);
        drop(w);
        let w = Rewritten::open(Some(dir.path())).unwrap();
        assert!(!w.tracks(ID) && !w.tracks(other));
        assert!(!list.exists(), "nothing known, no file");

        // Made anew after a making the log still shows (its rewrite failed): the new
        // making starts from nothing known.
        std::fs::write(&list, "t 7 2\na 7 2 0 100\nt 7 2\na 7 2 200 210\n").unwrap();
        let w = Rewritten::open(Some(dir.path())).unwrap();
        assert!(!w.covers(ID, 0, 100) && w.covers(ID, 200, 210));
        assert_eq!(
            std::fs::read_to_string(&list).unwrap(),
            "t 7 2\nl 7 2 210\nk 7 2 200 210\n",
            "rewritten whole at open"
        );
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
