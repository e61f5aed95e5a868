//! `Endpoint`: a connection to a peer worker, with peer-failure handling.
//!
//! Every endpoint is created with `UCP_ERR_HANDLING_MODE_PEER` and an error handler. When
//! the peer fails, UCX completes the endpoint's outstanding requests with an error and calls
//! the handler, which marks the endpoint failed; later operations on it fail at once with
//! the recorded status. Nothing waits forever on a dead peer.

use std::cell::Cell;
use std::ffi::c_void;
use std::net::SocketAddr;
use std::rc::Rc;

use crate::error::{check, UcxError};
use crate::request::{Callback, Request};
use crate::sockaddr::RawSockAddr;
use crate::sys;
use crate::worker::{Worker, WorkerAddress};

/// A connection to a peer. Cloning shares the connection; it is closed when the last clone
/// (including those held by in-flight requests) is dropped, or earlier by
/// [`Endpoint::abort`].
///
/// **Drop order:** the last drop closes the endpoint in force mode without waiting: requests
/// still in flight on it complete with [`Status::CANCELED`](crate::Status::CANCELED). Await
/// [`Endpoint::flush`] first for a graceful close. The worker finishes the close during
/// progress, or when it is destroyed.
#[derive(Clone)]
pub struct Endpoint {
    pub(crate) inner: Rc<EndpointInner>,
}

pub(crate) struct EndpointInner {
    handle: sys::ucp_ep_h,
    failure: Rc<Failure>,
    worker: Rc<Worker>,
    /// Set once the handle is closed; it is never used again.
    closed: Cell<bool>,
    /// The other side's socket address, where known (see [`Endpoint::peer_addr`]).
    peer: Option<SocketAddr>,
}

/// The identity of one connection, for keying tables by connection (see [`Endpoint::id`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EndpointId(usize);

/// The error handler's argument. It outlives the endpoint handle: the worker keeps it until
/// the close request finishes.
pub(crate) struct Failure {
    status: Cell<Option<sys::ucs_status_t>>,
    /// Set by [`Endpoint::abort_keeping_buffers`]: we gave up on a peer that may still
    /// reach the buffers of its operations.
    keep_buffers: Cell<bool>,
}

impl Failure {
    /// Whether the buffers of operations that fail on this endpoint are kept for good.
    pub(crate) fn keeps_buffers(&self) -> bool {
        self.keep_buffers.get()
    }
}

/// How an endpoint is reached.
enum Target<'a> {
    Address(&'a WorkerAddress),
    Socket(SocketAddr),
    ConnRequest(sys::ucp_conn_request_h),
}

impl Endpoint {
    /// Connects to a worker by its address (from [`Worker::address`] of the peer).
    pub fn connect_address(
        worker: &Rc<Worker>,
        address: &WorkerAddress,
    ) -> Result<Endpoint, UcxError> {
        if address.as_bytes().is_empty() {
            return Err(UcxError::from_status(
                "ucp_ep_create",
                crate::Status::INVALID_PARAM,
            ));
        }
        Self::create(worker, Target::Address(address))
    }

    /// Connects to a [`Listener`](crate::Listener) at `addr` (client-server mode). The
    /// connection is set up asynchronously; operations started before it is ready wait.
    pub fn connect_socket(worker: &Rc<Worker>, addr: SocketAddr) -> Result<Endpoint, UcxError> {
        Self::create(worker, Target::Socket(addr))
    }

    pub(crate) fn accept(
        worker: &Rc<Worker>,
        request: sys::ucp_conn_request_h,
    ) -> Result<Endpoint, UcxError> {
        Self::create(worker, Target::ConnRequest(request))
    }

