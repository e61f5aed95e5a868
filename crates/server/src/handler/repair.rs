//! The server's side of replica repair: answering a peer's comparison, taking a peer's
//! newer record, and the one change a repair pass makes to its own table (dropping a
//! record whose file another replica deleted).

use benchfs_proto::meta::FileMetadata;
use benchfs_proto::ops::{self as op};
use benchfs_proto::Status;

use super::{journal, Reply, ServerState};
use crate::repair::{data_hash, supersedes, Content};

impl ServerState {
    /// Up to `max` of this server's records in path order after `after`.
    pub(crate) fn records_after(
        &self,
        after: Option<&str>,
        max: usize,
    ) -> Vec<(String, FileMetadata)> {
        self.metadata.borrow().records_after(after, max)
    }

    /// [`data_hash`] of the bytes of this server's record of `path` (0 if it has none).
    pub(crate) fn data_hash_of(&self, path: &str) -> u64 {
        let table = self.metadata.borrow();
        table.record(path).map_or(0, |(_, data)| data_hash(data))
    }

    /// What this server holds at each asked path.
    pub(super) fn compare_records(&self, req: op::CompareRequest) -> Result<Reply, Status> {
        let mut table = self.metadata.borrow_mut();
        let states = req
            .records
            .iter()
            .map(|(path, file_id)| {
                let path = benchfs_proto::path::normalize(path)?;
                let (meta, data_hash) = match table.record(&path) {
                    Ok((meta, data)) => (Some(meta), data_hash(data)),
                    Err(Status::NotFound) => (None, 0),
                    Err(e) => return Err(e),
                };
                Ok(op::RecordState {
                    meta,
                    data_hash,
                    settled: table.settled(&path),
                    // A tombstone of a file a record here still names is no evidence.
                    deleted: table.is_deleted(*file_id) && !table.has_file(*file_id),
                })
            })
            .collect::<Result<_, Status>>()?;
        Ok(Reply::ok(&op::CompareReply { states }))
    }

    /// Stores a peer's record under a repair's conditions (`req.settled_only`,
    /// `req.newer_only`; see [`crate::repair`]), checked in the same step as the store:
    /// `Busy` while the path is unsettled, `Exists` if its record is not older.
    pub(super) fn insert_record(&self, req: &op::InsertRequest) -> Result<(), Status> {
        let mut table = self.metadata.borrow_mut();
        let path = benchfs_proto::path::normalize(&req.path)?;
        if req.settled_only && !table.settled(&path) {
            return Err(Status::Busy);
        }
        // The file's chunks may be gone (see `MetadataTable::seal`).
        if table.seal_of(req.meta.file_id).is_some() {
            return Err(Status::Stale);
        }
        if req.newer_only {
            if let Ok((held, data)) = table.record(&path) {
                let offered = (&req.meta, Content::new(&req.meta, data_hash(&req.data)));
                if !supersedes(offered, (&held, Content::new(&held, data_hash(data)))) {
                    return Err(Status::Exists);
                }
            }
        }
        drop(table);
        self.change_logged(&path, false, |table| {
            table.insert(&path, req.meta, &req.data, req.exclusive)
        })?;
        tracing::debug!(path, file_id = req.meta.file_id, "record inserted");
        Ok(())
    }

    /// Whether this server's record of `path` (normalised) still names `file_id` and has
    /// settled.
    fn names_settled(&self, path: &str, file_id: u64) -> bool {
        let mut table = self.metadata.borrow_mut();
        table.settled(path) && table.lookup(path).is_ok_and(|m| m.file_id == file_id)
    }

    /// This server's record of `path` and its bytes if it is inline, when it still names
    /// `file_id` and has settled: what a repair copies to a replica that lacks it.
    pub(crate) fn settled_record(
        &self,
        path: &str,
        file_id: u64,
    ) -> Option<(FileMetadata, Vec<u8>)> {
        if !self.names_settled(path, file_id) {
            return None;
        }
        let table = self.metadata.borrow();
        let (meta, data) = table.record(path).ok()?;
        Some((meta, data.to_vec()))
    }

    /// Deletes the record of `path` if it still names `file_id` and has settled (a file
    /// another replica deleted), journaled like any delete; true if it went.
    pub(crate) fn drop_deleted_record(&self, path: &str, file_id: u64) -> Result<bool, Status> {
        if !self.names_settled(path, file_id) {
            return Ok(false);
        }
        self.metadata.borrow_mut().delete(path, None)?;
        self.log_freeing(journal::Record::Delete { path, file_id })?;
        Ok(true)
    }
}
