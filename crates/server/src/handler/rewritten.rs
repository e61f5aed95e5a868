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
//! set. A disk store logs them (`REMADE_FILE`) for its later lives, in which such a
//! chunk's file vouches for its end only where that is known to be a hole: a tiered
//! store's file of a chunk made anew after a crash held a 4 KiB rewrite, and after a
//! clean restart the lost rest of the chunk read as a hole of zeros.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use benchfs_store::ChunkId;

/// The file in a disk store's data directory that logs what [`Rewritten`] knows (see
/// [`Rewritten::open`]).
pub(super) const REMADE_FILE: &str = "remade-chunks";

/// Log lines past which the log is written again whole, beyond a line per known range.
const LOG_SLACK_LINES: usize = 4096;

/// What is known of each chunk a store made after it began, for files older than the
/// store: sorted, disjoint, not touching `[start, end)` byte ranges, written since the
/// store began or holes the file holds for sure (past a cut this server took since, or
/// vouched for by a repair).
#[derive(Debug, Default)]
pub(super) struct Rewritten {
    chunks: BTreeMap<ChunkId, Vec<(u64, u64)>>,
    /// Chunks an earlier life of the store made anew that this life has not written to
    /// yet: their file may be gone since (a tiered store's memory tier lost them).
    earlier: BTreeSet<ChunkId>,
    /// Where a disk store logs it for its later lives.
    log: Option<Log>,
}

/// One change to what is known, as [`REMADE_FILE`] holds it: a line each, ended by a
/// newline (a line without one was torn by a crash, and its change is the unknown
/// side): `t <file> <index>` (made anew, nothing known: logged and synced before the
/// write that makes the chunk, so that any chunk file a crash or power loss leaves is in
/// the log, and after anything an earlier making left there), `a <file> <index> <start>
/// <end>` (known: written, logged once the store took the write, or a hole) and
/// `f <file> <index>` (no longer kept: removed, or all known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Track(ChunkId),
    Know(ChunkId, u64, u64),
    Forget(ChunkId),
}

impl Change {
    fn line(self) -> String {
        match self {
            Change::Track(id) => format!("t {} {}\n", id.file_id, id.index),
            Change::Know(id, s, e) => format!("a {} {} {s} {e}\n", id.file_id, id.index),
            Change::Forget(id) => format!("f {} {}\n", id.file_id, id.index),
        }
    }

    fn parse(line: &[u8]) -> Option<Change> {
        let mut fields = std::str::from_utf8(line).ok()?.split(' ');
        let kind = fields.next()?;
        let numbers: Vec<u64> = fields.map(|f| f.parse().ok()).collect::<Option<_>>()?;
        let id = |n: &[u64]| ChunkId::new(n[0], n[1]);
        match (kind, numbers.len()) {
            ("t", 2) => Some(Change::Track(id(&numbers))),
            ("a", 4) => Some(Change::Know(id(&numbers), numbers[2], numbers[3])),
            ("f", 2) => Some(Change::Forget(id(&numbers))),
            _ => None,
        }
    }
}

/// [`REMADE_FILE`], open to append; no file while nothing is known.
#[derive(Debug)]
struct Log {
    path: PathBuf,
    file: Option<File>,
    /// An append failed part way: the next one starts on a line of its own.
    torn: bool,
    lines: usize,
}

impl Log {
    /// Appends `changes` in one write; synced when `sync` (a making: its chunk must not
    /// reach the disk before its line).
    fn append(&mut self, changes: &[Change], sync: bool) -> io::Result<()> {
        if self.file.is_none() {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            sync_dir(&self.path)?;
            self.file = Some(file);
        }
        let file = self.file.as_mut().expect("opened above");
        let mut text = String::from(if self.torn { "\n" } else { "" });
        for change in changes {
            text.push_str(&change.line());
        }
        let written = file.write_all(text.as_bytes());
        self.torn = written.is_err();
        written?;
        self.lines += changes.len();
        if sync {
            file.sync_data()?;
        }
        Ok(())
    }

