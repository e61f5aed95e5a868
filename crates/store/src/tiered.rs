//! [`TieredChunkStore`]: hot chunks in memory, the rest in a disk store under `data_dir`.
//!
//! - Upper tier: an [`InMemoryChunkStore`] holding at most `memory_tier_bytes /
//!   chunk_size` chunks (slots are whole chunks, so a resident chunk can always grow to
//!   the chunk size without evicting anything, and the tier never holds more than
//!   `memory_tier_bytes` of chunk data).
//! - Lower tier: a [`DiskChunkStore`] (io_uring by default) on the usual layout.
//! - New chunks come into memory: a write to a chunk that neither tier has takes a free
//!   slot, or when the tier is full evicts the least recently written or read resident
//!   chunk no one holds. A chunk the lower tier has is changed there (writes and
//!   truncates), and a clean copy of it in memory is dropped first, so memory never holds
//!   a change its lower copy lacks; the chunks dirty in memory are those never written to
//!   the lower tier. Bringing a chunk in for a part of it would also cost a chunk written
//!   back and a chunk read for a few bytes: with a working set twice the tier, 4 KiB
//!   random writes ran at 1,554 IOPS that way, against 41,401 for the io_uring store
//!   alone.
//! - Memory: when the host or the server's cgroup has no memory for a chunk (see the
//!   page pool's check), the chunk goes to the lower tier and the tier shrinks to the
//!   chunks it holds, so that from then on a new chunk evicts a cold one.
//! - Write-back: a resident chunk is dirty until it is written to the lower tier, which
//!   happens when it is evicted and on [`sync`](ChunkStore::sync). Reads, truncates of
//!   chunks that are not resident, and reads of spilled chunks go to the lower tier
//!   without bringing the chunk in: a read-mostly working set larger than the tier would
//!   otherwise write back a chunk on every read.
//!
//! **Durability contract:** when `sync` returns, every write, truncate and removal that
//! completed before it was called is on the lower tier and fsynced (chunk files and
//! directories), as with the disk stores. A chunk the lower tier has is changed there
//! before the change is acknowledged, so a killed process leaves it as the last
//! acknowledged change left it (as the disk stores do; a power loss keeps what was
//! fsynced). A chunk only the memory tier had is lost with the process (a write-back
//! makes its file whole or not at all): the server then starts as a new store, so its
//! clients read such a chunk as lost (from another replica, or an error), never as zeros
//! or as older bytes than a replica acknowledged, while the chunk files it kept vouch for
//! their ends ([`TieredChunkStore::kept_since_open`]). An evicted chunk is written
//! to the lower tier (the page cache) before its memory is dropped. A clean server
//! shutdown syncs.
//!
//! **Invariant:** the index holds every chunk with its length and place: `Memory` (the
//! upper tier has it; `dirty`: the lower tier has no copy, else the lower copy is the same
//! bytes) or `Disk` (only the lower tier has it). An operation that must await with a
//! chunk in a state another operation could see half-done holds that chunk (`busy`);
//! operations on a held chunk wait, except reads, which see memory only as changed
//! between awaits. When a hold ends the chunk's length is taken again from the tier that
//! has it, so a dropped future leaves the index true.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use tokio::sync::Notify;

use crate::disk::{DiskChunkStore, IoEngine, UringEngine};
use crate::{check_range, ChunkBuf, ChunkId, ChunkStat, ChunkStore, InMemoryChunkStore};
use crate::{StoreConfig, StoreError, StoreUsage};

