//! The namespace: lookup and create of records, stat, mkdir, unlink, rmdir, readdir,
//! truncate and rename.

use std::collections::BTreeMap;
use std::time::Instant;

use benchfs_proto::layout::ChunkLayout;
use benchfs_proto::meta::{cut_gen_older, next_cut_gen, EntryKind, FileMetadata, SizeUpdate};
use benchfs_proto::placement::{PlacementKey, ServerIndex};
use benchfs_proto::{ops, path, Status};
use futures_util::future::join_all;

use super::data::WriteSource;
use super::inline::{Inline, Record};
use super::routing::is_unreachable;
use super::tree::CLOCK_SKEW_MAX_NS;
use super::{ends_in_dot, fanout, fs_err, names_dir, norm, rpc_err, DirEntry, FsClient};
use crate::error::ApiError;
use crate::rpc::{OutPayload, RpcError};

/// How many times a truncate sends its cut again after appends or size updates grew the
/// file back meanwhile; past it, an append claimed during the last round may land beyond
/// the end (as every append did before cuts were counted).
const CUT_ROUNDS_MAX: usize = 4;

impl FsClient {
    /// The metadata of a normalised path, from the cache if allowed.
    pub(super) async fn lookup(
        &self,
        op: &'static str,
        path: &str,
        cached: bool,
    ) -> Result<FileMetadata, ApiError> {
        self.lookup_as::<ops::MetadataLookup>(op, path, cached)
            .await
    }

    /// [`FsClient::lookup`] whose request to the owner is `R`, a lookup.
    async fn lookup_as<R>(
        &self,
        op: &'static str,
        path: &str,
        cached: bool,
    ) -> Result<FileMetadata, ApiError>
    where
        R: benchfs_proto::Rpc<Request = ops::PathRequest, Reply = ops::MetadataReply>,
    {
        if path == "/" {
            return Ok(self.root());
        }
        // Only directory records are served from the cache: a file's size changes with
        // every other client's close, and a stat must see it (IOR checks sizes across
        // ranks, mdtest times real stats).
        if cached {
            if let Some(m) = self.meta_cache.borrow_mut().get(path) {
                if m.is_dir() {
                    return Ok(m);
                }
            }
        }
        match self.lookup_uncached::<R>(path).await {
            Ok(meta) => Ok(meta),
            Err(e) if e.status() == Status::NotFound => Err(self.why_not_found(op, path, e).await),
            Err(e) => Err(rpc_err(op, path)(e)),
        }
    }

    /// A path's record from its replicas by `R`, a lookup.
    async fn lookup_uncached<R>(&self, path: &str) -> Result<FileMetadata, RpcError>
    where
        R: benchfs_proto::Rpc<Request = ops::PathRequest, Reply = ops::MetadataReply>,
    {
        let (reply, _) = self
            .read_any::<R>(
                PlacementKey::Metadata(path),
                &ops::PathRequest {
                    path: path.to_string(),
                },
            )
            .await?;
        self.meta_cache.borrow_mut().put(path, reply.meta);
        Ok(reply.meta)
    }

    /// A path with no record: `NotDir` if its nearest existing ancestor is a file (as
    /// POSIX says of "/file/x"), else the `NotFound` the lookup gave. Only failed lookups
    /// pay for the walk, and a cached parent costs nothing.
    pub(super) async fn why_not_found(
        &self,
        op: &'static str,
        path: &str,
        not_found: RpcError,
    ) -> ApiError {
        let mut ancestor = path;
        while let Ok((parent, _)) = path::split_parent(ancestor) {
            if parent == "/" {
                break;
            }
            let cached = self.meta_cache.borrow_mut().get(parent);
            let found = match cached {
                Some(meta) => Ok(meta),
                None => self.lookup_uncached::<ops::MetadataLookup>(parent).await,
            };
            match found {
                Ok(meta) if meta.is_dir() => break,
                Ok(_) => return fs_err(op, path, Status::NotDir),
                Err(e) if e.status() == Status::NotFound => ancestor = parent,
                Err(_) => break,
            }
        }
        rpc_err(op, path)(not_found)
    }

    pub(super) async fn check_parent(
        &self,
        op: &'static str,
        path: &str,
    ) -> Result<FileMetadata, ApiError> {
        let (parent, _) = path::split_parent(path).map_err(|source| ApiError::Path {
            path: path.to_string(),
            source,
        })?;
        // A cached directory stands; else the owner is asked in a way that marks the name
        // if it is missing (`MetadataLookupParent`): this call's create may land below it
        // and this process die before it removes that record again.
        let found = self
            .lookup_as::<ops::MetadataLookupParent>(op, parent, true)
            .await;
        match found {
            Ok(m) if m.is_dir() => Ok(m),
            Ok(_) => {
                let owner = self.replica_set(PlacementKey::Metadata(parent))[0];
                Err(rpc_err(op, path)(RpcError::Status {
                    server: self.servers[owner as usize].name(),
                    status: Status::NotDir,
                }))
            }
            // The call's own path, as mkdir(1) says (with the server that said so): named
            // alone, the parent read as the path the call was about.
            Err(ApiError::Rpc { op, source, .. }) if source.status() == Status::NotFound => {
                Err(rpc_err(op, path)(source))
            }
            Err(e) if e.status() == Some(Status::NotFound) => {
                Err(fs_err(op, path, Status::NotFound))
            }
            Err(e) => Err(e),
        }
    }

