//! Changes of a record's size on every replica (a truncate's, a writer's publish, an
//! append's claim), and the undo of one that a replica failed.

use benchfs_proto::meta::{cut_gen_older, SizeUpdate};
use benchfs_proto::placement::{PlacementKey, ServerIndex};
use benchfs_proto::{ops, Rpc, Status};
use futures_util::future::join_all;

use super::routing::PartialChange;
use super::FsClient;
use crate::rpc::{OutPayload, RpcError};

impl FsClient {
    /// [`FsClient::change_record`] of a size change (a truncate's, a publish's, an append's
    /// claim), returning the reply of every replica that took it, in replica order (never
    /// none; a replica that got the record copied instead has none). If a replica fails
    /// it, those that took it are put back ([`ops::RestoreSize`]) unless their record
    /// changed since: a failed truncate had left the replicas with two sizes, readers saw
    /// either, and the replica repair could later keep one that dropped an acknowledged
    /// append.
    pub(super) async fn change_size<R: Rpc<Reply = ops::SizeReply>>(
        &self,
        path: &str,
        file_id: u64,
        req: &R::Request,
    ) -> Result<Vec<ops::SizeReply>, RpcError> {
        let changed = self.change_record_each::<R>(path, file_id, req).await;
        self.undo_unless_all_took(path, file_id, changed).await
    }

    /// Claims the range an append writes (`req`) on every replica of the record at
    /// `path`, ordered by its first replica: that one alone takes the claim
    /// (`max(size, floor) + len`), and the others grow to at least the end it gave while
    /// their cut count is the one it saw ([`SizeUpdate::AtLeastUncut`]). Growing to at
    /// least a size commutes with itself and with writers' size updates, so replicas
    /// that take two clients' claims in other orders still agree; adding to the size did
    /// not (a claim's floor above the record placed another client's append apart on
    /// each). Costs a second round trip with more than one replica. Returns the replies
    /// as [`FsClient::change_size`] does, the first replica's first.
    pub(super) async fn claim_append_in_order(
        &self,
        path: &str,
        req: &ops::ClaimAppendRequest,
    ) -> Result<Vec<ops::SizeReply>, RpcError> {
        let servers = self.replica_set(PlacementKey::Metadata(path));
        let (&first, others) = servers.split_first().expect("at least one replica");
        let ask_first = || self.call_on::<ops::ClaimAppend>(first, req, OutPayload::none());
        let mut claimed = ask_first().await;
        let lost =
            |c: &Result<_, RpcError>| c.as_ref().is_err_and(|e| e.status() == Status::NotFound);
        if let (true, Some(&source)) = (lost(&claimed), others.first()) {
            // A first replica back with an empty store gets the record from another.
            if self.may_lack_records(first, others)
                && matches!(
                    self.copy_record(path, req.file_id, source, first).await,
                    Ok(_) | Err(Status::Exists)
                )
            {
                claimed = ask_first().await;
            }
        }
        let (claimed, _) = claimed?;
        let end = ops::UpdateSizeRequest {
            path: path.to_string(),
            file_id: req.file_id,
            size: claimed.meta.size,
            how: SizeUpdate::AtLeastUncut,
            cut_gen: claimed.meta.cut_gen,
        };
        let grown = join_all(
            others
                .iter()
                .map(|&s| self.call_on::<ops::UpdateSize>(s, &end, OutPayload::none())),
        )
        .await;
        let mut answers = vec![(first, Ok(claimed))];
        answers.extend(
            others
                .iter()
                .zip(grown)
                .map(|(&s, r)| (s, r.map(|(reply, _)| reply))),
        );
        for (server, answer) in &mut answers[1..] {
            self.grow_once_cut(*server, answer, &end).await;
        }
        let changed = self
            .settle_change::<ops::UpdateSize>(path, req.file_id, answers, &end)
            .await;
        self.undo_unless_all_took(path, req.file_id, changed).await
    }