    /// Writes `chunks` whole and durably (through a rename), or removes the file when
    /// there are none.
    fn rewrite(&mut self, chunks: &BTreeMap<ChunkId, Vec<(u64, u64)>>) -> io::Result<()> {
        self.file = None;
        self.torn = false;
        self.lines = 0;
        if chunks.is_empty() {
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let mut text = String::new();
        for (&id, known) in chunks {
            text.push_str(&Change::Track(id).line());
            for &(s, e) in known {
                text.push_str(&Change::Know(id, s, e).line());
            }
            self.lines += 1 + known.len();
        }
        let tmp = self.path.with_extension("tmp");
        let mut file = File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        sync_dir(&self.path)
    }

    fn sync(&self) -> io::Result<()> {
        self.file.as_ref().map_or(Ok(()), File::sync_data)
    }
}

/// Makes the entry of `path` in its directory durable.
fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

impl Rewritten {
    /// For a disk store in `data_dir` (`None` for memory, which keeps nothing across
    /// lives): what its earlier lives knew, from [`REMADE_FILE`]. The file of such a chunk
    /// holds what was written by the time its change was logged or later (a tiered store
    /// writes a chunk that reached its file there before acknowledging a change), never
    /// less, so what the log knows holds for it; one gone since is made anew at its next
    /// write. A log that cannot be written again is appended to as it is.
    pub(super) fn open(data_dir: Option<&Path>) -> io::Result<Rewritten> {
        let Some(data_dir) = data_dir else {
            return Ok(Rewritten::default());
        };
        let path = data_dir.join(REMADE_FILE);
        let mut replayed = Rewritten::default();
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut lines = text.split(|&b| b == b'\n').peekable();
        while let Some(line) = lines.next() {
            // The last piece ends without a newline: torn, or empty.
            let ended = lines.peek().is_some();
            match Change::parse(line).filter(|_| ended) {
                Some(change) => replayed.apply(change),
                None if line.is_empty() => {}
                None => tracing::warn!(
                    path = %path.display(),
                    line = %String::from_utf8_lossy(line),
                    "a torn line of the log of chunks made anew skipped"
                ),
            }
        }
        let mut log = Log {
            path,
            file: None,
            torn: text.last().is_some_and(|&b| b != b'\n'),
            lines: text.iter().filter(|&&b| b == b'\n').count(),
        };
        if let Err(e) = log.rewrite(&replayed.chunks) {
            tracing::warn!(path = %log.path.display(), error = %e, "the log of chunks made anew not written again; appended to as it is");
            log.torn = true;
        }
        Ok(Rewritten {
            earlier: replayed.chunks.keys().copied().collect(),
            chunks: replayed.chunks,
            log: Some(log),
        })
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::Track(id) => {
                self.chunks.insert(id, Vec::new());
            }
            Change::Know(id, start, end) => self.know(id, start, end),
            Change::Forget(id) => {
                self.chunks.remove(&id);
            }
        }
    }

    /// Applies `changes` and logs them; changes the log could not take are still applied
    /// (only a making must reach the log first: see [`Rewritten::track`]), and a later
    /// life knows less.
    fn change(&mut self, changes: &[Change]) {
        for &change in changes {
            self.apply(change);
        }
        if let Some(log) = &mut self.log {
            if let Err(e) = log.append(changes, false) {
                tracing::warn!(path = %log.path.display(), error = %e, "a change to the chunks made anew not logged: a later life knows less of them");
            }
        }
        self.compact();
    }

    /// Writes the log again whole once it holds many more lines than that would.
    fn compact(&mut self) {
        let Some(log) = &mut self.log else {
            return;
        };
        let needed: usize = self.chunks.values().map(|k| 1 + k.len()).sum();
        if log.lines > 2 * needed + LOG_SLACK_LINES {
            if let Err(e) = log.rewrite(&self.chunks) {
                tracing::warn!(path = %log.path.display(), error = %e, "the log of chunks made anew not written again");
            }
        }
    }

