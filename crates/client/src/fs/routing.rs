//! Routing: which servers hold a key, the connection to each, and calls to one server,
//! to any replica (reads) or to every replica (writes).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use benchfs_config::registry;
use benchfs_config::registry::ServerEntry;
use benchfs_proto::limits::BORN_APART_NS;
use benchfs_proto::meta::FileMetadata;
use benchfs_proto::placement::{PlacementKey, ServerIndex};
use benchfs_proto::{ops, OpCode, Rpc, Status};
use benchfs_ucx::LentMut;
use futures_util::future::join_all;

use super::data::WriteSource;
use super::FsClient;
use crate::rpc::{Connection, OutPayload, Response, RpcError};

/// One server of the job and this client's connection to it.
pub(super) struct ServerSlot {
    pub(super) entry: RefCell<ServerEntry>,
    pub(super) conn: RefCell<Option<Rc<Connection>>>,
    /// The connection dropped when the server last stopped answering: calls go out on a
    /// new one, but the undo of a change the server took before is left on this one
    /// (see [`FsClient::leave_note`]), where a server that stopped will read it. Closed
    /// when another call times out, or when a lender waits for its memory
    /// ([`FsClient::drop_silent_conns`]): closing cancels the sends pending on it.
    silent_conn: RefCell<Option<Rc<Connection>>>,
    /// When `conn` was made: one made before the server fell silent is not reused while
    /// it stays suspect (see [`SUSPECT_HANDSHAKE_TIMEOUT`]).
    connected_at: Cell<Option<Instant>>,
    /// Held while connecting, so concurrent calls share one connection attempt.
    pub(super) connecting: tokio::sync::Mutex<()>,
    /// When the last connection attempt failed, and why: calls that waited for it fail
    /// with its error instead of each waiting a timeout of its own on a server that does
    /// not answer (or each being told less than the first: a refused secret).
    pub(super) connect_failed: RefCell<Option<(Instant, RpcError)>>,
    /// Set when a call found this server unreachable: until then reads ask its replicas
    /// first, so a silent or unreachable server costs one timeout per period, not one per
    /// chunk.
    pub(super) suspect_until: Cell<Option<Instant>>,
    /// When the server's chunk store began, from its handshake: a hole it reports in a
    /// file created before then may be a chunk it lost.
    pub(super) born_ns: Cell<u64>,
    /// The server restarted empty in a cluster it served before, from its handshake: its
    /// "not found" is checked with another replica whatever its birth.
    pub(super) born_again: Cell<bool>,
}

impl ServerSlot {
    pub(super) fn new(entry: ServerEntry) -> ServerSlot {
        ServerSlot {
            entry: RefCell::new(entry),
            conn: RefCell::new(None),
            silent_conn: RefCell::new(None),
            connected_at: Cell::new(None),
            connecting: tokio::sync::Mutex::new(()),
            connect_failed: RefCell::new(None),
            suspect_until: Cell::new(None),
            born_ns: Cell::new(0),
            born_again: Cell::new(false),
        }
    }

    /// The server as errors name it: node id and address.
    pub(super) fn name(&self) -> String {
        let entry = self.entry.borrow();
        format!("{}@{}", entry.node_id, entry.addr)
    }

    pub(super) fn is_suspect(&self, now: Instant) -> bool {
        self.suspect_since(now).is_some()
    }

    /// When the server's current suspect period began (by this client or another of the
    /// process), if it is in one.
    fn suspect_since(&self, now: Instant) -> Option<Instant> {
        let own = self.suspect_until.get().filter(|&until| now < until);
        let until = own.max(shared_suspect(self.entry.borrow().addr, now))?;
        Some(until.checked_sub(SUSPECT_PERIOD).unwrap_or(now))
    }

    /// Marks the server suspect until `until`, or clears the mark (`None`), for this
    /// client and every other of the process.
    fn set_suspect(&self, until: Option<Instant>) {
        let was = self.suspect_until.replace(until);
        if was.is_some() || until.is_some() || ANY_SHARED_SUSPECT.load(Ordering::Relaxed) {
            share_suspect(self.entry.borrow().addr, until);
        }
    }
}

/// Servers some client of this process found unreachable, by address, with the end of
/// their suspect period. A process has a client per thread (a FUSE mount's threads, a C
/// API program's), and without this each one waited out a timeout of its own on a stopped
/// server before asking its replicas (12 s for a file read through a mount of 4 threads
/// with a 3 s timeout).
static SHARED_SUSPECTS: Mutex<Vec<(SocketAddr, Instant)>> = Mutex::new(Vec::new());

/// Whether [`SHARED_SUSPECTS`] may hold anything: calls skip its lock while it is empty.
static ANY_SHARED_SUSPECT: AtomicBool = AtomicBool::new(false);

fn shared_suspects() -> std::sync::MutexGuard<'static, Vec<(SocketAddr, Instant)>> {
    SHARED_SUSPECTS.lock().unwrap_or_else(|p| p.into_inner())
}

