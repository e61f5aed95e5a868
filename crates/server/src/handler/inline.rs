//! Handlers of the operations on inline files (records that hold their file's bytes): the
//! open that answers them, the deferred create that makes one with its bytes, writes into
//! one, and the seal and drop between which a client moves the bytes to chunk 0. Every
//! change is journaled with the bytes before it is acknowledged, as any record is.

use benchfs_proto::ops::{self as op};
use benchfs_proto::{OpCode, Status};

use super::{decode, journal, Reply, ServerState};
use crate::metadata::Owner;

impl ServerState {
    /// Journals the record `path` holds now, with its bytes if it is inline (see
    /// [`Self::log_with`] for `freeing`).
    pub(super) fn log_put_with(&self, path: &str, freeing: bool) -> Result<(), Status> {
        if self.journal.is_none() {
            return Ok(());
        }
        let table = self.metadata.borrow();
        let (meta, data) = table.record(path)?;
        self.log_with(journal::Record::Put { path, meta, data }, freeing)
    }

    /// A lookup for an open: the record and, when it is inline, its bytes.
    pub(super) fn metadata_open(&self, body: &[u8]) -> Result<Reply, Status> {
        let req: op::PathRequest = decode(body)?;
        let table = self.metadata.borrow();
        let (meta, data) = table.record(&req.path)?;
        Ok(Reply::ok(&op::RecordReply {
            meta,
            data: data.to_vec(),
        })
        .with_file_bytes(0, data.len()))
    }

    /// The changes to inline files.
    pub(super) fn inline_write(&self, op: OpCode, body: &[u8]) -> Result<Reply, Status> {
        match op {
            OpCode::MetadataCreateInline => {
                let req: op::CreateInlineRequest = decode(body)?;
                let owner = Owner {
                    uid: req.uid,
                    gid: req.gid,
                };
                let done = self.change_logged(&req.path, false, |t| {
                    t.create_inline(&req.path, req.mode, req.chunk_size, owner, &req.data)
                })?;
                let given = done.data.len();
                Ok(Reply::ok(&op::CreateInlineReply {
                    meta: done.meta,
                    created: done.created,
                    data: done.data,
                })
                .with_file_bytes(req.data.len(), given))
            }
            OpCode::MetadataWriteInline => {
                let req: op::WriteInlineRequest = decode(body)?;
                let meta = self.change_logged(&req.path, false, |t| {
                    t.write_inline(&req.path, req.file_id, req.offset, &req.data)
                })?;
                Ok(Reply::ok(&op::MetadataReply { meta }).with_file_bytes(req.data.len(), 0))
            }
            OpCode::MetadataSealInline => {
                // A seal lives in memory only (a restart ends every move), so nothing is
                // journaled.
                let req: op::SealInlineRequest = decode(body)?;
                let (meta, data) =
                    self.metadata
                        .borrow_mut()
                        .seal_inline(&req.path, req.file_id, req.token)?;
                let given = data.len();
                Ok(Reply::ok(&op::RecordReply { meta, data }).with_file_bytes(0, given))
            }
            _ => {
                let req: op::DropInlineRequest = decode(body)?;
                let was_inline = self.metadata.borrow().lookup(&req.path)?.inline;
                let drop = |table: &mut crate::metadata::MetadataTable| {
                    table.drop_inline(&req.path, req.file_id, req.token, req.moved)
                };
                // Only a drop that moves an inline record's bytes out changes the record:
                // it is journaled, and undone if the journal refuses it (answered from
                // memory, later calls would take the file as moved while a restart
                // brought its bytes back).
                let meta = match was_inline && req.moved {
                    true => self.change_logged(&req.path, false, drop)?,
                    false => drop(&mut self.metadata.borrow_mut())?,
                };
                Ok(Reply::ok(&op::MetadataReply { meta }))
            }
        }
    }
}
