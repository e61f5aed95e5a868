//! Bytes a server may have lost with its store (a memory server restarted, a tiered one
//! killed, a data directory lost), on the write side. A write into the middle of a chunk
//! skips the bytes before it; a replica that lost them would fill them with zeros, so it
//! refuses the write (`Status::Lost`, see `ops::ChunkWrite`). Before such a write, a
//! replica that lacks the skipped bytes gets the chunk's bytes (all the file held of it,
//! not only those the write skips: the rest would otherwise live on the other replicas
//! alone) from one that kept them, or from one restarted too that holds all of them, so
//! replicated files stay writable and replicated after each replica's restart in turn.
//!
//! **Known gap:** the copy is not atomic with other clients' writes to those bytes: one
//! landing between the copy's read and its write is undone on the restored replica.

use std::time::Instant;

use benchfs_proto::meta::FileMetadata;
use benchfs_proto::placement::ServerIndex;
use benchfs_proto::{ops, Status};

use super::data::chunk_write;
use super::FsClient;
use crate::rpc::OutPayload;

impl FsClient {
    /// Whether server `index`'s store began after the file `meta` was created, so that it
    /// may have lost the file's bytes (the read side's rule, `check_not_lost`).
    pub(super) fn may_have_lost(&self, index: ServerIndex, meta: &FileMetadata) -> bool {
        self.servers[index as usize].born_ns.get() > meta.birth_ns
    }

    /// Whether a write at `offset` of a chunk of `meta`, of which the file held `held`
    /// bytes, skips bytes that one of `replicas` may have lost, with another replica to
    /// restore them from.
    pub(super) fn may_skip_lost(
        &self,
        meta: &FileMetadata,
        (offset, held): (u64, u64),
        replicas: &[ServerIndex],
    ) -> bool {
        offset.min(held) > 0
            && replicas.len() > 1
            && replicas.iter().any(|&r| self.may_have_lost(r, meta))
    }

    /// Before writing at `offset` of chunk `index` of `meta`, of which the file held
    /// `held` bytes, to `replicas`: each replica that may have lost the file's bytes and
    /// holds fewer of the chunk's than the write skips (a one-byte read at the last skipped
    /// byte tells) gets all the file held of the chunk from a replica that kept them and
    /// answers (none a client found silent: each would cost a timeout), written from the
    /// chunk's start. A replica restarted after the file was made is a source too when it
    /// holds all `held` bytes (see [`Self::chunk_held_whole`]), so that after each replica
    /// in turn lost its store the chunk is still writable. Best effort: a replica that
    /// cannot be restored is left to refuse the write itself.
    pub(super) async fn restore_skipped(
        &self,
        meta: &FileMetadata,
        index: u64,
        (offset, held): (u64, u64),
        replicas: &[ServerIndex],
    ) {
        let skipped = offset.min(held);
        if skipped == 0 || replicas.len() < 2 {
            return;
        }
        // Connected first: a store's birth is learnt on connecting (again, after a restart).
        for &replica in replicas {
            let _ = self.conn(replica).await;
        }
        let io = |offset, len| ops::ChunkIo {
            file_id: meta.file_id,
            index,
            offset,
            len,
        };
        for &replica in replicas {
            if !self.may_have_lost(replica, meta) {
                continue;
            }
            let probe = io(skipped - 1, 1);
            // Lacking: the byte lies past the chunk's end, or in a gap the replica
            // opened after its store began (refused as Lost).
            match self
                .call_on::<ops::ReadChunk>(replica, &probe, OutPayload::none())
                .await
            {
                Ok((reply, _)) if reply.len == 0 => {}
                Err(e) if e.status() == Status::Lost => {}
                _ => continue,
            }
            let Some(mut bytes) = self
                .chunk_held_whole(meta, io(0, held), replica, replicas)
                .await
            else {
                continue;
            };
            // Past the source's chunk the file has a hole the source kept: zeros.
            bytes.resize(held as usize, 0);
            let restore = chunk_write(meta, index, (0, held), held, None);
            let restored = self
                .call_on::<ops::WriteChunk>(replica, &restore, OutPayload::Owned(bytes))
                .await;
            tracing::info!(
                file_id = meta.file_id,
                index,
                bytes = held,
                server = replica,
                ok = restored.is_ok(),
                "restored the bytes a write skips on a replica that lost them"
            );
        }
    }

    /// The bytes `whole` (a chunk's first `held` bytes) names from one of `replicas` other
    /// than `lacking`, or `None`. Replicas that kept their store since the file was made
    /// are asked first; past their chunk's end the file has a hole they kept. One restarted
    /// since then serves only a full read: its store refuses writes that would leave gaps
    /// of the file's bytes in a chunk (`Status::Lost`), so a chunk it holds to `held` holds
    /// every byte before, as the read side's rule says (`check_not_lost`). A server a
    /// client found silent is not asked: each would cost a timeout.
    async fn chunk_held_whole(
        &self,
        meta: &FileMetadata,
        whole: ops::ChunkIo,
        lacking: ServerIndex,
        replicas: &[ServerIndex],
    ) -> Option<Vec<u8>> {
        let now = Instant::now();
        let mut sources: Vec<ServerIndex> = replicas
            .iter()
            .copied()
            .filter(|&s| s != lacking && !self.servers[s as usize].is_suspect(now))
            .collect();
        sources.sort_by_key(|&s| self.may_have_lost(s, meta));
        for source in sources {
            match self
                .call_on::<ops::ReadChunk>(source, &whole, OutPayload::none())
                .await
            {
                Ok((reply, bytes))
                    if reply.len == whole.len
                        || reply.whole
                        || !self.may_have_lost(source, meta) =>
                {
                    return Some(bytes)
                }
                _ => continue,
            }
        }
        None
    }
}