/// Chunks in memory over chunks on disk, written back by recency; see the module docs
/// for the policy and the durability contract. The lower tier is the io_uring store
/// unless `E` says otherwise. Must be opened and used inside a tokio runtime with I/O
/// enabled, as the io_uring store.
#[derive(Debug)]
pub struct TieredChunkStore<E: IoEngine = UringEngine> {
    upper: InMemoryChunkStore,
    lower: DiskChunkStore<E>,
    /// Chunks the upper tier may hold: `memory_tier_bytes` in chunks, less once the host or
    /// the server's cgroup had no memory for more ([`Self::shrink_to_memory`]).
    slots: Cell<usize>,
    capacity_bytes: Option<u64>,
    state: RefCell<State>,
    /// Sum of the indexed lengths.
    used_bytes: Cell<u64>,
    /// Growth that operations in flight have checked against the capacity.
    reserved_bytes: Cell<u64>,
    /// Disk room held for each dirty resident chunk's write-back, at least its length in
    /// disk blocks, allocated in the file the write-back will write (see
    /// [`DiskChunkStore::hold_whole`]), so a full disk fails a write, never the
    /// write-back of one acknowledged.
    held: RefCell<HashMap<ChunkId, u64>>,
    /// Woken whenever a hold ends.
    released: Notify,
    /// The chunks the lower tier held at open that have not been removed since: whole,
    /// so bytes past their ends were never written ([`Self::kept_since_open`]).
    kept: RefCell<HashSet<ChunkId>>,
    /// Chunk-sized buffers kept for write-backs, at most [`SPARE_BUFFERS_MAX`]: with many
    /// writers holding the lower tier's pooled buffers, a write-back got a fresh heap
    /// buffer, whose page faults halved the write rate past the memory tier.
    spare: RefCell<Vec<ChunkBuf>>,
}

/// A file a tiered store keeps in its data directory: a crash there loses the chunks
/// its memory tier had not written back, whichever backend starts next on the directory.
pub const TIERED_MARK_FILE: &str = "tiered";

/// Leaves [`TIERED_MARK_FILE`] in `data_dir`.
fn mark_tiered(data_dir: &Path) -> Result<(), StoreError> {
    std::fs::File::create(data_dir.join(TIERED_MARK_FILE))
        .map(drop)
        .map_err(|source| StoreError::Io {
            op: "create the tiered mark",
            source,
        })
}

/// Most buffers kept for write-backs.
const SPARE_BUFFERS_MAX: usize = 4;

#[derive(Debug, Default)]
struct State {
    index: BTreeMap<ChunkId, Entry>,
    /// Chunks an operation holds across an await.
    busy: HashSet<ChunkId>,
    /// Resident chunks by last use, oldest first.
    lru: BTreeMap<u64, ChunkId>,
    tick: u64,
    /// Slots taken: resident chunks, and those being brought in.
    resident: usize,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    len: u64,
    place: Place,
}

/// The allocation unit assumed of the lower tier's file system.
const DISK_BLOCK: u64 = 4096;

/// Bytes of disk blocks that `len` bytes of a file take.
fn disk_blocks(len: u64) -> u64 {
    len.div_ceil(DISK_BLOCK) * DISK_BLOCK
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// In the upper tier; `stamp` is its key in the LRU.
    Memory { dirty: bool, stamp: u64 },
    /// Only in the lower tier.
    Disk,
}

impl State {
    /// Marks `id` (resident) used now.
    fn touch(&mut self, id: ChunkId) {
        let Some(entry) = self.index.get_mut(&id) else {
            return;
        };
        let Place::Memory { stamp, dirty } = entry.place else {
            return;
        };
        self.tick += 1;
        self.lru.remove(&stamp);
        self.lru.insert(self.tick, id);
        entry.place = Place::Memory {
            dirty,
            stamp: self.tick,
        };
    }

    /// Makes `id` resident with `dirty`, taking the slot its operation holds.
    fn make_resident(&mut self, id: ChunkId, dirty: bool) {
        self.tick += 1;
        self.lru.insert(self.tick, id);
        let place = Place::Memory {
            dirty,
            stamp: self.tick,
        };
        self.index
            .entry(id)
            .and_modify(|e| e.place = place)
            .or_insert(Entry { len: 0, place });
    }

    /// Marks `id` as no longer resident; returns whether it was.
    fn make_spilled(&mut self, id: ChunkId) -> bool {
        let Some(entry) = self.index.get_mut(&id) else {
            return false;
        };
        let Place::Memory { stamp, .. } = entry.place else {
            return false;
        };
        self.lru.remove(&stamp);
        entry.place = Place::Disk;
        self.resident -= 1;
        true
    }
}

