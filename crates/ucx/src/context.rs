//! `Context`: one UCX application context (`ucp_context_h`) per process.

use std::ffi::CString;
use std::sync::Arc;

use crate::error::{check, Status, UcxError};
use crate::sys;

/// Which UCX capabilities a [`Context`] enables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features(u64);

impl Features {
    /// Active Messages (`UCP_FEATURE_AM`).
    pub const AM: Features = Features(sys::UCP_FEATURE_AM as u64);
    /// Remote memory access: put and get (`UCP_FEATURE_RMA`).
    pub const RMA: Features = Features(sys::UCP_FEATURE_RMA as u64);
    /// Event-fd wakeup (`UCP_FEATURE_WAKEUP`); needed by
    /// [`Worker::run_progress`](crate::Worker::run_progress).
    pub const WAKEUP: Features = Features(sys::UCP_FEATURE_WAKEUP as u64);
    /// Everything BenchFS uses: AM and wakeup, and RMA so that on RDMA transports UCX's
    /// rendezvous has its get/put lanes.
    pub const ALL: Features = Features(Self::AM.0 | Self::RMA.0 | Self::WAKEUP.0);

    /// Whether every feature in `other` is also in `self`.
    pub fn contains(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Features {
    type Output = Features;
    fn bitor(self, rhs: Features) -> Features {
        Features(self.0 | rhs.0)
    }
}

/// A UCX application context.
///
/// Workers on several threads may share one context (it is created with
/// `mt_workers_shared`), so it is `Send + Sync` and handed out as an `Arc`. Every
/// [`Worker`](crate::Worker) holds an `Arc` to
/// its context, so the context is cleaned up last.
#[derive(Debug)]
pub struct Context {
    handle: sys::ucp_context_h,
    features: Features,
}

// SAFETY: the context is created with UCP_PARAM_FIELD_MT_WORKERS_SHARED = 1, which makes
// UCX guard the context-level state (memory registration, rkey packing) with its own lock,
// and this system UCX is built with --enable-mt. The handle is only destroyed in Drop.
unsafe impl Send for Context {}
// SAFETY: as above; shared references only call context-level functions that UCX locks.
unsafe impl Sync for Context {}

impl Context {
    /// Creates a context with UCX's configuration from the environment (`UCX_*`).
    pub fn new(features: Features) -> Result<Arc<Context>, UcxError> {
        Self::with_config(features, &[])
    }

    /// Creates a context, overriding UCX configuration keys after reading the environment.
    /// Keys are given without the `UCX_` prefix. A key of UCP itself takes its full name,
    /// e.g. `("TLS", "tcp")` or `("NET_DEVICES", "lo")`. A key of a UCT component takes its
    /// name inside that component, without the component's prefix: `UCX_TCP_CM_REUSEADDR`
    /// is `CM_REUSEADDR`. UCX applies it to every component that has such a key and, when
    /// none has, ignores it and warns "invalid configuration" as a worker is created.
    pub fn with_config(
        features: Features,
        overrides: &[(&str, &str)],
    ) -> Result<Arc<Context>, UcxError> {
        let config = Config::read()?;
        for (key, value) in overrides {
            config.modify(key, value)?;
        }
        let params = sys::ucp_params_t {
            field_mask: (sys::UCP_PARAM_FIELD_FEATURES | sys::UCP_PARAM_FIELD_MT_WORKERS_SHARED)
                as u64,
            features: features.0,
            mt_workers_shared: 1,
            ..Default::default()
        };
        let mut handle: sys::ucp_context_h = std::ptr::null_mut();
        // SAFETY: params and config are valid for the call; ucp_init (a header inline in C)
        // is ucp_init_version with the API version we were generated against.
        let status = unsafe {
            sys::ucp_init_version(
                sys::UCP_API_MAJOR,
                sys::UCP_API_MINOR,
                &params,
                config.0,
                &mut handle,
            )
        };
        check("ucp_init", status)?;
        tracing::debug!(?features, "UCX context created");
        Ok(Arc::new(Context { handle, features }))
    }

    /// The features this context was created with.
    pub fn features(&self) -> Features {
        self.features
    }

    pub(crate) fn handle(&self) -> sys::ucp_context_h {
        self.handle
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: the handle came from ucp_init; workers and memory regions hold an Arc to
        // this context, so none of them is alive any more.
        unsafe { sys::ucp_cleanup(self.handle) };
    }
}

/// The UCX settings for processes on one host to talk over shared memory (`enabled`) or
/// over the network stack only, as `(key, value)` pairs for [`Context::with_config`].
/// Keys already set in the environment (`UCX_<KEY>`) are left out: the user's UCX
/// configuration wins.
///
/// Our endpoints ask for peer-failure handling, which UCX 1.13 gives the `sysv` and `posix`
/// transports only with `MM_ERROR_HANDLING=y` (then a peer is declared dead by a pid check
/// every `KEEPALIVE_INTERVAL`, set to one second here instead of 20 for a client, and off for
/// a server: with UCX 1.13 a server's keepalive to a blocking client that made no call for
/// ~20 s, and so did not progress its worker, kept the server's worker from arming for good,
/// and every request waited out a backoff), and rendezvous through
/// `cma` (process_vm_readv, one copy) only with `CMA_MEMORY_INVALIDATE=y`; without it,
/// rendezvous data between endpoints made through a listener goes over `tcp`. Connections
/// made through a listener keep their `tcp` socket, which reports a peer whose process
/// ended (even a zombie) in milliseconds. UCX picks shared memory only for peers on the
/// same host and in the same IPC namespace, so other hosts keep the network.
///
/// Within a host the client moves every rendezvous byte, both ways, by cross-memory
/// attach: its own sends by put (`RNDV_SCHEME=put_zcopy`, it writes into the server's
/// receive buffer), a server's by get (`get_zcopy`, it reads the server's send buffer); in
/// UCX 1.13 the sender decides, by packing its buffer's key into the rendezvous request or
/// not. So a server never reaches a client's memory, which its caller takes back once a
/// call fails. With get for a client's sends, a server that was stopped (SIGSTOP) and ran
/// again after the client gave up read the client's reused buffer and stored bytes nobody
/// wrote (`tests/write_behind.rs`); with put for a server's replies, a server stopped with
/// the client's ready-to-receive queued would write a stale reply into a buffer the caller
/// had reused. A client that runs again after a server gave up on it can still reach the
/// server's buffers, so a server keeps the buffers of transfers on a connection it aborted
/// ([`crate::Endpoint::abort_keeping_buffers`]). Cost and gain: cross-memory attach pins each
/// page of the side it reaches; a client reading a server's huge pages took one client's
/// 1 MiB reads 1.5x faster than the server writing into the client's small pages, and
/// from a server's small pages or disk buffers 0.8-0.85x, the price of the rule
/// (`docs/network.md`). Within a host, one
/// rendezvous lane: where the user turns tcp put back on, a put scheme otherwise adds a
/// `tcp` lane beside `cma`.
///
/// Over `tcp`, rendezvous data goes as Active Message fragments (`TCP_PUT_ENABLE=n`), still
/// pushed by the sender: UCX 1.13's tcp PUT protocol aborts the process on an assertion
/// (`tcp_ep.c` `PUT_TX_WAITING_ACK`) when a put's acknowledgement arrives around a
/// connection's close, as when a server dies mid-write. It was no faster here (rpc-bench
/// over tcp, 64 KiB to 4 MiB, within the noise of alternate runs), and it also opened an
/// rma lane on every interface, so a loopback connection sent half its data by `eth0`.
pub fn transport_config(enabled: bool, role: Role) -> Vec<(&'static str, &'static str)> {
    let flag = if enabled { "y" } else { "n" };
    // (key for ucp_config_modify, its environment variable, value): a UCT component's key
    // goes without the component's prefix (see `Context::with_config`).
    let mut config = vec![
        ("MM_ERROR_HANDLING", "UCX_MM_ERROR_HANDLING", flag),
        ("MEMORY_INVALIDATE", "UCX_CMA_MEMORY_INVALIDATE", flag),
        (
            "RNDV_SCHEME",
            "UCX_RNDV_SCHEME",
            rendezvous_scheme(enabled, role),
        ),
        ("PUT_ENABLE", "UCX_TCP_PUT_ENABLE", "n"),
    ];
    if enabled {
        let keepalive = match role {
            Role::Client => "1s",
            Role::Server => "inf",
        };
        config.push(("KEEPALIVE_INTERVAL", "UCX_KEEPALIVE_INTERVAL", keepalive));
        config.push(("MAX_RNDV_LANES", "UCX_MAX_RNDV_LANES", "1"));
    }
    config
        .into_iter()
        .filter(|(_, env, _)| std::env::var_os(env).is_none())
        .map(|(key, _, value)| (key, value))
        .collect()
}

/// How a context's rendezvous sends move their data (see [`transport_config`]).
fn rendezvous_scheme(shared_memory: bool, role: Role) -> &'static str {
    match (shared_memory, role) {
        (true, Role::Server) => "get_zcopy",
        _ => "put_zcopy",
    }
}

/// Which end of BenchFS connections a context's workers are, for [`transport_config`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Calls servers: an application or a mount. (A server calls its peers through its
    /// own context, a server's.)
    Client,
    /// Answers clients (`benchfsd`).
    Server,
}

