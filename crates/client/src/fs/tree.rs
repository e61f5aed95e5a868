//! Renaming a directory with entries. Records are keyed by full path, so every record
//! under the directory gets a new key and, by hashing, usually a new server; chunks are
//! keyed by inode number and do not move (an inline file's bytes move with its record,
//! fetched with it). The cost is one listing per directory in the tree, one lookup per
//! inline file, then two record writes per entry on each replica, [`MOVE_BATCH`] at a time,
//! in the order `FsClient::rename` gives (every entry stays visible under one name).

use std::collections::{HashMap, HashSet};

use benchfs_proto::meta::EntryKind;
use benchfs_proto::ops;
use benchfs_proto::path;
use benchfs_proto::placement::PlacementKey;
use benchfs_proto::Status;
use futures_util::future::join_all;

use super::data::WriteSource;
use super::inline::Record;
use super::namespace::replacing;
use super::{rpc_err, FsClient};
use crate::error::ApiError;
use crate::rpc::OutPayload;

/// Records moved at once.
pub(super) const MOVE_BATCH: usize = 64;

/// How far behind the clock of a new directory's server another server's clock may be:
/// a record below the directory changed within this time before it was made is kept
/// (it may be an entry another client made in it at once; see [`FsClient::purge_below`]).
pub(super) const CLOCK_SKEW_MAX_NS: u64 = 100_000_000;

/// Rounds of moving what was created below a renamed directory's old name meanwhile: one
/// is enough once every server refuses such creates, more only for a server that was slow
/// to take the seal.
const STRAGGLER_ROUNDS_MAX: usize = 4;

impl FsClient {
    /// Removes from every server the records below `dir` last changed before
    /// `changed_before_ns` (by each server's clock). Nothing shows such records while `dir`
    /// does not exist: they are what a directory rename stopped part way left (copies under
    /// a name that never came, old records a dead server kept), and a new `dir` would show
    /// them as aliases of the moved files. Every server must answer: a leftover on one that
    /// did not would come back with it (the replica repair copies it to its peers).
    pub(super) async fn purge_below(
        &self,
        op: &'static str,
        dir: &str,
        changed_before_ns: u64,
    ) -> Result<(), ApiError> {
        let req = ops::PurgeRequest {
            dir: dir.to_string(),
            changed_before_ns,
        };
        let purges = self
            .all_servers()
            .map(|s| self.call_on::<ops::PurgeUnder>(s, &req, OutPayload::none()));
        for result in join_all(purges).await {
            result.map_err(rpc_err(op, dir))?;
        }
        Ok(())
    }