/// An operation's hold on a chunk. Ending it (also when the operation's future is
/// dropped) gives back what the operation reserved and did not use, takes the chunk's
/// length again from its tier, and wakes the operations waiting.
struct Hold<'a, E: IoEngine> {
    store: &'a TieredChunkStore<E>,
    id: ChunkId,
    reserved: u64,
    /// A slot taken for this chunk that it does not occupy yet.
    slot: bool,
}

impl<E: IoEngine> Drop for Hold<'_, E> {
    fn drop(&mut self) {
        let store = self.store;
        store
            .reserved_bytes
            .set(store.reserved_bytes.get() - self.reserved);
        {
            let mut state = store.state.borrow_mut();
            state.busy.remove(&self.id);
            if self.slot {
                state.resident -= 1;
            }
        }
        store.refresh(self.id);
        store.released.notify_waiters();
    }
}

/// Whether a chunk at `place` has changes its lower copy lacks.
fn place_is_dirty(place: Place) -> bool {
    matches!(place, Place::Memory { dirty: true, .. })
}

impl<E: IoEngine> TieredChunkStore<E> {
    /// Opens (creating if needed) the lower tier under `config.data_dir` and indexes the
    /// chunks already there, all spilled; the memory tier starts empty. Fails as the
    /// disk store does, and if `memory_tier_bytes` is less than one chunk.
    pub fn open(config: &StoreConfig) -> Result<TieredChunkStore<E>, StoreError> {
        config.validate()?;
        // The capacity bounds both tiers together, so this store checks it.
        let lower_config = StoreConfig {
            capacity_bytes: None,
            prefault_bytes: 0,
            ..config.clone()
        };
        let lower = DiskChunkStore::<E>::open(&lower_config)?;
        mark_tiered(&config.data_dir)?;
        let slots = usize::try_from(config.memory_tier_bytes / config.chunk_size)
            .unwrap_or(usize::MAX)
            .max(1);
        // Slots are whole chunks, so this bound only caps the page pool's growth.
        let upper = InMemoryChunkStore::empty(config.chunk_size, config.memory_tier_bytes);
        upper.use_huge_pages(config.huge_pages);
        upper.prefault(config.prefault_bytes)?;
        let mut index = BTreeMap::new();
        let mut used_bytes = 0;
        let mut kept = HashSet::new();
        for (id, len) in lower.indexed() {
            kept.insert(id);
            index.insert(
                id,
                Entry {
                    len,
                    place: Place::Disk,
                },
            );
            used_bytes += len;
        }
        Ok(TieredChunkStore {
            upper,
            lower,
            slots: Cell::new(slots),
            capacity_bytes: config.capacity_bytes,
            state: RefCell::new(State {
                index,
                ..State::default()
            }),
            used_bytes: Cell::new(used_bytes),
            reserved_bytes: Cell::new(0),
            held: RefCell::new(HashMap::new()),
            released: Notify::new(),
            kept: RefCell::new(kept),
            spare: RefCell::new(Vec::new()),
        })
    }

    /// Whether chunk `id` is one the lower tier held at open, not removed since. Such a
    /// chunk is whole whatever ended the last run: a chunk file takes every change before
    /// it is acknowledged, and a write-back makes one whole or not at all. So nothing was
    /// ever written past its end, while a chunk made since may be what a write after a
    /// crash left of one the crash lost.
    pub fn kept_since_open(&self, id: ChunkId) -> bool {
        self.kept.borrow().contains(&id)
    }

    /// Chunks in the memory tier now, and how many it may hold.
    pub fn resident_chunks(&self) -> (usize, usize) {
        (self.state.borrow().lru.len(), self.slots.get())
    }

    /// Bytes of disk held for the memory tier's write-backs: at least what its chunks
    /// written since their last write-back will take on disk.
    pub fn disk_held_bytes(&self) -> u64 {
        self.held.borrow().values().sum()
    }

