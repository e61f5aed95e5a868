//! The metadata table one server keeps for the paths the placement ring gives it.
//!
//! There is no metadata server: the record of `/a/b` lives on the server that owns
//! `hash("/a/b")`, and a directory's entries are spread over every server. A
//! [`MetadataTable`] is one server's share. It checks only what it can see locally
//! (existence and kind of the record itself); the client checks the parent and, for
//! `rmdir`, emptiness across all servers (see ARCHITECTURE.md for what that leaves open).

mod inline;
mod recent;

pub use recent::{settle_window, RecentChanges};

use std::collections::{BTreeMap, VecDeque};

// foldhash, not std's SipHash: the tables are probed a few times per request, and hashing
// paths with SipHash was a twentieth of a create's handling.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::time::Duration;

use benchfs_proto::limits;
use benchfs_proto::Status;

use benchfs_proto::path;

use benchfs_proto::meta::{cut_gen_older, next_cut_gen};
pub use benchfs_proto::meta::{now_ns, EntryKind, FileMetadata, Owner, SizeUpdate};
use benchfs_proto::ops::{set_attr, SetAttrRequest};

/// Most deletions a server remembers for peers' orphan sweeps (16 bytes each, twice).
pub const TOMBSTONES_MAX: usize = 1 << 20;

/// Most stale marks a server keeps ([`MetadataTable::mark_stale_below`]); past it, every
/// name counts as marked.
pub const STALE_MARKS_MAX: usize = 1 << 16;

/// Most files a server keeps sealed ([`MetadataTable::seal`]).
pub const SEALS_MAX: usize = 1 << 20;

/// How a file is sealed against records of it ([`MetadataTable::seal`]). A sealer seals
/// tentatively on every server first, lifting the seals if one still names the file, and
/// then for good before it removes the chunks: a tentative seal lifted by a concurrent
/// sealer cannot let a record back after the chunks are gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Seal {
    /// Until the sealer lifts it; in memory only.
    Tentative,
    /// For good, journaled: every server sealed the file, and its chunks may go.
    ForGood,
}

/// One server's share of the namespace.
///
/// **Invariant:** the bytes of an inline record (`meta.inline`), `meta.size` of them, are in
/// `inline_bytes` under its path, unless it holds none (an empty file need have no entry,
/// and a create makes none: mdtest's creates would each cost a probe of a large table); no
/// other record has an entry there. Whole records come and go through `put`,
/// [`Self::delete`] and [`Self::move_out`], which keep the two maps in step; the bytes
/// change only in `metadata/inline.rs`, with the size.
#[derive(Debug)]
pub struct MetadataTable {
    /// Keyed by normalised path; ordered so a directory's local children are one range.
    entries: BTreeMap<String, FileMetadata>,
    /// The bytes of the inline records, by normalised path. A second map rather than a
    /// field of every entry: most records hold none, and listings never carry them.
    inline_bytes: HashMap<String, Vec<u8>>,
    /// Inline records whose bytes are being moved to chunk 0 (in memory only: a restart
    /// ends every move, and the mover's drop then fails and it starts again).
    seals: HashMap<String, inline::Seal>,
    /// Most bytes a file's record holds here (`storage.inline_bytes`; 0: none).
    inline_limit: u64,
    /// How long a seal holds off writes to the bytes it froze.
    seal_lease: Duration,
    /// How many records hold each inode number (two only while a rename is under way), so
    /// a peer's orphan sweep can ask "is this file still named?" at O(1) per number.
    file_ids: HashMap<u64, u32>,
    /// Inode numbers whose last record this server deleted, oldest first, at most
    /// [`TOMBSTONES_MAX`]: a peer's orphan sweep removes a file's chunks only on such
    /// positive evidence, never because a record is merely absent (its server may be down).
    tombstones: VecDeque<u64>,
    /// The same numbers, for lookups.
    tombstone_set: HashSet<u64>,
    /// Files sealed by an orphan sweep or an unlink about to remove their chunks
    /// ([`MetadataTable::seal`]): no record of these is stored again, so a late undo or
    /// copy cannot bring back a name for a file whose chunks are gone. Not tombstones: a
    /// seal says nothing about where the file was deleted.
    /// Each with the count of seals made before it, to find it in `seal_order`.
    sealed: HashMap<u64, (Seal, u64)>,
    /// Seals made, oldest first, at most [`SEALS_MAX`]: the number and its count (a lifted
    /// seal's entry stays until it comes first, and is then skipped).
    seal_order: VecDeque<(u64, u64)>,
    /// Seals made so far.
    seals_made: u64,
    /// Paths a record came to or left lately, or a call tried to (every create, insert,
    /// delete and move notes its path first, whatever its outcome), which the repair pass
    /// leaves alone.
    recent: RecentChanges,
    /// High 32 bits of every inode number this server hands out.
    id_prefix: u64,
    /// Low 32 bits of the next inode number.
    next_id: u64,
    chunk_size: u64,
    /// Directory names below which records nothing shows may lie, at most
    /// [`STALE_MARKS_MAX`] (see [`MetadataTable::may_hold_stale_below`]). In memory only.
    stale_marks: HashSet<String>,
    /// Every name counts as marked: this life began without the marks of the last one, or
    /// more were made than are kept.
    stale_everywhere: bool,
    /// Names a directory was renamed away from, at most [`SEALED_NAMES_MAX`]: a create
    /// below one is refused (see [`Self::seal_name`]).
    sealed_names: HashSet<String>,
    /// The same names, oldest first (one whose seal was lifted may linger here).
    sealed_order: VecDeque<String>,
}

/// Most names [`MetadataTable::seal_name`] keeps; the oldest goes first (by then no
/// client still sees the directory that was there).
pub const SEALED_NAMES_MAX: usize = 4096;

/// Stamps a record whose content changed now (a write, a truncation, an entry made or
/// removed in a directory): a content change is a status change too, so both its
/// modification and change times move.
fn content_changed(meta: &mut FileMetadata) {
    meta.mtime_ns = now_ns();
    meta.ctime_ns = meta.mtime_ns;
}

impl MetadataTable {
    /// An empty table. `inode_tag` (unique per server and per life of its store, see
    /// [`inode_tag`](benchfs_proto::placement::inode_tag)) makes this server's inode
    /// numbers unique in the cluster; `chunk_size` is given to new files.
    pub fn new(inode_tag: u32, chunk_size: u64) -> Self {
        MetadataTable {
            entries: BTreeMap::new(),
            inline_bytes: HashMap::new(),
            seals: HashMap::new(),
            inline_limit: 0,
            seal_lease: Duration::ZERO,
            file_ids: HashMap::new(),
            tombstones: VecDeque::new(),
            tombstone_set: HashSet::new(),
            sealed: HashMap::new(),
            seal_order: VecDeque::new(),
            seals_made: 0,
            recent: RecentChanges::new(Duration::ZERO),
            id_prefix: u64::from(inode_tag) << 32,
            // The root's inode number is never a record's.
            next_id: if inode_tag == 0 {
                benchfs_proto::meta::ROOT_FILE_ID + 1
            } else {
                1
            },
            chunk_size,
            stale_marks: HashSet::new(),
            sealed_names: HashSet::new(),
            sealed_order: VecDeque::new(),
            stale_everywhere: false,
        }
    }

