//! Active Messages: sending with `ucp_am_send_nbx` and receiving through per-id queues.
//!
//! **Receive path:** [`Worker::set_am_handler`] registers a C callback for one AM id. The
//! callback runs inside `ucp_worker_progress` and does only this: copy the header (and eager
//! data) into owned buffers, keep the descriptor of rendezvous data, look up the reply
//! endpoint, and push an [`AmMessage`] on the id's bounded queue, waking the consumer, or
//! hand it to the stream's router ([`AmStream::set_router`]), which must not call into UCX.
//! It never calls back into UCX itself, so it cannot re-enter the worker. The
//! event loop drains the queue with [`AmStream::recv`] and receives rendezvous data with
//! [`AmMessage::recv_data`] (`ucp_am_recv_data_nbx`), outside the callback.
//!
//! **Bounds:** when a queue is full, new messages for that id are dropped (rendezvous data
//! is released, which lets the sender complete), counted in [`AmStream::dropped_count`] and
//! logged. Keeping senders' in-flight counts below the capacity avoids drops. A message a
//! router gave back is dropped too when its data was copied; one that holds UCX's data is
//! queued past the capacity, since releasing that data inside the callback is not allowed.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ffi::c_void;
use std::future::poll_fn;
use std::rc::{Rc, Weak};
use std::task::{Context as TaskContext, Poll, Waker};

use crate::endpoint::Endpoint;
use crate::error::{check, Status, UcxError};
use crate::request::{Callback, Request};
use crate::sys;
use crate::worker::Worker;

/// Which protocol [`Endpoint::am_send`] uses for the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AmProto {
    /// Eager only: the data travels with the header and is copied at the receiver.
    Eager,
    /// Rendezvous only: the receiver pulls the data into its own buffer.
    Rndv,
    /// UCX chooses by size (`UCX_RNDV_THRESH`).
    Auto,
}

impl Endpoint {
    /// Sends an Active Message: `header` (at most [`Worker::max_am_header`] bytes) and
    /// `data`. The receiver's handler for `id` gets it, with this connection as the reply
    /// endpoint (`UCP_AM_SEND_FLAG_REPLY`).
    ///
    /// The request resolves to the buffers when UCX no longer reads them (local
    /// completion), or to an error, e.g. when the endpoint fails. Dropping the request does
    /// not free the buffers before then (see [`Request`]).
    pub fn am_send<H, D>(&self, id: u16, header: H, data: D, proto: AmProto) -> Request<(H, D)>
    where
        H: AsRef<[u8]> + 'static,
        D: AsRef<[u8]> + 'static,
    {
        const OP: &str = "ucp_am_send_nbx";
        if let Some(request) = self.refuse_if_failed(OP) {
            return request;
        }
        if header.as_ref().len() > self.worker().max_am_header() {
            return Request::failed(self.worker(), OP, Status::INVALID_PARAM);
        }
        let flags = sys::UCP_AM_SEND_FLAG_REPLY
            | match proto {
                AmProto::Eager => sys::UCP_AM_SEND_FLAG_EAGER,
                AmProto::Rndv => sys::UCP_AM_SEND_FLAG_RNDV,
                AmProto::Auto => 0,
            };
        let ep = self.handle();
        if proto != AmProto::Rndv {
            // A message short enough to go inline needs no request: try that first, so a
            // small message costs no allocation and no completion state.
            let param = sys::ucp_request_param_t {
                op_attr_mask: sys::UCP_OP_ATTR_FIELD_FLAGS | sys::UCP_OP_ATTR_FLAG_FORCE_IMM_CMPL,
                flags,
                ..Default::default()
            };
            // SAFETY: the endpoint is alive (self); with FORCE_IMM_CMPL UCX either sends
            // at once, done with both buffers on return, or refuses, keeping no pointer.
            let ptr = unsafe { send_nbx(ep, id, header.as_ref(), data.as_ref(), &param) };
            self.worker().note_activity();
            if ptr.is_null() {
                return Request::ready(self.worker(), OP, (header, data));
            }
            if !sys::ptr_is_err(ptr) {
                // A request handle, which FORCE_IMM_CMPL rules out: UCX may still read the
                // buffers, so they are leaked rather than freed under it.
                std::mem::forget((header, data));
                return Request::failed(self.worker(), OP, Status::INVALID_PARAM);
            }
            if sys::ptr_status(ptr) != sys::UCS_ERR_NO_RESOURCE {
                let status = Status::from_raw(sys::ptr_status(ptr));
                return Request::failed(self.worker(), OP, status);
            }
        }
        Request::start(
            self.worker(),
            OP,
            Callback::Send,
            (header, data),
            |buffers, param| {
                param.op_attr_mask |= sys::UCP_OP_ATTR_FIELD_FLAGS;
                param.flags = flags;
                // SAFETY: the endpoint is alive (self); header and data point into the payload,
                // which the Pending keeps at a fixed address until the callback has run.
                unsafe { send_nbx(ep, id, buffers.0.as_ref(), buffers.1.as_ref(), param) }
            },
        )
    }
}

