//! Replica repair: brings the replicas of a record back together after a call that failed
//! on one replica and whose undo failed too (a second fault), so the replicas name
//! different files, differ in size or attributes, or one names none.
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
//! - the peer holds none and has no tombstone, or holds an older record that differs from
//!   this one: this server copies its record there. Last writer wins: of two records that
//!   differ in anything but their times (`Content`), the one changed last is kept (the
//!   later of `mtime_ns`, which size updates and writes stamp, and `ctime_ns`, which
//!   attribute changes stamp), ties broken by content.
//!   The copy is an insert the peer refuses unless the path is still settled there and
//!   empty or older (`supersedes`, checked again in the same step), so it never races a
//!   call nor replaces a newer record. A peer holding the newer record copies it here.
//!
//! A failed call may thus take effect after all (a rename over a file whose undo failed
//! keeps the renamed file there), as a call that returns an error may; replicas never stay
//! apart.
//!
//! **Invariant:** a repair changes a record only where both sides have been quiet for the
//! settle window, deletes only this server's own record (checked against the inode number
//! it compared, in the same step), and replaces only an older record or none. Chunks are
//! never touched: a file whose record was dropped or replaced is left to the orphan sweep,
//! which removes its chunks only when no server names it.

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
    /// Records copied to a replica that held none or an older one.
    pub copied: u64,
    /// Records of this server's deleted because another replica deleted the file.
    pub dropped: u64,
}

/// What replicas must agree on in a record: everything but its times, which each replica
/// stamps from its own clock when it applies a change. Its order breaks ties between two
/// records changed at the same nanosecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Content {
    file_id: u64,
    size: u64,
    data_hash: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    kind: u8,
    inline: bool,
    chunk_size: u64,
}

impl Content {
    /// The content of `meta`, whose inline bytes hash to `data_hash` ([`data_hash`]).
    pub(crate) fn new(meta: &FileMetadata, data_hash: u64) -> Content {
        Content {
            file_id: meta.file_id,
            size: meta.size,
            data_hash,
            mode: meta.mode,
            uid: meta.uid,
            gid: meta.gid,
            kind: meta.kind as u8,
            inline: meta.inline,
            chunk_size: meta.chunk_size,
        }
    }
}

/// The hash the repair compares a record's bytes by: XXH3-64, or 0 for none.
pub(crate) fn data_hash(data: &[u8]) -> u64 {
    if data.is_empty() {
        0
    } else {
        xxhash_rust::xxh3::xxh3_64(data)
    }
}

/// When a record last changed: the later of its modification time (size updates and
/// writes) and its change time (attribute changes).
fn changed_ns(meta: &FileMetadata) -> u64 {
    meta.mtime_ns.max(meta.ctime_ns)
}

/// Whether record `a` should replace record `b` at one path: they differ, and `a` changed
/// later (last writer wins; ties broken by content, so of two differing records exactly
/// one supersedes the other).
pub(crate) fn supersedes(a: (&FileMetadata, Content), b: (&FileMetadata, Content)) -> bool {
    a.1 != b.1 && (changed_ns(a.0), a.1) > (changed_ns(b.0), b.1)
}

/// What to do about one path, given this server's record and a peer's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Nothing,
    CopyToPeer,
    DropOurs,
}