    /// After directory `from` moved to `to`: has every server refuse creates below `from`
    /// (clients that still see the directory there, cached, would leave records under a
    /// name nothing shows), then moves to `to` what was created below `from` while the
    /// rename ran, until none is left. Found by a hostile run: files created in a
    /// directory while another client renamed it were lost, every call reporting success.
    pub(super) async fn seal_left_name(&self, from: &str, to: &str, moved: &[(String, Record)]) {
        if let Err(e) = self
            .purge_below("rename", from, ops::PURGE_SEALS_NAME)
            .await
        {
            tracing::warn!(error = %e, from, "not every server sealed a renamed directory's old name");
        }
        // A listing finds an entry by its parent's name: what was made below the old
        // name's subdirectories is found by listing their old names, since their own
        // records have moved.
        let mut old_dirs = vec![from.to_string()];
        old_dirs.extend(
            moved
                .iter()
                .filter(|(_, record)| record.meta.is_dir())
                .map(|(path, _)| path.clone()),
        );
        let copied: HashMap<&str, &Record> = moved.iter().map(|(p, r)| (p.as_str(), r)).collect();
        for _ in 0..STRAGGLER_ROUNDS_MAX {
            let found = match self.subtree_below(old_dirs.clone()).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::error!(error = %e, from, to, "records made below a renamed directory's old name could not be listed");
                    return;
                }
            };
            // Records the drop could not remove (a server died) have their copies, which
            // are the rename's result: copied again, a failed copy's undo removed those
            // (helper-98: a rename returned 0 with a third of the tree gone).
            let (left, late): (Vec<_>, Vec<_>) = found.into_iter().partition(|(old, record)| {
                copied
                    .get(old.as_str())
                    .is_some_and(|c| c.meta.file_id == record.meta.file_id)
            });
            for (old, leftover) in left {
                let new = moved_below(&old, from, to);
                self.carry_changes(&old, &new, copied[old.as_str()], vec![leftover])
                    .await;
            }
            if late.is_empty() {
                return;
            }
            tracing::info!(
                from,
                to,
                count = late.len(),
                "moving records made while a directory was renamed"
            );
            if let Err(e) = self.copy_subtree(from, to, &late).await {
                tracing::error!(error = %e, from, to, "records made below a renamed directory's old name could not be moved");
                return;
            }
            self.drop_subtree(from, to, &late).await;
        }
    }

    /// Every record under directory `dir` (not `dir` itself), each parent before its
    /// children, inline ones with their bytes.
    pub(super) async fn subtree(&self, dir: &str) -> Result<Vec<(String, Record)>, ApiError> {
        self.subtree_below(vec![dir.to_string()]).await
    }

    /// [`FsClient::subtree`] of every directory name in `dirs`, those below one another
    /// included (each listed once, and none of them in the result unless listed).
    async fn subtree_below(
        &self,
        mut dirs: Vec<String>,
    ) -> Result<Vec<(String, Record)>, ApiError> {
        let mut out = Vec::new();
        let mut next = 0;
        let mut listed: HashSet<String> = dirs.iter().cloned().collect();
        while next < dirs.len() {
            let parent = dirs[next].clone();
            next += 1;
            for entry in self.list(&parent, usize::MAX).await? {
                let path = path::join(&parent, &entry.name);
                if entry.meta.is_dir() && listed.insert(path.clone()) {
                    dirs.push(path.clone());
                }
                out.push((
                    path,
                    Record {
                        meta: entry.meta,
                        data: Vec::new(),
                    },
                ));
            }
        }
        for batch in out.chunks_mut(MOVE_BATCH) {
            let inline = batch.iter_mut().filter(|(_, r)| r.meta.inline);
            let fetched = join_all(inline.map(|(path, record)| async move {
                *record = self.lookup_record("rename", path).await?;
                Ok::<(), ApiError>(())
            }))
            .await;
            fetched.into_iter().collect::<Result<(), ApiError>>()?;
        }
        Ok(out)
    }

    /// Moves `from` (its `record`, and `subtree`, the records under it) to `to`, replacing
    /// `replaced` there. Whatever stops it part way (a killed client, a dead server), every
    /// entry stays visible under one of the names: the copies under the new name are made
    /// while nothing shows them (an empty directory it replaces goes first, and comes back
    /// on a failure), then the directory's own record moves, then the old records, which
    /// nothing shows any more, are removed.
    pub(super) async fn move_tree(
        &self,
        from: &str,
        to: &str,
        record: &Record,
        replaced: Option<&Record>,
        subtree: &[(String, Record)],
    ) -> Result<(), ApiError> {
        let cleared = match replaced {
            Some(dir) if dir.meta.is_dir() && !subtree.is_empty() => {
                // Moved out, so its servers mark the name: the copies below it are
                // leftovers if the rename stops before its record comes back.
                self.delete_record("rename", to, EntryKind::Directory, true)
                    .await?;
                Some(dir)
            }
            _ => None,
        };
        let put_back = || async {
            if let Some(dir) = cleared {
                if let Err(e) = self.store_everywhere(to, dir).await {
                    tracing::error!(error = %e, path = to, "putting back the directory a failed rename replaced");
                }
            }
        };
        let copies = match self.copy_subtree(from, to, subtree).await {
            Ok(copies) => copies,
            Err(e) => {
                put_back().await;
                return Err(e);
            }
        };
        let still_there = replaced.filter(|_| cleared.is_none());
        if let Err(e) = self.move_record(from, to, record, still_there).await {
            self.remove_everywhere(to, copies.iter().map(String::as_str))
                .await;
            put_back().await;
            return Err(e);
        }
        self.drop_subtree(from, to, subtree).await;
        Ok(())
    }

    /// Stores a copy of each record under `from` at the same name under `to` on every
    /// replica, parents first, and returns the new names. Nothing shows them until `to`'s
    /// own record exists (unless `to` is an empty directory being replaced). If a copy
    /// fails, those made are removed again and nothing changed.
    async fn copy_subtree(
        &self,
        from: &str,
        to: &str,
        records: &[(String, Record)],
    ) -> Result<Vec<String>, ApiError> {
        let copies: Vec<(String, &Record)> = records
            .iter()
            .map(|(old, record)| (moved_below(old, from, to), record))
            .collect();
        // A new path past the limits fails the rename before anything moves
        // (ENAMETOOLONG, as rename(2) gives), not at its server as a malformed request.
        for (new, _) in &copies {
            super::norm(new)?;
        }
        let mut stored = 0;
        for batch in copies.chunks(MOVE_BATCH) {
            let done = join_all(
                batch
                    .iter()
                    .map(|(new, record)| self.store_everywhere(new, record)),
            )
            .await;
            stored += batch.len();
            if let Some(e) = done.into_iter().find_map(Result::err) {
                self.remove_everywhere(to, copies[..stored].iter().map(|(new, _)| new.as_str()))
                    .await;
                return Err(e);
            }
        }
        Ok(copies.into_iter().map(|(new, _)| new).collect())
    }

    /// Removes the records under a renamed directory's old name, children first, once the
    /// directory's own record moved: nothing shows them any more, so one that cannot be
    /// removed (its server is down) is logged and left, and the rename stands.
    ///
    /// A record that changed since it was copied (a handle's close published its size
    /// there, a write went into its inline bytes) carries the change to its copy under
    /// `to`: dropping it alone lost the bytes of files written while their directory was
    /// renamed, every call reporting success (found by a hostile run).
    async fn drop_subtree(&self, from: &str, to: &str, records: &[(String, Record)]) {
        let mut left = 0;
        let mut first_error = None;
        for batch in records.rchunks(MOVE_BATCH) {
            let done = join_all(batch.iter().rev().map(|(old, copied)| async move {
                let removed = self
                    .delete_record("rename", old, copied.meta.kind, true)
                    .await?;
                let new = moved_below(old, from, to);
                self.carry_changes(old, &new, copied, removed).await;
                Ok::<(), ApiError>(())
            }))
            .await;
            for e in done.into_iter().filter_map(Result::err) {
                left += 1;
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            tracing::error!(
                error = %e,
                from,
                left,
                "a renamed directory's old records could not all be removed; they stay \
                 under the old name, unseen unless a directory of that name is made again"
            );
        }
    }

    /// After the record at `old` was copied to `new` as `copied` and then removed (the
    /// replicas' records in `removed`): the newest of those, if it changed since the copy,
    /// replaces the copy unless that is newer still (a handle that found `old` gone and
    /// published at `new`); last writer wins, as in the replica repair. A record of
    /// another file, made at `old` meanwhile, goes back there for the next round of
    /// `seal_left_name`.
    async fn carry_changes(&self, old: &str, new: &str, copied: &Record, removed: Vec<Record>) {
        let Some(newest) = removed.into_iter().max_by_key(|r| r.meta.ctime_ns) else {
            return;
        };
        if newest.meta == copied.meta && newest.data == copied.data {
            return;
        }
        if newest.meta.file_id != copied.meta.file_id {
            if let Err(e) = self.store_everywhere(old, &newest).await {
                tracing::error!(error = %e, path = old, "a record made during a directory rename could not be put back");
            }
            return;
        }
        let insert = ops::InsertRequest {
            path: new.to_string(),
            meta: newest.meta,
            exclusive: false,
            settled_only: false,
            newer_only: true,
            data: newest.data,
        };
        self.forget(new);
        let answers = self
            .write_each::<ops::MetadataInsert>(
                PlacementKey::Metadata(new),
                &insert,
                WriteSource::NONE,
            )
            .await;
        for (server, answer) in answers {
            match answer {
                Ok(_) => {}
                Err(e) if e.status() == Status::Exists => {}
                Err(e) => {
                    tracing::error!(error = %e, path = new, server, "a change made during a directory rename could not be carried to the new name");
                }
            }
        }
    }

    /// Stores `record` at `path` on every replica, replacing what is there.
    async fn store_everywhere(&self, path: &str, record: &Record) -> Result<(), ApiError> {
        let insert = replacing(path, record);
        self.forget(path);
        self.write_all::<ops::MetadataInsert>(
            PlacementKey::Metadata(path),
            &insert,
            WriteSource::NONE,
        )
        .await
        .map(drop)
        .map_err(rpc_err("rename", path))
    }

    /// Removes the records at `paths` (copies a failed rename made below `to`), children
    /// first. A server that did not answer lately gets one purge of everything below
    /// `to` made before now, left for it to take once it runs again
    /// ([`FsClient::leave_note`]): the copies it took before it stopped would otherwise
    /// stay, found by their paths, and be spread by the replica repair.
    async fn remove_everywhere(&self, to: &str, paths: impl DoubleEndedIterator<Item = &str>) {
        let mut silent = std::collections::BTreeSet::new();
        for path in paths.rev() {
            let servers = self.replica_set(PlacementKey::Metadata(path));
            silent.extend(self.undo_put_where_answering(path, None, &servers).await);
        }
        let purge = ops::PurgeRequest {
            dir: to.to_string(),
            changed_before_ns: benchfs_proto::meta::now_ns(),
        };
        for server in silent {
            self.leave_note::<ops::PurgeUnder>(server, &purge, to).await;
        }
    }
}

/// The name of `old`, a path below directory `from`, once `from` moved to `to`.
fn moved_below(old: &str, from: &str, to: &str) -> String {
    format!("{to}{}", &old[from.len()..])
}