/// The end of `addr`'s suspect period shared by the process, if one runs at `now`.
fn shared_suspect(addr: SocketAddr, now: Instant) -> Option<Instant> {
    if !ANY_SHARED_SUSPECT.load(Ordering::Relaxed) {
        return None;
    }
    shared_suspects()
        .iter()
        .filter(|&&(a, until)| a == addr && now < until)
        .map(|&(_, until)| until)
        .max()
}

fn share_suspect(addr: SocketAddr, until: Option<Instant>) {
    let mut suspects = shared_suspects();
    let now = Instant::now();
    suspects.retain(|&(a, end)| a != addr && now < end);
    if let Some(until) = until {
        suspects.push((addr, until));
    }
    ANY_SHARED_SUSPECT.store(!suspects.is_empty(), Ordering::Relaxed);
}

/// How long a change that one replica took and another could not take yet asks that one
/// again (a new record, or a cut, on its way there from another client): long enough for
/// that client's call to reach it, even from one sharing a busy core; short enough that a
/// change racing a removal fails soon.
const IN_FLIGHT_MAX: Duration = Duration::from_millis(500);

/// The first wait before asking again; each next one doubles, up to an eighth of
/// [`IN_FLIGHT_MAX`].
const IN_FLIGHT_FIRST_WAIT: Duration = Duration::from_micros(50);

/// How long [`FsClient::leave_note`] waits for a silent server's answer: one that runs
/// again answers within it; a stopped one finds the note queued when it does.
const NOTE_WAIT: Duration = Duration::from_millis(20);

/// Why a server's "not found" is asked of another replica too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BornAfter {
    /// Another replica's store began well before this one's.
    Known,
    /// Another replica's start is not known yet.
    Unknown,
}

/// The servers whose answer among `answers` is a success, in their order.
fn servers_that_took<T>(answers: &[(ServerIndex, Result<T, RpcError>)]) -> Vec<ServerIndex> {
    answers
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(s, _)| *s)
        .collect()
}

/// A change of a record that some replica failed: the first failure, and what the
/// replicas that took it hold.
pub(super) struct PartialChange<T> {
    pub(super) error: RpcError,
    /// The replies of the replicas that took the change, with their servers.
    pub(super) took: Vec<(ServerIndex, T)>,
    /// The replicas that got the changed record copied, and the record.
    pub(super) copied: Vec<(ServerIndex, FileMetadata)>,
    /// The replicas whose call timed out: they may have taken the change late.
    pub(super) timed_out: Vec<ServerIndex>,
}

/// The first replica's reply if every replica in `answers` took the call, else the first
/// failure.
pub(super) fn first_if_all_took<T>(
    answers: Vec<(ServerIndex, Result<T, RpcError>)>,
) -> Result<T, RpcError> {
    let mut first = None;
    for (_, answer) in answers {
        first.get_or_insert(answer?);
    }
    Ok(first.expect("at least one replica"))
}

/// `e`, naming the earlier failures of the same call too.
fn chain(earlier: Option<RpcError>, e: RpcError) -> RpcError {
    match earlier {
        Some(earlier) => e.after(&earlier),
        None => e,
    }
}

/// How long a server that timed out is asked last by reads, unless it answers meanwhile.
pub(super) const SUSPECT_PERIOD: Duration = Duration::from_secs(30);

/// How long a new connection's handshake may take with a suspect server (one that did not
/// answer a call within the RPC timeout lately, and has answered nothing since): a live
/// server's event loop answers one at once, while a stopped one would make every later
/// call wait a whole RPC timeout again (`rm` through a mount asks three times: 90 s per
/// file at the default). An answer ends the suspicion.
const SUSPECT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// What this client's calls met, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallCounters {
    /// Calls made to servers.
    pub calls: u64,
    /// Calls that timed out.
    pub timeouts: u64,
    /// Calls that found their server unreachable (timeouts included).
    pub unreachable: u64,
    /// Reads answered by a replica after another did not answer.
    pub failovers: u64,
}

/// Most worker progress calls made before reusing a connection, to notice a dead peer.
pub(super) const STALE_PROGRESS_MAX: usize = 64;

/// Whether an error means "this server did not answer", so a replica may.
pub(super) fn is_unreachable(e: &RpcError) -> bool {
    matches!(e.status(), Status::TimedOut | Status::Unavailable)
}

impl FsClient {
    /// The slot's connection, unless it failed, or was made before its server fell silent
    /// (a call on it would wait a whole RPC timeout, where a new handshake takes
    /// [`SUSPECT_HANDSHAKE_TIMEOUT`] to find the server still silent).
    pub(super) fn live_conn(slot: &ServerSlot) -> Option<Rc<Connection>> {
        let made_before_silence = || {
            if slot.suspect_until.get().is_none() && !ANY_SHARED_SUSPECT.load(Ordering::Relaxed) {
                return false; // no clock read on the common path
            }
            let since = slot.suspect_since(Instant::now());
            since.is_some_and(|since| slot.connected_at.get().is_none_or(|at| at < since))
        };
        slot.conn
            .borrow()
            .as_ref()
            .filter(|c| !c.is_failed() && !made_before_silence())
            .cloned()
    }