    /// The next inode number this server would hand out, as a high-water mark: once all
    /// are taken it is the next tag's first number (an addition, so the counter's carry
    /// leaves the mark past this tag instead of back at its start), or `u64::MAX` for the
    /// last tag.
    pub fn next_file_id(&self) -> u64 {
        self.id_prefix.saturating_add(self.next_id)
    }

    /// Makes sure no inode number at or below `file_id` is handed out again (used when
    /// replaying a journal, which may hold ids of files since deleted).
    pub fn reserve_file_id(&mut self, file_id: u64) {
        if file_id & !0xffff_ffff == self.id_prefix {
            self.next_id = self.next_id.max((file_id & 0xffff_ffff) + 1);
        }
    }

    /// Makes sure no inode number below the high-water mark `mark` (a
    /// [`next_file_id`](Self::next_file_id) of before) is handed out again; `u64::MAX`
    /// covers the last tag's every number.
    pub fn reserve_below(&mut self, mark: u64) {
        self.reserve_file_id(if mark == u64::MAX {
            mark
        } else {
            mark.saturating_sub(1)
        });
    }

    /// An inode number this server never hands out: its own prefix with a counter of 0
    /// (counters start at 1, see [`MetadataTable::new`]), and every other server's numbers
    /// carry another prefix. A store probe writes its scratch data under it.
    pub fn scratch_file_id(&self) -> u64 {
        self.id_prefix
    }