    /// Keeps chunk `id`, which a write is about to make, with no byte known yet: past
    /// `last_cut` (chunk index, bytes into it), a cut of its file this store took, the
    /// file holds nothing but what is written since. Fails, keeping nothing, when a disk
    /// store cannot log it durably (its write must not go ahead: a later life would trust
    /// the chunk's gaps).
    pub(super) fn track(&mut self, id: ChunkId, last_cut: Option<(u64, u64)>) -> io::Result<()> {
        if self.chunks.contains_key(&id) {
            return Ok(());
        }
        let known = match last_cut {
            Some((index, _)) if id.index > index => Some((0, u64::MAX)),
            Some((index, len)) if id.index == index => Some((len, u64::MAX)),
            _ => None,
        };
        let mut changes = vec![Change::Track(id)];
        changes.extend(known.map(|(s, e)| Change::Know(id, s, e)));
        if let Some(log) = &mut self.log {
            log.append(&changes, true)?;
        }
        for change in changes {
            self.apply(change);
        }
        Ok(())
    }

    /// Whether chunk `id` was made by an earlier life of the store and not written in
    /// this one.
    pub(super) fn made_earlier(&self, id: ChunkId) -> bool {
        self.earlier.contains(&id)
    }

    /// Chunk `id`, made by an earlier life, `exists` in the store now: what that life
    /// knew of it holds, or it is gone (and made anew like any other).
    pub(super) fn found(&mut self, id: ChunkId, exists: bool) {
        self.earlier.remove(&id);
        if !exists {
            self.forget(&[id]);
        }
    }

    /// Makes the log durable: before a store's sync, so that no chunk file made anew is
    /// durable without what the log says of it.
    pub(super) fn sync(&self) -> io::Result<()> {
        self.log.as_ref().map_or(Ok(()), Log::sync)
    }

    /// Bytes `start..end` of chunk `id`, which is kept, are the file's for sure: written,
    /// or a hole. A chunk known whole (to `whole_len`, the largest a chunk may be) is no
    /// longer kept: every byte of it is the file's, its end a hole.
    pub(super) fn add(&mut self, id: ChunkId, start: u64, end: u64, whole_len: u64) {
        if start >= end || !self.chunks.contains_key(&id) {
            return;
        }
        self.change(&[Change::Know(id, start, end)]);
        if self.covers(id, 0, whole_len) {
            self.forget(&[id]);
        }
    }

    fn know(&mut self, id: ChunkId, start: u64, end: u64) {
        let ranges = self.chunks.entry(id).or_default();
        if start >= end {
            return;
        }
        // The ranges that touch or overlap the new one merge with it.
        let first = ranges.partition_point(|&(_, e)| e < start);
        let last = ranges.partition_point(|&(s, _)| s <= end);
        let merged = ranges[first..last]
            .iter()
            .fold((start, end), |(s, e), &(rs, re)| (s.min(rs), e.max(re)));
        ranges.splice(first..last, [merged]);
    }

    /// Whether bytes `start..end` of chunk `id` are all known; `true` for a chunk not
    /// kept here. Ask it of the bytes a read found, not of those it asked for: past them
    /// the read is short, and the client judges the hole.
    pub(super) fn covers(&self, id: ChunkId, start: u64, end: u64) -> bool {
        let Some(known) = self.chunks.get(&id) else {
            return true;
        };
        if start >= end {
            return true;
        }
        let i = known.partition_point(|&(_, e)| e <= start);
        known.get(i).is_some_and(|&(s, e)| s <= start && end <= e)
    }

    /// Whether chunk `id` is kept here (made anew in this life or an earlier one).
    pub(super) fn tracks(&self, id: ChunkId) -> bool {
        self.chunks.contains_key(&id)
    }

    /// Chunk `id` was cut to `len` bytes (removed at 0): past them the file holds a hole.
    pub(super) fn cut(&mut self, id: ChunkId, len: u64) {
        if len == 0 {
            self.forget(&[id]);
            return;
        }
        let Some(known) = self.chunks.get(&id) else {
            return;
        };
        // Made anew with what is known below the cut, and all past it.
        let mut changes = vec![Change::Track(id)];
        changes.extend(
            known
                .iter()
                .filter(|&&(s, _)| s < len)
                .map(|&(s, e)| Change::Know(id, s, e.min(len))),
        );
        changes.push(Change::Know(id, len, u64::MAX));
        self.change(&changes);
    }