    /// The connection to server `index`, made (or remade after a failure) on demand. A
    /// server that restarted may listen elsewhere, so a failed attempt re-reads its
    /// registry entry and tries the address found there.
    pub(super) async fn conn(&self, index: ServerIndex) -> Result<Rc<Connection>, RpcError> {
        let slot = &self.servers[index as usize];
        // The worker makes no progress between calls of a blocking client, so a peer that
        // went away meanwhile is noticed only now; without this the call would go out on
        // the dead connection and wait the whole RPC timeout.
        for _ in 0..STALE_PROGRESS_MAX {
            if self.rpc.worker().progress() == 0 {
                break;
            }
        }
        if let Some(c) = Self::live_conn(slot) {
            return Ok(c);
        }
        // Boxed: the rare connect would otherwise size every call's future (see
        // `call_on_into`).
        Box::pin(self.make_conn(slot)).await
    }

    /// The slow path of [`FsClient::conn`]: makes the slot's connection, or waits for
    /// another call making it.
    async fn make_conn(&self, slot: &ServerSlot) -> Result<Rc<Connection>, RpcError> {
        let waiting_since = Instant::now();
        let _connecting = slot.connecting.lock().await;
        if let Some(c) = Self::live_conn(slot) {
            return Ok(c);
        }
        let (addr, node_id) = {
            let entry = slot.entry.borrow();
            (entry.addr, entry.node_id.clone())
        };
        if let Some((_, e)) = slot
            .connect_failed
            .borrow()
            .as_ref()
            .filter(|(at, _)| *at >= waiting_since)
        {
            // (A blocking read sends its chunks' calls at once: each waited a timeout.)
            // One that did not answer is called unavailable (these calls waited no timeout
            // of their own); a refusal is passed on as it was said.
            return Err(match e {
                RpcError::Timeout { .. } | RpcError::Transport { .. } => RpcError::Status {
                    server: slot.name(),
                    status: Status::Unavailable,
                },
                refused => refused.clone(),
            });
        }
        self.check_shared_memory(&node_id)?;
        let conn = match self
            .connect_slot(slot, addr, &node_id)
            .await
            .and_then(|conn| self.check_identity(slot, &node_id, conn))
        {
            Ok(conn) => conn,
            Err(e) => {
                *slot.connect_failed.borrow_mut() = Some((Instant::now(), e.clone()));
                return Err(e);
            }
        };
        self.check_settings(&conn)
            .map_err(|e| e.on_node(&node_id))?;
        slot.born_ns.set(conn.hello().map_or(0, |h| h.born_ns));
        slot.born_again
            .set(conn.hello().is_some_and(|h| h.born_again));
        let conn = Rc::new(conn);
        *slot.conn.borrow_mut() = Some(Rc::clone(&conn));
        slot.connected_at.set(Some(Instant::now()));
        Ok(conn)
    }

    /// Connects to the server of `slot` at `addr`, or where the registry says it moved.
    async fn connect_slot(
        &self,
        slot: &ServerSlot,
        addr: SocketAddr,
        node_id: &str,
    ) -> Result<Connection, RpcError> {
        let rpc_timeout = self.rpc.options().rpc_timeout;
        let handshake_timeout = match slot.is_suspect(Instant::now()) {
            true => SUSPECT_HANDSHAKE_TIMEOUT.min(rpc_timeout),
            false => rpc_timeout,
        };
        if addr == registry::UNPUBLISHED_ADDR {
            // A member that had published no entry when this client started: connect
            // where it publishes now, if it does.
            let Some(entry) = self.published_entry(node_id) else {
                return Err(RpcError::Unusable {
                    server: node_id.to_string(),
                    reason: format!(
                        "it is a member of the cluster ({}) that publishes no address: stopped, \
                         or restarting",
                        registry::member_path(&self.registry_dir, node_id).display()
                    ),
                });
            };
            let conn = self
                .rpc
                .connect_within(entry.addr, handshake_timeout)
                .await
                .map_err(|e| e.on_node(node_id))?;
            *slot.entry.borrow_mut() = entry;
            return Ok(conn);
        }
        Ok(
            match self.rpc.connect_within(addr, handshake_timeout).await {
                Ok(c) => c,
                Err(e) => {
                    let e = e.on_node(node_id);
                    let moved = self
                        .published_entry(node_id)
                        .filter(|entry| entry.addr != addr);
                    let Some(entry) = moved else { return Err(e) };
                    tracing::info!(node_id, old = %addr, new = %entry.addr, "server moved; reconnecting");
                    let conn = self
                        .rpc
                        .connect_within(entry.addr, handshake_timeout)
                        .await
                        .map_err(|e| e.on_node(node_id))?;
                    *slot.entry.borrow_mut() = entry;
                    conn
                }
            },
        )
    }