    /// The other side's socket address: the server's for [`Endpoint::connect_socket`],
    /// the client's for an accepted connection (as UCX's connection request gave it);
    /// `None` for worker-address endpoints.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.inner.peer
    }

    fn create(worker: &Rc<Worker>, target: Target<'_>) -> Result<Endpoint, UcxError> {
        let failure = Rc::new(Failure {
            status: Cell::new(None),
            keep_buffers: Cell::new(false),
        });
        let mut params = sys::ucp_ep_params_t {
            field_mask: (sys::UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE
                | sys::UCP_EP_PARAM_FIELD_ERR_HANDLER) as u64,
            err_mode: sys::UCP_ERR_HANDLING_MODE_PEER,
            err_handler: sys::ucp_err_handler_t {
                cb: Some(on_endpoint_error),
                arg: Rc::as_ptr(&failure) as *mut c_void,
            },
            ..Default::default()
        };
        let sockaddr;
        let mut peer = None;
        match target {
            Target::Address(address) => {
                params.field_mask |= sys::UCP_EP_PARAM_FIELD_REMOTE_ADDRESS as u64;
                params.address = address.as_bytes().as_ptr() as *const sys::ucp_address_t;
            }
            Target::Socket(addr) => {
                peer = Some(addr);
                sockaddr = RawSockAddr::new(addr);
                params.field_mask |=
                    (sys::UCP_EP_PARAM_FIELD_FLAGS | sys::UCP_EP_PARAM_FIELD_SOCK_ADDR) as u64;
                params.flags = sys::UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
                params.sockaddr = sockaddr.as_ucs();
            }
            Target::ConnRequest(request) => {
                peer = client_addr(request);
                params.field_mask |= sys::UCP_EP_PARAM_FIELD_CONN_REQUEST as u64;
                params.conn_request = request;
            }
        }
        let mut handle: sys::ucp_ep_h = std::ptr::null_mut();
        // SAFETY: the worker is alive; params and everything it points to (address bytes,
        // sockaddr, the failure cell) are valid for the call, and the failure cell stays
        // alive until the endpoint is destroyed (see Failure).
        let status = unsafe { sys::ucp_ep_create(worker.handle(), &params, &mut handle) };
        check("ucp_ep_create", status)?;
        let inner = Rc::new(EndpointInner {
            handle,
            failure,
            worker: Rc::clone(worker),
            closed: Cell::new(false),
            peer,
        });
        worker
            .endpoints
            .borrow_mut()
            .insert(handle as usize, Rc::downgrade(&inner));
        Ok(Endpoint { inner })
    }

    /// Looks up an endpoint of this worker by its handle (for AM reply endpoints).
    pub(crate) fn find(worker: &Worker, handle: sys::ucp_ep_h) -> Option<Endpoint> {
        let endpoints = worker.endpoints.try_borrow().ok()?;
        let inner = endpoints.get(&(handle as usize))?.upgrade()?;
        Some(Endpoint { inner })
    }

    pub(crate) fn handle(&self) -> sys::ucp_ep_h {
        self.inner.handle
    }

    /// UCX's description of the endpoint's configuration (`ucp_ep_print_info`): its lanes,
    /// the transport and device of each, and what each carries. Empty for a closed
    /// endpoint or when the text could not be captured.
    pub fn info(&self) -> String {
        if self.inner.closed.get() {
            return String::new();
        }
        let mut buf: *mut libc::c_char = std::ptr::null_mut();
        let mut len: libc::size_t = 0;
        // SAFETY: open_memstream writes the buffer pointer and length at fclose; the handle
        // is open (not closed above) and owned by this endpoint's worker, on this thread.
        unsafe {
            let stream = libc::open_memstream(&mut buf, &mut len);
            if stream.is_null() {
                return String::new();
            }
            sys::ucp_ep_print_info(self.inner.handle, stream);
            libc::fclose(stream);
        }
        if buf.is_null() {
            return String::new();
        }
        // SAFETY: after fclose, buf holds len bytes (plus a NUL) allocated by malloc.
        let text = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) };
        let text = String::from_utf8_lossy(text).into_owned();
        // SAFETY: buf came from open_memstream's malloc and is freed once.
        unsafe { libc::free(buf.cast()) };
        text
    }

    /// The transports the endpoint's lanes use, as UCX names them (`tcp/lo`,
    /// `sysv/memory`, `cma/memory`, ...), each once, in lane order.
    pub fn transports(&self) -> Vec<String> {
        lane_transports(&self.info())
    }

    /// Whether some lane of the endpoint is a shared-memory one (`sysv/memory`,
    /// `cma/memory`, ...): the peer is on this host, and may reach our buffers itself.
    pub fn uses_shared_memory(&self) -> bool {
        self.transports()
            .iter()
            .any(|lane| lane.ends_with("/memory"))
    }

    /// The worker this endpoint belongs to.
    pub fn worker(&self) -> &Rc<Worker> {
        &self.inner.worker
    }

    /// The error the peer-failure handler recorded, if the endpoint has failed.
    pub fn failure(&self) -> Option<UcxError> {
        let status = self.inner.failure.status.get()?;
        Some(UcxError::new("endpoint failed", status))
    }

    /// Whether the endpoint has failed; every operation on it now fails.
    pub fn is_failed(&self) -> bool {
        self.inner.failure.status.get().is_some()
    }

    /// Whether two handles share one connection.
    pub fn same_as(&self, other: &Endpoint) -> bool {
        Rc::ptr_eq(&self.inner, &other.inner)
    }

    /// The connection's identity, shared by its clones: equal ids are one connection
    /// while either handle is alive (a table that keys by it holds a clone, so the id is
    /// not reused under it). Unlike the UCX handle, it is never reused for a new
    /// connection while an old handle exists.
    pub fn id(&self) -> EndpointId {
        EndpointId(Rc::as_ptr(&self.inner) as usize)
    }

    /// The failure cell, which says whether this endpoint was aborted.
    pub(crate) fn failure_cell(&self) -> Rc<Failure> {
        Rc::clone(&self.inner.failure)
    }

    /// Gives up on the connection now, though other clones still hold it: it is marked
    /// failed with [`Status::CANCELED`](crate::Status::CANCELED), so new operations fail
    /// at once, and it is closed in force mode, which completes the operations in flight
    /// on it with an error. For a peer that is alive but stopped taking data, which peer
    /// failure handling never reports.
    pub fn abort(&self) {
        let failure = &self.inner.failure.status;
        if failure.get().is_none() {
            failure.set(Some(sys::UCS_ERR_CANCELED));
        }
        self.inner.close();
    }

    /// [`Endpoint::abort`] for a peer that may still reach the buffers of the operations in
    /// flight, by shared memory, when it runs again: the operations marked with
    /// [`Request::keep_buffers_if_aborted`] hand their buffers to its keeper instead of
    /// freeing them.
    pub fn abort_keeping_buffers(&self) {
        self.inner.failure.keep_buffers.set(true);
        self.abort();
    }

    /// Completes when every operation started on this endpoint has completed remotely
    /// (`ucp_ep_flush_nbx`); in particular, puts are visible at the target after it.
    pub fn flush(&self) -> Request<()> {
        if let Some(request) = self.refuse_if_failed("ucp_ep_flush_nbx") {
            return request;
        }
        let handle = self.handle();
        Request::start(
            self.worker(),
            "ucp_ep_flush_nbx",
            Callback::Send,
            (),
            |_, param| {
                // SAFETY: the endpoint is alive (self holds it); param is valid for the call.
                unsafe { sys::ucp_ep_flush_nbx(handle, param) }
            },
        )
    }

    /// A request that fails at once if the endpoint has failed.
    pub(crate) fn refuse_if_failed<T: 'static>(&self, op: &'static str) -> Option<Request<T>> {
        let status = self.inner.failure.status.get()?;
        Some(Request::failed(
            self.worker(),
            op,
            crate::Status::from_raw(status),
        ))
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("handle", &self.inner.handle)
            .field("failed", &self.inner.failure.status.get())
            .finish()
    }
}