    /// Asks again server `server`, whose cut count predates `end`'s (`answer`), to grow
    /// to an append's end: the first replica took a truncate before the claim that this
    /// one has not taken yet. The truncating client sends it to every replica at once, so
    /// it is on its way; once it lands, the end counts here too. One that never comes (its
    /// client died between replicas) leaves the replicas apart, as the truncate itself did.
    async fn grow_once_cut(
        &self,
        server: ServerIndex,
        answer: &mut Result<ops::SizeReply, RpcError>,
        end: &ops::UpdateSizeRequest,
    ) {
        let behind = |a: &Result<ops::SizeReply, RpcError>| {
            a.as_ref()
                .is_ok_and(|r| cut_gen_older(r.meta.cut_gen, end.cut_gen))
        };
        self.ask_again_while::<ops::UpdateSize>(server, answer, end, behind)
            .await;
        if behind(answer) {
            tracing::error!(
                path = end.path,
                server = self.servers[server as usize].name(),
                "a replica did not take a cut its first replica took before an append: \
                 the replicas differ until repaired"
            );
        }
    }

    /// The replies of a size change that every replica took, else its first failure
    /// once the replicas that took it are put back.
    async fn undo_unless_all_took(
        &self,
        path: &str,
        file_id: u64,
        changed: Result<Vec<(ServerIndex, ops::SizeReply)>, PartialChange<ops::SizeReply>>,
    ) -> Result<Vec<ops::SizeReply>, RpcError> {
        match changed {
            Ok(replies) => Ok(replies.into_iter().map(|(_, reply)| reply).collect()),
            Err(partial) => {
                if !self.took_late(path, file_id, &partial).await {
                    self.restore_sizes(path, file_id, &partial).await;
                }
                Err(partial.error)
            }
        }
    }

    /// Whether every replica of `partial` whose call timed out holds the record as the
    /// change left it on the first that took it: a server slow, not stopped, took the
    /// change after the call gave up, and putting the others back would part them.
    async fn took_late(
        &self,
        path: &str,
        file_id: u64,
        partial: &PartialChange<ops::SizeReply>,
    ) -> bool {
        let Some((_, first)) = partial.took.first() else {
            return false;
        };
        if partial.timed_out.is_empty() {
            return false;
        }
        let lookup = ops::PathRequest {
            path: path.to_string(),
        };
        let holds = partial.timed_out.iter().map(|&server| {
            self.call_on::<ops::MetadataLookup>(server, &lookup, OutPayload::none())
        });
        let changed = (first.meta.size, first.meta.cut_gen);
        join_all(holds).await.into_iter().all(|held| {
            held.is_ok_and(|(r, _)| {
                r.meta.file_id == file_id && (r.meta.size, r.meta.cut_gen) == changed
            })
        })
    }

    /// Puts back the record at `path` on each replica of `partial` that took a failed size
    /// change, or got the changed record copied. One that refuses or fails is left to the
    /// replica repair (logged).
    async fn restore_sizes(
        &self,
        path: &str,
        file_id: u64,
        partial: &PartialChange<ops::SizeReply>,
    ) {
        let Some((_, first)) = partial.took.first() else {
            return;
        };
        let took = partial.took.iter().map(|(server, r)| (*server, r.meta, r));
        // A copy holds the first replica's changed record: its state before is that one's.
        let copied = partial
            .copied
            .iter()
            .map(|(server, meta)| (*server, *meta, first));
        let changed = took
            .chain(copied)
            .filter(|(_, now, r)| (now.size, now.cut_gen) != (r.size_before, r.cut_gen_before));
        let restores = changed.map(|(server, now, r)| async move {
            let req = ops::RestoreSizeRequest {
                path: path.to_string(),
                file_id,
                now_size: now.size,
                now_cut_gen: now.cut_gen,
                now_ctime_ns: now.ctime_ns,
                size: r.size_before,
                cut_gen: r.cut_gen_before,
            };
            let restored = self
                .call_on::<ops::RestoreSize>(server, &req, OutPayload::none())
                .await;
            if let Err(e) = restored {
                tracing::error!(
                    error = %e,
                    path,
                    "undo of a failed size change failed: the replicas differ until repaired"
                );
            }
        });
        join_all(restores).await;
    }
}