    /// Refuses a server that is not `node_id` of this cluster. When a server dies, the
    /// system may give its port to another server (of this cluster, or of another job on
    /// the host, with the same node ids): the one answering must give `node_id` and the
    /// store birth its registry entry names. The entry is read again when they differ,
    /// since the server may have restarted since with a new store.
    fn check_identity(
        &self,
        slot: &ServerSlot,
        node_id: &str,
        conn: Connection,
    ) -> Result<Connection, RpcError> {
        let Some(hello) = conn.hello() else {
            return Ok(conn);
        };
        let answers_for =
            |entry: &ServerEntry| conn.serves_as(&entry.node_id, registry::born_ns(entry));
        if answers_for(&slot.entry.borrow()) {
            return Ok(conn);
        }
        let addr = slot.entry.borrow().addr;
        let republished = self
            .published_entry(node_id)
            .filter(|entry| entry.addr == addr && answers_for(entry));
        if let Some(entry) = republished {
            *slot.entry.borrow_mut() = entry;
            return Ok(conn);
        }
        Err(RpcError::Unusable {
            server: slot.name(),
            reason: format!(
                "the server listening there is {} (store born at {} ns), not the one this \
                 cluster's registry names: {node_id} is down, or restarted and not yet \
                 published",
                hello.node_id, hello.born_ns
            ),
        })
    }

    /// The registry entry `node_id`'s server publishes now, if it is there and readable.
    fn published_entry(&self, node_id: &str) -> Option<ServerEntry> {
        registry::published(&self.registry_dir, node_id).filter(|entry| entry.node_id == node_id)
    }

    /// Refuses to connect to a server whose registry entry now says it takes no shared
    /// memory when this client's transports include it: UCX 1.13 would abort that server at
    /// the connection (see `shared_memory_refused`). A client chooses its transports at
    /// start, so this is a server restarted since without shared memory.
    fn check_shared_memory(&self, node_id: &str) -> Result<(), RpcError> {
        if !self.offers_shared_memory {
            return Ok(());
        }
        let refusing = self
            .published_entry(node_id)
            .filter(super::takes_no_shared_memory);
        let Some(entry) = refusing else {
            return Ok(());
        };
        Err(RpcError::Unusable {
            server: format!("{node_id}@{}", entry.addr),
            reason: "it restarted without shared memory (network.shared_memory = false), and \
                     this client, started while every server took it, offers it; restart the \
                     client"
                .into(),
        })
    }

    /// Refuses a server that places by other counts than this client (one restarted with
    /// another configuration, or moved to where another cluster's server listens): what
    /// it stored or looked for would be on other servers than this client's.
    fn check_settings(&self, conn: &Connection) -> Result<(), RpcError> {
        let Some(hello) = conn.hello() else {
            return Ok(());
        };
        let ours = (self.replicas, self.ring.virtual_nodes());
        let theirs = (hello.replicas as usize, hello.virtual_nodes);
        if theirs == ours {
            return Ok(());
        }
        Err(RpcError::Incompatible {
            server: conn.server().to_string(),
            reason: format!(
                "it keeps {} replicas over {} virtual nodes, the cluster {} over {}",
                theirs.0, theirs.1, ours.0, ours.1
            ),
        })
    }

    /// Calls `R` on one server; a transport failure drops the connection so the next call
    /// reconnects (a restarted server is picked up).
    pub(super) async fn call_on<R: Rpc>(
        &self,
        index: ServerIndex,
        req: &R::Request,
        payload: OutPayload,
    ) -> Result<(R::Reply, Vec<u8>), RpcError> {
        self.call_on_into::<R>(index, req, payload, None)
            .await
            .map(|r| (r.reply, r.payload))
    }

    /// Asks each of `servers` `req` at once; each one's answer with its payload, `None`
    /// for a server that did not answer a call lately (not asked).
    pub(super) async fn ask_each<R: Rpc>(
        &self,
        servers: &[ServerIndex],
        req: &R::Request,
    ) -> Vec<(ServerIndex, Option<Result<(R::Reply, Vec<u8>), RpcError>>)> {
        let now = Instant::now();
        let answers = join_all(servers.iter().map(|&s| async move {
            match self.servers[s as usize].is_suspect(now) {
                true => None,
                false => Some(self.call_on::<R>(s, req, OutPayload::none()).await),
            }
        }))
        .await;
        servers.iter().copied().zip(answers).collect()
    }