    pub(super) fn forget(&self, path: &str) {
        self.meta_cache.borrow_mut().remove(path);
    }

    /// Creates a record on the owner, then copies it to the other replicas. If a replica
    /// does not take the copy, the record is removed again from those that hold it, so
    /// the replicas stay equal: a create happens on every replica or on none. Returns the
    /// record and, for a directory, whether stale records may lie below its name.
    pub(super) async fn create_record(
        &self,
        op: &'static str,
        path: &str,
        kind: EntryKind,
        mode: u32,
    ) -> Result<(FileMetadata, bool), RpcError> {
        let key = PlacementKey::Metadata(path);
        let servers = self.replica_set(key);
        let req = ops::CreateRequest {
            path: path.to_string(),
            mode,
            chunk_size: self.create_chunk_size.get(),
            uid: self.owner.get().uid,
            gid: self.owner.get().gid,
        };
        let none = OutPayload::none;
        let (meta, stale_below) = match kind {
            EntryKind::File => {
                let call = self.call_on::<ops::MetadataCreateFile>(servers[0], &req, none());
                (call.await?.0.meta, false)
            }
            EntryKind::Directory => {
                let call = self.call_on::<ops::MetadataCreateDir>(servers[0], &req, none());
                let reply = call.await?.0;
                (reply.meta, reply.stale_below)
            }
            EntryKind::Symlink => {
                let call = self.call_on::<ops::MetadataCreateSymlink>(servers[0], &req, none());
                (call.await?.0.meta, false)
            }
        };
        // Only where the path has no record: a replica may hold a file the owner lost (a
        // memory server restarted empty), which a copy would replace.
        let insert = ops::InsertRequest {
            path: path.to_string(),
            meta,
            exclusive: true,
            settled_only: false,
            newer_only: false,
            data: Vec::new(),
        };
        let insert = &insert;
        let copies = join_all(servers[1..].iter().map(|&s| async move {
            let copied = self.call_on::<ops::MetadataInsert>(s, insert, OutPayload::none());
            match copied.await {
                // Another client met the record on the first replica and copied it here
                // before this copy came (see `FsClient::change_record`): it is
                // this file's, with the changes made to it since.
                Err(e)
                    if e.status() == Status::Exists && self.names(s, path, meta.file_id).await =>
                {
                    Ok(())
                }
                copied => copied.map(drop),
            }
        }))
        .await;
        let (mut holders, failed) = took_it(servers[1..].iter().copied().zip(copies));
        let Some(e) = failed else {
            return Ok((meta, stale_below));
        };
        holders.push(servers[0]);
        tracing::warn!(error = %e, op, path, "a replica did not take the new record; removing it");
        self.undo_put(path, None, &holders).await;
        Err(e)
    }

    /// Whether server `server`'s record of `path` names file `file_id`.
    async fn names(&self, server: ServerIndex, path: &str, file_id: u64) -> bool {
        let lookup = ops::PathRequest {
            path: path.to_string(),
        };
        self.call_on::<ops::MetadataLookup>(server, &lookup, OutPayload::none())
            .await
            .is_ok_and(|(reply, _)| reply.meta.file_id == file_id)
    }

    /// Undoes a record put on `servers` at `path`: puts back `previous` (what the path
    /// held before, with its bytes), or removes the record. A server that does not answer
    /// is logged: its replica now differs, and calls that name a file there refuse with
    /// `Stale`. One that did not answer a call lately is not asked, and waited for: a
    /// directory rename that a stopped server failed undoes its entries one by one, and
    /// waited out a timeout for each (140 s for 300 entries, found by a hostile-user run).
    /// A removal is left with it instead ([`FsClient::leave_note`]), so a server that took
    /// the put and then stopped drops the record once it runs again. (A server whose put
    /// timed out is no holder: it refuses the put when it runs again, past its deadline,
    /// unless it had started it.)
    pub(super) async fn undo_put(
        &self,
        path: &str,
        previous: Option<&Record>,
        servers: &[ServerIndex],
    ) {
        let silent = self.undo_put_where_answering(path, previous, servers).await;
        for server in silent {
            match previous {
                Some(_) => {
                    let server = self.servers[server as usize].name();
                    tracing::error!(server, path, "undo not sent to a server that did not answer lately: the replicas of this record differ");
                }
                None => {
                    let req = removal(path);
                    self.leave_note::<ops::MetadataDelete>(server, &req, path)
                        .await;
                }
            }
        }
    }

