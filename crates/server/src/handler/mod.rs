//! The server's state and its request handlers, independent of the transport.
//!
//! [`ServerState::handle`] takes one decoded request and produces its reply. The transport
//! (`crate::rpc`) decodes frames, hands over the body and the payload (received
//! straight into a store buffer when it came by rendezvous), and sends the reply.
//!
//! **Invariant:** a handler never panics on request content; every malformed or refused
//! request becomes a reply with a non-`Ok` [`Status`].

mod cuts;
mod inline;
mod journal;
mod probe;
mod repair;
mod rewritten;

use std::cell::{Cell, RefCell};

use benchfs_proto::meta::FileMetadata;
use benchfs_proto::ops::{self as op, Message};
use benchfs_proto::{path, OpCode, Status};
use benchfs_store::StoreError;
use benchfs_store::{AnyChunkStore, ChunkBuf, ChunkId, ChunkStore, ChunkView, FaultyStore};

use crate::metadata::{now_ns, MetadataTable, Owner, Seal, SizeUpdate};
use crate::metrics::Metrics;
use benchfs_config::ServerConfig;
use benchfs_proto::placement::inode_tag;

pub use journal::{Journal, JournalError};

/// The inline payload that came with a request.
#[derive(Debug)]
pub enum Payload<'a> {
    /// No payload.
    None,
    /// Bytes borrowed from an eager message.
    Bytes(&'a [u8]),
    /// A store buffer the transport received the payload into (rendezvous).
    Buf(ChunkBuf),
}

impl Payload<'_> {
    fn len(&self) -> usize {
        match self {
            Payload::None => 0,
            Payload::Bytes(b) => b.len(),
            Payload::Buf(b) => b.len(),
        }
    }
}

/// A handler's answer: a status, a body and an optional inline payload.
#[derive(Debug)]
pub struct Reply {
    /// The outcome.
    pub status: Status,
    /// The encoded reply body (empty unless `status` is `Ok`).
    pub body: Vec<u8>,
    /// The payload that follows the body: a chunk read's bytes.
    pub payload: Option<ReplyPayload>,
    /// File bytes the request and the reply carried in their bodies (an inline file's),
    /// which the server's byte counters add to the payloads'.
    pub body_file_bytes: [u64; 2],
}

/// A reply's payload: a store buffer the bytes were read into, or the chunk's own memory
/// (a memory store's pages, lent with no copy).
#[derive(Debug)]
pub enum ReplyPayload {
    /// Read into a store buffer.
    Buf(ChunkBuf),
    /// Read in place.
    View(ChunkView),
}

impl ReplyPayload {
    /// Bytes in the payload.
    pub fn len(&self) -> usize {
        self.as_ref().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl AsRef<[u8]> for ReplyPayload {
    fn as_ref(&self) -> &[u8] {
        match self {
            ReplyPayload::Buf(buf) => buf.as_slice(),
            ReplyPayload::View(view) => view.as_ref(),
        }
    }
}

impl Reply {
    fn ok<M: Message>(body: &M) -> Reply {
        Reply {
            status: Status::Ok,
            body: body.to_bytes(),
            payload: None,
            body_file_bytes: [0; 2],
        }
    }

    /// This reply, counting `taken` file bytes in the request's body and `given` in its own.
    fn with_file_bytes(mut self, taken: usize, given: usize) -> Reply {
        self.body_file_bytes = [taken as u64, given as u64];
        self
    }

    /// A reply carrying only a non-`Ok` status.
    pub(crate) fn error(status: Status) -> Reply {
        Reply {
            status,
            body: Vec::new(),
            payload: None,
            body_file_bytes: [0; 2],
        }
    }
}

impl From<Result<Reply, Status>> for Reply {
    fn from(r: Result<Reply, Status>) -> Reply {
        r.unwrap_or_else(Reply::error)
    }
}

/// Whether handling `op` waits for the store, the disk or a turn of the other tasks: the
/// others are answered at once ([`ServerState::handle_at_once`]).
pub fn waits(op: OpCode) -> bool {
    matches!(
        op,
        OpCode::ReadChunk
            | OpCode::WriteChunk
            | OpCode::TruncateFile
            | OpCode::RemoveChunks
            | OpCode::Fsync
            | OpCode::StoreProbe
            | OpCode::Stats
    )
}

/// Turns a store error into a wire status by the store's one mapping, `Status::from(&e)`,
/// logging what the status cannot carry.
pub(crate) fn store_status(e: StoreError) -> Status {
    let status = Status::from(&e);
    tracing::warn!(error = %e, ?status, "chunk store error");
    status
}

/// Counters a server keeps about its requests.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests handled.
    pub requests: Cell<u64>,
    /// Requests refused as malformed.
    pub malformed: Cell<u64>,
    /// Chunks of unnamed files the orphan sweep removed.
    pub orphan_chunks_removed: Cell<u64>,
    /// Requests refused because their caller had given up on them (see
    /// [`benchfs_proto::clock`]).
    pub late: Cell<u64>,
}

impl Counters {
    /// Counts one request refused as malformed.
    pub fn note_malformed(&self) {
        self.malformed.set(self.malformed.get() + 1);
    }