    /// Leaves `req`, the undo of a change server `server` took before it stopped
    /// answering, with that server: over the connection this client had to it when it
    /// fell silent (a new one cannot be made meanwhile) and with no deadline, so a
    /// stopped server takes it once it runs again (not ordered before calls on other
    /// connections, this client's later ones or other clients'). Waits about [`NOTE_WAIT`] (the call watch's tick
    /// may add as much). A note the transport could not take at once (a stopped
    /// server's shared-memory queue is full) goes out as this client's worker progresses,
    /// during its later calls: one that exits first leaves nothing. Without a live
    /// connection (the server died), nothing is left either: its replica differs until
    /// repaired (logged, with `what`, the path).
    pub(super) async fn leave_note<R: Rpc>(
        &self,
        server: ServerIndex,
        req: &R::Request,
        what: &str,
    ) {
        let slot = &self.servers[server as usize];
        let usable = |c: &RefCell<Option<Rc<Connection>>>| {
            c.borrow().as_ref().filter(|c| !c.is_failed()).cloned()
        };
        let conn = usable(&slot.conn).or_else(|| usable(&slot.silent_conn));
        let left = match conn {
            Some(conn) => conn
                .call_without_deadline::<R>(req, NOTE_WAIT)
                .await
                .map(drop),
            None => Err(RpcError::Status {
                server: slot.name(),
                status: Status::Unavailable,
            }),
        };
        match left {
            Ok(()) => tracing::info!(
                server = slot.name(),
                path = what,
                "a silent server took an undo"
            ),
            Err(RpcError::Timeout { .. }) => {
                tracing::warn!(
                    server = slot.name(),
                    path = what,
                    "undo left with a silent server, for when it runs again"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, path = what, "undo not left with a silent server: the replicas of this record differ");
            }
        }
    }

    /// Closes the connections kept for undo notes ([`ServerSlot::silent_conn`]): closing
    /// cancels the sends still pending on them, which may hold a lender's memory.
    pub(super) fn drop_silent_conns(&self) {
        for slot in &self.servers {
            slot.silent_conn.take();
        }
    }

    /// [`FsClient::call_on`], receiving the reply's payload into `sink` when it fits.
    pub(super) async fn call_on_into<R: Rpc>(
        &self,
        index: ServerIndex,
        req: &R::Request,
        payload: OutPayload,
        sink: Option<LentMut>,
    ) -> Result<Response<R::Reply>, RpcError> {
        let conn = match self.conn(index).await {
            Ok(conn) => conn,
            Err(e) => {
                self.note_call(index, Some(&e));
                return Err(e);
            }
        };
        // Boxed, one allocation per call: a call's future is some hundreds of bytes, and
        // held inline it made the futures of the operations made of calls kilobytes (a
        // create's close held about 9 KiB), copied in full at every await that starts one.
        let result = Box::pin(conn.call_into::<R>(req, payload, sink)).await;
        self.call_ended(index, &conn, result.as_ref().err());
        result
    }

    /// Accounts for a call on `conn` to server `index` that ended with `error` (or
    /// succeeded): counts it, and drops the connection if the server did not answer, so
    /// the next call reconnects. Calls that outlive the method that made them (write-behind,
    /// read-ahead) come here when they are collected.
    pub(super) fn call_ended(
        &self,
        index: ServerIndex,
        conn: &Rc<Connection>,
        error: Option<&RpcError>,
    ) {
        self.note_call(index, error);
        if error.is_some_and(is_unreachable) {
            // Only this connection: another call may have replaced it meanwhile.
            let slot = &self.servers[index as usize];
            let mut current = slot.conn.borrow_mut();
            if current.as_ref().is_some_and(|c| Rc::ptr_eq(c, conn)) {
                *slot.silent_conn.borrow_mut() = current.take();
            }
        }
    }

    /// Counts a call and marks its server suspect when it did not answer (a timeout, a
    /// connection that failed or was lost), or clears the mark when it answered.
    pub(super) fn note_call(&self, index: ServerIndex, error: Option<&RpcError>) {
        let mut counters = self.call_counters.get();
        counters.calls += 1;
        let slot = &self.servers[index as usize];
        match error {
            Some(e) if is_unreachable(e) => {
                counters.unreachable += 1;
                counters.timeouts += u64::from(e.status() == Status::TimedOut);
                slot.set_suspect(Some(Instant::now() + SUSPECT_PERIOD));
            }
            _ => slot.set_suspect(None),
        }
        self.call_counters.set(counters);
    }

    /// What this client's calls met so far.
    pub fn call_counters(&self) -> CallCounters {
        self.call_counters.get()
    }

    /// Every server's index, for calls that fan out to the whole job.
    pub(super) fn all_servers(&self) -> std::ops::Range<ServerIndex> {
        0..self.servers.len() as ServerIndex
    }

    /// The node that owns the record of `path` (normalised).
    pub fn metadata_owner(&self, path: &str) -> Option<String> {
        let index = self.ring.owner(PlacementKey::Metadata(path));
        self.ring.nodes().get(index as usize).cloned()
    }

    pub(super) fn replica_set(&self, key: PlacementKey<'_>) -> Vec<ServerIndex> {
        self.ring.replicas(key, self.replicas)
    }

