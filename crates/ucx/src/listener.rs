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
}

impl Listener {
    /// Listens on `addr`. With port 0 the system picks a port; see [`Listener::local_addr`].
    pub fn bind(worker: &Rc<Worker>, addr: SocketAddr) -> Result<Listener, UcxError> {
        let queue = Rc::new(ConnQueue {
            requests: RefCell::new(VecDeque::new()),
            waker: Cell::new(None),
            listener: Cell::new(std::ptr::null_mut()),
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
}

impl Drop for Listener {
    fn drop(&mut self) {
        let pending = std::mem::take(&mut *self.queue.requests.borrow_mut());
        for request in pending {
            // SAFETY: the listener is alive and the request came from it, unanswered.
            let status = unsafe { sys::ucp_listener_reject(self.handle, request) };
            if status != sys::UCS_OK {
                tracing::debug!(status = sys::status_string(status), "ucp_listener_reject");
            }
        }
        // SAFETY: destroyed once; the worker is alive (self.worker).
        unsafe { sys::ucp_listener_destroy(self.handle) };
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
        // SAFETY: the listener is alive (callbacks run only before its destroy) and the
        // request is unanswered.
        unsafe { sys::ucp_listener_reject(queue.listener.get(), request) };
        return;
    }
    if let Some(waker) = queue.waker.take() {
        waker.wake();
    }
}
