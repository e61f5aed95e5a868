//! The orphan sweep: removes the chunks of files deleted while this server did not get
//! the removal (it was stopped, the client was killed between the steps, the call timed
//! out), so a delete that fails part way leaks nothing for long.
//!
//! **Invariant:** chunks go only on positive evidence. A file's chunks here are removed
//! when no server names it, every server in the registry answered, and either some server
//! holds a tombstone for its inode number (it deleted the file's last record; inode
//! numbers are never handed out again) or no server has named it for
//! `lost_record_grace`, in rounds where every server answered: its records were lost
//! (a memory server restarted empty, a data directory lost, with no replica left). A
//! record absent once proves nothing: its server may be down, and every step of the
//! protocol that moves a record (a rename, an undo) writes the new one before it removes
//! the old, so no live file goes unnamed for longer than a call. One round asks about at
//! most [`FILE_IDS_MAX`] files, each round past the last one's, and removes chunks only
//! after every server sealed the file ([`ops::SealFiles`]): the answers come one server at
//! a time, and a sealed file can take no record again, so none can come back between two
//! answers. A round also waits while a server that stopped cleanly is away: it leaves a
//! departed marker in the registry ([`registry::departed`]), since it may hold the only
//! record of a file.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use benchfs_config::registry::{self, RegistryError, ServerEntry};
use benchfs_proto::ops::{self, FILE_IDS_MAX};
use benchfs_rpc::{Connection, RpcClient, RpcError};
use benchfs_store::StoreError;
use benchfs_ucx::Context;

use crate::handler::ServerState;
use crate::metadata::Seal;

/// How a server sweeps.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// Time between rounds.
    pub interval: Duration,
    /// Where the peers are published.
    pub registry_dir: PathBuf,
    /// How long a peer has to answer.
    pub rpc_timeout: Duration,
    /// Copies of each record (`replication.replicas`), for the replica repair.
    pub replicas: usize,
    /// Points per server on the placement ring (`placement.virtual_nodes`).
    pub virtual_nodes: u32,
}

/// Why a round stopped before removing anything.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SweepError {
    /// The local store could not be listed or changed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The registry could not be read.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The registry's servers make no placement ring.
    #[error(transparent)]
    Ring(#[from] benchfs_proto::placement::PlacementError),
    /// A peer that served in the cluster publishes no entry (stopped, or restarting); it
    /// may hold a record.
    #[error("peer {node} is a member that publishes no entry (stopped, or restarting)")]
    Missing {
        /// The peer's node id.
        node: String,
    },
    /// Sealing files here failed (the journal).
    #[error("sealing files: {0:?}")]
    Seal(benchfs_proto::Status),
    /// A peer did not answer, so nothing can be known to be unnamed.
    #[error("peer {node}: {source}")]
    Peer {
        /// The peer's node id.
        node: String,
        /// Why.
        source: RpcError,
    },
}