impl Drop for EndpointInner {
    fn drop(&mut self) {
        self.close();
    }
}

impl EndpointInner {
    /// Closes the handle, once.
    fn close(&self) {
        if self.closed.replace(true) {
            return;
        }
        if let Ok(mut endpoints) = self.worker.endpoints.try_borrow_mut() {
            endpoints.remove(&(self.handle as usize));
        }
        // Force mode: a flush-mode close needs the peer to answer, and UCX 1.13 aborts in
        // ucp_worker_destroy if such a close is still pending. Callers wanting delivery of
        // what they sent await `flush` first. The peer still learns of the close (the
        // client-server connection is disconnected) and fails its endpoint.
        let param = sys::ucp_request_param_t {
            op_attr_mask: sys::UCP_OP_ATTR_FIELD_FLAGS,
            flags: sys::UCP_EP_CLOSE_FLAG_FORCE,
            ..Default::default()
        };
        // SAFETY: the handle is a live endpoint of a live worker (we hold an Rc to it);
        // `closed` makes this the only close, and every use of the handle after it is
        // refused first: a closed endpoint is marked failed (by `abort`) or has no clones
        // left (drop). Requests on it hold this endpoint or complete on close.
        let ptr = unsafe { sys::ucp_ep_close_nbx(self.handle, &param) };
        if ptr.is_null() || sys::ptr_is_err(ptr) {
            if sys::ptr_is_err(ptr) {
                tracing::debug!(status = sys::ptr_status(ptr), "ucp_ep_close_nbx");
            }
            return;
        }
        self.worker.push_closing(ClosingEndpoint {
            request: ptr,
            failure: Rc::clone(&self.failure),
        });
    }
}

