//! Typed RPC over UCX Active Messages, the calling side: connections, calls, payloads.
//! Clients use it, and so do servers calling their peers.
//!
//! Requests travel on AM id [`REQUEST_AM_ID`], replies on [`REPLY_AM_ID`]. The AM header
//! holds the [`FrameHeader`](benchfs_proto::FrameHeader) and, when it fits, the operation
//! body; the AM data holds the payload. Payloads up to the rendezvous threshold go eager (copied
//! once at the receiver); larger ones go by UCX rendezvous, which the receiver pulls
//! straight into its destination buffer: on the server, a chunk-store buffer (registered
//! with io_uring), so the bytes cross no extra copy between the wire and the store. See
//! ARCHITECTURE.md for why rendezvous rather than explicit get/put is the default.
#![forbid(unsafe_code)]

mod clock;
mod connection;
mod watch;

pub use benchfs_proto::frame::{REPLY_AM_ID, REQUEST_AM_ID};
pub use connection::{ClientOptions, Connection, Response, RpcClient};

use std::rc::Rc;

use benchfs_proto::{DecodeError, Status};

/// Most replies a client queues.
pub const CLIENT_QUEUE_MAX: usize = 8192;

/// What an RPC can fail with.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// No reply came within the RPC timeout.
    #[error("no reply from {server} within {timeout_ms} ms")]
    Timeout {
        /// The server's name or address.
        server: String,
        /// The timeout that ran out.
        timeout_ms: u64,
    },
    /// The transport failed (the peer is gone, the connection was refused, ...).
    #[error("{server} is unreachable: the connection to it failed or was lost ({source})")]
    Transport {
        /// The server's name or address.
        server: String,
        /// UCX's error.
        source: benchfs_ucx::UcxError,
    },
    /// A reply or request broke the protocol.
    #[error("protocol error from {server}: {source}")]
    Protocol {
        /// The peer's name or address.
        server: String,
        /// What was wrong.
        source: DecodeError,
    },
    /// The server answered with an error status.
    #[error("{server}: {status}")]
    Status {
        /// The server's name or address.
        server: String,
        /// The status.
        status: Status,
    },
    /// The caller will not connect to the server: reaching it would harm it (a server
    /// restarted without the shared memory this client's transports include, which UCX
    /// would abort). Counted as unreachable, so a call fails over to another replica.
    #[error("{server} cannot be reached from this client: {reason}")]
    Unusable {
        /// The server's name or address.
        server: String,
        /// Why.
        reason: String,
    },
    /// The server's settings differ from the ones the caller's cluster agreed on (it
    /// restarted with another configuration, say), so the two would place data apart.
    #[error("{server} is not of this cluster: {reason}")]
    Incompatible {
        /// The server's name or address.
        server: String,
        /// Which settings differ, with both values.
        reason: String,
    },
    /// The server holds none of the bytes asked for, but its store began after the file
    /// was made, so they may be bytes it lost (restarted empty, or its data directory
    /// lost) rather than a hole: an I/O error, never zeros.
    #[error("{server} holds none of these bytes, and its store began after the file was made (restarted empty, or its data lost): bytes may have been written there, so they are not answered as zeros")]
    MayHaveLost {
        /// The server's name and address.
        server: String,
    },
    /// The server has a job secret and refused this client's proof of it.
    #[error("{server} refused this client: {}", secret_refusal(*has_secret))]
    SecretRefused {
        /// The server's name and address.
        server: String,
        /// Whether the client had a secret (then it differs from the server's).
        has_secret: bool,
    },
}

/// Why a server refused a client's proof of the job secret.
fn secret_refusal(has_secret: bool) -> &'static str {
    if has_secret {
        "this client's job secret differs from the one the server was started with"
    } else {
        "the server has a job secret and this client none (give it with --secret-file or \
         BENCHFS_SECRET_FILE)"
    }
}