    /// Holds `id`, waiting while another operation does.
    async fn hold(&self, id: ChunkId) -> Hold<'_, E> {
        loop {
            // Made before the check, so a release between the two is not missed.
            let released = self.released.notified();
            if self.state.borrow_mut().busy.insert(id) {
                return Hold {
                    store: self,
                    id,
                    reserved: 0,
                    slot: false,
                };
            }
            released.await;
        }
    }

    /// Takes `id`'s length again from the tier that has it (the index's truth when no
    /// operation holds it), and holds disk room for its write-back if it is dirty, else
    /// gives back what was held.
    fn refresh(&self, id: ChunkId) {
        let dirty_len = {
            let mut state = self.state.borrow_mut();
            let place = state.index.get(&id).map(|e| e.place);
            let len = match place {
                Some(Place::Memory { .. }) => self.upper.chunk_len(id),
                Some(Place::Disk) | None => self.lower.chunk_len(id),
            };
            let old = state.index.get(&id).map_or(0, |e| e.len);
            match (len, place) {
                (Some(len), Some(_)) => {
                    if let Some(entry) = state.index.get_mut(&id) {
                        entry.len = len;
                    }
                }
                (Some(len), None) => {
                    let place = Place::Disk;
                    state.index.insert(id, Entry { len, place });
                }
                (None, _) => {
                    state.make_spilled(id);
                    state.index.remove(&id);
                }
            }
            let used = self.used_bytes.get() - old + len.unwrap_or(0);
            self.used_bytes.set(used);
            len.filter(|_| place.is_some_and(place_is_dirty))
        };
        match dirty_len {
            // Each growth is held before it happens; this catches what no check saw (a
            // write-back that failed and gave its room back).
            Some(len) => {
                if let Err(e) = self.promise(id, len) {
                    tracing::warn!(chunk = %id, error = %e, "no disk room held for a write-back");
                }
            }
            None => self.release_room(id),
        }
    }

    /// Holds disk room for resident (or about to be) `id` to be dirty at `len` bytes, so
    /// its write-back cannot find the disk full. Fails with [`StoreError::NoSpace`] when
    /// the disk has no room for it.
    /// The room held grows to twice what it was (within the chunk size) where the disk has
    /// that, so a chunk written in small appends makes a few calls, not one per write; on
    /// a disk too full for that, the other chunks give back what they hold beyond their
    /// lengths first.
    fn promise(&self, id: ChunkId, len: u64) -> Result<(), StoreError> {
        let needed = disk_blocks(len);
        let held = self.held.borrow().get(&id).copied().unwrap_or(0);
        if needed <= held {
            return Ok(());
        }
        let ahead = (2 * held).clamp(needed, disk_blocks(self.chunk_size()).max(needed));
        let hold = |to| self.lower.hold_whole(id, to).map(|()| to);
        let now = hold(ahead)
            .or_else(|e| if ahead > needed { hold(needed) } else { Err(e) })
            .or_else(|e| {
                if self.trim_room(id) {
                    hold(needed)
                } else {
                    Err(e)
                }
            })?;
        self.held.borrow_mut().insert(id, now);
        Ok(())
    }

    /// Gives back the room held beyond their lengths for the chunks but `except` that no
    /// operation holds; whether there was any.
    fn trim_room(&self, except: ChunkId) -> bool {
        let state = self.state.borrow();
        let mut trimmed = false;
        for (id, held) in self.held.borrow_mut().iter_mut() {
            if *id == except || state.busy.contains(id) {
                continue;
            }
            let needed = state.index.get(id).map_or(0, |e| disk_blocks(e.len));
            if *held > needed {
                self.lower.trim_whole(*id, needed);
                *held = needed;
                trimmed = true;
            }
        }
        trimmed
    }

    /// Gives back the disk room held for `id`'s write-back, if any.
    fn release_room(&self, id: ChunkId) {
        if self.held.borrow_mut().remove(&id).is_some() {
            self.lower.release_whole(id);
        }
    }

    /// Checks that a chunk may grow from `old` to `new` bytes and reserves the growth in
    /// `hold` (given back when the hold ends).
    fn reserve(&self, hold: &mut Hold<'_, E>, old: u64, new: u64) -> Result<(), StoreError> {
        let needed = new.saturating_sub(old);
        self.check_space(needed)?;
        hold.reserved += needed;
        self.reserved_bytes.set(self.reserved_bytes.get() + needed);
        Ok(())
    }

    fn check_space(&self, needed: u64) -> Result<(), StoreError> {
        let Some(capacity) = self.capacity_bytes else {
            return Ok(());
        };
        let used = self.used_bytes.get() + self.reserved_bytes.get();
        let available = capacity.saturating_sub(used);
        if needed > available {
            return Err(StoreError::NoSpace { needed, available });
        }
        Ok(())
    }

    /// Writes `data` into `id` if it is resident and dirty (and not held by another
    /// operation), before returning; `None` otherwise.
    fn write_resident(
        &self,
        id: ChunkId,
        offset: u64,
        data: &[u8],
        held: bool,
    ) -> Option<Result<(), StoreError>> {
        let end = offset + data.len() as u64;
        {
            let state = self.state.borrow();
            let entry = state.index.get(&id)?;
            if !place_is_dirty(entry.place) || (!held && state.busy.contains(&id)) {
                return None;
            }
            if let Err(e) = self.check_space(end.saturating_sub(entry.len)) {
                return Some(Err(e));
            }
            let len = entry.len.max(end);
            drop(state);
            if let Err(e) = self.promise(id, len) {
                return Some(Err(e));
            }
        }
        match self.upper.write_bytes(id, offset, data) {
            // No memory for the chunk to grow into (the capacity was checked above): the
            // caller moves it to disk.
            Err(StoreError::NoSpace { .. }) => return None,
            Err(e) => return Some(Err(e)),
            Ok(()) => {}
        }
        self.mark_dirty(id);
        Some(Ok(()))
    }

    /// Marks resident `id` dirty and used now, with the upper tier's length.
    fn mark_dirty(&self, id: ChunkId) {
        {
            let mut state = self.state.borrow_mut();
            if let Some(Entry {
                place: Place::Memory { dirty, .. },
                ..
            }) = state.index.get_mut(&id)
            {
                *dirty = true;
            }
            state.touch(id);
        }
        self.refresh(id);
    }

    /// A write to a chunk that is not resident, with the chunk held. A chunk the lower tier
    /// has takes it there; a new one comes into memory when a slot can be had.
    async fn write_spilled(
        &self,
        hold: &mut Hold<'_, E>,
        offset: u64,
        buf: ChunkBuf,
    ) -> (Result<(), StoreError>, ChunkBuf) {
        let id = hold.id;
        let end = offset + buf.len() as u64;
        let lower_len = self.state.borrow().index.get(&id).map(|e| e.len);
        if let Err(e) = self.reserve(hold, lower_len.unwrap_or(0), end) {
            return (Err(e), buf);
        }
        if lower_len.is_some() {
            // Changed in memory alone, its lower copy would outlive a crash older than
            // acknowledged writes (see the durability contract).
            return self.lower.write(id, offset, buf).await;
        }
        // With no room on disk for its write-back, the chunk stays out of memory: the
        // lower tier, where the write takes only the room it needs, answers.
        if !self.admit(hold).await || self.promise(id, end).is_err() {
            return self.lower.write(id, offset, buf).await;
        }
        if let Err(e) = self.upper.write_bytes(id, offset, buf.as_slice()) {
            self.upper.remove_chunk(id);
            if matches!(e, StoreError::NoSpace { .. }) {
                // The memory tier found too little memory for the chunk (the capacity was
                // checked above): the lower tier takes it, and the tier holds no more
                // chunks than it has now (this hold's slot ends with the hold), with the
                // room held for the write-back given back to it.
                self.shrink_to_memory(self.state.borrow().resident - 1);
                self.release_room(id);
                return self.lower.write(id, offset, buf).await;
            }
            return (Err(e), buf);
        }
        self.state.borrow_mut().make_resident(id, true);
        hold.slot = false;
        (Ok(()), buf)
    }

    /// Whether `id` is in the memory tier, and if so whether it is dirty.
    fn residence(&self, id: ChunkId) -> Option<bool> {
        match self.state.borrow().index.get(&id).map(|e| e.place) {
            Some(Place::Memory { dirty, .. }) => Some(dirty),
            Some(Place::Disk) | None => None,
        }
    }

    /// Makes held `id` one the lower tier alone has, ready for a change there: a clean
    /// memory copy is dropped (the lower copy is the same); a dirty one is written back
    /// first, and the tier shrinks to the chunks it holds, since it had no memory for the
    /// chunk to grow into.
    async fn leave_memory(&self, id: ChunkId) -> Result<(), StoreError> {
        match self.residence(id) {
            None => Ok(()),
            Some(false) => {
                self.state.borrow_mut().make_spilled(id);
                self.upper.remove_chunk(id);
                Ok(())
            }
            Some(true) => self.spill_for_memory(id).await,
        }
    }

    /// Moves held, resident `id` to the lower tier because the memory tier has no memory
    /// for it to grow into, and shrinks the tier to the chunks it holds then.
    async fn spill_for_memory(&self, id: ChunkId) -> Result<(), StoreError> {
        self.write_back(id).await?;
        self.upper.remove_chunk(id);
        let resident = {
            let mut state = self.state.borrow_mut();
            state.make_spilled(id);
            state.resident
        };
        self.shrink_to_memory(resident);
        Ok(())
    }

    /// Lets the memory tier hold at most `chunks` (one at least) after the host or the
    /// server's cgroup had no memory for more: without it, every later chunk would take a
    /// free slot, find no memory and go to disk, while the chunks in memory stayed there
    /// however cold; with it, a new chunk evicts the least recently used one.
    fn shrink_to_memory(&self, chunks: usize) {
        let slots = chunks.max(1);
        if slots < self.slots.get() {
            tracing::warn!(
                slots,
                was = self.slots.get(),
                "the memory tier shrinks to the chunks the memory available holds"
            );
            self.slots.set(slots);
        }
    }

    /// Takes a slot for `hold`'s chunk; if the tier is full, by writing back and evicting
    /// the least recently used resident chunk no one holds. `false` if no slot can be
    /// had: every resident chunk is held, or the chosen one could not be written back (the
    /// caller then uses the lower tier, where the same fault will show).
    async fn admit(&self, hold: &mut Hold<'_, E>) -> bool {
        let victim = {
            let mut state = self.state.borrow_mut();
            if state.resident < self.slots.get() {
                state.resident += 1;
                hold.slot = true;
                return true;
            }
            let victim = state
                .lru
                .values()
                .find(|v| !state.busy.contains(v))
                .copied();
            match victim {
                Some(victim) => {
                    state.busy.insert(victim);
                    victim
                }
                None => return false,
            }
        };
        // Held like any other operation's chunk, so the hold's end wakes waiters.
        let victim_hold = Hold {
            store: self,
            id: victim,
            reserved: 0,
            slot: false,
        };
        if let Err(e) = self.write_back(victim).await {
            tracing::warn!(chunk = %victim, error = %e, "write-back on eviction failed");
            return false;
        }
        self.upper.remove_chunk(victim);
        // The victim's slot passes to the held chunk.
        self.state.borrow_mut().make_spilled(victim);
        self.state.borrow_mut().resident += 1;
        hold.slot = true;
        drop(victim_hold);
        true
    }

    /// Writes held, resident `id` to the lower tier if it is dirty, so the lower copy is
    /// exactly the chunk, and marks it clean.
    async fn write_back(&self, id: ChunkId) -> Result<(), StoreError> {
        let place = self.state.borrow().index.get(&id).map(|e| e.place);
        let Some(Place::Memory { dirty: true, .. }) = place else {
            return Ok(());
        };
        let len = self.upper.chunk_len(id).unwrap_or(0);
        if len > 0 {
            let spare = self.spare.borrow_mut().pop();
            let mut buf = match spare {
                Some(buf) => buf,
                None => self.lower.buffer(self.chunk_size() as usize).await?,
            };
            buf.set_len(len as usize);
            self.upper.read_bytes(id, 0, buf.as_mut_slice())?;
            // Into the file that holds its room (`promise`): the chunk's after this, or
            // kept with its room for the next write-back.
            let (result, buf) = self.lower.write_whole(id, buf).await;
            if result.is_ok() {
                self.held.borrow_mut().remove(&id);
            } else {
                // What the file holds after a failed commit is not known: the hold's end
                // holds the room again (the file stays listed, so it goes with the chunk).
                self.held.borrow_mut().insert(id, 0);
            }
            let mut spare = self.spare.borrow_mut();
            if spare.len() < SPARE_BUFFERS_MAX {
                spare.push(buf);
            }
            result?;
        } else {
            self.release_room(id);
        }
        // Makes an empty chunk, which nothing above wrote.
        if self.lower.chunk_len(id) != Some(len) {
            self.lower.truncate(id, len).await?;
        }
        if let Some(entry) = self.state.borrow_mut().index.get_mut(&id) {
            if let Place::Memory { stamp, .. } = entry.place {
                entry.place = Place::Memory {
                    dirty: false,
                    stamp,
                };
            }
        }
        Ok(())
    }

    /// Sets `id`'s length if it is resident and dirty (and, unless `held`, no other
    /// operation holds it), before returning; `None` otherwise.
    fn truncate_resident(
        &self,
        id: ChunkId,
        len: u64,
        held: bool,
    ) -> Option<Result<(), StoreError>> {
        {
            let state = self.state.borrow();
            let entry = state.index.get(&id)?;
            if !place_is_dirty(entry.place) || (!held && state.busy.contains(&id)) {
                return None;
            }
            if let Err(e) = self.check_space(len.saturating_sub(entry.len)) {
                return Some(Err(e));
            }
            drop(state);
            if let Err(e) = self.promise(id, len) {
                return Some(Err(e));
            }
        }
        if let Err(e) = self.upper.set_len(id, len) {
            return Some(Err(e));
        }
        self.mark_dirty(id);
        Some(Ok(()))
    }

    /// Removes held `id` from both tiers; returns whether it existed.
    async fn remove_held(&self, id: ChunkId) -> Result<bool, StoreError> {
        let existed = self.state.borrow().index.contains_key(&id);
        // The lower copy first, so a failure leaves the chunk as it was.
        self.lower.remove(id).await?;
        self.release_room(id);
        self.kept.borrow_mut().remove(&id);
        if self.state.borrow_mut().make_spilled(id) {
            self.upper.remove_chunk(id);
        }
        Ok(existed)
    }
}