/// `ucp_am_send_nbx` of `header` and `data` on `ep`.
///
/// # Safety
/// `ep` is a live endpoint, and both slices stay valid and unmoved for as long as `param`
/// lets UCX read them (until the call returns, or until the request completes).
unsafe fn send_nbx(
    ep: sys::ucp_ep_h,
    id: u16,
    header: &[u8],
    data: &[u8],
    param: &sys::ucp_request_param_t,
) -> sys::ucs_status_ptr_t {
    // SAFETY: per this function's contract.
    unsafe {
        sys::ucp_am_send_nbx(
            ep,
            u32::from(id),
            header.as_ptr() as *const c_void,
            header.len(),
            data.as_ptr() as *const c_void,
            data.len(),
            param,
        )
    }
}

impl Worker {
    /// Registers the handler for Active Message `id` and returns the stream its messages
    /// arrive on. At most `capacity` undrained messages are queued (see the module docs);
    /// fails with [`Status::ALREADY_EXISTS`] if `id` already has a stream.
    pub fn set_am_handler(self: &Rc<Self>, id: u16, capacity: usize) -> Result<AmStream, UcxError> {
        const OP: &str = "ucp_worker_set_am_recv_handler";
        if capacity == 0 {
            return Err(UcxError::from_status(OP, Status::INVALID_PARAM));
        }
        if self.am_queues.borrow().contains_key(&id) {
            return Err(UcxError::from_status(OP, Status::ALREADY_EXISTS));
        }
        let queue = Rc::new(AmQueue {
            worker: Rc::downgrade(self),
            messages: RefCell::new(VecDeque::new()),
            capacity,
            dropped: Cell::new(0),
            waker: Cell::new(None),
            router: RefCell::new(None),
        });
        let params = sys::ucp_am_handler_param_t {
            field_mask: (sys::UCP_AM_HANDLER_PARAM_FIELD_ID
                | sys::UCP_AM_HANDLER_PARAM_FIELD_FLAGS
                | sys::UCP_AM_HANDLER_PARAM_FIELD_CB
                | sys::UCP_AM_HANDLER_PARAM_FIELD_ARG) as u64,
            id: u32::from(id),
            flags: sys::UCP_AM_FLAG_WHOLE_MSG,
            cb: Some(on_am_message),
            arg: Rc::as_ptr(&queue) as *mut c_void,
        };
        // SAFETY: the worker is alive; arg points to the queue, which the worker's map keeps
        // alive until the handler is removed (AmStream's drop) or the worker is destroyed.
        let status = unsafe { sys::ucp_worker_set_am_recv_handler(self.handle(), &params) };
        check(OP, status)?;
        self.am_queues.borrow_mut().insert(id, Rc::clone(&queue));
        Ok(AmStream {
            id,
            queue,
            worker: Rc::clone(self),
        })
    }
}

/// The queue one AM id's handler fills.
pub(crate) struct AmQueue {
    worker: Weak<Worker>,
    messages: RefCell<VecDeque<AmMessage>>,
    capacity: usize,
    dropped: Cell<u64>,
    waker: Cell<Option<Waker>>,
    router: RefCell<Option<AmRouter>>,
}