/// A `ucp_config_t`, released on drop.
struct Config(*mut sys::ucp_config_t);

impl Config {
    fn read() -> Result<Config, UcxError> {
        let mut config: *mut sys::ucp_config_t = std::ptr::null_mut();
        // SAFETY: null env prefix and filename mean "UCX_" and no file; config is an
        // out-pointer.
        let status =
            unsafe { sys::ucp_config_read(std::ptr::null(), std::ptr::null(), &mut config) };
        check("ucp_config_read", status)?;
        Ok(Config(config))
    }

    fn modify(&self, key: &str, value: &str) -> Result<(), UcxError> {
        let invalid = || UcxError::from_status("ucp_config_modify", Status::INVALID_PARAM);
        let key = CString::new(key).map_err(|_| invalid())?;
        let value = CString::new(value).map_err(|_| invalid())?;
        // SAFETY: self.0 is a live config; key and value are NUL-terminated for the call.
        let status = unsafe { sys::ucp_config_modify(self.0, key.as_ptr(), value.as_ptr()) };
        check("ucp_config_modify", status)
    }
}

impl Drop for Config {
    fn drop(&mut self) {
        // SAFETY: self.0 came from ucp_config_read and is released once.
        unsafe { sys::ucp_config_release(self.0) };
    }
}