impl TieredChunkStore<UringEngine> {
    /// The lower tier's registered buffer region, where [`ChunkStore::buffer`]'s buffers
    /// come from; see [`DiskChunkStore::registered_region`].
    pub fn registered_region(&self) -> Option<(*const u8, usize)> {
        self.lower.registered_region()
    }
}

impl<E: IoEngine> Drop for TieredChunkStore<E> {
    fn drop(&mut self) {
        let state = self.state.borrow();
        let dirty = state
            .index
            .values()
            .filter(|e| place_is_dirty(e.place))
            .count();
        if dirty > 0 {
            tracing::warn!(
                dirty,
                "tiered store dropped with chunks written since the last sync; they are lost"
            );
        }
    }
}

impl<E: IoEngine> ChunkStore for TieredChunkStore<E> {
    fn chunk_size(&self) -> u64 {
        self.lower.chunk_size()
    }

    async fn buffer(&self, len: usize) -> Result<ChunkBuf, StoreError> {
        self.lower.buffer(len).await
    }

    async fn write(
        &self,
        id: ChunkId,
        offset: u64,
        buf: ChunkBuf,
    ) -> (Result<(), StoreError>, ChunkBuf) {
        if let Err(e) = check_range(self.chunk_size(), offset, buf.len()) {
            return (Err(e), buf);
        }
        if buf.is_empty() {
            return (Ok(()), buf);
        }
        if let Some(result) = self.write_resident(id, offset, buf.as_slice(), false) {
            return (result, buf);
        }
        let mut hold = self.hold(id).await;
        // It may have come in while this write waited.
        if let Some(result) = self.write_resident(id, offset, buf.as_slice(), true) {
            return (result, buf);
        }
        if let Err(e) = self.leave_memory(id).await {
            return (Err(e), buf);
        }
        self.write_spilled(&mut hold, offset, buf).await
    }

