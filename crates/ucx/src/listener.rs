//! `Listener`: accepts client-server connections on a socket address (`ucp_listener_create`).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ffi::c_void;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll, Waker};

use crate::endpoint::Endpoint;
use crate::error::{check, Status, UcxError};
use crate::limits::LISTENER_BACKLOG_MAX;
use crate::sockaddr::{from_storage, RawSockAddr};
use crate::sys;
use crate::worker::Worker;

/// Listens for [`Endpoint::connect_socket`] clients. Connection requests wait in a queue of
/// at most [`LISTENER_BACKLOG_MAX`]; beyond that they are rejected.
///
/// **Drop order:** pending requests are rejected, then the listener is destroyed; accepted
/// endpoints live on. It holds its worker.
///
/// **Destroying a listener is unsafe in UCX while clients connect.** UCX's TCP connection
/// manager (1.13 up to at least 1.19) keeps a bare pointer to the listener in each
/// connection it accepted but has not yet announced (the client's first bytes are still
/// on the way); destroying the listener then makes UCX's async thread call into freed
/// memory (SIGSEGV in `ucp_cm_server_conn_request_cb`). A process that must not crash
/// while it stops, as a server does, calls [`Listener::refuse`] and then
/// [`Listener::keep_until_exit`] instead of dropping it.
pub struct Listener {
    handle: sys::ucp_listener_h,
    queue: Rc<ConnQueue>,
    local_addr: SocketAddr,
    worker: Rc<Worker>,
}

struct ConnQueue {
    requests: RefCell<VecDeque<sys::ucp_conn_request_h>>,
    waker: Cell<Option<Waker>>,
    listener: Cell<sys::ucp_listener_h>,
    /// Set by [`Listener::refuse`]: every request is rejected as it arrives.
    refusing: Cell<bool>,
}

impl Listener {
    /// Listens on `addr`. With port 0 the system picks a port; see [`Listener::local_addr`].
    pub fn bind(worker: &Rc<Worker>, addr: SocketAddr) -> Result<Listener, UcxError> {
        let queue = Rc::new(ConnQueue {
            requests: RefCell::new(VecDeque::new()),
            waker: Cell::new(None),
            listener: Cell::new(std::ptr::null_mut()),
            refusing: Cell::new(false),
        });
        let sockaddr = RawSockAddr::new(addr);
        let params = sys::ucp_listener_params_t {
            field_mask: (sys::UCP_LISTENER_PARAM_FIELD_SOCK_ADDR
                | sys::UCP_LISTENER_PARAM_FIELD_CONN_HANDLER) as u64,
            sockaddr: sockaddr.as_ucs(),
            conn_handler: sys::ucp_listener_conn_handler_t {
                cb: Some(on_conn_request),
                arg: Rc::as_ptr(&queue) as *mut c_void,
            },
            ..Default::default()
        };
        let mut handle: sys::ucp_listener_h = std::ptr::null_mut();
        // SAFETY: the worker is alive; params points to the sockaddr and the queue, and the
        // queue lives until after ucp_listener_destroy (it is a field of the Listener).
        let status = unsafe { sys::ucp_listener_create(worker.handle(), &params, &mut handle) };
        check("ucp_listener_create", status)?;
        queue.listener.set(handle);
        let mut listener = Listener {
            handle,
            queue,
            local_addr: addr,
            worker: Rc::clone(worker),
        };
        let mut attr = sys::ucp_listener_attr_t {
            field_mask: sys::UCP_LISTENER_ATTR_FIELD_SOCKADDR as u64,
            ..Default::default()
        };
        // SAFETY: the listener is alive; attr is an out-parameter.
        let status = unsafe { sys::ucp_listener_query(handle, &mut attr) };
        check("ucp_listener_query", status)?;
        listener.local_addr = from_storage(&attr.sockaddr)
            .ok_or_else(|| UcxError::from_status("ucp_listener_query", Status::INVALID_PARAM))?;
        Ok(listener)
    }

    /// The address the listener is bound to, with the port the system chose.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits for the next connection and accepts it as an endpoint (with the peer-failure
    /// handler). Needs the worker's progress task to be running.
    pub async fn accept(&self) -> Result<Endpoint, UcxError> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Polls for the next connection.
    pub fn poll_accept(&self, cx: &mut TaskContext<'_>) -> Poll<Result<Endpoint, UcxError>> {
        let request = self.queue.requests.borrow_mut().pop_front();
        match request {
            Some(request) => Poll::Ready(Endpoint::accept(&self.worker, request)),
            None => {
                self.queue.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        }
    }

    /// Rejects every waiting connection request and, from now on, each new one as it
    /// arrives: clients fail at once instead of waiting for an answer that never comes.
    pub fn refuse(&self) {
        self.queue.refusing.set(true);
        self.reject_pending();
    }

    /// Leaves the listener, and with it its worker, alive until the process exits: the one
    /// way to stop listening that UCX's connection manager cannot crash on (see the type's
    /// docs). Call [`Listener::refuse`] first so that clients are turned away meanwhile.
    pub fn keep_until_exit(self: Rc<Self>) {
        std::mem::forget(self);
    }

    fn reject_pending(&self) {
        let pending = std::mem::take(&mut *self.queue.requests.borrow_mut());
        for request in pending {
            reject(self.handle, request);
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.reject_pending();
        // SAFETY: destroyed once; the worker is alive (self.worker).
        unsafe { sys::ucp_listener_destroy(self.handle) };
    }
}

/// Answers a connection request with a rejection.
fn reject(listener: sys::ucp_listener_h, request: sys::ucp_conn_request_h) {
    // SAFETY: the listener is alive (callers hold it, or run in its callback, which UCX
    // calls only before its destroy) and the request came from it, unanswered.
    let status = unsafe { sys::ucp_listener_reject(listener, request) };
    if status != sys::UCS_OK {
        tracing::debug!(status = sys::status_string(status), "ucp_listener_reject");
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

unsafe extern "C" fn on_conn_request(request: sys::ucp_conn_request_h, arg: *mut c_void) {
    // SAFETY: arg is the ConnQueue given at ucp_listener_create, alive until after
    // ucp_listener_destroy.
    let queue = unsafe { &*(arg as *const ConnQueue) };
    if queue.refusing.get() {
        reject(queue.listener.get(), request);
        return;
    }
    let full = match queue.requests.try_borrow_mut() {
        Ok(mut requests) if requests.len() < LISTENER_BACKLOG_MAX => {
            requests.push_back(request);
            false
        }
        _ => true,
    };
    if full {
        tracing::warn!(
            backlog = LISTENER_BACKLOG_MAX,
            "listener backlog full; rejecting"
        );
        reject(queue.listener.get(), request);
        return;
    }
    if let Some(waker) = queue.waker.take() {
        waker.wake();
    }
}