    /// The chunks of file `file_id` were removed.
    pub(super) fn forget_file(&mut self, file_id: u64) {
        let range = ChunkId::new(file_id, 0)..=ChunkId::new(file_id, u64::MAX);
        let ids: Vec<ChunkId> = self.chunks.range(range).map(|(id, _)| *id).collect();
        self.forget(&ids);
    }

    fn forget(&mut self, ids: &[ChunkId]) {
        let ids: Vec<ChunkId> = ids
            .iter()
            .copied()
            .filter(|id| self.chunks.contains_key(id))
            .collect();
        for id in &ids {
            self.earlier.remove(id);
        }
        if !ids.is_empty() {
            let changes: Vec<Change> = ids.into_iter().map(Change::Forget).collect();
            self.change(&changes);
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
    /// The largest a chunk may be.
    const WHOLE: u64 = 4096;

    fn tracked(ids: &[ChunkId]) -> Rewritten {
        let mut w = Rewritten::default();
        for &id in ids {
            w.track(id, None).unwrap();
        }
        w
    }

    #[test]
    fn a_gap_between_writes_is_not_covered_until_written() {
        let mut w = tracked(&[ID]);
        assert!(
            w.covers(ChunkId::new(1, 1), 0, 100),
            "a chunk not kept is not asked about"
        );
        w.add(ID, 200, 210, WHOLE);
        assert!(!w.covers(ID, 0, 10));
        assert!(!w.covers(ID, 150, 205));
        assert!(w.covers(ID, 200, 210));
        assert!(
            !w.covers(ID, 205, 300),
            "asked of the bytes a read found, past the end too"
        );
        w.add(ID, 0, 100, WHOLE);
        assert!(w.covers(ID, 0, 100) && !w.covers(ID, 0, 101));
        w.add(ID, 100, 200, WHOLE);
        assert_eq!(w.chunks[&ID], vec![(0, 210)], "touching ranges merge");
        w.add(ID, 210, WHOLE, WHOLE);
        assert!(!w.tracks(ID), "known whole: no longer kept");
        assert!(w.covers(ID, 0, WHOLE));
        w.add(ChunkId::new(1, 1), 0, 1, WHOLE);
        assert!(
            !w.tracks(ChunkId::new(1, 1)),
            "a write to a chunk not kept keeps nothing"
        );
    }

    #[test]
    fn writes_in_any_order_leave_the_same_ranges() {
        let writes = [(0, 10), (30, 40), (5, 35), (50, 60), (60, 61), (45, 46)];
        let mut forward = tracked(&[ID]);
        let mut backward = tracked(&[ID]);
        for &(s, e) in &writes {
            forward.add(ID, s, e, WHOLE);
        }
        for &(s, e) in writes.iter().rev() {
            backward.add(ID, s, e, WHOLE);
        }
        assert_eq!(forward.chunks[&ID], vec![(0, 40), (45, 46), (50, 61)]);
        assert_eq!(forward.chunks, backward.chunks);
    }

    #[test]
    fn a_chunk_made_past_a_cut_this_store_took_holds_holes_not_lost_bytes() {
        let mut w = Rewritten::default();
        let cut = Some((2, 100));
        let (before, at, past) = (ChunkId::new(7, 1), ID, ChunkId::new(7, 3));
        for id in [before, at, past] {
            w.track(id, cut).unwrap();
            w.add(id, 200, 210, WHOLE);
        }
        assert!(!w.covers(before, 0, 210), "before the cut: unknown");
        assert!(!w.covers(at, 0, 210) && w.covers(at, 100, 210));
        assert!(w.covers(past, 0, 210));
        w.track(ChunkId::new(7, 4), None).unwrap();
        w.add(ChunkId::new(7, 4), 200, 210, WHOLE);
        assert!(!w.covers(ChunkId::new(7, 4), 0, 210), "no cut: unknown");
    }

    #[test]
    fn a_cut_or_removal_forgets_the_bytes_it_dropped() {
        let mut w = tracked(&[ID]);
        w.add(ID, 0, 10, WHOLE);
        w.add(ID, 20, 30, WHOLE);
        w.cut(ID, 25);
        assert_eq!(w.chunks[&ID], vec![(0, 10), (20, u64::MAX)]);
        w.cut(ID, 15);
        assert_eq!(w.chunks[&ID], vec![(0, 10), (15, u64::MAX)]);
        assert!(w.covers(ID, 0, 10) && !w.covers(ID, 0, 15));
        w.add(ID, 100, 110, WHOLE);
        assert!(w.covers(ID, 15, 110), "past the cut: a hole, then written");
        let gap = ChunkId::new(7, 1);
        w.track(gap, None).unwrap();
        w.add(gap, 200, 210, WHOLE);
        w.cut(gap, 100);
        assert!(
            !w.covers(gap, 50, 60),
            "a cut inside a gap leaves the gap's start"
        );
        w.cut(ID, 0);
        assert!(!w.tracks(ID));
        let other = ChunkId::new(8, 0);
        let mut w = tracked(&[ID, ChunkId::new(7, 9), other]);
        w.forget_file(7);
        assert!(!w.tracks(ID) && !w.tracks(ChunkId::new(7, 9)) && w.tracks(other));
    }

    #[test]
    fn a_later_life_knows_what_an_earlier_one_logged_and_no_more() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join(REMADE_FILE);
        let mut w = Rewritten::open(Some(dir.path())).unwrap();
        assert!(!list.exists(), "nothing known, no file");
        w.track(ID, None).unwrap();
        w.add(ID, 0, 100, WHOLE);
        w.add(ID, 200, 210, WHOLE);
        let other = ChunkId::new(8, 0);
        w.track(other, None).unwrap();
        w.add(other, 0, 5, WHOLE);
        w.sync().unwrap();
        drop(w);
        // A crash in the middle of an append leaves a line without its newline.
        let mut text = std::fs::read(&list).unwrap();
        text.extend_from_slice(b"a 7 2 100 200");
        std::fs::write(&list, text).unwrap();

        let mut w = Rewritten::open(Some(dir.path())).unwrap();
        assert!(w.covers(ID, 0, 100) && w.covers(ID, 200, 210));
        assert!(!w.covers(ID, 0, 150), "the torn line is not taken");
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

        // Made anew after a making the log still shows: the new one starts from nothing
        // known. Lines that are not the log's (torn into each other) are skipped.
        std::fs::write(
            &list,
            b"t 7 2\na 7 2 0 100\nt 7 2\na 7 2 200 210\nt 7 2a 7 2 0 1\n\xff\n",
        )
        .unwrap();
        let w = Rewritten::open(Some(dir.path())).unwrap();
        assert!(!w.covers(ID, 0, 100) && w.covers(ID, 200, 210));
        assert_eq!(
            std::fs::read_to_string(&list).unwrap(),
            "t 7 2\na 7 2 200 210\n",
            "written again whole at open"
        );
    }

    #[test]
    fn the_log_is_written_again_once_it_holds_many_more_lines_than_it_needs() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join(REMADE_FILE);
        let mut w = Rewritten::open(Some(dir.path())).unwrap();
        w.track(ID, None).unwrap();
        for i in 0..(3 * LOG_SLACK_LINES as u64) {
            w.add(ID, 2 * i, 2 * i + 1, u64::MAX);
        }
        // Each write a range of its own: the log needs them all.
        let needed = 1 + 3 * LOG_SLACK_LINES;
        assert!(std::fs::read_to_string(&list).unwrap().lines().count() >= needed);
        for i in 0..(3 * LOG_SLACK_LINES as u64) {
            w.add(ID, 2 * i + 1, 2 * i + 2, u64::MAX);
        }
        let lines = std::fs::read_to_string(&list).unwrap().lines().count();
        assert!(lines < 3 * LOG_SLACK_LINES, "{lines} lines for one range");
        drop(w);
        let w = Rewritten::open(Some(dir.path())).unwrap();
        assert!(w.covers(ID, 0, 6 * LOG_SLACK_LINES as u64));
    }
}