    /// Counts one request refused as late, and returns how many were so far.
    pub fn note_late(&self) -> u64 {
        self.late.set(self.late.get() + 1);
        self.late.get()
    }
}

/// Everything one server process holds: its metadata share and its chunk store.
#[derive(Debug)]
pub struct ServerState {
    /// When the chunk store began (see [`op::HelloReply::born_ns`]).
    born_ns: u64,
    /// The store began empty in a later life of this server (see
    /// [`op::HelloReply::born_again`]).
    born_again: bool,
    node_id: String,
    chunk_size: u64,
    rendezvous_threshold: u64,
    /// `replication.replicas` and `placement.virtual_nodes`, told to clients at `Hello`.
    replicas: u32,
    virtual_nodes: u32,
    secret: Vec<u8>,
    metadata: RefCell<MetadataTable>,
    journal: Option<RefCell<Journal>>,
    store: FaultyStore<AnyChunkStore>,
    /// Where the store's files are (its disk's free space is the disk backends' room).
    data_dir: std::path::PathBuf,
    /// Whether a `StoreProbe` is running (one at a time: they share a scratch file).
    probe_running: Cell<bool>,
    /// Each file's last cut here, which an append claimed before it does not land past.
    cuts: RefCell<cuts::Cuts>,
    /// The bytes known of the chunks the store made after it began, for files older than
    /// it (written since, or a hole past a cut or vouched for by a repair): the rest of
    /// such a chunk may be bytes it lost.
    rewritten: RefCell<rewritten::Rewritten>,
    /// Request counters.
    pub counters: Counters,
    /// Per-operation counters, latencies and the queue depth, kept by the transport.
    pub metrics: Metrics,
}

/// A request body, or `Protocol` (logged) when it does not decode.
fn decode<T: Message>(body: &[u8]) -> Result<T, Status> {
    T::from_bytes(body).map_err(|e| {
        tracing::warn!(error = %e, "malformed request body");
        Status::Protocol
    })
}

/// At most `max` of `ids`, in order from the first past `after`, wrapping around.
fn in_turn(mut ids: Vec<u64>, after: u64, max: usize) -> Vec<u64> {
    ids.sort_unstable();
    ids.dedup();
    let past = ids.partition_point(|&id| id <= after);
    ids.rotate_left(past);
    ids.truncate(max);
    ids
}

impl ServerState {
    /// Opens the chunk store and, for persistent backends, replays the metadata journal.
    pub fn open(
        config: &ServerConfig,
        secret: Vec<u8>,
    ) -> Result<ServerState, crate::handler::OpenError> {
        let opened_ns = now_ns();
        let store = AnyChunkStore::open(&config.store_config())?;
        if store.backend() != benchfs_store::Backend::Memory {
            check_placement_record(config)?;
        }
        let journal_path = config.node.data_dir.join("metadata.journal");
        let journal_missing = !journal_path.exists();
        let born_ns = store_born_ns(config, &store, journal_missing)?;
        let remade = open_remade(config, &store)?;
        if store.backend() != benchfs_store::Backend::Tiered {
            // Its crash is accounted for in the birth now; a later unclean stop of this
            // backend loses nothing unwritten.
            forget_tiered_run(&config.node.data_dir);
        }
        // Records lost with the store (memory, or a new data directory) in a cluster that
        // ran with this node: born again (a store that kept its data keeps its birth, and
        // a tiered store that lost chunks keeps its records in the journal).
        let records_lost = store.backend() == benchfs_store::Backend::Memory || journal_missing;
        let born_again = born_ns >= opened_ns
            && records_lost
            && benchfs_config::registry::rejoins(
                &config.network.registry_dir,
                &config.node.node_id,
                benchfs_proto::limits::BORN_APART_NS,
            );
        if born_again {
            tracing::warn!(
                "rejoining with an empty store: records and chunks of the earlier life are \
                 missing here until the replica repair brings the records back"
            );
        }
        let mut metadata = MetadataTable::new(
            inode_tag(&config.node.node_id, born_ns),
            config.storage.chunk_size_bytes,
        );
        // A seal outlives the calls of a mover that is alive, however slow its peers: one
        // RPC timeout for its chunk 0 writes and one for its drop.
        metadata.set_inline_limit(
            config.storage.inline_bytes,
            config.network.rpc_timeout.saturating_mul(2),
        );
        let journal = if store.backend() == benchfs_store::Backend::Memory {
            None
        } else {
            Some(RefCell::new(Journal::open(&journal_path, &mut metadata)?))
        };
        if store.backend() != benchfs_store::Backend::Memory {
            check_registry_knows_data(config, metadata.len(), store.usage().chunks)?;
        }
        // The marks of names with stale records below them were in the last life's memory.
        if born_again || !records_lost {
            metadata.assume_stale_everywhere();
        }
        // Set after the replay, whose records are no calls in flight.
        metadata.set_settle_window(crate::metadata::settle_window(config.network.rpc_timeout));
        if let Some(plan) = &config.storage.inject_faults {
            tracing::warn!(%plan, "injecting chunk store faults (storage.inject_faults)");
        }
        let store = FaultyStore::new(store, config.storage.inject_faults.clone());
        Ok(ServerState {
            born_ns,
            born_again,
            node_id: config.node.node_id.clone(),
            chunk_size: config.storage.chunk_size_bytes,
            rendezvous_threshold: config.network.rendezvous_threshold_bytes,
            replicas: config.replication.replicas,
            virtual_nodes: config.placement.virtual_nodes,
            secret,
            metadata: RefCell::new(metadata),
            journal,
            store,
            data_dir: config.node.data_dir.clone(),
            probe_running: Cell::new(false),
            cuts: RefCell::default(),
            rewritten: RefCell::new(remade),
            counters: Counters::default(),
            metrics: Metrics::default(),
        })
    }

    /// When the chunk store began, and whether it began empty in a cluster this server
    /// served in before (see [`op::HelloReply::born_again`]).
    pub fn born(&self) -> (u64, bool) {
        (self.born_ns, self.born_again)
    }

    /// The high half of every inode number this server hands out
    /// ([`inode_tag`]).
    pub fn inode_tag(&self) -> u32 {
        (self.metadata.borrow().scratch_file_id() >> 32) as u32
    }