    /// [`FsClient::undo_put`] on the servers that answered lately; returns the others,
    /// not asked.
    pub(super) async fn undo_put_where_answering(
        &self,
        path: &str,
        previous: Option<&Record>,
        servers: &[ServerIndex],
    ) -> Vec<ServerIndex> {
        let answers = match previous {
            Some(record) => answered(
                self.ask_each::<ops::MetadataInsert>(servers, &replacing(path, record))
                    .await,
            ),
            None => answered(
                self.ask_each::<ops::MetadataDelete>(servers, &removal(path))
                    .await,
            ),
        };
        let mut silent = Vec::new();
        for (server, answer) in answers {
            match answer {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    tracing::error!(error = %e, path, "undo failed: the replicas of this record differ");
                }
                None => silent.push(server),
            }
        }
        self.forget(path);
        silent
    }

    /// Creates a record and checks its parent at once: the two live on different servers,
    /// so a create costs one round trip, not two. A record made under a parent that turns
    /// out to be missing (or not a directory) is removed again. A new directory whose
    /// owner marked its name (a directory left it, a rename stopped there) then gets rid
    /// of stale records below it (`purge_below`; one more round trip), or is removed
    /// again if a server does not answer.
    pub(super) async fn create_checked(
        &self,
        op: &'static str,
        path: &str,
        kind: EntryKind,
        mode: u32,
    ) -> Result<Result<FileMetadata, RpcError>, ApiError> {
        let (parent, created) = futures_util::future::join(
            self.check_parent(op, path),
            self.create_record(op, path, kind, mode),
        )
        .await;
        let parent = match parent {
            Ok(parent) => parent,
            Err(e) => {
                if created.is_ok() {
                    if let Err(undo) = self.delete_record(op, path, kind, false).await {
                        tracing::warn!(error = %undo, path, "could not remove a record made under a missing parent");
                    }
                }
                return Err(e);
            }
        };
        let (meta, stale_below) = match created {
            Ok(created) => created,
            Err(e) => return Ok(Err(e)),
        };
        if stale_below {
            let made_ns = meta.ctime_ns.saturating_sub(CLOCK_SKEW_MAX_NS);
            if let Err(e) = self.purge_below(op, path, made_ns).await {
                if let Err(undo) = self.delete_record(op, path, kind, false).await {
                    tracing::warn!(error = %undo, path, "could not remove a directory whose stale entries were not cleared");
                }
                return Err(e);
            }
        }
        let meta = self.take_parents_group(op, path, &parent, meta).await?;
        self.touch_parents(&[path]).await;
        Ok(Ok(meta))
    }

    /// Gives a record this client just made at `path` what a set-group-ID `parent` passes
    /// on, as Linux does: its group, and to a directory the bit itself, so that a project
    /// directory's files belong to its group. One more call, only below such a directory
    /// (the parent's record is another server's, asked beside the create).
    pub(super) async fn take_parents_group(
        &self,
        op: &'static str,
        path: &str,
        parent: &FileMetadata,
        meta: FileMetadata,
    ) -> Result<FileMetadata, ApiError> {
        let Some((gid, mode)) = inherited_group(parent, &meta) else {
            return Ok(meta);
        };
        let req = ops::SetAttrRequest {
            path: path.to_string(),
            file_id: meta.file_id,
            set: ops::set_attr::GID | ops::set_attr::MODE,
            mode,
            uid: meta.uid,
            gid,
            atime_ns: meta.atime_ns,
            mtime_ns: meta.mtime_ns,
            ctime_ns: meta.ctime_ns,
        };
        let reply = self
            .change_record::<ops::SetAttr>(path, meta.file_id, &req)
            .await
            .map_err(rpc_err(op, path))?;
        self.meta_cache.borrow_mut().put(path, reply.meta);
        Ok(reply.meta)
    }

    /// The metadata of a path.
    pub async fn stat(&self, path: &str) -> Result<FileMetadata, ApiError> {
        let given = path;
        let path = norm(path)?;
        self.flush_path(&path).await?;
        // Not from the cache: another client's change to a directory (its times, its
        // mode) shows at once, as a file's size does.
        let meta = self.lookup("stat", &path, false).await?;
        if names_dir(given) && !meta.is_dir() {
            return Err(fs_err("stat", &path, Status::NotDir));
        }
        Ok(meta)
    }

    /// Creates a directory.
    pub async fn mkdir(&self, path: &str, mode: u32) -> Result<(), ApiError> {
        let given = path;
        let path = norm(path)?;
        if path == "/" {
            return Err(fs_err("mkdir", &path, Status::Exists));
        }
        // "/d/." makes nothing: EEXIST if "/d" is a directory, else why it is not.
        if ends_in_dot(given) {
            return match self.lookup("mkdir", &path, false).await?.is_dir() {
                true => Err(fs_err("mkdir", &path, Status::Exists)),
                false => Err(fs_err("mkdir", &path, Status::NotDir)),
            };
        }
        let meta = self
            .create_checked("mkdir", &path, EntryKind::Directory, mode)
            .await?
            .map_err(rpc_err("mkdir", &path))?;
        self.meta_cache.borrow_mut().put(&path, meta);
        Ok(())
    }

    /// Removes the record of `path` from every replica; returns what they held, with the
    /// bytes of an inline one (two records if the replicas differed). `moved`: a rename took it elsewhere, so the
    /// servers keep no tombstone (peers' orphan sweeps remove a file's chunks only on a
    /// tombstone). If a replica fails, the record is put back where it was removed, so a
    /// delete happens on every replica or on none; a replica that had no record counts
    /// as removed.
    pub(super) async fn delete_record(
        &self,
        op: &'static str,
        path: &str,
        expect: EntryKind,
        moved: bool,
    ) -> Result<Vec<Record>, ApiError> {
        self.forget(path);
        let req = ops::DeleteRequest {
            path: path.to_string(),
            expect: Some(expect),
            moved,
        };
        let answers = self
            .write_each::<ops::MetadataDelete>(
                PlacementKey::Metadata(path),
                &req,
                WriteSource::NONE,
            )
            .await;
        let mut removed = Vec::new();
        let mut missing = None;
        let mut failed = None;
        for (server, answer) in answers {
            match answer {
                Ok(reply) => removed.push((
                    server,
                    Record {
                        meta: reply.meta,
                        data: reply.data,
                    },
                )),
                Err(e) if e.status() == Status::NotFound => missing = Some(e),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        if let Some(e) = failed {
            let undos = removed.iter().map(|(server, record)| {
                self.undo_put(path, Some(record), std::slice::from_ref(server))
            });
            join_all(undos).await;
            return Err(rpc_err(op, path)(e));
        }
        if let (Some(e), true) = (missing, removed.is_empty()) {
            return Err(rpc_err(op, path)(e));
        }
        let mut records: Vec<Record> = removed.into_iter().map(|(_, r)| r).collect();
        records.sort_by_key(|r| r.meta.file_id);
        records.dedup_by_key(|r| r.meta.file_id);
        Ok(records)
    }

    /// Removes every chunk of a deleted file from every server: a file may hold chunks
    /// past its published size (a writer that never closed, a write that failed midway),
    /// so the size cannot say where they are. A server that does not answer keeps its
    /// chunks until its orphan sweep finds the file's tombstone; the delete has happened
    /// either way, so that is logged, not returned.
    ///
    /// A file may still have another name (a rename that failed half way leaves two), or
    /// get one back (the undo of another client's failed call), so the chunks go only when
    /// every server has sealed the file: none names it, and none will store a record of it
    /// again. The seals are tentative first (`SealFiles`), lifted if a server still names
    /// the file or does not answer (the orphan sweep then asks again), then for good
    /// (`SealFilesForGood`), which another sealer's lifting cannot undo.
    pub(super) async fn remove_chunks(&self, path: &str, meta: FileMetadata) {
        self.chunk_cache.borrow_mut().invalidate_file(meta.file_id);
        let file_id = meta.file_id;
        if let Err((why, answered)) = self.seal_on_all::<ops::SealFiles>(file_id).await {
            tracing::info!(path, file_id, "{why}");
            let question = ops::FileIdsRequest {
                file_ids: vec![file_id],
            };
            // Only where the seal was answered: asking a server that just timed out again
            // would cost the unlink a second timeout. A seal that reaches it later stays
            // until it restarts, as a dead sealer's does.
            let lifts = answered
                .into_iter()
                .map(|s| self.call_on::<ops::UnsealFiles>(s, &question, OutPayload::none()));
            for lift in join_all(lifts).await {
                if let Err(e) = lift {
                    tracing::warn!(error = %e, path, file_id, "a tentative seal stays");
                }
            }
            return;
        }
        if let Err((why, _)) = self.seal_on_all::<ops::SealFilesForGood>(file_id).await {
            tracing::info!(path, file_id, "{why}");
            return;
        }
        let req = ops::RemoveChunksRequest {
            file_id: meta.file_id,
        };
        let calls = self
            .all_servers()
            .map(|s| self.call_on::<ops::RemoveChunks>(s, &req, OutPayload::none()));
        for r in join_all(calls).await {
            if let Err(e) = r {
                tracing::warn!(error = %e, path, file_id = meta.file_id, "chunks left for the orphan sweep");
            }
        }
    }

    /// Asks every server `R` to seal `file_id`; says why not when one names it or fails,
    /// with the servers that answered. A server that did not answer a call lately (see
    /// `ServerSlot::is_suspect`) is not asked: each unlink would wait a timeout for it,
    /// and its orphan sweep removes the chunks anyway.
    async fn seal_on_all<R>(&self, file_id: u64) -> Result<(), (String, Vec<ServerIndex>)>
    where
        R: ops::Rpc<Request = ops::FileIdsRequest, Reply = ops::FileStatesReply>,
    {
        let question = ops::FileIdsRequest {
            file_ids: vec![file_id],
        };
        let now = Instant::now();
        let (silent, asked): (Vec<ServerIndex>, Vec<ServerIndex>) = self
            .all_servers()
            .partition(|&s| self.servers[s as usize].is_suspect(now));
        let answers = asked
            .iter()
            .map(|&s| self.call_on::<R>(s, &question, OutPayload::none()));
        let mut why = silent.first().map(|&s| {
            format!(
                "chunks left for the orphan sweep: {} did not answer lately",
                self.servers[s as usize].entry.borrow().node_id
            )
        });
        let mut answered = Vec::new();
        for (&server, answer) in asked.iter().zip(join_all(answers).await) {
            match answer {
                Ok((states, _)) => {
                    answered.push(server);
                    if !states.named.is_empty() {
                        why = Some("another name holds the file; chunks kept".to_string());
                    }
                }
                Err(e) => why = Some(format!("chunks left for the orphan sweep: {e}")),
            }
        }
        match why {
            None => Ok(()),
            Some(why) => Err((why, answered)),
        }
    }

    /// Removes a file and its data.
    pub async fn unlink(&self, path: &str) -> Result<(), ApiError> {
        let given = path;
        let path = norm(path)?;
        self.check_dir_form("unlink", given, &path).await?;
        // Writes in flight would land after the chunks are removed.
        self.drain_path(&path).await;
        if path == "/" || ends_in_dot(given) {
            return Err(fs_err("unlink", &path, Status::IsDir));
        }
        self.make_deferred_at(&path).await?;
        let records = match self
            .delete_record("unlink", &path, EntryKind::File, false)
            .await
        {
            // "/file/x": ENOTDIR, as the other calls answer it.
            Err(e) if e.status() == Some(Status::NotFound) => {
                let not_found = RpcError::Status {
                    server: String::new(),
                    status: Status::NotFound,
                };
                let why = self.why_not_found("unlink", &path, not_found).await;
                return Err(match why.status() {
                    Some(Status::NotDir) => why,
                    _ => e,
                });
            }
            records => records?,
        };
        for record in records {
            // An inline file has no chunks: its bytes went with its record. (A copy in
            // chunk 0 left by a move that failed part way is the orphan sweep's.)
            if !record.meta.inline {
                self.remove_chunks(&path, record.meta).await;
            }
        }
        // This client's handles of the file have nothing left to publish.
        for file in self.files.borrow_mut().values_mut() {
            if file.path == path {
                file.size_dirty = false;
                file.wrote = false;
                file.write_ends.clear();
            }
        }
        self.touch_parents(&[&path]).await;
        Ok(())
    }

    /// Removes an empty directory.
    pub async fn rmdir(&self, path: &str) -> Result<(), ApiError> {
        let given = path;
        let path = norm(path)?;
        if path == "/" {
            return Err(fs_err("rmdir", &path, Status::InUse));
        }
        let meta = self.lookup("rmdir", &path, false).await?;
        if !meta.is_dir() {
            return Err(fs_err("rmdir", &path, Status::NotDir));
        }
        if ends_in_dot(given) {
            return Err(fs_err("rmdir", &path, Status::InvalidArgument));
        }
        // A file this client opened to create in it is an entry.
        self.make_deferred_under(&path).await?;
        // Creates below it are refused from here on, on every server: a client that still
        // sees the directory (cached) would leave records under a name nothing shows. So a
        // create either lands before the check below, which then finds it, or fails.
        if let Err(e) = self
            .purge_below("rmdir", &path, ops::PURGE_SEALS_NAME)
            .await
        {
            tracing::warn!(error = %e, path, "not every server refuses creates below a directory being removed");
        }
        let removed = match self.list(&path, 1).await {
            Ok(entries) if !entries.is_empty() => Err(fs_err("rmdir", &path, Status::NotEmpty)),
            Ok(_) => self
                .delete_record("rmdir", &path, EntryKind::Directory, false)
                .await
                .map(drop),
            Err(e) => Err(e),
        };
        if let Err(e) = removed {
            if let Err(lift) = self
                .purge_below("rmdir", &path, ops::PURGE_LIFTS_SEAL)
                .await
            {
                tracing::warn!(error = %lift, path, "a directory left in place still refuses creates on some server");
            }
            return Err(e);
        }
        self.touch_parents(&[&path]).await;
        Ok(())
    }

    /// The entries of a directory, sorted by name, from every server.
    pub async fn readdir(&self, path: &str) -> Result<Vec<DirEntry>, ApiError> {
        let path = norm(path)?;
        let meta = self.lookup("readdir", &path, false).await?;
        if !meta.is_dir() {
            return Err(fs_err("readdir", &path, Status::NotDir));
        }
        self.make_deferred_under(&path).await?;
        self.list(&path, usize::MAX).await
    }

    /// Lists a directory on every server, merging the pages; stops after `limit` entries.
    /// Every record has `replicas` copies on distinct servers, so fewer than `replicas`
    /// servers that do not answer hide no entry: the listing goes on without them. A
    /// server that may have lost its records (back with an empty store, before or after
    /// the replica repair) counts with them then: its copies may be missing too.
    pub(super) async fn list(&self, dir: &str, limit: usize) -> Result<Vec<DirEntry>, ApiError> {
        let servers: Vec<ServerIndex> = self.all_servers().collect();
        let pages = servers
            .iter()
            .map(|&s| fanout::list_server(self, s, dir, limit));
        let mut merged = BTreeMap::new();
        let mut unreachable = Vec::new();
        let mut answered = Vec::new();
        for (&server, page) in servers.iter().zip(join_all(pages).await) {
            match page {
                Ok(entries) => {
                    answered.push(server);
                    for (name, meta) in entries {
                        merged.entry(name).or_insert(meta);
                    }
                }
                Err(e) if is_unreachable(&e) => unreachable.push(e),
                Err(e) => return Err(rpc_err("readdir", dir)(e)),
            }
        }
        let lacking = answered
            .iter()
            .filter(|&&s| self.may_lack_records(s, &servers))
            .count();
        if !unreachable.is_empty() && unreachable.len() + lacking >= self.replicas {
            let e = unreachable.swap_remove(0);
            return Err(rpc_err("readdir", dir)(e));
        }
        Ok(merged
            .into_iter()
            .take(limit)
            .map(|(name, meta)| DirEntry { name, meta })
            .collect())
    }

    /// Cuts or extends a file.
    pub async fn truncate(&self, path: &str, size: u64) -> Result<(), ApiError> {
        let given = path;
        let path = norm(path)?;
        self.check_dir_form("truncate", given, &path).await?;
        // Writes in flight would land after the cut.
        self.drain_path(&path).await;
        self.make_deferred_at(&path).await?;
        let mut meta = self.lookup("truncate", &path, false).await?;
        if meta.is_symlink() {
            return Err(fs_err("truncate", &path, Status::NotFollowed));
        }
        if meta.is_dir() {
            return Err(fs_err("truncate", &path, Status::IsDir));
        }
        super::data::check_file_end("truncate", &path, size, 0)?;
        // What this client's own handles wrote and have not published yet stays: a
        // truncate that grows the file cuts only past the larger of the two ends. (By
        // file, whatever name the handle knows it by; an inline file's bytes are its
        // record's, and `truncate_inline` sees to them.)
        if !meta.inline {
            (meta.size, meta.cut_gen) = self.least_size(&path, meta).await;
            meta.size = self
                .files
                .borrow()
                .values()
                .filter(|f| f.meta.file_id == meta.file_id && f.size_dirty)
                .map(|f| f.size)
                .fold(meta.size, u64::max);
        }
        let meta = self.truncate_meta(&path, meta, size).await?;
        self.cut_handles(meta);
        Ok(())
    }

    /// After a truncate of file `meta` to `meta.size`: this client's handles of it take
    /// the size, and what they wrote past it is no longer the file's.
    pub(super) fn cut_handles(&self, meta: FileMetadata) {
        for f in self
            .files
            .borrow_mut()
            .values_mut()
            .filter(|f| f.meta.file_id == meta.file_id)
        {
            f.cut_to(meta.size);
            // The cut's time covers what the handles wrote before it, and its count is
            // the one their later writes publish against.
            f.wrote = false;
            f.write_ends.clear();
            f.meta.cut_gen = meta.cut_gen;
            if let Some(Inline::Held(copy)) = &mut f.inline {
                copy.resize(meta.size as usize, 0);
            }
        }
    }

    /// The least size the replicas of file `meta`'s record hold: after a truncate that
    /// some of them missed, the larger size of one would spare the bytes that a server
    /// which missed the cut still holds past the smaller one. (A replica that does not
    /// answer, or names another file, is left out: the truncate fails on it anyway.) With
    /// it, the newest cut count they hold, which the truncate moves every replica past.
    async fn least_size(&self, path: &str, meta: FileMetadata) -> (u64, u16) {
        let req = ops::PathRequest {
            path: path.to_string(),
        };
        self.write_each::<ops::MetadataLookup>(
            PlacementKey::Metadata(path),
            &req,
            WriteSource::NONE,
        )
        .await
        .into_iter()
        .filter_map(|(_, r)| r.ok())
        .filter(|r| r.meta.file_id == meta.file_id)
        .fold((meta.size, meta.cut_gen), |(size, gen), r| {
            let newer = cut_gen_older(gen, r.meta.cut_gen);
            (
                size.min(r.meta.size),
                if newer { r.meta.cut_gen } else { gen },
            )
        })
    }

    /// Sets the file's size, then cuts its chunks on every server at `size`; when the file
    /// grows, what lies past the new end goes first, and after the size only the range
    /// from the end the record had (appends claimed up to then included, or what this
    /// client's handles wrote, `meta.size`) to the new one is zeroed, so appends claimed
    /// after the growth keep their bytes. Every server: chunks may lie past the published
    /// size (a writer that has not closed, or never will, or an earlier truncate that a
    /// server missed), and one left there would show its old bytes when the file grows.
    /// The size goes first: cut chunks under a size that did not change would read as
    /// zeros nobody wrote, while a size set and a cut that some server missed leave only
    /// bytes past the end there. Either failure fails the call.
    pub(super) async fn truncate_meta(
        &self,
        path: &str,
        meta: FileMetadata,
        size: u64,
    ) -> Result<FileMetadata, ApiError> {
        self.own_change(meta.file_id);
        let cut = self.truncate_meta_now(path, meta, size).await;
        self.own_change(meta.file_id);
        cut
    }

    /// [`FsClient::truncate_meta`], between its counts of [`FsClient::own_change`].
    async fn truncate_meta_now(
        &self,
        path: &str,
        meta: FileMetadata,
        size: u64,
    ) -> Result<FileMetadata, ApiError> {
        // An inline file's bytes are cut with its record; one that would grow past it
        // moves them to chunk 0 first, and is then cut as any other.
        let meta = match meta.inline {
            true => match self.truncate_inline(path, meta, size).await? {
                Ok(meta) => {
                    self.meta_cache.borrow_mut().put(path, meta);
                    return Ok(meta);
                }
                Err(moved) => moved,
            },
            false => meta,
        };
        let sized = self.size_and_cut(path, meta, size).await;
        if sized.is_err() {
            self.after_failed_truncate(path, meta.file_id, size).await;
        }
        sized
    }

    /// [`FsClient::truncate_meta`] of a file with chunks.
    async fn size_and_cut(
        &self,
        path: &str,
        meta: FileMetadata,
        size: u64,
    ) -> Result<FileMetadata, ApiError> {
        let at = |offset| ChunkLayout::new(meta.chunk_size).position(offset);
        // The cut of everything from `offset` (up to `end`, if given) on every server.
        let cut_from = |offset, cut_gen, end: Option<u64>| {
            let (index, len) = at(offset);
            let cut = ops::TruncateFileRequest {
                file_id: meta.file_id,
                index,
                len,
                cut_gen,
                end: end.map(at),
            };
            async move { self.on_every_server(path, &cut).await }
        };
        if size > meta.size {
            // Growing: the file holds nothing past the new end yet, so what a server holds
            // there is no file's bytes (a writer that never published, a failed call) and
            // goes first, before an append claimed after the growth can land there.
            cut_from(size, 0, None).await?;
        }
        let req = exact_size(path, meta.file_id, size, next_cut_gen(meta.cut_gen));
        let replies = self
            .change_size::<ops::UpdateSize>(path, req.file_id, &req)
            .await;
        self.meta_cache.borrow_mut().remove(path);
        let replies = replies.map_err(rpc_err("truncate", path))?;
        // What the record held before the change (appends claimed since the size was read
        // included) and what this client's handles wrote and have not published stay.
        let held = held_before(&replies).max(meta.size);
        let mut sized = replies[0].meta;
        if size > held {
            // Zeros between the two ends; past the new end, appends claimed since.
            cut_from(held, 0, Some(size)).await?;
            self.meta_cache.borrow_mut().put(path, sized);
            return Ok(sized);
        }
        for _ in 0..CUT_ROUNDS_MAX {
            // With the record's cut count: an append claimed before it lands short of the
            // cut on a server that has seen it (the server's `cuts`).
            cut_from(size, sized.cut_gen, None).await?;
            // Set again: a size update that was on its way from another handle (a flush, a
            // release, an append's claim) may have grown the file back meanwhile, and the
            // cut goes again with the new count. The count moves either way, after the
            // cut: a writer that checked its bytes outlived the cut before the cut came
            // grows the file only at the count it checked at (see
            // `FsClient::publish_reaching`), and this refuses it.
            let req = exact_size(path, meta.file_id, size, next_cut_gen(sized.cut_gen));
            let again = self
                .change_size::<ops::UpdateSize>(path, req.file_id, &req)
                .await
                .map_err(rpc_err("truncate", path))?;
            let settled = again.iter().all(|r| r.size_before == size);
            sized = again[0].meta;
            if settled {
                break;
            }
        }
        self.meta_cache.borrow_mut().put(path, sized);
        Ok(sized)
    }

    /// Sends a truncate's cut of file `path` to every server: chunks may lie past the
    /// published size anywhere (see [`FsClient::truncate_meta`]).
    async fn on_every_server(
        &self,
        path: &str,
        cut: &ops::TruncateFileRequest,
    ) -> Result<(), ApiError> {
        let cuts = self
            .all_servers()
            .map(|s| self.call_on::<ops::TruncateFile>(s, cut, OutPayload::none()));
        let results = join_all(cuts).await;
        self.chunk_cache.borrow_mut().invalidate_file(cut.file_id);
        for r in results {
            r.map_err(rpc_err("truncate", path))?;
        }
        Ok(())
    }

    /// After a truncate of file `file_id` to `size` that failed: where the record read now
    /// has the new size, this client's handles take it (what they wrote past it and have
    /// not published was cut as far as the truncate went), so a write past it publishes
    /// the size it reaches; clean handles take the size the record has. A handle that kept
    /// the size it had would leave a later write short of it unpublished: lost.
    async fn after_failed_truncate(&self, path: &str, file_id: u64, size: u64) {
        let now = self
            .lookup("truncate", path, false)
            .await
            .ok()
            .filter(|m| m.file_id == file_id);
        let Some(now) = now else { return };
        for f in self.files.borrow_mut().values_mut() {
            if f.meta.file_id != file_id {
                continue;
            }
            if now.size == size {
                f.size = size;
                f.size_dirty = false;
            } else if !f.size_dirty {
                f.size = now.size;
            }
        }
    }

    /// Renames a file or a directory with everything under it (see `tree.rs` for the
    /// cost). A file at `to` is replaced; a directory at `to` must be empty and `from`
    /// must be a directory too.
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), ApiError> {
        let wants_dir = names_dir(from) || names_dir(to);
        let dot = ends_in_dot(from) || ends_in_dot(to);
        let (from, to) = (norm(from)?, norm(to)?);
        self.drain_path(&from).await;
        self.drain_path(&to).await;
        if from == "/" || to == "/" || dot {
            return Err(fs_err("rename", &both(&from, &to), Status::InUse));
        }
        for path in [&from, &to] {
            self.make_deferred_at(path).await?;
            self.make_deferred_under(path).await?;
        }
        // The records come with their bytes: an inline file moves with its record.
        let record = self.record_of("rename", &from).await?;
        let meta = record.meta;
        if wants_dir && !meta.is_dir() {
            return Err(fs_err("rename", &from, Status::NotDir));
        }
        // Into itself: EINVAL for a directory; under a file, no directory is there.
        if to.starts_with(&format!("{from}/")) {
            let why = match meta.is_dir() {
                true => Status::InvalidArgument,
                false => Status::NotDir,
            };
            return Err(fs_err("rename", &both(&from, &to), why));
        }
        if from == to {
            return Ok(());
        }
        self.check_parent("rename", &to).await?;
        let replaced = self.replaced_by_rename(&from, &to, meta).await?;
        let subtree = if meta.is_dir() {
            if replaced.is_none() {
                // Nothing below a name that does not exist is an entry.
                self.purge_below("rename", &to, u64::MAX).await?;
            }
            self.subtree(&from).await?
        } else {
            Vec::new()
        };
        self.move_tree(&from, &to, &record, replaced.as_ref(), &subtree)
            .await?;
        if meta.is_dir() {
            self.seal_left_name(&from, &to, &subtree).await;
        }
        let replaced = replaced.map(|r| r.meta);
        if let Some(old) =
            replaced.filter(|m| !m.is_dir() && !m.inline && m.file_id != meta.file_id)
        {
            self.remove_chunks(&to, old).await;
        }
        for f in self.files.borrow_mut().values_mut() {
            if let Some(moved) = path::moved(&f.path, &from, &to) {
                f.path = moved;
            }
        }
        self.touch_parents(&[&from, &to]).await;
        Ok(())
    }

    /// The record a rename of `moving` from `from` to `to` replaces, if any: a file
    /// replaces a file, a directory an empty directory.
    async fn replaced_by_rename(
        &self,
        from: &str,
        to: &str,
        moving: FileMetadata,
    ) -> Result<Option<Record>, ApiError> {
        let existing = match self.record_of("rename", to).await {
            Ok(existing) => existing,
            Err(e) if e.status() == Some(Status::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        let refused = |status| Err(fs_err("rename", &both(from, to), status));
        match (moving.is_dir(), existing.meta.is_dir()) {
            (false, true) => refused(Status::IsDir),
            (true, false) => refused(Status::NotDir),
            (true, true) if !self.list(to, 1).await?.is_empty() => refused(Status::NotEmpty),
            _ => Ok(Some(existing)),
        }
    }

    /// A rename's records: `record` (with its bytes) goes to `to` on every replica, then
    /// leaves `from`. If either step fails on a replica, both are undone where they
    /// happened (`to` gets back `replaced`, or nothing), so the rename happens on every
    /// replica or on none.
    pub(super) async fn move_record(
        &self,
        from: &str,
        to: &str,
        record: &Record,
        replaced: Option<&Record>,
    ) -> Result<(), ApiError> {
        // A rename changes the entry's status, as Linux stamps it (find -cmin, backups).
        let meta = FileMetadata {
            ctime_ns: record.meta.ctime_ns.max(benchfs_proto::meta::now_ns()),
            ..record.meta
        };
        let insert = ops::InsertRequest {
            meta,
            ..replacing(to, record)
        };
        let answers = self
            .write_each::<ops::MetadataInsert>(
                PlacementKey::Metadata(to),
                &insert,
                WriteSource::NONE,
            )
            .await;
        self.forget(to);
        let (holders, failed) = took_it(answers);
        if let Some(e) = failed {
            self.undo_put(to, replaced, &holders).await;
            return Err(rpc_err("rename", to)(e));
        }
        if let Err(e) = self
            .delete_record("rename", from, record.meta.kind, true)
            .await
        {
            self.undo_put(to, replaced, &holders).await;
            return Err(e);
        }
        Ok(())
    }
}

/// The size a file held before a size change, from the replies of the replicas that took
/// it: the most among the replicas at the newest cut count. The first replica alone takes
/// appends' claims, and the others learn a claim's end a round trip later (or a writer's
/// publish first); within one cut count a record only grows. A replica that missed an
/// earlier truncate holds a larger size, whose bytes past the cut are gone, and counts
/// not.
fn held_before(replies: &[ops::SizeReply]) -> u64 {
    let newest =
        replies
            .iter()
            .map(|r| r.cut_gen_before)
            .reduce(|a, b| match cut_gen_older(a, b) {
                true => b,
                false => a,
            });
    replies
        .iter()
        .filter(|r| Some(r.cut_gen_before) == newest)
        .map(|r| r.size_before)
        .max()
        .unwrap_or(0)
}

/// The servers that took a call, and the first failure among the others.
pub(super) fn took_it<T>(
    answers: impl IntoIterator<Item = (ServerIndex, Result<T, RpcError>)>,
) -> (Vec<ServerIndex>, Option<RpcError>) {
    let mut holders = Vec::new();
    let mut failed = None;
    for (server, answer) in answers {
        match answer {
            Ok(_) => holders.push(server),
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    (holders, failed)
}

/// A request that sets the size of `path` (file `file_id`) to `size`, as a truncate does;
/// a size that cuts the record moves its cut count to at least `cut_gen`.
pub(super) fn exact_size(
    path: &str,
    file_id: u64,
    size: u64,
    cut_gen: u16,
) -> ops::UpdateSizeRequest {
    ops::UpdateSizeRequest {
        path: path.to_string(),
        file_id,
        size,
        how: SizeUpdate::Exact,
        cut_gen,
    }
}

/// The group `parent` passes on to what is made in it: its own, if it is set-group-ID.
pub(super) fn group_passed_on(parent: &FileMetadata) -> Option<u32> {
    (parent.mode & libc::S_ISGID != 0).then_some(parent.gid)
}

/// The group and mode a new entry `meta` takes from a set-group-ID `parent` (the group,
/// and for a directory the bit too), when they differ from its own.
fn inherited_group(parent: &FileMetadata, meta: &FileMetadata) -> Option<(u32, u32)> {
    let gid = group_passed_on(parent)?;
    let mode = match meta.kind {
        EntryKind::Directory => meta.mode | libc::S_ISGID,
        _ => meta.mode,
    };
    (meta.gid != gid || mode != meta.mode).then_some((gid, mode))
}

/// How an error about both of a rename's paths names them.
fn both(from: &str, to: &str) -> String {
    format!("{from} -> {to}")
}

/// The removal of a record a change put at `path`: moved, so no tombstone takes its
/// file's chunks.
fn removal(path: &str) -> ops::DeleteRequest {
    ops::DeleteRequest {
        path: path.to_string(),
        expect: None,
        moved: true,
    }
}

/// The put of `record` (with its bytes) at `path`, replacing what is there.
pub(super) fn replacing(path: &str, record: &Record) -> ops::InsertRequest {
    ops::InsertRequest {
        path: path.to_string(),
        meta: record.meta,
        exclusive: false,
        settled_only: false,
        newer_only: false,
        data: record.data.clone(),
    }
}

/// [`FsClient::ask_each`]'s answers with their replies dropped.
fn answered<T>(
    answers: Vec<(ServerIndex, Option<Result<T, RpcError>>)>,
) -> Vec<(ServerIndex, Option<Result<(), RpcError>>)> {
    answers
        .into_iter()
        .map(|(server, answer)| (server, answer.map(|reply| reply.map(drop))))
        .collect()
}
