//! A thin, safe binding of the system UCX (ucp): contexts, workers, endpoints, listeners,
//! and Active Messages, with every non-blocking operation exposed as
//! a `Future` driven by a per-thread progress task.
//!
//! # Bindings
//!
//! The raw declarations (`src/sys/bindings.rs`) are generated once by bindgen from the
//! system headers with an allowlist of the functions and types we use, and checked in. The
//! build then needs only `pkg-config` and libucx, not libclang or the bindgen crate, and
//! stays fast. `scripts/gen-ucx-bindings.sh` regenerates them; the generated file carries
//! compile-time size, alignment and offset assertions for every struct, so a mismatch with
//! the headers fails the build. They were generated from UCX 1.13.1 (Debian 12); `build.rs`
//! requires at least 1.12 (the `*_nbx` and AM v2 API).
//!
//! # Threads and progress
//!
//! A [`Context`] is shared (`Arc`, `mt_workers_shared`). A [`Worker`] is single-threaded and
//! `!Send`: create one per event-loop thread, on a tokio current-thread runtime in a
//! `LocalSet`, spawn [`Worker::run_progress`] on it, and drive the set with [`block_on`],
//! which turns its tasks without a system call per turn (`LocalSet::block_on` works too, at
//! the cost of an `epoll_wait` per poll of an idle worker). All completions and Active Message
//! handlers run inside `ucp_worker_progress` on that thread. The callbacks record the
//! completion, queue the message and wake a task; the one user code they run is an AM
//! stream's router ([`AmStream::set_router`]), which must not call into UCX.
//!
//! # Ownership and drop order
//!
//! Handles are RAII. [`Endpoint`]s, [`Listener`]s, [`AmStream`]s and in-flight
//! [`Request`]s hold an `Rc<Worker>`; workers hold an `Arc<Context>`. So endpoints go
//! before their worker, and the worker before the context, whatever order the caller drops
//! them in. An in-flight
//! operation owns its buffers (see [`Request`]): dropping the future never frees memory UCX
//! still uses.
//!
//! # Failures
//!
//! Endpoints use `UCP_ERR_HANDLING_MODE_PEER`. A failed peer completes pending requests with
//! an error and marks the endpoint failed; nothing waits forever on a dead peer. UCX errors
//! are [`UcxError`]s with the operation, the status and UCX's text. Header and data bytes
//! from the network are handed over as bytes, whatever their length; this crate does not
//! panic on them.
//!
//! # Transports
//!
//! No UCX setting is forced: UCX's defaults (`UCX_TLS` unset, i.e. `all`) work on this
//! project's machines (Debian 12, UCX 1.13.1, loopback only), and the tests pass with
//! `UCX_TLS` set to `tcp`, `posix,cma,self,tcp`, `sm,self,tcp`, `sysv,self,tcp` or `all`.
//! [`Context::with_config`] overrides keys when needed.
//!
//! **Devices:** by default UCX uses every active network device, and its `tcp` transport
//! opens a listening socket per worker on each of them, whatever address a [`Listener`] is
//! bound to. `NET_DEVICES` (`UCX_NET_DEVICES`) restricts that; [`netif::devices_of`] gives
//! the devices of one address.
//!
//! **Shared memory:** endpoints ask for peer-failure handling, which UCX 1.13 offers over
//! `posix` and `sysv` only with `MM_ERROR_HANDLING=y`, and for rendezvous over `cma` only
//! with `CMA_MEMORY_INVALIDATE=y`; without them, Active Messages between processes on one
//! host travel over `tcp`. [`transport_config`] gives those settings (or turns them off),
//! and keeps rendezvous over `tcp` to Active Message fragments (`TCP_PUT_ENABLE=n`: UCX
//! 1.13's tcp put can abort the process when a connection closes mid-transfer).
//!
//! **Heap:** [`keep_freed_heap_memory`] keeps the buffers UCX assembles eager messages in
//! from going back to the kernel at every free; binaries call it, libraries do not.
//!
//! **Invariant:** `UCX_TLS` must include `tcp`: client-server connections are made through
//! the `tcp` sockcm, whose socket also reports a dead peer at once. Without `tcp`, endpoint
//! creation succeeds but wireup fails and operations never complete.
mod am;
mod context;
mod drive;
mod endpoint;
mod error;
mod heap;
mod lend;
pub mod limits;
mod listener;
pub mod netif;
mod request;
mod sockaddr;
mod sys;
mod worker;

pub use am::{AmMessage, AmProto, AmRouter, AmStream};
pub use context::{transport_config, Context, Features, Role};
pub use drive::{block_on, yield_turn};
pub use endpoint::{Endpoint, EndpointId};
pub use error::{ProgressError, Status, UcxError};
pub use heap::keep_freed_heap_memory;
pub use lend::{lend, lend_mut, Lent, LentMut, Loan};
pub use listener::Listener;
pub use netif::interface_of;
pub use request::Request;
pub use worker::{Armed, AwaitingReplies, Worker, WorkerAddress};

/// Keeps `waker` in `slot` to be woken later, unless the waker there already wakes the
/// same task: a clone and a drop per poll were a measurable share of a polling loop.
pub fn keep_waker(slot: &mut Option<std::task::Waker>, waker: &std::task::Waker) {
    if !slot.as_ref().is_some_and(|kept| kept.will_wake(waker)) {
        *slot = Some(waker.clone());
    }
}

/// The version of the UCX library loaded at run time, as (major, minor, release).
pub fn ucx_version() -> (u32, u32, u32) {
    let (mut major, mut minor, mut release) = (0, 0, 0);
    // SAFETY: ucp_get_version only writes the three out-parameters.
    unsafe { sys::ucp_get_version(&mut major, &mut minor, &mut release) };
    (major, minor, release)
}