    /// Records that this server stopped cleanly, its store synced: a tiered store's next
    /// start then keeps its birth, and `cluster down` reports the stop clean (see
    /// [`CLEAN_STOP_FILE`]). Call it last, after both syncs succeeded.
    pub fn mark_clean_stop(&self, config: &ServerConfig) -> std::io::Result<()> {
        let data_dir = &config.node.data_dir;
        let mark = data_dir.join(CLEAN_STOP_FILE);
        // A rename takes no new inode, which a full disk may lack.
        match std::fs::rename(data_dir.join(RUNNING_FILE), &mark) {
            Ok(()) => sync_dir(data_dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_durably(&mark, ""),
            Err(e) => Err(e),
        }
    }

    /// Makes every metadata change so far durable.
    pub fn sync_metadata(&self) -> Result<(), JournalError> {
        match &self.journal {
            Some(j) => j.borrow_mut().sync(),
            None => Ok(()),
        }
    }

    /// Makes the log of the chunks the store made anew durable: before the store's sync,
    /// so that no such chunk is durable without what the log says of it.
    pub fn sync_remade(&self) -> std::io::Result<()> {
        self.rewritten.borrow().sync()
    }

    /// Stops the journal's compaction under way, if any (see
    /// [`journal::Journal::abandon_compaction`]); the server is stopping.
    pub fn abandon_compaction(&self) {
        if let Some(j) = &self.journal {
            j.borrow_mut().abandon_compaction();
        }
    }

    /// Whether clients must complete a handshake with the job secret before anything else.
    pub fn requires_handshake(&self) -> bool {
        !self.secret.is_empty()
    }

    /// This server's node id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The chunk store (for registering its buffers with the transport).
    pub fn store(&self) -> &AnyChunkStore {
        self.store.inner()
    }

    /// The job secret peers and clients present.
    pub(crate) fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// Inode numbers of files with chunks here and no record here, at most `max`, in
    /// order from the first past `after`, wrapping around: rounds that each start past the
    /// last one's end ask about every such file in turn, however many there are.
    pub(crate) async fn unnamed_files(
        &self,
        after: u64,
        max: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let chunks = self.store.list().await?;
        let table = self.metadata.borrow();
        // A store probe's scratch file is no file of anyone's; the probe removes it.
        let scratch = table.scratch_file_id();
        let ids: Vec<u64> = chunks
            .into_iter()
            .map(|c| c.file_id)
            .filter(|id| !table.has_file(*id) && *id != scratch)
            .collect();
        Ok(in_turn(ids, after, max))
    }

    /// Whether this server deleted the last record of `file_id`.
    pub(crate) fn deleted_here(&self, file_id: u64) -> bool {
        self.metadata.borrow().is_deleted(file_id)
    }

    /// Removes the chunks of a deleted file, unless a record here names it again; counts
    /// what went.
    pub(crate) async fn remove_orphan(&self, file_id: u64) -> Result<u64, StoreError> {
        if self.metadata.borrow().has_file(file_id) {
            return Ok(0);
        }
        self.cuts.borrow_mut().forget(file_id);
        let removed = self.store.remove_file(file_id).await?;
        self.rewritten.borrow_mut().forget_file(file_id);
        tracing::debug!(file_id, chunks = removed, "orphan chunks removed");
        let counter = &self.counters.orphan_chunks_removed;
        counter.set(counter.get() + removed);
        Ok(removed)
    }

    /// Which of some files this server names and which it deleted (`FilesExist`), with
    /// the unnamed ones sealed first (`SealFiles`, `SealFilesForGood`), or tentative seals
    /// lifted (`UnsealFiles`).
    fn file_states(&self, op: OpCode, req: op::FileIdsRequest) -> Result<Reply, Status> {
        let ids = req.file_ids;
        let how = match op {
            OpCode::SealFiles => Seal::Tentative,
            OpCode::SealFilesForGood => Seal::ForGood,
            OpCode::UnsealFiles => {
                self.unseal_files(&ids);
                return Ok(Reply::ok(&op::Empty));
            }
            _ => {
                let table = self.metadata.borrow();
                return Ok(Reply::ok(&op::FileStatesReply {
                    named: ids
                        .iter()
                        .copied()
                        .filter(|id| table.has_file(*id))
                        .collect(),
                    deleted: ids.into_iter().filter(|id| table.is_deleted(*id)).collect(),
                }));
            }
        };
        let named = self.seal_files(&ids, how)?;
        Ok(Reply::ok(&op::FileStatesReply {
            deleted: ids.into_iter().filter(|id| !named.contains(id)).collect(),
            named,
        }))
    }

    /// Seals each file of `ids` that no record here names ([`MetadataTable::seal`]), a seal
    /// for good in the journal before it counts; returns those a record names.
    pub(crate) fn seal_files(&self, ids: &[u64], how: Seal) -> Result<Vec<u64>, Status> {
        let mut named = Vec::new();
        for &id in ids {
            let before = self.metadata.borrow().seal_of(id);
            if before >= Some(how) {
                continue;
            }
            if !self.metadata.borrow_mut().seal(id, how) {
                named.push(id);
                continue;
            }
            if how == Seal::ForGood {
                if let Err(status) = self.log_freeing(journal::Record::Seal(id)) {
                    self.metadata.borrow_mut().restore_seal(id, before);
                    return Err(status);
                }
            }
        }
        Ok(named)
    }

    /// Lifts the tentative seals of `ids` (another server still names those files).
    pub(crate) fn unseal_files(&self, ids: &[u64]) {
        let mut table = self.metadata.borrow_mut();
        ids.iter().for_each(|id| table.unseal(*id));
    }

    /// Makes `change` to the record of `path` and journals the record it leaves (see
    /// [`Self::log_with`] for `freeing`); if the journal refuses it, the record is put back
    /// as it was, so a failed call leaves nothing behind: a create answered ENOSPC had left
    /// its record in the table until the next restart.
    pub(super) fn change_logged<T>(
        &self,
        path: &str,
        freeing: bool,
        change: impl FnOnce(&mut MetadataTable) -> Result<T, Status>,
    ) -> Result<T, Status> {
        let before = self
            .journal
            .is_some()
            .then(|| self.metadata.borrow().snapshot(path));
        let done = change(&mut self.metadata.borrow_mut())?;
        if let Err(status) = self.log_put_with(path, freeing) {
            if let Some(before) = before {
                self.metadata.borrow_mut().restore(path, before);
            }
            return Err(status);
        }
        Ok(done)
    }

    /// [`Self::log_with`] for a change that lets space be freed (a delete, a seal, a
    /// truncation): it goes in on a full disk too ([`journal::Journal::append_freeing`]).
    fn log_freeing(&self, record: journal::Record<'_>) -> Result<(), Status> {
        self.log_with(record, true)
    }

    /// Records one metadata change, already applied to the table, in the journal if there
    /// is one (`freeing`: see [`Self::log_freeing`]), and compacts the journal when it has
    /// grown enough (a thread writes the snapshot; a later append puts it in place). A
    /// failed append fails the request: an acknowledged change must survive a restart. A
    /// failed compaction leaves the old journal whole, so it is only logged.
    fn log_with(&self, record: journal::Record<'_>, freeing: bool) -> Result<(), Status> {
        let Some(journal) = &self.journal else {
            return Ok(());
        };
        let mut journal = journal.borrow_mut();
        if let Err(e) = journal.finish_compaction() {
            tracing::error!(error = %e, "metadata journal compaction failed");
        }
        let appended = if freeing {
            journal.append_freeing(&record)
        } else {
            journal.append(&record)
        };
        appended.map_err(|e| {
            tracing::error!(error = %e, "metadata journal append failed");
            match &e {
                journal::JournalError::Io { source, .. } => match source.kind() {
                    std::io::ErrorKind::StorageFull => Status::NoSpace,
                    std::io::ErrorKind::ReadOnlyFilesystem => Status::ReadOnly,
                    _ => Status::Io,
                },
                _ => Status::Io,
            }
        })?;
        if journal.wants_compaction() {
            if let Err(e) = journal.start_compaction(&self.metadata.borrow()) {
                tracing::error!(error = %e, "metadata journal compaction failed");
            }
        }
        Ok(())
    }

    /// Handles one request. `body` is the operation body, `payload` the inline payload.
    pub async fn handle(&self, op: OpCode, body: &[u8], payload: Payload<'_>) -> Reply {
        if let Some(reply) = self.handle_at_once(op, body, payload.len()) {
            return reply;
        }
        let reply = self.dispatch_waiting(op, body, payload).await.into();
        self.counted(reply)
    }

    /// Handles one request at once: refuses a payload on an operation that takes none, or
    /// answers an operation that never waits (see [`waits`]); `None` for the others, which
    /// go through [`ServerState::handle`]. Only a ping takes a payload among those answered
    /// here, and ignores it: `payload_len` is all it needs.
    pub fn handle_at_once(&self, op: OpCode, body: &[u8], payload_len: usize) -> Option<Reply> {
        if !op.takes_payload() && payload_len != 0 {
            return Some(self.counted(Reply::error(Status::Protocol)));
        }
        if waits(op) {
            return None;
        }
        Some(self.counted(self.dispatch_at_once(op, body).into()))
    }

    /// Counts a handled request and its reply's status.
    fn counted(&self, reply: Reply) -> Reply {
        self.counters.requests.set(self.counters.requests.get() + 1);
        if reply.status == Status::Protocol {
            self.counters.note_malformed();
        }
        reply
    }

    /// The operations whose handling waits: for the store, or for the journal's sync.
    async fn dispatch_waiting(
        &self,
        op: OpCode,
        body: &[u8],
        payload: Payload<'_>,
    ) -> Result<Reply, Status> {
        match op {
            OpCode::ReadChunk => Ok(self.read_chunk(decode(body)?).await),
            OpCode::WriteChunk => Ok(self.write_chunk(decode(body)?, payload).await),
            OpCode::TruncateFile => self.truncate_file(decode(body)?).await,
            OpCode::RemoveChunks => {
                let req: op::RemoveChunksRequest = decode(body)?;
                self.cuts.borrow_mut().forget(req.file_id);
                let count = self
                    .store
                    .remove_file(req.file_id)
                    .await
                    .map_err(store_status)?;
                self.rewritten.borrow_mut().forget_file(req.file_id);
                Ok(Reply::ok(&op::CountReply { count }))
            }
            OpCode::Fsync => {
                decode::<op::Empty>(body)?;
                self.fsync().await
            }
            OpCode::StoreProbe => self.store_probe(decode(body)?).await,
            OpCode::Stats => {
                decode::<op::Empty>(body)?;
                // A request whose reply went by rendezvous is counted on a task once UCX
                // says the transfer ended, which the client saw first: those tasks run
                // before the counters are read, so a client's stats after its reads count
                // them all (answered at once, they missed a few in a burst of reads).
                benchfs_ucx::yield_turn().await;
                Ok(Reply::ok(&self.stats()))
            }
            op => self.dispatch_at_once(op, body),
        }
    }

    /// The operations answered from the metadata table alone (and the journal's append,
    /// which does not wait).
    fn dispatch_at_once(&self, op: OpCode, body: &[u8]) -> Result<Reply, Status> {
        match op {
            // Answered by the transport, which knows the connection (see `hello`); the
            // waiting ones never come here.
            OpCode::Hello
            | OpCode::Auth
            | OpCode::ReadChunk
            | OpCode::WriteChunk
            | OpCode::TruncateFile
            | OpCode::RemoveChunks
            | OpCode::Fsync
            | OpCode::StoreProbe
            | OpCode::Stats => Err(Status::Protocol),
            OpCode::Ping => {
                decode::<op::Empty>(body)?;
                Ok(Reply::ok(&op::Empty))
            }
            OpCode::MetadataLookup | OpCode::MetadataLookupParent | OpCode::Readdir => {
                self.metadata_read(op, body)
            }
            OpCode::MetadataOpen => self.metadata_open(body),
            OpCode::MetadataCreateInline
            | OpCode::MetadataWriteInline
            | OpCode::MetadataSealInline
            | OpCode::MetadataDropInline => self.inline_write(op, body),
            OpCode::MetadataCreateFile
            | OpCode::MetadataCreateDir
            | OpCode::MetadataCreateSymlink
            | OpCode::MetadataDelete
            | OpCode::MetadataInsert
            | OpCode::SetAttr
            | OpCode::UpdateSize
            | OpCode::ClaimAppend
            | OpCode::RestoreSize
            | OpCode::TouchDir => self.metadata_write(op, body),
            OpCode::PurgeUnder => self.purge_under(&decode(body)?),
            OpCode::LocateFile => {
                let req: op::LocateFileRequest = decode(body)?;
                let table = self.metadata.borrow();
                let path = table.path_of(req.file_id).map(str::to_string);
                Ok(Reply::ok(&op::LocateFileReply { path }))
            }
            OpCode::CompareRecords => self.compare_records(decode(body)?),
            OpCode::FilesExist
            | OpCode::SealFiles
            | OpCode::SealFilesForGood
            | OpCode::UnsealFiles => self.file_states(op, decode(body)?),
        }
    }

    /// Lookups and listings: they read the table and change nothing, but for the marks a
    /// parent's lookup leaves.
    fn metadata_read(&self, op: OpCode, body: &[u8]) -> Result<Reply, Status> {
        if matches!(op, OpCode::MetadataLookup | OpCode::MetadataLookupParent) {
            let req: op::PathRequest = decode(body)?;
            let found = self.metadata.borrow().lookup(&req.path);
            if op == OpCode::MetadataLookupParent && !matches!(found, Ok(meta) if meta.is_dir()) {
                // The client's create below it may land, and the client die before it
                // removes the record again: a directory made here later (once a file
                // here is gone) must not list it.
                let dir = path::normalize(&req.path)?;
                self.metadata.borrow_mut().mark_stale_below(&dir);
            }
            return Ok(Reply::ok(&op::MetadataReply { meta: found? }));
        }
        let req: op::ReaddirRequest = decode(body)?;
        let limit = req.limit.clamp(1, op::READDIR_PAGE_MAX) as usize;
        // One extra entry tells whether this page is the last.
        let mut entries =
            self.metadata
                .borrow()
                .list_children(&req.dir, req.after.as_deref(), limit + 1)?;
        let done = entries.len() <= limit;
        entries.truncate(limit);
        Ok(Reply::ok(&op::ReaddirReply { entries, done }))
    }

    /// Creates a file, directory or symbolic link record, journaled before it is
    /// acknowledged.
    fn create(&self, op: OpCode, req: op::CreateRequest) -> Result<Reply, Status> {
        let owner = Owner {
            uid: req.uid,
            gid: req.gid,
        };
        if op == OpCode::MetadataCreateDir {
            let (meta, stale_below) = self.change_logged(&req.path, false, |table| {
                let meta = table.create_dir(&req.path, req.mode, owner)?;
                let stale_below = table.may_hold_stale_below(&path::normalize(&req.path)?);
                Ok((meta, stale_below))
            })?;
            tracing::debug!(path = %req.path, file_id = meta.file_id, stale_below, "directory created");
            return Ok(Reply::ok(&op::CreateDirReply { meta, stale_below }));
        }
        let meta = self.change_logged(&req.path, false, |table| match op {
            OpCode::MetadataCreateFile => {
                table.create_file(&req.path, req.mode, req.chunk_size, owner)
            }
            _ => table.create_symlink(&req.path, owner),
        })?;
        tracing::debug!(path = %req.path, file_id = meta.file_id, "record created");
        Ok(Reply::ok(&op::MetadataReply { meta }))
    }

    /// Removes the records below a directory that were last changed before the request's
    /// time, each journaled. Moved out, not deleted: no tombstone, so no orphan sweep takes
    /// the chunks of the files these records are stale names of. A purge of everything is
    /// a rename's, about to copy records below the name: the name stays marked. Any other
    /// is a new directory's, which clears the mark.
    fn purge_under(&self, req: &op::PurgeRequest) -> Result<Reply, Status> {
        if req.changed_before_ns == op::PURGE_SEALS_NAME {
            let dir = path::normalize(&req.dir)?;
            self.metadata.borrow_mut().seal_name(&dir);
            return Ok(Reply::ok(&op::CountReply { count: 0 }));
        }
        let paths = self
            .metadata
            .borrow()
            .changed_below(&req.dir, req.changed_before_ns)?;
        for path in &paths {
            let meta = self.metadata.borrow_mut().move_out(path)?;
            self.log_freeing(journal::Record::MoveOut {
                path,
                file_id: meta.file_id,
            })?;
        }
        if !paths.is_empty() {
            tracing::info!(dir = %req.dir, count = paths.len(), "stale records below a new directory removed");
        }
        let dir = path::normalize(&req.dir)?;
        let mut table = self.metadata.borrow_mut();
        if req.changed_before_ns == u64::MAX {
            // A directory is about to come here: creates below it go through again.
            table.unseal_name(&dir);
            table.mark_stale_below(&dir);
        } else {
            table.clear_stale_below(&dir);
        }
        Ok(Reply::ok(&op::CountReply {
            count: paths.len() as u64,
        }))
    }

    /// Changes to the table, each journaled before it is acknowledged.
    fn metadata_write(&self, op: OpCode, body: &[u8]) -> Result<Reply, Status> {
        match op {
            OpCode::MetadataCreateFile
            | OpCode::MetadataCreateDir
            | OpCode::MetadataCreateSymlink => self.create(op, decode(body)?),
            OpCode::MetadataDelete => {
                let req: op::DeleteRequest = decode(body)?;
                // The reply carries an inline record's bytes, so a delete that fails on
                // another replica can be undone whole.
                let data = self.metadata.borrow().record(&req.path)?.1.to_vec();
                if req.moved {
                    let meta = self.metadata.borrow_mut().move_out(&req.path)?;
                    tracing::debug!(path = %req.path, file_id = meta.file_id, "record moved out");
                    self.log_freeing(journal::Record::MoveOut {
                        path: &req.path,
                        file_id: meta.file_id,
                    })?;
                    return Ok(Reply::ok(&op::RecordReply { meta, data }));
                }
                let meta = self.metadata.borrow_mut().delete(&req.path, req.expect)?;
                tracing::debug!(path = %req.path, file_id = meta.file_id, "record deleted");
                self.log_freeing(journal::Record::Delete {
                    path: &req.path,
                    file_id: meta.file_id,
                })?;
                Ok(Reply::ok(&op::RecordReply { meta, data }))
            }
            OpCode::MetadataInsert => {
                let req: op::InsertRequest = decode(body)?;
                self.insert_record(&req)?;
                Ok(Reply::ok(&op::Empty))
            }
            OpCode::SetAttr => {
                let req: op::SetAttrRequest = decode(body)?;
                let meta = self.change_logged(&req.path, false, |t| t.set_attr(&req))?;
                Ok(Reply::ok(&op::MetadataReply { meta }))
            }
            OpCode::TouchDir => {
                let req: op::PathRequest = decode(body)?;
                let meta = self.change_logged(&req.path, false, |t| t.touch_dir(&req.path))?;
                Ok(Reply::ok(&op::MetadataReply { meta }))
            }
            _ => self.size_change(op, body),
        }
    }

    /// The changes of a record's size: an append's claim, an update (a writer's publish,
    /// a truncate) and the undo of either.
    fn size_change(&self, op: OpCode, body: &[u8]) -> Result<Reply, Status> {
        match op {
            OpCode::ClaimAppend => {
                let req: op::ClaimAppendRequest = decode(body)?;
                let before = self.metadata.borrow().lookup(&req.path);
                let meta = self.change_logged(&req.path, false, |t| {
                    t.claim_append(&req.path, req.file_id, req.floor, req.len)
                })?;
                Ok(Reply::ok(&size_reply(meta, before)))
            }
            OpCode::RestoreSize => {
                let req: op::RestoreSizeRequest = decode(body)?;
                let meta = self.change_logged(&req.path, false, |t| {
                    let now = (req.now_size, req.now_cut_gen, req.now_ctime_ns);
                    t.restore_size(&req.path, req.file_id, now, (req.size, req.cut_gen))
                })?;
                Ok(Reply::ok(&op::MetadataReply { meta }))
            }
            _ => {
                let req: op::UpdateSizeRequest = decode(body)?;
                // An exact size is a truncation, which may free chunks.
                let freeing = req.how == SizeUpdate::Exact;
                let before = self.metadata.borrow().lookup(&req.path);
                let held = before.map(|m| m.size);
                let logged = self.change_logged(&req.path, freeing, |t| {
                    t.update_size_counted(&req.path, req.file_id, (req.size, req.how), req.cut_gen)
                });
                let meta = match logged {
                    // Past what is asked already, only the time moves (a write in place):
                    // on a full disk it moves in memory alone rather than fail a close
                    // whose bytes all landed.
                    Err(Status::NoSpace) if !freeing && held.is_ok_and(|s| s >= req.size) => {
                        self.metadata.borrow_mut().update_size_counted(
                            &req.path,
                            req.file_id,
                            (req.size, req.how),
                            req.cut_gen,
                        )?
                    }
                    logged => logged?,
                };
                Ok(Reply::ok(&size_reply(meta, before)))
            }
        }
    }

    /// Cuts a file at chunk `index`, offset `len`: that chunk is shortened to `len` (removed
    /// at 0) and every later chunk of the file is removed. Clients send it to every server,
    /// since chunks may lie past the published size (a writer that never closed), and a
    /// chunk left past the end would show its old bytes when the file grows again. Never
    /// lengthens a chunk: bytes past a chunk's end read as zeros anyway.
    ///
    /// With an `end` (a growing truncate's range), only the bytes up to it go: a chunk
    /// holding bytes past the range has the range written with zeros, since appends
    /// claimed after the truncate land there.
    async fn truncate_file(&self, req: op::TruncateFileRequest) -> Result<Reply, Status> {
        let from = (req.index, req.len);
        let bad_end = req
            .end
            .is_some_and(|to| to.1 > self.chunk_size || to < from);
        if req.len > self.chunk_size || bad_end {
            return Err(Status::InvalidArgument);
        }
        if req.end.is_none() {
            // Before any wait: a write checked after this sees the cut.
            self.cuts
                .borrow_mut()
                .record(req.file_id, req.cut_gen, req.index, req.len);
        }
        let chunks = self
            .store
            .file_chunks(req.file_id)
            .await
            .map_err(store_status)?;
        for (index, stat) in chunks.into_iter().rev() {
            if index < from.0 || req.end.is_some_and(|to| index > to.0) {
                continue;
            }
            let id = ChunkId {
                file_id: req.file_id,
                index,
            };
            let start = if index == from.0 { from.1 } else { 0 };
            let end = match req.end {
                Some(to) if index == to.0 => to.1,
                _ => u64::MAX,
            };
            if start >= end || (start > 0 && stat.len <= start) {
                continue;
            }
            if stat.len <= end {
                match start {
                    0 => self.store.remove(id).await.map(drop),
                    start => self.store.truncate(id, start).await,
                }
                .map_err(store_status)?;
                self.rewritten.borrow_mut().cut(id, start);
                continue;
            }
            // The chunk holds bytes past the range, which ends in it (`end` is `to.1`).
            let len = (end - start) as usize;
            let mut zeros = self.store.buffer(len).await.map_err(store_status)?;
            zeros.as_mut_slice().fill(0);
            let (written, _) = self.store.write(id, start, zeros).await;
            written.map_err(store_status)?;
            self.rewritten
                .borrow_mut()
                .add(id, start, end, self.chunk_size);
        }
        Ok(Reply::ok(&op::Empty))
    }

    /// Makes every acknowledged chunk and metadata change durable.
    async fn fsync(&self) -> Result<Reply, Status> {
        self.sync_remade().map_err(|e| {
            tracing::error!(error = %e, "sync of the chunks made anew failed");
            Status::Io
        })?;
        self.store.sync().await.map_err(store_status)?;
        self.sync_metadata().map_err(|e| {
            tracing::error!(error = %e, "metadata sync failed");
            match &e {
                journal::JournalError::Io { source, .. }
                    if source.kind() == std::io::ErrorKind::ReadOnlyFilesystem =>
                {
                    Status::ReadOnly
                }
                _ => Status::Io,
            }
        })?;
        Ok(Reply::ok(&op::Empty))
    }

    /// What the store could still take (see [`op::StatsReply::room_bytes`]): a `df` of a
    /// mount adds these up, and a store without a capacity had it report exabytes.
    fn room_bytes(&self, usage: &benchfs_store::StoreUsage) -> u64 {
        let left = usage
            .capacity_bytes
            .map(|capacity| capacity.saturating_sub(usage.used_bytes));
        let free = match self.store.inner().backend() {
            // What the pool may still map: the host's or the job's available memory, less
            // the margin it keeps.
            benchfs_store::Backend::Memory => benchfs_store::memory_room(),
            _ => nix::sys::statvfs::statvfs(&self.data_dir)
                .ok()
                .map(|fs| fs.blocks_available().saturating_mul(fs.fragment_size())),
        };
        left.into_iter().chain(free).min().unwrap_or(u64::MAX)
    }

    /// This server's counters, as a `Stats` request answers them.
    pub fn stats(&self) -> op::StatsReply {
        let usage = self.store.usage();
        op::StatsReply {
            metadata_records: self.metadata.borrow().len() as u64,
            chunks: usage.chunks,
            used_bytes: usage.used_bytes,
            capacity_bytes: usage.capacity_bytes.unwrap_or(0),
            room_bytes: self.room_bytes(&usage),
            requests: self.counters.requests.get(),
            malformed: self.counters.malformed.get(),
            orphan_chunks_removed: self.counters.orphan_chunks_removed.get(),
            faults_injected: self.store.injected(),
            queue_depth: self.metrics.queue_depth(),
            queue_depth_max: self.metrics.queue_depth_max(),
            ops: self.metrics.ops(),
        }
    }

    /// Answers a `Hello`: this server's identity and settings, and `challenge` (empty
    /// when the server has no secret). The transport gives each connection its own
    /// challenge, so `Hello` and `Auth` are answered here and not by [`Self::handle`].
    pub fn hello(&self, body: &[u8], challenge: Vec<u8>) -> Reply {
        self.handshake_reply(|| {
            let req: op::HelloRequest = decode(body)?;
            tracing::debug!(client = %req.client, "hello");
            Ok(Reply::ok(&op::HelloReply {
                node_id: self.node_id.clone(),
                chunk_size: self.chunk_size,
                rdma_threshold: self.rendezvous_threshold,
                born_ns: self.born_ns,
                born_again: self.born_again,
                replicas: self.replicas,
                virtual_nodes: self.virtual_nodes,
                challenge,
            }))
        })
    }

    /// Checks an `Auth`: its proof of the job secret for the `challenge` this connection
    /// was given (none: it sent no `Hello`, or used its challenge already).
    pub fn authenticate(&self, body: &[u8], challenge: Option<&[u8]>, client: &str) -> Reply {
        self.handshake_reply(|| {
            let req: op::AuthRequest = decode(body)?;
            let proven =
                challenge.is_some_and(|c| benchfs_proto::auth::verify(&self.secret, c, &req.proof));
            if !proven {
                tracing::warn!(client, "handshake refused: no proof of the job secret");
                return Err(Status::PermissionDenied);
            }
            Ok(Reply::ok(&op::Empty))
        })
    }

    fn handshake_reply(&self, answer: impl FnOnce() -> Result<Reply, Status>) -> Reply {
        self.counters.requests.set(self.counters.requests.get() + 1);
        let reply = Reply::from(answer());
        if reply.status == Status::Protocol {
            self.counters.note_malformed();
        }
        reply
    }

    fn check_range(&self, req: &op::ChunkIo) -> Result<(ChunkId, usize), Status> {
        let end = req
            .offset
            .checked_add(req.len)
            .ok_or(Status::InvalidArgument)?;
        if end > self.chunk_size {
            return Err(Status::InvalidArgument);
        }
        let len = usize::try_from(req.len).map_err(|_| Status::InvalidArgument)?;
        // A file sealed for good was deleted and its chunks are gone or going: a handle
        // still open on it must not read them as a hole, nor write new ones.
        if self.metadata.borrow().seal_of(req.file_id) == Some(Seal::ForGood) {
            return Err(Status::Stale);
        }
        Ok((
            ChunkId {
                file_id: req.file_id,
                index: req.index,
            },
            len,
        ))
    }

    async fn write_chunk(&self, req: op::ChunkWrite, payload: Payload<'_>) -> Reply {
        let (id, len) = match self.check_range(&req.io) {
            Ok(v) => v,
            Err(s) => return Reply::error(s),
        };
        match self.leaves_lost_bytes(id, &req).await {
            Ok(false) => {}
            Ok(true) => {
                tracing::warn!(
                    file_id = id.file_id,
                    index = id.index,
                    offset = req.io.offset,
                    "a chunk write would leave bytes before it that this store may have lost; refused"
                );
                return Reply::error(Status::Lost);
            }
            Err(e) => return Reply::error(store_status(e)),
        }
        let buf = match payload {
            Payload::Buf(b) if b.len() == len => b,
            Payload::Bytes(bytes) if bytes.len() == len => {
                let mut buf = match self.store.buffer(len).await {
                    Ok(b) => b,
                    Err(e) => return Reply::error(store_status(e)),
                };
                buf.as_mut_slice().copy_from_slice(bytes);
                buf
            }
            _ => return Reply::error(Status::Protocol),
        };
        let Some(buf) = self.short_of_cuts(&req, buf) else {
            return Reply::ok(&op::ChunkIoReply::moved(req.io.len));
        };
        let landed = (req.io.offset, req.io.offset + buf.len() as u64);
        let (r, _buf) = self.store.write(id, req.io.offset, buf).await;
        match r {
            Ok(()) => {
                let mut rewritten = self.rewritten.borrow_mut();
                if req.hole_before {
                    // A repair's: the gap it leaves is the file's hole.
                    let hole_start = req.chunk_held.min(landed.0);
                    rewritten.add(id, hole_start, landed.0, self.chunk_size);
                }
                rewritten.add(id, landed.0, landed.1, self.chunk_size);
                Reply::ok(&op::ChunkIoReply::moved(req.io.len))
            }
            Err(e) => Reply::error(store_status(e)),
        }
    }

    /// Whether chunk `id`, of a file born at `file_birth_ns`, holds only bytes written
    /// since this store began: the file is older than the store and the store did not
    /// keep the chunk through its start.
    fn made_after_store_began(&self, id: ChunkId, file_birth_ns: u64) -> bool {
        file_birth_ns < self.born_ns && !self.store.kept_since_open(id)
    }

    /// What of a write's buffer may land: an append's bytes past a cut that came after its
    /// claim are dropped, since the cut removed them (see `cuts`). `None` when nothing
    /// lands; the write is still answered in full, as it took effect before the cut.
    fn short_of_cuts(&self, req: &op::ChunkWrite, mut buf: ChunkBuf) -> Option<ChunkBuf> {
        let io = &req.io;
        let landing = self.cuts.borrow().landing(
            io.file_id,
            req.append_cut_gen,
            (io.index, io.offset, io.len),
        );
        if landing < io.len {
            tracing::debug!(
                file_id = io.file_id,
                index = io.index,
                offset = io.offset,
                len = io.len,
                landing,
                "an append claimed before a later cut: its bytes past the cut dropped"
            );
        }
        match landing {
            0 => None,
            // Below the length, so it fits a usize as the length did.
            n => {
                buf.truncate(n as usize);
                Some(buf)
            }
        }
    }

    /// Whether the write would leave bytes unwritten before it that the file held when the
    /// writer opened it, in a store that began after the file: zeros there would then read
    /// as bytes that were written and lost with the store (`Status::Lost`). A chunk made
    /// since the store began holds only bytes written since, so the check at each write
    /// keeps every gap in it one the file did not hold as far as the writer knew; a write
    /// the check lets through that makes the chunk starts the record of which of its
    /// bytes were written (`rewritten`), for the bytes others wrote that it did not know.
    async fn leaves_lost_bytes(
        &self,
        id: ChunkId,
        req: &op::ChunkWrite,
    ) -> Result<bool, StoreError> {
        // The chunk's length, once stat'd.
        let mut stat_len = None;
        if self.rewritten.borrow().made_earlier(id) {
            let len = self.store.stat(id).await?.map(|s| s.len);
            self.rewritten.borrow_mut().found(id, len.is_some());
            stat_len = Some(len);
        }
        if !self.made_after_store_began(id, req.file_birth_ns) {
            return Ok(false);
        }
        let len = match stat_len {
            Some(len) => len,
            None => self.store.stat(id).await?.map(|s| s.len),
        };
        let skipped_end = req.io.offset.min(req.chunk_held);
        let leaves = len.unwrap_or(0) < skipped_end;
        if len.is_none() && !leaves {
            // Before the write, so that a write beside it finds the chunk kept.
            let last_cut = self.cuts.borrow().last(id.file_id);
            self.rewritten
                .borrow_mut()
                .track(id, last_cut)
                .map_err(|source| StoreError::Io {
                    op: "list a chunk made anew",
                    source,
                })?;
        }
        Ok(leaves)
    }

    async fn read_chunk(&self, req: op::ChunkIo) -> Reply {
        let (id, len) = match self.check_range(&req) {
            Ok(v) => v,
            Err(s) => return Reply::error(s),
        };
        // The copy into a buffer took a memory server about half its time reading.
        if let Some(view) = self.store.read_in_place(id, req.offset, len) {
            let read = view.len() as u64;
            return self.read_reply(id, &req, read, ReplyPayload::View(view));
        }
        let buf = match self.store.buffer(len).await {
            Ok(b) => b,
            Err(e) => return Reply::error(store_status(e)),
        };
        let (r, mut buf) = self.store.read(id, req.offset, buf).await;
        let n = match r {
            Ok(n) => n,
            Err(e) => return Reply::error(store_status(e)),
        };
        buf.truncate(n);
        self.read_reply(id, &req, n as u64, ReplyPayload::Buf(buf))
    }

    /// The reply to a read of `req` that found `read` bytes, carried by `payload`.
    fn read_reply(
        &self,
        id: ChunkId,
        req: &op::ChunkIo,
        read: u64,
        payload: ReplyPayload,
    ) -> Reply {
        match self.judge_read(id, req, read) {
            Ok(whole) => Reply {
                status: Status::Ok,
                body: op::ChunkIoReply { len: read, whole }.to_bytes(),
                payload: Some(payload),
                body_file_bytes: [0; 2],
            },
            Err(status) => Reply::error(status),
        }
    }

    /// A read of `req` that found `read` bytes: refused (`Lost`) when they reach bytes of
    /// a chunk made anew that no write since covered (zeros the store filled a gap with),
    /// else whether the rest it asked for is a hole for sure (`ChunkIoReply::whole`): a
    /// chunk the store kept through its start (not one made anew, which may have been cut
    /// short of bytes it lost), or known to be one past a cut this server took.
    fn judge_read(&self, id: ChunkId, req: &op::ChunkIo, read: u64) -> Result<bool, Status> {
        let rewritten = self.rewritten.borrow();
        let found_end = req.offset + read;
        if !rewritten.covers(id, req.offset, found_end) {
            tracing::warn!(
                file_id = id.file_id,
                index = id.index,
                offset = req.offset,
                len = req.len,
                "a read reaches bytes of a chunk made anew that no write covered; refused"
            );
            return Err(Status::Lost);
        }
        let asked_end = req.offset + req.len;
        if rewritten.tracks(id) {
            return Ok(found_end < asked_end && rewritten.covers(id, found_end, asked_end));
        }
        let past_a_cut = read == 0
            && self
                .cuts
                .borrow()
                .last(id.file_id)
                .is_some_and(|(index, len)| {
                    id.index > index || (id.index == index && req.offset >= len)
                });
        Ok(self.store.kept_since_open(id) || past_a_cut)
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The chunk store did not open.
    #[error("chunk store: {0}")]
    Store(#[from] StoreError),
    /// The metadata journal could not be read or created.
    #[error("metadata journal: {0}")]
    Journal(#[from] JournalError),
    /// A record the store keeps beside its data (its birth `data_dir/born`, its
    /// `placement`, the clean-stop mark, its chunks made anew) could not be read or made.
    #[error("{}: {source}", path.display())]
    Born {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The data directory holds files of a cluster the registry does not know this node in.
    #[error("{}: this data directory holds {records} records and {chunks} chunks of a cluster whose registry was not {} (it marks no {node_id}.member there): in this cluster, whose servers may be others, its files would read as holes. Start on an empty data directory (remove it, or give each job its own node.data_dir), or with the registry it served in", data_dir.display(), registry.display())]
    ForeignData {
        /// The server's data directory.
        data_dir: std::path::PathBuf,
        /// The registry the server was started with.
        registry: std::path::PathBuf,
        /// The server's node id.
        node_id: String,
        /// Metadata records the data directory holds.
        records: usize,
        /// Chunks it holds.
        chunks: u64,
    },
    /// The data directory holds the store of another node, or of another placement.
    #[error("{}: this data directory holds the data of {found}, and this server is {expected}: start it with the node id and placement.virtual_nodes its data was placed with, or give it another data directory", path.display())]
    Placement {
        /// The data directory's placement record.
        path: std::path::PathBuf,
        /// What the record says.
        found: String,
        /// What this server's configuration says.
        expected: String,
    },
}

/// Checks a disk store against the node and placement its data was written for
/// (`data_dir/placement`, written at its first start): a server started on it as another
/// node (data directories swapped) or with another virtual-node count (every server's
/// keys move) would answer for records and chunks it never held, as "not found" and holes.
fn check_placement_record(config: &ServerConfig) -> Result<(), OpenError> {
    let path = config.node.data_dir.join("placement");
    let expected = format!(
        "node_id = {:?}\nvirtual_nodes = {}\n",
        config.node.node_id, config.placement.virtual_nodes
    );
    let as_line = |text: &str| text.trim().replace('\n', ", ");
    match std::fs::read_to_string(&path) {
        Ok(found) if found == expected => Ok(()),
        Ok(found) => Err(OpenError::Placement {
            found: as_line(&found),
            expected: as_line(&expected),
            path,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_durably(&path, &expected).map_err(|source| OpenError::Born { path, source })
        }
        Err(source) => Err(OpenError::Born { path, source }),
    }
}

/// The reply to a size change that left `meta` of a record that was `before` (the size and
/// cut count a client puts back if another replica fails the change).
fn size_reply(meta: FileMetadata, before: Result<FileMetadata, Status>) -> op::SizeReply {
    let before = before.unwrap_or(meta);
    op::SizeReply {
        meta,
        size_before: before.size,
        cut_gen_before: before.cut_gen,
    }
}

/// Checks that a disk store holding files (`records` records, `chunks` chunks) served in
/// the cluster of this server's registry: the registry marks every node that published
/// there (`<node_id>.member`), and `cluster up` marks each node of a new cluster. A new
/// job's registry that does not know this node while its data directory holds an earlier
/// job's files (under `mpirun`, `data_dir/r<rank>` is the same path in every job) would
/// serve them in a ring of other members: a file whose record stayed put and whose
/// chunks were placed on a server that is gone, or moved, reads as holes.
fn check_registry_knows_data(
    config: &ServerConfig,
    records: usize,
    chunks: u64,
) -> Result<(), OpenError> {
    let registry = &config.network.registry_dir;
    let marker = benchfs_config::registry::member_path(registry, &config.node.node_id);
    if (records == 0 && chunks == 0) || marker.exists() {
        return Ok(());
    }
    Err(OpenError::ForeignData {
        data_dir: config.node.data_dir.clone(),
        registry: registry.clone(),
        node_id: config.node.node_id.clone(),
        records,
        chunks,
    })
}

/// A server's mark of a clean stop, in its data directory: written after the final syncs
/// succeeded, renamed to `running` at start (and back at a clean stop, so a full
/// disk with no inode left still takes it). A tiered store that finds none after an earlier run begins
/// a new store birth, since the chunks its memory tier had not written back are gone;
/// `cluster down` reports a server that exited without it.
pub const CLEAN_STOP_FILE: &str = "stopped-cleanly";

/// The clean-stop mark while its server runs (see [`CLEAN_STOP_FILE`]).
const RUNNING_FILE: &str = "running";

/// The smallest unit a device writes whole.
const SECTOR: usize = 512;

/// Writes `text` to `path` by a synced temporary file renamed over it, then syncs the
/// directory: after a crash, `path` holds the old text or the new, whole. On a full disk
/// an existing `path` is overwritten in place instead, which takes no new block for a text
/// of a sector or less (a server must start on a full disk, to take deletes): a
/// crash mid-write could tear it only within one sector, which devices write whole.
fn write_durably(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let replaced = std::fs::File::create(&tmp).and_then(|mut file| {
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    });
    match replaced {
        Ok(()) => sync_dir(path.parent().unwrap_or(std::path::Path::new("."))),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            let full = matches!(
                e.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            );
            if !full || text.len() > SECTOR {
                return Err(e);
            }
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|_| e)?;
            std::os::unix::fs::FileExt::write_all_at(&file, text.as_bytes(), 0)?;
            file.set_len(text.len() as u64)?;
            file.sync_all()
        }
    }
}

/// Removes the mark a tiered store left in `data_dir`, if any.
fn forget_tiered_run(data_dir: &std::path::Path) {
    let mark = data_dir.join(benchfs_store::TIERED_MARK_FILE);
    match std::fs::remove_file(&mark) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(path = %mark.display(), error = %e, "a tiered store's mark not removed");
        }
        _ => {}
    }
}

/// What a disk store's earlier lives knew of the chunks they made anew (none for memory).
fn open_remade(
    config: &ServerConfig,
    store: &AnyChunkStore,
) -> Result<rewritten::Rewritten, OpenError> {
    let data_dir = (store.backend() != benchfs_store::Backend::Memory)
        .then_some(config.node.data_dir.as_path());
    rewritten::Rewritten::open(data_dir).map_err(|source| OpenError::Born {
        path: config.node.data_dir.join(rewritten::REMADE_FILE),
        source,
    })
}

/// Whether `data_dir` holds the [`CLEAN_STOP_FILE`] of the last run; renames it to
/// [`RUNNING_FILE`] (durably), since only this run's own clean stop may put it back.
fn take_clean_stop_mark(data_dir: &std::path::Path) -> Result<bool, OpenError> {
    let mark = data_dir.join(CLEAN_STOP_FILE);
    let running = data_dir.join(RUNNING_FILE);
    let taken = match std::fs::rename(&mark, &running) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Made now, while the disk may have an inode for it, for the stop to rename.
            if let Err(e) = std::fs::File::create(&running) {
                tracing::warn!(path = %running.display(), error = %e, "cannot make the mark a clean stop renames");
            }
            false
        }
        Err(source) => return Err(OpenError::Born { path: mark, source }),
    };
    sync_dir(data_dir).map_err(|source| OpenError::Born { path: mark, source })?;
    Ok(taken)
}

fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir).and_then(|dir| dir.sync_all())
}