    /// Number of records held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn allocate_id(&mut self) -> Result<u64, Status> {
        if self.next_id > u64::from(u32::MAX) {
            return Err(Status::NoSpace);
        }
        let id = self.id_prefix | self.next_id;
        self.next_id += 1;
        Ok(id)
    }

    /// The record of `path`.
    pub fn lookup(&self, path: &str) -> Result<FileMetadata, Status> {
        let path = path::normalize(path)?;
        self.entries.get(&path).copied().ok_or(Status::NotFound)
    }

    fn create(
        &mut self,
        path: &str,
        kind: EntryKind,
        mode: u32,
        chunk_size: u64,
        owner: Owner,
    ) -> Result<FileMetadata, Status> {
        let path = path::normalize(path)?;
        self.recent.touch(&path);
        if path == "/" || self.entries.contains_key(&path) {
            return Err(Status::Exists);
        }
        self.check_unsealed(&path)?;
        let meta = self.new_record(kind, mode, chunk_size, owner)?;
        self.put(path, meta, Vec::new());
        Ok(meta)
    }

    /// A new empty record with a new inode number, made now.
    fn new_record(
        &mut self,
        kind: EntryKind,
        mode: u32,
        chunk_size: u64,
        owner: Owner,
    ) -> Result<FileMetadata, Status> {
        let now = now_ns();
        Ok(FileMetadata {
            file_id: self.allocate_id()?,
            kind,
            size: 0,
            mode: mode & 0o7777,
            uid: owner.uid,
            gid: owner.gid,
            chunk_size,
            mtime_ns: now,
            ctime_ns: now,
            atime_ns: now,
            birth_ns: now,
            inline: false,
            cut_gen: 0,
        })
    }

    /// The chunk size a new file asks for: 0 is the table's (the servers' configured
    /// one); any other must be a power of two from the smallest chunk size up to that one,
    /// the largest the chunk stores hold.
    fn file_chunk_size(&self, chunk_size: u64) -> Result<u64, Status> {
        match chunk_size {
            0 => Ok(self.chunk_size),
            c if limits::is_chunk_size(c, self.chunk_size) => Ok(c),
            _ => Err(Status::InvalidArgument),
        }
    }

    /// Whether a record holds inode number `file_id`.
    pub fn has_file(&self, file_id: u64) -> bool {
        self.file_ids.contains_key(&file_id)
    }

    /// Whether this server deleted the last record of `file_id` (and remembers it).
    pub fn is_deleted(&self, file_id: u64) -> bool {
        self.tombstone_set.contains(&file_id)
    }

    /// The remembered deletions, oldest first (for the journal's snapshot).
    pub fn tombstones(&self) -> impl Iterator<Item = u64> + '_ {
        self.tombstones.iter().copied()
    }

    /// Remembers that `file_id` was deleted, forgetting the oldest deletion past the bound.
    pub fn add_tombstone(&mut self, file_id: u64) {
        if !self.tombstone_set.insert(file_id) {
            return;
        }
        self.tombstones.push_back(file_id);
        if self.tombstones.len() > TOMBSTONES_MAX {
            if let Some(old) = self.tombstones.pop_front() {
                self.tombstone_set.remove(&old);
            }
        }
    }

    /// Forgets that `file_id` was deleted here.
    fn lift_tombstone(&mut self, file_id: u64) {
        if self.tombstone_set.remove(&file_id) {
            self.tombstones.retain(|&id| id != file_id);
        }
    }

    /// Seals `file_id` unless a record here names it (then false): the server stores no
    /// record of it again (`insert_record` answers `Stale`). A seal for good outlasts any
    /// tentative one; the oldest seals are forgotten past [`SEALS_MAX`].
    pub fn seal(&mut self, file_id: u64, how: Seal) -> bool {
        if self.has_file(file_id) {
            return false;
        }
        self.reserve_file_id(file_id);
        match self.sealed.get_mut(&file_id) {
            Some((held, _)) => *held = (*held).max(how),
            None => {
                let made = self.seals_made;
                self.seals_made += 1;
                self.sealed.insert(file_id, (how, made));
                self.seal_order.push_back((file_id, made));
                if self.seal_order.len() > SEALS_MAX {
                    if let Some((old, when)) = self.seal_order.pop_front() {
                        if self.sealed.get(&old).is_some_and(|(_, made)| *made == when) {
                            self.sealed.remove(&old);
                        }
                    }
                }
            }
        }
        true
    }

    /// Lifts a tentative seal (another server still names the file); a seal for good
    /// stays, since the file's chunks may be gone.
    pub fn unseal(&mut self, file_id: u64) {
        if self.seal_of(file_id) == Some(Seal::Tentative) {
            self.sealed.remove(&file_id);
        }
    }

    /// The files sealed for good, oldest first (for the journal's snapshot).
    pub fn seals_for_good(&self) -> impl Iterator<Item = u64> + '_ {
        self.seal_order
            .iter()
            .filter(|(id, made)| self.sealed.get(id) == Some(&(Seal::ForGood, *made)))
            .map(|(id, _)| *id)
    }

    /// Puts back how `file_id` was sealed before a seal whose journal record failed.
    pub fn restore_seal(&mut self, file_id: u64, before: Option<Seal>) {
        match (before, self.sealed.get_mut(&file_id)) {
            (Some(how), Some((held, _))) => *held = how,
            (None, _) => {
                self.sealed.remove(&file_id);
            }
            (Some(_), None) => {}
        }
    }

    /// How `file_id` is sealed, if it is (see [`MetadataTable::seal`]).
    pub fn seal_of(&self, file_id: u64) -> Option<Seal> {
        self.sealed.get(&file_id).map(|(how, _)| *how)
    }

    /// Sets how long after a record comes to or leaves a path (or a call tries to) the
    /// repair pass waits before comparing it with other replicas (twice the RPC timeout:
    /// by then every call that was changing it has ended). Every path counts as changed
    /// now: calls made before a restart may still be followed by their undos.
    pub fn set_settle_window(&mut self, window: Duration) {
        self.recent.set_window(window);
    }

    /// Whether no record came to or left `path` (normalised) within the settle window.
    pub fn settled(&mut self, path: &str) -> bool {
        self.recent.settled(path)
    }

    /// Up to `max` records in path order after `after` (from the start when `None`).
    pub fn records_after(&self, after: Option<&str>, max: usize) -> Vec<(String, FileMetadata)> {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.entries
            .range::<str, _>((start, Bound::Unbounded))
            .take(max)
            .map(|(path, meta)| (path.clone(), *meta))
            .collect()
    }

    /// Stores `meta` (and `data`, its bytes if it is inline) under `path`, keeping the inode
    /// index in step and ending any move of the bytes there were. A record of another file
    /// it replaces is a deleted file (a rename over it), even while another name here still
    /// holds that file: that is a rename of it in progress (two renames onto one name at
    /// once), whose next step moves the other name out with no tombstone, and then nothing
    /// would ever free the file's chunks. The sweep frees them only once no server names it.
    fn put(&mut self, path: String, meta: FileMetadata, data: Vec<u8>) {
        debug_assert_eq!(
            data.len() as u64,
            if meta.inline { meta.size } else { 0 },
            "an inline record holds its size in bytes, any other none"
        );
        *self.file_ids.entry(meta.file_id).or_default() += 1;
        // Named again (the undo of a rename put it back): no longer a deleted file here.
        self.lift_tombstone(meta.file_id);
        self.seals.remove(&path);
        self.set_inline_bytes(&path, meta.inline, data);
        if let Some(old) = self.entries.insert(path, meta) {
            // Another file's record, so its count here cannot reach zero unless it differs.
            self.unindex(old.file_id);
            if old.file_id != meta.file_id {
                self.add_tombstone(old.file_id);
            }
        }
    }

    /// Keeps `data` as the bytes of the record at `path` if it is inline and has any.
    fn set_inline_bytes(&mut self, path: &str, inline: bool, data: Vec<u8>) {
        if inline && !data.is_empty() {
            self.inline_bytes.insert(path.to_string(), data);
        } else {
            self.inline_bytes.remove(path);
        }
    }

    /// Drops one record of `file_id` from the index; true if none is left.
    fn unindex(&mut self, file_id: u64) -> bool {
        let Some(count) = self.file_ids.get_mut(&file_id) else {
            return false;
        };
        *count -= 1;
        if *count == 0 {
            self.file_ids.remove(&file_id);
            return true;
        }
        false
    }

    /// Creates a file record; `Exists` if the path has a record already.
    /// Creates a file record. `chunk_size` 0 gives the file the table's chunk size (the
    /// servers' configured one); any other must be a power of two from the smallest
    /// chunk size up to that one, the largest the chunk stores hold, or the call is
    /// `InvalidArgument`.
    pub fn create_file(
        &mut self,
        path: &str,
        mode: u32,
        chunk_size: u64,
        owner: Owner,
    ) -> Result<FileMetadata, Status> {
        let chunk_size = self.file_chunk_size(chunk_size)?;
        self.create(path, EntryKind::File, mode, chunk_size, owner)
    }

    /// Creates a directory record; `Exists` if the path has a record already.
    pub fn create_dir(
        &mut self,
        path: &str,
        mode: u32,
        owner: Owner,
    ) -> Result<FileMetadata, Status> {
        self.create(path, EntryKind::Directory, mode, self.chunk_size, owner)
    }

    /// Creates an empty symbolic link record (mode 0777, as Linux gives every link); the
    /// client then writes the target as its data and grows its size.
    pub fn create_symlink(&mut self, path: &str, owner: Owner) -> Result<FileMetadata, Status> {
        self.create(path, EntryKind::Symlink, 0o777, self.chunk_size, owner)
    }

    /// Sets the attributes `req.set` names, and the change time, of the record `req.path`;
    /// `Stale` if the path names another file.
    pub fn set_attr(&mut self, req: &SetAttrRequest) -> Result<FileMetadata, Status> {
        let path = path::normalize(&req.path)?;
        self.recent.touch(&path);
        let meta = self.entries.get_mut(&path).ok_or(Status::NotFound)?;
        if meta.file_id != req.file_id {
            return Err(Status::Stale);
        }
        if req.set & set_attr::MODE != 0 {
            meta.mode = req.mode & 0o7777;
        }
        if req.set & set_attr::UID != 0 {
            meta.uid = req.uid;
        }
        if req.set & set_attr::GID != 0 {
            meta.gid = req.gid;
        }
        if req.set & set_attr::ATIME != 0 {
            meta.atime_ns = req.atime_ns;
        }
        if req.set & set_attr::MTIME != 0 {
            meta.mtime_ns = req.mtime_ns;
        }
        meta.ctime_ns = req.ctime_ns;
        Ok(*meta)
    }

    /// Moves directory `path`'s modification and change times to now (its entries
    /// changed); `NotDir` for any other record.
    pub fn touch_dir(&mut self, path: &str) -> Result<FileMetadata, Status> {
        let path = path::normalize(path)?;
        // Not a change the replica repair waits out (`recent`): it compares no times, and a
        // directory that keeps getting entries would never settle, so a replica restarted
        // empty would never get it back.
        let meta = self.entries.get_mut(&path).ok_or(Status::NotFound)?;
        if !meta.is_dir() {
            return Err(Status::NotDir);
        }
        content_changed(meta);
        Ok(*meta)
    }

    /// Stores a record as given, with `data`, its bytes if it is inline (a rename's
    /// destination, or a replica): `InvalidArgument` unless an inline record comes with
    /// exactly its size in bytes and any other with none. (Seals are checked by the
    /// server's handler, not here: a journal replays whatever it holds.)
    pub fn insert(
        &mut self,
        path: &str,
        meta: FileMetadata,
        data: &[u8],
        exclusive: bool,
    ) -> Result<(), Status> {
        let path = path::normalize(path)?;
        self.recent.touch(&path);
        if path == "/" || (exclusive && self.entries.contains_key(&path)) {
            return Err(Status::Exists);
        }
        if data.len() as u64 != if meta.inline { meta.size } else { 0 } {
            return Err(Status::InvalidArgument);
        }
        self.put(path, meta, data.to_vec());
        Ok(())
    }

    /// Removes and returns the record of `path`; `expect` says which kind the caller
    /// means (unlink a file, rmdir a directory).
    pub fn delete(
        &mut self,
        path: &str,
        expect: Option<EntryKind>,
    ) -> Result<FileMetadata, Status> {
        let path = path::normalize(path)?;
        // A delete that finds nothing here may be one replica's half of an unlink that
        // is going on elsewhere: the repair must not copy the record back meanwhile.
        self.recent.touch(&path);
        let meta = self.entries.get(&path).ok_or(Status::NotFound)?;
        match (expect, meta.kind) {
            (Some(EntryKind::File), EntryKind::Directory) => return Err(Status::IsDir),
            (Some(EntryKind::Directory), EntryKind::File | EntryKind::Symlink) => {
                return Err(Status::NotDir)
            }
            _ => {}
        }
        let meta = self.entries.remove(&path).ok_or(Status::NotFound)?;
        self.inline_bytes.remove(&path);
        self.seals.remove(&path);
        if self.unindex(meta.file_id) {
            self.add_tombstone(meta.file_id);
        }
        if meta.is_dir() {
            // The rmdir sealed the name on every server: a directory made here again
            // purges below it, which lifts the seal everywhere.
            self.mark_stale_below(&path);
        }
        Ok(meta)
    }

    /// Removes and returns the record of `path` because it moved to another path (a
    /// rename, whose new record was stored first): the file lives on, so no tombstone.
    pub fn move_out(&mut self, path: &str) -> Result<FileMetadata, Status> {
        let path = path::normalize(path)?;
        self.recent.touch(&path);
        let meta = self.entries.remove(&path).ok_or(Status::NotFound)?;
        self.inline_bytes.remove(&path);
        self.seals.remove(&path);
        self.unindex(meta.file_id);
        if meta.is_dir() {
            // Renamed away (or a rename cleared it): the rename's old records below it
            // may outlive it on a server that was down.
            self.mark_stale_below(&path);
        }
        Ok(meta)
    }

    /// Notes that records nothing shows may lie below directory name `dir` (on any
    /// server): a directory record left it, or a rename is about to copy records below it
    /// and may stop before its own record comes. A directory made at a marked name first
    /// removes them (the client's purge); this server is asked only for names it owns.
    pub fn mark_stale_below(&mut self, dir: &str) {
        if self.stale_marks.len() >= STALE_MARKS_MAX {
            self.stale_everywhere = true;
        } else {
            self.stale_marks.insert(dir.to_string());
        }
    }

    /// A purge removed what lay below `dir` on every server (a directory is there again,
    /// so its name is no longer sealed either).
    pub fn clear_stale_below(&mut self, dir: &str) {
        self.stale_marks.remove(dir);
        self.unseal_name(dir);
    }

    /// Refuses creates below `dir`, a name a directory was renamed away from: a client that
    /// still sees the directory there (its cache) would leave records nothing shows.
    pub fn seal_name(&mut self, dir: &str) {
        if !self.sealed_names.insert(dir.to_string()) {
            return;
        }
        self.sealed_order.push_back(dir.to_string());
        while self.sealed_order.len() > SEALED_NAMES_MAX {
            if let Some(oldest) = self.sealed_order.pop_front() {
                self.sealed_names.remove(&oldest);
            }
        }
    }

    /// A directory is at `dir` again: creates below it go through.
    pub fn unseal_name(&mut self, dir: &str) {
        if self.sealed_names.remove(dir) {
            self.sealed_order.retain(|d| d != dir);
        }
    }

    /// `NotFound` if `path` (normalised) lies below a sealed name.
    fn check_unsealed(&self, path: &str) -> Result<(), Status> {
        if self.sealed_names.is_empty() {
            return Ok(());
        }
        let below_sealed = path
            .match_indices('/')
            .skip(1)
            .any(|(at, _)| self.sealed_names.contains(&path[..at]));
        if below_sealed {
            return Err(Status::NotFound);
        }
        Ok(())
    }

    /// Every name counts as marked from now on (a restart lost the marks).
    pub fn assume_stale_everywhere(&mut self) {
        self.stale_everywhere = true;
    }

    /// Whether records nothing shows may lie below directory name `dir`, so a directory
    /// made there must remove them first.
    pub fn may_hold_stale_below(&self, dir: &str) -> bool {
        self.stale_everywhere || self.stale_marks.contains(dir)
    }

    /// Applies a size update to file `file_id` at `path` and returns the new record;
    /// `Stale` if the path names another file. An inline record's bytes are cut or
    /// zero-extended with it; past its limit the update is `NeedsChunks` (the bytes must
    /// move to chunk 0 first), and while they are sealed for that move, `Busy`.
    pub fn update_size(
        &mut self,
        path: &str,
        file_id: u64,
        size: u64,
        how: SizeUpdate,
    ) -> Result<FileMetadata, Status> {
        self.update_size_counted(path, file_id, (size, how), 0)
    }

    /// [`MetadataTable::update_size`]; an exact size moves the record's cut count past its
    /// own and to at least `cut_gen` (0: none), the count the truncating client asks every
    /// replica for. The size it had does not matter: a truncate cuts the chunks past the
    /// size whatever the record said, and a writer whose bytes lay there must learn that
    /// a cut came (it would grow the file back over bytes the cut removed, as zeros).
    /// [`SizeUpdate::AtLeastUncut`] grows the record only while its count is `cut_gen`,
    /// and else moves its time alone.
    pub fn update_size_counted(
        &mut self,
        path: &str,
        file_id: u64,
        (size, how): (u64, SizeUpdate),
        cut_gen: u16,
    ) -> Result<FileMetadata, Status> {
        let path = path::normalize(path)?;
        self.recent.touch(&path);
        let meta = *self.entries.get(&path).ok_or(Status::NotFound)?;
        if meta.is_dir() {
            return Err(Status::IsDir);
        }
        if meta.file_id != file_id {
            return Err(Status::Stale);
        }
        let size = match how {
            SizeUpdate::AtLeast => meta.size.max(size),
            SizeUpdate::AtLeastUncut if meta.cut_gen == cut_gen => meta.size.max(size),
            SizeUpdate::AtLeastUncut => meta.size,
            SizeUpdate::Exact => size,
        };
        if meta.inline && size != meta.size {
            self.resize_inline(&path, &meta, size)?;
        }
        let meta = self.entries.get_mut(&path).ok_or(Status::NotFound)?;
        // A truncate that grows the file, or leaves its size, counts too: it cut what lay
        // past the new end, which a writer that looked before must not grow the file
        // back over.
        if how == SizeUpdate::Exact {
            let next = next_cut_gen(meta.cut_gen);
            meta.cut_gen = match cut_gen != 0 && cut_gen_older(next, cut_gen) {
                true => cut_gen,
                false => next,
            };
        }
        meta.size = size;
        content_changed(meta);
        Ok(*meta)
    }

    /// Claims `len` bytes for an append to file `file_id` at `path`: the size grows to
    /// `max(size, floor) + len`, the end of the claimed range, and the new record is
    /// returned. `NeedsChunks` on an inline record (appends write chunks: its bytes move
    /// to chunk 0 first), `InvalidArgument` past the largest file size, and as
    /// [`MetadataTable::update_size`] otherwise.
    pub fn claim_append(
        &mut self,
        path: &str,
        file_id: u64,
        floor: u64,
        len: u64,
    ) -> Result<FileMetadata, Status> {
        let meta = self.file_record_mut(path, file_id)?;
        if meta.inline {
            return Err(Status::NeedsChunks);
        }
        meta.size = meta
            .size
            .max(floor)
            .checked_add(len)
            .filter(|&end| end <= benchfs_proto::limits::FILE_SIZE_MAX)
            .ok_or(Status::InvalidArgument)?;
        content_changed(meta);
        Ok(*meta)
    }

    /// Undoes a size change of file `file_id` at `path` that failed on another replica:
    /// the record's size and cut count go back to `to`, only while its size, cut count
    /// and change time are `now`, what the change left (else `Stale`: every change moves
    /// the change time, so one since, even a grow that left the size, is never undone).
    /// Its times stay: a time moved forward is no content the replicas must agree on. An
    /// inline record refuses (`Stale`): the bytes a cut dropped from it are gone.
    pub fn restore_size(
        &mut self,
        path: &str,
        file_id: u64,
        now: (u64, u16, u64),
        to: (u64, u16),
    ) -> Result<FileMetadata, Status> {
        let meta = self.file_record_mut(path, file_id)?;
        if meta.inline || (meta.size, meta.cut_gen, meta.ctime_ns) != now {
            return Err(Status::Stale);
        }
        (meta.size, meta.cut_gen) = to;
        Ok(*meta)
    }

    /// The record of file `file_id` at `path`, to change: `NotFound` without one, `IsDir`
    /// for a directory's, `Stale` for another file's.
    fn file_record_mut(&mut self, path: &str, file_id: u64) -> Result<&mut FileMetadata, Status> {
        let path = path::normalize(path)?;
        self.recent.touch(&path);
        let meta = self.entries.get_mut(&path).ok_or(Status::NotFound)?;
        if meta.is_dir() {
            return Err(Status::IsDir);
        }
        if meta.file_id != file_id {
            return Err(Status::Stale);
        }
        Ok(meta)
    }

    /// The names and records of this server's share of `dir`'s entries, in name order,
    /// starting after `after` (for paging), at most `limit` of them.
    pub fn list_children(
        &self,
        dir: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, FileMetadata)>, Status> {
        let dir = path::normalize(dir)?;
        let prefix = if dir == "/" {
            "/".to_string()
        } else {
            format!("{dir}/")
        };
        let start = match after {
            Some(name) => std::ops::Bound::Excluded(format!("{prefix}{name}")),
            None => std::ops::Bound::Included(prefix.clone()),
        };
        let out = self
            .entries
            .range::<String, _>((start, std::ops::Bound::Unbounded))
            .take_while(|(path, _)| path.starts_with(&prefix))
            .filter_map(|(path, meta)| {
                let name = &path[prefix.len()..];
                (!name.is_empty() && !name.contains('/')).then(|| (name.to_string(), *meta))
            })
            .take(limit)
            .collect();
        Ok(out)
    }

    /// The paths below directory `dir` (at any depth) whose records were last changed
    /// before `changed_before_ns`, in path order (each parent before what is below it). The root is refused: below it is
    /// everything.
    pub fn changed_below(&self, dir: &str, changed_before_ns: u64) -> Result<Vec<String>, Status> {
        let dir = path::normalize(dir)?;
        if dir == "/" {
            return Err(Status::InvalidArgument);
        }
        let prefix = format!("{dir}/");
        Ok(self
            .entries
            .range::<String, _>(prefix.clone()..)
            .take_while(|(path, _)| path.starts_with(&prefix))
            .filter(|(_, meta)| meta.ctime_ns.max(meta.mtime_ns) < changed_before_ns)
            .map(|(path, _)| path.clone())
            .collect())
    }

    /// Every record, in path order (for persistence and tests).
    pub fn entries(&self) -> impl Iterator<Item = (&str, &FileMetadata)> {
        self.entries.iter().map(|(p, m)| (p.as_str(), m))
    }

    /// What `path` holds now (the record and an inline record's bytes), to put back with
    /// [`Self::restore`] if the change about to be made cannot be journaled.
    pub fn snapshot(&self, path: &str) -> Option<(FileMetadata, Vec<u8>)> {
        let path = path::normalize(path).ok()?;
        let meta = *self.entries.get(&path)?;
        let data = self.inline_bytes.get(&path).cloned().unwrap_or_default();
        Some((meta, data))
    }

    /// Puts `path` back as [`Self::snapshot`] found it, undoing a change the journal
    /// refused. A record that was not there goes without a tombstone (its file was never
    /// acknowledged); one that another replaced comes back named again.
    pub fn restore(&mut self, path: &str, before: Option<(FileMetadata, Vec<u8>)>) {
        let Ok(path) = path::normalize(path) else {
            return;
        };
        self.seals.remove(&path);
        let Some((meta, data)) = before else {
            if let Some(now) = self.entries.remove(&path) {
                self.inline_bytes.remove(&path);
                self.unindex(now.file_id);
            }
            return;
        };
        self.set_inline_bytes(&path, meta.inline, data);
        let replaced = self.entries.insert(path, meta);
        if replaced.map(|now| now.file_id) != Some(meta.file_id) {
            if let Some(now) = replaced {
                self.unindex(now.file_id);
            }
            *self.file_ids.entry(meta.file_id).or_default() += 1;
            self.lift_tombstone(meta.file_id);
        }
    }

    /// The path of a record of file `file_id`, if one here names it. A scan of the table,
    /// after an O(1) check: it serves a handle whose file was renamed, a rare call.
    pub fn path_of(&self, file_id: u64) -> Option<&str> {
        if !self.file_ids.contains_key(&file_id) {
            return None;
        }
        self.entries
            .iter()
            .find(|(_, meta)| meta.file_id == file_id)
            .map(|(path, _)| path.as_str())
    }

    /// Every record with its bytes (empty unless inline), in path order (for the
    /// journal's snapshot).
    pub fn records(&self) -> impl Iterator<Item = (&str, &FileMetadata, &[u8])> {
        self.entries.iter().map(|(p, m)| {
            // Only a record with bytes is looked up: a probe of a large table is a cache
            // miss, and most records (every empty file) hold none.
            let data = match m.inline && m.size > 0 {
                true => self.inline_bytes.get(p).map_or(&[][..], |d| &d[..]),
                false => &[][..],
            };
            (p.as_str(), m, data)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager() -> MetadataTable {
        MetadataTable::new(7, 4096)
    }

    #[test]
    fn restore_undoes_a_create_an_update_and_an_insert_over_another_file() {
        let mut m = manager();
        let owner = Owner::default();
        // A create undone: gone, with no tombstone (it was never acknowledged).
        let before = m.snapshot("/new");
        let new = m.create_file("/new", 0o644, 0, owner).unwrap();
        m.restore("/new", before);
        assert_eq!(m.lookup("/new"), Err(Status::NotFound));
        assert!(!m.has_file(new.file_id) && !m.is_deleted(new.file_id));
        // A size update undone.
        let f = m.create_file("/f", 0o644, 0, owner).unwrap();
        let before = m.snapshot("/f");
        m.update_size("/f", f.file_id, 4096, SizeUpdate::Exact)
            .unwrap();
        m.restore("/f", before);
        assert_eq!(m.lookup("/f"), Ok(f));
        // An insert over another file undone: that file is named again, not deleted.
        let g = m.create_file("/g", 0o644, 0, owner).unwrap();
        let before = m.snapshot("/f");
        m.insert("/f", g, &[], false).unwrap();
        assert!(m.is_deleted(f.file_id), "the insert replaced /f's file");
        m.restore("/f", before);
        assert_eq!(m.lookup("/f"), Ok(f));
        assert!(m.has_file(f.file_id) && !m.is_deleted(f.file_id));
        assert!(m.has_file(g.file_id), "still named /g");
        assert_eq!(m.path_of(g.file_id), Some("/g"));
        assert_eq!(m.path_of(new.file_id), None);
    }

    #[test]
    fn set_attr_changes_what_it_names_and_refuses_another_file() {
        let mut m = manager();
        let owner = Owner { uid: 10, gid: 20 };
        let f = m.create_file("/f", 0o100644, 0, owner).unwrap();
        assert_eq!((f.mode, f.uid, f.gid), (0o644, 10, 20));
        let mut req = SetAttrRequest {
            path: "/f".into(),
            file_id: f.file_id,
            set: set_attr::MODE | set_attr::MTIME,
            mode: 0o4755,
            uid: 99,
            gid: 99,
            atime_ns: 1,
            mtime_ns: 2,
            ctime_ns: 3,
        };
        let g = m.set_attr(&req).unwrap();
        assert_eq!((g.mode, g.uid, g.gid), (0o4755, 10, 20));
        assert_eq!((g.atime_ns, g.mtime_ns, g.ctime_ns), (f.atime_ns, 2, 3));
        req.file_id += 1;
        assert_eq!(m.set_attr(&req), Err(Status::Stale));
    }

    #[test]
    fn a_symlink_is_unlinked_like_a_file_and_is_no_directory() {
        let mut m = manager();
        let l = m.create_symlink("/l", Owner::default()).unwrap();
        assert_eq!((l.kind, l.mode, l.size), (EntryKind::Symlink, 0o777, 0));
        assert_eq!(
            m.delete("/l", Some(EntryKind::Directory)),
            Err(Status::NotDir)
        );
        assert_eq!(
            m.delete("/l", Some(EntryKind::File)).unwrap().file_id,
            l.file_id
        );
    }

    #[test]
    fn the_root_inode_number_is_never_handed_out() {
        let mut m = MetadataTable::new(0, 4096);
        assert_ne!(
            m.create_file("/a", 0, 0, Owner::default()).unwrap().file_id,
            1
        );
    }

    #[test]
    fn the_inode_index_follows_every_change() {
        let mut m = manager();
        let f = m.create_file("/a", 0o644, 0, Owner::default()).unwrap();
        assert!(m.has_file(f.file_id));
        // A rename: the new name first, then the old one moves out; the file lives on.
        m.insert("/b", f, &[], false).unwrap();
        m.move_out("/a").unwrap();
        assert!(m.has_file(f.file_id) && !m.is_deleted(f.file_id));
        // A rename over a file deletes the file it replaces.
        let g = m.create_file("/c", 0o644, 0, Owner::default()).unwrap();
        m.insert("/b", g, &[], false).unwrap();
        assert!(!m.has_file(f.file_id) && m.is_deleted(f.file_id));
        m.move_out("/c").unwrap();
        assert!(m.has_file(g.file_id), "still named /b");
        m.delete("/b", None).unwrap();
        assert!(!m.has_file(g.file_id) && m.is_deleted(g.file_id));
        // A file named twice here is deleted only with its last name.
        let h = m.create_file("/h", 0o644, 0, Owner::default()).unwrap();
        m.insert("/h2", h, &[], false).unwrap();
        m.delete("/h", None).unwrap();
        assert!(m.has_file(h.file_id) && !m.is_deleted(h.file_id));
    }

    #[test]
    fn a_file_named_again_is_no_longer_deleted() {
        let mut m = manager();
        let x = m.create_file("/x", 0o644, 0, Owner::default()).unwrap();
        let z = m.create_file("/z", 0o644, 0, Owner::default()).unwrap();
        // A rename of /x over /z, undone: /z gets its file back.
        m.insert("/z", x, &[], false).unwrap();
        assert!(m.is_deleted(z.file_id));
        m.insert("/z", z, &[], false).unwrap();
        assert!(!m.is_deleted(z.file_id) && m.has_file(z.file_id));
        assert!(!m.tombstones().any(|id| id == z.file_id));
    }

    #[test]
    fn a_file_two_renames_onto_one_name_displace_is_deleted() {
        let mut m = manager();
        let first = m.create_file("/a1", 0o644, 0, Owner::default()).unwrap();
        let second = m.create_file("/a2", 0o644, 0, Owner::default()).unwrap();
        // Both renames store their record at /t, then both move their old name out.
        m.insert("/t", first, &[], false).unwrap();
        m.insert("/t", second, &[], false).unwrap();
        m.move_out("/a1").unwrap();
        m.move_out("/a2").unwrap();
        assert!(!m.has_file(first.file_id) && m.is_deleted(first.file_id));
        assert!(m.has_file(second.file_id) && !m.is_deleted(second.file_id));
    }

    #[test]
    fn an_exhausted_counter_stays_exhausted_across_a_replay() {
        // Regression, found by the journal fuzz: for an odd tag the last number's high-water
        // mark (`prefix | 1 << 32`) was the prefix itself, which replays to nothing, so
        // the counter started again at 1 and handed out numbers in use.
        for tag in [1u32, 2, u32::MAX] {
            let mut m = MetadataTable::new(tag, 4096);
            m.reserve_file_id(u64::from(tag) << 32 | 0xffff_ffff);
            let mut replayed = MetadataTable::new(tag, 4096);
            replayed.reserve_below(m.next_file_id());
            assert_eq!(
                replayed.create_file("/f", 0, 0, Owner::default()),
                Err(Status::NoSpace),
                "tag {tag}"
            );
        }
    }

    #[test]
    fn the_scratch_file_id_is_never_handed_out() {
        for tag in [0u32, 7, u32::MAX] {
            let mut m = MetadataTable::new(tag, 4096);
            let scratch = m.scratch_file_id();
            assert_eq!(scratch >> 32, u64::from(tag), "within this server's prefix");
            for i in 0..100 {
                let f = m
                    .create_file(&format!("/f{i}"), 0, 0, Owner::default())
                    .unwrap();
                assert_ne!(f.file_id, scratch, "tag {tag}");
            }
            // Not after a replay that reserves numbers either: the counter only grows.
            m.reserve_file_id(scratch);
            let f = m.create_file("/after", 0, 0, Owner::default()).unwrap();
            assert_ne!(f.file_id, scratch);
            // Another server's numbers carry another prefix.
            let other = MetadataTable::new(tag.wrapping_add(1), 4096);
            assert_ne!(other.scratch_file_id() >> 32, scratch >> 32);
        }
    }

    #[test]
    fn seals_hold_until_lifted_unless_for_good_and_are_no_tombstones() {
        let mut m = MetadataTable::new(1, 4096);
        let live = m.create_file("/live", 0o644, 0, Owner::default()).unwrap();
        assert!(
            !m.seal(live.file_id, Seal::ForGood),
            "a named file is not sealed"
        );
        assert_eq!(m.seal_of(live.file_id), None);
        let gone = 1 << 40;
        assert!(m.seal(gone, Seal::Tentative));
        assert_eq!(m.seal_of(gone), Some(Seal::Tentative));
        assert!(!m.is_deleted(gone), "a seal is no evidence of a delete");
        m.unseal(gone);
        assert_eq!(m.seal_of(gone), None);
        // A seal for good is not lifted, not even by a sealer whose tentative seal it
        // replaced.
        assert!(m.seal(gone, Seal::Tentative));
        assert!(m.seal(gone, Seal::ForGood));
        assert!(m.seal(gone, Seal::Tentative));
        m.unseal(gone);
        assert_eq!(m.seal_of(gone), Some(Seal::ForGood));
        assert_eq!(m.seals_for_good().collect::<Vec<_>>(), [gone]);
    }

    #[test]
    fn seals_are_bounded_oldest_first() {
        let mut m = MetadataTable::new(1, 4096);
        for id in 0..SEALS_MAX as u64 + 2 {
            m.seal(id << 33, Seal::ForGood);
        }
        assert_eq!(m.seals_for_good().count(), SEALS_MAX);
        assert_eq!(m.seal_of(0), None);
        assert_eq!(m.seal_of(1 << 33), None);
        assert_eq!(m.seal_of(2 << 33), Some(Seal::ForGood));
    }

    #[test]
    fn tombstones_are_bounded() {
        let mut m = manager();
        for id in 0..(TOMBSTONES_MAX as u64 + 10) {
            m.add_tombstone(id);
        }
        assert_eq!(m.tombstones().count(), TOMBSTONES_MAX);
        assert!(!m.is_deleted(0) && m.is_deleted(10) && m.is_deleted(TOMBSTONES_MAX as u64 + 9));
    }

    #[test]
    fn create_lookup_delete() {
        let mut m = manager();
        let f = m.create_file("/a", 0o644, 0, Owner::default()).unwrap();
        assert_eq!(f.file_id >> 32, 7);
        assert_eq!(m.lookup("//a/").unwrap(), f);
        assert_eq!(
            m.create_file("/a", 0o644, 0, Owner::default()),
            Err(Status::Exists)
        );
        assert_eq!(
            m.create_dir("/a", 0o755, Owner::default()),
            Err(Status::Exists)
        );
        assert_eq!(
            m.create_file("/", 0o644, 0, Owner::default()),
            Err(Status::Exists)
        );
        assert_eq!(
            m.delete("/a", Some(EntryKind::Directory)),
            Err(Status::NotDir)
        );
        assert_eq!(m.delete("/a", Some(EntryKind::File)).unwrap(), f);
        assert_eq!(m.lookup("/a"), Err(Status::NotFound));
        assert_eq!(m.delete("/a", None), Err(Status::NotFound));
        m.create_dir("/d", 0o755, Owner::default()).unwrap();
        assert_eq!(m.delete("/d", Some(EntryKind::File)), Err(Status::IsDir));
    }

    #[test]
    fn a_create_may_choose_its_chunk_size() {
        let mut m = MetadataTable::new(7, 1 << 20);
        let default = m
            .create_file("/default", 0o644, 0, Owner::default())
            .unwrap();
        assert_eq!(default.chunk_size, m.chunk_size);
        let small = m
            .create_file("/small", 0o644, 1 << 16, Owner::default())
            .unwrap();
        assert_eq!(small.chunk_size, 1 << 16);
        // Not a power of two, below the minimum, larger than the servers' stores hold.
        for bad in [3 << 16, limits::CHUNK_SIZE_MIN / 2, 2 << 20] {
            assert_eq!(
                m.create_file("/bad", 0o644, bad, Owner::default()),
                Err(Status::InvalidArgument),
                "chunk size {bad}"
            );
        }
        assert_eq!(m.lookup("/bad"), Err(Status::NotFound));
    }

    #[test]
    fn ids_are_unique() {
        let mut m = manager();
        let a = m.create_file("/a", 0, 0, Owner::default()).unwrap().file_id;
        m.delete("/a", None).unwrap();
        let b = m.create_file("/a", 0, 0, Owner::default()).unwrap().file_id;
        assert_ne!(
            a, b,
            "a recreated file must not reuse the old inode's chunks"
        );
    }

    #[test]
    fn bad_paths_are_refused() {
        let mut m = manager();
        assert_eq!(
            m.create_file("a", 0, 0, Owner::default()),
            Err(Status::InvalidArgument)
        );
        assert_eq!(
            m.create_file("/a/../b", 0, 0, Owner::default()),
            Err(Status::InvalidArgument)
        );
        assert_eq!(m.lookup(""), Err(Status::NotFound));
        assert_eq!(
            m.create_file(&format!("/{}", "n".repeat(300)), 0, 0, Owner::default()),
            Err(Status::NameTooLong)
        );
    }

    #[test]
    fn sizes() {
        let mut m = manager();
        let id = m.create_file("/f", 0, 0, Owner::default()).unwrap().file_id;
        let mut size = |path, file_id, size, how| m.update_size(path, file_id, size, how);
        assert_eq!(size("/f", id, 10, SizeUpdate::AtLeast).unwrap().size, 10);
        assert_eq!(size("/f", id, 5, SizeUpdate::AtLeast).unwrap().size, 10);
        assert_eq!(size("/f", id, 5, SizeUpdate::Exact).unwrap().size, 5);
        assert_eq!(size("/f", id + 1, 7, SizeUpdate::Exact), Err(Status::Stale));
        assert_eq!(
            size("/nope", id, 5, SizeUpdate::Exact),
            Err(Status::NotFound)
        );
        let dir = m.create_dir("/d", 0, Owner::default()).unwrap().file_id;
        assert_eq!(
            m.update_size("/d", dir, 5, SizeUpdate::Exact),
            Err(Status::IsDir)
        );
        assert_eq!(m.lookup("/f").unwrap().size, 5);
    }

    #[test]
    fn a_restore_undoes_a_size_change_only_while_the_record_is_as_it_left_it() {
        let mut m = manager();
        let id = m.create_file("/f", 0, 0, Owner::default()).unwrap().file_id;
        m.update_size("/f", id, 100, SizeUpdate::AtLeast).unwrap();
        let cut = m.update_size("/f", id, 40, SizeUpdate::Exact).unwrap();
        assert_eq!((cut.size, cut.cut_gen), (40, 1));
        let left = |meta: FileMetadata| (meta.size, meta.cut_gen, meta.ctime_ns);
        // An append claimed since: the restore would drop it, so it refuses.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let claimed = m.claim_append("/f", id, 0, 5).unwrap();
        assert_eq!(
            m.restore_size("/f", id, left(cut), (100, 0)),
            Err(Status::Stale)
        );
        // A grow that left the size as it was: another writer's publish, which the
        // replica that missed the claim took, so this one must keep the size too.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let grown = m.update_size("/f", id, 45, SizeUpdate::AtLeast).unwrap();
        assert_eq!(grown.size, 45);
        assert_eq!(
            m.restore_size("/f", id, left(claimed), (40, 1)),
            Err(Status::Stale)
        );
        assert_eq!(
            m.restore_size("/f", id + 1, left(grown), (40, 1)),
            Err(Status::Stale)
        );
        let back = m.restore_size("/f", id, left(grown), (40, 1)).unwrap();
        assert_eq!((back.size, back.cut_gen), (40, 1));
        assert_eq!(
            m.restore_size("/nope", id, left(grown), (40, 1)),
            Err(Status::NotFound)
        );
    }

    #[test]
    fn a_truncate_moves_the_cut_count_past_its_own_and_the_one_asked() {
        let mut m = manager();
        let id = m.create_file("/f", 0, 0, Owner::default()).unwrap().file_id;
        let mut size = |size, how, gen| m.update_size_counted("/f", id, (size, how), gen);
        assert_eq!(
            size(10, SizeUpdate::AtLeast, 0).unwrap().cut_gen,
            0,
            "no cut"
        );
        assert_eq!(
            size(10, SizeUpdate::Exact, 7).unwrap().cut_gen,
            7,
            "same size: the chunks past it were cut"
        );
        assert_eq!(size(4, SizeUpdate::Exact, 0).unwrap().cut_gen, 8);
        // Growing counts too (it cut past the new end), and takes the count asked.
        assert_eq!(
            size(50, SizeUpdate::Exact, 12).unwrap().cut_gen,
            12,
            "grown"
        );
        // A replica behind takes the count asked; one ahead keeps counting its own.
        assert_eq!(size(40, SizeUpdate::Exact, 15).unwrap().cut_gen, 15);
        assert_eq!(size(30, SizeUpdate::Exact, 3).unwrap().cut_gen, 16);
        assert_eq!(m.lookup("/f").unwrap().cut_gen, 16);
    }

    #[test]
    fn a_writer_that_looked_before_a_cut_grows_the_file_only_by_a_plain_update() {
        let mut m = manager();
        let id = m.create_file("/f", 0, 0, Owner::default()).unwrap().file_id;
        let mut size = |size, how, gen| m.update_size_counted("/f", id, (size, how), gen);
        assert_eq!(
            size(8, SizeUpdate::AtLeastUncut, 0).unwrap().size,
            8,
            "uncut"
        );
        assert_eq!(size(4, SizeUpdate::Exact, 0).unwrap().cut_gen, 1);
        let stale = size(20, SizeUpdate::AtLeastUncut, 0).unwrap();
        assert_eq!((stale.size, stale.cut_gen), (4, 1), "the time alone moves");
        assert_eq!(size(20, SizeUpdate::AtLeastUncut, 1).unwrap().size, 20);
        assert_eq!(size(10, SizeUpdate::AtLeastUncut, 1).unwrap().size, 20);
        assert_eq!(size(30, SizeUpdate::AtLeast, 0).unwrap().size, 30);
        assert_eq!(size(40, SizeUpdate::Exact, 0).unwrap().cut_gen, 2, "grown");
        assert_eq!(size(50, SizeUpdate::AtLeastUncut, 1).unwrap().size, 40);
    }

    #[test]
    fn appends_claim_ranges_one_after_the_other() {
        let mut m = manager();
        let id = m.create_file("/f", 0, 0, Owner::default()).unwrap().file_id;
        assert_eq!(m.claim_append("/f", id, 0, 3).unwrap().size, 3);
        assert_eq!(m.claim_append("/f", id, 0, 4).unwrap().size, 7);
        // What the caller wrote itself and has not published comes first.
        assert_eq!(m.claim_append("/f", id, 10, 2).unwrap().size, 12);
        assert_eq!(m.claim_append("/f", id, 5, 1).unwrap().size, 13);
        assert_eq!(
            m.claim_append("/f", id, 0, u64::MAX - 4),
            Err(Status::InvalidArgument)
        );
        assert_eq!(m.claim_append("/f", id + 1, 0, 1), Err(Status::Stale));
        assert_eq!(m.claim_append("/nope", id, 0, 1), Err(Status::NotFound));
        assert_eq!(m.lookup("/f").unwrap().size, 13);
    }

    #[test]
    fn lists_direct_children_only() {
        let mut m = manager();
        for p in ["/a", "/a/x", "/a/y", "/a/y/z", "/ab", "/b"] {
            m.create_dir(p, 0, Owner::default()).unwrap();
        }
        let names = |dir: &str, after: Option<&str>, limit: usize| -> Vec<String> {
            m.list_children(dir, after, limit)
                .unwrap()
                .into_iter()
                .map(|(n, _)| n)
                .collect()
        };
        assert_eq!(names("/", None, 100), ["a", "ab", "b"]);
        assert_eq!(names("/a", None, 100), ["x", "y"]);
        assert_eq!(names("/a", Some("x"), 100), ["y"]);
        assert_eq!(names("/", None, 2), ["a", "ab"]);
        assert_eq!(names("/a/y", None, 100), ["z"]);
        assert!(names("/zzz", None, 100).is_empty());
    }

    #[test]
    fn a_directory_moved_out_marks_its_name_and_too_many_marks_mark_every_name() {
        let mut m = manager();
        m.create_dir("/d", 0, Owner::default()).unwrap();
        m.create_file("/f", 0, 4096, Owner::default()).unwrap();
        assert!(!m.may_hold_stale_below("/d"));
        m.move_out("/f").unwrap();
        m.move_out("/d").unwrap();
        assert!(m.may_hold_stale_below("/d"));
        assert!(!m.may_hold_stale_below("/f"));
        m.clear_stale_below("/d");
        assert!(!m.may_hold_stale_below("/d"));
        for i in 0..=STALE_MARKS_MAX {
            m.mark_stale_below(&format!("/m{i}"));
        }
        assert!(m.may_hold_stale_below("/never-marked"));
    }

    #[test]
    fn finds_records_below_a_directory_changed_before_a_time() {
        let mut m = manager();
        for p in ["/a", "/a/x", "/a/x/deep", "/ab", "/a-b"] {
            m.create_dir(p, 0, Owner::default()).unwrap();
        }
        let made = now_ns() + 1;
        m.create_dir("/a/new", 0, Owner::default()).unwrap();
        let mut touched = m.lookup("/a/x/deep").unwrap();
        touched.mtime_ns = made + 5;
        m.insert("/a/x/deep", touched, &[], false).unwrap();
        assert_eq!(m.changed_below("/a", made).unwrap(), ["/a/x"]);
        assert_eq!(
            m.changed_below("/a/", u64::MAX).unwrap(),
            ["/a/new", "/a/x", "/a/x/deep"]
        );
        assert!(m.changed_below("/ab", u64::MAX).unwrap().is_empty());
        assert_eq!(m.changed_below("/", u64::MAX), Err(Status::InvalidArgument));
    }
}