/// The rule of the module docs; `our_hash` is [`data_hash`] of our record's bytes.
fn decide(ours: &FileMetadata, our_hash: u64, theirs: &RecordState) -> Action {
    if !theirs.settled {
        return Action::Nothing;
    }
    match theirs.meta {
        None if theirs.deleted => Action::DropOurs,
        None => Action::CopyToPeer,
        Some(other)
            if supersedes(
                (ours, Content::new(ours, our_hash)),
                (&other, Content::new(&other, theirs.data_hash)),
            ) =>
        {
            Action::CopyToPeer
        }
        // The same, or the peer's is newer: the peer copies it here.
        Some(_) => Action::Nothing,
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
        let conn = match peers.connection(rpc, entry).await {
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
            // Hashed a batch at a time, so a round never stalls the server on all of its
            // inline bytes at once.
            let our_hash = match ours.inline {
                true => state.data_hash_of(path),
                false => 0,
            };
            match decide(ours, our_hash, theirs) {
                Action::Nothing => {}
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
                        exclusive: false,
                        settled_only: true,
                        newer_only: true,
                        data,
                    };
                    match conn.call::<ops::MetadataInsert>(&insert).await {
                        Ok(_) => {
                            tracing::info!(%path, file_id = meta.file_id, peer = conn.server(),
                                "replica repair copied a record to a replica that lacked it or held an older one");
                            repaired.copied += 1;
                        }
                        // A newer record or a call that got there meanwhile: the next
                        // round compares again. A sealed file is being removed.
                        Err(e)
                            if matches!(
                                e.status(),
                                Status::Exists | Status::Busy | Status::Stale
                            ) => {}
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
            birth_ns: 0,
            inline: false,
            cut_gen: 0,
        }
    }

    fn state(meta: Option<FileMetadata>, settled: bool, deleted: bool) -> RecordState {
        RecordState {
            meta,
            data_hash: 0,
            settled,
            deleted,
        }
    }

    /// `meta` changed at `ctime_ns`.
    fn changed(mut meta: FileMetadata, ctime_ns: u64) -> FileMetadata {
        meta.ctime_ns = ctime_ns;
        meta
    }

    #[test]
    fn nothing_is_done_while_the_peer_has_not_settled() {
        let ours = changed(record(1), 10);
        for theirs in [None, Some(record(2)), Some(changed(record(1), 5))] {
            for deleted in [false, true] {
                assert_eq!(
                    decide(&ours, 0, &state(theirs, false, deleted)),
                    Action::Nothing
                );
            }
        }
    }

    #[test]
    fn a_missing_record_is_copied_unless_the_peer_deleted_the_file() {
        let ours = record(1);
        assert_eq!(
            decide(&ours, 0, &state(None, true, false)),
            Action::CopyToPeer
        );
        assert_eq!(decide(&ours, 0, &state(None, true, true)), Action::DropOurs);
    }

    #[test]
    fn records_that_differ_only_in_their_times_need_nothing() {
        let ours = changed(record(1), 20);
        let mut theirs = changed(record(1), 10);
        theirs.mtime_ns = 7;
        theirs.atime_ns = 9;
        assert_eq!(
            decide(&ours, 0, &state(Some(theirs), true, false)),
            Action::Nothing
        );
    }

    #[test]
    fn of_two_differing_records_only_the_later_one_is_copied() {
        let mut bigger = record(1);
        bigger.size = 100;
        let mut chmod = record(1);
        chmod.mode = 0o600;
        let pairs = [
            (record(2), record(1)), // two files
            (bigger, record(1)),    // a size one replica missed
            (chmod, record(1)),     // attributes one replica missed
        ];
        for (a, b) in pairs {
            let (new, old) = (changed(a, 20), changed(b, 10));
            for deleted in [false, true] {
                assert_eq!(
                    decide(&new, 0, &state(Some(old), true, deleted)),
                    Action::CopyToPeer,
                    "{new:?} over {old:?}"
                );
                assert_eq!(
                    decide(&old, 0, &state(Some(new), true, deleted)),
                    Action::Nothing,
                    "{old:?} under {new:?}"
                );
            }
        }
    }

    #[test]
    fn a_size_update_orders_records_by_its_modification_time() {
        // Size updates stamp mtime, not ctime: the later one still wins.
        let (mut new, mut old) = (record(1), record(1));
        new.size = 100;
        new.mtime_ns = 30;
        old.ctime_ns = 20;
        assert_eq!(
            decide(&new, 0, &state(Some(old), true, false)),
            Action::CopyToPeer
        );
        assert_eq!(
            decide(&old, 0, &state(Some(new), true, false)),
            Action::Nothing
        );
    }

    #[test]
    fn inline_bytes_that_differ_are_repaired_like_any_content() {
        let (mut new, mut old) = (changed(record(1), 20), changed(record(1), 10));
        new.inline = true;
        old.inline = true;
        let theirs = RecordState {
            data_hash: data_hash(b"old"),
            ..state(Some(old), true, false)
        };
        assert_eq!(decide(&new, data_hash(b"new"), &theirs), Action::CopyToPeer);
        assert_eq!(decide(&new, data_hash(b"old"), &theirs), Action::Nothing);
    }

    #[test]
    fn exactly_one_of_two_differing_records_supersedes_the_other() {
        // The same change time: the content decides, the same way on both sides.
        let a = (&record(1), Content::new(&record(1), 5));
        let b = (&record(1), Content::new(&record(1), 6));
        assert!(supersedes(b, a) && !supersedes(a, b));
        assert!(!supersedes(a, a));
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
