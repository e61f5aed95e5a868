//! Replica repair: brings the replicas of a record back together after a namespace call
//! that failed on one replica and whose undo failed too (a second fault), so the replicas
//! named different files or one named none.
//!
//! Each round, a server takes the next [`RECORDS_PER_ROUND`] of its records in path order
//! and asks the other replicas of each (the placement ring over the registry, with
//! `replication.replicas`) what they hold there ([`ops::CompareRecords`]). A round runs
//! only when the registered servers have been the same for the settle window and none
//! has departed (shut down cleanly), so its ring is the one clients use. Then, for a
//! path that neither side changed (nor had a call try to) within the settle window (twice
//! the RPC timeout, so no call that could still change it is in flight):
//! - the peer holds no record and deleted this file (a tombstone): this server deletes its
//!   record too (the delete wins over the failed undo);
//! - the peer holds none and has no tombstone: this server copies its record there (an
//!   exclusive insert that the peer refuses unless the path is still settled there, so it
//!   never replaces a record nor races a call);
//! - the peer holds another file's record: nothing is done. Which of the two should win
//!   cannot be told from tombstones (each side may hold one of the other's file, left by an
//!   undo), and a wrong guess would lose the path on both; such replicas keep refusing
//!   size updates through the wrong file (ESTALE) and are logged.
//!
//! **Invariant:** a repair changes a record only where both sides have been quiet for the
//! settle window, deletes only this server's own record (checked against the inode number
//! it compared, in the same step), and inserts only where the path is empty. Chunks are
//! never touched: a dropped record's file is left to the orphan sweep, which removes its
//! chunks only when no server names it.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use benchfs_proto::meta::FileMetadata;
use benchfs_proto::ops::{self, CompareRequest, RecordState, COMPARE_RECORDS_MAX};
use benchfs_proto::placement::{PlacementKey, PlacementRing, ServerIndex};
use benchfs_proto::Status;
use benchfs_rpc::{Connection, RpcClient, RpcError};

use crate::handler::ServerState;
use crate::sweep::{Peers, SweepError, SweepOptions};

/// Most records one round compares.
pub const RECORDS_PER_ROUND: usize = 16 * 1024;

/// What a round changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Repaired {
    /// Records copied to a replica that held none.
    pub copied: u64,
    /// Records of this server's deleted because another replica deleted the file.
    pub dropped: u64,
}

/// What to do about one path, given this server's record and a peer's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Nothing,
    CopyToPeer,
    DropOurs,
    /// The replicas name two files; left as they are.
    TwoFiles,
}

/// The rule of the module docs.
fn decide(ours: &FileMetadata, theirs: &RecordState) -> Action {
    if !theirs.settled {
        return Action::Nothing;
    }
    match theirs.meta {
        None if theirs.deleted => Action::DropOurs,
        None => Action::CopyToPeer,
        Some(other) if other.file_id == ours.file_id => Action::Nothing,
        Some(_) => Action::TwoFiles,
    }
}

/// What a round leaves for the next.
#[derive(Debug, Default)]
pub struct Progress {
    /// The last path compared, so the next round goes on from there.
    cursor: Option<String>,
    /// The registered servers and since when they have been these.
    membership: Option<(Vec<String>, Instant)>,
}

impl Progress {
    /// Whether the registered servers have been `nodes` for at least `settle`; notes a
    /// change.
    fn membership_settled(&mut self, nodes: &[String], settle: Duration) -> bool {
        match &self.membership {
            Some((known, since)) if known.as_slice() == nodes => since.elapsed() >= settle,
            _ => {
                self.membership = Some((nodes.to_vec(), Instant::now()));
                false
            }
        }
    }
}