impl AmQueue {
    /// Hands `message` to the router; returns it if the router gave it back.
    fn route(&self, message: AmMessage) -> Option<AmMessage> {
        match self.router.try_borrow_mut() {
            Ok(mut router) => match router.as_mut() {
                Some(route) => route(message),
                None => Some(message),
            },
            Err(_) => Some(message),
        }
    }
}

/// Takes each message of a stream as it arrives, or gives it back to be queued; see
/// [`AmStream::set_router`].
pub type AmRouter = Box<dyn FnMut(AmMessage) -> Option<AmMessage>>;

/// The received messages of one Active Message id. Dropping it removes the handler; later
/// messages for the id are discarded by UCX.
///
/// One task should consume a stream: a second concurrent [`AmStream::recv`] replaces the
/// first one's wakeup.
pub struct AmStream {
    id: u16,
    queue: Rc<AmQueue>,
    worker: Rc<Worker>,
}

impl AmStream {
    /// The Active Message id this stream receives.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Waits for the next message. Needs the worker's progress task to be running.
    pub async fn recv(&self) -> AmMessage {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next message.
    pub fn poll_recv(&self, cx: &mut TaskContext<'_>) -> Poll<AmMessage> {
        if let Some(message) = self.try_recv() {
            return Poll::Ready(message);
        }
        let mut kept = self.queue.waker.take();
        crate::keep_waker(&mut kept, cx.waker());
        self.queue.waker.set(kept);
        Poll::Pending
    }

    /// The next message, progressing the worker up to `polls` times while none is queued.
    /// A consumer that has just handled a message and looks for the next itself spares, per
    /// message while they keep coming, the wake of its task and a turn of the progress task.
    /// It gives the CPU away as often as the progress loop does while idle
    /// ([`Worker::idle_poll`]): a server sharing its core with a client that waits for the
    /// reply just sent polled on through its share of the core instead (mdtest creates with
    /// one rank on the server's core: 105k -> 119k/s).
    pub fn try_recv_polling(&self, polls: u32) -> Option<AmMessage> {
        for poll in 1..=polls {
            if let Some(message) = self.try_recv() {
                return Some(message);
            }
            if self.worker.progress() == 0 && poll % crate::limits::IDLE_POLLS_PER_TURN == 0 {
                self.worker.idle_poll();
            }
        }
        self.try_recv()
    }

    /// The next message, if one is queued.
    pub fn try_recv(&self) -> Option<AmMessage> {
        self.queue.messages.borrow_mut().pop_front()
    }

    /// Messages queued and not yet received.
    pub fn len(&self) -> usize {
        self.queue.messages.borrow().len()
    }

    /// Whether no message is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hands each message to `router` as it arrives, before it is queued: a message the
    /// router takes skips the queue and the consumer's wakeup, one it gives back is queued
    /// (see the module docs for a full queue). A reply routed straight to the call awaiting
    /// it saves a task's turn per message.
    ///
    /// **Boundary:** the router runs inside `ucp_worker_progress`, so it must not call
    /// into UCX (send, receive, progress) nor drop a message it took while still inside
    /// (dropping releases UCX's data): hand a message on, or give it back.
    pub fn set_router(&self, router: AmRouter) {
        *self.queue.router.borrow_mut() = Some(router);
    }

    /// Messages discarded because the queue was full.
    pub fn dropped_count(&self) -> u64 {
        self.queue.dropped.get()
    }
}

impl Drop for AmStream {
    fn drop(&mut self) {
        let params = sys::ucp_am_handler_param_t {
            field_mask: (sys::UCP_AM_HANDLER_PARAM_FIELD_ID | sys::UCP_AM_HANDLER_PARAM_FIELD_CB)
                as u64,
            id: u32::from(self.id),
            cb: None,
            ..Default::default()
        };
        // SAFETY: the worker is alive (self.worker); a null callback removes the handler.
        let status = unsafe { sys::ucp_worker_set_am_recv_handler(self.worker.handle(), &params) };
        if let Err(error) = check("ucp_worker_set_am_recv_handler", status) {
            // The queue must then outlive the worker, since UCX may still call into it.
            tracing::warn!(%error, id = self.id, "removing AM handler; leaking its queue");
            std::mem::forget(Rc::clone(&self.queue));
        }
        self.worker.am_queues.borrow_mut().remove(&self.id);
        // Messages hold the worker; release them (and their rendezvous descriptors) now.
        let messages = std::mem::take(&mut *self.queue.messages.borrow_mut());
        drop(messages);
        // A consumer waiting on the stream by a weak reference learns it is gone.
        if let Some(consumer) = self.queue.waker.take() {
            consumer.wake();
        }
    }
}

impl std::fmt::Debug for AmStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmStream")
            .field("id", &self.id)
            .field("queued", &self.len())
            .finish()
    }
}