/// An endpoint close that has not finished yet.
pub(crate) struct ClosingEndpoint {
    request: *mut c_void,
    failure: Rc<Failure>,
}

impl ClosingEndpoint {
    pub(crate) fn is_done(&self) -> bool {
        // SAFETY: the request came from ucp_ep_close_nbx and is freed only in Drop.
        unsafe { sys::ucp_request_check_status(self.request) != sys::UCS_INPROGRESS }
    }

    /// Frees the close request (UCX finishes it on its own, at the latest when the worker is
    /// destroyed) and returns the error-handler argument, which must outlive the worker.
    pub(crate) fn release(self) -> Rc<Failure> {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: freed once: Drop does not run for `this`.
        unsafe { sys::ucp_request_free(this.request) };
        // SAFETY: moving the Rc out of the ManuallyDrop, which is never used again.
        unsafe { std::ptr::read(&this.failure) }
    }
}

impl Drop for ClosingEndpoint {
    fn drop(&mut self) {
        // SAFETY: the request came from ucp_ep_close_nbx and is freed once, here; after a
        // completed close the endpoint is gone and the failure cell may be dropped.
        unsafe { sys::ucp_request_free(self.request) };
    }
}

unsafe extern "C" fn on_endpoint_error(
    arg: *mut c_void,
    ep: sys::ucp_ep_h,
    status: sys::ucs_status_t,
) {
    // SAFETY: arg is the Failure given at ucp_ep_create, kept alive until the endpoint is
    // destroyed (by the endpoint, then the close list, then the worker's drop).
    let failure = unsafe { &*(arg as *const Failure) };
    if failure.status.get().is_none() {
        failure.status.set(Some(status));
    }
    tracing::debug!(
        ?ep,
        status = sys::status_string(status),
        "UCX endpoint failed"
    );
}

/// The client address of a connection request not yet answered, if UCX gives one.
fn client_addr(request: sys::ucp_conn_request_h) -> Option<SocketAddr> {
    let mut attr = sys::ucp_conn_request_attr_t {
        field_mask: sys::UCP_CONN_REQUEST_ATTR_FIELD_CLIENT_ADDR as u64,
        ..Default::default()
    };
    // SAFETY: the request is alive (unanswered until ucp_ep_create takes it); attr is an
    // out-parameter.
    let status = unsafe { sys::ucp_conn_request_query(request, &mut attr) };
    if status != sys::UCS_OK {
        tracing::debug!(
            status = sys::status_string(status),
            "ucp_conn_request_query"
        );
        return None;
    }
    crate::sockaddr::from_storage(&attr.client_address)
}

/// The `transport/device` of every `lane[i]:` line of `ucp_ep_print_info`'s text, each once.
fn lane_transports(info: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for line in info.lines() {
        let Some((_, rest)) = line.split_once("lane[") else {
            continue;
        };
        // "lane[0]:  3:tcp/lo.0 md[1] ..." names the resource index, then transport/device.
        let Some(resource) = rest.split_whitespace().nth(1) else {
            continue;
        };
        let name = resource.split_once(':').map_or(resource, |(_, name)| name);
        let name = name.rsplit_once('.').map_or(name, |(name, _)| name);
        if name.contains('/') && !found.iter().any(|f| f == name) {
            found.push(name.to_string());
        }
    }
    found
}