/// When this server's chunk store began: now for a memory store; for a disk store, the
/// time its data directory first held a store (`data_dir/born`, made on first start). A
/// store that has chunks but no record predates it and counts as born at 0 (nothing is
/// known to be lost). A tiered store whose last run did not stop cleanly (no
/// [`CLEAN_STOP_FILE`]: kill -9, a crash) may have lost the chunks its memory tier had not
/// written back, so it is born again now (and never before its last birth, whatever the
/// clock says): a chunk missing there then reads as lost (from another replica, or an
/// error), never as zeros. So is a store whose journal is gone (`journal_missing`: moved
/// aside after it would not replay) while its birth record or chunks stay: the numbers
/// its files had are unknown, so it numbers new ones under a new tag, never as a file
/// whose chunks are still here (a new file would read a lost one's bytes, and a write to
/// it would overwrite a surviving file's).
fn store_born_ns(
    config: &ServerConfig,
    store: &AnyChunkStore,
    journal_missing: bool,
) -> Result<u64, OpenError> {
    // Taken whatever the backend, so a mark found later is this run's own.
    let stopped_cleanly = take_clean_stop_mark(&config.node.data_dir)?;
    if store.backend() == benchfs_store::Backend::Memory {
        return Ok(now_ns());
    }
    let path = config.node.data_dir.join("born");
    let born_error = |source| OpenError::Born {
        path: path.clone(),
        source,
    };
    // A tiered store's crash loses its memory tier whatever backend starts next on its
    // data (another one read the chunks it lost as holes of zeros).
    let tiered_ran = config
        .node
        .data_dir
        .join(benchfs_store::TIERED_MARK_FILE)
        .exists();
    let lost_unwritten =
        (store.backend() == benchfs_store::Backend::Tiered || tiered_ran) && !stopped_cleanly;
    let numbers_unknown = journal_missing && (path.exists() || store.usage().chunks > 0);
    if (lost_unwritten && path.exists()) || numbers_unknown {
        // After the last birth even if the clock went back: files made before the stop
        // must count as older than this store.
        let last: u64 = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0);
        let born = now_ns().max(last + 1);
        match numbers_unknown {
            true => tracing::warn!(
                "the metadata journal is missing from a data directory that held a store: \
                 new files are numbered apart from the earlier ones, whose chunks the \
                 orphan sweep removes"
            ),
            false => tracing::warn!(
                "the last run did not stop cleanly: chunks its memory tier had not written \
                 back are lost, and read as lost"
            ),
        }
        write_durably(&path, &format!("{born}\n")).map_err(born_error)?;
        return Ok(born);
    }
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map_err(|_| {
            born_error(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{text:?} is not a time in nanoseconds"),
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let born = if store.usage().chunks > 0 {
                0
            } else {
                now_ns()
            };
            // Durable before any inode number is handed out under the tag it gives: a
            // record lost to a power cut would otherwise leave an empty file that no
            // start accepts.
            write_durably(&path, &format!("{born}\n")).map_err(born_error)?;
            Ok(born)
        }
        Err(e) => Err(born_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::in_turn;

    #[test]
    fn rounds_take_every_id_in_turn() {
        let ids = vec![9, 3, 7, 1, 5, 3];
        assert_eq!(in_turn(ids.clone(), 0, 2), [1, 3]);
        assert_eq!(in_turn(ids.clone(), 3, 2), [5, 7]);
        // Past the end, the next round starts again from the first.
        assert_eq!(in_turn(ids.clone(), 7, 2), [9, 1]);
        assert_eq!(in_turn(ids.clone(), 9, 10), [1, 3, 5, 7, 9]);
        assert_eq!(in_turn(ids, 4, 10), [5, 7, 9, 1, 3]);
    }
}
