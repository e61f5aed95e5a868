//! Remote memory access: `Endpoint::put` and `Endpoint::get` (`ucp_put_nbx`, `ucp_get_nbx`).

use std::ffi::c_void;

use crate::endpoint::Endpoint;
use crate::error::Status;
use crate::memory::RemoteKey;
use crate::request::{Callback, Request};
use crate::sys;

impl Endpoint {
    /// Writes `local` to the peer's memory at `remote_addr`, inside the region `rkey` was
    /// packed from. Resolves to `local` when it may be reused (local completion); call
    /// [`Endpoint::flush`] before telling the peer the data is there.
    pub fn put<B: AsRef<[u8]> + 'static>(
        &self,
        local: B,
        remote_addr: u64,
        rkey: &RemoteKey,
    ) -> Request<B> {
        const OP: &str = "ucp_put_nbx";
        if let Some(request) = self.refuse(OP, rkey) {
            return request;
        }
        let (ep, key) = (self.handle(), rkey.handle());
        Request::start(
            self.worker(),
            OP,
            Callback::Send,
            local,
            Some(rkey.clone()),
            |local, param| {
                let local = local.as_ref();
                // SAFETY: endpoint and key are alive (the request holds the key until it
                // completes); local stays at a fixed address in the Pending until then.
                unsafe {
                    sys::ucp_put_nbx(
                        ep,
                        local.as_ptr() as *const c_void,
                        local.len(),
                        remote_addr,
                        key,
                        param,
                    )
                }
            },
        )
    }

    /// Reads `local.len()` bytes of the peer's memory at `remote_addr` into `local`.
    /// Resolves to the filled buffer.
    pub fn get<B: AsMut<[u8]> + 'static>(
        &self,
        local: B,
        remote_addr: u64,
        rkey: &RemoteKey,
    ) -> Request<B> {
        const OP: &str = "ucp_get_nbx";
        if let Some(request) = self.refuse(OP, rkey) {
            return request;
        }
        let (ep, key) = (self.handle(), rkey.handle());
        Request::start(
            self.worker(),
            OP,
            Callback::Send,
            local,
            Some(rkey.clone()),
            |local, param| {
                let local = local.as_mut();
                // SAFETY: as for put; UCX writes local.len() bytes into local, which nothing else
                // accesses until the request completes.
                unsafe {
                    sys::ucp_get_nbx(
                        ep,
                        local.as_mut_ptr() as *mut c_void,
                        local.len(),
                        remote_addr,
                        key,
                        param,
                    )
                }
            },
        )
    }

    fn refuse<T: 'static>(&self, op: &'static str, rkey: &RemoteKey) -> Option<Request<T>> {
        if let Some(request) = self.refuse_if_failed(op) {
            return Some(request);
        }
        if !rkey.endpoint().same_as(self) {
            return Some(Request::failed(self.worker(), op, Status::INVALID_PARAM));
        }
        None
    }
}