/// A received Active Message.
///
/// The header is copied out of UCX. Small eager data is copied too; large eager data stays
/// in UCX's buffer (see [`EAGER_HOLD_MIN`](crate::limits::EAGER_HOLD_MIN)) and rendezvous
/// data stays at the sender until [`AmMessage::recv_data`] takes it. Dropping a message
/// releases what it still holds (`ucp_am_data_release`), which for rendezvous data
/// completes the sender.
///
/// Header and data come from the network: they are plain bytes, of any length the sender
/// chose; decoding and bounds checks belong to the caller.
pub struct AmMessage {
    header: Vec<u8>,
    data: AmData,
    reply: Option<Endpoint>,
    worker: Rc<Worker>,
}

enum AmData {
    Eager(Vec<u8>),
    /// Eager data left in UCX's buffer (`UCS_INPROGRESS` from the callback).
    Held(RndvData),
    Rendezvous(RndvData),
    /// Already handed to the caller.
    Taken,
}

/// A data descriptor UCX lent to us (`UCS_INPROGRESS` from the callback): rendezvous data
/// still at the sender, or eager data in UCX's buffer.
struct RndvData {
    desc: *mut c_void,
    len: usize,
}

impl AmMessage {
    /// The header bytes.
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    /// The length of the data, received or not.
    pub fn data_len(&self) -> usize {
        match &self.data {
            AmData::Eager(data) => data.len(),
            AmData::Held(held) => held.len,
            AmData::Rendezvous(rndv) => rndv.len,
            AmData::Taken => 0,
        }
    }

    /// Whether the data came by rendezvous and still has to be received with
    /// [`AmMessage::recv_data`].
    pub fn is_rendezvous(&self) -> bool {
        matches!(self.data, AmData::Rendezvous(_))
    }

    /// The eager data, if the data came eagerly and has not been taken.
    pub fn eager_data(&self) -> Option<&[u8]> {
        match &self.data {
            AmData::Eager(data) => Some(data),
            // SAFETY: UCX keeps held eager data readable at desc until we release it, which
            // only happens when the data is taken or the message dropped.
            AmData::Held(held) => Some(unsafe { held_bytes(held) }),
            _ => None,
        }
    }

    /// The endpoint to answer on: the connection the message came over, when it is an
    /// endpoint of this worker (created by [`Endpoint::connect_socket`],
    /// [`Endpoint::connect_address`] or accepted by a [`Listener`](crate::Listener)).
    ///
    /// `None` for a sender that connected by worker address: UCX's endpoint for it is
    /// internal and may be destroyed at any time, so it is never handed out. Such a sender
    /// should include its worker address so the receiver can connect back.
    pub fn reply_endpoint(&self) -> Option<&Endpoint> {
        self.reply.as_ref()
    }

    /// Takes the reply endpoint out of the message (see [`AmMessage::reply_endpoint`]), so
    /// that the message no longer keeps the connection open.
    pub fn take_reply_endpoint(&mut self) -> Option<Endpoint> {
        self.reply.take()
    }