/// Sweeps, then repairs replicas ([`crate::repair`]), every `options.interval` until the
/// task is dropped.
pub async fn run(state: Rc<ServerState>, context: Arc<Context>, options: SweepOptions) {
    let name = format!("sweep-{}", state.node_id());
    let rpc = match crate::peer::peer_client(&context, state.secret(), options.rpc_timeout, name) {
        Ok(rpc) => rpc,
        Err(e) => {
            tracing::error!(error = %e, "the orphan sweep cannot start");
            return;
        }
    };
    let mut peers = Peers::default();
    let mut rounds = Rounds::default();
    let mut progress = crate::repair::Progress::default();
    let mut tick = tokio::time::interval(options.interval);
    tick.tick().await;
    loop {
        tick.tick().await;
        match sweep_once(&state, &rpc, &mut peers, &options, &mut rounds).await {
            Ok(0) => {}
            Ok(chunks) => tracing::info!(chunks, "orphan sweep removed chunks of unnamed files"),
            Err(e) => tracing::debug!(error = %e, "orphan sweep round skipped"),
        }
        match crate::repair::repair_once(&state, &rpc, &mut peers, &options, &mut progress).await {
            Ok(repaired) if repaired != crate::repair::Repaired::default() => {
                tracing::info!(
                    copied = repaired.copied,
                    dropped = repaired.dropped,
                    "replica repair round"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "replica repair round skipped"),
        }
    }
}

/// Connections to the peers, kept across rounds.
#[derive(Default)]
pub(crate) struct Peers {
    connections: HashMap<String, (SocketAddr, Connection)>,
}

impl Peers {
    /// A connection to the server of `entry`, refused if the server answering at its
    /// address is another (see [`Connection::serves_as`]).
    pub(crate) async fn connection(
        &mut self,
        rpc: &Rc<RpcClient>,
        entry: &ServerEntry,
    ) -> Result<&Connection, RpcError> {
        let (node, addr, born) = (&entry.node_id, entry.addr, registry::born_ns(entry));
        let stale = match self.connections.get(node) {
            Some((known, conn)) => {
                *known != addr || conn.is_failed() || !conn.serves_as(node, born)
            }
            None => true,
        };
        if stale {
            self.connections.remove(node);
            let conn = rpc.connect(addr).await?;
            if !conn.serves_as(node, born) {
                return Err(RpcError::Unusable {
                    server: format!("{node}@{addr}"),
                    reason: format!(
                        "another server answers there ({}), not the one the registry names",
                        conn.server()
                    ),
                });
            }
            self.connections.insert(node.to_string(), (addr, conn));
        }
        Ok(&self.connections[node].1)
    }
}

/// The servers in the registry, or `Missing` while one that served in the cluster has
/// no entry (stopped cleanly, or restarting after a kill): a round that asked only the
/// others could act on a partial view (a record only the missing one holds, a ring
/// without it).
pub(crate) fn every_peer(options: &SweepOptions) -> Result<Vec<ServerEntry>, SweepError> {
    if let Some(node) = registry::departed(&options.registry_dir)?.pop() {
        return Err(SweepError::Missing { node });
    }
    let entries = registry::read(&options.registry_dir)?;
    if let Some(node) = registry::unpublished_members(&options.registry_dir, &entries).pop() {
        return Err(SweepError::Missing { node });
    }
    Ok(entries)
}

/// How long no server may name a file with chunks here before its records count as lost:
/// a few rounds, and far longer than any call of a client that moves a record.
pub(crate) fn lost_record_grace(options: &SweepOptions) -> Duration {
    (options.interval * 3).max(options.rpc_timeout * 4)
}

/// What the sweep carries from one round to the next.
#[derive(Default)]
struct Rounds {
    /// The largest inode number the last round asked about; the next starts past it.
    after: u64,
    /// Files with chunks here that no server named, since the first round that found so
    /// (entries go when a server names the file again or its chunks go).
    unnamed_since: HashMap<u64, Instant>,
}

impl Rounds {
    /// Notes which of `asked` no server named (`named` are those some server did) at
    /// `now`; returns those that no server has named for `grace`.
    fn unnamed_for(
        &mut self,
        asked: &[u64],
        named: &HashSet<u64>,
        now: Instant,
        grace: Duration,
    ) -> HashSet<u64> {
        let mut lost = HashSet::new();
        for &id in asked {
            if named.contains(&id) {
                self.unnamed_since.remove(&id);
                continue;
            }
            let since = *self.unnamed_since.entry(id).or_insert(now);
            if now.duration_since(since) >= grace {
                lost.insert(id);
            }
        }
        lost
    }
}

/// One round: returns the chunks removed.
async fn sweep_once(
    state: &ServerState,
    rpc: &Rc<RpcClient>,
    peers: &mut Peers,
    options: &SweepOptions,
    rounds: &mut Rounds,
) -> Result<u64, SweepError> {
    let entries = every_peer(options)?;
    let candidates = state.unnamed_files(rounds.after, FILE_IDS_MAX).await?;
    let Some(&last) = candidates.last() else {
        rounds.unnamed_since.clear();
        return Ok(0);
    };
    let (named, mut deleted) =
        ask_peers::<ops::FilesExist>(state, rpc, peers, &entries, &candidates).await?;
    rounds.after = last;
    if candidates.len() < FILE_IDS_MAX {
        // Every such file was asked about: what is not among them went another way.
        let asked: HashSet<u64> = candidates.iter().copied().collect();
        rounds.unnamed_since.retain(|id, _| asked.contains(id));
    }
    deleted.extend(candidates.iter().filter(|id| state.deleted_here(**id)));
    let lost = rounds.unnamed_for(
        &candidates,
        &named,
        Instant::now(),
        lost_record_grace(options),
    );
    let orphans: Vec<u64> = candidates
        .into_iter()
        .filter(|id| !named.contains(id) && (deleted.contains(id) || lost.contains(id)))
        .collect();
    if orphans.is_empty() {
        return Ok(0);
    }
    let sealed = seal_everywhere(state, rpc, peers, &entries, orphans.clone()).await?;
    // Named after all (sealing found a record): the wait starts again if it goes.
    for id in orphans.iter().filter(|id| !sealed.contains(id)) {
        rounds.unnamed_since.remove(id);
    }
    let mut removed = 0;
    for id in sealed {
        rounds.unnamed_since.remove(&id);
        if lost.contains(&id) && !deleted.contains(&id) {
            tracing::warn!(
                file_id = id,
                "removing the chunks of a file no server has named for {:?}: its records \
                 were lost",
                lost_record_grace(options)
            );
        }
        removed += state.remove_orphan(id).await?;
    }
    Ok(removed)
}

/// Seals `orphans` on every server, so that no record can name them again, and returns
/// those no server named meanwhile, whose chunks may now go. The answers above came one
/// server at a time, and a record can come back between them (the undo of an unlink that
/// failed on a stopped server): only a seal that every server took proves that no name is
/// left or will be. The seals are tentative first ([`ops::SealFiles`]), lifted again for
/// files some server still names, then for good ([`ops::SealFilesForGood`]), which a
/// concurrent sealer's lifting cannot undo.
async fn seal_everywhere(
    state: &ServerState,
    rpc: &Rc<RpcClient>,
    peers: &mut Peers,
    entries: &[ServerEntry],
    orphans: Vec<u64>,
) -> Result<Vec<u64>, SweepError> {
    let mut named: HashSet<u64> = state
        .seal_files(&orphans, Seal::Tentative)
        .map_err(SweepError::Seal)?
        .into_iter()
        .collect();
    match ask_peers::<ops::SealFiles>(state, rpc, peers, entries, &orphans).await {
        Ok((more, _)) => named.extend(more),
        Err(e) => {
            unseal_everywhere(state, rpc, peers, entries, orphans).await;
            return Err(e);
        }
    }
    let (named, orphans): (Vec<u64>, Vec<u64>) =
        orphans.into_iter().partition(|id| named.contains(id));
    if !named.is_empty() {
        unseal_everywhere(state, rpc, peers, entries, named).await;
    }
    if orphans.is_empty() {
        return Ok(orphans);
    }
    let mut named: HashSet<u64> = state
        .seal_files(&orphans, Seal::ForGood)
        .map_err(SweepError::Seal)?
        .into_iter()
        .collect();
    let (more, _) =
        ask_peers::<ops::SealFilesForGood>(state, rpc, peers, entries, &orphans).await?;
    named.extend(more);
    Ok(orphans
        .into_iter()
        .filter(|id| !named.contains(id))
        .collect())
}

/// Asks every peer `R` about `ids`; returns the ids some peer names, and those some peer
/// deleted (or, for a seal, sealed). Fails on the first peer that does not answer.
async fn ask_peers<R>(
    state: &ServerState,
    rpc: &Rc<RpcClient>,
    peers: &mut Peers,
    entries: &[ServerEntry],
    ids: &[u64],
) -> Result<(HashSet<u64>, HashSet<u64>), SweepError>
where
    R: ops::Rpc<Request = ops::FileIdsRequest, Reply = ops::FileStatesReply>,
{
    let question = ops::FileIdsRequest {
        file_ids: ids.to_vec(),
    };
    let (mut named, mut deleted) = (HashSet::new(), HashSet::new());
    for entry in entries {
        if entry.node_id == state.node_id() {
            continue;
        }
        let answer = match peers.connection(rpc, entry).await {
            Ok(conn) => conn.call::<R>(&question).await,
            Err(e) => Err(e),
        };
        let reply = answer.map_err(|source| SweepError::Peer {
            node: entry.node_id.clone(),
            source,
        })?;
        named.extend(reply.named);
        deleted.extend(reply.deleted);
    }
    Ok((named, deleted))
}

/// Lifts the tentative seals of `ids` wherever it can. A seal left behind (a server that
/// does not answer now) keeps that server from storing a record of the file until it
/// restarts (tentative seals are not journaled): a rename or a repair copy there fails,
/// never a read.
async fn unseal_everywhere(
    state: &ServerState,
    rpc: &Rc<RpcClient>,
    peers: &mut Peers,
    entries: &[ServerEntry],
    ids: Vec<u64>,
) {
    state.unseal_files(&ids);
    let request = ops::FileIdsRequest { file_ids: ids };
    for entry in entries {
        if entry.node_id == state.node_id() {
            continue;
        }
        let answer = match peers.connection(rpc, entry).await {
            Ok(conn) => conn.call::<ops::UnsealFiles>(&request).await.map(drop),
            Err(e) => Err(e),
        };
        if let Err(error) = answer {
            tracing::warn!(peer = %entry.node_id, %error, "lifting seals failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_counts_as_lost_only_once_unnamed_for_the_whole_grace() {
        let mut rounds = Rounds::default();
        let grace = Duration::from_secs(10);
        let start = Instant::now();
        let none = HashSet::new();
        assert!(rounds.unnamed_for(&[1, 2], &none, start, grace).is_empty());
        let later = start + Duration::from_secs(5);
        assert!(rounds.unnamed_for(&[1, 2], &none, later, grace).is_empty());
        // File 2 is named again: its wait starts over when it is unnamed next.
        let named: HashSet<u64> = [2].into();
        let at_grace = start + grace;
        let lost = rounds.unnamed_for(&[1, 2], &named, at_grace, grace);
        assert_eq!(lost, [1].into());
        assert!(rounds.unnamed_for(&[2], &none, at_grace, grace).is_empty());
        let lost = rounds.unnamed_for(&[1, 2], &none, at_grace + grace, grace);
        assert_eq!(lost, [1, 2].into());
    }
}