    /// The replicas in the order reads ask them: ring order, suspect servers last.
    pub(super) fn read_order(&self, key: PlacementKey<'_>) -> Vec<ServerIndex> {
        let now = Instant::now();
        let mut servers = self.replica_set(key);
        servers.sort_by_key(|&s| self.servers[s as usize].is_suspect(now));
        servers
    }

    /// Reads from the first replica that answers.
    pub(super) async fn read_any<R: Rpc>(
        &self,
        key: PlacementKey<'_>,
        req: &R::Request,
    ) -> Result<(R::Reply, Vec<u8>), RpcError> {
        self.read_any_into::<R>(key, req, || None, |_, _| Ok(()))
            .await
            .map(|r| (r.reply, r.payload))
    }

    /// [`FsClient::read_any`], each attempt receiving into the sink `sink` gives, if any.
    /// A replica that timed out may still hold the last attempt's sink, and then the next
    /// attempt gets none and its payload comes as bytes. A reply `accept` refuses counts as
    /// that replica's failure (the next one is asked); its error is returned if no
    /// replica is left.
    pub(super) async fn read_any_into<R: Rpc>(
        &self,
        key: PlacementKey<'_>,
        req: &R::Request,
        sink: impl Fn() -> Option<LentMut>,
        accept: impl Fn(ServerIndex, &Response<R::Reply>) -> Result<(), RpcError>,
    ) -> Result<Response<R::Reply>, RpcError> {
        // Replicas that did not answer (or failed to read their store).
        let mut failed: Option<RpcError> = None;
        // "Not found" from replicas that may have lost their records: no proof while
        // another replica could not be asked.
        let mut doubted: Option<RpcError> = None;
        // A "not found" asked again only because another replica's start is not known:
        // the answer if that replica cannot be asked either.
        let mut unconfirmed = None;
        let order = self.read_order(key);
        for &server in &order {
            let result = self
                .call_on_into::<R>(server, req, OutPayload::none(), sink())
                .await
                .and_then(|r| accept(server, &r).map(|()| r));
            let born_after = match &result {
                Err(e) if e.status() == Status::NotFound => {
                    // Every other replica, the ones already asked too: one that did not
                    // answer may hold the record this one lost.
                    let others: Vec<ServerIndex> =
                        order.iter().copied().filter(|&s| s != server).collect();
                    self.born_after_one_of(server, &others)
                }
                _ => None,
            };
            match result {
                Err(e) if born_after == Some(BornAfter::Unknown) && unconfirmed.is_none() => {
                    unconfirmed = Some(e);
                }
                Err(e) if born_after.is_some() => doubted = Some(chain(doubted, e)),
                // Lost: a chunk a replica made anew after its store began, with bytes in
                // it that no write since covered; another replica may hold them.
                Err(e) if is_unreachable(&e) || matches!(e.status(), Status::Io | Status::Lost) => {
                    failed = Some(chain(failed, e));
                }
                Ok(reply) if failed.is_some() || doubted.is_some() => {
                    let mut counters = self.call_counters.get();
                    counters.failovers += 1;
                    self.call_counters.set(counters);
                    return Ok(reply);
                }
                other => return other,
            }
        }
        match (failed, doubted, unconfirmed) {
            (Some(failed), None, Some(not_found)) if is_unreachable(&failed) => Err(not_found),
            // The failure decides: the replica that failed may hold what the others lost.
            (Some(failed), Some(doubted), _) => Err(failed.after(&doubted)),
            (Some(failed), None, _) => Err(failed),
            (None, Some(doubted), _) => Err(doubted),
            (None, None, Some(not_found)) => Err(not_found),
            (None, None, None) => unreachable!("every replica was asked"),
        }
    }

    /// Whether server `server` may lack records that one of `others` holds, as far as this
    /// client knows: it says it was born again, or its store began well after one of
    /// theirs (see [`FsClient::born_after_one_of`]).
    pub(super) fn may_lack_records(&self, server: ServerIndex, others: &[ServerIndex]) -> bool {
        self.born_after_one_of(server, others) == Some(BornAfter::Known)
    }

    /// Whether server `server`'s store began well after one of `others`' did (or one
    /// whose start is not known yet, unless it just failed): it may have lost a record
    /// that they hold (a memory server restarted empty holds its records again only once
    /// the replica repair has run), so its "not found" is not the last word. The servers
    /// of a new cluster start within [`BORN_APART_NS`] of one another, and their "not found"
    /// costs no second call; a server that says it was born again (restarted, however
    /// soon after the others began) is always checked.
    fn born_after_one_of(&self, server: ServerIndex, others: &[ServerIndex]) -> Option<BornAfter> {
        if self.servers[server as usize].born_again.get() && !others.is_empty() {
            return Some(BornAfter::Known);
        }
        let now = Instant::now();
        let born = self.servers[server as usize].born_ns.get();
        let mut unknown = false;
        for &other in others {
            let slot = &self.servers[other as usize];
            match slot.born_ns.get() {
                0 => unknown |= !slot.is_suspect(now),
                other_born if other_born.saturating_add(BORN_APART_NS) < born => {
                    return Some(BornAfter::Known);
                }
                _ => {}
            }
        }
        unknown.then_some(BornAfter::Unknown)
    }