    /// Receives the data into `buf[..data_len]`, by rendezvous if needed. Eager data is
    /// copied. Fails with [`Status::MESSAGE_TRUNCATED`] if `buf` is shorter than the data
    /// (the data stays receivable), and with [`Status::INVALID_PARAM`] if it was already
    /// taken.
    pub fn recv_data<B: AsMut<[u8]> + 'static>(&mut self, mut buf: B) -> Request<B> {
        const OP: &str = "ucp_am_recv_data_nbx";
        if buf.as_mut().len() < self.data_len() {
            return Request::failed(&self.worker, OP, Status::MESSAGE_TRUNCATED);
        }
        match std::mem::replace(&mut self.data, AmData::Taken) {
            AmData::Taken => Request::failed(&self.worker, OP, Status::INVALID_PARAM),
            AmData::Eager(data) => {
                buf.as_mut()[..data.len()].copy_from_slice(&data);
                Request::ready(&self.worker, OP, buf)
            }
            AmData::Held(held) => {
                // SAFETY: as in eager_data; the descriptor is released right after.
                buf.as_mut()[..held.len].copy_from_slice(unsafe { held_bytes(&held) });
                // SAFETY: held eager data of this worker, released exactly once (it moved
                // out of self.data).
                unsafe { sys::ucp_am_data_release(self.worker.handle(), held.desc) };
                Request::ready(&self.worker, OP, buf)
            }
            AmData::Rendezvous(rndv) => {
                let rndv = std::mem::ManuallyDrop::new(rndv);
                let (desc, len) = (rndv.desc, rndv.len);
                let worker = self.worker.handle();
                Request::start(&self.worker, OP, Callback::RecvAm, buf, |buf, param| {
                    let buf = buf.as_mut();
                    // SAFETY: desc is a rendezvous descriptor of this worker that was not
                    // released or received before (it moved out of self.data); buf has at
                    // least len bytes and stays at a fixed address in the Pending until
                    // the callback has run. UCX owns desc from here on.
                    unsafe {
                        sys::ucp_am_recv_data_nbx(
                            worker,
                            desc,
                            buf.as_mut_ptr() as *mut c_void,
                            len,
                            param,
                        )
                    }
                })
            }
        }
    }

    /// The data as a `Vec`: eager data without a copy, rendezvous data received into a new
    /// buffer.
    pub fn into_data(mut self) -> Request<Vec<u8>> {
        match std::mem::replace(&mut self.data, AmData::Taken) {
            AmData::Eager(data) => Request::ready(&self.worker, "am data", data),
            data => {
                self.data = data;
                let buf = vec![0; self.data_len()];
                self.recv_data(buf)
            }
        }
    }
}

impl Drop for AmMessage {
    fn drop(&mut self) {
        if let AmData::Rendezvous(lent) | AmData::Held(lent) = &self.data {
            // SAFETY: the descriptor was kept with UCS_INPROGRESS, was neither received nor
            // released, and the worker is alive (self.worker).
            unsafe { sys::ucp_am_data_release(self.worker.handle(), lent.desc) };
        }
    }
}

impl std::fmt::Debug for AmMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmMessage")
            .field("header_len", &self.header.len())
            .field("data_len", &self.data_len())
            .field("rendezvous", &self.is_rendezvous())
            .field("reply", &self.reply.is_some())
            .finish()
    }
}

/// The bytes of held eager data.
///
/// # Safety
/// `held` is eager data UCX lent with `UCP_AM_RECV_ATTR_FLAG_DATA` and that was not released.
unsafe fn held_bytes(held: &RndvData) -> &[u8] {
    if held.len == 0 || held.desc.is_null() {
        return &[];
    }
    // SAFETY: per the contract, `len` readable bytes at desc, alive until released.
    unsafe { std::slice::from_raw_parts(held.desc as *const u8, held.len) }
}

/// Copies `len` bytes at `ptr` (which may be null when `len` is 0).
///
/// # Safety
/// If `len > 0`, `ptr` points to `len` readable bytes.
unsafe fn copy_bytes(ptr: *const c_void, len: usize) -> Vec<u8> {
    if len == 0 || ptr.is_null() {
        return Vec::new();
    }
    // SAFETY: per the contract.
    unsafe { std::slice::from_raw_parts(ptr as *const u8, len) }.to_vec()
}