    async fn read(
        &self,
        id: ChunkId,
        offset: u64,
        mut buf: ChunkBuf,
    ) -> (Result<usize, StoreError>, ChunkBuf) {
        let resident = {
            let mut state = self.state.borrow_mut();
            let resident = matches!(
                state.index.get(&id).map(|e| e.place),
                Some(Place::Memory { .. })
            );
            if resident {
                state.touch(id);
            }
            resident
        };
        if resident {
            let result = self.upper.read_bytes(id, offset, buf.as_mut_slice());
            return (result, buf);
        }
        self.lower.read(id, offset, buf).await
    }

    async fn truncate(&self, id: ChunkId, len: u64) -> Result<(), StoreError> {
        check_range(self.chunk_size(), len, 0)?;
        if let Some(result) = self.truncate_resident(id, len, false) {
            return result;
        }
        let mut hold = self.hold(id).await;
        if let Some(result) = self.truncate_resident(id, len, true) {
            return result;
        }
        self.leave_memory(id).await?;
        let old = self.state.borrow().index.get(&id).map_or(0, |e| e.len);
        self.reserve(&mut hold, old, len)?;
        self.lower.truncate(id, len).await
    }

    async fn remove(&self, id: ChunkId) -> Result<bool, StoreError> {
        let _hold = self.hold(id).await;
        self.remove_held(id).await
    }

