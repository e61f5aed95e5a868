//! `Request`: a UCX non-blocking (`*_nbx`) operation as a `Future`.
//!
//! **Invariant (buffer ownership):** an operation's buffers live in a [`Pending`] on the
//! heap, shared by the future and by UCX (through `user_data`). UCX's completion callback
//! always runs exactly once for an operation that returned a request handle, and it owns
//! one `Rc` reference; the future owns the other. Dropping the future before completion
//! therefore never frees memory UCX still reads or writes: the buffers stay in the
//! `Pending` until the callback drops the last reference. The dropped future also marks the
//! request abandoned, so the callback releases the request handle itself.
//!
//! The worker is single-threaded (`UCS_THREAD_MODE_SINGLE`) and every callback runs inside
//! `ucp_worker_progress` on the worker's thread, which is why `Rc` and `Cell` suffice.

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll, Waker};

use crate::endpoint::{Endpoint, Failure};
use crate::error::{Status, UcxError};
use crate::sys;
use crate::worker::Worker;

/// State shared by a [`Request`] and UCX's completion callback.
pub(crate) struct Pending<T> {
    status: Cell<Option<sys::ucs_status_t>>,
    abandoned: Cell<bool>,
    waker: Cell<Option<Waker>>,
    /// The operation's buffers; taken by the future on completion.
    payload: RefCell<Option<T>>,
    /// The worker's count of operations in flight, which this one is in until completion.
    in_flight: Rc<Cell<usize>>,
    /// The endpoint whose abort keeping buffers hands a failed operation's buffers to
    /// the keeper (see [`Request::keep_buffers_if_aborted`]).
    kept_if_aborted: Cell<Option<Keeper<T>>>,
}

/// The endpoint an operation's buffers are kept for, and what keeps them.
type Keeper<T> = (Rc<Failure>, fn(T));

impl<T> Pending<T> {
    /// After a completion: hands the buffers of an operation that failed on an endpoint
    /// aborted keeping buffers to their keeper, since its peer may still reach them.
    fn keep_buffers_if_aborted(&self, status: sys::ucs_status_t) {
        let Some((failure, keep)) = self.kept_if_aborted.take() else {
            return;
        };
        if status != sys::UCS_OK && failure.keeps_buffers() {
            if let Some(payload) = self.payload.borrow_mut().take() {
                keep(payload);
            }
        }
    }
}

/// Which completion callback type an operation uses.
#[derive(Clone, Copy)]
pub(crate) enum Callback {
    /// `ucp_send_nbx_callback_t`: AM send, put, get, flush, close.
    Send,
    /// `ucp_am_recv_data_nbx_callback_t`: receiving rendezvous AM data.
    RecvAm,
}

/// A UCX operation in flight. Resolves to the operation's buffers (or `()`) when UCX is done
/// with them, or to the error UCX reported.
///
/// **Cancellation:** dropping a `Request` does not cancel the operation; it keeps running and
/// its buffers are freed when UCX completes it. A request whose endpoint fails or is closed
/// completes with an error (the endpoint is created with `UCP_ERR_HANDLING_MODE_PEER`).
#[must_use = "a request does nothing useful unless awaited; dropping it detaches the operation"]
pub struct Request<T> {
    op: &'static str,
    state: Option<Rc<Pending<T>>>,
    /// The UCX request handle, or null if the operation completed or failed at submission.
    handle: *mut c_void,
    /// Set when the operation finished at submission (or was refused before it).
    immediate: Option<Result<T, UcxError>>,
    /// Keeps the worker (and so the request handle) alive while the request is.
    _worker: Rc<Worker>,
}

impl<T> Unpin for Request<T> {}

impl<T: 'static> Request<T> {
    /// A request that failed before reaching UCX.
    pub(crate) fn failed(worker: &Rc<Worker>, op: &'static str, status: Status) -> Request<T> {
        Request {
            op,
            state: None,
            handle: sys::null_mut(),
            immediate: Some(Err(UcxError::from_status(op, status))),
            _worker: Rc::clone(worker),
        }
    }

    /// A request that already completed with `value` (no UCX operation was needed).
    pub(crate) fn ready(worker: &Rc<Worker>, op: &'static str, value: T) -> Request<T> {
        Request {
            op,
            state: None,
            handle: sys::null_mut(),
            immediate: Some(Ok(value)),
            _worker: Rc::clone(worker),
        }
    }

    /// Starts an operation. `submit` gets the payload at its final heap address and the
    /// request parameters (callback and user data already set; it may add flags) and calls
    /// the `*_nbx` function.
    pub(crate) fn start(
        worker: &Rc<Worker>,
        op: &'static str,
        callback: Callback,
        payload: T,
        submit: impl FnOnce(&mut T, &mut sys::ucp_request_param_t) -> sys::ucs_status_ptr_t,
    ) -> Request<T> {
        worker.note_activity();
        let state = Rc::new(Pending {
            status: Cell::new(None),
            abandoned: Cell::new(false),
            waker: Cell::new(None),
            payload: RefCell::new(Some(payload)),
            in_flight: Rc::clone(&worker.in_flight),
            kept_if_aborted: Cell::new(None),
        });
        let mut param = sys::ucp_request_param_t {
            op_attr_mask: sys::UCP_OP_ATTR_FIELD_CALLBACK | sys::UCP_OP_ATTR_FIELD_USER_DATA,
            user_data: Rc::into_raw(Rc::clone(&state)) as *mut c_void,
            ..Default::default()
        };
        match callback {
            Callback::Send => param.cb.send = Some(send_callback::<T>),
            Callback::RecvAm => param.cb.recv_am = Some(recv_am_callback::<T>),
        }
        let ptr = {
            let mut payload = state.payload.borrow_mut();
            let Some(payload) = payload.as_mut() else {
                unreachable!("payload is set just above")
            };
            // This request's callback does not run inside the call, and other requests'
            // callbacks touch only their own payloads: holding the borrow across the call
            // is fine even if UCX completes other requests inside it.
            worker.in_flight.set(worker.in_flight.get() + 1);
            submit(payload, &mut param)
        };
        if ptr.is_null() || sys::ptr_is_err(ptr) {
            worker.in_flight.set(worker.in_flight.get() - 1);
            // SAFETY: UCX does not call the callback when the operation completes or fails
            // at submission, so the reference given as user_data is still ours to drop.
            drop(unsafe { Rc::from_raw(param.user_data as *const Pending<T>) });
            let result = if ptr.is_null() {
                let payload = state.payload.borrow_mut().take();
                payload.ok_or_else(|| UcxError::from_status(op, Status::INVALID_PARAM))
            } else {
                Err(UcxError::new(op, sys::ptr_status(ptr)))
            };
            return Request {
                op,
                state: None,
                handle: sys::null_mut(),
                immediate: Some(result),
                _worker: Rc::clone(worker),
            };
        }
        worker.wake_progress();
        Request {
            op,
            state: Some(state),
            handle: ptr,
            immediate: None,
            _worker: Rc::clone(worker),
        }
    }
}