/// What to keep of a message's data, and what to answer UCX: rendezvous data and large
/// eager data UCX lets us hold stay in UCX's hands until received or released
/// (`UCS_INPROGRESS`); small eager data is copied out now.
///
/// # Safety
/// Called from the AM callback with its arguments: `data` points to `length` bytes that are
/// readable for the duration of the call.
unsafe fn take_data(
    recv_attr: u64,
    data: *mut c_void,
    length: usize,
) -> (AmData, sys::ucs_status_t) {
    let held = RndvData {
        desc: data,
        len: length,
    };
    if recv_attr & u64::from(sys::UCP_AM_RECV_ATTR_FLAG_RNDV) != 0 {
        (AmData::Rendezvous(held), sys::UCS_INPROGRESS)
    } else if recv_attr & u64::from(sys::UCP_AM_RECV_ATTR_FLAG_DATA) != 0
        && length >= crate::limits::EAGER_HOLD_MIN
    {
        // UCX allows keeping this buffer: returning UCS_INPROGRESS hands it to us until
        // ucp_am_data_release.
        (AmData::Held(held), sys::UCS_INPROGRESS)
    } else {
        // SAFETY: for eager data UCX passes `length` readable bytes at data for this call.
        (
            AmData::Eager(unsafe { copy_bytes(data, length) }),
            sys::UCS_OK,
        )
    }
}

unsafe extern "C" fn on_am_message(
    arg: *mut c_void,
    header: *const c_void,
    header_length: usize,
    data: *mut c_void,
    length: usize,
    param: *const sys::ucp_am_recv_param_t,
) -> sys::ucs_status_t {
    // SAFETY: arg is the AmQueue registered with this handler; the worker keeps it alive
    // while the handler is registered.
    let queue = unsafe { &*(arg as *const AmQueue) };
    let Some(worker) = queue.worker.upgrade() else {
        // The worker is being destroyed; nobody can receive this message.
        return sys::UCS_OK;
    };
    // SAFETY: UCX passes a valid parameter struct (or null, which we treat as "no flags").
    let (recv_attr, reply_ep) = match unsafe { param.as_ref() } {
        Some(param) => (param.recv_attr, param.reply_ep),
        None => (0, std::ptr::null_mut()),
    };
    let rendezvous = recv_attr & u64::from(sys::UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
    let routed = queue.router.try_borrow_mut().is_ok_and(|r| r.is_some());
    let Ok(mut messages) = queue.messages.try_borrow_mut() else {
        queue.dropped.set(queue.dropped.get() + 1);
        return sys::UCS_OK;
    };
    if !routed && messages.len() >= queue.capacity {
        queue.dropped.set(queue.dropped.get() + 1);
        tracing::warn!(
            capacity = queue.capacity,
            rendezvous,
            "AM queue full; message dropped"
        );
        return sys::UCS_OK;
    }
    let reply = if recv_attr & u64::from(sys::UCP_AM_RECV_ATTR_FIELD_REPLY_EP) != 0 {
        Endpoint::find(&worker, reply_ep)
    } else {
        None
    };
    // SAFETY: UCX passes header_length readable bytes at header for this call.
    let header = unsafe { copy_bytes(header, header_length) };
    // SAFETY: UCX passes `length` bytes at data for this call, as `take_data` requires.
    let (data, status) = unsafe { take_data(recv_attr, data, length) };
    let mut message = AmMessage {
        header,
        data,
        reply,
        worker,
    };
    if routed {
        drop(messages);
        let Some(back) = queue.route(message) else {
            return status;
        };
        message = back;
        messages = match queue.messages.try_borrow_mut() {
            Ok(messages) => messages,
            Err(_) => {
                // Unreachable while nothing holds the queue across progress; leaking is
                // the one safe way out inside the callback.
                queue.dropped.set(queue.dropped.get() + 1);
                tracing::error!("AM queue busy inside its handler; message leaked");
                std::mem::forget(message);
                return status;
            }
        };
        let copied = matches!(message.data, AmData::Eager(_) | AmData::Taken);
        if copied && messages.len() >= queue.capacity {
            queue.dropped.set(queue.dropped.get() + 1);
            tracing::warn!(capacity = queue.capacity, "AM queue full; message dropped");
            return status;
        }
    }
    messages.push_back(message);
    drop(messages);
    if let Some(waker) = queue.waker.take() {
        waker.wake();
    }
    status
}