/// One round; see the module docs.
pub(crate) async fn repair_once(
    state: &ServerState,
    rpc: &Rc<RpcClient>,
    peers: &mut Peers,
    options: &SweepOptions,
    progress: &mut Progress,
) -> Result<Repaired, SweepError> {
    let mut repaired = Repaired::default();
    if options.replicas < 2 {
        return Ok(repaired);
    }
    // The ring must be the one clients use: with a server away (shut down cleanly, or
    // not yet published) it names other replicas, and a copy would go where no client
    // looks yet every listing finds it.
    let entries = crate::sweep::every_peer(options)?;
    let ring = PlacementRing::new(
        entries.iter().map(|e| e.node_id.as_str()),
        options.virtual_nodes,
    )?;
    let settle = crate::metadata::settle_window(options.rpc_timeout);
    if !progress.membership_settled(ring.nodes(), settle) {
        return Ok(repaired);
    }
    let Some(me) = ring.index_of(state.node_id()) else {
        return Ok(repaired);
    };
    let records = state.records_after(progress.cursor.as_deref(), RECORDS_PER_ROUND);
    progress.cursor = match records.len() {
        RECORDS_PER_ROUND => records.last().map(|(path, _)| path.clone()),
        _ => None,
    };
    let mut asks: HashMap<ServerIndex, Vec<(String, FileMetadata)>> = HashMap::new();
    for (path, meta) in records {
        let set = ring.replicas(PlacementKey::Metadata(&path), options.replicas);
        if !set.contains(&me) {
            continue;
        }
        for server in set.into_iter().filter(|s| *s != me) {
            asks.entry(server).or_default().push((path.clone(), meta));
        }
    }
    for (server, records) in asks {
        let node = &ring.nodes()[server as usize];
        let Some(entry) = entries.iter().find(|e| &e.node_id == node) else {
            continue;
        };
        let conn = match peers.connection(rpc, node, entry.addr).await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::debug!(peer = %node, error = %e, "replica repair skips an unreachable peer");
                continue;
            }
        };
        if let Err(e) = compare_with(state, conn, &records, &mut repaired).await {
            tracing::debug!(peer = %node, error = %e, "replica repair stopped with a peer");
        }
    }
    Ok(repaired)
}