impl<T> Request<T> {
    /// Hands this operation's buffers to `keep`, which must never free or reuse them, if
    /// it fails because `ep` was given up on by [`Endpoint::abort_keeping_buffers`].
    ///
    /// For a peer on this host, which moves rendezvous data itself by cross-memory attach
    /// (`process_vm_writev` into our receive buffers, `process_vm_readv` from our send
    /// buffers) at addresses it was told: UCX cannot revoke that access. A peer that was
    /// stopped when we aborted, and runs again, would otherwise write into or read from
    /// memory that then belongs to something else. A peer that failed (its process ended or
    /// it closed the connection) reaches nothing any more, so those buffers are freed.
    pub fn keep_buffers_if_aborted(self, ep: &Endpoint, keep: fn(T)) -> Self {
        if let Some(state) = &self.state {
            state.kept_if_aborted.set(Some((ep.failure_cell(), keep)));
        }
        self
    }
}

impl<T> Future for Request<T> {
    type Output = Result<T, UcxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(result) = this.immediate.take() {
            return Poll::Ready(result);
        }
        let Some(state) = this.state.as_ref() else {
            return Poll::Ready(Err(UcxError::from_status(this.op, Status::INVALID_PARAM)));
        };
        let Some(status) = state.status.get() else {
            state.waker.set(Some(cx.waker().clone()));
            return Poll::Pending;
        };
        if !this.handle.is_null() {
            // SAFETY: the handle came from a *_nbx call and has completed (the callback ran
            // and did not free it because the request was not abandoned); freed once.
            unsafe { sys::ucp_request_free(this.handle) };
            this.handle = sys::null_mut();
        }
        let payload = state.payload.borrow_mut().take();
        this.state = None;
        if status != sys::UCS_OK {
            return Poll::Ready(Err(UcxError::new(this.op, status)));
        }
        Poll::Ready(payload.ok_or_else(|| UcxError::from_status(this.op, Status::INVALID_PARAM)))
    }
}

impl<T> Drop for Request<T> {
    fn drop(&mut self) {
        let Some(state) = self.state.take() else {
            return;
        };
        if self.handle.is_null() {
            return;
        }
        if state.status.get().is_some() {
            // SAFETY: completed and not yet freed (see poll).
            unsafe { sys::ucp_request_free(self.handle) };
        } else {
            // The callback will free the handle; the payload stays in `state` until then.
            state.abandoned.set(true);
            state.waker.take();
        }
    }
}

impl<T> std::fmt::Debug for Request<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("op", &self.op)
            .field("in_flight", &!self.handle.is_null())
            .finish()
    }
}

/// Records completion; shared by both callback shapes.
///
/// # Safety
/// `request` is the UCX request being completed and `user_data` the pointer that
/// [`Request::start`] made with `Rc::into_raw` for this operation; called once.
unsafe fn complete<T>(request: *mut c_void, status: sys::ucs_status_t, user_data: *mut c_void) {
    // SAFETY: per this function's contract, user_data owns one reference to the Pending.
    let state = unsafe { Rc::from_raw(user_data as *const Pending<T>) };
    state.status.set(Some(status));
    state.keep_buffers_if_aborted(status);
    state.in_flight.set(state.in_flight.get() - 1);
    if state.abandoned.get() {
        // SAFETY: the future is gone and will not free the handle; UCX allows freeing a
        // request from its own completion callback (it is returned after the callback).
        unsafe { sys::ucp_request_free(request) };
    } else if let Some(waker) = state.waker.take() {
        waker.wake();
    }
}

unsafe extern "C" fn send_callback<T>(
    request: *mut c_void,
    status: sys::ucs_status_t,
    user_data: *mut c_void,
) {
    // SAFETY: UCX passes back the user_data of the operation this callback was set for.
    unsafe { complete::<T>(request, status, user_data) };
}

unsafe extern "C" fn recv_am_callback<T>(
    request: *mut c_void,
    status: sys::ucs_status_t,
    _length: usize,
    user_data: *mut c_void,
) {
    // SAFETY: UCX passes back the user_data of the operation this callback was set for.
    unsafe { complete::<T>(request, status, user_data) };
}