    /// Sends a call to every replica at once; returns each one's answer, in ring order.
    pub(super) async fn write_each<R: Rpc>(
        &self,
        key: PlacementKey<'_>,
        req: &R::Request,
        payload: WriteSource<'_>,
    ) -> Vec<(ServerIndex, Result<R::Reply, RpcError>)> {
        let servers = self.replica_set(key);
        let results = join_all(
            servers
                .iter()
                .map(|&s| self.call_on::<R>(s, req, payload.payload(&self.rpc))),
        )
        .await;
        servers
            .into_iter()
            .zip(results)
            .map(|(s, r)| (s, r.map(|(reply, _)| reply)))
            .collect()
    }

    /// Changes the existing record at `path` on every replica at once; all must take the
    /// change, except that a replica which may have lost its records (its store began
    /// after another's: restarted empty, see [`FsClient::born_after_one_of`]) and holds
    /// none at the path gets the changed record from one that took it, by an insert only
    /// where the path has none. Without it every change to the record failed with "not
    /// found" until the replica repair brought the record back (minutes), after the
    /// replicas that took it had changed.
    /// `file_id` is the file the change is for: only a record of it is copied. Returns
    /// the first replica's reply.
    pub(super) async fn change_record<R: Rpc>(
        &self,
        path: &str,
        file_id: u64,
        req: &R::Request,
    ) -> Result<R::Reply, RpcError> {
        let mut replies = self
            .change_record_each::<R>(path, file_id, req)
            .await
            .map_err(|partial| partial.error)?;
        Ok(replies.swap_remove(0).1)
    }

    /// The replies of every replica that took a change of the record at `path`, with
    /// its server (in replica order, then those that took it after a copy was refused);
    /// or the first failure, with what the replicas that took it hold.
    pub(super) async fn change_record_each<R: Rpc>(
        &self,
        path: &str,
        file_id: u64,
        req: &R::Request,
    ) -> Result<Vec<(ServerIndex, R::Reply)>, PartialChange<R::Reply>> {
        let answers = self
            .write_each::<R>(PlacementKey::Metadata(path), req, WriteSource::NONE)
            .await;
        self.settle_change::<R>(path, file_id, answers, req).await
    }

    /// [`FsClient::change_record_each`] once each replica answered `req` (`answers`, in
    /// replica order): asks again those that may not hold the record yet, and copies it
    /// to those that lost it.
    pub(super) async fn settle_change<R: Rpc>(
        &self,
        path: &str,
        file_id: u64,
        mut answers: Vec<(ServerIndex, Result<R::Reply, RpcError>)>,
        req: &R::Request,
    ) -> Result<Vec<(ServerIndex, R::Reply)>, PartialChange<R::Reply>> {
        self.ask_again_while_created::<R>(&mut answers, req).await;
        let took = servers_that_took(&answers);
        let (mut replies, mut lacking, mut timed_out, mut failed) =
            (Vec::new(), Vec::new(), Vec::new(), None);
        for (server, answer) in answers {
            match answer {
                Ok(reply) => replies.push((server, reply)),
                Err(e)
                    if e.status() == Status::NotFound
                        && !took.is_empty()
                        && self.born_after_one_of(server, &took).is_some() =>
                {
                    lacking.push((server, e));
                }
                Err(e) => {
                    if e.status() == Status::TimedOut {
                        timed_out.push(server);
                    }
                    failed.get_or_insert(e);
                }
            }
        }
        let mut copied = Vec::new();
        if failed.is_none() && replies.is_empty() {
            failed = Some(lacking.remove(0).1);
        }
        for (server, not_found) in lacking {
            if failed.is_some() {
                break;
            }
            match self.copy_record(path, file_id, took[0], server).await {
                Ok(meta) => copied.push((server, meta)),
                // Another client's copy came first: the change goes to it as to the rest.
                Err(Status::Exists) => {
                    match self.call_on::<R>(server, req, OutPayload::none()).await {
                        Ok((reply, _)) => replies.push((server, reply)),
                        Err(e) => failed = Some(e),
                    }
                }
                Err(_) => failed = Some(not_found),
            }
        }
        match failed {
            None => Ok(replies),
            Some(error) => Err(PartialChange {
                error,
                took: replies,
                copied,
                timed_out,
            }),
        }
    }