    async fn remove_file(&self, file_id: u64) -> Result<u64, StoreError> {
        let ids: Vec<ChunkId> = self
            .state
            .borrow()
            .index
            .range(ChunkId::new(file_id, 0)..=ChunkId::new(file_id, u64::MAX))
            .map(|(id, _)| *id)
            .collect();
        let mut removed = 0;
        for id in ids {
            let _hold = self.hold(id).await;
            removed += u64::from(self.remove_held(id).await?);
        }
        // The disk store removes the file's directory only here. A chunk of the file
        // written to the lower tier meanwhile went with it: take its length again.
        self.lower.remove_file(file_id).await?;
        self.kept.borrow_mut().retain(|id| id.file_id != file_id);
        let spilled: Vec<ChunkId> = {
            let state = self.state.borrow();
            let range = ChunkId::new(file_id, 0)..=ChunkId::new(file_id, u64::MAX);
            state
                .index
                .range(range)
                .filter(|(id, e)| e.place == Place::Disk && !state.busy.contains(id))
                .map(|(id, _)| *id)
                .collect()
        };
        for id in spilled {
            self.refresh(id);
        }
        Ok(removed)
    }

    async fn stat(&self, id: ChunkId) -> Result<Option<ChunkStat>, StoreError> {
        let state = self.state.borrow();
        Ok(state.index.get(&id).map(|e| ChunkStat { len: e.len }))
    }