impl RpcError {
    /// The same error with its server named `node@address`, when it named only the address
    /// (a connection that failed before the server said who it is).
    pub fn on_node(mut self, node: &str) -> RpcError {
        let server = self.server_mut();
        if !server.contains('@') {
            *server = format!("{node}@{server}");
        }
        self
    }

    /// The same error, saying that `earlier` (another replica's failure at the same call)
    /// came first, so a call that every replica failed names every server it asked. Two
    /// failures alike say their explanation once.
    pub fn after(mut self, earlier: &RpcError) -> RpcError {
        let mut alike = earlier.clone();
        alike.server_mut().clone_from(self.server_mut());
        let earlier = match alike.to_string() == self.to_string() {
            true => format!("as {} before it", earlier.clone().server_mut()),
            false => format!("after {earlier}"),
        };
        let server = self.server_mut();
        *server = format!("{server} ({earlier})");
        self
    }

    /// The name of the server every kind of error carries.
    fn server_mut(&mut self) -> &mut String {
        let (RpcError::Timeout { server, .. }
        | RpcError::Transport { server, .. }
        | RpcError::Protocol { server, .. }
        | RpcError::Status { server, .. }
        | RpcError::Unusable { server, .. }
        | RpcError::Incompatible { server, .. }
        | RpcError::MayHaveLost { server }
        | RpcError::SecretRefused { server, .. }) = self;
        server
    }

    /// The wire status that describes this error.
    pub fn status(&self) -> Status {
        match self {
            RpcError::Timeout { .. } => Status::TimedOut,
            RpcError::Transport { .. } | RpcError::Unusable { .. } => Status::Unavailable,
            RpcError::Protocol { .. } | RpcError::Incompatible { .. } => Status::Protocol,
            RpcError::Status { status, .. } => *status,
            RpcError::MayHaveLost { .. } => Status::Io,
            RpcError::SecretRefused { .. } => Status::PermissionDenied,
        }
    }
}

/// The payload a call sends after its body. UCX reads it in place until the send
/// completes, so either kind goes out without another copy.
#[derive(Debug)]
pub enum OutPayload {
    /// A buffer the call owns; the client keeps it for reuse once the send completes.
    Owned(Vec<u8>),
    /// Bytes shared with the caller, e.g. one buffer sent to every replica or sent again
    /// and again by a benchmark.
    Shared(Rc<[u8]>),
    /// Part of a caller's slice, lent for a blocking call (see [`benchfs_ucx::lend`]).
    Lent(benchfs_ucx::Lent),
}

impl OutPayload {
    /// No payload.
    pub fn none() -> Self {
        OutPayload::Owned(Vec::new())
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.as_ref().len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl AsRef<[u8]> for OutPayload {
    fn as_ref(&self) -> &[u8] {
        match self {
            OutPayload::Owned(v) => v,
            OutPayload::Shared(s) => s,
            OutPayload::Lent(l) => l.as_ref(),
        }
    }
}

impl From<Vec<u8>> for OutPayload {
    fn from(v: Vec<u8>) -> Self {
        OutPayload::Owned(v)
    }
}

impl From<Rc<[u8]>> for OutPayload {
    fn from(s: Rc<[u8]>) -> Self {
        OutPayload::Shared(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_of_every_replica_name_every_server_and_say_one_explanation_once() {
        let lost = |server: &str| RpcError::MayHaveLost {
            server: server.into(),
        };
        let both = lost("node2@a").after(&lost("node3@b")).to_string();
        assert!(
            both.starts_with("node2@a (as node3@b before it) holds none of these bytes"),
            "{both}"
        );
        assert_eq!(both.matches("holds none").count(), 1, "{both}");
        let refused = RpcError::Status {
            server: "node1@c".into(),
            status: Status::NoSpace,
        };
        let apart = refused.after(&lost("node3@b")).to_string();
        assert!(
            apart.contains("node1@c (after node3@b holds none"),
            "{apart}"
        );
    }
}