/// Compares `records` with one peer, in batches that fit a request, and acts on each.
async fn compare_with(
    state: &ServerState,
    conn: &Connection,
    records: &[(String, FileMetadata)],
    repaired: &mut Repaired,
) -> Result<(), RpcError> {
    for batch in batches(records) {
        let request = CompareRequest {
            records: batch.iter().map(|(p, m)| (p.clone(), m.file_id)).collect(),
        };
        let reply = conn.call::<ops::CompareRecords>(&request).await?;
        if reply.states.len() != batch.len() {
            return Err(RpcError::Status {
                status: Status::Protocol,
                server: conn.server().to_string(),
            });
        }
        for ((path, ours), theirs) in batch.iter().zip(&reply.states) {
            match decide(ours, theirs) {
                Action::Nothing => {}
                Action::TwoFiles => tracing::warn!(%path, file_id = ours.file_id,
                    peer = conn.server(), "replicas name two files; replica repair leaves them"),
                Action::DropOurs => match state.drop_deleted_record(path, ours.file_id) {
                    Ok(true) => {
                        tracing::info!(%path, file_id = ours.file_id, peer = conn.server(),
                            "replica repair removed a record another replica deleted");
                        repaired.dropped += 1;
                    }
                    Ok(false) => {}
                    Err(status) => {
                        tracing::warn!(%path, ?status, "replica repair could not remove a record")
                    }
                },
                Action::CopyToPeer => {
                    let Some((meta, data)) = state.settled_record(path, ours.file_id) else {
                        continue;
                    };
                    let insert = ops::InsertRequest {
                        path: path.clone(),
                        meta,
                        exclusive: true,
                        settled_only: true,
                        data,
                    };
                    match conn.call::<ops::MetadataInsert>(&insert).await {
                        Ok(_) => {
                            tracing::info!(%path, file_id = meta.file_id, peer = conn.server(),
                                "replica repair copied a record to a replica that lacked it");
                            repaired.copied += 1;
                        }
                        // A record or a call that got there meanwhile: the next round
                        // compares again.
                        Err(e) if matches!(e.status(), Status::Exists | Status::Busy) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
    Ok(())
}

/// Consecutive runs of `records` of at most [`COMPARE_RECORDS_MAX`] whose request fits a
/// body.
fn batches(records: &[(String, FileMetadata)]) -> impl Iterator<Item = &[(String, FileMetadata)]> {
    const ENTRY_FIXED: usize = 8 + 2;
    let budget = benchfs_proto::frame::BODY_LEN_MAX as usize - 4;
    let mut rest = records;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut n = 0;
        while n < rest.len() && n < COMPARE_RECORDS_MAX {
            let size = ENTRY_FIXED + rest[n].0.len();
            if n > 0 && bytes + size > budget {
                break;
            }
            bytes += size;
            n += 1;
        }
        let (batch, tail) = rest.split_at(n);
        rest = tail;
        Some(batch)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use benchfs_proto::meta::EntryKind;

    fn record(file_id: u64) -> FileMetadata {
        FileMetadata {
            file_id,
            kind: EntryKind::File,
            size: 0,
            mode: 0o644,
            uid: 0,
            gid: 0,
            chunk_size: 1 << 22,
            mtime_ns: 0,
            ctime_ns: 0,
            atime_ns: 0,
            inline: false,
        }
    }

    fn state(meta: Option<FileMetadata>, settled: bool, deleted: bool) -> RecordState {
        RecordState {
            meta,
            settled,
            deleted,
        }
    }

    #[test]
    fn nothing_is_done_while_the_peer_has_not_settled() {
        let ours = record(1);
        for theirs in [None, Some(record(2))] {
            for deleted in [false, true] {
                assert_eq!(
                    decide(&ours, &state(theirs, false, deleted)),
                    Action::Nothing
                );
            }
        }
    }

    #[test]
    fn a_missing_record_is_copied_unless_the_peer_deleted_the_file() {
        let ours = record(1);
        assert_eq!(decide(&ours, &state(None, true, false)), Action::CopyToPeer);
        assert_eq!(decide(&ours, &state(None, true, true)), Action::DropOurs);
    }

    #[test]
    fn the_same_file_needs_nothing() {
        let ours = record(1);
        assert_eq!(
            decide(&ours, &state(Some(record(1)), true, false)),
            Action::Nothing
        );
    }

    #[test]
    fn two_files_are_never_dropped_on_either_side() {
        // Each side may hold a tombstone of the other's file (an undo replaced it): a rule
        // trusting tombstones here would drop both records and lose the path.
        let (x, w) = (record(1), record(2));
        for deleted in [false, true] {
            assert_eq!(decide(&x, &state(Some(w), true, deleted)), Action::TwoFiles);
            assert_eq!(decide(&w, &state(Some(x), true, deleted)), Action::TwoFiles);
        }
    }

    #[test]
    fn membership_counts_as_settled_only_after_it_held_for_the_window() {
        let mut progress = Progress::default();
        let nodes = ["a".to_string(), "b".to_string()];
        let window = Duration::from_millis(40);
        assert!(!progress.membership_settled(&nodes, window));
        assert!(!progress.membership_settled(&nodes, window));
        std::thread::sleep(window);
        assert!(progress.membership_settled(&nodes, window));
        assert!(
            !progress.membership_settled(&nodes[..1], window),
            "a server went"
        );
        assert!(
            !progress.membership_settled(&nodes, window),
            "and came back"
        );
    }

    #[test]
    fn batches_keep_every_record_in_order_within_the_limits() {
        let long = "/".to_string() + &"x".repeat(4000);
        let records: Vec<_> = (0..600)
            .map(|i| {
                (
                    if i % 7 == 0 {
                        long.clone()
                    } else {
                        format!("/f{i}")
                    },
                    record(i),
                )
            })
            .collect();
        let mut seen = 0;
        for batch in batches(&records) {
            assert!(!batch.is_empty() && batch.len() <= COMPARE_RECORDS_MAX);
            let request = CompareRequest {
                records: batch.iter().map(|(p, m)| (p.clone(), m.file_id)).collect(),
            };
            use benchfs_proto::ops::Message;
            assert!(request.to_bytes().len() <= benchfs_proto::frame::BODY_LEN_MAX as usize);
            assert_eq!(batch[0].1.file_id, seen as u64);
            seen += batch.len();
        }
        assert_eq!(seen, records.len());
    }
}