    async fn list(&self) -> Result<Vec<ChunkId>, StoreError> {
        Ok(self.state.borrow().index.keys().copied().collect())
    }

    async fn file_chunks(&self, file_id: u64) -> Result<Vec<(u64, ChunkStat)>, StoreError> {
        let state = self.state.borrow();
        let range = ChunkId::new(file_id, 0)..=ChunkId::new(file_id, u64::MAX);
        Ok(state
            .index
            .range(range)
            .map(|(id, e)| (id.index, ChunkStat { len: e.len }))
            .collect())
    }

    async fn sync(&self) -> Result<(), StoreError> {
        let dirty: Vec<ChunkId> = self
            .state
            .borrow()
            .index
            .iter()
            .filter(|(_, e)| place_is_dirty(e.place))
            .map(|(id, _)| *id)
            .collect();
        // Every chunk that can be written back is, whatever became of the others.
        let mut first_error = None;
        for id in dirty {
            let _hold = self.hold(id).await;
            if let Err(e) = self.write_back(id).await {
                tracing::error!(chunk = %id, error = %e, "write-back failed");
                first_error.get_or_insert(e);
            }
        }
        let synced = self.lower.sync().await;
        match first_error {
            Some(e) => Err(e),
            None => synced,
        }
    }

    fn usage(&self) -> StoreUsage {
        let state = self.state.borrow();
        StoreUsage {
            used_bytes: self.used_bytes.get(),
            capacity_bytes: self.capacity_bytes,
            chunks: state.index.len() as u64,
        }
    }
}
