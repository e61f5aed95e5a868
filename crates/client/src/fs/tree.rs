//! Renaming a directory with entries. Records are keyed by full path, so every record
//! under the directory gets a new key and, by hashing, usually a new server; chunks are
//! keyed by inode number and do not move (an inline file's bytes move with its record,
//! fetched with it). The cost is one listing per directory in the tree, one lookup per
//! inline file, then two record writes per entry on each replica, [`MOVE_BATCH`] at a time.

use benchfs_proto::ops;
use benchfs_proto::placement::PlacementKey;
use futures_util::future::join_all;

use super::data::WriteSource;
use super::inline::Record;
use super::{rpc_err, FsClient};
use crate::error::ApiError;

/// Records moved at once.
pub(super) const MOVE_BATCH: usize = 64;

impl FsClient {
    /// Every record under directory `dir` (not `dir` itself), each parent before its
    /// children, inline ones with their bytes.
    pub(super) async fn subtree(&self, dir: &str) -> Result<Vec<(String, Record)>, ApiError> {
        let mut out = Vec::new();
        let mut next = 0;
        let mut dirs = vec![dir.to_string()];
        while next < dirs.len() {
            let parent = dirs[next].clone();
            next += 1;
            for entry in self.list(&parent, usize::MAX).await? {
                let path = format!("{}/{}", parent.trim_end_matches('/'), entry.name);
                if entry.meta.is_dir() {
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

    /// Puts the entries of `subtree`, moved from `from` to `to`, back under `from`: the
    /// directory's own record failed to move, so it kept its old name.
    pub(super) async fn move_subtree_back(
        &self,
        from: &str,
        to: &str,
        subtree: &[(String, Record)],
    ) {
        if subtree.is_empty() {
            return;
        }
        let back: Vec<_> = subtree
            .iter()
            .map(|(old, r)| (format!("{to}{}", &old[from.len()..]), r.clone()))
            .collect();
        if let Err(undo) = self.move_subtree(to, from, &back).await {
            tracing::error!(error = %undo, from, to, "undo of a directory rename failed");
        }
    }

    /// Moves the records under `from` to the same names under `to` (the directory
    /// records themselves are the caller's): first every new record is stored, parents
    /// first, then every old one removed, children first. If a step fails the steps
    /// before it are undone, so the tree is whole at one of its names; only a second
    /// failure during that undo (logged) leaves records at both.
    pub(super) async fn move_subtree(
        &self,
        from: &str,
        to: &str,
        records: &[(String, Record)],
    ) -> Result<(), ApiError> {
        let moved: Vec<(String, String, &Record)> = records
            .iter()
            .map(|(old, record)| (old.clone(), format!("{to}{}", &old[from.len()..]), record))
            .collect();
        // A new path past the limits fails the rename before anything moves
        // (ENAMETOOLONG, as rename(2) gives), not at its server as a malformed request.
        for (_, new, _) in &moved {
            super::norm(new)?;
        }
        let mut stored = 0;
        for batch in moved.chunks(MOVE_BATCH) {
            let done = join_all(
                batch
                    .iter()
                    .map(|(_, new, record)| self.store_everywhere(new, record)),
            )
            .await;
            let failed = done.into_iter().find_map(Result::err);
            stored += batch.len();
            if let Some(e) = failed {
                self.remove_everywhere(moved[..stored].iter().map(|(_, new, _)| new.as_str()))
                    .await;
                return Err(e);
            }
        }
        let mut removed = moved.len();
        for batch in moved.rchunks(MOVE_BATCH) {
            let done = join_all(batch.iter().map(|(old, _, record)| async move {
                self.forget(old);
                self.delete_record("rename", old, record.meta.kind, true)
                    .await
            }))
            .await;
            removed -= batch.len();
            if let Some(e) = done.into_iter().find_map(Result::err) {
                // Put back what this batch and those before it removed, then drop the copies.
                for (old, _, record) in &moved[removed..] {
                    if let Err(undo) = self.store_everywhere(old, record).await {
                        tracing::error!(error = %undo, path = old, "undo of a directory rename failed");
                    }
                }
                self.remove_everywhere(moved.iter().map(|(_, new, _)| new.as_str()))
                    .await;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Stores `record` at `path` on every replica, replacing what is there.
    async fn store_everywhere(&self, path: &str, record: &Record) -> Result<(), ApiError> {
        let insert = ops::InsertRequest {
            path: path.to_string(),
            meta: record.meta,
            exclusive: false,
            settled_only: false,
            newer_only: false,
            data: record.data.clone(),
        };
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

    /// Removes the records at `paths` (copies a failed rename made), children first.
    async fn remove_everywhere(&self, paths: impl DoubleEndedIterator<Item = &str>) {
        for path in paths.rev() {
            let servers = self.replica_set(PlacementKey::Metadata(path));
            self.undo_put(path, None, &servers).await;
        }
    }
}