    /// Asks again, for a while, each replica that answered "not found" where another took
    /// the change, unless it may have lost its records (see
    /// [`FsClient::born_after_one_of`]): the file may be new, its record on the first
    /// replica and on its way to the others from its creator, who copies it there next. A
    /// record that stays missing is left to the caller (a file another client is removing,
    /// one whose creator died between the two steps).
    pub(super) async fn ask_again_while_created<R: Rpc>(
        &self,
        answers: &mut [(ServerIndex, Result<R::Reply, RpcError>)],
        req: &R::Request,
    ) {
        let took = servers_that_took(answers);
        if took.is_empty() {
            return;
        }
        let missing = |a: &Result<R::Reply, RpcError>| {
            a.as_ref().is_err_and(|e| e.status() == Status::NotFound)
        };
        for (server, answer) in answers.iter_mut() {
            if !missing(answer) || self.born_after_one_of(*server, &took) == Some(BornAfter::Known)
            {
                continue;
            }
            self.ask_again_while::<R>(*server, answer, req, missing)
                .await;
        }
    }

    /// Asks server `server` `req` again while its `answer` is `in_flight` (the change it
    /// waits for is on its way from another client), for up to [`IN_FLIGHT_MAX`], each
    /// wait twice the last.
    pub(super) async fn ask_again_while<R: Rpc>(
        &self,
        server: ServerIndex,
        answer: &mut Result<R::Reply, RpcError>,
        req: &R::Request,
        in_flight: impl Fn(&Result<R::Reply, RpcError>) -> bool,
    ) {
        let mut wait = IN_FLIGHT_FIRST_WAIT;
        let deadline = Instant::now() + IN_FLIGHT_MAX;
        while in_flight(answer) && Instant::now() < deadline {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(IN_FLIGHT_MAX / 8);
            *answer = self
                .call_on::<R>(server, req, OutPayload::none())
                .await
                .map(|(reply, _)| reply);
        }
    }

    /// Copies the record of file `file_id` at `path` to each replica that answered a
    /// change of an inline record with "not found" where another took it, and may have
    /// lost its records (see [`FsClient::born_after_one_of`]): the copy holds the change
    /// (its bytes, its size, the end of its inline life), so that replica's answer
    /// becomes the first one's. A seal is sent again, since it lives beside the record
    /// and is not copied; so is a change to a replica where another client's copy came
    /// first (that copy may predate the change). A copy that fails leaves the "not found".
    pub(super) async fn copy_to_replicas_that_lost_it<R: Rpc>(
        &self,
        path: &str,
        file_id: u64,
        answers: &mut Vec<(ServerIndex, Result<R::Reply, RpcError>)>,
        req: &R::Request,
    ) {
        let took = servers_that_took(answers);
        let Some(&source) = took.first() else {
            return;
        };
        let mut copied = Vec::new();
        for (server, answer) in answers.iter_mut() {
            let lost = answer
                .as_ref()
                .is_err_and(|e| e.status() == Status::NotFound)
                && self.born_after_one_of(*server, &took).is_some();
            if !lost {
                continue;
            }
            match self.copy_record(path, file_id, source, *server).await {
                Ok(_) if R::OP != OpCode::MetadataSealInline => copied.push(*server),
                Ok(_) | Err(Status::Exists) => {
                    *answer = self
                        .call_on::<R>(*server, req, OutPayload::none())
                        .await
                        .map(|(reply, _)| reply);
                }
                Err(_) => {}
            }
        }
        answers.retain(|(server, _)| !copied.contains(server));
    }

    /// Copies the record of file `file_id` at `path` from server `from` to server `to`,
    /// where the path has none; returns the record copied.
    pub(super) async fn copy_record(
        &self,
        path: &str,
        file_id: u64,
        from: ServerIndex,
        to: ServerIndex,
    ) -> Result<FileMetadata, Status> {
        let lookup = ops::PathRequest {
            path: path.to_string(),
        };
        let (record, _) = self
            .call_on::<ops::MetadataOpen>(from, &lookup, OutPayload::none())
            .await
            .map_err(|e| e.status())?;
        if record.meta.file_id != file_id {
            // Renamed or removed meanwhile: the path is no longer the changed file's.
            return Err(Status::NotFound);
        }
        let insert = ops::InsertRequest {
            path: path.to_string(),
            meta: record.meta,
            exclusive: true,
            settled_only: false,
            newer_only: false,
            data: record.data,
        };
        let copied = self
            .call_on::<ops::MetadataInsert>(to, &insert, OutPayload::none())
            .await;
        tracing::info!(
            path,
            server = to,
            ok = copied.is_ok(),
            "copied a record to a replica that lost it"
        );
        copied.map(|_| record.meta).map_err(|e| e.status())
    }

    /// Writes to every replica at once; all must succeed.
    pub(super) async fn write_all<R: Rpc>(
        &self,
        key: PlacementKey<'_>,
        req: &R::Request,
        payload: WriteSource<'_>,
    ) -> Result<R::Reply, RpcError> {
        first_if_all_took(self.write_each::<R>(key, req, payload).await)
    }
}
